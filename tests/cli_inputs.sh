#!/bin/sh
# every tool that reads a model takes a directory, a .kvb bundle or the model.safetensors path
# (meaning its folder), and says the same thing when a path is none of these (issue 17 item 5)
. tests/lib.sh
require_shared cli_inputs
S=$SHARED/models/stories260K
expect_rc 0 "bundle the original" -- "$BIN/kvconvert" bundle "$S" "$TMP/orig.kvb" -q
expect_rc 0 "info dir" -- "$BIN/kvconvert" info "$S" --json
cp "$TMP/out" "$TMP/info.dir"
for m in "$TMP/orig.kvb" "$S/model.safetensors"; do
    expect_rc 0 "info $m" -- "$BIN/kvconvert" info "$m" --json
    cmp -s "$TMP/out" "$TMP/info.dir" && ok || bad "info $m differs from the directory's"
    expect_rc 0 "plan $m" -- "$BIN/kvconvert" plan "$m" --map cla:2
    expect_rc 0 "kvrun $m" -- "$BIN/kvrun" "$m" --logits-out "$TMP/l.st" --tokens 1,403,407
    expect_rc 0 "kvdistill student $m" -- "$BIN/kvdistill" student "$m" "$TMP/st" --map cla:2 --force --quiet
done
expect_rc 0 "info text names the bundle as given" -- "$BIN/kvconvert" info "$TMP/orig.kvb"
expect_grep "orig.kvb" "$TMP/out" "bundle path shown"
if grep -q "kvforge-bundle-" "$TMP/out"; then bad "temporary folder shown"; else ok; fi
expect_rc 0 "convert from a bundle" -- "$BIN/kvconvert" "$TMP/orig.kvb" "$TMP/c" --map cla:2 -q
expect_rc 0 "convert from the dir" -- "$BIN/kvconvert" "$S" "$TMP/d" --map cla:2 -q
cmp -s "$TMP/c/model.safetensors" "$TMP/d/model.safetensors" && ok || bad "conversion from a bundle differs"
expect_rc 0 "kvverify tensors bundle vs dir" -- "$BIN/kvverify" tensors "$TMP/orig.kvb" "$S" --rtol 0
expect_rc 1 "calibrate a converted bundle" -- "$BIN/kvdistill" calibrate "$TMP/c/model.safetensors" --data "$SHARED/data/tinystories_val.txt"
expect_grep "c: calibrate needs the original" "$TMP/err" "error names the folder"
ls "${TMPDIR:-/tmp}" | grep -q "^kvforge-bundle-" && bad "temporary bundle folders left behind" || ok
# one message for a path that is no model, whatever the tool
printf 'hello\n' > "$TMP/notes.txt"
for p in "$TMP/notes.txt" "$TMP/missing"; do
    for cmd in "kvconvert info" "kvconvert plan --map cla:2" "kvrun --bench" "kvdistill student --map cla:2 $TMP/x"; do
        set -- $cmd
        tool=$1; shift
        case "$cmd" in
            "kvdistill student"*) "$BIN/$tool" student "$p" "$TMP/x" --map cla:2 >"$TMP/out" 2>"$TMP/err"; rc=$? ;;
            *) "$BIN/$tool" "$@" "$p" >"$TMP/out" 2>"$TMP/err"; rc=$? ;;
        esac
        [ "$rc" = 1 ] && ok || bad "$cmd $p: exit $rc"
        expect_grep "^$tool: error: $p: not a model (.*): give a model directory, a .kvb bundle or its model.safetensors$" "$TMP/err" "$cmd $p message"
    done
done
done_tests cli_inputs
