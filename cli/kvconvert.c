/* kvconvert: inspect a checkpoint, plan and apply a KV map or SwiftKV */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "formats/bundle.h"
#include "formats/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "transform/convert.h"
#include "transform/kvmap.h"

static const char *TOOL = "kvconvert";

static void usage(void) {
    printf("Usage: kvconvert SRC_DIR DST_DIR (--map SPEC | --swiftkv L[,G]) [OPTIONS]\n"
           "       kvconvert plan SRC_DIR (--map SPEC | --swiftkv L[,G])   (also: --plan SRC_DIR)\n"
           "       kvconvert info DIR                                      (also: --info DIR)\n"
           "       kvconvert bundle MODEL_DIR OUT.kvb                      pack a deployable bundle\n"
           "       kvconvert unbundle IN.kvb DIR                           back to an HF directory\n"
           "Rewrite an HF Llama checkpoint for cross-layer KV sharing or SwiftKV.\n\n"
           "Maps (--map):\n"
           "  pizza|sandwich|lasagna-bottom|top|middle:L   e.g. sandwich-middle:3, pizza-top:6\n"
           "  cla:F      CLA, groups of F layers reading their first\n"
           "  yoco       pizza-bottom with L/2+1 KV layers\n"
           "  lckv:W     sandwich-top with W warm-up layers\n"
           "  0_0_2_2_4  literal layer_types (kv(0)_kv(1)_..._kv(L-1))\n"
           "  --swiftkv L[,G]   SwiftKV: layers >= L take K/V from layer L's input; AcrossKV groups of G\n\n"
           "Options:\n"
           "  --kv-init mean|target     served K/V projections: mean over readers (default) or own\n"
           "  --layout deploy|hf-swiftkv  SwiftKV: drop replaced q/k/v (default) or keep them\n"
           "  --dtype f32|f16|bf16      output dtype (default: as the source)\n"
           "  --shard-size SIZE         shard the output (e.g. 2G)\n"
           "  --force                   replace the model files of a non-empty DST_DIR\n"
           "  --bundle OUT.kvb          also pack the converted model into a bundle\n"
           "  --level N                 bundle: zstd level (default: the codec's profile)\n"
           "  --json                    machine-readable summary on stdout\n"
           "  -q, --quiet               no progress on stderr\n"
           "  -h, --help                this help\n"
           "  --version                 print the version\n");
}

typedef struct {
    int json, quiet, have_map, level;
    const char *bundle_out;
    const char *map_spec, *swiftkv_spec;
    kv_convert_opts conv;
} cli_opts;

static int parse_map(const cli_opts *o, const char *src, kv_map *m, kv_error *err) {
    char path[4096];
    hf_config cfg;
    int rc = kv_join(path, sizeof path, src, "config.json", err);
    if (!rc) rc = hf_config_load(&cfg, path, err);
    if (rc) return rc;
    if (o->swiftkv_spec) return kvmap_parse_swiftkv(m, o->swiftkv_spec, cfg.n_layers, err);
    return kvmap_parse(m, o->map_spec, cfg.n_layers, err);
}

static int cmd_bundle(const cli_opts *o, const char *dir, const char *out);

static void print_report_json(const char *cmd, const kv_convert_opts *c, const kv_convert_report *r, const char *dst) {
    char layer_types[HF_MAX_LAYERS * 5 + 1];
    kvmap_layer_types(&c->map, layer_types, sizeof layer_types);
    printf("{\"command\":\"%s\",\"map\":\"%s\",\"layer_types\":\"%s\",\"kv_slots\":%d,\"layers\":%d,", cmd, c->map.name, layer_types,
           kvmap_n_slots(&c->map), c->map.n_layers);
    if (dst) printf("\"output\":\"%s\",", dst);
    printf("\"params_before\":%lld,\"params_after\":%lld,\"kv_bytes_per_token_before\":%zu,\"kv_bytes_per_token_after\":%zu,"
           "\"kv_cache_saving\":%.6f,\"tensors_in\":%d,\"tensors_out\":%d,\"dropped\":%d,\"added\":%d,\"averaged\":%d,\"bytes\":%zu}\n",
           (long long)r->params_before, (long long)r->params_after, r->kv_bytes_before, r->kv_bytes_after,
           r->kv_bytes_before ? 1.0 - (double)r->kv_bytes_after / (double)r->kv_bytes_before : 0.0, r->n_tensors_in, r->n_tensors_out,
           r->n_dropped, r->n_added, r->n_averaged, r->bytes_written);
}

static void print_report_text(const kv_convert_report *r) {
    printf("parameters: %lld -> %lld (%+.2f%%)\n", (long long)r->params_before, (long long)r->params_after,
           r->params_before ? 100.0 * ((double)r->params_after / (double)r->params_before - 1) : 0.0);
    printf("KV cache per token: %zu -> %zu bytes\n", r->kv_bytes_before, r->kv_bytes_after);
    printf("tensors: %d in, %d out (%d dropped, %d added, %d averaged)\n", r->n_tensors_in, r->n_tensors_out, r->n_dropped,
           r->n_added, r->n_averaged);
}

static int cmd_plan(cli_opts *o, const char *src) {
    kv_error err = {0};
    if (!o->have_map) return cli_usage_error(TOOL, "plan needs --map SPEC or --swiftkv L[,G]");
    if (parse_map(o, src, &o->conv.map, &err)) return cli_fail(TOOL, &err);
    kv_convert_report rep;
    if (kv_convert_plan(src, &o->conv, &rep, &err)) return cli_fail(TOOL, &err);
    if (o->json) { print_report_json("plan", &o->conv, &rep, NULL); return 0; }
    int n = kvmap_diagram(&o->conv.map, NULL, 0);
    char *diagram = malloc((size_t)n + 1);
    if (!diagram) return EXIT_FAIL;
    kvmap_diagram(&o->conv.map, diagram, (size_t)n + 1);
    printf("map %s on %s\n%s", o->conv.map.name, src, diagram);
    if (n && diagram[n - 1] != '\n') putchar('\n');
    free(diagram);
    print_report_text(&rep);
    return 0;
}

static void on_progress(void *ctx, size_t done, size_t total) {
    cli_progress *p = ctx;
    p->total = total ? total : 1;
    cli_progress_update(p, done, "");
}

static int cmd_convert(cli_opts *o, const char *src, const char *dst) {
    kv_error err = {0};
    if (!o->have_map) return cli_usage_error(TOOL, "converting needs --map SPEC or --swiftkv L[,G]");
    if (parse_map(o, src, &o->conv.map, &err)) return cli_fail(TOOL, &err);
    kv_convert_report rep;
    cli_progress progress;
    cli_progress_start(&progress, "kvconvert", 1, o->quiet);
    int rc = kv_convert_run(src, dst, &o->conv, &rep, on_progress, &progress, &err);
    cli_progress_finish(&progress);
    if (rc) return cli_fail(TOOL, &err);
    if (o->json) print_report_json("convert", &o->conv, &rep, dst);
    else { printf("wrote %s (map %s)\n", dst, o->conv.map.name); print_report_text(&rep); }
    return o->bundle_out ? cmd_bundle(o, dst, o->bundle_out) : 0;
}

static int cmd_bundle(const cli_opts *o, const char *dir, const char *out) {
    kv_error err = {0};
    kv_bundle_opts bo = {.level = o->level};
    if (kv_bundle_write(dir, out, &bo, &err)) return cli_fail(TOOL, &err);
    kv_bundle_report rep;
    if (kv_bundle_verify(out, &rep, &err)) return cli_fail(TOOL, &err);
    if (o->json)
        printf("{\"command\":\"bundle\",\"output\":\"%s\",\"tensors\":%d,\"chunks\":%d,\"raw_bytes\":%llu,\"bundle_bytes\":%llu,\"ratio\":%.4f}\n",
               out, rep.n_tensors, rep.n_chunks, (unsigned long long)rep.raw_bytes, (unsigned long long)rep.file_bytes,
               rep.raw_bytes ? (double)rep.file_bytes / (double)rep.raw_bytes : 0.0);
    else
        printf("bundled %s -> %s: %d tensors, %llu -> %llu bytes (%.1f%%), verified\n", dir, out, rep.n_tensors,
               (unsigned long long)rep.raw_bytes, (unsigned long long)rep.file_bytes,
               rep.raw_bytes ? 100.0 * (double)rep.file_bytes / (double)rep.raw_bytes : 0.0);
    return 0;
}

static int cmd_unbundle(const cli_opts *o, const char *in, const char *dir) {
    kv_error err = {0};
    if (kv_bundle_unbundle(in, dir, &err)) return cli_fail(TOOL, &err);
    if (o->json) printf("{\"command\":\"unbundle\",\"input\":\"%s\",\"output\":\"%s\"}\n", in, dir);
    else printf("unbundled %s -> %s\n", in, dir);
    return 0;
}

static int cmd_info(const cli_opts *o, const char *dir) {
    kv_error err = {0};
    char path[4096];
    hf_config cfg;
    kv_map map;
    st_checkpoint ck;
    if (kv_join(path, sizeof path, dir, "config.json", &err) || hf_config_load(&cfg, path, &err) ||
        kvmap_from_config(&map, &cfg, &err) || st_checkpoint_open(&ck, dir, &err))
        return cli_fail(TOOL, &err);
    int64_t params = 0;
    size_t bytes[KV_DTYPE_COUNT] = {0};
    for (int i = 0; i < ck.n_tensors; i++) {
        params += (int64_t)ck.tensors[i]->n_elements;
        bytes[ck.tensors[i]->dtype] += ck.tensors[i]->n_bytes;
    }
    size_t kv_bytes = kvmap_cache_bytes_per_token(&map, cfg.n_kv_heads, cfg.head_dim, kv_dtype_size(cfg.torch_dtype));
    char layer_types[HF_MAX_LAYERS * 5 + 1];
    kvmap_layer_types(&map, layer_types, sizeof layer_types);
    if (o->json) {
        printf("{\"architecture\":\"%s\",\"model_type\":\"%s\",\"layers\":%d,\"hidden_size\":%d,\"intermediate_size\":%d,"
               "\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"vocab_size\":%d,\"tied\":%s,\"dtype\":\"%s\",\"parameters\":%lld,"
               "\"tensors\":%d,\"files\":%d,\"bytes_per_dtype\":{",
               cfg.architecture, cfg.model_type, cfg.n_layers, cfg.hidden_size, cfg.intermediate_size, cfg.n_heads, cfg.n_kv_heads,
               cfg.head_dim, cfg.vocab_size, cfg.tie_word_embeddings ? "true" : "false", kv_dtype_name(cfg.torch_dtype),
               (long long)params, ck.n_tensors, ck.n_files);
        int first = 1;
        for (int t = 0; t < KV_DTYPE_COUNT; t++)
            if (bytes[t]) { printf("%s\"%s\":%zu", first ? "" : ",", kv_dtype_name((kv_dtype)t), bytes[t]); first = 0; }
        printf("},\"kv_map\":\"%s\",\"kv_map_kind\":\"%s\",\"kv_slots\":%d,\"kv_cache_bytes_per_token\":%zu}\n", map.name,
               map.kind == KVMAP_SWIFTKV ? "swiftkv" : map.kind == KVMAP_CROSS ? "cross-layer" : "identity", kvmap_n_slots(&map), kv_bytes);
    } else {
        printf("%s\n  architecture   %s (%s)\n", dir, cfg.architecture, cfg.model_type);
        printf("  layers         %d\n  hidden         %d (ffn %d)\n  heads          %d query, %d key/value, head_dim %d\n",
               cfg.n_layers, cfg.hidden_size, cfg.intermediate_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        printf("  vocab          %d%s\n  parameters     %lld (%.2f M) in %d tensors, %d file(s)\n", cfg.vocab_size,
               cfg.tie_word_embeddings ? " (tied embeddings)" : "", (long long)params, (double)params / 1e6, ck.n_tensors, ck.n_files);
        for (int t = 0; t < KV_DTYPE_COUNT; t++)
            if (bytes[t]) printf("  bytes %-8s %zu (%.1f MB)\n", kv_dtype_name((kv_dtype)t), bytes[t], (double)bytes[t] / 1e6);
        printf("  KV map         %s  [%s]\n  KV cache       %zu bytes/token (%d of %d layer slots, %s)\n", map.name, layer_types,
               kv_bytes, kvmap_n_slots(&map), cfg.n_layers, kv_dtype_name(cfg.torch_dtype));
    }
    st_checkpoint_close(&ck);
    return 0;
}

int main(int argc, char **argv) {
    enum { O_MAP = 256, O_SWIFT, O_INIT, O_LAYOUT, O_DTYPE, O_SHARD, O_FORCE, O_JSON, O_PLAN, O_INFO, O_VERSION, O_BUNDLE, O_LEVEL };
    static const struct option opts[] = {
        {"map", 1, 0, O_MAP}, {"swiftkv", 1, 0, O_SWIFT}, {"kv-init", 1, 0, O_INIT}, {"layout", 1, 0, O_LAYOUT},
        {"dtype", 1, 0, O_DTYPE}, {"shard-size", 1, 0, O_SHARD}, {"force", 0, 0, O_FORCE}, {"json", 0, 0, O_JSON},
        {"plan", 1, 0, O_PLAN}, {"info", 1, 0, O_INFO}, {"quiet", 0, 0, 'q'}, {"help", 0, 0, 'h'},
        {"version", 0, 0, O_VERSION}, {"bundle", 1, 0, O_BUNDLE}, {"level", 1, 0, O_LEVEL}, {0, 0, 0, 0}};
    cli_opts o = {0};
    o.conv.out_dtype = -1;
    const char *plan_dir = NULL, *info_dir = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case 'q': o.quiet = 1; break;
        case O_JSON: o.json = 1; break;
        case O_FORCE: o.conv.force = 1; break;
        case O_PLAN: plan_dir = optarg; break;
        case O_BUNDLE: o.bundle_out = optarg; break;
        case O_LEVEL: {
            long level;
            if (cli_parse_int(optarg, 1, 22, &level)) return cli_usage_error(TOOL, "--level must be 1..22");
            o.level = (int)level;
            break;
        }
        case O_INFO: info_dir = optarg; break;
        case O_MAP: o.map_spec = optarg; o.have_map++; break;
        case O_SWIFT: o.swiftkv_spec = optarg; o.have_map++; break;
        case O_INIT:
            if (strcmp(optarg, "mean") == 0) o.conv.kv_init = KV_INIT_MEAN;
            else if (strcmp(optarg, "target") == 0) o.conv.kv_init = KV_INIT_TARGET;
            else return cli_usage_error(TOOL, "--kv-init must be mean or target");
            break;
        case O_LAYOUT:
            if (strcmp(optarg, "deploy") == 0) o.conv.layout = KV_LAYOUT_DEPLOY;
            else if (strcmp(optarg, "hf-swiftkv") == 0) o.conv.layout = KV_LAYOUT_HF_SWIFTKV;
            else return cli_usage_error(TOOL, "--layout must be deploy or hf-swiftkv");
            break;
        case O_DTYPE:
            if (strcmp(optarg, "f32") == 0) o.conv.out_dtype = KV_F32;
            else if (strcmp(optarg, "f16") == 0) o.conv.out_dtype = KV_F16;
            else if (strcmp(optarg, "bf16") == 0) o.conv.out_dtype = KV_BF16;
            else return cli_usage_error(TOOL, "--dtype must be f32, f16 or bf16");
            break;
        case O_SHARD: {
            uint64_t b;
            if (cli_parse_size(optarg, &b) || b == 0) return cli_usage_error(TOOL, "bad --shard-size '%s'", optarg);
            o.conv.shard_bytes = (size_t)b;
            break;
        }
        default: return cli_usage_error(TOOL, "unknown option");
        }
    }
    if (o.have_map > 1) return cli_usage_error(TOOL, "give one of --map or --swiftkv, once");
    char **args = argv + optind;
    int n = argc - optind;
    if (info_dir) return n ? cli_usage_error(TOOL, "--info takes one DIR") : cmd_info(&o, info_dir);
    if (plan_dir) return n ? cli_usage_error(TOOL, "--plan takes one SRC_DIR") : cmd_plan(&o, plan_dir);
    if (n >= 1 && strcmp(args[0], "info") == 0) return n == 2 ? cmd_info(&o, args[1]) : cli_usage_error(TOOL, "info takes one DIR");
    if (n >= 1 && strcmp(args[0], "plan") == 0) return n == 2 ? cmd_plan(&o, args[1]) : cli_usage_error(TOOL, "plan takes one SRC_DIR");
    if (n >= 1 && strcmp(args[0], "bundle") == 0) return n == 3 ? cmd_bundle(&o, args[1], args[2]) : cli_usage_error(TOOL, "bundle takes MODEL_DIR OUT.kvb");
    if (n >= 1 && strcmp(args[0], "unbundle") == 0) return n == 3 ? cmd_unbundle(&o, args[1], args[2]) : cli_usage_error(TOOL, "unbundle takes IN.kvb DIR");
    if (n != 2) return cli_usage_error(TOOL, "expected SRC_DIR DST_DIR");
    return cmd_convert(&o, args[0], args[1]);
}
