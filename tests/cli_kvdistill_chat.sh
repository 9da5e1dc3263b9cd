#!/bin/sh
# kvdistill train on JSONL conversations (no fixtures: a kvsynth model): the fallback format and
# a tokenizer_config.json chat template, the assistant-token count in the report, --loss-tokens
# all, validation errors (exit 1 naming FILE:LINE and the field), usage errors, and a SIGKILL +
# --resume that reproduces the uninterrupted run and its assistant-token count.
. tests/lib.sh
KD="$BIN/kvdistill"
expect_rc 0 "kvsynth" -- "$BIN/kvsynth" "$TMP/t"
expect_rc 0 "kvconvert swiftkv:2" -- "$BIN/kvconvert" "$TMP/t" "$TMP/s" --swiftkv 2 --quiet
# 60 conversations: user/assistant turns, a system prompt in every third
i=0
: >"$TMP/chat.jsonl"
while [ $i -lt 60 ]; do
    sys=""
    [ $((i % 3)) = 0 ] && sys='{"role": "system", "content": "Be kind."}, '
    printf '{"messages": [%s{"role": "user", "content": "Tell me about cat %d?"}, {"role": "assistant", "content": "The cat %d sat on a mat and ran."}, {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "It saw the red dog %d."}]}\n' \
        "$sys" $i $i $i >>"$TMP/chat.jsonl"
    i=$((i + 1))
done
train() { # OUT_DIR [extra...]
    out=$1; shift
    "$KD" train "$TMP/t" "$TMP/s" "$out" --data "$TMP/chat.jsonl" --seq-len 32 --batch 2 \
        --eval-seqs 2 --quiet --threads 1 "$@"
}
expect_rc 0 "chat data, fallback format" -- train "$TMP/fb" --steps 3 --json
expect_grep '"loss_tokens":"assistant"' "$TMP/out" "--json reports assistant masking"
expect_grep '"chat_template":"fallback"' "$TMP/out" "--json names the fallback"
n_fb=$(sed -n 's/.*"loss_tokens_trained":\([0-9]*\).*/\1/p' "$TMP/out")
[ -n "$n_fb" ] && [ "$n_fb" -gt 0 ] && [ "$n_fb" -lt 192 ] && ok || bad "assistant positions trained: '$n_fb' (of 192)"
expect_grep '"loss_tokens_trained":	' "$TMP/fb/report.json" "report.json has the count"
expect_grep '"assistant_eval":	{' "$TMP/fb/report.json" "report.json has the held-out assistant figures"
expect_grep '"kl_after":	[0-9]' "$TMP/fb/report.json" "assistant KL after"
expect_rc 0 "chat data, all tokens" -- train "$TMP/all" --steps 3 --loss-tokens all
expect_grep '"loss_tokens":	"all"' "$TMP/all/report.json" "--loss-tokens all recorded"
expect_grep '"loss_tokens_trained":	192' "$TMP/all/report.json" "all positions counted"
expect_grep "the KL trained on 192 (all) positions" "$TMP/out" "table line"
expect_grep "held-out on [0-9]* assistant positions: teacher" "$TMP/out" "held-out assistant line"
cmp -s "$TMP/fb/model.safetensors" "$TMP/all/model.safetensors" && bad "masking changed nothing" || ok
# a chat template in tokenizer_config.json (Zephyr's), used by default
cp -r "$TMP/t" "$TMP/tz"
cat >"$TMP/tz/tokenizer_config.json" <<'JSON'
{"bos_token": "<s>", "eos_token": {"content": "</s>"},
 "chat_template": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"}
JSON
expect_rc 0 "chat template from tokenizer_config.json" -- "$KD" train "$TMP/tz" "$TMP/s" "$TMP/z" \
    --data "$TMP/chat.jsonl" --seq-len 32 --batch 2 --eval-seqs 2 --quiet --threads 1 --steps 2
expect_grep 'tokenizer_config.json: chat_template' "$TMP/z/report.json" "report names the template"
expect_rc 0 "--chat-template fallback" -- "$KD" train "$TMP/tz" "$TMP/s" "$TMP/z2" \
    --data "$TMP/chat.jsonl" --seq-len 32 --batch 2 --eval-seqs 2 --quiet --threads 1 --steps 2 \
    --chat-template fallback
expect_grep '"chat_template":	"fallback"' "$TMP/z2/report.json" "fallback on request"
printf '{"chat_template": "{%% macro m() %%}{%% endmacro %%}"}' >"$TMP/tz/tokenizer_config.json"
expect_rc 1 "unsupported template" -- "$KD" train "$TMP/tz" "$TMP/s" "$TMP/x" \
    --data "$TMP/chat.jsonl" --seq-len 32 --steps 2 --quiet
expect_grep "chat_template uses 'macro', which kvdistill does not support; use --chat-template fallback" "$TMP/err" "names the construct"
# validation errors name FILE:LINE and the field
head -n 3 "$TMP/chat.jsonl" >"$TMP/bad.jsonl"
echo '{"messages": [{"role": "user", "content": 5}]}' >>"$TMP/bad.jsonl"
expect_rc 1 "non-string content" -- train "$TMP/x" --steps 1 --data "$TMP/bad.jsonl"
expect_grep "bad.jsonl:4: messages\[0\].content: a number, expected a string" "$TMP/err" "file:line and field"
# usage errors
expect_rc 2 "bad --loss-tokens" -- train "$TMP/x" --steps 1 --loss-tokens some
expect_rc 2 "bad --data-format" -- train "$TMP/x" --steps 1 --data-format csv
printf 'Once upon a time.\n\nThe end.\n' >"$TMP/plain.txt"
expect_rc 1 "assistant masking needs chat data" -- "$KD" train "$TMP/t" "$TMP/s" "$TMP/x" --data "$TMP/plain.txt" \
    --steps 1 --seq-len 4 --batch 1 --quiet --loss-tokens assistant
expect_grep "needs chat data" "$TMP/err" "message"
# SIGKILL after the first checkpoint, resume: same weights and assistant count
train "$TMP/full" --steps 40 --save-every 5 --lr 3e-3 --seed 3 >/dev/null 2>&1 && ok || bad "uninterrupted run"
(exec "$KD" train "$TMP/t" "$TMP/s" "$TMP/killed" --data "$TMP/chat.jsonl" --seq-len 32 --batch 2 \
    --eval-seqs 2 --quiet --threads 1 --steps 40 --save-every 5 --lr 3e-3 --seed 3) >/dev/null 2>&1 &
pid=$!
i=0
while [ ! -f "$TMP/killed/checkpoint/state.safetensors" ] && [ $i -lt 20000 ] && kill -0 $pid 2>/dev/null; do sleep 0.01; i=$((i + 1)); done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -f "$TMP/killed/model.safetensors" ] && echo "note: the run finished before SIGKILL; resuming from its last checkpoint" >&2
expect_rc 0 "resume" -- train "$TMP/killed" --steps 40 --save-every 5 --lr 3e-3 --seed 3 --resume
cmp -s "$TMP/full/model.safetensors" "$TMP/killed/model.safetensors" && ok || bad "resumed weights differ"
a=$(grep '"loss_tokens_trained"' "$TMP/full/report.json")
b=$(grep '"loss_tokens_trained"' "$TMP/killed/report.json")
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "assistant count after resume: '$b' vs '$a'"
done_tests cli_kvdistill_chat
