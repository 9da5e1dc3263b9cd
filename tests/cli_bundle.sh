#!/bin/sh
# bundles through the tools: convert --bundle, kvverify bundle, kvrun on the bundle (same logits
# as the directory), unbundle byte-identical, a flipped byte reported
. tests/lib.sh
require_shared cli_bundle
S=$SHARED/models/stories260K
expect_rc 0 "convert + bundle" -- "$BIN/kvconvert" "$S" "$TMP/m" --map sandwich-top:3 --bundle "$TMP/m.kvb" -q
expect_rc 0 "verify" -- "$BIN/kvverify" bundle "$TMP/m.kvb" --json
expect_grep '"ok":true' "$TMP/out" "verify ok"
expect_rc 0 "logits from dir" -- "$BIN/kvrun" "$TMP/m" --logits-out "$TMP/dir.st" --text "Once upon a time, there was a cat."
expect_rc 0 "logits from bundle" -- "$BIN/kvrun" "$TMP/m.kvb" --logits-out "$TMP/kvb.st" --text "Once upon a time, there was a cat."
expect_rc 0 "bundle logits identical" -- "$BIN/kvverify" logits "$TMP/dir.st" "$TMP/kvb.st" --atol 0
expect_rc 0 "tokenize from bundle" -- "$BIN/kvrun" "$TMP/m.kvb" --tokenize "Once upon a time"
expect_grep "^403 407 261 378$" "$TMP/out" "bundle tokenizer ids"
expect_rc 0 "unbundle" -- "$BIN/kvconvert" unbundle "$TMP/m.kvb" "$TMP/back"
# same header JSON (kvconvert pads its header to the source's page offset, the unbundler does not)
# and the same data buffer, byte for byte
st_header() { n=$(head -c 8 "$1" | od -An -tu8); head -c $((8 + n)) "$1" | tail -c "$n" | sed 's/ *$//'; }
st_data() { n=$(head -c 8 "$1" | od -An -tu8); tail -c +$((9 + n)) "$1"; }
[ "$(st_header "$TMP/m/model.safetensors")" = "$(st_header "$TMP/back/model.safetensors")" ] && ok || bad "unbundled header differs"
st_data "$TMP/m/model.safetensors" >"$TMP/a.data"; st_data "$TMP/back/model.safetensors" >"$TMP/b.data"
[ -s "$TMP/a.data" ] && cmp -s "$TMP/a.data" "$TMP/b.data" && ok || bad "unbundled tensors differ"
cmp -s "$TMP/m/config.json" "$TMP/back/config.json" && ok || bad "unbundled config differs"
expect_rc 0 "bundle again" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/m2.kvb"
cmp -s "$TMP/m.kvb" "$TMP/m2.kvb" && ok || bad "bundles of the same model differ"
# flip one byte in the middle of the tensor data
size=$(wc -c < "$TMP/m.kvb")
cp "$TMP/m.kvb" "$TMP/bad.kvb"
printf '\377' | dd of="$TMP/bad.kvb" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
expect_rc 1 "corrupt bundle" -- "$BIN/kvverify" bundle "$TMP/bad.kvb"
expect_grep "kvverify: error:" "$TMP/err" "corruption reported"
expect_rc 1 "kvrun refuses corrupt" -- "$BIN/kvrun" "$TMP/bad.kvb" --prompt hi -n 2
expect_rc 1 "unbundle into non-empty" -- "$BIN/kvconvert" unbundle "$TMP/m.kvb" "$TMP/m"
# bundle outputs never overwrite silently (issue 17, item 1)
printf 'my notes\n' > "$TMP/notes.txt"
expect_rc 1 "bundle over an existing file" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/notes.txt"
expect_grep "already exists; --force" "$TMP/err" "existing file named"
expect_grep "^my notes$" "$TMP/notes.txt" "existing file untouched"
expect_rc 0 "bundle over an existing file with --force" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/notes.txt" --force -q
cmp -s "$TMP/m.kvb" "$TMP/notes.txt" && ok || bad "--force did not write the bundle"
expect_rc 1 "--bundle over an existing bundle" -- "$BIN/kvconvert" "$S" "$TMP/m3" --map cla:2 --bundle "$TMP/m.kvb" -q
expect_grep "m.kvb: already exists" "$TMP/err" "--bundle existing named"
[ ! -e "$TMP/m3" ] && ok || bad "--bundle refusal still converted"
expect_rc 0 "--bundle --force over an existing bundle" -- "$BIN/kvconvert" "$S" "$TMP/m3" --map cla:2 --bundle "$TMP/m.kvb" --force -q
expect_rc 0 "replaced bundle verifies" -- "$BIN/kvverify" bundle "$TMP/m.kvb" --json
expect_rc 1 "bundle into a directory" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/back" --force
expect_grep "is a directory" "$TMP/err" "directory output named"
expect_rc 1 "bundle onto the model directory" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/m" --force
expect_grep "is the model .* itself" "$TMP/err" "source output named"
cp "$TMP/m/config.json" "$TMP/config.before"
expect_rc 1 "bundle onto an input file" -- "$BIN/kvconvert" bundle "$TMP/m" "$TMP/m/config.json" --force
expect_grep "a file of the model directory" "$TMP/err" "input output named"
cmp -s "$TMP/m/config.json" "$TMP/config.before" && ok || bad "input file changed"
# on a copy of the source: a regressed check must never overwrite the shared fixture
mkdir -p "$TMP/src" && cp "$S"/* "$TMP/src/"
expect_rc 1 "--bundle onto a source file" -- "$BIN/kvconvert" "$TMP/src" "$TMP/m4" --map cla:2 --bundle "$TMP/src/model.safetensors" --force -q
expect_grep "a file of the model directory" "$TMP/err" "--bundle source file named"
expect_rc 1 "bundle a bundle onto itself" -- "$BIN/kvconvert" bundle "$TMP/m.kvb" "$TMP/m.kvb" --force
expect_grep "m.kvb: is the model .*m.kvb itself" "$TMP/err" "bundle onto its source bundle named"
expect_rc 0 "bundle a bundle" -- "$BIN/kvconvert" bundle "$TMP/m.kvb" "$TMP/again.kvb" -q
done_tests cli_bundle
