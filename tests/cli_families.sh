#!/bin/sh
# Mistral (no sliding window) and Qwen2 end to end on synthetic models (no fixtures):
#   - Mistral: the same weights under MistralForCausalLM give the Llama model's logits bit for
#     bit; its SwiftKV / cross-layer outputs are written as llama_swiftkv / lckv-llama (a window
#     below max_position_embeddings: tests/cli_window.sh);
#   - Qwen2 (q/k/v biases): converts (SwiftKV as qwen2_swiftkv, a cross-layer map), runs, and
#     distils (loss finite, KL down, a SIGKILLed run resumed equals an uninterrupted one).
. tests/lib.sh
S="$BIN/kvsynth"; C="$BIN/kvconvert"; R="$BIN/kvrun"; V="$BIN/kvverify"; KD="$BIN/kvdistill"
T=1,403,407,261,378,432,383,286,261,376
# --- Mistral ---
expect_rc 0 "llama" -- "$S" "$TMP/llama" --preset tiny
expect_rc 0 "mistral" -- "$S" "$TMP/mistral" --preset tiny --arch mistral
expect_rc 0 "mistral window >= max-pos" -- "$S" "$TMP/mistral_w" --preset tiny --arch mistral --sliding-window 512
expect_rc 0 "mistral window < max-pos written" -- "$S" "$TMP/mistral_511" --preset tiny --arch mistral --sliding-window 511
expect_rc 2 "llama with a window is a usage error" -- "$S" "$TMP/x" --sliding-window 512
expect_rc 0 "mistral info" -- "$C" info "$TMP/mistral"
expect_grep "MistralForCausalLM (mistral)" "$TMP/out" "info names Mistral"
expect_grep "schema *mistral " "$TMP/out" "mistral schema"
for m in llama mistral mistral_w; do
    expect_rc 0 "logits $m" -- "$R" "$TMP/$m" --logits-out "$TMP/$m.st" --tokens "$T"
done
for m in mistral mistral_w; do
    expect_rc 0 "$m vs llama" -- "$V" logits "$TMP/llama.st" "$TMP/$m.st" --json
    expect_grep '"max_abs":0,' "$TMP/out" "$m = llama, bit for bit"
done
expect_rc 0 "mistral to SwiftKV" -- "$C" "$TMP/mistral_w" "$TMP/mistral.skv" --swiftkv 2 -q
expect_grep '"llama_swiftkv"' "$TMP/mistral.skv/config.json" "Mistral SwiftKV written as llama_swiftkv"
grep -q sliding_window "$TMP/mistral.skv/config.json" && bad "sliding_window kept in llama_swiftkv" || ok
expect_rc 0 "mistral to cross-layer" -- "$C" "$TMP/mistral" "$TMP/mistral.cl" --map cla:2 -q
expect_grep '"lckv-llama"' "$TMP/mistral.cl/config.json" "Mistral cross-layer written as lckv-llama"
expect_rc 0 "mistral SwiftKV runs" -- "$R" "$TMP/mistral.skv" --prompt "Once" -n 4 --temperature 0
# --- Qwen2 ---
Q="$TMP/qwen2"
expect_rc 0 "qwen2-tiny" -- "$S" "$Q" --preset qwen2-tiny
expect_rc 0 "qwen2 via --arch" -- "$S" "$TMP/qwen2b" --preset tiny --arch qwen2
expect_rc 0 "qwen2 info" -- "$C" info "$Q" --json
expect_grep '"schema":"qwen2"' "$TMP/out" "qwen2 schema"
expect_grep '"biases":"q/k/v"' "$TMP/out" "info: Qwen2's q/k/v biases"
expect_rc 0 "qwen2 info text" -- "$C" info "$Q"
expect_grep "biases  *q/k/v$" "$TMP/out" "info text names the biases"
expect_rc 0 "qwen2 runs" -- "$R" "$Q" --logits-out "$TMP/q.st" --tokens "$T"
expect_rc 0 "qwen2 deterministic" -- "$R" "$Q" --logits-out "$TMP/q2.st" --tokens "$T"
expect_rc 0 "qwen2 two runs" -- "$V" logits "$TMP/q.st" "$TMP/q2.st" --json
expect_grep '"max_abs":0,' "$TMP/out" "qwen2 logits finite and deterministic"
expect_rc 0 "qwen2 to SwiftKV" -- "$C" "$Q" "$TMP/q.skv" --swiftkv 2,2 -q
expect_grep '"qwen2_swiftkv"' "$TMP/q.skv/config.json" "qwen2 SwiftKV model_type"
expect_grep '"Qwen2SwiftKVForCausalLM"' "$TMP/q.skv/config.json" "qwen2 SwiftKV architecture"
expect_rc 0 "qwen2 SwiftKV info" -- "$C" info "$TMP/q.skv" --json
expect_grep '"schema":"qwen2_swiftkv"' "$TMP/out" "qwen2_swiftkv schema"
expect_rc 0 "qwen2 SwiftKV interop layout" -- "$C" "$Q" "$TMP/q.skvi" --swiftkv 2,2 --layout hf-swiftkv -q
expect_rc 0 "qwen2 to cross-layer" -- "$C" "$Q" "$TMP/q.cl" --map sandwich-middle:2 -q
expect_grep '"layer_types"' "$TMP/q.cl/config.json" "qwen2 cross-layer has layer_types"
for d in q.skv q.skvi q.cl; do
    expect_rc 0 "$d runs" -- "$R" "$TMP/$d" --logits-out "$TMP/$d.st" --tokens "$T"
done
expect_rc 0 "qwen2 swiftkv deploy vs interop" -- "$V" logits "$TMP/q.skv.st" "$TMP/q.skvi.st" --json
expect_grep '"max_abs":0,' "$TMP/out" "qwen2 interop layout: same logits"
expect_rc 0 "qwen2 cross-layer generates" -- "$R" "$TMP/q.cl" --prompt "Once upon" -n 8 --temperature 0
i=0; while [ $i -lt 80 ]; do echo "Once upon a time there was a little girl. She liked to play in the park with her dog."; echo; i=$((i + 1)); done >"$TMP/data.txt"
for d in q.skv q.cl; do
    expect_rc 0 "$d distils" -- "$KD" train "$Q" "$TMP/$d" "$TMP/$d.out" --data "$TMP/data.txt" \
        --steps 8 --seq-len 32 --batch 2 --lr 3e-3 --eval-seqs 2 --threads 1 --quiet --json
    kl_b=$(sed -n 's/.*"kl_before":\([0-9.e+-]*\).*/\1/p' "$TMP/out")
    kl_a=$(sed -n 's/.*"kl_after":\([0-9.e+-]*\).*/\1/p' "$TMP/out")
    awk -v a="$kl_a" -v b="$kl_b" 'BEGIN { exit !(a == a + 0 && a < b) }' && ok || bad "$d: KL $kl_b -> $kl_a"
    expect_rc 0 "$d output runs" -- "$R" "$TMP/$d.out" --prompt "Once" -n 4 --temperature 0
done
expect_grep '"qwen2_swiftkv"' "$TMP/q.skv.out/config.json" "distilled SwiftKV keeps qwen2_swiftkv"
# resume: SIGKILL after the first checkpoint, resume, compare with an uninterrupted run
run_q() { # OUT_DIR [extra...]
    out=$1; shift
    "$KD" train "$Q" "$TMP/q.skv" "$out" --data "$TMP/data.txt" --steps 120 --seq-len 32 --batch 2 \
        --lr 3e-3 --save-every 10 --eval-seqs 2 --seed 3 --quiet --threads 1 "$@"
}
run_q "$TMP/full" >/dev/null 2>&1 && ok || bad "qwen2 uninterrupted run"
(exec "$KD" train "$Q" "$TMP/q.skv" "$TMP/killed" --data "$TMP/data.txt" --steps 120 --seq-len 32 --batch 2 \
    --lr 3e-3 --save-every 10 --eval-seqs 2 --seed 3 --quiet --threads 1) >/dev/null 2>&1 &
pid=$!
i=0
while [ ! -f "$TMP/killed/checkpoint/state.safetensors" ] && [ $i -lt 20000 ] && kill -0 $pid 2>/dev/null; do sleep 0.01; i=$((i + 1)); done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -f "$TMP/killed/model.safetensors" ] && echo "note: the run finished before SIGKILL" >&2
expect_rc 0 "qwen2 resume" -- run_q "$TMP/killed" --resume
cmp -s "$TMP/full/model.safetensors" "$TMP/killed/model.safetensors" && ok || bad "qwen2: resumed weights differ"
done_tests cli_families
