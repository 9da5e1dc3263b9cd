#!/bin/sh
# kvverify CLI: usage, kernel parity status without a GPU, logits comparison on the golden file
. tests/lib.sh
require_shared cli_kvverify
V="$BIN/kvverify"
G=$SHARED/golden/stories260K_logits.safetensors
expect_rc 0 "help" -- "$V" --help
expect_grep "kernels" "$TMP/out" "help lists kernels"
expect_rc 0 "version" -- "$V" --version
# help and usage errors never touch the GPU libraries: cuBLAS (whose start-up code cost most of a
# second before main) is loaded only when a CUDA backend starts (ld.so's LD_DEBUG lists loads)
for args in --help "--bogus" "logits onlyone"; do
    LD_DEBUG=libs "$V" $args >/dev/null 2>"$TMP/ld.err"
    if grep -q "libcublas" "$TMP/ld.err"; then bad "kvverify $args loaded cuBLAS"; else ok; fi
done
if command -v ldd >/dev/null; then
    if ldd "$V" | grep -q libcublas; then bad "kvverify links libcublas"; else ok; fi
fi
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
# the parity table itself, on the CPU backend at 2 threads against 1 thread
expect_rc 0 "table on the cpu" -- "$V" kernels --device cpu --threads 2 --json
expect_grep '"status":"passed"' "$TMP/out" "table passes"
expect_grep '"device":"cpu (2 threads)","reference":"cpu (1 thread)"' "$TMP/out" "backends named"
expect_grep '"name":"attention bf16 gqa8 strict T=5 S=1030: out"' "$TMP/out" "bf16 strict case listed"
expect_grep '"name":"attention_backward gqa4 strict T=32 S=1032: dk"' "$TMP/out" "backward case listed"
expect_grep '"name":"embedding id = vocab refused: refused (KV_EINVAL)"' "$TMP/out" "refusal case listed"
cases=$(sed 's/.*"cases":\([0-9]*\).*/\1/' "$TMP/out")
[ "${cases:-0}" -gt 16 ] && ok || bad "only '$cases' cases"
expect_rc 0 "bit for bit where the kernels promise it" -- "$V" kernels --device cpu --exact --filter attention
expect_grep "kernels: passed" "$TMP/out" "exact attention passes"
expect_grep "(bit for bit)" "$TMP/out" "exact said"
expect_rc 1 "a filter matching nothing" -- "$V" kernels --device cpu --filter no-such-case
expect_grep "no case matches" "$TMP/err" "empty filter named"
expect_rc 2 "unknown device" -- "$V" kernels --device tpu
expect_rc 2 "bad threads" -- "$V" kernels --device cpu --threads 0
# logits: a file against itself matches; different rows differ in tokens; a missing file fails
expect_rc 0 "self compare" -- "$V" logits "$G" "$G" --batch-a 2 --batch-b 2 --json
expect_grep '"max_abs":0,' "$TMP/out" "zero difference"
expect_grep '"argmax_agree":64' "$TMP/out" "all argmax agree"
expect_rc 1 "rows differ" -- "$V" logits "$G" "$G" --batch-a 0 --batch-b 1
expect_grep "token ids differ" "$TMP/err" "token mismatch named"
expect_rc 1 "row out of range" -- "$V" logits "$G" "$G" --batch-a 5
expect_rc 1 "missing file" -- "$V" logits "$TMP/nope.safetensors" "$G"
expect_grep "nope.safetensors" "$TMP/err" "missing file named"
# model: a student against its teacher on the CPU; ppl as kvrun --ppl computes it
M=$SHARED/models/stories260K
D=$SHARED/data/tinystories_val.txt
"$BIN/kvconvert" "$M" "$TMP/pt3" --map pizza-top:3 -q --no-sync >/dev/null 2>&1 || bad "convert pizza-top:3"
expect_rc 0 "model: a model against itself" -- "$V" model "$M" "$M" --atol 0 --max-kl 0 --min-top1 1 --json
expect_grep '"max_abs":0,' "$TMP/out" "itself: zero difference"
expect_grep '"pass":true' "$TMP/out" "itself: pass"
expect_rc 0 "model: student vs teacher, report only" -- "$V" model "$M" "$TMP/pt3" --text "$D" --ctx 64 --max-windows 4 --json
expect_grep '"gated":false' "$TMP/out" "no gate given"
expect_grep '"windows":4,"ctx":64,"positions":256' "$TMP/out" "4 windows of 64"
ppl_b=$(sed 's/.*"ppl_b":\([0-9.]*\).*/\1/' "$TMP/out")
"$BIN/kvrun" "$TMP/pt3" --ppl "$D" --ctx 64 --max-windows 4 --json >"$TMP/ppl.json" 2>/dev/null
ppl_run=$(sed 's/.*"perplexity": \([0-9.]*\).*/\1/' "$TMP/ppl.json")
awk -v a="$ppl_b" -v b="$ppl_run" 'BEGIN { d = a - b; exit !(a > 0 && d < 1e-4 && d > -1e-4) }' && ok || bad "ppl $ppl_b vs kvrun --ppl $ppl_run"
expect_rc 1 "model: gate on top-1" -- "$V" model "$M" "$TMP/pt3" --text "$D" --ctx 64 --max-windows 4 --min-top1 1
expect_grep "under --min-top1" "$TMP/out" "failed gate named"
expect_grep "model: FAIL" "$TMP/out" "fail said"
expect_rc 1 "model: gate on ppl" -- "$V" model "$M" "$TMP/pt3" --max-ppl-delta 0
expect_rc 0 "model: generous gates pass" -- "$V" model "$M" "$TMP/pt3" --max-ppl-delta 10 --max-kl 100 --min-top1 0
expect_grep "model: PASS" "$TMP/out" "pass said"
expect_rc 2 "model: one model on the cpu is a usage error" -- "$V" model "$M" --device cpu
expect_rc 2 "model: bad --min-top1" -- "$V" model "$M" "$M" --min-top1 2
expect_rc 1 "model: missing model" -- "$V" model "$M" "$TMP/nope"
expect_grep "nope" "$TMP/err" "missing model named"
# one model: CPU against the GPU; without one it says so and fails
"$V" model "$M" >"$TMP/m.out" 2>"$TMP/m.err"; rc=$?
if grep -q "no CUDA device found" "$TMP/m.err"; then
    [ $rc = 1 ] && ok || bad "model without a device must exit 1, got $rc"
else
    [ $rc = 0 ] && ok || bad "model on the GPU: exit $rc: $(cat "$TMP/m.err")"
fi
done_tests cli_kvverify
