/* kvconvert: inspect a checkpoint, plan and apply a KV map or SwiftKV, bundle / unbundle */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "formats/bundle.h"
#include "transform/convert/model_info.h"
#include "transform/convert/convert.h"
#include "formats/kvmap.h"

static const char *TOOL = "kvconvert";

static void usage(void) {
    printf(
        "Usage: kvconvert SRC_DIR DST_DIR (--map SPEC | --swiftkv l[,g]) [OPTIONS]\n"
        "       kvconvert plan SRC_DIR (--map SPEC | --swiftkv l[,g])   (also: --plan SRC_DIR)\n"
        "       kvconvert info MODEL                                    (also: --info MODEL)\n"
        "       kvconvert bundle MODEL_DIR OUT.kvb                      pack a deployable bundle\n"
        "       kvconvert unbundle IN.kvb DIR                           back to an HF directory\n"
        "SRC_DIR / MODEL: a model directory, a .kvb bundle or its model.safetensors file.\n"
        "Rewrite an HF Llama checkpoint (safetensors, single or sharded, F32/F16/BF16) for\n"
        "cross-layer KV sharing or SwiftKV; Mistral and Qwen2 are read as Llama models with\n"
        "their sliding windows (kept; refused with SwiftKV; docs/INTEROP.md: the schemas\n"
        "written). RoPE scalings: llama3, linear, dynamic, yarn, longrope. The source is only\n"
        "read; DST_DIR is built in a staging folder beside it and moved into place. It holds\n"
        "the weights, config.json with the KV map, the tokenizer files and kvforge.json\n"
        "(recipe, source sha256, savings).\n"
        "A killed run leaves no partial output; rerunning the command removes its leftover\n"
        "DST_DIR.tmp-XXXXXX (docs/CONVERT.md, crash safety).\n\n"
        "Maps (--map):\n"
        "  pizza|sandwich|lasagna-bottom|top|middle:l   l KV layers, e.g. sandwich-middle:3, "
        "pizza-top:6\n"
        "  cla:F      CLA, groups of F layers reading their first\n"
        "  yoco       pizza-bottom with L/2+1 KV layers\n"
        "  lckv:W     sandwich-top with W warm-up layers\n"
        "  0_0_2_2_4  literal layer_types (kv(0)_kv(1)_..._kv(L-1)); identity; swiftkv:l[,g]\n"
        "  --swiftkv l[,g]   SwiftKV: layers >= l take K/V from norm_swiftkv of layer l's input,\n"
        "                    one K/V per AcrossKV group of g layers (default g = 1)\n\n"
        "Options:\n"
        "  --kv-init mean|target     served K/V projections: mean over the layers that read\n"
        "                            them (default) or the serving layer's own\n"
        "  --layout hf-swiftkv|deploy  SwiftKV: keep the teacher's q/k/v_proj of layers >= l\n"
        "                            (default; Snowflake's layout, which every ArcticInference\n"
        "                            version loads) or drop them (smaller; warns whom it fails)\n"
        "  --dtype f32|f16|bf16      output type of float tensors (default: as in the source)\n"
        "  --shard-size SIZE         shard the weights (e.g. 2G; default 5G; 0 = one file)\n"
        "  --force                   write into a non-empty DST_DIR (its *.safetensors and\n"
        "                            index are replaced or removed; other files stay) and\n"
        "                            replace an existing bundle file (never a model's own file)\n"
        "  --no-sync                 skip fsync: for scratch output (still appears atomically,\n"
        "                            but a crash may lose it)\n"
        "  --no-hash-cache           hash every source file for kvforge.json even when an\n"
        "                            unchanged file's digest is cached (see docs/CONVERT.md)\n"
        "  --max-memory SIZE         memory budget for decoding a .kvb source or unbundle\n"
        "                            (default: $KVFORGE_MAX_MEMORY, else physical RAM;\n"
        "                            conversion itself streams in 20 MB chunks)\n"
        "  --bundle OUT.kvb          also pack the converted model into a bundle\n"
        "  --level N                 bundle: zstd level (default: the codec's profile)\n"
        "  --json                    machine-readable summary on stdout (plan, convert, info)\n"
        "  -q, --quiet               no progress or summary text\n"
        "  -h, --help                this help\n"
        "  --version                 print the version\n");
}

typedef struct {
    int json, quiet, level, layout_set;
    const char *map_spec, *swiftkv_spec, *bundle_out;
    kv_convert_opts conv;
} cli_opts;

static void on_progress(void *ctx, size_t done, size_t total) {
    char extra[64];
    snprintf(extra, sizeof extra, "%.1f/%.1f MB", (double)done / 1e6, (double)total / 1e6);
    cli_progress_update(ctx, done, extra);
}

static int cmd_info(const cli_opts *o, const char *path) {
    kv_error err = {0};
    const char *dir = cli_model_arg(TOOL, path, 0);
    if (!dir) return EXIT_FAIL;
    model_info mi;
    char *text = NULL;
    if (model_info_load_dir(&mi, dir, &err) ||
        (o->json ? model_info_json(&mi, &text, &err) : model_info_text(&mi, path, &text, &err)))
        return cli_fail(TOOL, &err);
    fputs(text, stdout);
    if (o->json) fputc('\n', stdout);
    free(text);
    return 0;
}

/* --bundle OUT / bundle MODEL OUT: checked before any work (kv_bundle_check_output) */
static int check_bundle_out(const cli_opts *o, const char *out, const char *given, const char *src,
                            const char *dst) {
    kv_error err = {0};
    const char *dirs[3] = {src, given, dst}; /* given: the source as named (a .kvb, a file) */
    if (kv_bundle_check_output(out, dirs, 3, o->conv.force, &err)) return cli_fail(TOOL, &err);
    return 0;
}

static int cmd_bundle(const cli_opts *o, const char *dir, const char *out) {
    kv_error err = {0};
    kv_bundle_opts bo = {.level = o->level, .check_model = 1};
    const char *given = dir;
    if (!(dir = cli_model_arg(TOOL, dir, 0))) return EXIT_FAIL;
    if (check_bundle_out(o, out, given, dir, NULL)) return EXIT_FAIL;
    if (kv_bundle_write(dir, out, &bo, &err)) return cli_fail(TOOL, &err);
    kv_bundle_report rep;
    if (kv_bundle_verify(out, &rep, &err)) return cli_fail(TOOL, &err);
    if (o->json)
        printf("{\"command\":\"bundle\",\"output\":\"%s\",\"tensors\":%d,\"chunks\":%d,\"raw_"
               "bytes\":%llu,\"bundle_bytes\":%llu,\"ratio\":%.4f}\n",
               out, rep.n_tensors, rep.n_chunks, (unsigned long long)rep.raw_bytes,
               (unsigned long long)rep.file_bytes,
               rep.raw_bytes ? (double)rep.file_bytes / (double)rep.raw_bytes : 0.0);
    else if (!o->quiet)
        printf("bundled %s -> %s: %d tensors, %llu -> %llu bytes (%.1f%%), verified\n", dir, out,
               rep.n_tensors, (unsigned long long)rep.raw_bytes, (unsigned long long)rep.file_bytes,
               rep.raw_bytes ? 100.0 * (double)rep.file_bytes / (double)rep.raw_bytes : 0.0);
    return 0;
}

static int cmd_unbundle(const cli_opts *o, const char *in, const char *dir) {
    kv_error err = {0};
    if (kv_bundle_unbundle(in, dir, &err)) return cli_fail(TOOL, &err);
    if (o->json) printf("{\"command\":\"unbundle\",\"input\":\"%s\",\"output\":\"%s\"}\n", in, dir);
    else if (!o->quiet) printf("unbundled %s -> %s\n", in, dir);
    return 0;
}

/* plan (dst NULL) or convert */
static int cmd_transform(cli_opts *o, const char *src_dir, const char *dst) {
    if (!o->map_spec == !o->swiftkv_spec)
        return cli_usage_error(TOOL, "give exactly one of --map SPEC and --swiftkv l[,g]");
    kv_error err = {0};
    const char *given = src_dir;
    if (!(src_dir = cli_model_arg(TOOL, src_dir, 0))) return EXIT_FAIL;
    if (dst && o->bundle_out && check_bundle_out(o, o->bundle_out, given, src_dir, dst))
        return EXIT_FAIL;
    convert_source src;
    if (convert_source_open(&src, src_dir, &err)) return cli_fail(TOOL, &err);
    int rc = o->map_spec
                 ? kvmap_parse(&o->conv.map, o->map_spec, src.cfg.n_layers, &err)
                 : kvmap_parse_swiftkv(&o->conv.map, o->swiftkv_spec, src.cfg.n_layers, &err);
    if (rc) { /* a spec this model cannot take is a usage error (exit 2) */
        convert_source_close(&src);
        return cli_usage_error(TOOL, "%s", err.msg);
    }
    if (o->layout_set && o->conv.map.kind != KVMAP_SWIFTKV) {
        convert_source_close(&src);
        return cli_usage_error(TOOL, "--layout applies to SwiftKV only, not KV map '%s'",
                               o->conv.map.name);
    }
    convert_plan plan;
    if (convert_plan_build(&plan, &src, &o->conv, &err)) {
        convert_source_close(&src);
        return cli_fail(TOOL, &err);
    }
    cli_warn_swiftkv_serving(TOOL, &o->conv.map, o->conv.layout);
    int status = 0;
    if (!dst) {
        char *text = o->json ? convert_plan_json(&plan, NULL, 0) : convert_plan_text(&plan);
        if (text && o->json) { /* one line, as info --json prints */
            cJSON *j = cJSON_Parse(text);
            char *line = j ? cJSON_PrintUnformatted(j) : NULL;
            cJSON_Delete(j);
            free(text);
            text = line ? strdup(line) : NULL;
            cJSON_free(line);
        }
        if (text) {
            fputs(text, stdout);
            if (o->json) fputc('\n', stdout);
        } else {
            status = EXIT_FAIL;
            cli_error(TOOL, "out of memory");
        }
        free(text);
    } else {
        cli_progress bar;
        cli_progress_start(&bar, TOOL, plan.out_bytes, o->quiet);
        char *manifest = NULL;
        if (convert_run(&plan, dst, on_progress, &bar, &manifest, &err)) {
            status = cli_fail(TOOL, &err);
        } else {
            cli_progress_finish(&bar);
            if (o->json) printf("%s\n", manifest);
            else if (!o->quiet)
                printf("wrote %s (map %s): %d tensors, %llu bytes; KV cache (%s) %zu -> %zu "
                       "bytes/token; parameters %llu -> %llu\n",
                       dst, plan.opt.map.name, plan.n_out, (unsigned long long)plan.out_bytes,
                       kv_dtype_name(plan.cache_dtype), plan.kv_bytes_src, plan.kv_bytes_out,
                       (unsigned long long)plan.src_params, (unsigned long long)plan.out_params);
        }
        free(manifest);
    }
    convert_plan_free(&plan);
    convert_source_close(&src);
    if (!status && dst && o->bundle_out) status = cmd_bundle(o, dst, o->bundle_out);
    return status;
}

int main(int argc, char **argv) {
    enum {
        O_MAP = 256,
        O_SWIFT,
        O_INIT,
        O_LAYOUT,
        O_DTYPE,
        O_SHARD,
        O_FORCE,
        O_JSON,
        O_PLAN,
        O_INFO,
        O_VERSION,
        O_BUNDLE,
        O_LEVEL,
        O_NO_SYNC,
        O_NO_CACHE,
        O_MAX_MEMORY
    };
    static const struct option opts[] = {{"map", 1, 0, O_MAP},
                                         {"swiftkv", 1, 0, O_SWIFT},
                                         {"kv-init", 1, 0, O_INIT},
                                         {"layout", 1, 0, O_LAYOUT},
                                         {"dtype", 1, 0, O_DTYPE},
                                         {"shard-size", 1, 0, O_SHARD},
                                         {"force", 0, 0, O_FORCE},
                                         {"json", 0, 0, O_JSON},
                                         {"plan", 1, 0, O_PLAN},
                                         {"info", 1, 0, O_INFO},
                                         {"quiet", 0, 0, 'q'},
                                         {"help", 0, 0, 'h'},
                                         {"version", 0, 0, O_VERSION},
                                         {"bundle", 1, 0, O_BUNDLE},
                                         {"level", 1, 0, O_LEVEL},
                                         {"no-sync", 0, 0, O_NO_SYNC},
                                         {"no-hash-cache", 0, 0, O_NO_CACHE},
                                         {"max-memory", 1, 0, O_MAX_MEMORY},
                                         {0, 0, 0, 0}};
    cli_opts o = {0};
    o.conv.out_dtype = KV_CONVERT_KEEP_DTYPE;
    o.conv.shard_bytes = KV_CONVERT_DEFAULT_SHARD;
    const char *plan_dir = NULL, *info_dir = NULL, *max_memory = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hq", opts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case 'q': o.quiet = 1; break;
        case O_JSON: o.json = 1; break;
        case O_FORCE: o.conv.force = 1; break;
        case O_NO_SYNC: o.conv.no_sync = 1; break;
        case O_NO_CACHE: o.conv.no_hash_cache = 1; break;
        case O_PLAN: plan_dir = optarg; break;
        case O_INFO: info_dir = optarg; break;
        case O_MAX_MEMORY: max_memory = optarg; break;
        case O_BUNDLE: o.bundle_out = optarg; break;
        case O_LEVEL: {
            long level;
            if (cli_parse_int(optarg, 1, 22, &level))
                return cli_usage_error(TOOL, "--level must be 1..22");
            o.level = (int)level;
            break;
        }
        case O_MAP:
            if (o.map_spec) return cli_usage_error(TOOL, "--map given twice");
            o.map_spec = optarg;
            break;
        case O_SWIFT:
            if (o.swiftkv_spec) return cli_usage_error(TOOL, "--swiftkv given twice");
            o.swiftkv_spec = optarg;
            break;
        case O_INIT:
            if (strcmp(optarg, "mean") == 0) o.conv.kv_init = KV_INIT_MEAN;
            else if (strcmp(optarg, "target") == 0) o.conv.kv_init = KV_INIT_TARGET;
            else return cli_usage_error(TOOL, "--kv-init must be mean or target, not '%s'", optarg);
            break;
        case O_LAYOUT:
            if (strcmp(optarg, "deploy") == 0) o.conv.layout = KV_LAYOUT_DEPLOY;
            else if (strcmp(optarg, "hf-swiftkv") == 0) o.conv.layout = KV_LAYOUT_HF_SWIFTKV;
            else
                return cli_usage_error(TOOL, "--layout must be deploy or hf-swiftkv, not '%s'",
                                       optarg);
            o.layout_set = 1;
            break;
        case O_DTYPE: {
            kv_dtype out_dtype;
            if (cli_parse_float_dtype(optarg, &out_dtype))
                return cli_usage_error(TOOL, "--dtype must be f32, f16 or bf16, not '%s'", optarg);
            o.conv.out_dtype = (int)out_dtype;
            break;
        }
        case O_SHARD: {
            uint64_t b;
            if (cli_parse_size(optarg, &b))
                return cli_usage_error(TOOL, "bad --shard-size '%s' (e.g. 2G, 500M, 0)", optarg);
            o.conv.shard_bytes = (size_t)b;
            break;
        }
        default: return cli_bad_option(TOOL, c, argv);
        }
    }
    if (cli_memory_budget(TOOL, max_memory)) return EXIT_USAGE;
    char **args = argv + optind;
    int n = argc - optind;
    int has_map = o.map_spec || o.swiftkv_spec;
    if (info_dir)
        return n || has_map ? cli_usage_error(TOOL, "--info takes one DIR and no transform")
                            : cmd_info(&o, info_dir);
    if (plan_dir)
        return n ? cli_usage_error(TOOL, "--plan takes one SRC_DIR")
                 : cmd_transform(&o, plan_dir, NULL);
    if (n >= 1 && strcmp(args[0], "info") == 0)
        return n == 2 && !has_map ? cmd_info(&o, args[1])
                                  : cli_usage_error(TOOL, "info takes one DIR and no transform");
    if (n >= 1 && strcmp(args[0], "plan") == 0)
        return n == 2 ? cmd_transform(&o, args[1], NULL)
                      : cli_usage_error(TOOL, "plan takes one SRC_DIR");
    if (n >= 1 && strcmp(args[0], "bundle") == 0)
        return n == 3 ? cmd_bundle(&o, args[1], args[2])
                      : cli_usage_error(TOOL, "bundle takes MODEL_DIR OUT.kvb");
    if (n >= 1 && strcmp(args[0], "unbundle") == 0)
        return n == 3 ? cmd_unbundle(&o, args[1], args[2])
                      : cli_usage_error(TOOL, "unbundle takes IN.kvb DIR");
    if (n != 2)
        return cli_usage_error(
            TOOL, "expected SRC_DIR DST_DIR (or plan SRC_DIR, info DIR, bundle, unbundle)");
    return cmd_transform(&o, args[0], args[1]);
}
