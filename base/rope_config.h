/* The RoPE parameters of a model (config.json rope_theta / rope_scaling), shared by the model
 * description that reads them and the kernels that apply them (kernels.h: kv_rope_inv_freq).
 * The formulas are HF transformers' (modeling_rope_utils) and written out in kernels.h. */
#ifndef KV_ROPE_CONFIG_H
#define KV_ROPE_CONFIG_H

#include "base/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* rope_scaling.rope_type: none/"default", "llama3", "linear", "dynamic" (dynamic NTK), "yarn",
 * "longrope" */
typedef enum {
    KV_ROPE_PLAIN = 0,
    KV_ROPE_LLAMA3 = 1,
    KV_ROPE_LINEAR = 2,
    KV_ROPE_DYNAMIC = 3,
    KV_ROPE_YARN = 4,
    KV_ROPE_LONGROPE = 5
} kv_rope_scaling;

#define KV_ROPE_MAX_FACTORS 512 /* longrope: head_dim/2 per-frequency factors, head_dim <= 1024 */

typedef struct {
    double theta; /* rope_theta */
    kv_rope_scaling scaling;
    double factor; /* llama3, linear, dynamic, yarn: the scale; longrope: for the attention
                      factor (max_position_embeddings / original when not given) */
    double low_freq_factor; /* llama3 only */
    double high_freq_factor; /* llama3 only */
    int original_max_position; /* llama3, dynamic, yarn, longrope: the pretrained context */
    double beta_fast, beta_slow; /* yarn: rotations bounding the ramp (HF defaults 32, 1) */
    double mscale, mscale_all_dim; /* yarn: DeepSeek's attention-factor pair; 0 = absent */
    int truncate; /* yarn: floor/ceil the ramp bounds (HF default true) */
    double attention_factor; /* yarn, longrope: as given; 0 = the formula's default */
    int n_factors; /* longrope: entries of short_factor / long_factor (= head_dim/2) */
    double short_factor[KV_ROPE_MAX_FACTORS]; /* longrope: used up to original_max_position */
    double long_factor[KV_ROPE_MAX_FACTORS]; /* longrope: beyond it */
} kv_rope_config;

/* whether C is usable with head dimension hd: KV_EINVAL naming the rope_scaling field */
int kv_rope_check(int head_dim, const kv_rope_config *c, kv_error *err);
/* "default", "llama3", "linear", "dynamic", "yarn", "longrope" (HF's rope_type) */
const char *kv_rope_scaling_name(kv_rope_scaling s);
/* the factor cos and sin are multiplied by (1 except for yarn and longrope; formulas in
 * kernels.h) */
double kv_rope_attention_factor(const kv_rope_config *c);

#ifdef __cplusplus
}
#endif

#endif
