#!/bin/sh
# JSON and progress (issue 17 item 7): kvdistill train --json prints its report; kvrun --ppl shows
# progress on a terminal even with --json; info --json and plan --json are alike (one line); no
# "0 tok/s ... ETA ?" or "(0 tokens/s)" after a resume; no "1 threads"
. tests/lib.sh
require_shared cli_json
S=$SHARED/models/stories260K
D=$SHARED/data/tinystories_val.txt
one_json_line() { # FILE DESC
    [ "$(wc -l < "$1")" = 1 ] && ok || bad "$2: not one line"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$1" && ok || bad "$2: not JSON"
    fi
}
expect_rc 0 "info --json" -- "$BIN/kvconvert" info "$S" --json
one_json_line "$TMP/out" "info --json"
expect_rc 0 "plan --json" -- "$BIN/kvconvert" plan "$S" --map cla:2 --json
one_json_line "$TMP/out" "plan --json"
expect_rc 0 "student" -- "$BIN/kvconvert" "$S" "$TMP/st" --swiftkv 3,2 -q
head -c 60000 "$D" > "$TMP/d.txt"
expect_rc 0 "train --json" -- "$BIN/kvdistill" train "$S" "$TMP/st" "$TMP/out1" --data "$TMP/d.txt" --steps 4 \
    --seq-len 32 --batch 2 --save-every 2 --json --threads 1
one_json_line "$TMP/out" "train --json"
expect_grep '"student_after_ppl"\|"student_ppl_after"\|"after"' "$TMP/out" "train --json is the report"
cp "$TMP/out" "$TMP/train.json"
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); assert a == b' \
        "$TMP/train.json" "$TMP/out1/report.json" && ok || bad "train --json differs from report.json"
fi
# a finished run resumed: nothing left to train, no "0 tokens/s"
expect_rc 0 "resume a finished run" -- "$BIN/kvdistill" train "$S" "$TMP/st" "$TMP/out1" --data "$TMP/d.txt" --steps 4 \
    --seq-len 32 --batch 2 --save-every 2 --resume --threads 1
if grep -q "(0 tokens/s)" "$TMP/out"; then bad "finished resume prints (0 tokens/s): $(cat "$TMP/out")"; else ok; fi
if grep -q " 0 tok/s\|ETA ?" "$TMP/err"; then bad "resume progress prints 0 tok/s / ETA ?: $(cat "$TMP/err")"; else ok; fi
# an interrupted run resumed: its first line has no rate yet, and says so
KVDISTILL_TEST_FAIL=0:3 "$BIN/kvdistill" train "$S" "$TMP/st" "$TMP/out2" --data "$TMP/d.txt" --steps 4 \
    --seq-len 32 --batch 2 --save-every 2 --threads 1 >/dev/null 2>&1
expect_rc 0 "resume an interrupted run" -- "$BIN/kvdistill" train "$S" "$TMP/st" "$TMP/out2" --data "$TMP/d.txt" --steps 4 \
    --seq-len 32 --batch 2 --save-every 2 --resume --threads 1
expect_grep "step 2/4 ( 50%) resumed; measuring speed" "$TMP/err" "resume line"
if grep -q " 0 tok/s\|ETA ?\|loss 0.0000" "$TMP/err"; then bad "resume progress prints 0 tok/s / ETA ? / loss 0: $(cat "$TMP/err")"; else ok; fi
expect_grep "tokens/s)" "$TMP/out" "resumed run reports its rate"
if grep -q "(0 tokens/s)" "$TMP/out"; then bad "(0 tokens/s)"; else ok; fi
# kvrun --ppl --json on a terminal: progress on stderr (script(1) gives the command a terminal)
if command -v script >/dev/null 2>&1; then
    script -qec "'$BIN/kvrun' '$S' --ppl '$TMP/d.txt' --ctx 64 --max-windows 20 --json >'$TMP/ppl.json'" /dev/null >"$TMP/tty" 2>&1
    expect_grep "perplexity" "$TMP/tty" "ppl progress on a terminal with --json"
    one_json_line "$TMP/ppl.json" "ppl --json"
fi
expect_rc 0 "ppl --json piped" -- "$BIN/kvrun" "$S" --ppl "$TMP/d.txt" --ctx 64 --max-windows 5 --json
[ ! -s "$TMP/err" ] && ok || bad "piped ppl --json wrote to stderr: $(cat "$TMP/err")"
expect_rc 0 "bench one thread" -- "$BIN/kvrun" "$S" --bench --prompt-len 16 -n 4 --repeat 1 --threads 1
if grep -q "1 threads" "$TMP/out" "$TMP/err"; then bad "1 threads"; else ok; fi
done_tests cli_json
