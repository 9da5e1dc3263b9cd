#!/bin/sh
# make demo: the whole pipeline on a synthetic Llama generated here (no fixtures, no download)
set -e
BIN=${BUILD:-build}/bin
OUT=demo
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1. generate a synthetic Llama (8 layers, GQA 8/4 heads, vocab 512)"
"$BIN/kvsynth" --preset tiny --layers 8 "$OUT/base"
[ -x "$BIN/kvconvert" ] || { echo "(kvconvert not built yet: demo stops here)"; exit 0; }

step "2. inspect it"
"$BIN/kvconvert" info "$OUT/base"
