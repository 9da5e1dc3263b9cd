#!/bin/sh
# kvrun --bench --json (issue 18): the bytes a decode step reads (weights as held + every layer's
# K/V rows of the positions it sees), the read loop and GEMM baselines of the same run and the
# ratios against them; BF16 weights held at 2 bytes. Synthetic models: no fixtures needed.
. tests/lib.sh
# L=2, kv heads 2 of hd 16: kv_dim 32; prompt 8 + 4 steps: mean context 8 + 5/2 = 10.5 positions
SHAPE="--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 300 --max-pos 64"
expect_rc 0 "synth f32" -- "$BIN/kvsynth" $SHAPE "$TMP/f32"
expect_rc 0 "synth bf16" -- "$BIN/kvsynth" $SHAPE --dtype bf16 "$TMP/bf16"
field() { sed -n "s/.*\"$1\": \"*\([0-9.a-zA-Z]*\).*/\1/p" "$2"; }
for dt in f32 bf16; do
    expect_rc 0 "bench $dt" -- "$BIN/kvrun" "$TMP/$dt" --bench --json --prompt-len 8 -n 4 --repeat 1 --threads 1
    cp "$TMP/out" "$TMP/$dt.json"
done
F=$TMP/f32.json B=$TMP/bf16.json
expect_grep '"weight_dtype": "F32"' "$F" "f32 weights held as F32"
expect_grep '"weight_dtype": "BF16"' "$B" "bf16 weights held as BF16"
# the variant decode runs: named, and KV_CPU_ISA's choice when it names one
for f in "$F" "$B"; do
    grep -Eq '"decode_kernel": "(c|avx2|avx512|avx512bf16)"' "$f" && ok || bad "$f: no decode_kernel"
done
KV_CPU_ISA=c "$BIN/kvrun" "$TMP/bf16" --bench --json --prompt-len 8 -n 2 --repeat 1 --threads 1 \
    >"$TMP/c.json" 2>/dev/null
expect_grep '"decode_kernel": "c"' "$TMP/c.json" "KV_CPU_ISA=c reaches the bf16 decode kernel"
# K/V read per step: 2 (K, V) * 2 layers * 32 * elem * 10.5 = 5376 (F32 cache), 2688 (BF16)
kv_f=$(awk -v d="$(field decode_bytes_per_token "$F")" -v w="$(field weight_bytes_per_token "$F")" 'BEGIN { print d - w }')
kv_b=$(awk -v d="$(field decode_bytes_per_token "$B")" -v w="$(field weight_bytes_per_token "$B")" 'BEGIN { print d - w }')
[ "$kv_f" = 5376 ] && ok || bad "f32: decode bytes - weight bytes = $kv_f, wanted 5376"
[ "$kv_b" = 2688 ] && ok || bad "bf16: decode bytes - weight bytes = $kv_b, wanted 2688"
# BF16 matrices at 2 bytes: the step reads a little over half the F32 model's weight bytes
awk -v b="$(field weight_bytes_per_token "$B")" -v f="$(field weight_bytes_per_token "$F")" \
    'BEGIN { exit !(b > 0.5 * f && b < 0.55 * f) }' && ok ||
    bad "bf16 weight bytes per token $(field weight_bytes_per_token "$B") vs f32 $(field weight_bytes_per_token "$F")"
for f in "$F" "$B"; do
    for k in read_loop_gb_per_s gemm_gflop_per_s decode_gb_per_s prefill_gflop_per_s \
        decode_read_loop_ratio prefill_gemm_ratio read_loop_paired_gb_per_s \
        decode_read_loop_paired_ratio step_read_loop_gb_per_s decode_step_read_loop_ratio; do
        awk -v x="$(field $k "$f")" 'BEGIN { exit !(x > 0) }' && ok || bad "$f: $k '$(field $k "$f")' not > 0"
    done
    # the ratios are the quotients of the fields printed
    awk -v r="$(field decode_read_loop_ratio "$f")" -v a="$(field decode_gb_per_s "$f")" \
        -v b="$(field read_loop_gb_per_s "$f")" 'BEGIN { d = r - a / b; exit !(d < 0.002 && d > -0.002) }' &&
        ok || bad "$f: decode_read_loop_ratio is not decode_gb_per_s / read_loop_gb_per_s"
    # one repeat: its decode is the best, paired with the one read loop sample before it
    awk -v r="$(field decode_read_loop_paired_ratio "$f")" -v a="$(field decode_gb_per_s "$f")" \
        -v b="$(field read_loop_paired_gb_per_s "$f")" 'BEGIN { d = r - a / b; exit !(d < 0.002 && d > -0.002) }' &&
        ok || bad "$f: decode_read_loop_paired_ratio is not decode_gb_per_s / read_loop_paired_gb_per_s"
    awk -v r="$(field decode_step_read_loop_ratio "$f")" -v a="$(field decode_gb_per_s "$f")" \
        -v b="$(field step_read_loop_gb_per_s "$f")" 'BEGIN { d = r - a / b; exit !(d < 0.002 && d > -0.002) }' &&
        ok || bad "$f: decode_step_read_loop_ratio is not decode_gb_per_s / step_read_loop_gb_per_s"
done
# decode from context 1, timed in the same run: the context ratio is the quotient of the two
# speeds, and with a 1-token prompt the main case is that case (ratio exactly 1)
for f in "$F" "$B"; do
    awk -v r="$(field decode_context_ratio "$f")" -v a="$(field decode_tokens_per_s "$f")" \
        -v b="$(field decode_at_1_tokens_per_s "$f")" 'BEGIN { d = r - a / b; exit !(b > 0 && d < 0.002 && d > -0.002) }' &&
        ok || bad "$f: decode_context_ratio is not decode_tokens_per_s / decode_at_1_tokens_per_s"
done
"$BIN/kvrun" "$TMP/f32" --bench --json --prompt-len 1 -n 3 --repeat 2 --threads 1 >"$TMP/p1.json" 2>/dev/null
expect_grep '"decode_context_ratio": 1.0000' "$TMP/p1.json" "a 1-token prompt is its own context-1 case"
expect_rc 0 "bench text" -- "$BIN/kvrun" "$TMP/bf16" --bench --prompt-len 8 -n 4 --repeat 1 --threads 1
expect_grep "x the read loop" "$TMP/out" "text names the read loop ratio"
expect_grep "x a 1024^3 GEMM" "$TMP/out" "text names the GEMM ratio"
expect_grep "from context 1 .* tok/s (ratio " "$TMP/out" "text names decode from context 1"
expect_grep "paired: the read loop over each repeat's decode bytes" "$TMP/out" "text names the paired read loop"
expect_grep "step loop: the read loop over the bytes a decode step reads" "$TMP/out" "text names the step read loop"
done_tests cli_kvbench
