/* kvsynth: writes a synthetic HF Llama checkpoint of any shape (reproducible Gaussian weights) */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "base/fileio.h"
#include "transform/synth/synth.h"

static const char *TOOL = "kvsynth";

static void usage(void) {
    printf(
        "Usage: kvsynth [OPTIONS] OUT_DIR\n"
        "Write a synthetic HF Llama (or Mistral, Qwen2) checkpoint (config.json, safetensors,\n"
        "tokenizer.json) with reproducible Gaussian weights (std 0.02; norms 1.0) for demos,\n"
        "tests and benchmarks.\n\n"
        "  --preset NAME        start from a named shape: %s (default tiny)\n"
        "  --layers N           num_hidden_layers\n"
        "  --hidden N           hidden_size\n"
        "  --heads N            num_attention_heads\n"
        "  --kv-heads N         num_key_value_heads (GQA)\n"
        "  --head-dim N         head_dim (default hidden/heads when --hidden or --heads is given)\n"
        "  --ffn N              intermediate_size\n"
        "  --vocab N            vocab_size (>= 300; the tokenizer has exactly this many tokens)\n"
        "  --max-pos N          max_position_embeddings\n"
        "  --tied / --untied    tie_word_embeddings\n"
        "  --dtype f32|f16|bf16 weight type\n"
        "  --shard-size SIZE    shard the weights (e.g. 500M); default one file\n"
        "  --seed N             random seed (default 1)\n"
        "  --arch NAME          config family: llama (default), mistral (MistralForCausalLM),\n"
        "                       qwen2 (Qwen2ForCausalLM: q/k/v biases, use_sliding_window false)\n"
        "  --sliding-window N   mistral/qwen2: the sliding_window field (default: mistral null,\n"
        "                       qwen2 max-pos); below max-pos it is a sliding-window model\n"
        "                       (Mistral: every layer; Qwen2: with --window-layers)\n"
        "  --window-layers K    qwen2: use_sliding_window true, max_window_layers K (layers\n"
        "                       >= K attend over the window)\n"
        "  --rope-scaling JSON  the rope_scaling object, e.g. '{\"rope_type\": \"yarn\",\n"
        "                       \"factor\": 4}' (checked: kvforge must read it)\n"
        "  --force              write into a non-empty OUT_DIR\n"
        "  -h, --help           this help\n"
        "  --version            print the version\n",
        synth_preset_names());
}

int main(int argc, char **argv) {
    enum {
        O_PRESET = 256,
        O_LAYERS,
        O_HIDDEN,
        O_HEADS,
        O_KV_HEADS,
        O_HEAD_DIM,
        O_FFN,
        O_VOCAB,
        O_MAXPOS,
        O_TIED,
        O_UNTIED,
        O_DTYPE,
        O_SHARD,
        O_SEED,
        O_FORCE,
        O_VERSION,
        O_ARCH,
        O_WINDOW,
        O_ROPE_SCALING,
        O_WINDOW_LAYERS
    };
    static const struct option opts[] = {{"preset", 1, 0, O_PRESET},
                                         {"layers", 1, 0, O_LAYERS},
                                         {"hidden", 1, 0, O_HIDDEN},
                                         {"heads", 1, 0, O_HEADS},
                                         {"kv-heads", 1, 0, O_KV_HEADS},
                                         {"head-dim", 1, 0, O_HEAD_DIM},
                                         {"ffn", 1, 0, O_FFN},
                                         {"vocab", 1, 0, O_VOCAB},
                                         {"max-pos", 1, 0, O_MAXPOS},
                                         {"tied", 0, 0, O_TIED},
                                         {"untied", 0, 0, O_UNTIED},
                                         {"dtype", 1, 0, O_DTYPE},
                                         {"shard-size", 1, 0, O_SHARD},
                                         {"seed", 1, 0, O_SEED},
                                         {"force", 0, 0, O_FORCE},
                                         {"help", 0, 0, 'h'},
                                         {"version", 0, 0, O_VERSION},
                                         {"arch", 1, 0, O_ARCH},
                                         {"sliding-window", 1, 0, O_WINDOW},
                                         {"window-layers", 1, 0, O_WINDOW_LAYERS},
                                         {"rope-scaling", 1, 0, O_ROPE_SCALING},
                                         {0, 0, 0, 0}};
    synth_spec s;
    synth_preset(&s, "tiny");
    int force = 0, head_dim_set = 0, shape_set = 0, c;
    long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        int *field = NULL;
        long lo = 1, hi = 1 << 30;
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case O_PRESET:
            if (synth_preset(&s, optarg))
                return cli_usage_error(TOOL, "unknown preset '%s' (%s)", optarg,
                                       synth_preset_names());
            continue;
        case O_LAYERS:
            field = &s.n_layers;
            hi = 1024;
            break;
        case O_HIDDEN:
            field = &s.hidden;
            shape_set = 1;
            break;
        case O_HEADS:
            field = &s.n_heads;
            shape_set = 1;
            break;
        case O_KV_HEADS: field = &s.n_kv_heads; break;
        case O_HEAD_DIM:
            field = &s.head_dim;
            head_dim_set = 1;
            break;
        case O_FFN: field = &s.ffn; break;
        case O_VOCAB:
            field = &s.vocab;
            lo = 300;
            break;
        case O_MAXPOS: field = &s.max_pos; break;
        case O_TIED: s.tied = 1; continue;
        case O_UNTIED: s.tied = 0; continue;
        case O_FORCE: force = 1; continue;
        case O_DTYPE:
            if (strcmp(optarg, "f32") == 0) s.dtype = KV_F32;
            else if (strcmp(optarg, "f16") == 0) s.dtype = KV_F16;
            else if (strcmp(optarg, "bf16") == 0) s.dtype = KV_BF16;
            else return cli_usage_error(TOOL, "--dtype must be f32, f16 or bf16");
            continue;
        case O_SHARD: {
            uint64_t b;
            if (cli_parse_size(optarg, &b) || b == 0)
                return cli_usage_error(TOOL, "bad --shard-size '%s'", optarg);
            s.shard_bytes = (size_t)b;
            continue;
        }
        case O_ARCH:
            if (strcmp(optarg, "llama") == 0) s.arch = SYNTH_LLAMA;
            else if (strcmp(optarg, "mistral") == 0) s.arch = SYNTH_MISTRAL;
            else if (strcmp(optarg, "qwen2") == 0) s.arch = SYNTH_QWEN2;
            else return cli_usage_error(TOOL, "--arch must be llama, mistral or qwen2");
            continue;
        case O_ROPE_SCALING: s.rope_scaling = optarg; continue;
        case O_WINDOW:
            if (cli_parse_int(optarg, 1, 1 << 30, &v))
                return cli_usage_error(TOOL, "bad --sliding-window '%s'", optarg);
            s.sliding_window = (int)v;
            continue;
        case O_WINDOW_LAYERS:
            if (cli_parse_int(optarg, 0, 1 << 20, &v))
                return cli_usage_error(TOOL, "bad --window-layers '%s'", optarg);
            s.window_layers = (int)v + 1; /* 0 stays "not given" */
            continue;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffL, &v))
                return cli_usage_error(TOOL, "bad --seed '%s'", optarg);
            s.seed = (uint64_t)v;
            continue;
        default: return cli_bad_option(TOOL, c, argv);
        }
        if (cli_parse_int(optarg, lo, hi, &v))
            return cli_usage_error(TOOL, "bad value '%s' for --%s", optarg,
                                   opts[c - O_PRESET].name);
        *field = (int)v;
    }
    if (optind != argc - 1) return cli_usage_error(TOOL, "expected one OUT_DIR");
    if (shape_set && !head_dim_set) {
        if (s.hidden % s.n_heads)
            return cli_usage_error(TOOL, "hidden %d not divisible by heads %d; give --head-dim",
                                   s.hidden, s.n_heads);
        s.head_dim = s.hidden / s.n_heads;
    }
    if (s.n_kv_heads > s.n_heads) s.n_kv_heads = s.n_heads;
    if (s.sliding_window && s.arch == SYNTH_LLAMA)
        return cli_usage_error(TOOL, "--sliding-window needs --arch mistral or qwen2");
    if (s.window_layers && s.arch != SYNTH_QWEN2)
        return cli_usage_error(TOOL, "--window-layers needs --arch qwen2");
    const char *dir = argv[optind];
    if (!force && !kv_dir_is_empty(dir)) {
        cli_error(TOOL, "%s: not empty (use --force)", dir);
        return EXIT_FAIL;
    }
    kv_error err = {0};
    if (synth_write(dir, &s, &err)) return cli_fail(TOOL, &err);
    fprintf(stderr, "kvsynth: wrote %s (L=%d H=%d heads %d/%d hd %d ffn %d vocab %d %s%s)\n", dir,
            s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn, s.vocab,
            s.dtype == KV_F32   ? "F32"
            : s.dtype == KV_F16 ? "F16"
                                : "BF16",
            s.tied ? ", tied" : "");
    return 0;
}
