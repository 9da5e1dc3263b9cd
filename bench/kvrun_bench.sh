#!/bin/sh
# The CPU runtime against its own baselines (docs/RESULTS.md, issue 18's rows): kvrun --bench
# --json on synthetic models of stories110M's shape (kvsynth --preset stories110m), F32 and
# BF16 weights, 1 and 2 threads, a 1-token and a 512-token prompt (32 decode steps each), then
# as ratios (goal in brackets):
#   decode@512 GB/s (weights + KV cache read per token) / the read loop of the same run [>= 0.85]
#     (and, paired, the median over repeats of a repeat's decode GB/s over the read loop run
#     across as many bytes just before it; and the same over the read loop across the very bytes
#     a decode step reads, its weights and K/V rows, "step")
#   BF16 decode tok/s / F32 decode tok/s at 512                                        [>= 1.8]
#   prefill 512 GFLOP/s / a 1024^3 F32 GEMM of the same run                            [>= 0.6]
#   prefill 512 tok/s with 2 threads / 1 thread                                        [>= 1.7]
#   decode tok/s after 512 tokens / after 1 (both timed in each repeat of one run)     [>= 0.85]
# KEEP=DIR reuses (or keeps) the models there; REPEAT=N runs per case (default 3). SHAPES picks
# the kvsynth presets (default stories110m; SHAPES="stories110m tinyllama-1.1b" adds the 1.1B
# rows, 4.4 GB of F32 and 2.2 GB of BF16 weights, models kept under DIR/1.1b-f32 and -bf16).
BIN=${KV_BIN:-$PWD/${BUILD:-build}/bin}
REPEAT=${REPEAT:-3}
if [ -n "$KEEP" ]; then DIR=$KEEP; mkdir -p "$DIR" || exit 1; else
    DIR=$(mktemp -d) || exit 1
    trap 'rm -rf "$DIR"' EXIT
fi
SHAPES=${SHAPES:-stories110m}
field() { sed -n "s/.*\"$1\": \"*\([0-9.a-zA-Z]*\).*/\1/p" "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
for shape in $SHAPES; do
    case $shape in
    stories110m) tag=110M pre= ;;
    tinyllama-1.1b) tag=1.1B pre=1.1b- ;;
    *) tag=$shape pre=$shape- ;;
    esac
    for dt in f32 bf16; do
        [ -f "$DIR/$pre$dt/model.safetensors" ] ||
            "$BIN/kvsynth" --preset "$shape" --dtype $dt --force "$DIR/$pre$dt" >/dev/null || exit 1
    done
    for dt in f32 bf16; do
        for t in 1 2; do
            OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} "$BIN/kvrun" "$DIR/$pre$dt" --bench \
                --json --prompt-len 512 -n 32 --repeat "$REPEAT" --threads $t \
                >"$DIR/$pre$dt.t$t.p512.json" || exit 1
        done
    done
    J=$DIR
    for dt in f32 bf16; do
        for t in 1 2; do
            f=$J/$pre$dt.t$t.p512.json
            echo "$tag $dt ${t}t: decode@512 $(field decode_gb_per_s "$f") GB/s / read loop" \
                "$(field read_loop_gb_per_s "$f") GB/s = $(field decode_read_loop_ratio "$f") [>= 0.85]" \
                "(paired: $(field decode_read_loop_paired_ratio "$f") of $(field read_loop_paired_gb_per_s "$f") GB/s;" \
                "step: $(field decode_step_read_loop_ratio "$f") of $(field step_read_loop_gb_per_s "$f") GB/s);" \
                "prefill 512 $(field prefill_gflop_per_s "$f") GFLOP/s / GEMM" \
                "$(field gemm_gflop_per_s "$f") = $(field prefill_gemm_ratio "$f") [>= 0.6];" \
                "decode@512 / decode@1 = $(field decode_context_ratio "$f") [>= 0.85]"
        done
        echo "$tag $dt: prefill 512 2 threads / 1 = $(ratio "$(field prefill_tokens_per_s \
            "$J/$pre$dt.t2.p512.json")" "$(field prefill_tokens_per_s "$J/$pre$dt.t1.p512.json")") [>= 1.7]"
    done
    for t in 1 2; do
        echo "$tag ${t}t: BF16 decode@512 / F32 = $(ratio "$(field decode_tokens_per_s \
            "$J/${pre}bf16.t$t.p512.json")" "$(field decode_tokens_per_s "$J/${pre}f32.t$t.p512.json")") [>= 1.8]"
    done
done
