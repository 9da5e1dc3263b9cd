#!/bin/sh
# Runs every test binary in $BUILD/tests and every tests/cli_*.sh; sums their RESULT lines.
# Prints "N passed, N failed" last; exits non-zero on any failure.
BUILD=${BUILD:-build}
export BUILD KV_BIN="$PWD/$BUILD/bin"
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT
failed_suites=""
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
    echo "  $2: $3 passed, $4 failed (${secs}s)"
    if [ "$4" != 0 ] || [ "$rc" != 0 ]; then
        grep -v '^RESULT ' "$log" | tail -n 40 | sed 's/^/    | /'
        failed_suites="$failed_suites $name"
        [ "$4" = 0 ] && set -- x x "$3" 1
    fi
    total_pass=$(( ${total_pass:-0} + $3 ))
    total_fail=$(( ${total_fail:-0} + $4 ))
done
echo "${total_pass:-0} passed, ${total_fail:-0} failed"
[ -z "$failed_suites" ] || { echo "failing:$failed_suites"; exit 1; }
