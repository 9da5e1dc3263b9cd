#!/bin/sh
# make bench: every bench binary in $BUILD/bench, then every bench/*_bench.sh. Each prints its
# own ratios against a baseline measured in the same run (see docs/RESULTS.md).
BUILD=${BUILD:-build}
export BUILD KV_BIN="$PWD/$BUILD/bin"
status=0
for b in "$BUILD"/bench/* bench/*_bench.sh; do
    [ -f "$b" ] || continue
    case "$b" in *.o|*.d) continue ;; esac
    echo "== $(basename "$b")"
    case "$b" in
        *.sh) sh "$b" || status=1 ;;
        *) [ -x "$b" ] && { "$b" || status=1; } ;;
    esac
done
exit $status
