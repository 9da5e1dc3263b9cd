#!/bin/sh
# Sliding-window models end to end on synthetic checkpoints (no fixtures):
#   - a Mistral with window 8 gives the windowless twin's logits bit for bit on prompts of up to
#     8 tokens and different ones past it; one pass, chunks of 3 and single steps agree;
#   - info / plan count the ring KV cache; a cross-layer map keeps the windows (LCKV's 's'),
#     runs, and survives a bundle round trip; SwiftKV refuses windows by name; kvdistill trains
#     a windowed student (the windows kept) and calibrates without SwiftKV candidates;
#   - Qwen2 with use_sliding_window / max_window_layers reads and runs.
. tests/lib.sh
S="$BIN/kvsynth"; C="$BIN/kvconvert"; R="$BIN/kvrun"; V="$BIN/kvverify"; KD="$BIN/kvdistill"
SHORT=1,403,407,261,378,432,383,286
LONG=1,403,407,261,378,432,383,286,261,376,300,301,302,303,304,305,306,307,308,309,310,311,312,313,314,315,316,317,318,319,320
expect_rc 0 "mistral window 8" -- "$S" "$TMP/w8" --preset tiny --arch mistral --sliding-window 8
expect_rc 0 "mistral no window" -- "$S" "$TMP/full" --preset tiny --arch mistral
for m in w8 full; do
    expect_rc 0 "$m short" -- "$R" "$TMP/$m" --logits-out "$TMP/$m.short.st" --tokens "$SHORT"
    expect_rc 0 "$m long" -- "$R" "$TMP/$m" --logits-out "$TMP/$m.long.st" --tokens "$LONG"
done
expect_rc 0 "8 tokens: the windowless logits bit for bit" -- "$V" logits "$TMP/w8.short.st" "$TMP/full.short.st" --atol 0
expect_rc 1 "31 tokens: past the window, different" -- "$V" logits "$TMP/w8.long.st" "$TMP/full.long.st" --atol 1e-3
for b in 1 3; do
    expect_rc 0 "batch $b" -- "$R" "$TMP/w8" --logits-out "$TMP/w8.b$b.st" --tokens "$LONG" --batch "$b"
    expect_rc 0 "batch $b = one pass (rounding)" -- "$V" logits "$TMP/w8.long.st" "$TMP/w8.b$b.st" --atol 1e-5
done
expect_rc 0 "generate past the window" -- "$R" "$TMP/w8" --prompt "Once upon a time" -n 40 --temperature 0
# info / plan: the window and the cache it holds
expect_rc 0 "info" -- "$C" info "$TMP/w8"
expect_grep "sliding window 8 positions on 4 of 4 layers" "$TMP/out" "info names the window"
expect_rc 0 "info json" -- "$C" info "$TMP/w8" --json
expect_grep '"sliding_window":8,"sliding_window_layers":4' "$TMP/out" "info json window"
expect_rc 0 "plan cla:2" -- "$C" plan "$TMP/w8" --map cla:2
expect_grep "KV cache at 512 positions with sliding-window rings" "$TMP/out" "plan counts the rings"
# a cross-layer map keeps the windows as LCKV's 's' suffix
expect_rc 0 "convert cla:2" -- "$C" "$TMP/w8" "$TMP/w8cla" --map cla:2 -q --no-sync
expect_grep '"layer_types":	"0s_0s_2s_2s"' "$TMP/w8cla/config.json" "windows as 's' suffixes"
expect_grep '"sliding_window":	8' "$TMP/w8cla/config.json" "window width kept"
expect_rc 0 "cla:2 runs" -- "$R" "$TMP/w8cla" --logits-out "$TMP/cla.st" --tokens "$LONG"
expect_rc 0 "cla:2 bundle" -- "$C" bundle "$TMP/w8cla" "$TMP/cla.kvb" -q
expect_rc 0 "cla:2 unbundle" -- "$C" unbundle "$TMP/cla.kvb" "$TMP/cla_back"
cmp -s "$TMP/w8cla/config.json" "$TMP/cla_back/config.json" && ok || bad "unbundled config differs"
expect_rc 0 "bundle runs" -- "$R" "$TMP/cla.kvb" --logits-out "$TMP/clab.st" --tokens "$LONG"
expect_rc 0 "bundle logits" -- "$V" logits "$TMP/cla.st" "$TMP/clab.st" --atol 0
# refused by name: SwiftKV over windows
expect_rc 1 "swiftkv refused" -- "$C" "$TMP/w8" "$TMP/never" --swiftkv 2
expect_grep "does not run SwiftKV with sliding windows" "$TMP/err" "swiftkv message"
[ -e "$TMP/never" ] && bad "swiftkv output written" || ok
# training: a windowed student distils, keeps its windows, runs
printf 'Once upon a time there was a cat.\n\nThe dog ran to the park and played with a ball.\n' >"$TMP/data.txt"
expect_rc 0 "kvdistill a windowed student" -- "$KD" train "$TMP/w8" "$TMP/w8cla" "$TMP/trained" --data "$TMP/data.txt" \
    --steps 2 --seq-len 16 --batch 1 --eval-seqs 1 --quiet --threads 1
expect_grep '"layer_types":	"0s_0s_2s_2s"' "$TMP/trained/config.json" "trained student keeps its windows"
expect_rc 0 "trained student runs" -- "$R" "$TMP/trained" --prompt "Once" -n 12 --temperature 0
expect_rc 1 "kvdistill swiftkv student of a windowed teacher" -- "$KD" student "$TMP/w8" "$TMP/never" --map swiftkv:2
[ -e "$TMP/never" ] && bad "swiftkv student written" || ok
expect_rc 0 "calibrate a windowed teacher" -- "$KD" calibrate "$TMP/w8" --data "$TMP/data.txt" --seq-len 16 --json
grep -q '"kind":"swiftkv"' "$TMP/out" && bad "calibrate ranked SwiftKV candidates" || ok
# Qwen2: layers >= max_window_layers
expect_rc 0 "qwen2 window" -- "$S" "$TMP/q" --preset qwen2-tiny --sliding-window 6 --window-layers 2
expect_rc 0 "qwen2 info" -- "$C" info "$TMP/q"
expect_grep "sliding window 6 positions on 2 of 4 layers" "$TMP/out" "qwen2 windows on layers 2, 3"
expect_rc 0 "qwen2 runs" -- "$R" "$TMP/q" --logits-out "$TMP/q.st" --tokens "$LONG"
expect_rc 2 "--window-layers needs qwen2" -- "$S" "$TMP/x" --preset tiny --window-layers 1
done_tests cli_window
