# sourced by tests/cli_*.sh (. tests/lib.sh): check helpers with the same RESULT protocol as tests/check.h
pass=0; fail=0
BIN=${KV_BIN:-$PWD/build/bin}
SHARED=../shared
TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT
KVFORGE_CACHE_DIR="$TMP/cache"   # kvconvert's digest cache (transform/convert/hashcache.h), per suite
export KVFORGE_CACHE_DIR
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
# expect_rc WANT DESC -- CMD...: runs CMD, checks its exit status
expect_rc() {
    want=$1; desc=$2; shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"; rc=$?
    if [ "$rc" = "$want" ]; then ok; else bad "$desc: exit $rc, wanted $want; stderr: $(head -c 400 "$TMP/err")"; fi
}
# expect_grep PATTERN FILE DESC
expect_grep() { if grep -q -- "$1" "$2"; then ok; else bad "$3: '$1' not in $2: $(head -c 400 "$2")"; fi; }
done_tests() { echo "RESULT $1 $pass $fail"; [ "$fail" = 0 ]; }
# require_shared NAME: suites that need the real fixtures stop here (reported as skipped by
# tests/run.sh) when ../shared is absent
require_shared() {
    if [ ! -d "$SHARED/models" ]; then
        echo "FAIL: $SHARED fixtures not found (../shared/models)" >&2
        echo "RESULT $1 0 1"
        exit 1
    fi
}
