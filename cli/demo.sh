#!/bin/sh
# make demo: the whole pipeline on a synthetic Llama generated here (no fixtures, no download).
# Each stage runs when its tool is built; the output lands in ./demo.
set -e
BIN=${BUILD:-build}/bin
OUT=demo
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }
have() { [ -x "$BIN/$1" ]; }

step "1. generate a synthetic Llama (8 layers, GQA 8/4 heads, vocab 512)"
"$BIN/kvsynth" --preset tiny --layers 8 "$OUT/base"

step "2. inspect it"
"$BIN/kvconvert" info "$OUT/base"

step "3. plan a cross-layer map (sandwich-middle, 4 KV layers) and SwiftKV (l=4, g=2)"
"$BIN/kvconvert" plan "$OUT/base" --map sandwich-middle:4
"$BIN/kvconvert" plan "$OUT/base" --swiftkv 4,2

step "4. convert: SwiftKV l=4,g=2 (BF16) and lasagna-bottom:4"
"$BIN/kvconvert" "$OUT/base" "$OUT/swiftkv" --swiftkv 4,2 --dtype bf16 -q
"$BIN/kvconvert" "$OUT/base" "$OUT/lasagna" --map lasagna-bottom:4 -q
"$BIN/kvconvert" info "$OUT/swiftkv"

if have kvdistill; then
    step "5. distil the SwiftKV student against the original (a short CPU run)"
    echo "The synthetic model has random weights: it predicts almost uniformly, so teacher and student"
    echo "perplexities both sit near the vocabulary size (512) and differ by noise. What distillation"
    echo "repairs is how far the student's predictions are from the teacher's: KL(teacher || student)."
    awk 'BEGIN { srand(7); for (i = 0; i < 3000; i++) { s = ""; for (j = 0; j < 12; j++) s = s sprintf("%c", 97 + int(rand() * 26)); printf "%s the %s.\n", s, substr(s, 1, 5) } }' > "$OUT/text.txt"
    "$BIN/kvdistill" train "$OUT/base" "$OUT/swiftkv" "$OUT/swiftkv-distilled" --data "$OUT/text.txt" --steps 40 --seq-len 64 --batch 4 --lr 2e-3 --quiet || true
    if [ -f "$OUT/swiftkv-distilled/report.json" ]; then
        kl() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.eE+-]*\).*/\1/p" "$OUT/swiftkv-distilled/report.json"; }
        awk -v b="$(kl kl_before)" -v a="$(kl kl_after)" 'BEGIN {
            printf "result: KL(teacher || student) on held-out text %.4f -> %.4f: the distilled student is %.0f%% closer to the teacher\n", b, a, 100 * (1 - a / b)
            print "(full report: '"$OUT"'/swiftkv-distilled/report.json; its gap_closed compares perplexities, meaningless on random weights)" }'
    fi
fi

if "$BIN/kvconvert" --help | grep -q "bundle"; then
    MODEL_DIR="$OUT/swiftkv"
    [ -f "$OUT/swiftkv-distilled/model.safetensors" ] && MODEL_DIR="$OUT/swiftkv-distilled"
    step "6. bundle $MODEL_DIR (zstd chunks in a pax tar) and verify every checksum"
    "$BIN/kvconvert" bundle "$MODEL_DIR" "$OUT/swiftkv.kvb"
    ls -l "$OUT/swiftkv.kvb"
    "$BIN/kvverify" bundle "$OUT/swiftkv.kvb"
fi

if have kvrun; then
    step "7. run the bundle (random weights: the text is noise, the machinery is real)"
    MODEL="$OUT/swiftkv"
    [ -f "$OUT/swiftkv.kvb" ] && MODEL="$OUT/swiftkv.kvb"
    "$BIN/kvrun" "$MODEL" --prompt "Once upon a time" --max-tokens 24 --seed 1
    echo
    "$BIN/kvrun" "$MODEL" --bench --prompt-len 64 --max-tokens 16 --json || true
fi
step "done: outputs in $OUT/"
