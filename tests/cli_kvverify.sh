#!/bin/sh
# kvverify CLI: usage, kernel parity status without a GPU, logits comparison on the golden file
. tests/lib.sh
require_shared cli_kvverify
V="$BIN/kvverify"
G=$SHARED/golden/stories260K_logits.safetensors
expect_rc 0 "help" -- "$V" --help
expect_grep "kernels" "$TMP/out" "help lists kernels"
expect_rc 0 "version" -- "$V" --version
expect_rc 2 "no command" -- "$V"
expect_rc 2 "unknown command" -- "$V" frobnicate
expect_rc 2 "bad atol" -- "$V" logits a b --atol -1
expect_grep "Try 'kvverify --help'" "$TMP/err" "usage hint"
# kernels: verified on a GPU; without one (or without a CUDA build) it says that no CUDA device
# was found and exits 1, unless explicitly allowed
"$V" kernels --json >"$TMP/k.json" 2>"$TMP/k.err"; rc=$?
if grep -q '"status":"passed"' "$TMP/k.json"; then
    [ $rc = 0 ] && ok || bad "passed but exit $rc"
    expect_rc 0 "allow no device, with a device" -- "$V" kernels --allow-no-device
else
    [ $rc = 1 ] && ok || bad "kernels without a device must exit 1, got $rc"
    expect_grep '"status":"no CUDA device"' "$TMP/k.json" "no-device status"
    expect_grep "no CUDA device found" "$TMP/k.err" "no device said plainly"
    expect_rc 0 "allow no device" -- "$V" kernels --allow-no-device
    expect_grep "no CUDA device found" "$TMP/err" "allowed, but said"
fi
# logits: a file against itself matches; different rows differ in tokens; a missing file fails
expect_rc 0 "self compare" -- "$V" logits "$G" "$G" --batch-a 2 --batch-b 2 --json
expect_grep '"max_abs":0,' "$TMP/out" "zero difference"
expect_grep '"argmax_agree":64' "$TMP/out" "all argmax agree"
expect_rc 1 "rows differ" -- "$V" logits "$G" "$G" --batch-a 0 --batch-b 1
expect_grep "token ids differ" "$TMP/err" "token mismatch named"
expect_rc 1 "row out of range" -- "$V" logits "$G" "$G" --batch-a 5
expect_rc 1 "missing file" -- "$V" logits "$TMP/nope.safetensors" "$G"
expect_grep "nope.safetensors" "$TMP/err" "missing file named"
done_tests cli_kvverify
