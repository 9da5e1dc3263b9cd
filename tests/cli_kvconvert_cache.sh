#!/bin/sh
# kvconvert on a generated model (no fixtures needed): source digests in kvforge.json are right
# whether they come from hashing or from the digest cache, a rewritten source is hashed again,
# and --no-sync / --no-hash-cache write the same bytes as the default.
. tests/lib.sh
C="$BIN/kvconvert"
S="$TMP/src"
digest_of() { # FILE: the sha256 kvforge.json should record
    sha256sum "$1" | cut -d' ' -f1
}
manifest_digest() { # DIR: the digest kvforge.json records for model.safetensors
    grep -A3 '"model.safetensors"' "$1/kvforge.json" | sed -n 's/.*"sha256":[[:space:]]*"\([0-9a-f]*\)".*/\1/p'
}
expect_rc 0 "kvsynth" -- "$BIN/kvsynth" --preset tiny --vocab 4096 "$S"
size=$(wc -c <"$S/model.safetensors")
[ "$size" -gt 1048576 ] && ok || bad "source of $size bytes is below the cache's 1 MiB floor"

expect_rc 0 "cold conversion" -- "$C" -q "$S" "$TMP/a" --swiftkv 2
[ "$(manifest_digest "$TMP/a")" = "$(digest_of "$S/model.safetensors")" ] && ok || bad "cold digest: $(manifest_digest "$TMP/a")"
n_entries=$(ls "$KVFORGE_CACHE_DIR/sha256" 2>/dev/null | wc -l)
[ "$n_entries" = 1 ] && ok || bad "cache holds $n_entries entries after one conversion, wanted 1 (the weights)"

expect_rc 0 "warm conversion" -- "$C" -q "$S" "$TMP/b" --swiftkv 2
expect_rc 0 "warm, --no-sync" -- "$C" -q "$S" "$TMP/c" --swiftkv 2 --no-sync
expect_rc 0 "--no-hash-cache" -- "$C" -q "$S" "$TMP/d" --swiftkv 2 --no-hash-cache
for d in b c d; do
    for f in model.safetensors config.json kvforge.json tokenizer.json; do
        cmp -s "$TMP/a/$f" "$TMP/$d/$f" && ok || bad "$d/$f differs from the cold conversion's"
    done
done

# the output's tensor data starts on the source's page offset (verbatim tensors copy page onto page)
data_residue() { echo $(( ($(head -c 8 "$1" | od -An -tu8) + 8) % 4096 )); }
[ "$(data_residue "$TMP/a/model.safetensors")" = "$(data_residue "$S/model.safetensors")" ] && ok ||
    bad "data start residue $(data_residue "$TMP/a/model.safetensors"), source's $(data_residue "$S/model.safetensors")"

# the source rewritten (other weights, same shape and size): the cache must not answer
expect_rc 0 "kvsynth again, another seed" -- "$BIN/kvsynth" --preset tiny --vocab 4096 --seed 2 --force "$S"
[ "$(wc -c <"$S/model.safetensors")" = "$size" ] && ok || bad "the rewritten source changed size"
expect_rc 0 "conversion of the rewritten source" -- "$C" -q "$S" "$TMP/e" --swiftkv 2
[ "$(manifest_digest "$TMP/e")" = "$(digest_of "$S/model.safetensors")" ] && ok || bad "stale digest after rewrite: $(manifest_digest "$TMP/e")"
[ "$(manifest_digest "$TMP/e")" != "$(manifest_digest "$TMP/a")" ] && ok || bad "digest unchanged after rewrite"

# an unusable cache folder only costs the hashing
expect_rc 0 "unwritable cache" -- env KVFORGE_CACHE_DIR=/proc/kvforge-no-cache "$C" -q "$S" "$TMP/f" --map cla:2
[ "$(manifest_digest "$TMP/f")" = "$(digest_of "$S/model.safetensors")" ] && ok || bad "digest with no cache"
# a sharded source: its shards are hashed two at a time (interleaved); every digest recorded
expect_rc 0 "sharded copy of the source" -- "$C" -q "$S" "$TMP/sh" --map 0_1_2_3 --shard-size 400K --no-hash-cache
n_shards=$(ls "$TMP/sh"/model-*-of-*.safetensors | wc -l)
[ "$n_shards" -ge 3 ] && ok || bad "wanted at least 3 shards, got $n_shards"
expect_rc 0 "conversion of the sharded source" -- "$C" -q "$TMP/sh" "$TMP/sh2" --swiftkv 2 --no-hash-cache
for f in "$TMP/sh"/model-*-of-*.safetensors "$TMP/sh/model.safetensors.index.json" "$TMP/sh/config.json"; do
    name=$(basename "$f")
    got=$(grep -A3 "\"$name\"" "$TMP/sh2/kvforge.json" | sed -n 's/.*"sha256":[[:space:]]*"\([0-9a-f]*\)".*/\1/p')
    [ "$got" = "$(digest_of "$f")" ] && ok || bad "sharded source: digest of $name is '$got'"
done
done_tests cli_kvconvert_cache
