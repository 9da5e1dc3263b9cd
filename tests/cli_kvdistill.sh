#!/bin/sh
# kvdistill: help/version, usage errors (exit 2), --device (cuda in a build without CUDA: exit 1),
# a tiny train run on stories260K (report.json, log, model directory, plain progress lines when
# stderr is not a terminal), SIGKILL + --resume giving the same weights as an uninterrupted run,
# calibrate --json and --svg.
. tests/lib.sh
require_shared cli_kvdistill
KD="$BIN/kvdistill"
M=$SHARED/models/stories260K
head -c 30000 "$SHARED/data/tinystories_val.txt" >"$TMP/data.txt"

expect_rc 0 "--help" -- "$KD" --help
expect_grep "Usage: kvdistill train" "$TMP/out" "--help text"
expect_rc 0 "--version" -- "$KD" --version
expect_grep "kvdistill (kvforge)" "$TMP/out" "--version text"
expect_rc 0 "train --help" -- "$KD" train --help
expect_rc 2 "no command" -- "$KD"
expect_rc 2 "unknown command" -- "$KD" frobnicate
expect_grep "kvdistill: error:" "$TMP/err" "usage error format"
expect_rc 2 "train without dirs" -- "$KD" train --data "$TMP/data.txt" --steps 2
expect_rc 2 "train without data" -- "$KD" train "$M" "$M" "$TMP/x" --steps 2
expect_rc 2 "train without length" -- "$KD" train "$M" "$M" "$TMP/x" --data "$TMP/data.txt"
expect_rc 2 "steps and tokens" -- "$KD" train "$M" "$M" "$TMP/x" --data "$TMP/data.txt" --steps 2 --tokens 1K
expect_rc 2 "bad lr" -- "$KD" train "$M" "$M" "$TMP/x" --data "$TMP/data.txt" --steps 2 --lr abc
expect_rc 2 "bad schedule" -- "$KD" train "$M" "$M" "$TMP/x" --data "$TMP/data.txt" --steps 2 --schedule wavy
expect_rc 2 "unknown option" -- "$KD" train --bogus
expect_rc 2 "student bad map" -- "$KD" student "$M" "$TMP/s" --map pizza-bottom:9
expect_rc 2 "calibrate bad range" -- "$KD" calibrate "$M" --data "$TMP/data.txt" --swiftkv 4-2

# students from kvconvert (either family); kvdistill's own zero-shot writer works too
expect_rc 0 "kvconvert swiftkv:3" -- "$BIN/kvconvert" "$M" "$TMP/skv" --swiftkv 3 --quiet
expect_rc 0 "kvconvert lasagna-bottom:3" -- "$BIN/kvconvert" "$M" "$TMP/cla" --map lasagna-bottom:3 --quiet
expect_rc 0 "student pizza-top:3" -- "$KD" student "$M" "$TMP/ptop" --map pizza-top:3 --quiet
expect_grep '"layer_types":	"0_1_4_4_4"' "$TMP/ptop/config.json" "student config has the map"
expect_rc 0 "kvdistill student trains" -- "$KD" train "$M" "$TMP/ptop" "$TMP/ptop_out" --data "$TMP/data.txt" \
    --steps 2 --seq-len 32 --batch 2 --passes 3 --eval-seqs 2 --quiet --threads 1
expect_rc 0 "pizza-top with gradient through 2 passes" -- "$KD" train "$M" "$TMP/ptop" "$TMP/ptop_b2" --data "$TMP/data.txt" \
    --steps 2 --seq-len 32 --batch 2 --passes 3 --grad-passes 2 --eval-seqs 2 --quiet --threads 1
expect_grep '"grad_passes":	2' "$TMP/ptop_b2/report.json" "report.json records grad_passes"
expect_rc 1 "grad-passes above passes refused" -- "$KD" train "$M" "$TMP/ptop" "$TMP/x" --data "$TMP/data.txt" \
    --steps 2 --seq-len 32 --passes 3 --grad-passes 4 --quiet
expect_grep "grad-passes 4 must be 1 .. passes (3)" "$TMP/err" "grad-passes message"
expect_rc 0 "hard labels beside the teacher (--ce-weight)" -- "$KD" train "$M" "$TMP/skv" "$TMP/skv_ce" --data "$TMP/data.txt" \
    --steps 2 --seq-len 32 --batch 2 --ce-weight 0.5 --eval-seqs 2 --quiet --threads 1
expect_grep '"ce_weight":	0.5' "$TMP/skv_ce/report.json" "report.json records ce_weight"
grep -q '"ce": [1-9]' "$TMP/skv_ce/train_log.jsonl" && ok || bad "the step log carries the cross-entropy"
expect_rc 2 "negative ce-weight refused" -- "$KD" train "$M" "$TMP/skv" "$TMP/x" --data "$TMP/data.txt" --steps 2 --ce-weight -1
expect_rc 1 "identity student refused" -- "$KD" train "$M" "$M" "$TMP/x" --data "$TMP/data.txt" --steps 2 --seq-len 32
expect_rc 1 "missing data file" -- "$KD" train "$M" "$TMP/skv" "$TMP/x" --data "$TMP/nope.txt" --steps 2

# --device: cpu (the default) by name; another name is a usage error; cuda in a build without
# CUDA fails (exit 1) with the backend's message before anything is written
expect_rc 0 "--help" -- "$KD" --help
expect_grep "device cpu|cuda" "$TMP/out" "--help documents --device"
expect_rc 0 "train --device cpu" -- "$KD" train "$M" "$TMP/skv" "$TMP/dev_cpu" --data "$TMP/data.txt" \
    --steps 1 --seq-len 32 --batch 2 --eval-seqs 2 --quiet --threads 1 --device cpu
expect_rc 2 "bad --device" -- "$KD" train "$M" "$TMP/skv" "$TMP/x" --data "$TMP/data.txt" --steps 1 --device tpu
expect_grep "device 'tpu': expected 'cpu' or 'cuda'" "$TMP/err" "bad --device names the string"
if ls "${BUILD:-build}"/.mode-cuda0-* >/dev/null 2>&1; then
    expect_rc 1 "--device cuda without CUDA" -- "$KD" train "$M" "$TMP/skv" "$TMP/dev_cuda" \
        --data "$TMP/data.txt" --steps 1 --seq-len 32 --batch 2 --quiet --device cuda
    expect_grep "kvdistill: error: cuda: this build has no CUDA support" "$TMP/err" "--device cuda: the backend's message"
    [ ! -e "$TMP/dev_cuda" ] && ok || bad "--device cuda without CUDA wrote its output directory"
    expect_rc 1 "calibrate --device cuda without CUDA" -- "$KD" calibrate "$M" --data "$TMP/data.txt" \
        --map swiftkv:3 --quiet --device cuda
    expect_grep "no CUDA support" "$TMP/err" "calibrate --device cuda: the backend's message"
fi

# a tiny run
expect_rc 0 "train swiftkv" -- "$KD" train "$M" "$TMP/skv" "$TMP/out1" --data "$TMP/data.txt" \
    --steps 6 --seq-len 32 --batch 2 --lr 3e-3 --eval-seqs 4 --threads 1
expect_grep "held-out perplexity" "$TMP/out" "summary on stdout"
expect_grep "^kvdistill: step 6/6 (100%) .* tok/s loss .* lr .* ETA" "$TMP/err" "plain progress lines on a non-terminal"
for k in teacher_ppl student_before_ppl student_after_ppl kl_before kl_after tokens_trained seconds; do
    expect_grep "\"$k\":" "$TMP/out1/report.json" "report.json key $k"
done
expect_grep '"tokens_trained":	384' "$TMP/out1/report.json" "6 x 2 x 32 tokens"
[ "$(wc -l <"$TMP/out1/train_log.jsonl")" = 6 ] && ok || bad "6 log lines"
for f in config.json model.safetensors tokenizer.json checkpoint/state.safetensors; do
    [ -s "$TMP/out1/$f" ] && ok || bad "output has $f"
done
expect_rc 1 "non-empty OUT_DIR refused" -- "$KD" train "$M" "$TMP/skv" "$TMP/out1" --data "$TMP/data.txt" --steps 6 --seq-len 32
# the output is a model kvrun runs, and a student again (a second distillation starts from it)
expect_rc 0 "kvrun runs the output" -- "$BIN/kvrun" "$TMP/out1" --prompt "Once upon a time" --max-tokens 8
expect_rc 0 "output trains again" -- "$KD" train "$M" "$TMP/out1" "$TMP/out1b" --data "$TMP/data.txt" \
    --steps 1 --seq-len 32 --batch 2 --eval-seqs 2 --quiet --threads 1

# SIGKILL after the first checkpoint, resume; compare with an uninterrupted run
run_cross() { # OUT_DIR [extra...]
    out=$1; shift
    "$KD" train "$M" "$TMP/cla" "$out" --data "$TMP/data.txt" --steps 150 --seq-len 32 --batch 2 \
        --lr 3e-3 --save-every 10 --eval-seqs 2 --seed 5 --quiet --threads 1 "$@"
}
run_cross "$TMP/full" >/dev/null 2>&1 && ok || bad "uninterrupted run"
# exec: $! must be kvdistill itself, not a subshell around it, or SIGKILL misses it
(exec "$KD" train "$M" "$TMP/cla" "$TMP/killed" --data "$TMP/data.txt" --steps 150 --seq-len 32 --batch 2 \
    --lr 3e-3 --save-every 10 --eval-seqs 2 --seed 5 --quiet --threads 1) >/dev/null 2>&1 &
pid=$!
i=0
while [ ! -f "$TMP/killed/checkpoint/state.safetensors" ] && [ $i -lt 20000 ] && kill -0 $pid 2>/dev/null; do sleep 0.01; i=$((i + 1)); done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
if [ -f "$TMP/killed/model.safetensors" ]; then
    echo "note: the run finished before SIGKILL; the resume below starts from its last checkpoint" >&2
else
    ok
fi
expect_rc 0 "resume" -- run_cross "$TMP/killed" --resume
cmp -s "$TMP/full/model.safetensors" "$TMP/killed/model.safetensors" && ok || bad "resumed weights differ from the uninterrupted run"
[ "$(wc -l <"$TMP/killed/train_log.jsonl")" = 150 ] && ok || bad "log has 150 steps after resume"
expect_grep '"resumed_from_step":	[1-9]' "$TMP/killed/report.json" "resumed from a checkpoint"

# calibrate: swiftkv 2,1 and 3,1; 9 configurations at l=3 of which lasagna-middle equals
# lasagna-bottom (groups of 2: middle = first), and cla:2 is that same map again: 10 in all
expect_rc 0 "calibrate --json" -- "$KD" calibrate "$M" --data "$TMP/data.txt" --seq-len 64 --batch 4 \
    --eval-seqs 4 --swiftkv 2-3 --groups 1 --cross 3 --map cla:2 --json --svg "$TMP/sim.svg" --quiet --threads 1
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["candidates"]) == 10, len(d["candidates"])' "$TMP/out" \
        && ok || bad "calibrate JSON does not parse or lacks its 10 candidates"
fi
expect_grep '"hidden_similarity"' "$TMP/out" "calibrate JSON has the similarity"
expect_grep "<svg" "$TMP/sim.svg" "svg heat map"
expect_rc 0 "calibrate table" -- "$KD" calibrate "$M" --data "$TMP/data.txt" --seq-len 64 --batch 4 \
    --eval-seqs 2 --map swiftkv:3 --quiet --threads 1
expect_grep "^   1  swiftkv:3,1" "$TMP/out" "ranked table"
expect_grep "recommended:" "$TMP/out" "recommendation line"
done_tests cli_kvdistill
