#!/bin/sh
# kvrun CLI: greedy text vs llama2.c run's golden stdout, tokenize vs the tokenizer goldens,
# logits dump read back by kvverify against run.c's golden logits, perplexity, bench JSON,
# usage errors.
. tests/lib.sh
require_shared cli_kvrun
R="$BIN/kvrun"
M=$SHARED/models/stories260K
G=$SHARED/golden

expect_rc 0 "help" -- "$R" --help
expect_grep "--logits-out" "$TMP/out" "help lists --logits-out"
expect_grep "--device D" "$TMP/out" "help lists --device"
expect_rc 0 "version" -- "$R" --version
expect_grep "kvrun" "$TMP/out" "version names the tool"

# usage errors: exit 2 with a hint
expect_rc 2 "no model" -- "$R" --bench
expect_rc 2 "no mode" -- "$R" "$M"
expect_grep "Try 'kvrun --help'" "$TMP/err" "usage hint"
expect_rc 2 "two modes" -- "$R" "$M" --bench --prompt hi
expect_rc 2 "bad temperature" -- "$R" "$M" --prompt hi --temperature -1
expect_rc 2 "bad top-p" -- "$R" "$M" --prompt hi --top-p 1.5
expect_rc 2 "bad prefill" -- "$R" "$M" --prompt hi --prefill iterative:0
expect_rc 2 "bad block prefill" -- "$R" "$M" --prompt hi --prefill iterative-block:0
expect_grep "iterative-block:N" "$TMP/err" "prefill error lists iterative-block"
expect_rc 2 "logits without input" -- "$R" "$M" --logits-out "$TMP/x.safetensors"
expect_rc 2 "logits with both inputs" -- "$R" "$M" --logits-out "$TMP/x.safetensors" --text a --tokens 1
expect_rc 2 "text without logits" -- "$R" "$M" --prompt hi --text a
expect_rc 2 "unknown option" -- "$R" "$M" --frobnicate
expect_rc 2 "missing value" -- "$R" "$M" --prompt
# failures: exit 1 naming the problem
expect_rc 1 "missing model" -- "$R" "$TMP/nope" --prompt hi
expect_grep "nope" "$TMP/err" "missing model named"
expect_rc 1 "context too small" -- "$R" "$M" --bench --prompt-len 600
expect_rc 1 "token out of range" -- "$R" "$M" --logits-out "$TMP/x.safetensors" --tokens 1,512
expect_grep "512" "$TMP/err" "bad token named"

# greedy generation: exactly what run.c prints (the golden "text" + run.c's final newline)
sed -n 's/^ "text": "\(.*\)",$/\1/p' "$G/stories260K_greedy.json" |
    sed -e 's/\\"/"/g' -e 's/\\n/\n/g' >"$TMP/want.txt"
[ -s "$TMP/want.txt" ] && ok || bad "could not read the golden text"
expect_rc 0 "greedy" -- "$R" "$M" --prompt "Once upon a time" -n 200 --temperature 0
if cmp -s "$TMP/out" "$TMP/want.txt"; then ok; else bad "greedy text differs from run.c: $(head -c 200 "$TMP/out")"; fi
expect_grep "generated 200 tokens" "$TMP/err" "statistics on stderr"
# sampling: same seed, same text; another seed, another text
"$R" "$M" --prompt "Once upon a time" -n 60 --seed 7 >"$TMP/s1" 2>/dev/null
"$R" "$M" --prompt "Once upon a time" -n 60 --seed 7 >"$TMP/s2" 2>/dev/null
"$R" "$M" --prompt "Once upon a time" -n 60 --seed 8 --top-p 1 >"$TMP/s3" 2>/dev/null
if cmp -s "$TMP/s1" "$TMP/s2" && ! cmp -s "$TMP/s1" "$TMP/s3"; then ok; else bad "seeded sampling not reproducible"; fi

# tokenize (no BOS), on a folder holding only tokenizer files
expect_rc 0 "tokenize llama2" -- "$R" "$SHARED/models/llama2-tokenizer" --tokenize "Once upon a time, there was a little girl named Lily."
expect_grep "^9038 2501 263 931 29892 727 471 263 2217 7826 4257 365 2354 29889$" "$TMP/out" "llama2 ids (tokenizer_cases)"
expect_rc 0 "tokenize stories" -- "$R" "$M" --tokenize "Once upon a time"
expect_grep "^403 407 261 378$" "$TMP/out" "stories260K ids (greedy golden prompt_ids without BOS)"

# logits dump: golden sequence 0's 64 ids (read from the golden file) -> kvverify vs run.c
hl=$(od -An -t u8 -N 8 "$G/stories260K_logits.safetensors" | tr -d ' ')
hdr=$(dd if="$G/stories260K_logits.safetensors" bs=1 skip=8 count="$hl" 2>/dev/null)
off=$(printf '%s' "$hdr" | sed -n 's/.*"tokens":{[^}]*"data_offsets":\[\([0-9]*\),.*/\1/p')
ids=$(od -An -t d4 -v -j $((8 + hl + off)) -N 256 "$G/stories260K_logits.safetensors" | tr -s ' \n' ',,' | sed 's/^,//; s/,$//')
expect_rc 0 "logits-out tokens" -- "$R" "$M" --logits-out "$TMP/l.safetensors" --tokens "$ids"
expect_rc 0 "kvverify reads the dump" -- "$BIN/kvverify" logits "$TMP/l.safetensors" "$G/stories260K_logits.safetensors" --batch-b 0 --json
expect_grep '"argmax_agree":64' "$TMP/out" "argmax at all 64 positions"
max=$(sed -n 's/.*"max_abs":\([^,]*\),.*/\1/p' "$TMP/out")
if awk -v m="$max" 'BEGIN { exit !(m != "" && m + 0 <= 1e-4) }'; then ok; else bad "logits dump vs run.c: max_abs '$max'"; fi
# --text: BOS + the text's ids, logits [16, 512]; tokens stored beside them
expect_rc 0 "logits-out text" -- "$R" "$M" --logits-out "$TMP/t.safetensors" --text "Once upon a time, there was a little girl named Lily."
head -c 400 "$TMP/t.safetensors" >"$TMP/t.head"
expect_grep '"logits":{"dtype":"F32","shape":\[16,512\]' "$TMP/t.head" "logits shape [16, 512]"
expect_grep '"tokens":{"dtype":"I32","shape":\[16\]' "$TMP/t.head" "tokens shape [16]"

# perplexity: the value tests/test_runtime.c stores (20 windows of 256)
expect_rc 0 "ppl" -- "$R" "$M" --ppl "$SHARED/data/tinystories_val.txt" --ctx 256 --max-windows 20
expect_grep "5100 tokens" "$TMP/out" "tokens scored"
expect_grep "1.49633[0-9] nats/token" "$TMP/out" "stored nats/token"
expect_grep "bits/byte" "$TMP/out" "bits per byte"
expect_rc 0 "ppl json" -- "$R" "$M" --ppl "$SHARED/data/tinystories_val.txt" --ctx 64 --max-windows 2 --json
expect_grep '"nats_per_token": ' "$TMP/out" "ppl json"

# bench: KV-cache bytes = 2 * 5 layers * 4 kv heads * 8 * 4 bytes * (32 + 8) positions
expect_rc 0 "bench" -- "$R" "$M" --bench --prompt-len 32 -n 8 --repeat 1 --json --threads 1
expect_grep '"kv_cache_bytes": 51200,' "$TMP/out" "KV bytes = formula"
expect_grep '"kv_cache_dtype": "F32",' "$TMP/out" "F32 cache by default"
expect_grep '"decode_tokens_per_s": ' "$TMP/out" "decode speed"
expect_grep '"prefill_tokens_per_s": ' "$TMP/out" "prefill speed"
expect_grep '"prefill_model_tflop_per_s": 0\.[0-9]*[1-9]' "$TMP/out" "prefill TFLOP/s, not zero"
expect_grep '"decode_weight_gb_per_s": [0-9]' "$TMP/out" "decode GB/s"
expect_rc 0 "bench, BF16 cache" -- "$R" "$M" --bench --prompt-len 32 -n 8 --repeat 1 --json --threads 1 --kv-dtype bf16
expect_grep '"kv_cache_bytes": 25600,' "$TMP/out" "BF16 cache: half the bytes"
expect_grep '"kv_cache_dtype": "BF16",' "$TMP/out" "BF16 cache named"
expect_rc 2 "bad --kv-dtype" -- "$R" "$M" --bench --kv-dtype f16
expect_grep "kv-dtype" "$TMP/err" "bad --kv-dtype named"
# --device: cpu is the default; cuda without CUDA support or a GPU fails cleanly (exit 1 and the
# backend's reason, no crash); with a GPU it runs and names it in the bench JSON
expect_rc 0 "--device cpu" -- "$R" "$M" --bench --prompt-len 8 -n 2 --repeat 1 --json --device cpu --threads 1
expect_grep '"device": "cpu (1 thread)"' "$TMP/out" "bench names the CPU backend"
expect_rc 2 "bad --device" -- "$R" "$M" --bench --device tpu
expect_grep "tpu" "$TMP/err" "bad --device named"
"$R" "$M" --bench --prompt-len 8 -n 2 --repeat 1 --json --device cuda >"$TMP/out" 2>"$TMP/err"
rc=$?
case $rc in
    0) grep -q '"device": "' "$TMP/out" && ok || bad "--device cuda ran but named no device" ;;
    1) if grep -q "kvrun: .*cuda" "$TMP/err"; then ok; else bad "--device cuda: no reason: $(head -c 300 "$TMP/err")"; fi ;;
    *) bad "--device cuda: exit $rc (a crash?): $(head -c 300 "$TMP/err")" ;;
esac
# checkpoints converted by kvconvert: identity = original bit for bit; SwiftKV deploy layout =
# interop layout (teacher q/k/v ignored); a cross-layer map generates and has the formula's cache
C="$BIN/kvconvert"
T=1,403,407,261,378,432,383,286,261,376
"$C" "$M" "$TMP/id" --map identity -q >/dev/null 2>&1 && ok || bad "kvconvert identity"
"$C" "$M" "$TMP/skv" --swiftkv 3,2 -q >/dev/null 2>&1 && ok || bad "kvconvert swiftkv"
"$C" "$M" "$TMP/skvi" --swiftkv 3,2 --layout hf-swiftkv -q >/dev/null 2>&1 && ok || bad "kvconvert swiftkv interop"
"$C" "$M" "$TMP/sm" --map sandwich-middle:3 -q >/dev/null 2>&1 && ok || bad "kvconvert sandwich-middle:3"
for d in id skv skvi; do
    expect_rc 0 "logits of $d" -- "$R" "$TMP/$d" --logits-out "$TMP/$d.safetensors" --tokens "$T"
done
expect_rc 0 "logits of original" -- "$R" "$M" --logits-out "$TMP/orig.safetensors" --tokens "$T"
expect_rc 0 "identity vs original" -- "$BIN/kvverify" logits "$TMP/orig.safetensors" "$TMP/id.safetensors" --json
expect_grep '"max_abs":0,' "$TMP/out" "identity map bit-identical"
expect_rc 0 "swiftkv deploy vs interop" -- "$BIN/kvverify" logits "$TMP/skv.safetensors" "$TMP/skvi.safetensors" --json
expect_grep '"max_abs":0,' "$TMP/out" "interop layout ignored"
expect_rc 0 "cross-layer generates" -- "$R" "$TMP/sm" --prompt "Once upon a time" -n 20 --temperature 0
expect_grep "^Once upon a time" "$TMP/out" "prompt echoed"
# sandwich-middle:3 keeps 3 of 5 KV layers: 2 * 3 * 4 * 8 * 4 bytes * 40 positions
expect_rc 0 "cross-layer bench" -- "$R" "$TMP/sm" --bench --prompt-len 32 -n 8 --repeat 1 --json --prefill sequential
expect_grep '"kv_cache_bytes": 30720,' "$TMP/out" "cross-layer KV bytes = formula"
# SwiftKV 3,2: 3 + (5 - 3) / 2 = 4 slots
expect_rc 0 "swiftkv bench" -- "$R" "$TMP/skv" --bench --prompt-len 32 -n 8 --repeat 1 --json
expect_grep '"kv_cache_bytes": 40960,' "$TMP/out" "SwiftKV KV bytes = formula"
done_tests cli_kvrun
