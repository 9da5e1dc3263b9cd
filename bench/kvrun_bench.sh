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
#   peak RSS of a generation (a prompt of about 520 tokens, 32 new, 2 threads) / (the weights
#     files + its KV cache)                                                            [<= 1.1]
# Paired: REPEAT rounds (default 3), each running the four cases (F32 and BF16, 1 and 2 threads)
# one after another with --repeat 1, every other round in reverse order (on the VMs here the
# first run of a series ran slower by itself: docs/RESULTS.md, round 10); a case's figures are
# the medians over the rounds, and the ratios between cases (BF16 over F32, 2 threads over 1)
# the medians of each round's ratio, so machine load that comes and goes meets both sides of a
# ratio alike.
# KEEP=DIR reuses (or keeps) the models and the JSON there. SHAPES picks the kvsynth presets
# (default stories110m; SHAPES="stories110m tinyllama-1.1b" adds the 1.1B rows, 4.4 GB of F32
# and 2.2 GB of BF16 weights, models kept under DIR/1.1b-f32 and -bf16).
BIN=${KV_BIN:-$PWD/${BUILD:-build}/bin}
REPEAT=${REPEAT:-3}
if [ -n "$KEEP" ]; then DIR=$KEEP; mkdir -p "$DIR" || exit 1; else
    DIR=$(mktemp -d) || exit 1
    trap 'rm -rf "$DIR"' EXIT
fi
SHAPES=${SHAPES:-stories110m}
field() { sed -n "s/.*\"$1\": \"*\([0-9.a-zA-Z]*\).*/\1/p" "$2"; }
# median of the numbers on stdin, %.4f
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
    printf "%.4f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# median over the rounds of field $1 of case $2 (files $2.r1.json ..)
med() { for r in $(seq "$REPEAT"); do field "$1" "$2.r$r.json"; done | median; }
# median over the rounds of field $1 of case $2 over the same field of case $3
med_ratio() {
    for r in $(seq "$REPEAT"); do
        awk -v a="$(field "$1" "$2.r$r.json")" -v b="$(field "$1" "$3.r$r.json")" \
            'BEGIN { if (b > 0) print a / b }'
    done | median
}
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
    for r in $(seq "$REPEAT"); do
        dts="f32 bf16" ths="1 2"
        [ $((r % 2)) = 0 ] && dts="bf16 f32" ths="2 1" # every other round in reverse order
        for dt in $dts; do
            for t in $ths; do
                OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} "$BIN/kvrun" "$DIR/$pre$dt" --bench \
                    --json --prompt-len 512 -n 32 --repeat 1 --threads $t \
                    >"$DIR/$pre$dt.t$t.p512.r$r.json" || exit 1
            done
        done
    done
    for dt in f32 bf16; do
        for t in 1 2; do
            c=$DIR/$pre$dt.t$t.p512
            echo "$tag $dt ${t}t: decode@512 $(med decode_gb_per_s "$c") GB/s / read loop" \
                "$(med read_loop_gb_per_s "$c") GB/s = $(med decode_read_loop_ratio "$c") [>= 0.85]" \
                "(paired: $(med decode_read_loop_paired_ratio "$c") of $(med read_loop_paired_gb_per_s "$c") GB/s;" \
                "step: $(med decode_step_read_loop_ratio "$c") of $(med step_read_loop_gb_per_s "$c") GB/s);" \
                "prefill 512 $(med prefill_gflop_per_s "$c") GFLOP/s / GEMM" \
                "$(med gemm_gflop_per_s "$c") = $(med prefill_gemm_ratio "$c") [>= 0.6];" \
                "decode@512 / decode@1 = $(med decode_context_ratio "$c") [>= 0.85]"
        done
        echo "$tag $dt: prefill 512 2 threads / 1 = $(med_ratio prefill_tokens_per_s \
            "$DIR/$pre$dt.t2.p512" "$DIR/$pre$dt.t1.p512") [>= 1.7]"
    done
    for t in 1 2; do
        echo "$tag ${t}t: BF16 decode@512 / F32 = $(med_ratio decode_tokens_per_s \
            "$DIR/${pre}bf16.t$t.p512" "$DIR/${pre}f32.t$t.p512") [>= 1.8]"
    done
    echo "$tag: medians over $REPEAT rounds (each round the four cases one after another)"
    prompt=$(i=0; while [ $i -lt 40 ]; do printf 'Once upon a time there was '; i=$((i + 1)); done)
    for dt in f32 bf16; do
        line=$(OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} "$BIN/kvrun" "$DIR/$pre$dt" \
            --prompt "$prompt" -n 32 --threads 2 --temperature 0 2>&1 >/dev/null | tail -n 1)
        files=$(cat "$DIR/$pre$dt"/*.safetensors | wc -c)
        echo "$line" | awk -v f="$files" -v tag="$tag $dt" '{
            for (i = 1; i <= NF; i++) { if ($i == "RSS") rss = $(i + 1) * 1024; if ($i == "cache") kv = $(i + 1) }
            if (rss > 0 && f + kv > 0)
                printf "%s: peak RSS %.1f MB / (weights files %.1f MB + KV cache %.1f MB) = %.3f [<= 1.1]\n",
                    tag, rss / 1e6, f / 1e6, kv / 1e6, rss / (f + kv)
            else print tag ": no peak RSS in kvrun'"'"'s statistics" }'
    done
done
