#!/bin/sh
# Resource limits (docs/RUNTIME.md "Memory budget"): --max-memory SIZE and KVFORGE_MAX_MEMORY on
# kvrun, kvdistill train/calibrate, kvverify model and kvconvert (decoded bundles). A budget
# below what a small synthetic model needs is refused with exit 1 and the breakdown; one above
# works; the option wins over the environment; a bad SIZE is a usage error (exit 2). Absurd lengths and thread counts are
# refused, and under ulimit -v a run far past the budget is refused by the budget, before any
# large allocation. Synthetic models only: runs without ../shared.
. tests/lib.sh
KR=$BIN/kvrun
KD=$BIN/kvdistill
KV=$BIN/kvverify
unset KVFORGE_MAX_MEMORY

"$BIN/kvsynth" "$TMP/m" >/dev/null 2>&1 && ok || bad "kvsynth"
"$BIN/kvsynth" --dtype bf16 "$TMP/mb" >/dev/null 2>&1 && ok || bad "kvsynth bf16"
"$BIN/kvsynth" --max-pos 200000 "$TMP/long" >/dev/null 2>&1 && ok || bad "kvsynth long context"
"$BIN/kvconvert" "$TMP/m" "$TMP/s" --map cla:2 -q >/dev/null 2>&1 && ok || bad "student"
i=0
while [ $i -lt 40 ]; do
    echo "Once upon a time a little cat named Tom went to the park. He saw a big dog and ran home."
    echo
    i=$((i + 1))
done >"$TMP/data.txt"

# ---- kvrun ----
# the weights are held in memory (copied from the file): counted first
expect_rc 1 "kvrun under a 10K budget" -- "$KR" "$TMP/m" --prompt hi -n 4 --max-memory 10K
expect_grep "the model needs .* (weights .*), over the 10 kB memory budget (--max-memory)" \
    "$TMP/err" "kvrun weights message"
# room for the weights (about 858 kB) but not for the run on top of them
expect_rc 1 "kvrun under an 870K budget" -- "$KR" "$TMP/m" --prompt hi -n 4 --max-memory 870K
expect_grep "the run needs .* (weights .*, KV cache .*, activations .*), over the 870 kB memory budget (--max-memory)" \
    "$TMP/err" "kvrun budget message"
expect_rc 0 "kvrun under a 1G budget" -- "$KR" "$TMP/m" --prompt hi -n 4 --max-memory 1G --seed 1
expect_rc 1 "bf16 weights over the budget" -- "$KR" "$TMP/mb" --prompt hi -n 2 --max-memory 300K
expect_grep "the model needs .* (weights .*), over the 300 kB memory budget" "$TMP/err" "weights in the message"
expect_rc 1 "KVFORGE_MAX_MEMORY=10K" -- env KVFORGE_MAX_MEMORY=10K "$KR" "$TMP/m" --prompt hi -n 4
expect_grep "memory budget (KVFORGE_MAX_MEMORY)" "$TMP/err" "the environment named"
expect_rc 0 "--max-memory wins over the environment" -- \
    env KVFORGE_MAX_MEMORY=10K "$KR" "$TMP/m" --prompt hi -n 4 --max-memory 1G --seed 1
for size in abc 0 -5 1.5X 12Q ""; do
    expect_rc 2 "--max-memory '$size'" -- "$KR" "$TMP/m" --prompt hi --max-memory "$size"
done
expect_grep "max-memory" "$TMP/err" "usage error names the option"
expect_rc 2 "KVFORGE_MAX_MEMORY=junk" -- env KVFORGE_MAX_MEMORY=junk "$KR" "$TMP/m" --prompt hi
expect_grep "KVFORGE_MAX_MEMORY 'junk'" "$TMP/err" "usage error names the variable"
expect_rc 1 "kvrun --ppl under the budget" -- "$KR" "$TMP/m" --ppl "$TMP/data.txt" --ctx 64 --max-memory 20K
expect_rc 1 "kvrun --bench under the budget" -- "$KR" "$TMP/m" --bench --prompt-len 16 -n 4 --max-memory 20K

# absurd lengths and thread counts: refused before anything is allocated
expect_rc 2 "kvrun -n 2000000000" -- "$KR" "$TMP/m" --prompt hi -n 2000000000
expect_rc 2 "kvrun --ctx 2000000000" -- "$KR" "$TMP/m" --ppl "$TMP/data.txt" --ctx 2000000000
expect_rc 2 "kvrun --prompt-len 2000000000" -- "$KR" "$TMP/m" --bench --prompt-len 2000000000
expect_rc 2 "kvrun --batch 2000000000" -- "$KR" "$TMP/m" --prompt hi --batch 2000000000
expect_rc 2 "kvrun --threads 100000" -- "$KR" "$TMP/m" --prompt hi --threads 100000
expect_rc 2 "kvdistill --threads 100000" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/x" --data "$TMP/data.txt" --steps 1 --threads 100000
expect_rc 2 "kvdistill --seq-len 100000000" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/x" --data "$TMP/data.txt" --steps 1 --seq-len 100000000
expect_rc 2 "kvdistill --batch 100000000" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/x" --data "$TMP/data.txt" --steps 1 --batch 100000000
expect_rc 2 "kvverify --threads 100000" -- "$KV" model "$TMP/m" "$TMP/s" --threads 100000
expect_rc 2 "kvverify --ctx 2000000000" -- "$KV" model "$TMP/m" "$TMP/s" --ctx 2000000000
# within the parsers' ranges, over the model: refused by the context check (exit 1), not by a
# failed allocation
expect_rc 1 "kvrun --ctx past max_position_embeddings" -- "$KR" "$TMP/m" --ppl "$TMP/data.txt" --ctx 1000000
expect_grep "allows" "$TMP/err" "context message"
expect_rc 1 "kvrun --prompt-len past the context" -- "$KR" "$TMP/m" --bench --prompt-len 16000000
# a 200000-position context (about 205 MB of KV cache) under a 50M budget and ulimit -v of 400 MB:
# the budget refuses it, before a failed allocation could. Sanitizer builds reserve terabytes
# of address space, so no ulimit -v there.
if ldd "$KR" 2>/dev/null | grep -q 'libasan'; then
    echo "note: ulimit -v case skipped: sanitizer build" >&2
    ok
else
    expect_rc 1 "long generation under ulimit -v and the budget" -- \
        sh -c 'ulimit -v 400000 && exec "$@"' sh "$KR" "$TMP/long" --prompt hi -n 199000 --max-memory 50M
    expect_grep "the run needs .*KV cache .*over the 50 MB memory budget" "$TMP/err" "refused by the budget first"
fi

# ---- kvdistill ----
expect_rc 1 "kvdistill train under a 300K budget" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/t1" --data "$TMP/data.txt" \
    --steps 1 --seq-len 16 --batch 2 --quiet --threads 1 --max-memory 300K
expect_grep "training needs .*training activations .*, over the 300 kB memory budget (--max-memory)" "$TMP/err" \
    "kvdistill budget message"
expect_rc 0 "kvdistill train under a 1G budget" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/t2" --data "$TMP/data.txt" \
    --steps 1 --seq-len 16 --batch 2 --eval-seqs 2 --quiet --threads 1 --max-memory 1G
expect_rc 1 "kvdistill train under KVFORGE_MAX_MEMORY" -- env KVFORGE_MAX_MEMORY=300K "$KD" train "$TMP/m" "$TMP/s" \
    "$TMP/t3" --data "$TMP/data.txt" --steps 1 --seq-len 16 --batch 2 --quiet --threads 1
expect_rc 2 "kvdistill --max-memory junk" -- "$KD" train "$TMP/m" "$TMP/s" "$TMP/t4" --data "$TMP/data.txt" \
    --steps 1 --max-memory junk
expect_rc 1 "kvdistill calibrate under a 100K budget" -- "$KD" calibrate "$TMP/m" --data "$TMP/data.txt" \
    --seq-len 16 --batch 2 --eval-seqs 2 --map cla:2 --quiet --threads 1 --max-memory 100K
expect_grep "over the 100 kB memory budget" "$TMP/err" "calibrate budget message"
expect_rc 0 "kvdistill calibrate under a 1G budget" -- "$KD" calibrate "$TMP/m" --data "$TMP/data.txt" \
    --seq-len 16 --batch 2 --eval-seqs 2 --map cla:2 --quiet --threads 1 --max-memory 1G

# ---- bundles: the decoded tensors count (kvrun on a .kvb, kvconvert unbundle) ----
"$BIN/kvconvert" bundle "$TMP/m" "$TMP/m.kvb" -q >/dev/null 2>&1 && ok || bad "bundle"
expect_rc 1 "kvrun on a bundle under a 500K budget" -- "$KR" "$TMP/m.kvb" --prompt hi -n 2 --max-memory 500K
expect_grep "m.kvb needs .* (bundle tensors .*), over the 500 kB memory budget" "$TMP/err" "bundle budget message"
expect_rc 1 "unbundle under a 500K budget" -- "$BIN/kvconvert" unbundle "$TMP/m.kvb" "$TMP/ub" --max-memory 500K
[ ! -e "$TMP/ub" ] && ok || bad "a refused unbundle left $TMP/ub"
expect_rc 0 "unbundle under a 1G budget" -- "$BIN/kvconvert" unbundle "$TMP/m.kvb" "$TMP/ub" --max-memory 1G
expect_rc 2 "kvconvert --max-memory junk" -- "$BIN/kvconvert" unbundle "$TMP/m.kvb" "$TMP/ub2" --max-memory junk

# ---- kvverify model ----
expect_rc 1 "kvverify model under a 50K budget" -- "$KV" model "$TMP/m" "$TMP/s" --ctx 32 --max-windows 1 --max-memory 50K
expect_grep "over the 50 kB memory budget (--max-memory)" "$TMP/err" "kvverify budget message"
expect_rc 0 "kvverify model under a 1G budget" -- "$KV" model "$TMP/m" "$TMP/s" --ctx 32 --max-windows 1 --max-memory 1G
expect_rc 2 "kvverify --max-memory 0" -- "$KV" model "$TMP/m" "$TMP/s" --max-memory 0
done_tests cli_budget
