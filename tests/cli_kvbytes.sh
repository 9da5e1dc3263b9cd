#!/bin/sh
# KV accounting has one definition (issue 17 item 3): bytes per token in the model's weight type,
# the baseline being the original model's cache in that same type; info, plan, kvconvert's
# summary and kvrun --bench (whose default cache type follows the weights) agree
. tests/lib.sh
require_shared cli_kvbytes
S=$SHARED/models/stories260K
# stories260K: 5 layers, 4 KV heads of 8; SwiftKV l=3, g=2 keeps 3 + 1 = 4 slots
# BF16: 2 * 4 * 8 * 2 = 128 bytes per slot -> 640 for the original, 512 converted
expect_rc 0 "plan bf16" -- "$BIN/kvconvert" plan "$S" --swiftkv 3,2 --dtype bf16
expect_grep "KV cache per token (BF16): 640 -> 512 bytes" "$TMP/out" "plan bytes"
expect_rc 0 "plan bf16 json" -- "$BIN/kvconvert" plan "$S" --swiftkv 3,2 --dtype bf16 --json
expect_grep '"bytes_per_token_source":640' "$TMP/out" "plan json source"
expect_grep '"bytes_per_token_output":512' "$TMP/out" "plan json output"
expect_rc 0 "convert bf16" -- "$BIN/kvconvert" "$S" "$TMP/bf" --swiftkv 3,2 --dtype bf16
expect_grep "KV cache (BF16) 640 -> 512 bytes/token" "$TMP/out" "convert summary"
expect_rc 0 "info bf16" -- "$BIN/kvconvert" info "$TMP/bf"
expect_grep "512 bytes/token in BF16 (4 of 5 slots; the original's 5 in BF16: 640" "$TMP/out" "info text"
expect_rc 0 "info bf16 json" -- "$BIN/kvconvert" info "$TMP/bf" --json
expect_grep '"kv_cache_dtype":"BF16"' "$TMP/out" "info json dtype"
expect_grep '"kv_cache_bytes_per_token":512,' "$TMP/out" "info json bytes"
expect_grep '"kv_cache_bytes_per_token_full":640' "$TMP/out" "info json baseline"
expect_rc 0 "bench bf16 default" -- "$BIN/kvrun" "$TMP/bf" --bench --prompt-len 32 -n 4 --repeat 1 --json
expect_grep '"kv_cache_dtype": "BF16"' "$TMP/out" "bench caches BF16 by default for a BF16 model"
expect_grep '"kv_cache_bytes_per_token": 512,' "$TMP/out" "bench bytes"
expect_rc 0 "bench bf16 --kv-dtype f32" -- "$BIN/kvrun" "$TMP/bf" --bench --prompt-len 32 -n 4 --repeat 1 --json --kv-dtype f32
expect_grep '"kv_cache_bytes_per_token": 1024,' "$TMP/out" "--kv-dtype overrides"
# the F32 original: 1280 everywhere, F32 cache by default
expect_rc 0 "info f32" -- "$BIN/kvconvert" info "$S"
expect_grep "1280 bytes/token in F32" "$TMP/out" "info f32"
expect_rc 0 "bench f32 default" -- "$BIN/kvrun" "$S" --bench --prompt-len 32 -n 4 --repeat 1 --json
expect_grep '"kv_cache_dtype": "F32", "kv_cache_bytes": [0-9]*, "kv_cache_bytes_per_token": 1280,' "$TMP/out" "bench f32"
# what SwiftKV and AcrossKV save (issue 17 item 4): plan and info report the prefill compute a
# prompt token skips and the KV saved; info shows RoPE; no "-0.0%" anywhere
# stories260K layer: q 4096 + k,v 4096 + o 4096 + MLP 33024 = 45312 (x2 FLOPs); the original as
# kvrun runs it costs 4 layers + the last one's K/V; l=3 of 5 with 2 leaders' K/V (4096):
# 1 - (3 * 45312 + 2 * 4096) / (4 * 45312 + 4096) = 22.2%; g=2, 1 leader: 24.4%
expect_rc 0 "plan swiftkv 3" -- "$BIN/kvconvert" plan "$S" --swiftkv 3
expect_grep "SwiftKV prefill: skips 22.2% of a prompt token's layer FLOPs" "$TMP/out" "plan prefill saving"
expect_grep "AcrossKV (g=1): saves 0.0% of the KV cache (g = 1" "$TMP/out" "plan AcrossKV g=1"
expect_grep "1280 -> 1280 bytes (no change)" "$TMP/out" "plan no change"
expect_rc 0 "plan swiftkv 3,2 json" -- "$BIN/kvconvert" plan "$S" --swiftkv 3,2 --json
expect_grep '"prefill_compute_saving":0.24' "$TMP/out" "plan json prefill saving"
expect_rc 0 "info swiftkv" -- "$BIN/kvconvert" info "$TMP/bf"
expect_grep "SwiftKV        prefill skips 24.4% of a prompt token's layer FLOPs" "$TMP/out" "info prefill saving"
expect_grep "AcrossKV (g=2) saves 20.0% of the KV cache" "$TMP/out" "info AcrossKV saving"
expect_grep "RoPE           theta 10000; rope_scaling none" "$TMP/out" "info RoPE"
expect_rc 0 "info swiftkv json" -- "$BIN/kvconvert" info "$TMP/bf" --json
expect_grep '"prefill_compute_saving":0.24' "$TMP/out" "info json prefill"
expect_grep '"across_kv_saving":0.2' "$TMP/out" "info json AcrossKV"
expect_grep '"rope_theta":10000,"rope_scaling":null' "$TMP/out" "info json RoPE"
expect_rc 0 "plan swiftkv 4 (l = L-1, g = 1)" -- "$BIN/kvconvert" plan "$S" --swiftkv 4
expect_grep "SwiftKV prefill: skips 0.0%" "$TMP/out" "l = L-1, g = 1 saves no prefill compute"
for spec in "--swiftkv 1" "--swiftkv 4" "--swiftkv 2,3" "--map cla:1" "--map pizza-top:5" "--map 0_1_2_3_4" "--map yoco"; do
    "$BIN/kvconvert" plan "$S" $spec >"$TMP/out" 2>&1
    if grep -q -- "-0\.0" "$TMP/out"; then bad "plan $spec prints -0.0: $(grep -- -0.0 "$TMP/out")"; else ok; fi
done
"$BIN/kvconvert" info "$S" >"$TMP/out" 2>&1
if grep -q -- "-0\.0" "$TMP/out"; then bad "info prints -0.0"; else ok; fi
done_tests cli_kvbytes

