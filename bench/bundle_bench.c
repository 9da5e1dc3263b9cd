/* Bundle bench: sizes and load time as ratios against baselines measured in the same run.
 *   1. stories260K (real F32 weights): bundle bytes / `zstd -19` of model.safetensors
 *   2. synthetic Gaussian BF16 model (std 0.02, fixed seed): bundle / zstd -19, bundle / raw
 *   3. a GB-scale Gaussian BF16 model: open + decompress + verify of the bundle against
 *      read() of the raw safetensors into memory (and read() + sha256 of it)
 * usage: bundle_bench [--load-gb X (default 1)] [--size-mb N (default 64)] [--threads T]
 *                     [--levels]  (also: ratios of zstd levels 1..19 on both kinds of weights)
 * Goals (docs/BUNDLE.md): bundle <= 0.93 of zstd -19 and <= 0.72 of raw BF16 bytes; load at
 * most 1.5x the raw read, i.e. decompression at or above 1 GB/s. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "bench/bench.h"
#include "formats/bundle.h"
#include "formats/chunkcodec.h"
#include "base/dtype.h"
#include "base/fileio.h"
#include "formats/safetensors.h"
#include "base/sha256.h"

#define STORIES "../shared/models/stories260K"

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static void die(const char *what, const kv_error *err) {
    fprintf(stderr, "bundle_bench: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

/* ---- Gaussian BF16 weights, reproducible per (seed, tensor, position) ---- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct {
    uint16_t *out;
    size_t n;
    uint64_t seed;
} gauss_job;

enum { GAUSS_BLOCK = 1 << 16 };

static int gauss_block(void *ctx, int i, int worker, kv_error *err) {
    (void)worker;
    (void)err;
    gauss_job *j = ctx;
    size_t lo = (size_t)i * GAUSS_BLOCK, hi = lo + GAUSS_BLOCK < j->n ? lo + GAUSS_BLOCK : j->n;
    uint64_t s = j->seed ^ ((uint64_t)i * 0xD1B54A32D192ED03ULL);
    for (size_t k = lo; k < hi; k += 2) { /* Box-Muller, both outputs */
        double u1 = ((double)(splitmix(&s) >> 11) + 0.5) / 9007199254740992.0;
        double u2 = (double)(splitmix(&s) >> 11) / 9007199254740992.0;
        double r = 0.02 * sqrt(-2.0 * log(u1));
        j->out[k] = kv_f32_to_bf16((float)(r * cos(6.283185307179586 * u2)));
        if (k + 1 < hi) j->out[k + 1] = kv_f32_to_bf16((float)(r * sin(6.283185307179586 * u2)));
    }
    return 0;
}

static void gaussian_bf16(uint16_t *out, size_t n, uint64_t seed, int threads) {
    gauss_job j = {out, n, seed};
    int blocks = (int)((n + GAUSS_BLOCK - 1) / GAUSS_BLOCK);
    kv_pool_run(blocks, kv_resolve_threads(threads, blocks), gauss_block, &j, NULL, NULL);
}

/* a Llama-shaped BF16 model of about target_bytes: H=2048, FFN=5632, vocab 32000 (or a
 * quarter-width shape below 500 MB) */
typedef struct {
    st_spec specs[1024];
    char names[1024][80];
    int n;
    int threads;
    uint16_t *buf;
} synth_model;

static void add_spec(synth_model *m, const char *name, int64_t rows, int64_t cols) {
    snprintf(m->names[m->n], sizeof m->names[0], "%s", name);
    m->specs[m->n] = (st_spec){
        .name = m->names[m->n], .dtype = KV_BF16, .n_dims = cols ? 2 : 1, .shape = {rows, cols}};
    m->n++;
}

static int fill_tensor(void *ctx, int index, st_writer *w, kv_error *err) {
    synth_model *m = ctx;
    size_t n = st_spec_bytes(&m->specs[index]) / 2;
    gaussian_bf16(m->buf, n, 0x5EEDULL * 1000003ULL + (uint64_t)index, m->threads);
    return st_writer_put(w, m->buf, 2 * n, err);
}

static uint64_t write_synth(const char *dir, double target_bytes, int threads) {
    kv_error err = {0};
    if (kv_mkdir_p(dir, &err)) die(dir, &err);
    const int small = target_bytes < 5e8; /* small: Llama-like shapes at a quarter of the width */
    const int H = small ? 1024 : 2048, FFN = small ? 2816 : 5632, V = small ? 8000 : 32000,
              KV = 256;
    static synth_model m;
    memset(&m, 0, sizeof m);
    m.threads = threads;
    add_spec(&m, "model.embed_tokens.weight", V, H);
    add_spec(&m, "model.norm.weight", H, 0);
    double per_layer =
        2.0 * ((double)H * H * 2 + (double)KV * H * 2 + (double)FFN * H * 3 + 2.0 * H);
    int layers = (int)((target_bytes - 2.0 * V * H) / per_layer + 0.5);
    if (layers < 1) layers = 1;
    if (layers > 100) layers = 100;
    for (int l = 0; l < layers; l++) {
        char name[80];
        const char *sq[] = {"self_attn.q_proj", "self_attn.o_proj"},
                   *skv[] = {"self_attn.k_proj", "self_attn.v_proj"};
        const char *up[] = {"mlp.gate_proj", "mlp.up_proj"};
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, sq[k]);
            add_spec(&m, name, H, H);
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, skv[k]);
            add_spec(&m, name, KV, H);
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, up[k]);
            add_spec(&m, name, FFN, H);
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        add_spec(&m, name, H, FFN);
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_spec(&m, name, H, 0);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_spec(&m, name, H, 0);
    }
    size_t largest = 0;
    uint64_t total = 0;
    for (int i = 0; i < m.n; i++) {
        size_t b = st_spec_bytes(&m.specs[i]);
        if (b > largest) largest = b;
        total += b;
    }
    m.buf = malloc(largest);
    if (!m.buf) die("no memory", NULL);
    const char *meta[] = {"format", "pt"};
    if (st_write_checkpoint(dir, m.specs, m.n, 0, meta, 1, fill_tensor, &m, &err)) die(dir, &err);
    free(m.buf);
    char config[1024], path[1200];
    snprintf(
        config, sizeof config,
        "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":%d,"
        "\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":16,"
        "\"num_key_value_heads\":2,\"vocab_size\":%d,\"torch_dtype\":\"bfloat16\"}\n",
        H, FFN, layers, V);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (kv_write_file_atomic(path, config, strlen(config), &err)) die(path, &err);
    return total;
}

/* `zstd -19` of a file, in bytes; the CLI when present, else libzstd at level 19 */
static uint64_t zstd19_size(const char *path, const char **how) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "zstd -19 -q -c -- '%s' 2>/dev/null | wc -c", path);
    FILE *p = popen(cmd, "r");
    unsigned long long n = 0;
    if (p) {
        if (fscanf(p, "%llu", &n) != 1) n = 0;
        pclose(p);
    }
    if (n > 0) {
        *how = "zstd -19 (CLI)";
        return n;
    }
    *how = "libzstd level 19 (no zstd CLI)";
    char *buf;
    size_t size;
    kv_error err;
    if (kv_read_file(path, &buf, &size, (size_t)1 << 34, &err)) die(path, &err);
    size_t cap = ZSTD_compressBound(size);
    void *z = malloc(cap);
    size_t got = ZSTD_compress(z, cap, buf, size, 19);
    free(z);
    free(buf);
    return ZSTD_isError(got) ? 0 : got;
}

static void size_report(const char *label, const char *model_dir, int threads) {
    char st_path[1200], kvb[1200];
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", model_dir);
    snprintf(kvb, sizeof kvb, "%s.kvb", model_dir);
    kv_error err = {0};
    kv_bundle_opts o = {.threads = threads};
    double t0 = bench_seconds();
    if (kv_bundle_write(model_dir, kvb, &o, &err)) die("bundle", &err);
    double t_write = bench_seconds() - t0;
    kv_bundle_report r;
    if (kv_bundle_verify(kvb, &r, &err)) die("verify", &err);
    const char *how;
    uint64_t z = zstd19_size(st_path, &how), st = file_size(st_path), b = r.file_bytes;
    printf("%s: safetensors %llu B   %s %llu B   bundle %llu B (tensor data %llu of %llu raw)   "
           "bundle/zstd19 %.3f   bundle/raw %.3f   write %.2f s\n",
           label, (unsigned long long)st, how, (unsigned long long)z, (unsigned long long)b,
           (unsigned long long)r.stored_bytes, (unsigned long long)r.raw_bytes,
           (double)b / (double)z, (double)b / (double)r.raw_bytes, t_write);
    unlink(kvb);
}

/* read() of a whole file into a fresh buffer allocated as the bundle loader allocates its own
 * (anonymous mapping, transparent huge pages advised); optionally sha256 of it */
static double read_file_time(const char *path, int with_sha) {
    double t0 = bench_seconds();
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path, NULL);
    size_t n = (size_t)file_size(path), got = 0;
    size_t map_size = (n + ((size_t)2 << 20) - 1) / ((size_t)2 << 20) * ((size_t)2 << 20);
    uint8_t *buf = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) die("no memory", NULL);
    madvise(buf, map_size, MADV_HUGEPAGE);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) die(path, NULL);
        got += (size_t)r;
    }
    close(fd);
    if (with_sha) {
        uint8_t d[32];
        kv_sha256(buf, n, d);
    }
    double t = bench_seconds() - t0;
    munmap(buf, map_size);
    return t;
}

static double bundle_load_time(const char *kvb, int threads, size_t *raw) {
    kv_error err = {0};
    double t0 = bench_seconds();
    kv_bundle *b;
    if (kv_bundle_open(&b, kvb, &err)) die("open", &err);
    if (kv_bundle_load_tensors(b, NULL, 0, threads, &err)) die("load", &err);
    double t = bench_seconds() - t0;
    *raw = kv_bundle_raw_size(b);
    kv_bundle_close(b);
    return t;
}

static void load_report(const char *dir, double gb, int threads) {
    double t0 = bench_seconds();
    uint64_t raw = write_synth(dir, gb * 1e9, threads);
    double t_gen = bench_seconds() - t0;
    char st_path[1200], kvb[1200];
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    snprintf(kvb, sizeof kvb, "%s.kvb", dir);
    kv_error err = {0};
    kv_bundle_opts o = {.threads = threads};
    t0 = bench_seconds();
    if (kv_bundle_write(dir, kvb, &o, &err)) die("bundle", &err);
    double t_write = bench_seconds() - t0;
    sync(); /* no writeback in flight while timing */
    /* best of 3 each, interleaved; both files are in the page cache (just written) */
    double t_read = 1e9, t_read_sha = 1e9, t_load = 1e9;
    size_t loaded = 0;
    for (int rep = 0; rep < 3; rep++) {
        double a = read_file_time(st_path, 0), b = read_file_time(st_path, 1),
               c = bundle_load_time(kvb, threads, &loaded);
        t_read = a < t_read ? a : t_read;
        t_read_sha = b < t_read_sha ? b : t_read_sha;
        t_load = c < t_load ? c : t_load;
    }
    const int n_threads = kv_resolve_threads(threads, 1 << 20);
    printf("load %.2f GB BF16 (%d thread%s): generate %.1f s, bundle %.1f s (%.0f MB/s), bundle "
           "%.3f of raw\n",
           (double)raw / 1e9, n_threads, n_threads == 1 ? "" : "s", t_gen, t_write,
           (double)raw / t_write / 1e6, (double)file_size(kvb) / (double)raw);
    printf("load: read safetensors %.3f s (%.2f GB/s)   read+sha256 %.3f s   bundle "
           "open+decompress+verify %.3f s (%.2f GB/s)   ratio %.2f (vs read+sha256 %.2f)\n",
           t_read, (double)file_size(st_path) / t_read / 1e9, t_read_sha, t_load,
           (double)loaded / t_load / 1e9, t_load / t_read, t_load / t_read_sha);
    unlink(kvb);
}

static void level_sweep(int threads) {
    size_t n = (size_t)8 << 20; /* 8M BF16 values */
    uint16_t *bf = malloc(2 * n);
    gaussian_bf16(bf, n, 7, threads);
    st_file f;
    kv_error err = {0};
    int have_stories = st_open(&f, STORIES "/model.safetensors", &err) == 0;
    printf("levels: ratio of stored to raw bytes (2 MiB chunks); p = the default profile (level 1, "
           "hash log 8)\n");
    for (int level = 0; level <= 19; level++) {
        kv_codec_opts o = {.level = level, .threads = threads};
        kv_encoded e;
        double t0 = bench_seconds();
        if (kv_chunk_encode(bf, 2 * n, KV_BF16, &o, &e, &err)) die("encode", &err);
        double t = bench_seconds() - t0;
        double r_bf = (double)e.stored_size / (double)(2 * n);
        kv_encoded_free(&e);
        double r_st = 0;
        if (have_stories) {
            if (kv_chunk_encode(f.data, f.data_size, KV_F32, &o, &e, &err)) die("encode", &err);
            r_st = (double)e.stored_size / (double)f.data_size;
            kv_encoded_free(&e);
        }
        printf("  level %2d%s: Gaussian BF16 %.4f (%.0f MB/s)   stories260K F32 %.4f\n",
               level ? level : 1, level ? " " : "p", r_bf, (double)(2 * n) / t / 1e6, r_st);
    }
    if (have_stories) st_close(&f);
    free(bf);
}

int main(int argc, char **argv) {
    double load_gb = 1.0;
    int size_mb = 64, threads = 0, levels = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--load-gb") && i + 1 < argc) load_gb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--size-mb") && i + 1 < argc) size_mb = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--levels")) levels = 1;
        else {
            fprintf(stderr,
                    "usage: bundle_bench [--load-gb X] [--size-mb N] [--threads T] [--levels]\n");
            return 2;
        }
    }
    char root[] = "/tmp/kv_bundle_bench_XXXXXX";
    if (!mkdtemp(root)) die("mkdtemp", NULL);
    char dir[256];

    if (kv_path_exists(STORIES "/model.safetensors"))
        size_report("stories260K (F32, real weights)", STORIES, threads);
    else printf("stories260K: fixture %s not found, skipped\n", STORIES);

    snprintf(dir, sizeof dir, "%s/gauss_bf16", root);
    uint64_t raw = write_synth(dir, size_mb * 1e6, threads);
    char label[64];
    snprintf(label, sizeof label, "synthetic Gaussian BF16 (%.0f MB)", (double)raw / 1e6);
    size_report(label, dir, threads);

    if (load_gb > 0) {
        snprintf(dir, sizeof dir, "%s/load_bf16", root);
        load_report(dir, load_gb, threads);
    }
    if (levels) level_sweep(threads);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "bundle_bench: could not remove %s\n", root);
    return 0;
}
