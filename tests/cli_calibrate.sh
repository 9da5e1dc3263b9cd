#!/bin/sh
# calibration's recommendation (issue 17 item 2): never a candidate that saves nothing; the
# ranking shows each candidate's KV and prefill-compute saving beside its quality cost; when no
# saving candidate fits the budget it says so and names the one that costs least quality
. tests/lib.sh
require_shared cli_calibrate
S=$SHARED/models/stories260K
D=$SHARED/data/tinystories_val.txt
KD="$BIN/kvdistill"
run() { desc=$1; shift; expect_rc 0 "$desc" -- "$KD" calibrate "$S" --data "$D" --seq-len 64 --batch 4 --eval-seqs 4 --quiet --threads 1 "$@"; }
# the default candidates on this 5-layer model include swiftkv:4,1: the last layer's K/V from its
# own input, exactly what the original computes (KL 0): it saves nothing and was recommended
run "default candidates, loose budget" --budget 1000000
expect_grep "^   1  swiftkv:4,1 .* 0.0%     0.0% .*(saves nothing: never recommended)" "$TMP/out" "no-op marked in the ranking"
expect_grep "^rank  map .* KV  prefill .* KL .* ppl +%" "$TMP/out" "ranking shows both savings and the quality cost"
if grep -q "^recommended: swiftkv:4,1" "$TMP/out"; then bad "the no-op swiftkv:4,1 is recommended"; else ok; fi
expect_grep "^recommended: swiftkv:1,4 (2 of 5 KV slots: KV cache saving 60.0%, prefill compute saving 73.3%" "$TMP/out" "cheapest saving candidate recommended"
run "default candidates, 5% budget"
expect_grep "^recommended: none: no candidate that saves anything is within +5.0% zero-shot. The one that costs least quality is swiftkv:3,1 (KV cache saving 0.0%, prefill compute saving 22.2%" "$TMP/out" "nothing fits: says so and names the best"
run "only the no-op" --swiftkv 4 --groups 1
expect_grep "^recommended: none: no candidate saves KV-cache memory or prefill compute" "$TMP/out" "only no-ops: none"
run "json" --json --budget 1000000
if command -v python3 >/dev/null 2>&1; then
    python3 - "$TMP/out" <<'PY' && ok || bad "calibrate JSON: the recommendation saves nothing or savings missing"
import json, sys
d = json.load(open(sys.argv[1]))
by = {c["map"]: c for c in d["candidates"]}
assert all("prefill_compute_saving" in c and "saves" in c for c in d["candidates"])
assert by["swiftkv:4,1"]["saves"] is False
rec = by[d["recommended"]]
assert rec["saves"] and (rec["cache_saving"] > 0 or rec["prefill_compute_saving"] > 0), rec
PY
fi
run "json, 5% budget" --json
expect_grep '"best_saving_over_budget":	"swiftkv:3,1"' "$TMP/out" "json names the best over budget"
done_tests cli_calibrate
