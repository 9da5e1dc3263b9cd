/* The RoPE parameters of a model (config.json rope_theta / rope_scaling), shared by the model
 * description that reads them and the kernels that apply them (kernels.h: kv_rope_inv_freq). */
#ifndef KV_ROPE_CONFIG_H
#define KV_ROPE_CONFIG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { KV_ROPE_PLAIN = 0, KV_ROPE_LLAMA3 = 1 } kv_rope_scaling;
typedef struct {
    double theta; /* rope_theta */
    kv_rope_scaling scaling;
    double factor; /* llama3 only */
    double low_freq_factor; /* llama3 only */
    double high_freq_factor; /* llama3 only */
    int original_max_position; /* llama3: original_max_position_embeddings */
} kv_rope_config;

#ifdef __cplusplus
}
#endif

#endif
