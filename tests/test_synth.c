/* kvsynth's generator: valid checkpoints of any shape/dtype, sharded or not, reproducible */
#include <stdlib.h>
#include <string.h>

#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "transform/synth/synth.h"
#include "formats/tokenizer.h"
#include "tests/check.h"

static void check_model(const char *dir, const synth_spec *s, int expect_sharded) {
    kv_error err = {0};
    st_checkpoint c;
    int rc = st_checkpoint_open(&c, dir, &err);
    CHECK(rc == 0, "%s opens: %s", dir, err.msg);
    if (rc) return;
    int expect = 9 * s->n_layers + 2 + (s->tied ? 0 : 1);
    CHECK(c.n_tensors == expect, "%d tensors, expected %d", c.n_tensors, expect);
    CHECK(c.sharded == expect_sharded, "sharded flag %d", c.sharded);
    const st_tensor *k = st_checkpoint_find(&c, "model.layers.1.self_attn.k_proj.weight");
    CHECK(k && k->dtype == s->dtype && k->shape[0] == s->n_kv_heads * s->head_dim &&
              k->shape[1] == s->hidden,
          "k_proj shape/dtype");
    CHECK((st_checkpoint_find(&c, "lm_head.weight") != NULL) == !s->tied,
          "lm_head present iff untied");
    /* values: the stored numbers are synth_gaussian's, rounded to the dtype; std near 0.02 */
    const st_tensor *up = st_checkpoint_find(&c, "model.layers.0.mlp.up_proj.weight");
    if (up) {
        size_t n = up->n_elements;
        float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
        synth_gaussian(want, n, 0, s->seed, up->name, 0.02f);
        kv_to_f32(got, up->data, up->dtype, n);
        double max_abs = 0, sum2 = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - want[i]);
            if (d > max_abs) max_abs = d;
            sum2 += (double)got[i] * got[i];
        }
        double tol = s->dtype == KV_F32   ? 0
                     : s->dtype == KV_F16 ? 5e-5
                                          : 4e-4; /* half an ulp at |w| < 0.13 */
        CHECK(max_abs <= tol, "values reproduce synth_gaussian (max abs err %g)", max_abs);
        double std = sqrt(sum2 / (double)n);
        CHECK(std > 0.019 && std < 0.021, "std %g near 0.02", std);
        free(want);
        free(got);
    }
    const st_tensor *norm = st_checkpoint_find(&c, "model.norm.weight");
    float one;
    kv_to_f32(&one, norm->data, norm->dtype, 1);
    CHECK(one == 1.0f, "norm weights are 1");
    st_checkpoint_close(&c);
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    kv_tokenizer *t;
    rc = kv_tokenizer_load(&t, path, &err);
    CHECK(rc == 0, "tokenizer loads: %s", err.msg);
    if (!rc) {
        CHECK(kv_tokenizer_vocab_size(t) == s->vocab, "tokenizer vocab %d",
              kv_tokenizer_vocab_size(t));
        kv_tokenizer_free(t);
    }
}

/* the Qwen2 presets: Qwen2.5-0.5B's published shape and parameter count (494,032,768 with tied
 * embeddings and q/k/v biases), and the tiny one written and read back with its biases */
static void test_qwen2_presets(const char *tmp) {
    synth_spec s;
    kv_error err = {0};
    hf_config c;
    CHECK(synth_preset(&s, "qwen2-0.5b") == 0, "qwen2-0.5b preset");
    char *text = synth_config_json(&s);
    CHECK(text && hf_config_parse(&c, text, "qwen2-0.5b", &err) == 0, "config: %s", err.msg);
    CHECK(c.family == HF_FAMILY_QWEN2 && c.n_layers == 24 && c.hidden_size == 896 &&
              c.n_heads == 14 && c.n_kv_heads == 2 && c.head_dim == 64 &&
              c.intermediate_size == 4864 && c.vocab_size == 151936 && c.tie_word_embeddings &&
              c.rope.theta == 1e6 && c.attention_bias && !c.o_bias && c.torch_dtype == KV_BF16,
          "qwen2-0.5b shape");
    CHECK(hf_config_param_count(&c) == 494032768LL, "qwen2-0.5b params %lld",
          (long long)hf_config_param_count(&c));
    free(text);
    char dir[300], path[400];
    snprintf(dir, sizeof dir, "%s/qwen2", tmp);
    CHECK(synth_preset(&s, "qwen2-tiny") == 0, "qwen2-tiny preset");
    CHECK(synth_write(dir, &s, &err) == 0, "qwen2-tiny: %s", err.msg);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_file f;
    CHECK(st_open(&f, path, &err) == 0, "%s", err.msg);
    CHECK(st_find(&f, "model.layers.3.self_attn.k_proj.bias") != NULL &&
              st_find(&f, "model.layers.0.self_attn.q_proj.bias") != NULL &&
              st_find(&f, "model.layers.0.self_attn.o_proj.bias") == NULL,
          "qwen2-tiny has q/k/v biases and no o bias");
    st_close(&f);
    s.sliding_window = 100; /* below max_pos: a sliding-window Mistral */
    s.arch = SYNTH_MISTRAL;
    snprintf(dir, sizeof dir, "%s/mistral-window", tmp);
    CHECK(synth_write(dir, &s, &err) == 0, "a window below max_pos: %s", err.msg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    hf_config *w = malloc(sizeof *w);
    CHECK(w && hf_config_load(w, path, &err) == 0 && w->sliding_window == 100 &&
              w->layer_window[0] == 100 && w->layer_window[w->n_layers - 1] == 100,
          "mistral-window reads back with window 100 on every layer: %s", err.msg);
    free(w);
}

int main(void) {
    char tmp[] = "/tmp/kvtest-synth-XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    kv_error err = {0};
    synth_spec s;
    CHECK(synth_preset(&s, "tiny") == 0, "tiny preset");
    CHECK(synth_preset(&s, "nope") != 0, "unknown preset");
    test_qwen2_presets(tmp);
    const kv_dtype types[] = {KV_F32, KV_F16, KV_BF16};
    for (int i = 0; i < 3; i++) {
        synth_preset(&s, "tiny");
        s.dtype = types[i];
        s.tied = i != 1;
        char dir[256];
        snprintf(dir, sizeof dir, "%s/m%d", tmp, i);
        CHECK(synth_write(dir, &s, &err) == 0, "write %s: %s", dir, err.msg);
        check_model(dir, &s, 0);
    }
    /* sharded, and byte-identical when written twice with the same seed */
    synth_preset(&s, "tiny");
    s.shard_bytes = 100000;
    char a[256], b[256], cmd[700];
    snprintf(a, sizeof a, "%s/sa", tmp);
    snprintf(b, sizeof b, "%s/sb", tmp);
    CHECK(synth_write(a, &s, &err) == 0 && synth_write(b, &s, &err) == 0, "sharded writes: %s",
          err.msg);
    check_model(a, &s, 1);
    snprintf(cmd, sizeof cmd, "diff -r %s %s >/dev/null", a, b);
    CHECK(system(cmd) == 0, "same seed, identical files");
    s.seed = 2;
    snprintf(b, sizeof b, "%s/sc", tmp);
    synth_write(b, &s, &err);
    snprintf(cmd, sizeof cmd,
             "cmp -s %s/model-00001-of-00005.safetensors %s/model-00001-of-00005.safetensors", a,
             b);
    CHECK(system(cmd) != 0, "another seed, other weights");
    /* the 8B shape for GPU benches: its config as Llama 3.1 has it (here with 2 small layers) */
    CHECK(synth_preset(&s, "llama-3.1-8b") == 0, "8b preset");
    CHECK(s.n_layers == 32 && s.hidden == 4096 && s.n_heads == 32 && s.n_kv_heads == 8 &&
              s.head_dim == 128 && s.ffn == 14336 && s.vocab == 128256 && s.dtype == KV_BF16 &&
              s.rope_llama3 && !s.tied,
          "8b shape");
    s.n_layers = 2, s.hidden = 64, s.n_heads = 4, s.n_kv_heads = 1, s.head_dim = 16, s.ffn = 96,
    s.vocab = 400;
    snprintf(b, sizeof b, "%s/s8", tmp);
    CHECK(synth_write(b, &s, &err) == 0, "small 8b-like: %s", err.msg);
    check_model(b, &s, 0);
    char cfg_path[300];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", b);
    hf_config cfg;
    CHECK(hf_config_load(&cfg, cfg_path, &err) == 0, "8b config: %s", err.msg);
    CHECK(cfg.rope.scaling == KV_ROPE_LLAMA3 && cfg.rope.factor == 8 &&
              cfg.rope.low_freq_factor == 1 && cfg.rope.high_freq_factor == 4 &&
              cfg.rope.original_max_position == 8192 && cfg.rope.theta == 500000,
          "llama3 rope scaling read back");
    synth_preset(&s, "tiny");
    s.n_heads = 7;
    CHECK(synth_write(b, &s, &err) != 0 && strstr(err.msg, "invalid shape"),
          "bad shape refused: %s", err.msg);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) return 1;
    return check_done("test_synth");
}
