/* kvconvert: HF Llama checkpoint -> cross-layer KV sharing or SwiftKV checkpoint; plan; info */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "transform/convert.h"
#include "transform/convert_info.h"

static const char *TOOL = "kvconvert";

static void usage(void) {
    printf("Usage: kvconvert SRC_DIR DST_DIR (--map SPEC | --swiftkv l[,g]) [OPTIONS]\n"
           "       kvconvert --plan SRC_DIR (--map SPEC | --swiftkv l[,g]) [--json]\n"
           "       kvconvert info DIR [--json]      (or --info DIR)\n"
           "Turn an HF Llama checkpoint (safetensors, single or sharded, F32/F16/BF16) into a\n"
           "cross-layer KV sharing or SwiftKV checkpoint. The source is only read; DST is built in a\n"
           "staging folder beside it and moved into place.\n\n"
           "Transform (one of):\n"
           "  --map SPEC           cross-layer KV map: {pizza|sandwich|lasagna}-{bottom|top|middle}:l,\n"
           "                       cla:F, yoco, lckv:W, a literal such as 0_0_2_2_4, identity, swiftkv:l[,g]\n"
           "  --swiftkv l[,g]      SwiftKV: layers >= l take K/V from norm_swiftkv of layer l's input,\n"
           "                       one K/V per group of g layers (default g = 1)\n"
           "Options:\n"
           "  --kv-init mean|target  served K/V projections: mean over the layers that read them\n"
           "                       (default) or the serving layer's own\n"
           "  --layout deploy|hf-swiftkv  SwiftKV: drop the replaced q/k/v_proj of layers >= l (deploy,\n"
           "                       default) or keep them (Snowflake's llama_swiftkv layout)\n"
           "  --dtype f32|f16|bf16 output type of float tensors (default: as in the source)\n"
           "  --shard-size SIZE    shard the weights (e.g. 2G; default 5G; 0 = one file)\n"
           "  --force              write into a non-empty DST_DIR (weight files of an older\n"
           "                       checkpoint there are replaced or removed)\n"
           "  --plan SRC_DIR       print the per-layer diagram and the savings; write nothing\n"
           "  --info DIR           print architecture, sizes and KV-cache bytes per token\n"
           "  --json               machine-readable summary on stdout\n"
           "  -q, --quiet          no progress or summary text\n"
           "  -h, --help           this help\n"
           "  --version            print the version\n");
}

typedef struct {
    cli_progress bar;
} progress_state;

static void on_progress(void *ctx, uint64_t done, uint64_t total) {
    progress_state *s = ctx;
    char extra[64];
    snprintf(extra, sizeof extra, "%.1f/%.1f MB", done / 1e6, total / 1e6);
    cli_progress_update(&s->bar, done, extra);
}

static int run_info(const char *dir, int json) {
    convert_info info;
    kv_error err = {0};
    if (convert_info_load(&info, dir, &err)) return cli_fail(TOOL, &err);
    char *text = json ? convert_info_json(&info) : convert_info_text(&info);
    if (!text) { cli_error(TOOL, "out of memory"); return EXIT_FAIL; }
    fputs(text, stdout);
    if (json) fputc('\n', stdout);
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    enum { O_MAP = 256, O_SWIFTKV, O_KV_INIT, O_LAYOUT, O_DTYPE, O_SHARD, O_FORCE, O_PLAN, O_INFO, O_JSON, O_VERSION };
    static const struct option opts[] = {
        {"map", 1, 0, O_MAP}, {"swiftkv", 1, 0, O_SWIFTKV}, {"kv-init", 1, 0, O_KV_INIT}, {"layout", 1, 0, O_LAYOUT},
        {"dtype", 1, 0, O_DTYPE}, {"shard-size", 1, 0, O_SHARD}, {"force", 0, 0, O_FORCE}, {"plan", 1, 0, O_PLAN},
        {"info", 1, 0, O_INFO}, {"json", 0, 0, O_JSON}, {"quiet", 0, 0, 'q'}, {"help", 0, 0, 'h'},
        {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    const char *map_spec = NULL, *swiftkv_spec = NULL, *plan_dir = NULL, *info_dir = NULL;
    int json = 0, quiet = 0, layout_set = 0, c;
    convert_options o;
    convert_options_init(&o);
    o.tool = TOOL;
    o.version = KVFORGE_VERSION;
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "info") == 0) {
        if (argc < 3 || argv[2][0] == '-') return cli_usage_error(TOOL, "info needs a checkpoint folder");
        info_dir = argv[2];
        first = 3;
    }
    optind = first;
    while ((c = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case 'q': quiet = 1; break;
        case O_JSON: json = 1; break;
        case O_FORCE: o.force = 1; break;
        case O_MAP:
            if (map_spec) return cli_usage_error(TOOL, "--map given twice");
            map_spec = optarg;
            break;
        case O_SWIFTKV:
            if (swiftkv_spec) return cli_usage_error(TOOL, "--swiftkv given twice");
            swiftkv_spec = optarg;
            break;
        case O_PLAN: plan_dir = optarg; break;
        case O_INFO:
            if (info_dir) return cli_usage_error(TOOL, "one info folder at a time");
            info_dir = optarg;
            break;
        case O_KV_INIT:
            if (strcmp(optarg, "mean") == 0) o.kv_init = CONVERT_INIT_MEAN;
            else if (strcmp(optarg, "target") == 0) o.kv_init = CONVERT_INIT_TARGET;
            else return cli_usage_error(TOOL, "--kv-init must be mean or target, not '%s'", optarg);
            break;
        case O_LAYOUT:
            if (strcmp(optarg, "deploy") == 0) o.layout = CONVERT_LAYOUT_DEPLOY;
            else if (strcmp(optarg, "hf-swiftkv") == 0) o.layout = CONVERT_LAYOUT_HF_SWIFTKV;
            else return cli_usage_error(TOOL, "--layout must be deploy or hf-swiftkv, not '%s'", optarg);
            layout_set = 1;
            break;
        case O_DTYPE:
            if (strcmp(optarg, "f32") == 0) o.out_dtype = KV_F32;
            else if (strcmp(optarg, "f16") == 0) o.out_dtype = KV_F16;
            else if (strcmp(optarg, "bf16") == 0) o.out_dtype = KV_BF16;
            else return cli_usage_error(TOOL, "--dtype must be f32, f16 or bf16, not '%s'", optarg);
            break;
        case O_SHARD: {
            uint64_t b;
            if (cli_parse_size(optarg, &b)) return cli_usage_error(TOOL, "bad --shard-size '%s' (e.g. 2G, 500M, 0)", optarg);
            o.shard_bytes = (size_t)b;
            break;
        }
        default: return cli_usage_error(TOOL, "unknown option");
        }
    }
    int n_pos = argc - optind;
    if (info_dir) {
        if (n_pos || map_spec || swiftkv_spec || plan_dir) return cli_usage_error(TOOL, "info takes one folder and no transform");
        return run_info(info_dir, json);
    }
    if (plan_dir && n_pos) return cli_usage_error(TOOL, "--plan takes no DST_DIR");
    if (!plan_dir && n_pos != 2) return cli_usage_error(TOOL, "expected SRC_DIR DST_DIR (or --plan SRC_DIR, or info DIR)");
    if (!map_spec == !swiftkv_spec) return cli_usage_error(TOOL, "give exactly one of --map SPEC and --swiftkv l[,g]");
    const char *src_dir = plan_dir ? plan_dir : argv[optind];

    kv_error err = {0};
    convert_source src;
    if (convert_source_open(&src, src_dir, &err)) return cli_fail(TOOL, &err);
    int rc = map_spec ? kvmap_parse(&o.map, map_spec, src.cfg.n_layers, &err)
                      : kvmap_parse_swiftkv(&o.map, swiftkv_spec, src.cfg.n_layers, &err);
    if (rc) {
        convert_source_close(&src);
        return cli_fail(TOOL, &err);
    }
    if (layout_set && o.map.kind != KVMAP_SWIFTKV) {
        convert_source_close(&src);
        return cli_usage_error(TOOL, "--layout applies to SwiftKV only");
    }
    convert_plan plan;
    if (convert_plan_build(&plan, &src, &o, &err)) {
        convert_source_close(&src);
        return cli_fail(TOOL, &err);
    }
    int status = 0;
    if (plan_dir) {
        char *text = json ? convert_plan_json(&plan, NULL, 0) : convert_plan_text(&plan);
        if (text) {
            fputs(text, stdout);
            if (json) fputc('\n', stdout);
        } else {
            status = EXIT_FAIL;
            cli_error(TOOL, "out of memory");
        }
        free(text);
    } else {
        const char *dst = argv[optind + 1];
        progress_state ps;
        cli_progress_start(&ps.bar, TOOL, plan.out_bytes, quiet);
        plan.opt.progress = on_progress;
        plan.opt.progress_ctx = &ps;
        char *manifest = NULL;
        if (convert_run(&plan, dst, &manifest, &err)) {
            status = cli_fail(TOOL, &err);
        } else {
            cli_progress_finish(&ps.bar);
            if (json) printf("%s\n", manifest);
            else if (!quiet)
                printf("%s: wrote %s (%s): %d tensors, %llu bytes; KV cache %zu -> %zu bytes/token; parameters %llu -> %llu\n",
                       TOOL, dst, plan.opt.map.name, plan.n_out, (unsigned long long)plan.out_bytes, plan.kv_bytes_src,
                       plan.kv_bytes_out, (unsigned long long)plan.src_params, (unsigned long long)plan.out_params);
        }
        free(manifest);
    }
    convert_plan_free(&plan);
    convert_source_close(&src);
    return status;
}
