#!/bin/sh
# every command of README.md's "Using it" block, run on the demo's model (kvsynth --preset tiny
# --layers 8, as cli/demo.sh makes it). Skipped: mpirun (tests/cli_kvdistill_mpi.sh), GPU-only
# commands (kvverify kernels, --device cuda) and the 1.1B-parameter synthetic checkpoint.
# Training and calibration get short settings (--steps 2, few sequences) to keep the suite fast.
. tests/lib.sh
ROOT=$PWD
expect_rc 0 "demo model" -- "$BIN/kvsynth" --preset tiny --layers 8 "$TMP/base"
awk 'BEGIN { srand(7); for (i = 0; i < 400; i++) { s = ""; for (j = 0; j < 12; j++) s = s sprintf("%c", 97 + int(rand() * 26)); printf "%s the %s.\n\n", s, substr(s, 1, 5) } }' > "$TMP/text.txt"
cp "$TMP/text.txt" "$TMP/train.txt"; cp "$TMP/text.txt" "$TMP/calib.txt"
awk 'BEGIN { for (i = 0; i < 100; i++) printf "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me about cat %d.\"}, {\"role\": \"assistant\", \"content\": \"Cat %d sat on the mat.\"}]}\n", i, i }' > "$TMP/chat.jsonl"
# the fenced block after "## Using it", commands only (comments and continuation lines dropped)
awk '/^## Using it/ { u = 1 } u && /^```sh/ { b = 1; next } b && /^```/ { exit } b' README.md |
    grep '^\$B/' | sed 's/  *#.*$//' > "$TMP/cmds"
n=$(wc -l < "$TMP/cmds")
[ "$n" -ge 15 ] && ok || bad "README: only $n commands found"
ran=0
while IFS= read -r line; do
    case "$line" in
        *"kvverify kernels"*|*"--device cuda"*|*"--preset tinyllama"*) continue ;;
    esac
    cmd=$(printf '%s\n' "$line" | sed -e 's/MODEL_DIR/base/g' -e 's/--steps 2000/--steps 2 --seq-len 32 --batch 2/' \
        -e 's/calibrate base --data calib.txt/& --eval-seqs 4 --seq-len 32 --swiftkv 4 --groups 1/')
    (cd "$TMP" && B="$BIN" eval "$cmd") >"$TMP/out" 2>"$TMP/err" </dev/null
    rc=$?
    ran=$((ran + 1))
    [ "$rc" = 0 ] && ok || bad "README command failed (exit $rc): $line: $(head -c 400 "$TMP/err")"
done < "$TMP/cmds"
[ "$ran" -ge 15 ] && ok || bad "README: only $ran commands ran"
cd "$ROOT"
done_tests cli_readme
