#!/bin/sh
# SwiftKV outputs a server can load (docs/INTEROP.md): by default kvconvert and kvdistill student
# keep the teacher's q/k/v_proj of layers >= l (Snowflake's layout, which every version of
# ArcticInference's llama_swiftkv loads); --layout deploy and AcrossKV (g > 1) work but warn,
# naming the limitation; a checkpoint saved with "swiftkv": false (ArcticTraining's teacher
# mode) reads as its teacher, and as the SwiftKV model again once the flag is true. Runs on a
# kvsynth model: no fixtures needed.
. tests/lib.sh
C="$BIN/kvconvert"
R="$BIN/kvrun"
V="$BIN/kvverify"
KD="$BIN/kvdistill"
TEXT="Once upon a time there was a tiny model."
expect_rc 0 "kvsynth" -- "$BIN/kvsynth" --preset tiny "$TMP/m"

# tensor names of a model.safetensors (its JSON header)
names() { head -c 65536 "$1/model.safetensors" | tr ',{' '\n\n' | grep -a -o '"model\.[a-z_.0-9]*"' | tr -d '"' | sort; }
has() { names "$1" | grep -qx "$2"; }

# default: hf-swiftkv, no warning
expect_rc 0 "swiftkv 2 default" -- "$C" "$TMP/m" "$TMP/h2" --swiftkv 2 --no-sync
if grep -q "warning" "$TMP/err"; then bad "default g=1 layout warned: $(cat "$TMP/err")"; else ok; fi
expect_rc 0 "info h2" -- "$C" info "$TMP/h2"
expect_grep "schema         llama_swiftkv, layout hf-swiftkv" "$TMP/out" "default layout is hf-swiftkv"
for j in 2 3; do
    for p in q k v; do
        has "$TMP/h2" "model.layers.$j.self_attn.${p}_proj.weight" && ok || bad "default keeps layer $j ${p}_proj"
        has "$TMP/h2" "model.layers.$j.self_attn.${p}_proj_swiftkv.weight" && ok || bad "layer $j ${p}_proj_swiftkv"
    done
done
expect_grep '"layout":	"hf-swiftkv"' "$TMP/h2/kvforge.json" "kvforge.json layout"
if grep -q serving_limits "$TMP/h2/kvforge.json"; then bad "g=1 hf-swiftkv has serving limits"; else ok; fi

# deploy: smaller, warned
expect_rc 0 "swiftkv 2 deploy" -- "$C" "$TMP/m" "$TMP/d2" --swiftkv 2 --layout deploy --no-sync
expect_grep "kvconvert: warning: layout 'deploy' drops q/k/v_proj of layers >= 2" "$TMP/err" "deploy warning"
if has "$TMP/d2" "model.layers.2.self_attn.q_proj.weight"; then bad "deploy kept q_proj"; else ok; fi
expect_grep '"serving_limits"' "$TMP/d2/kvforge.json" "deploy limits in kvforge.json"
# AcrossKV: warned in either layout, also under --quiet and --json
expect_rc 0 "swiftkv 2,2 quiet" -- "$C" "$TMP/m" "$TMP/h22" --swiftkv 2,2 -q --no-sync
expect_grep "kvconvert: warning: AcrossKV (key_value_group_size 2 > 1)" "$TMP/err" "AcrossKV warning"
if grep -q "layout 'deploy'" "$TMP/err"; then bad "hf-swiftkv g=2 warned about deploy"; else ok; fi
expect_rc 0 "plan --json 2,2" -- "$C" plan "$TMP/m" --swiftkv 2,2 --json
expect_grep '"serving_limits":\["AcrossKV' "$TMP/out" "plan JSON lists the limitation"
# the same logits whatever the layout
expect_rc 0 "kvrun h2" -- "$R" "$TMP/h2" --logits-out "$TMP/h2.st" --text "$TEXT"
expect_rc 0 "kvrun d2" -- "$R" "$TMP/d2" --logits-out "$TMP/d2.st" --text "$TEXT"
expect_rc 0 "layouts give equal logits" -- "$V" logits "$TMP/h2.st" "$TMP/d2.st" --atol 0

# kvdistill student: the same default and warnings
expect_rc 0 "student swiftkv:2" -- "$KD" student "$TMP/m" "$TMP/sh" --map swiftkv:2 --quiet
has "$TMP/sh" "model.layers.3.self_attn.k_proj.weight" && ok || bad "student keeps the teacher's k_proj"
expect_rc 0 "student deploy" -- "$KD" student "$TMP/m" "$TMP/sd" --map swiftkv:2 --layout deploy --quiet
expect_grep "kvdistill: warning: layout 'deploy'" "$TMP/err" "student deploy warning"
if has "$TMP/sd" "model.layers.3.self_attn.k_proj.weight"; then bad "student deploy kept k_proj"; else ok; fi
expect_rc 2 "student --layout on a cross map" -- "$KD" student "$TMP/m" "$TMP/sx" --map cla:2 --layout deploy
expect_rc 2 "kvconvert bad --layout" -- "$C" "$TMP/m" "$TMP/bad" --swiftkv 2 --layout fast
expect_rc 0 "student equals kvconvert" -- "$R" "$TMP/sh" --logits-out "$TMP/sh.st" --text "$TEXT"
expect_rc 0 "student logits = kvconvert's" -- "$V" logits "$TMP/h2.st" "$TMP/sh.st" --atol 0

# "swiftkv": false (teacher mode): the teacher's logits; true again: the SwiftKV model's
mkdir -p "$TMP/off"
cp "$TMP/h2/model.safetensors" "$TMP/h2/tokenizer.json" "$TMP/off/"
sed 's/"swiftkv":	true/"swiftkv":	false/' "$TMP/h2/config.json" >"$TMP/off/config.json"
expect_grep '"swiftkv":	false' "$TMP/off/config.json" "teacher-mode config written"
expect_rc 0 "info teacher mode" -- "$C" info "$TMP/off"
expect_grep "llama_swiftkv-off" "$TMP/out" "teacher-mode schema"
expect_rc 0 "kvrun teacher" -- "$R" "$TMP/m" --logits-out "$TMP/t.st" --text "$TEXT"
expect_rc 0 "kvrun teacher mode" -- "$R" "$TMP/off" --logits-out "$TMP/off.st" --text "$TEXT"
expect_rc 0 "teacher mode = teacher" -- "$V" logits "$TMP/t.st" "$TMP/off.st" --atol 0
expect_rc 0 "teacher mode as a distillation teacher" -- "$KD" student "$TMP/off" "$TMP/s_off" --map swiftkv:2 --quiet
expect_rc 0 "kvrun its student" -- "$R" "$TMP/s_off" --logits-out "$TMP/soff.st" --text "$TEXT"
expect_rc 0 "student of teacher mode = student of teacher" -- "$V" logits "$TMP/h2.st" "$TMP/soff.st" --atol 0
expect_rc 0 "convert teacher mode (identity)" -- "$C" "$TMP/off" "$TMP/off_id" --map identity -q --no-sync
expect_grep '"model_type":	"llama"' "$TMP/off_id/config.json" "teacher mode converts to a plain llama"
if names "$TMP/off_id" | grep -q swiftkv; then bad "identity output kept SwiftKV tensors"; else ok; fi
expect_rc 0 "bundle teacher mode" -- "$C" bundle "$TMP/off" "$TMP/off.kvb" -q
expect_rc 0 "kvrun teacher-mode bundle" -- "$R" "$TMP/off.kvb" --logits-out "$TMP/offb.st" --text "$TEXT"
expect_rc 0 "bundle = teacher" -- "$V" logits "$TMP/t.st" "$TMP/offb.st" --atol 0
done_tests cli_swiftkv_serving
