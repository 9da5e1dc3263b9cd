#!/bin/sh
# bench/paired.sh OLD_BIN NEW_BIN [ROUNDS]: two builds of kvforge (e.g. a worktree of an older
# commit and build/bin), run alternately ROUNDS times (default 5) on the same inputs so that
# machine noise hits both alike. Cases: kvrun --bench on the synthetic stories110m shape (prompt
# 512, 64 decode steps) at 1 and 2 threads, kvconvert --swiftkv 6 of it, and a 40-step kvdistill
# of stories260K (needs ../shared). Prints per case the medians and the median of the per-round
# new/old ratios: tokens/s ratios > 1 and time (_s) ratios < 1 mean the new build is faster.
OLD=$1 NEW=$2 ROUNDS=${3:-5}
[ -x "$OLD/kvrun" ] && [ -x "$NEW/kvrun" ] || { echo "usage: bench/paired.sh OLD_BIN NEW_BIN [ROUNDS]" >&2; exit 2; }
W=$(mktemp -d) || exit 1
trap 'rm -rf "$W"' EXIT
export KVFORGE_CACHE_DIR="$W/cache"
M=../shared/models/stories260K
"$NEW/kvsynth" --preset stories110m "$W/m110" >/dev/null || exit 1
"$NEW/kvconvert" "$M" "$W/student" --swiftkv 3 -q --no-sync || exit 1
head -c 200000 ../shared/data/tinystories_val.txt >"$W/train.txt" || exit 1
out="$W/results.txt"
: >"$out"
seconds() { # CMD...: wall seconds of one run
    s=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || echo "FAILED: $*" >&2
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
for r in $(seq "$ROUNDS"); do
    for v in old new; do
        B=$OLD
        [ $v = new ] && B=$NEW
        for th in 1 2; do
            "$B/kvrun" "$W/m110" --bench --prompt-len 512 -n 64 --repeat 1 --threads $th --kv-dtype f32 \
                --json 2>/dev/null >"$W/b.json"
            echo "$r $v prefill_tok_s_t$th $(sed 's/.*"prefill_tokens_per_s": \([0-9.]*\).*/\1/' "$W/b.json")" >>"$out"
            echo "$r $v decode_tok_s_t$th $(sed 's/.*"decode_tokens_per_s": \([0-9.]*\).*/\1/' "$W/b.json")" >>"$out"
        done
        rm -rf "$W/conv"
        echo "$r $v convert_s $(seconds "$B/kvconvert" "$W/m110" "$W/conv" --swiftkv 6 -q --no-sync)" >>"$out"
        rm -rf "$W/dist"
        echo "$r $v distill_s $(seconds "$B/kvdistill" train "$M" "$W/student" "$W/dist" --data "$W/train.txt" \
            --steps 40 --seq-len 64 --batch 4 --threads 1)" >>"$out"
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
            if (!((name, "old", r) in v) || !((name, "new", r) in v) || v[name, "old", r] == 0) continue
            k++; o[k] = v[name, "old", r]; w[k] = v[name, "new", r]; q[k] = w[k] / o[k]
        }
        if (!k) continue
        lo = hi = q[1]; for (i = 2; i <= k; i++) { if (q[i] < lo) lo = q[i]; if (q[i] > hi) hi = q[i] }
        printf "| %s | %.3f | %.3f | %.3f [%.3f-%.3f] |\n", name, median(o, k), median(w, k), median(q, k), lo, hi
    }
}' "$out"
