#!/bin/sh
# HF rope_scaling kinds end to end on synthetic models (no fixtures): each kind converts (SwiftKV
# and a cross-layer map) and runs (logits deterministic and finite: two runs equal bit for bit,
# which NaN never is), changes the logits against the plain rope, and a linear factor-1 model
# gives the plain model's logits bit for bit.
. tests/lib.sh
S="$BIN/kvsynth"; C="$BIN/kvconvert"; R="$BIN/kvrun"; V="$BIN/kvverify"
T=1,403,407,261,378,432,383,286,261,376
expect_rc 0 "plain model" -- "$S" "$TMP/plain" --preset tiny
expect_rc 0 "plain logits" -- "$R" "$TMP/plain" --logits-out "$TMP/plain.st" --tokens "$T"
# name|rope_scaling (original length 4: dynamic and longrope change from position 4 on)
while IFS='|' read -r name rs; do
    [ -n "$name" ] || continue
    expect_rc 0 "kvsynth $name" -- "$S" "$TMP/$name" --preset tiny --rope-scaling "$rs"
    expect_rc 0 "info $name" -- "$C" info "$TMP/$name"
    kind=${name%%[0-9]*}
    expect_grep "rope_scaling $kind" "$TMP/out" "info names $kind"
    for run in 1 2; do
        expect_rc 0 "logits $name ($run)" -- "$R" "$TMP/$name" --logits-out "$TMP/$name.$run.st" --tokens "$T"
    done
    expect_rc 0 "$name deterministic" -- "$V" logits "$TMP/$name.1.st" "$TMP/$name.2.st" --json
    expect_grep '"max_abs":0,' "$TMP/out" "$name: two runs equal and finite"
    "$V" logits "$TMP/plain.st" "$TMP/$name.1.st" --json --atol 0 >"$TMP/out" 2>&1
    if grep -q '"max_abs":0,' "$TMP/out"; then bad "$name: logits equal the plain rope's"; else ok; fi
    expect_rc 0 "$name converts to SwiftKV" -- "$C" "$TMP/$name" "$TMP/$name.skv" --swiftkv 2,2 -q
    expect_rc 0 "$name converts cross-layer" -- "$C" "$TMP/$name" "$TMP/$name.cl" --map sandwich-middle:2 -q
    expect_rc 0 "$name SwiftKV runs" -- "$R" "$TMP/$name.skv" --logits-out "$TMP/$name.skv.st" --tokens "$T"
    expect_rc 0 "$name cross-layer runs" -- "$R" "$TMP/$name.cl" --prompt "Once" -n 8 --temperature 0
    expect_grep "\"$kind\"" "$TMP/$name.skv/config.json" "$name: SwiftKV config keeps rope_scaling"
done <<'LIST'
linear2|{"rope_type": "linear", "factor": 2.0}
dynamic2|{"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4}
yarn4|{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
longrope1|{"rope_type": "longrope", "short_factor": [1, 1.5, 2, 3], "long_factor": [2, 4, 8, 16], "original_max_position_embeddings": 4, "factor": 8}
LIST
expect_rc 0 "linear factor 1" -- "$S" "$TMP/lin1" --preset tiny --rope-scaling '{"rope_type": "linear", "factor": 1.0}'
expect_rc 0 "linear factor 1 logits" -- "$R" "$TMP/lin1" --logits-out "$TMP/lin1.st" --tokens "$T"
expect_rc 0 "linear 1 vs plain" -- "$V" logits "$TMP/plain.st" "$TMP/lin1.st" --json
expect_grep '"max_abs":0,' "$TMP/out" "linear factor 1 = plain, bit for bit"
expect_rc 1 "kvsynth refuses an unread rope_scaling" -- "$S" "$TMP/bad" --rope-scaling '{"rope_type": "su", "factor": 2}'
expect_rc 1 "kvsynth refuses a bad yarn" -- "$S" "$TMP/bad2" --rope-scaling '{"rope_type": "yarn", "factor": 0.5}'
expect_grep "rope_scaling.factor" "$TMP/err" "bad yarn names the field"
done_tests cli_rope_scaling
