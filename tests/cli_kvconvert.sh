#!/bin/sh
# kvconvert CLI: usage, plan, convert (deterministic, source untouched, refusals), info
. tests/lib.sh
require_shared cli_kvconvert
C="$BIN/kvconvert"
S=$SHARED/models/stories260K
expect_rc 0 "help" -- "$C" --help
expect_grep "sandwich" "$TMP/out" "help lists maps"
expect_rc 0 "version" -- "$C" --version
expect_rc 2 "no args" -- "$C"
expect_rc 2 "bad dtype" -- "$C" "$S" "$TMP/x" --map yoco --dtype f8
expect_rc 2 "map and swiftkv" -- "$C" "$S" "$TMP/x" --map yoco --swiftkv 2
expect_rc 2 "no map" -- "$C" "$S" "$TMP/x"
expect_rc 1 "bad spec" -- "$C" plan "$S" --map pizza-sideways:3
expect_grep "kvconvert: error:" "$TMP/err" "error prefix"
expect_rc 1 "l too large" -- "$C" plan "$S" --map pizza-bottom:9
expect_rc 1 "swiftkv g does not divide" -- "$C" plan "$S" --swiftkv 2,2
expect_rc 1 "missing source" -- "$C" "$TMP/nope" "$TMP/x" --map yoco
[ ! -e "$TMP/x" ] && ok || bad "failed conversion left $TMP/x"
# plan prints the diagram and savings, writes nothing
expect_rc 0 "plan" -- "$C" --plan "$S" --map sandwich-middle:3
expect_grep "upward (diagonal masked)" "$TMP/out" "plan diagram"
expect_grep "KV cache: 3 of 5 slots" "$TMP/out" "plan savings"
expect_rc 0 "plan json" -- "$C" plan "$S" --swiftkv 1,2 --json
expect_grep '"kv_slots":3' "$TMP/out" "swiftkv 1,2 slots"
# convert twice: byte-identical; the source unchanged
before=$(cat "$S"/* | sha256sum)
expect_rc 0 "convert a" -- "$C" "$S" "$TMP/a" --map lasagna-top:3 --dtype bf16 -q
expect_rc 0 "convert b" -- "$C" "$S" "$TMP/b" --map lasagna-top:3 --dtype bf16 -q
diff -r "$TMP/a" "$TMP/b" >/dev/null && ok || bad "two conversions differ"
[ "$before" = "$(cat "$S"/* | sha256sum)" ] && ok || bad "source modified"
expect_rc 1 "non-empty dest" -- "$C" "$S" "$TMP/a" --map cla:2
expect_grep "not empty" "$TMP/err" "non-empty named"
expect_rc 0 "force" -- "$C" "$S" "$TMP/a" --map pizza-bottom:2 --force -q
grep -q "0_1_1_1_1" "$TMP/a/config.json" && ok || bad "forced output replaced"
expect_rc 1 "dest is source" -- "$C" "$S" "$S" --map yoco --force
# info on original and converted
expect_rc 0 "info json" -- "$C" info "$TMP/b" --json
expect_grep '"kv_slots":3' "$TMP/out" "info slots"
expect_grep '"kv_cache_bytes_per_token":384' "$TMP/out" "info kv bytes (3 slots x 2 x 4 x 8 x 2 bytes)"
expect_rc 0 "info text" -- "$C" --info "$S"
expect_grep "parameters     260032" "$TMP/out" "info params"
done_tests cli_kvconvert
