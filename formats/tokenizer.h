/* HF tokenizer.json tokenizer: BPE model with SentencePiece-style pipeline (Llama 1/2):
 *   added tokens split out of the raw text (leftmost-longest) -> normalizer (Prepend, Replace)
 *   -> pre-tokenizer (none or Metaspace) -> BPE merges by rank with byte fallback and unk
 *   -> ids; decoding runs the decoder chain (Replace, ByteFallback, Fuse, Strip, Metaspace).
 * Semantics follow the HF `tokenizers` library; unsupported components (ByteLevel, Regex
 * patterns, NFC...) fail at load with KV_EUNSUPPORTED naming the field.
 * Text input is bytes: invalid UTF-8 bytes are treated as one-byte characters (byte fallback).
 * A loaded tokenizer is read-only: encode/decode/piece may run concurrently on it.
 * Resource limits (tokenizer.json is untrusted; HF has none of these, no real Llama pipeline is
 * near them): the normalizer, and the decoder, may turn n bytes of text into at most
 * 16 n + 4096 bytes (Llama's Replace " " -> "▁" and Prepend "▁" need 3 n + 3); a chain that
 * grows text further (Replace "a" -> "aa" repeated doubles it each step) fails with
 * KV_EUNSUPPORTED: at load when it is a normalized added token that grows, else in encode or
 * decode, without building the oversized text. Each chain has at most 256 steps (refused at
 * load). An added token may be at most 1024 bytes (after normalization; refused at load), and
 * added tokens are matched through a byte trie: finding them costs at most 1024 steps per text
 * position however many there are. Ids must be dense; this is checked before any table is sized
 * by the largest id. */
#ifndef KV_TOKENIZER_H
#define KV_TOKENIZER_H

#include <stddef.h>

#include "base/error.h"

typedef struct kv_tokenizer kv_tokenizer;

int kv_tokenizer_load(kv_tokenizer **out, const char *tokenizer_json_path, kv_error *err);
/* same from an in-memory JSON text; `name` is used in error messages in place of a path */
int kv_tokenizer_load_json(kv_tokenizer **out, const char *json, size_t len, const char *name,
                           kv_error *err);
void kv_tokenizer_free(kv_tokenizer *t);

/* number of ids (model vocab plus added tokens; ids are dense 0..n-1) */
int kv_tokenizer_vocab_size(const kv_tokenizer *t);
/* BOS: first special token of the TemplateProcessing post-processor, else "<s>" /
 * "<|begin_of_text|>"; EOS: "</s>" / "<|end_of_text|>". -1 if none. */
int kv_tokenizer_bos(const kv_tokenizer *t);
int kv_tokenizer_eos(const kv_tokenizer *t);
/* overrides both (e.g. from config.json); -1 means none; error if out of range */
int kv_tokenizer_set_bos_eos(kv_tokenizer *t, int bos, int eos, kv_error *err);
/* id -> token string as stored (e.g. "▁the", "<0x0A>", "<s>"); NULL if out of range */
const char *kv_tokenizer_token(const kv_tokenizer *t, int id);
/* token string -> id (model vocab or added token), -1 if absent */
int kv_tokenizer_token_id(const kv_tokenizer *t, const char *token);
int kv_tokenizer_is_special(const kv_tokenizer *t, int id);

/* ids: malloc'd array (caller frees; non-NULL even when *n_ids is 0); add_bos prepends BOS
 * (KV_EINVAL if the tokenizer has none). No EOS is added. */
int kv_tokenizer_encode(const kv_tokenizer *t, const char *text, size_t len, int add_bos, int **ids,
                        int *n_ids, kv_error *err);
/* full decode with the tokenizer.json decoder chain, special tokens kept (HF's
 * skip_special_tokens=false); malloc'd NUL-terminated string */
int kv_tokenizer_decode(const kv_tokenizer *t, const int *ids, int n, char **text, kv_error *err);
int kv_tokenizer_decode_ex(const kv_tokenizer *t, const int *ids, int n, int skip_special,
                           char **text, size_t *text_len, kv_error *err);

/* streaming piece as llama2.c's run.c prints it: token text with "▁" as space (BOS and EOS
 * print as "\n<s>\n" and "\n</s>\n", as in run.c's exported vocab), a leading space dropped when
 * prev is BOS, "<0xXX>" tokens become the raw byte, and a one-byte piece that is neither
 * printable nor whitespace (ASCII) becomes "". Writes into buf (truncated to cap-1 bytes,
 * NUL-terminated) and returns it; an out-of-range id gives "". */
const char *kv_tokenizer_piece_runc(const kv_tokenizer *t, int prev, int id, char *buf, size_t cap);

/* writes a SentencePiece-style BPE tokenizer.json with exactly vocab_size ids
 * (260 <= vocab_size <= KV_TOKENIZER_SYNTH_MAX): <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>=3..258,
 * "▁"=259, the 94 printable ASCII characters, then pieces built by merging a piece with one more
 * character (level by level), one merge per merged piece, ranked by id. Deterministic, atomic. */
#define KV_TOKENIZER_SYNTH_MAX (1 << 22)
int kv_tokenizer_write_synthetic(const char *path, int vocab_size, kv_error *err);

#endif
