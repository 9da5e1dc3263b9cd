#!/bin/sh
# Runs every test binary in $BUILD/tests and every tests/cli_*.sh; sums their RESULT lines.
# Prints "N passed, N failed" last; exits non-zero on any failure.
BUILD=${BUILD:-build}
export BUILD KV_BIN="$PWD/$BUILD/bin"
log=$(mktemp) || exit 1
# digests kvconvert caches (transform/convert/hashcache.h) go to a scratch folder, not the user's cache
KVFORGE_CACHE_DIR=$(mktemp -d) || exit 1
export KVFORGE_CACHE_DIR
trap 'rm -f "$log"; rm -rf "$KVFORGE_CACHE_DIR"' EXIT
failed_suites=""
skipped_suites=""
# The real-model fixtures live beside the checkout (../shared). A clone without them still runs
# every suite; a suite whose only failures are missing fixture files is reported as skipped.
no_fixtures=0
[ -d ../shared/models ] || { no_fixtures=1; echo "tests: ../shared fixtures not found: suites that need them will be skipped"; }
for t in "$BUILD"/tests/test_* tests/cli_*.sh; do
    [ -e "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    name=$(basename "$t")
    start=$(date +%s)
    case "$t" in
        *.sh) sh "$t" >"$log" 2>&1 ;;
        *) "$t" >"$log" 2>&1 ;;
    esac
    rc=$?
    secs=$(( $(date +%s) - start ))
    line=$(grep '^RESULT ' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        line="RESULT $name 0 1"
        echo "  $name: crashed or printed no RESULT (exit $rc)"
    fi
    set -- $line
    if [ "$no_fixtures" = 1 ] && { [ "$4" != 0 ] || [ "$rc" != 0 ]; } &&
       grep '^FAIL' "$log" | grep -q '\.\./shared' &&
       ! grep '^FAIL' "$log" | grep -qv '\.\./shared'; then
        echo "  $2: skipped, needs ../shared fixtures ($3 passed before that, ${secs}s)"
        skipped_suites="$skipped_suites $name"
        total_pass=$(( ${total_pass:-0} + $3 ))
        continue
    fi
    echo "  $2: $3 passed, $4 failed (${secs}s)"
    if [ "$4" != 0 ] || [ "$rc" != 0 ]; then
        grep -v '^RESULT ' "$log" | tail -n 40 | sed 's/^/    | /'
        failed_suites="$failed_suites $name"
        [ "$4" = 0 ] && set -- x x "$3" 1
    fi
    total_pass=$(( ${total_pass:-0} + $3 ))
    total_fail=$(( ${total_fail:-0} + $4 ))
done
[ -z "$skipped_suites" ] || echo "skipped for lack of ../shared fixtures:$skipped_suites"
echo "${total_pass:-0} passed, ${total_fail:-0} failed"
[ -z "$failed_suites" ] || { echo "failing:$failed_suites"; exit 1; }
