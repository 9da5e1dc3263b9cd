#!/bin/sh
# make demo (cli/demo.sh) runs end to end, and its distillation visibly helps and says what the
# numbers mean (issue 17 item 9): KL to the teacher falls, and the demo says by how much
. tests/lib.sh
ROOT=$PWD
(cd "$TMP" && BUILD="$ROOT/${BUILD:-build}" sh "$ROOT/cli/demo.sh") >"$TMP/demo.out" 2>"$TMP/demo.err"
rc=$?
[ "$rc" = 0 ] && ok || bad "demo failed (exit $rc): $(tail -c 400 "$TMP/demo.err")"
expect_grep "^== done" "$TMP/demo.out" "demo finished"
expect_grep "What distillation" "$TMP/demo.out" "demo explains the numbers"
line=$(grep "^result: KL(teacher || student)" "$TMP/demo.out")
[ -n "$line" ] && ok || bad "demo prints no KL result"
pct=$(printf '%s\n' "$line" | sed -n 's/.* is \(-*[0-9]*\)% closer to the teacher/\1/p')
[ -n "$pct" ] && [ "$pct" -ge 30 ] && ok || bad "distillation does not visibly help: $line"
done_tests cli_demo
