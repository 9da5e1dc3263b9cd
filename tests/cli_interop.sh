#!/bin/sh
# Interoperability with the reference systems (docs/INTEROP.md): kvforge's outputs carry LCKV's
# and Snowflake's schemas, checkpoints those systems write are read by every tool, and what
# kvforge does not support is refused by name, exit 1, nothing written.
. tests/lib.sh
require_shared cli_interop
C="$BIN/kvconvert"
R="$BIN/kvrun"
V="$BIN/kvverify"
KD="$BIN/kvdistill"
S=$SHARED/models/stories260K
TEXT="Once upon a time, there was a little girl named Lily."

# --- cross-layer outputs: LCKV's schema; the identity stays a plain Llama ---
expect_rc 0 "convert pizza-top:3" -- "$C" "$S" "$TMP/ptop" --map pizza-top:3 -q --no-sync
P="$TMP/ptop/config.json"
expect_grep '"model_type":	"lckv-llama"' "$P" "cross-layer model_type"
expect_grep '"architectures":	\["LCKVLlamaForCausalLM"\]' "$P" "cross-layer architecture"
expect_grep '"layer_types":	"0_1_4_4_4"' "$P" "layer_types"
expect_grep '"forward_passes":	7' "$P" "LCKV's default m"
expect_grep '"backward_passes":	2' "$P" "LCKV's default b"
expect_grep '"use_sequential":	false' "$P" "use_sequential"
expect_grep '"force_nodiag":	false' "$P" "force_nodiag"
grep -q '"llama"\|"LlamaForCausalLM"' "$P" && bad "a cross-layer config still says llama" || ok
expect_rc 0 "convert identity" -- "$C" "$S" "$TMP/id" --map identity -q --no-sync
expect_grep '"model_type":	"llama"' "$TMP/id/config.json" "identity stays llama"
grep -q 'forward_passes\|layer_types' "$TMP/id/config.json" && bad "identity has LCKV fields" || ok
expect_rc 0 "info schema" -- "$C" info "$TMP/ptop"
expect_grep "schema         lckv-llama" "$TMP/out" "info names LCKV's schema"
expect_rc 0 "info schema json" -- "$C" info "$TMP/ptop" --json
expect_grep '"schema":"lckv-llama"' "$TMP/out" "info --json schema"
expect_rc 0 "info plain" -- "$C" info "$S" --json
expect_grep '"schema":"llama"' "$TMP/out" "info --json plain llama"

# --- the form kvforge wrote before LCKV's schema is still read, and named as such ---
mkdir -p "$TMP/legacy"
cp "$TMP/ptop/model.safetensors" "$TMP/ptop/tokenizer.json" "$TMP/legacy/"
sed 's/"LCKVLlamaForCausalLM"/"LlamaForCausalLM"/; s/"lckv-llama"/"llama"/; s/"0_1_4_4_4",/"0_1_4_4_4"/' "$P" |
    grep -v 'passes\|use_sequential\|force_nodiag' >"$TMP/legacy/config.json"
expect_rc 0 "info legacy" -- "$C" info "$TMP/legacy" --json
expect_grep '"schema":"llama+layer_types"' "$TMP/out" "legacy schema named"
expect_rc 0 "kvrun legacy" -- "$R" "$TMP/legacy" --logits-out "$TMP/legacy.st" --text "$TEXT"

# --- a checkpoint as LCKV's code saves it (sorted keys, its own fields) ---
mkdir -p "$TMP/lckv"
cp "$TMP/ptop/model.safetensors" "$TMP/ptop/tokenizer.json" "$TMP/lckv/"
lckv_config() { # LAYER_TYPES [extra "key": value lines]
    cat <<EOF
{
  "architectures": [
    "LCKVLlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "backward_passes": 2,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "force_nodiag": false,
  "forward_passes": 7,
  "head_dim": 8,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 172,
  "layer_types": "$1",
  "max_position_embeddings": 512,
  "mlp_bias": false,
  "model_type": "lckv-llama",
  "num_attention_heads": 8,
  "num_hidden_layers": 5,
  "num_key_value_heads": 4,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": true,
  "torch_dtype": "float32",
  "transformers_version": "4.46.3",
  "use_cache": true,
  "use_sequential": false,
  "vocab_size": 512
}
EOF
}
lckv_config 0_1_4_4_4 >"$TMP/lckv/config.json"
expect_rc 0 "kvrun kvforge output" -- "$R" "$TMP/ptop" --logits-out "$TMP/ptop.st" --text "$TEXT"
expect_rc 0 "kvrun LCKV-written" -- "$R" "$TMP/lckv" --logits-out "$TMP/lckv.st" --text "$TEXT"
expect_rc 0 "same logits" -- "$V" logits "$TMP/ptop.st" "$TMP/lckv.st" --atol 0
expect_rc 0 "legacy same logits" -- "$V" logits "$TMP/ptop.st" "$TMP/legacy.st" --atol 0
expect_rc 0 "info LCKV-written" -- "$C" info "$TMP/lckv"
expect_grep "KV map         cross-layer 0_1_4_4_4" "$TMP/out" "LCKV map read"
expect_rc 0 "bundle LCKV-written" -- "$C" bundle "$TMP/lckv" "$TMP/lckv.kvb" -q
expect_rc 0 "verify LCKV bundle" -- "$V" bundle "$TMP/lckv.kvb"
expect_rc 0 "kvrun LCKV bundle" -- "$R" "$TMP/lckv.kvb" --logits-out "$TMP/lckvb.st" --text "$TEXT"
expect_rc 0 "bundle logits" -- "$V" logits "$TMP/ptop.st" "$TMP/lckvb.st" --atol 0
expect_rc 0 "unbundle" -- "$C" unbundle "$TMP/lckv.kvb" "$TMP/lckv_back"
cmp -s "$TMP/lckv/config.json" "$TMP/lckv_back/config.json" && ok || bad "unbundled LCKV config differs"
expect_rc 0 "tensors back" -- "$V" tensors "$TMP/lckv" "$TMP/lckv_back" --rtol 0
# round trip kvforge -> LCKV schema -> kvforge: the kvforge output bundled and unbundled
expect_rc 0 "bundle kvforge output" -- "$C" bundle "$TMP/ptop" "$TMP/ptop.kvb" -q
expect_rc 0 "unbundle kvforge output" -- "$C" unbundle "$TMP/ptop.kvb" "$TMP/ptop_back"
cmp -s "$TMP/ptop/config.json" "$TMP/ptop_back/config.json" && ok || bad "round trip config differs"
expect_rc 0 "round trip tensors" -- "$V" tensors "$TMP/ptop" "$TMP/ptop_back" --rtol 0
# distillation: an LCKV-written student trains; the output records the plan used (m = N - b)
printf 'Once upon a time there was a cat.\n\nThe dog ran to the park and played.\n\nLily had a red ball.\n' >"$TMP/data.txt"
expect_rc 0 "kvdistill LCKV-written student" -- "$KD" train "$S" "$TMP/lckv" "$TMP/lckv_out" --data "$TMP/data.txt" \
    --steps 1 --seq-len 16 --batch 1 --passes 3 --grad-passes 2 --eval-seqs 1 --quiet --threads 1
expect_grep '"forward_passes":	1' "$TMP/lckv_out/config.json" "trained config m = passes - grad-passes"
expect_grep '"backward_passes":	2' "$TMP/lckv_out/config.json" "trained config b = grad-passes"
expect_grep '"sliding_window":	4096' "$TMP/lckv_out/config.json" "LCKV's other fields kept"
expect_rc 0 "kvdistill default plan" -- "$KD" train "$S" "$TMP/ptop" "$TMP/ptop_out" --data "$TMP/data.txt" \
    --steps 1 --seq-len 16 --batch 1 --eval-seqs 1 --quiet --threads 1
expect_grep '"forward_passes":	8' "$TMP/ptop_out/config.json" "default plan m = 9 - 1"
expect_grep '"backward_passes":	1' "$TMP/ptop_out/config.json" "default plan b = 1"
expect_rc 0 "kvrun trained" -- "$R" "$TMP/lckv_out" --prompt "Once" -n 4

# --- refused: force_nodiag, HF attention kinds without a window width, other architectures ---
refused() { # DIR WHAT PATTERN: every tool refuses DIR, exit 1, naming PATTERN; nothing written
    expect_rc 1 "$2: kvconvert info" -- "$C" info "$1"
    expect_grep "$3" "$TMP/err" "$2: info message"
    expect_rc 1 "$2: kvconvert" -- "$C" "$1" "$TMP/never" --map cla:2
    expect_grep "$3" "$TMP/err" "$2: kvconvert message"
    [ -e "$TMP/never" ] && bad "$2: kvconvert wrote its destination" || ok
    expect_rc 1 "$2: kvrun" -- "$R" "$1" --prompt "Once" -n 2
    expect_grep "$3" "$TMP/err" "$2: kvrun message"
    expect_rc 1 "$2: bundle" -- "$C" bundle "$1" "$TMP/never.kvb"
    [ -e "$TMP/never.kvb" ] && bad "$2: bundle written" || ok
}
# LCKV's 's' suffix is read (sliding windows: tests/cli_window.sh); its 4096 here reaches past
# the 512 positions, so it is full attention: the unsuffixed model's logits bit for bit
mkdir -p "$TMP/swa"
cp "$TMP/ptop/model.safetensors" "$TMP/ptop/tokenizer.json" "$TMP/swa/"
lckv_config 0_1s_4_4_4 >"$TMP/swa/config.json"
expect_rc 0 "LCKV 's' suffix read" -- "$R" "$TMP/swa" --logits-out "$TMP/swa.st" --text "$TEXT"
expect_rc 0 "window 4096 >= 512 positions: same logits" -- "$V" logits "$TMP/ptop.st" "$TMP/swa.st" --atol 0
expect_rc 2 "'s' in a --map literal" -- "$C" --plan "$S" --map 0_0s_2_2_4
expect_grep "sliding-window" "$TMP/err" "literal 's' message"
mkdir -p "$TMP/nodiag"
cp "$TMP/ptop/model.safetensors" "$TMP/nodiag/"
lckv_config 0_1_4_4_4 | sed 's/"force_nodiag": false/"force_nodiag": true/' >"$TMP/nodiag/config.json"
refused "$TMP/nodiag" "force_nodiag" "force_nodiag"

with_config() { # DIR: stories260K's weights with config.json from stdin
    mkdir -p "$1"
    cp "$S/model.safetensors" "$S/tokenizer.json" "$1/"
    cat >"$1/config.json"
}
sed 's/"model_type": "llama",/"model_type": "llama", "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"],/' \
    "$S/config.json" | with_config "$TMP/kinds"
refused "$TMP/kinds" "layer_types attention kinds" "layer 1 attends over a sliding window (field 'layer_types') but field 'sliding_window' is missing"
sed 's/"model_type": "llama",/"model_type": "llama", "layer_types": ["full_attention", "full_attention", "full_attention", "full_attention", "full_attention"],/' \
    "$S/config.json" | with_config "$TMP/allfull"
expect_rc 0 "all full_attention is a plain model" -- "$C" info "$TMP/allfull"
sed 's/"LlamaForCausalLM"/"MistralForCausalLM"/; s/"model_type": "llama",/"model_type": "mistral", "sliding_window": 256,/' \
    "$S/config.json" | with_config "$TMP/mistral"
expect_rc 0 "Mistral with a sliding window: info" -- "$C" info "$TMP/mistral"
expect_grep "sliding window 256 positions on 5 of 5 layers" "$TMP/out" "Mistral window read"
expect_rc 0 "Mistral with a sliding window runs" -- "$R" "$TMP/mistral" --prompt "Once" -n 2
sed 's/"LlamaForCausalLM"/"Qwen3ForCausalLM"/; s/"model_type": "llama",/"model_type": "qwen3",/' \
    "$S/config.json" | with_config "$TMP/qwen3"
refused "$TMP/qwen3" "Qwen3" "architecture 'Qwen3ForCausalLM' is not supported"
sed 's/"architectures": \[/"architectures_": [/; s/"model_type": "llama",/"model_type": "mixtral", "num_local_experts": 8,/' \
    "$S/config.json" | with_config "$TMP/mixtral"
refused "$TMP/mixtral" "Mixtral" "model_type 'mixtral' is not supported"
sed 's/"rope_scaling": null,/"rope_scaling": {"rope_type": "su", "factor": 4.0},/' \
    "$S/config.json" | with_config "$TMP/su"
refused "$TMP/su" "rope_scaling su" "rope_scaling.rope_type' is 'su'"

# --- a plain llama config over weights without k_proj/v_proj on some layers ---
mkdir -p "$TMP/nokv"
cp "$TMP/ptop/model.safetensors" "$TMP/ptop/tokenizer.json" "$TMP/nokv/"
cp "$S/config.json" "$TMP/nokv/"
refused "$TMP/nokv" "plain llama without k_proj" "model.layers.2.self_attn.k_proj.weight.*layer 2 has no k_proj"

# --- SwiftKV as Snowflake writes it: hf-swiftkv layout, no explicit "swiftkv" key ---
for lg in 3 1,2; do
    expect_rc 0 "swiftkv $lg deploy" -- "$C" "$S" "$TMP/skv_d$lg" --swiftkv "$lg" --layout deploy -q --no-sync
    expect_rc 0 "swiftkv $lg hf-swiftkv" -- "$C" "$S" "$TMP/skv_h$lg" --swiftkv "$lg" --layout hf-swiftkv -q --no-sync
    expect_grep '"model_type":	"llama_swiftkv"' "$TMP/skv_h$lg/config.json" "swiftkv $lg model_type"
    expect_grep '"architectures":	\["LlamaSwiftKVForCausalLM"\]' "$TMP/skv_h$lg/config.json" "swiftkv $lg architecture"
    mkdir -p "$TMP/snow$lg"
    cp "$TMP/skv_h$lg/model.safetensors" "$TMP/skv_h$lg/tokenizer.json" "$TMP/snow$lg/"
    grep -v '"swiftkv":' "$TMP/skv_h$lg/config.json" >"$TMP/snow$lg/config.json"
    expect_rc 0 "info Snowflake $lg" -- "$C" info "$TMP/snow$lg"
    expect_grep "schema         llama_swiftkv, layout hf-swiftkv" "$TMP/out" "Snowflake $lg schema"
    expect_rc 0 "kvrun deploy $lg" -- "$R" "$TMP/skv_d$lg" --logits-out "$TMP/d$lg.st" --text "$TEXT"
    expect_rc 0 "kvrun Snowflake $lg" -- "$R" "$TMP/snow$lg" --logits-out "$TMP/s$lg.st" --text "$TEXT"
    expect_rc 0 "Snowflake $lg = deploy logits" -- "$V" logits "$TMP/d$lg.st" "$TMP/s$lg.st" --atol 0
    expect_rc 0 "bundle Snowflake $lg" -- "$C" bundle "$TMP/snow$lg" "$TMP/snow$lg.kvb" -q
    expect_rc 0 "kvrun Snowflake bundle $lg" -- "$R" "$TMP/snow$lg.kvb" --logits-out "$TMP/sb$lg.st" --text "$TEXT"
    expect_rc 0 "Snowflake bundle $lg logits" -- "$V" logits "$TMP/d$lg.st" "$TMP/sb$lg.st" --atol 0
done
expect_rc 0 "kvdistill Snowflake student" -- "$KD" train "$S" "$TMP/snow1,2" "$TMP/snow_out" --data "$TMP/data.txt" \
    --steps 1 --seq-len 16 --batch 1 --eval-seqs 1 --quiet --threads 1
expect_rc 0 "kvrun distilled Snowflake student" -- "$R" "$TMP/snow_out" --prompt "Once" -n 4

done_tests cli_interop
