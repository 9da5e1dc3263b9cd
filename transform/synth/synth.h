/* Synthetic HF Llama checkpoints of any shape: reproducible Gaussian weights (std 0.02, norms
 * 1.0), config.json, and a small byte-fallback tokenizer.json. For the demo, tests, benches. */
#ifndef KV_SYNTH_H
#define KV_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"

/* the config.json family written: HF Llama, Mistral (same tensors; sliding_window field) or
 * Qwen2 (q/k/v biases, use_sliding_window false) */
typedef enum { SYNTH_LLAMA = 0, SYNTH_MISTRAL = 1, SYNTH_QWEN2 = 2 } synth_arch;

typedef struct {
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab, max_pos;
    int tied; /* tie_word_embeddings */
    kv_dtype dtype; /* F32, F16 or BF16 */
    double rope_theta;
    uint64_t seed;
    size_t shard_bytes; /* 0: one model.safetensors */
    float std; /* 0.02 */
    int rope_llama3; /* rope_scaling llama3 (factor 8, low 1, high 4, original 8192) */
    const char *rope_scaling; /* rope_scaling as JSON text (overrides rope_llama3); NULL: none */
    synth_arch arch;
    int sliding_window; /* Mistral / Qwen2: sliding_window; 0 writes null (Qwen2: max_pos) */
    int window_layers; /* Qwen2: K + 1 writes use_sliding_window true, max_window_layers K;
                              0: use_sliding_window false, max_window_layers L */
} synth_spec;

/* named shapes: "tiny" (L=4,H=64,8/4 heads,FFN 172,V 512), "stories260k", "stories110m",
 * "tinyllama-1.1b", "llama-3.2-1b", "llama-3.1-8b" (BF16, GQA 32/8, vocab 128256, llama3 RoPE),
 * "qwen2-0.5b" (Qwen2.5-0.5B's shape: L=24, H=896, 14/2 heads, hd 64, FFN 4864, V 151936, tied,
 * theta 1e6, q/k/v biases, BF16), "qwen2-tiny" (L=4, H=64, 4/2 heads, hd 16, FFN 96, V 512,
 * the Qwen2 schema);
 * 0 or -1 if unknown */
int synth_preset(synth_spec *s, const char *name);
const char *synth_preset_names(void); /* "a|b|c" for help texts */
/* the config.json synth_write writes (malloc'd); NULL when out of memory */
char *synth_config_json(const synth_spec *s);
/* writes DIR/{config.json, model.safetensors or shards + index, tokenizer.json} */
int synth_write(const char *dir, const synth_spec *s, kv_error *err);
/* fills n values of tensor `name` exactly as synth_write does (same seed -> same numbers) */
void synth_gaussian(float *out, size_t n, size_t first, uint64_t seed, const char *name, float std);

#endif
