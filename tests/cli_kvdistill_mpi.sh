#!/bin/sh
# kvdistill train under mpirun (docs/DISTILL.md "Data parallel"), on stories260K students
# (kvconvert --swiftkv 3 and --map pizza-top:3):
#  - 2 processes against 1 with the same global batch, 50 steps: trained weights within 1e-5
#    relative (kvverify tensors), held-out perplexities in report.json agree to 4 digits;
#    mpirun -np 1 gives the single-process bits;
#  - a --batch the processes do not divide is refused;
#  - a process failing (the KVDISTILL_TEST_FAIL test hook) stops every process, exit != 0;
#  - SIGKILL of rank 1 stops the job (mpirun), and --resume with 2 processes reaches the weights
#    of an uninterrupted run; --resume with 1 process too (within 1e-5).
# Skips when mpirun is missing (make setup installs Open MPI). A build without MPI is only
# checked for refusing to run under mpirun.
. tests/lib.sh
if ! command -v mpirun >/dev/null 2>&1; then
    echo "SKIP: mpirun not found: data-parallel kvdistill not tested (make setup installs openmpi-bin and libopenmpi-dev)"
    done_tests cli_kvdistill_mpi
    exit 0
fi
require_shared cli_kvdistill_mpi
KD="$BIN/kvdistill"
M=$SHARED/models/stories260K
# Open MPI: root needs --allow-run-as-root (CI runs as root), 2 slots on a small machine need
# --oversubscribe; no ptrace-based single copy in containers
MR="mpirun -np 2 --oversubscribe --allow-run-as-root"
OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_vader_single_copy_mechanism
# make asan: Open MPI's own allocations (in plugins unloaded at exit) read as leaks; memory errors
# are still caught, and the single-process suites check kvdistill's leaks
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
export ASAN_OPTIONS
head -c 30000 "$SHARED/data/tinystories_val.txt" >"$TMP/data.txt"
expect_rc 0 "kvconvert swiftkv:3" -- "$BIN/kvconvert" "$M" "$TMP/skv" --swiftkv 3 --quiet
COMMON="--data $TMP/data.txt --steps 50 --seq-len 32 --batch 4 --lr 3e-3 --eval-seqs 8 --seed 3 --threads 1 --quiet"

if ! "$KD" --help | grep -q "this build has MPI support"; then
    # without MPI every process would train alone into the same OUT_DIR: refused instead
    expect_rc 1 "a build without MPI refuses mpirun" -- $MR "$KD" train "$M" "$TMP/skv" "$TMP/nompi" $COMMON
    expect_grep "this build has no MPI support" "$TMP/err" "no-MPI refusal says why"
    echo "SKIP: this kvdistill has no MPI support (MPI=0 or no mpicc at build time): only its refusal was checked"
    done_tests cli_kvdistill_mpi
    exit 0
fi

# a number from report.json
num() { sed -n "s/.*\"$1\":[[:space:]]*\([-0-9.eE+]*\).*/\1/p" "$2" | head -n 1; }
# same_ppl DIR_A DIR_B KEY: equal to 4 significant digits (|a-b| <= 5e-5 |b|)
same_ppl() {
    a=$(num "$3" "$1/report.json"); b=$(num "$3" "$2/report.json")
    if awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 5e-5 * b) }'; then
        ok; echo "  $3: $a vs $b"
    else
        bad "$3 differs: $a (2 processes) vs $b (1 process)"
    fi
}
# pair NAME STUDENT [extra options]: one process, then two, same options
pair() {
    name=$1; stu=$2; shift 2
    expect_rc 0 "$name: one process" -- "$KD" train "$M" "$stu" "$TMP/${name}_1" $COMMON "$@"
    expect_rc 0 "$name: mpirun -np 2" -- $MR "$KD" train "$M" "$stu" "$TMP/${name}_2" $COMMON "$@"
    expect_grep "data parallel: 2 processes, 2 sequences each per micro-batch" "$TMP/out" "$name: the split is said"
    [ "$(grep -c "held-out perplexity" "$TMP/out")" = 1 ] && ok || bad "$name: rank 0 alone prints the summary"
    [ "$(wc -l <"$TMP/${name}_2/train_log.jsonl")" = 50 ] && ok || bad "$name: 50 log lines (rank 0 alone writes)"
    expect_grep '"processes":	2' "$TMP/${name}_2/report.json" "$name: report.json records 2 processes"
    expect_rc 0 "$name: weights of 2 processes within 1e-5 of 1" -- "$BIN/kvverify" tensors "$TMP/${name}_2" "$TMP/${name}_1" --rtol 1e-5
    echo "$name: $(head -n 1 "$TMP/out")"
    for k in teacher_ppl student_before_ppl student_after_ppl; do same_ppl "$TMP/${name}_2" "$TMP/${name}_1" $k; done
}
pair skv "$TMP/skv"
expect_rc 0 "kvconvert pizza-top:3" -- "$BIN/kvconvert" "$M" "$TMP/ptop" --map pizza-top:3 --quiet
pair ptop "$TMP/ptop" --passes 3

# one MPI process is the single process, bit for bit
expect_rc 0 "mpirun -np 1" -- mpirun -np 1 --oversubscribe --allow-run-as-root "$KD" train "$M" "$TMP/skv" "$TMP/skv_np1" $COMMON
cmp -s "$TMP/skv_np1/model.safetensors" "$TMP/skv_1/model.safetensors" && ok || bad "mpirun -np 1 differs from one process"

# the processes must divide the batch
expect_rc 1 "--batch 3 over 2 processes refused" -- $MR "$KD" train "$M" "$TMP/skv" "$TMP/odd" $COMMON --batch 3
expect_grep "batch 3 does not split over 2 processes" "$TMP/err" "indivisible batch: the message"

# one process fails: every process stops with an error, the job exits non-zero, no model
$MR -x KVDISTILL_TEST_FAIL=1:5 "$KD" train "$M" "$TMP/skv" "$TMP/fail" $COMMON >"$TMP/out" 2>"$TMP/err"
[ $? != 0 ] && ok || bad "rank 1 failing at step 5: mpirun exit 0"
expect_grep "rank 1 of 2: test hook: process 1 fails at step 5" "$TMP/err" "the failing rank's error"
expect_grep "rank 0 of 2: stopped: process 1 of 2 failed" "$TMP/err" "rank 0 stops because of rank 1"
[ ! -e "$TMP/fail/model.safetensors" ] && ok || bad "a failed run wrote its model"
$MR -x KVDISTILL_TEST_FAIL=0:setup "$KD" train "$M" "$TMP/skv" "$TMP/fail0" $COMMON >"$TMP/out" 2>"$TMP/err"
[ $? != 0 ] && ok || bad "rank 0 failing at set-up: mpirun exit 0"
expect_grep "rank 0 of 2: test hook: process 0 fails at set-up" "$TMP/err" "rank 0's set-up error"
expect_grep "rank 1 of 2: stopped: process 0 of 2 failed" "$TMP/err" "rank 1 stops because of rank 0"

# SIGKILL of rank 1 after the first checkpoint: mpirun stops the job; --resume (2 processes, then
# 1) ends where an uninterrupted 2-process run ends
LONG="--data $TMP/data.txt --steps 150 --seq-len 32 --batch 4 --lr 3e-3 --eval-seqs 8 --seed 5 --save-every 10 --threads 1 --quiet"
expect_rc 0 "uninterrupted, 2 processes" -- $MR "$KD" train "$M" "$TMP/skv" "$TMP/full" $LONG
# each rank's shell writes its pid, then becomes kvdistill (exec keeps the pid)
(exec $MR sh -c 'echo $$ >"$0.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$TMP/pid" \
    "$KD" train "$M" "$TMP/skv" "$TMP/killed" $LONG) >"$TMP/kill.out" 2>&1 &
job=$!
i=0
while [ ! -f "$TMP/killed/checkpoint/state.safetensors" ] && [ $i -lt 3000 ] && kill -0 $job 2>/dev/null; do
    sleep 0.01; i=$((i + 1))
done
[ -s "$TMP/pid.1" ] && kill -9 "$(cat "$TMP/pid.1")" 2>/dev/null
wait $job
rc=$?
if [ -f "$TMP/killed/model.safetensors" ]; then
    echo "note: the run finished before SIGKILL; the resume below starts from its last checkpoint" >&2
else
    [ $rc != 0 ] && ok || bad "SIGKILL of rank 1: mpirun exit 0"
    grep -q "signal 9" "$TMP/kill.out" && ok || bad "mpirun does not report the killed rank: $(head -c 400 "$TMP/kill.out")"
    # rank 0 is gone (a zombie awaiting its reaper counts as gone)
    p0=$(cat "$TMP/pid.0"); i=0
    while [ -r "/proc/$p0/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$p0/stat" 2>/dev/null && [ $i -lt 200 ]; do
        sleep 0.01; i=$((i + 1))
    done
    [ $i -lt 200 ] && ok || bad "rank 0 still runs after rank 1 was killed"
fi
cp -r "$TMP/killed" "$TMP/killed1"
expect_rc 0 "resume, 2 processes" -- $MR "$KD" train "$M" "$TMP/skv" "$TMP/killed" $LONG --resume
expect_grep '"resumed_from_step":	[1-9]' "$TMP/killed/report.json" "resumed from a checkpoint"
[ "$(wc -l <"$TMP/killed/train_log.jsonl")" = 150 ] && ok || bad "log has 150 steps after resume"
expect_rc 0 "resumed weights within 1e-5" -- "$BIN/kvverify" tensors "$TMP/killed" "$TMP/full" --rtol 1e-5
cmp -s "$TMP/killed/model.safetensors" "$TMP/full/model.safetensors" && ok || bad "same processes, same bits: resumed weights differ"
expect_rc 0 "resume with 1 process" -- "$KD" train "$M" "$TMP/skv" "$TMP/killed1" $LONG --resume
expect_rc 0 "resumed on 1 process: weights within 1e-5" -- "$BIN/kvverify" tensors "$TMP/killed1" "$TMP/full" --rtol 1e-5
echo "resume on 1 process: $(head -n 1 "$TMP/out")"
done_tests cli_kvdistill_mpi
