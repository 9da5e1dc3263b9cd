#!/bin/sh
# make test-gpu, whole models: stories260K logits on the CUDA backend against the CPU reference
# (kvverify model, max |a-b| < 1e-3 F32) for the original and six maps, with an F32 and a BF16
# KV cache, and read as a Mistral with a sliding window of 16; then a synthetic BF16
# TinyLlama-1.1B shape, top-1 agreement >= 99% on TinyStories text (GPU_BIG=0 skips it).
# Without a GPU it says so and exits 1.
. tests/lib.sh
require_shared gpu_models
V="$BIN/kvverify"
M=$SHARED/models/stories260K
D=$SHARED/data/tinystories_val.txt
if ! "$V" kernels --filter no-case-matches-this >"$TMP/probe" 2>"$TMP/probe.err" &&
    grep -q "no CUDA device found" "$TMP/probe.err"; then
    echo "gpu_models: no CUDA device found: $(cat "$TMP/probe.err")" >&2
    echo "RESULT gpu_models 0 1"
    exit 1
fi
check_model() { # NAME DIR EXTRA...
    name=$1; dir=$2; shift 2
    expect_rc 0 "$name on cuda vs cpu" -- "$V" model "$dir" --device cuda --text "$D" --ctx 128 \
        --max-windows 4 --json "$@"
    cat "$TMP/out"
}
check_model original "$M" --atol 1e-3
check_model "original, BF16 cache" "$M" --atol 1e-3 --kv-dtype bf16
for spec in "--swiftkv 3" "--swiftkv 3,2" "--map pizza-bottom:3" "--map sandwich-middle:3" \
    "--map pizza-top:3" "--map lasagna-top:2"; do
    out="$TMP/m$(echo "$spec" | tr -c 'a-z0-9' '_')"
    # shellcheck disable=SC2086 # the spec is two words on purpose
    "$BIN/kvconvert" "$M" "$out" $spec -q --no-sync >/dev/null 2>&1 || { bad "convert $spec"; continue; }
    check_model "$spec" "$out" --atol 1e-3
    check_model "$spec, BF16 cache" "$out" --atol 1e-3 --kv-dtype bf16
    check_model "$spec, sequential prefill" "$out" --atol 1e-3 --prefill sequential
done
# sliding windows: stories260K read as a Mistral with a window of 16 positions
mkdir -p "$TMP/swa"
cp "$M/model.safetensors" "$M/tokenizer.json" "$TMP/swa/"
sed 's/"LlamaForCausalLM"/"MistralForCausalLM"/; s/"model_type": "llama",/"model_type": "mistral", "sliding_window": 16,/' \
    "$M/config.json" >"$TMP/swa/config.json"
check_model "sliding window 16" "$TMP/swa" --atol 1e-3
check_model "sliding window 16, BF16 cache" "$TMP/swa" --atol 1e-3 --kv-dtype bf16
if [ "${GPU_BIG:-1}" != 0 ]; then
    "$BIN/kvsynth" --preset tinyllama-1.1b "$TMP/big" >/dev/null 2>&1 || bad "kvsynth tinyllama-1.1b"
    check_model "tinyllama-1.1b BF16 synthetic" "$TMP/big" --atol 1e30 --min-top1 0.99 --ctx 256 --max-windows 2
fi
done_tests gpu_models
