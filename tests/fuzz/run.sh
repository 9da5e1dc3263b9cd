#!/bin/sh
# Runs libFuzzer targets one at a time (single process each): tests/fuzz/run.sh [TARGET...]
# (default: every built target). Each runs FUZZ_SECONDS (60) over its working corpus
# $FUZZ_BUILD/corpus/T (new inputs go there), the committed seeds tests/fuzz/corpus/T and the
# generated seeds $FUZZ_BUILD/seeds/T. A crash, sanitizer report, leak, timeout (FUZZ_TIMEOUT s
# for one input, default 10) or out-of-memory (FUZZ_RSS_MB, 2048) fails the run; the input is
# kept in $FUZZ_BUILD/artifacts/T/. Mutations use the dictionary tests/fuzz/T.dict (plus
# json.dict for JSON inputs). Prints one line per target: executions, coverage, corpus.
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
[ $# -gt 0 ] || set -- $(ls "$FUZZ_BUILD" | sed -n 's/^fuzz_\(.*\)$/\1/p' | grep -v '^seeds$')
failed=""
for t in "$@"; do
    bin="$FUZZ_BUILD/fuzz_$t"
    [ -x "$bin" ] || { echo "fuzz: no target $bin (make fuzz-build)"; failed="$failed $t"; continue; }
    corpus="$FUZZ_BUILD/corpus/$t"
    art="$FUZZ_BUILD/artifacts/$t"
    log="$FUZZ_BUILD/logs/$t.log"
    mkdir -p "$corpus" "$art" "$FUZZ_BUILD/logs"
    dirs="$corpus"
    for d in "tests/fuzz/corpus/$t" "$FUZZ_BUILD/seeds/$t"; do [ -d "$d" ] && dirs="$dirs $d"; done
    # dictionary: tests/fuzz/T.dict, plus json.dict for the targets that read JSON
    dict="$FUZZ_BUILD/dicts/$t.dict"
    mkdir -p "$FUZZ_BUILD/dicts"
    : >"$dict"
    [ -f "tests/fuzz/$t.dict" ] && cat "tests/fuzz/$t.dict" >>"$dict"
    case "$t" in kvmap|tokenizer_encode) ;; *) cat tests/fuzz/json.dict >>"$dict" ;; esac
    start=$(date +%s)
    "$bin" -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
        -dict="$dict" -print_final_stats=1 -artifact_prefix="$art/" $dirs >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    files=$(ls "$corpus" | wc -l)
    kb=$(find "$corpus" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s / 1024}')
    printf '  %-18s %8s execs  cov %5s  ft %5s  corpus %4s files %6s KB  %3ss  %s\n' "$t" "${execs:-?}" "${cov:-?}" \
        "${ft:-?}" "$files" "$kb" "$secs" "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")"
    if [ $rc != 0 ]; then
        grep -E 'ERROR|SUMMARY|FUZZ_CHECK|Test unit written|runtime error' "$log" | head -n 12 | sed 's/^/    | /'
        failed="$failed $t"
    fi
done
[ -z "$failed" ] || { echo "fuzz: failing:$failed (logs in $FUZZ_BUILD/logs)"; exit 1; }
echo "fuzz: $# targets ok"
