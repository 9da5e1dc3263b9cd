#!/bin/sh
# Crash safety of the write paths (docs/CONVERT.md "Crash safety"): kvconvert (one file and
# sharded output), kvconvert bundle, kvconvert unbundle and kvdistill train's checkpoints are
# killed with SIGKILL at a schedule of their write-path calls (the LD_PRELOAD fault shim,
# tests/fault/fault_shim.c: first, second, quarter, middle, three quarters, last calls, first
# and last rename) and after a schedule of wall-clock delays. After each kill: the destination
# is absent or complete (byte-equal to an uninterrupted run), the source is unchanged (sha256), and a rerun
# of the same command succeeds and leaves no "*.tmp-XXXXXX" behind. A full disk (the shim's
# ENOSPC mode, and ulimit -f) fails with exit 1, names the file and leaves nothing.
# Synthetic models only (kvsynth): runs without ../shared.
. tests/lib.sh
BUILD=${BUILD:-build}
SHIM=$PWD/$BUILD/tests/fault_shim.so
KC=$BIN/kvconvert
KD=$BIN/kvdistill

# a sanitized build (make asan) insists on its runtime coming first; the shim has no
# sanitizer, so it may come first there
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
export ASAN_OPTIONS

# sum of the sha256 of every file under a folder (or of one file); "absent" when missing
tree_sum() {
    [ -e "$1" ] || { echo absent; return; }
    (cd "$1" 2>/dev/null && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum) ||
        sha256sum <"$1"
}
# temporaries left anywhere under the scratch folder
leftovers() { find "$TMP/w" -name '*.tmp-??????' 2>/dev/null; }

"$BIN/kvsynth" "$TMP/m1" >/dev/null 2>&1 && ok || bad "kvsynth one-file model"
"$BIN/kvsynth" --shard-size 300K "$TMP/ms" >/dev/null 2>&1 && ok || bad "kvsynth sharded model"
[ -f "$SHIM" ] && ok || bad "fault shim not built ($SHIM)"
mkdir -p "$TMP/w"
# with_fault VAR=VALUE... -- CMD...: CMD (a tool or a function of this script) under the shim
with_fault() {
    (
        while [ "$1" != -- ]; do export "$1"; shift; done
        shift
        export LD_PRELOAD="$SHIM"
        "$@"
    )
}
with_fault KVFAULT_LOG=/dev/null -- true && ok || bad "the fault shim does not load"

# call_count CMD...: write-path calls of an uninterrupted run (the shim's log)
call_count() {
    rm -f "$TMP/calls"
    with_fault KVFAULT_LOG="$TMP/calls" -- "$@" >/dev/null 2>&1
    wc -l <"$TMP/calls" 2>/dev/null || echo 0
}
# kill points over a run of N calls: first, second, quarter, middle, three quarters, last but
# one, last, and the first and last rename (the output's own rename is the last)
schedule() {
    n=$1
    { echo 1 2 $((n / 4)) $((n / 2)) $((3 * n / 4)) $((n - 1)) "$n" | tr ' ' '\n'
      grep ' rename$' "$TMP/calls" | cut -d' ' -f1 | sed -n '1p;$p'; } |
        awk -v n="$n" '$1 >= 1 && $1 <= n' | sort -un
}

# crash_case NAME DST RERUN_FLAG -- CMD...: CMD writes DST. Reference: an uninterrupted run.
# Then for every kill point and every delay: kill, check, rerun (with RERUN_FLAG when DST
# survived complete), check again.
crash_case() {
    name=$1; dst=$2; again=$3; shift 4
    src_sum=$(tree_sum "$SRC")
    rm -rf "$dst"
    "$@" >/dev/null 2>"$TMP/err" && ok || bad "$name: uninterrupted run: $(head -c 300 "$TMP/err")"
    ref=$(tree_sum "$dst")
    rm -rf "$dst"
    n=$(call_count "$@")
    rm -rf "$dst"
    [ "$n" -ge 3 ] && ok || bad "$name: only $n write-path calls seen by the shim"
    points=$(schedule "$n")
    killed=0
    for k in $points; do
        with_fault KVFAULT_KILL_AT="$k" -- "$@" >/dev/null 2>&1
        rc=$?
        [ "$rc" = 137 ] && killed=$((killed + 1))
        check_after_kill "$name (kill at call $k of $n)" "$@"
    done
    [ "$killed" -ge 3 ] && ok || bad "$name: only $killed of the scheduled kills happened"
    for d in 0 0.01 0.03 0.06; do
        (exec "$@") >/dev/null 2>&1 &
        pid=$!
        sleep "$d"
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        check_after_kill "$name (SIGKILL after ${d}s)" "$@"
    done
}

# after a kill: DST absent or complete; source unchanged; rerun; complete, no leftovers
check_after_kill() {
    what=$1; shift
    got=$(tree_sum "$dst")
    if [ "$got" = absent ] || [ "$got" = "$ref" ]; then ok; else bad "$what: $dst holds a partial result"; fi
    [ "$(tree_sum "$SRC")" = "$src_sum" ] && ok || bad "$what: the source changed"
    if [ "$got" = absent ]; then
        "$@" >/dev/null 2>"$TMP/err" && ok || bad "$what: rerun failed: $(head -c 300 "$TMP/err")"
    elif [ -n "$again" ]; then
        "$@" $again >/dev/null 2>"$TMP/err" && ok || bad "$what: rerun $again failed: $(head -c 300 "$TMP/err")"
    fi
    [ "$(tree_sum "$dst")" = "$ref" ] && ok || bad "$what: rerun gave a different result"
    left=$(leftovers)
    [ -z "$left" ] && ok || bad "$what: temporaries left after the rerun: $left"
    rm -rf "$dst"
}

# ---- kvconvert: one-file output from a one-file source, sharded output from a sharded one ----
SRC=$TMP/m1
crash_case "kvconvert" "$TMP/w/out" --force -- "$KC" "$TMP/m1" "$TMP/w/out" --map cla:2 -q
SRC=$TMP/ms
crash_case "kvconvert sharded" "$TMP/w/outs" --force -- \
    "$KC" "$TMP/ms" "$TMP/w/outs" --swiftkv 2 --shard-size 300K -q
ls "$TMP/ms" | grep -q 'model-00002-of' && ok || bad "the sharded source has one shard"

# ---- bundle and unbundle ----
SRC=$TMP/m1
crash_case "kvconvert bundle" "$TMP/w/m.kvb" --force -- "$KC" bundle "$TMP/m1" "$TMP/w/m.kvb" -q
"$KC" bundle "$TMP/m1" "$TMP/m.kvb" -q >/dev/null 2>&1 && ok || bad "bundle for unbundle"
SRC=$TMP/m.kvb
crash_case "kvconvert unbundle" "$TMP/w/unb" "" -- "$KC" unbundle "$TMP/m.kvb" "$TMP/w/unb" -q

# ---- kvdistill train: kills during its checkpoint writes (--save-every 1); the rerun resumes ----
"$KC" "$TMP/m1" "$TMP/cla" --map cla:2 -q >/dev/null 2>&1 && ok || bad "student for kvdistill"
i=0
while [ $i -lt 60 ]; do
    echo "Once upon a time a little cat named Tom went to the park with his mum. He saw a big dog."
    echo "The sun was warm and the birds sang, so they played all day and came home happy."
    echo
    i=$((i + 1))
done >"$TMP/data.txt"
train() { # OUT_DIR [extra...]
    out=$1; shift
    "$KD" train "$TMP/m1" "$TMP/cla" "$out" --data "$TMP/data.txt" --steps 4 --seq-len 16 \
        --batch 2 --lr 3e-3 --save-every 1 --eval-seqs 2 --seed 5 --quiet --threads 1 "$@"
}
train "$TMP/full" >/dev/null 2>"$TMP/err" && ok || bad "kvdistill uninterrupted: $(head -c 300 "$TMP/err")"
n=$(call_count train "$TMP/w/probe")
rm -rf "$TMP/w/probe"
[ "$n" -ge 8 ] && ok || bad "kvdistill: only $n write-path calls"
src_sum=$(tree_sum "$TMP/m1")$(tree_sum "$TMP/cla")
killed=0
for k in $(schedule "$n") 7 13; do
    rm -rf "$TMP/w/kd"
    with_fault KVFAULT_KILL_AT="$k" -- train "$TMP/w/kd" >/dev/null 2>&1
    [ $? = 137 ] && killed=$((killed + 1))
    ck=$TMP/w/kd/checkpoint/state.safetensors
    # a checkpoint under its name is complete: the resume reads it and ends where the full run did
    train "$TMP/w/kd" --resume >/dev/null 2>"$TMP/err" && ok ||
        bad "kvdistill (kill at call $k of $n): resume failed: $(head -c 300 "$TMP/err")"
    cmp -s "$TMP/full/model.safetensors" "$TMP/w/kd/model.safetensors" && ok ||
        bad "kvdistill (kill at call $k of $n): resumed weights differ from the uninterrupted run"
    [ -f "$ck" ] && ok || bad "kvdistill (kill at call $k): no checkpoint after the resume"
    left=$(leftovers)
    [ -z "$left" ] && ok || bad "kvdistill (kill at call $k): temporaries left: $left"
done
[ "$killed" -ge 5 ] && ok || bad "kvdistill: only $killed of the scheduled kills happened"
[ "$(tree_sum "$TMP/m1")$(tree_sum "$TMP/cla")" = "$src_sum" ] && ok || bad "kvdistill changed its inputs"
rm -rf "$TMP/w/kd"

# ---- full disk: the shim's ENOSPC from the middle of the write, and ulimit -f ----
# full_disk NAME DST WHAT -- CMD...: exit 1, the error names DST's file, nothing at DST, no
# temporaries
full_disk() {
    name=$1; dst=$2; shift 3
    rm -rf "$dst"
    "$@" >/dev/null 2>"$TMP/err"
    rc=$?
    [ "$rc" = 1 ] && ok || bad "$name: exit $rc, wanted 1; stderr: $(head -c 300 "$TMP/err")"
    # DST itself ("DST: ...") or a file under it ("DST/model.safetensors: ..."), not a temporary
    if grep -qF "$dst: " "$TMP/err" || grep -qF "$dst/" "$TMP/err"; then ok; else
        bad "$name: the error does not name $dst: $(head -c 300 "$TMP/err")"
    fi
    grep -qi "space\|too large" "$TMP/err" && ok || bad "$name: the error does not say why: $(head -c 300 "$TMP/err")"
    [ ! -e "$dst" ] && ok || bad "$name: $dst exists after the failure"
    left=$(leftovers)
    [ -z "$left" ] && ok || bad "$name: temporaries left: $left"
}
for tool in convert sharded bundle unbundle; do
    case $tool in
        convert) set -- "$TMP/w/out" "$KC" "$TMP/m1" "$TMP/w/out" --map cla:2 -q ;;
        sharded) set -- "$TMP/w/outs" "$KC" "$TMP/ms" "$TMP/w/outs" --swiftkv 2 --shard-size 300K -q ;;
        bundle) set -- "$TMP/w/m.kvb" "$KC" bundle "$TMP/m1" "$TMP/w/m.kvb" -q ;;
        unbundle) set -- "$TMP/w/unb" "$KC" unbundle "$TMP/m.kvb" "$TMP/w/unb" -q ;;
    esac
    dst=$1; shift
    n=$(call_count "$@")
    rm -rf "$dst"
    full_disk "$tool ENOSPC at call $((n / 2)) of $n" "$dst" -- with_fault KVFAULT_ENOSPC_AT=$((n / 2)) -- "$@"
    # 200 blocks of 512 bytes (dash; bash counts 1K blocks): far below the 0.8 MB model
    full_disk "$tool under ulimit -f" "$dst" -- sh -c 'ulimit -f 200 && exec "$@"' sh "$@"
done
rm -rf "$TMP/w/kd"
full_disk "kvdistill checkpoint ENOSPC" "$TMP/w/kd/checkpoint/state.safetensors" -- with_fault KVFAULT_ENOSPC_AT=2 -- train "$TMP/w/kd"
done_tests cli_crash
