#!/bin/sh
# Iterative prefill against sequential prefill (METHODS.md s1, docs/RESULTS.md): for every
# configuration pizza|sandwich|lasagna x bottom|top|middle at l = 2 and 3 of stories260K, the
# 64 tokens of the golden logits file's sequence $SEQ (default 0), kvrun --logits-out with
# --prefill sequential, iterative-block:N (one block from the lowest upward layer to the highest
# target) and iterative:N (LCKV's plan, one cyclic group at a time), N = $PASSES (default 9),
# compared by kvverify logits: max |logit diff| and argmax agreement out of 64.
# TEXT="..." uses BOS + the first 63 tokens of TEXT instead of a golden sequence (the issue's
# figures are for the first story of tinystories_val.txt: see docs/RESULTS.md).
# Prints one line per configuration; exits 1 when the per-group plan misses 64/64 anywhere.
BIN=${KV_BIN:-$PWD/${BUILD:-build}/bin}
SHARED=${SHARED:-../shared}
M=$SHARED/models/stories260K
G=$SHARED/golden/stories260K_logits.safetensors
SEQ=${SEQ:-0}
PASSES=${PASSES:-9}
if [ ! -d "$M" ] || [ ! -f "$G" ]; then
    echo "prefill_plan_bench: $SHARED fixtures not found, skipped"
    exit 0
fi
TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT
export KVFORGE_CACHE_DIR="$TMP/cache"
# sequence SEQ's 64 ids from the golden file ('tokens' I32 [3, 64])
hl=$(od -An -t u8 -N 8 "$G" | tr -d ' ')
hdr=$(dd if="$G" bs=1 skip=8 count="$hl" 2>/dev/null)
off=$(printf '%s' "$hdr" | sed -n 's/.*"tokens":{[^}]*"data_offsets":\[\([0-9]*\),.*/\1/p')
ids=$(od -An -t d4 -v -j $((8 + hl + off + SEQ * 256)) -N 256 "$G" | tr -s ' \n' ',,' | sed 's/^,//; s/,$//')
if [ -n "$TEXT" ]; then
    text_ids=$("$BIN/kvrun" "$M" --tokenize "$TEXT" | tr -s ' \n' ',,' | sed 's/^,//; s/,$//')
    ids=$(printf '1,%s' "$text_ids" | cut -d, -f1-64)
    [ "$(printf '%s\n' "$ids" | awk -F, '{print NF}')" = 64 ] || { echo "prefill_plan_bench: TEXT gives fewer than 63 tokens"; exit 1; }
fi
# "max_abs argmax_agree" of two dumps
cmp_dumps() {
    "$BIN/kvverify" logits "$1" "$2" --atol 1e9 --json >"$TMP/cmp" 2>/dev/null
    printf '%s %s\n' "$(sed -n 's/.*"max_abs":\([^,}]*\).*/\1/p' "$TMP/cmp")" \
        "$(sed -n 's/.*"argmax_agree":\([0-9]*\).*/\1/p' "$TMP/cmp")"
}
printf '%-18s %-7s %26s %26s\n' "configuration" "groups" "iterative-block:$PASSES" "iterative:$PASSES (per group)"
printf '%-18s %-7s %12s %13s %12s %13s\n' "" "" "max|diff|" "argmax" "max|diff|" "argmax"
# MAPS="lasagna-top:2 ..." measures only those
if [ -z "$MAPS" ]; then
    for l in 2 3; do for part in pizza sandwich lasagna; do for tgt in bottom top middle; do
        MAPS="$MAPS $part-$tgt:$l"
    done; done; done
fi
status=0
for map in $MAPS; do
            d="$TMP/map"
            "$BIN/kvconvert" "$M" "$d" --map "$map" -q >/dev/null 2>"$TMP/err" || { echo "$map: kvconvert failed: $(cat "$TMP/err")"; status=1; continue; }
            groups=$("$BIN/kvconvert" plan "$M" --map "$map" | sed -n 's/^iterative prefill: \([0-9]*\) cyclic group.*/\1/p')
            for mode in sequential "iterative-block:$PASSES" "iterative:$PASSES"; do
                "$BIN/kvrun" "$d" --logits-out "$TMP/$mode.st" --tokens "$ids" --prefill "$mode" >/dev/null 2>"$TMP/err" ||
                    { echo "$map $mode: kvrun failed: $(cat "$TMP/err")"; status=1; }
            done
            set -- $(cmp_dumps "$TMP/iterative-block:$PASSES.st" "$TMP/sequential.st") $(cmp_dumps "$TMP/iterative:$PASSES.st" "$TMP/sequential.st")
            printf '%-18s %-7s %12.4g %10s/64 %12.4g %10s/64\n' "$map" "${groups:-0}" "$1" "$2" "$3" "$4"
            [ "$4" = 64 ] || status=1
            rm -rf "$d"
done
exit $status
