#!/bin/sh
# help and messages a new user reads (issue 17): one line per unknown option, map specs that
# name what is missing and exit 2, kvrun's help for --logits-out and its stop reasons
. tests/lib.sh
require_shared cli_messages
S=$SHARED/models/stories260K
for tool in kvconvert kvdistill kvrun kvsynth kvverify; do
    sub=; [ "$tool" = kvdistill ] && sub=train
    expect_rc 2 "$tool unknown option" -- "$BIN/$tool" $sub --no-such-option x
    [ "$(grep -c 'error' "$TMP/err")" = 1 ] && ok || bad "$tool: unknown option gave $(grep -c error "$TMP/err") error lines: $(cat "$TMP/err")"
    expect_grep "unknown option '--no-such-option'" "$TMP/err" "$tool names the option"
done
expect_rc 2 "kvrun option without its value" -- "$BIN/kvrun" "$S" --prompt
expect_grep "option '--prompt' needs a value" "$TMP/err" "missing value named"
[ "$(grep -c 'error' "$TMP/err")" = 1 ] && ok || bad "missing value: more than one error line"
# map specs: what is missing, exit 2
expect_rc 2 "sandwich-middle without :l" -- "$BIN/kvconvert" plan "$S" --map sandwich-middle
expect_grep "missing the number of KV layers: sandwich-middle:l" "$TMP/err" "missing :l named"
expect_rc 2 "cla without :F" -- "$BIN/kvconvert" plan "$S" --map cla
expect_grep "missing the number" "$TMP/err" "missing :F named"
expect_rc 2 "unknown map kind" -- "$BIN/kvconvert" plan "$S" --map pizzza-top:2
expect_grep "unknown kind" "$TMP/err" "unknown kind named"
expect_rc 2 "too many KV layers" -- "$BIN/kvconvert" "$S" "$TMP/x" --map pizza-top:9
expect_rc 2 "bad swiftkv" -- "$BIN/kvconvert" plan "$S" --swiftkv 9
# --logits-out FILE writes FILE, as the help says
"$BIN/kvrun" --help > "$TMP/help"
expect_grep "ids to FILE, a safetensors file" "$TMP/help" "help: --logits-out FILE"
if grep -q "FILE.safetensors" "$TMP/help"; then bad "help still promises FILE.safetensors"; else ok; fi
expect_rc 0 "logits-out" -- "$BIN/kvrun" "$S" --logits-out "$TMP/dump" --tokens 1,2,3
[ -f "$TMP/dump" ] && [ ! -e "$TMP/dump.safetensors" ] && ok || bad "--logits-out did not write the name given"
# generation stopped by the context says so; stopped by EOS/BOS says which
expect_rc 0 "short-context model" -- "$BIN/kvsynth" --preset tiny --max-pos 48 "$TMP/short"
expect_rc 0 "generate to the context limit" -- "$BIN/kvrun" "$TMP/short" --prompt "hello" --temperature 0 -n 500
expect_grep "stopped at the context limit (48 positions)" "$TMP/err" "context stop reported"
expect_rc 0 "generate to BOS" -- "$BIN/kvrun" "$S" --prompt "Once upon a time" --temperature 0 -n 500
expect_grep "stopped at BOS" "$TMP/err" "BOS stop reported"
expect_rc 0 "generate a few" -- "$BIN/kvrun" "$TMP/short" --prompt "hello" --temperature 0 -n 1
if grep -q "stopped\|(0.0 tok/s)" "$TMP/err"; then bad "one token: $(cat "$TMP/err")"; else ok; fi
done_tests cli_messages
