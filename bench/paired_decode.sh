#!/bin/sh
# bench/paired_decode.sh OLD_BIN NEW_BIN [ROUNDS]: decode and prefill speed of two builds of
# kvforge run alternately ROUNDS times (default 5; old first in odd rounds, new first in even
# ones, as the first run of a pair ran slower by itself), so that machine noise hits both alike:
# kvrun --bench --json on the stories110m shape (kvsynth --preset stories110m), F32 and BF16
# weights, 1 and 2 threads, a 512-token prompt then 32 decode steps (MODELS=DIR reuses the
# models of bench/kvrun_bench.sh's KEEP=DIR, DIR/f32 and DIR/bf16). Prints per case the medians
# (a field one build does not print, such as decode_context_ratio before it existed, is left out)
# and the median of the per-round new/old ratios (> 1: the new build is faster); the raw rows
# go to stderr as they come.
OLD=$1 NEW=$2 ROUNDS=${3:-5}
[ -x "$OLD/kvrun" ] && [ -x "$NEW/kvrun" ] ||
    { echo "usage: bench/paired_decode.sh OLD_BIN NEW_BIN [ROUNDS]" >&2; exit 2; }
W=$(mktemp -d) || exit 1
trap 'rm -rf "$W"' EXIT
M=${MODELS:-$W}
for dt in f32 bf16; do
    [ -f "$M/$dt/model.safetensors" ] ||
        "$NEW/kvsynth" --preset stories110m --dtype $dt --force "$M/$dt" >/dev/null || exit 1
done
field() { sed -n "s/.*\"$1\": \"*\([0-9.]*\).*/\1/p" "$2"; }
out="$W/results.txt"
: >"$out"
for r in $(seq "$ROUNDS"); do
    builds="old new"
    [ $((r % 2)) = 0 ] && builds="new old" # the first run of a pair ran slower by itself
    for dt in f32 bf16; do
        for th in 1 2; do
            for v in $builds; do
                B=$OLD
                [ $v = new ] && B=$NEW
                OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} "$B/kvrun" "$M/$dt" --bench --json \
                    --prompt-len 512 -n 32 --repeat 1 --threads $th >"$W/b.json" 2>/dev/null ||
                    echo "FAILED: $B/kvrun $M/$dt --threads $th" >&2
                for f in decode_tokens_per_s decode_read_loop_ratio decode_context_ratio \
                    prefill_tokens_per_s; do
                    echo "$r $v ${dt}_t${th}_$f $(field $f "$W/b.json")" | tee -a "$out" >&2
                done
            done
        done
    done
done
awk '
{ v[$3, $2, $1] = $4; if (!($3 in seen)) { seen[$3] = 1; order[++n] = $3 } if ($1 > rounds) rounds = $1 }
function median(a, k,    i, j, t) { # sorts a[1..k] in place
    for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
}
END {
    print "| case | old (median) | new (median) | new/old per round: median [min-max] |"
    print "| --- | ---: | ---: | ---: |"
    for (c = 1; c <= n; c++) {
        name = order[c]; k = 0
        for (r = 1; r <= rounds; r++) {
            if (v[name, "old", r] == "" || v[name, "new", r] == "" || v[name, "old", r] + 0 == 0) continue
            k++; o[k] = v[name, "old", r]; w[k] = v[name, "new", r]; q[k] = w[k] / o[k]
        }
        if (!k) continue
        lo = hi = q[1]; for (i = 2; i <= k; i++) { if (q[i] < lo) lo = q[i]; if (q[i] > hi) hi = q[i] }
        printf "| %s | %.3f | %.3f | %.3f [%.3f-%.3f] |\n", name, median(o, k), median(w, k), median(q, k), lo, hi
    }
}' "$out"
