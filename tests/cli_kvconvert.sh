#!/bin/sh
# kvconvert CLI: usage and exit codes, --plan, info, conversion on stories260K: determinism,
# source untouched, non-empty destination refused, --json outputs that parse
. tests/lib.sh
require_shared cli_kvconvert
C="$BIN/kvconvert"
S=$SHARED/models/stories260K
json_ok() { # FILE DESC: the file is one JSON document (python3 when present, else a shape check)
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null && ok || bad "$2: not JSON: $(head -c 300 "$1")"
    else
        head -c 1 "$1" | grep -q '{' && tail -c 2 "$1" | grep -q '}' && ok || bad "$2: not JSON"
    fi
}
[ -f "$S/model.safetensors" ] || bad "missing fixture $S/model.safetensors"

expect_rc 0 "help" -- "$C" --help
expect_grep "--swiftkv" "$TMP/out" "help lists --swiftkv"
expect_rc 0 "version" -- "$C" --version
expect_grep "kvconvert (kvforge)" "$TMP/out" "version line"
expect_rc 2 "no arguments" -- "$C"
expect_grep "Try 'kvconvert --help'" "$TMP/err" "usage hint"
expect_rc 2 "no transform" -- "$C" "$S" "$TMP/o1"
expect_rc 2 "two transforms" -- "$C" "$S" "$TMP/o1" --map cla:2 --swiftkv 3
expect_rc 2 "bad --kv-init" -- "$C" "$S" "$TMP/o1" --map cla:2 --kv-init median
expect_rc 2 "bad --dtype" -- "$C" "$S" "$TMP/o1" --map cla:2 --dtype f8
expect_rc 2 "bad --shard-size" -- "$C" "$S" "$TMP/o1" --map cla:2 --shard-size lots
expect_rc 2 "layout on a cross map" -- "$C" "$S" "$TMP/o1" --map cla:2 --layout hf-swiftkv
expect_rc 2 "unknown option" -- "$C" "$S" "$TMP/o1" --map cla:2 --frobnicate
expect_rc 2 "info without folder" -- "$C" info
expect_rc 2 "bad spec" -- "$C" --plan "$S" --map pizza-sideways:3
expect_grep "kvconvert: error: KV map 'pizza-sideways:3'" "$TMP/err" "bad spec message"
expect_rc 2 "too many KV layers" -- "$C" --plan "$S" --map sandwich-top:9
expect_grep "only 5 layers" "$TMP/err" "l > L message"
expect_rc 2 "bad swiftkv" -- "$C" --plan "$S" --swiftkv 5
expect_rc 1 "missing source" -- "$C" --plan "$TMP/nothing" --map cla:2
expect_grep "nothing: not a model (No such file or directory)" "$TMP/err" "missing source named"
[ -d "$TMP/o1" ] && bad "a refused command created its destination" || ok

# --plan: diagram and savings, nothing written
expect_rc 0 "plan" -- "$C" --plan "$S" --map sandwich-middle:3
expect_grep "layer 1  -> 2" "$TMP/out" "plan diagram"
expect_grep "KV cache per token (F32): 1280 -> 768 bytes (saving 40.0%)" "$TMP/out" "plan KV saving"
expect_grep "4 dropped" "$TMP/out" "plan dropped count"
expect_rc 0 "plan subcommand" -- "$C" plan "$S" --map lasagna-bottom:3
expect_grep "layer 1  -> 0" "$TMP/out" "plan subcommand diagram"
expect_rc 2 "plan without folder" -- "$C" plan
# LCKV's iteration plan: the cyclic groups and their passes (text and --json)
expect_rc 0 "plan lasagna-top:2" -- "$C" plan "$S" --map lasagna-top:2
expect_grep "iterative prefill: 2 cyclic groups" "$TMP/out" "plan counts the cyclic groups"
expect_grep "  layers 3..4  cyclic group 2: 9 passes" "$TMP/out" "plan lists the second group"
expect_rc 0 "plan pizza-top:3 json" -- "$C" plan "$S" --map pizza-top:3 --json
tr -d ' \t\n' <"$TMP/out" >"$TMP/flat.json"
expect_grep '"prefill_plan":{"passes":9,"cyclic_groups":1,"steps":\[{"layers":\[0,1\],"passes":1,"cyclic":false},{"layers":\[2,4\],"passes":9,"cyclic":true}\]}' \
    "$TMP/flat.json" "plan --json gives the prefill plan"
expect_rc 0 "plan swiftkv json" -- "$C" --plan "$S" --swiftkv 1,2 --json
cp "$TMP/out" "$TMP/plan.json"
json_ok "$TMP/plan.json" "plan --json"
expect_grep '"num_key_value_layers":1' "$TMP/plan.json" "plan json swiftkv l"
expect_grep '"norm_swiftkv.weight"\|model.norm_swiftkv.weight' "$TMP/plan.json" "plan json added tensors"

# info
expect_rc 0 "info" -- "$C" info "$S"
expect_grep "parameters     260032" "$TMP/out" "info params"
expect_grep "KV cache       1280 bytes/token in F32 (5 of 5 slots" "$TMP/out" "info KV bytes"
expect_rc 0 "info json" -- "$C" --info "$S" --json
cp "$TMP/out" "$TMP/info.json"
json_ok "$TMP/info.json" "info --json"
expect_grep '"kv_cache_bytes_per_token":1280' "$TMP/info.json" "info json KV bytes"

# conversion: twice, byte-identical; the source untouched
before=$(cat "$S"/* | sha256sum)
expect_rc 0 "convert 1" -- "$C" -q "$S" "$TMP/a" --map pizza-top:3 --dtype bf16
[ -s "$TMP/err" ] && bad "--quiet printed: $(head -c 200 "$TMP/err")" || ok
expect_rc 0 "convert 2" -- "$C" "$S" "$TMP/b/" --map pizza-top:3 --dtype bf16 --json
cp "$TMP/out" "$TMP/convert.json"
json_ok "$TMP/convert.json" "convert --json"
expect_grep '"sha256":	"407a7c581bdd66972383ce9ad24857713fb98786d06ea564a2fe9b34ebe77dfd"' "$TMP/convert.json" "manifest source hash"
[ -s "$TMP/err" ] && bad "stderr of a good conversion: $(head -c 200 "$TMP/err")" || ok
for f in model.safetensors config.json kvforge.json tokenizer.json tokenizer.model; do
    cmp -s "$TMP/a/$f" "$TMP/b/$f" && ok || bad "$f differs between two identical runs"
done
cmp -s "$TMP/b/kvforge.json" "$TMP/convert.json" && ok || bad "--json output is not kvforge.json"
after=$(cat "$S"/* | sha256sum)
[ "$before" = "$after" ] && ok || bad "the source folder changed"
expect_grep '"layer_types":	"0_1_4_4_4"' "$TMP/a/config.json" "layer_types in config"
expect_grep '"torch_dtype":	"bfloat16"' "$TMP/a/config.json" "torch_dtype in config"
expect_rc 0 "info of the output" -- "$C" info "$TMP/a"
expect_grep "KV cache       384 bytes/token in BF16 (3 of 5 slots" "$TMP/out" "output KV bytes"

# destination rules
expect_rc 1 "non-empty destination" -- "$C" -q "$S" "$TMP/a" --map pizza-top:3
expect_grep "not empty (use --force" "$TMP/err" "non-empty message"
expect_rc 0 "--force" -- "$C" -q "$S" "$TMP/a" --swiftkv 3 --force
expect_grep '"model_type":	"llama_swiftkv"' "$TMP/a/config.json" "--force replaced the config"
expect_rc 1 "destination = source" -- "$C" -q "$S" "$S" --map cla:2 --force
expect_grep "source folder" "$TMP/err" "dst = src message"
expect_rc 1 "convert a converted model" -- "$C" -q "$TMP/a" "$TMP/c" --map cla:2
ls -a "$TMP" | grep -q 'tmp-' && bad "staging folder left in $TMP" || ok
done_tests cli_kvconvert
