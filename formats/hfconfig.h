/* HF Llama config.json -> struct, validated; plus the KV-sharing fields kvforge writes
 * (layer_types for cross-layer maps; swiftkv/num_key_value_layers/key_value_group_size), held
 * as the parsed KV map (formats/kvmap.h). Three schemas are read and written (docs/INTEROP.md):
 * plain Llama (LlamaForCausalLM / "llama"), LCKV's cross-layer Llama (LCKVLlamaForCausalLM /
 * "lckv-llama": layer_types, forward_passes, backward_passes, use_sequential, force_nodiag) and
 * Snowflake's SwiftKV (LlamaSwiftKVForCausalLM / "llama_swiftkv"). Two more families run as
 * Llama: Mistral (MistralForCausalLM / "mistral") and Qwen2
 * (Qwen2ForCausalLM / "qwen2", q/k/v biases; its SwiftKV form is ArcticTraining's
 * Qwen2SwiftKVForCausalLM / "qwen2_swiftkv"). */
#ifndef KV_HFCONFIG_H
#define KV_HFCONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "base/rope_config.h"
#include "formats/kvmap.h"

#define HF_MAX_LAYERS KVMAP_MAX_LAYERS /* 1024 */
#define HF_MAX_EOS    8

/* the model family: which HF modeling code the checkpoint comes from (all run as Llama) */
typedef enum { HF_FAMILY_LLAMA = 0, HF_FAMILY_MISTRAL = 1, HF_FAMILY_QWEN2 = 2 } hf_family;

typedef struct {
    char architecture[64]; /* "LlamaForCausalLM", "LCKVLlamaForCausalLM",
                                "LlamaSwiftKVForCausalLM", "MistralForCausalLM",
                                "Qwen2ForCausalLM" or "Qwen2SwiftKVForCausalLM" */
    char model_type[32]; /* "llama", "lckv-llama", "llama_swiftkv", "mistral", "qwen2",
                                "qwen2_swiftkv" */
    int hidden_size; /* H */
    int intermediate_size; /* FFN */
    int n_layers; /* L */
    int n_heads; /* nh */
    int n_kv_heads; /* nkv (default nh) */
    int head_dim; /* hd (default H / nh) */
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    kv_rope_config rope; /* rope_theta (.theta) and rope_scaling, validated (kv_rope_check) */
    int tie_word_embeddings;
    hf_family family; /* from the architecture / model_type */
    int attention_bias; /* q/k/v_proj (and *_swiftkv) biases: attention_bias, or Qwen2 */
    int o_bias; /* o_proj bias: attention_bias (never for Qwen2) */
    int mlp_bias;
    int bos_token_id; /* -1 if absent */
    int n_eos;
    int eos_token_ids[HF_MAX_EOS];
    kv_dtype torch_dtype; /* F32 when absent */
    kv_map map; /* KV sharing from layer_types / the SwiftKV fields, validated
                                (kvmap_read_config); the identity when absent */
    /* LCKV's iteration plan: forward_passes m (>= 0) without gradient, then backward_passes b
     * (>= 1) with it, m + b passes in all (kvforge's --passes N = m + b, --grad-passes = b).
     * Both 0 when the config has neither; hf_config_write_json then writes LCKV's defaults. */
    int lckv_forward_passes, lckv_backward_passes;
    int lckv_use_sequential; /* LCKV's use_sequential (token-by-token prefill), kept as read */
    /* a LlamaSwiftKV checkpoint saved with "swiftkv": false (ArcticTraining's teacher mode):
     * map is the identity (the teacher runs on every layer's own q/k/v_proj) and these hold its
     * num_key_value_layers / key_value_group_size, whose *_swiftkv tensors are accepted unused;
     * both 0 otherwise */
    int swiftkv_off_l, swiftkv_off_g;
    /* Sliding-window attention (formats/hfwindow.h has the rules per family): the query at
     * position p of layer i sees only keys s > p - layer_window[i] (0: every earlier key). The
     * one place kvforge keeps windows: the runtime, KV cache, convert and info read them here.
     * sliding_window = W of the windowed layers (0 when none has one: also when the config's
     * window reaches every position, W >= max_position_embeddings) */
    int sliding_window;
    int layer_window[HF_MAX_LAYERS];
} hf_config;

#define HF_MAX_CONFIG_BYTES (16u * 1024u * 1024u)

/* Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
 * and architectures or model_type. Everything else takes the HF LlamaConfig default
 * (max_position_embeddings 2048, rms_norm_eps 1e-6, rope_theta 10000, no biases, untied); an
 * absent eos_token_id gives n_eos = 0, an absent bos -1. hidden_act, when given, must be silu.
 * SwiftKV: the LlamaSwiftKV architecture implies swiftkv unless it says false: then it is read
 * as its teacher (identity map, swiftkv_off_l/g set, SwiftKV fields validated); swiftkv
 * true under LlamaForCausalLM is read as SwiftKV (architecture/model_type kept as written).
 * LCKV: "lckv-llama" / LCKVLlamaForCausalLM with its layer_types (absent: the identity, as
 * LCKV); forward_passes / backward_passes / use_sequential read into the lckv_* fields;
 * force_nodiag true is refused (KV_EUNSUPPORTED, naming the field), as are other architectures
 * and model_types (Mixtral, Gemma, Phi-3, Qwen3, ...: KV_EUNSUPPORTED naming them), rope_scaling
 * kinds other than default/llama3/linear/dynamic/yarn/longrope or with keys the kind does not
 * use, and layer_types lists of HF attention kinds other than "full_attention" and
 * "sliding_attention".
 * Sliding windows (sliding_window, layer_window): Mistral's sliding_window (absent: 4096, null:
 * none) on every layer; Qwen2's with use_sliding_window true on layers >= max_window_layers (or
 * those an HF layer_types list marks); LCKV's 's' suffix and HF's "sliding_attention" kinds
 * with sliding_window (hfwindow.h). Qwen2: attention_bias = 1 (q/k/v), o_bias = 0 whatever the
 * config says; mlp_bias true refused.
 * JSON null counts as absent. Integers may be written
 * 64.0 but not 64.5. Duplicate keys are refused (Python keeps the last, cJSON the first).
 * Errors name LABEL and the field; on failure *c is zeroed. */
int hf_config_load(hf_config *c, const char *path, kv_error *err); /* path to config.json */
int hf_config_parse(hf_config *c, const char *json, const char *label, kv_error *err);
/* of the model the config describes (deploy layout: no k/v on non-KV layers, no teacher q/k/v
 * on SwiftKV layers >= l); -1 if it overflows int64 */
int64_t hf_config_param_count(const hf_config *c);

/* which schema the config follows: "llama" (plain HF Llama), "lckv-llama" (LCKV's, whatever
 * the map), "llama_swiftkv" (Snowflake's), "llama_swiftkv-off" (Snowflake's saved with swiftkv
 * false: read as its teacher), or the two forms no reference loader reads right:
 * "llama+layer_types" (a cross-layer map under model_type "llama", as kvforge wrote before it
 * used LCKV's schema) and "llama+swiftkv" (swiftkv true under LlamaForCausalLM) */
const char *hf_config_schema(const hf_config *c);

/* "float32" / "float16" / "bfloat16"; NULL for other dtypes */
const char *hf_torch_dtype_name(kv_dtype t);

/* Takes the ORIGINAL config.json text and returns it (malloc'd, cJSON_Print layout) with the
 * KV map of C (validated first) written in:
 *   - a cross-layer map: LCKV's schema, model_type "lckv-llama", architectures
 *     ["LCKVLlamaForCausalLM"], layer_types = LCKV string (kvmap_layer_types), forward_passes /
 *     backward_passes from C->lckv_* (LCKV's 7 / 2 when unset), use_sequential from C,
 *     force_nodiag false;
 *   - a SwiftKV map: swiftkv / num_key_value_layers / key_value_group_size + model_type
 *     "llama_swiftkv" + architectures ["LlamaSwiftKVForCausalLM"];
 *   - the identity: a plain Llama, "llama" / ["LlamaForCausalLM"];
 * for a Mistral source the same, except that the identity stays "mistral" and the SwiftKV /
 * cross-layer outputs lose sliding_window when it gives no window;
 * sliding windows (C->layer_window): LCKV's schema carries them as the 's' suffix with
 * sliding_window = C->sliding_window, so a model with windows and a map that would be written
 * as plain Llama (the identity of a Llama / LCKV source) is written in LCKV's schema; Mistral
 * and Qwen2 keep their own window fields as they were; a SwiftKV map with windows is refused
 * (KV_EUNSUPPORTED);
 * for a Qwen2 source: SwiftKV "qwen2_swiftkv" / ["Qwen2SwiftKVForCausalLM"] (ArcticTraining's),
 * cross-layer and identity "qwen2" / ["Qwen2ForCausalLM"] (a cross-layer map as a layer_types
 * string with LCKV's plan fields: LCKV has no Qwen2 model, so only kvforge reads it right);
 * the fields of the other schemas are removed (an integer layer_types, the SwiftKV fields, the
 * LCKV fields; sliding_window too when the source was "lckv-llama"); torch_dtype (and dtype, if
 * present) from C->torch_dtype. Other keys keep their values and order; new keys are appended.
 * The result is re-parsed and must yield C's KV map (kvmap_equal) and passes. Writing the
 * re-parsed config again gives the same text. */
int hf_config_write_json(const hf_config *c, const char *src_json, const char *label,
                         char **out_json, kv_error *err);

/* Records the iterative plan a cross-layer model was run or trained with in its config text:
 * *JSON (malloc'd; replaced on success) gets forward_passes = passes - grad_passes and
 * backward_passes = grad_passes (LCKV's m and b; 1 <= grad_passes <= passes). A config that is
 * not cross-layer is left as it is. */
int hf_config_set_lckv_plan(char **json, int passes, int grad_passes, const char *label,
                            kv_error *err);

#endif
