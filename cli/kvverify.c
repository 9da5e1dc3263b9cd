/* kvverify: parity and integrity checks. Exit 0 = verified, 1 = a check failed or could not run,
 * 2 = usage error. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "base/fileio.h"
#include "formats/bundle.h"
#include "formats/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/parity.h"
#include "runtime/model_source.h"
#include "verify/logits_parity.h"
#include "verify/model_parity.h"
#include "verify/tensor_compare.h"

static const char *TOOL = "kvverify";

static void usage(void) {
    printf("Usage: kvverify COMMAND [OPTIONS] ...\n"
           "Parity and integrity checks for kvforge artifacts; exit 0 when verified.\n\n"
           "Commands:\n"
           "  kernels                 every case of the parity table: each op of the CUDA\n"
           "                          backend against the CPU reference (needs a GPU)\n"
           "      --seed N            random inputs seed (default 1)\n"
           "      --filter TEXT       only the cases whose name contains TEXT\n"
           "      --allow-no-device   exit 0 (status no CUDA device) when there is no GPU\n"
           "      --device cpu        check the table itself without a GPU: the CPU backend\n"
           "                          at --threads N (default 2) against 1 thread\n"
           "      --exact             pass only on equal bits (tolerances ignored)\n"
           "  bundle FILE.kvb         structure, manifest and every tensor/file checksum\n"
           "  logits A.st B.st        compare two logits dumps (kvrun --logits-out, goldens)\n"
           "      --atol X            max |a-b| allowed (default 1e-4)\n"
           "      --batch-a N, --batch-b N   row of a [B, T, V] file\n"
           "  model A [B]             logits of model A on the CPU against A on --device cuda\n"
           "                          (one model), or teacher A against student B on --device\n"
           "                          (cpu by default): max|a-b|, KL, top-1 agreement, ppl\n"
           "      --text FILE         text to run (default: a built-in paragraph), tokenized\n"
           "                          with A's tokenizer, split into windows\n"
           "      --ctx N             window length in tokens (default 128)\n"
           "      --max-windows N     at most N windows (default 8; 0: all)\n"
           "      --kv-dtype f32|bf16 KV-cache element type (default f32)\n"
           "      --prefill MODE      iterative[:N] or sequential (maps with upward layers)\n"
           "      --atol X            fail when max|a-b| > X (one model: default 1e-3)\n"
           "      --max-kl X          fail when the mean KL(A || B) per position > X nats\n"
           "      --min-top1 F        fail when top-1 agreement < F (a fraction, 0..1)\n"
           "      --max-ppl-delta F   fail when ppl(B) / ppl(A) - 1 > F\n"
           "      --threads N         CPU threads (default 2)\n"
           "      --max-memory SIZE   memory budget (e.g. 4G; default $KVFORGE_MAX_MEMORY,\n"
           "                          else physical RAM): a plan over it is refused\n"
           "  tensors A B             compare two checkpoints tensor by tensor (model\n"
           "                          directories or .safetensors files): same names and\n"
           "                          shapes; per tensor max|a-b| / max|b| within --rtol\n"
           "      --rtol X            relative difference allowed (default 1e-5; 0: equal)\n"
           "Common options:\n"
           "  --json                  machine-readable report on stdout\n"
           "  -h, --help              this help\n"
           "  --version               print the version\n");
}

enum {
    O_JSON = 256,
    O_SEED,
    O_ALLOW,
    O_ATOL,
    O_BA,
    O_BB,
    O_VERSION,
    O_FILTER,
    O_DEVICE,
    O_THREADS,
    O_EXACT,
    O_RTOL,
    O_TEXT,
    O_CTX,
    O_WINDOWS,
    O_KVDTYPE,
    O_PREFILL,
    O_MAXKL,
    O_MINTOP1,
    O_MAXPPL,
    O_MAX_MEMORY
};
static const struct option opts[] = {{"json", 0, 0, O_JSON},
                                     {"seed", 1, 0, O_SEED},
                                     {"allow-no-device", 0, 0, O_ALLOW},
                                     {"atol", 1, 0, O_ATOL},
                                     {"batch-a", 1, 0, O_BA},
                                     {"batch-b", 1, 0, O_BB},
                                     {"filter", 1, 0, O_FILTER},
                                     {"device", 1, 0, O_DEVICE},
                                     {"threads", 1, 0, O_THREADS},
                                     {"exact", 0, 0, O_EXACT},
                                     {"rtol", 1, 0, O_RTOL},
                                     {"text", 1, 0, O_TEXT},
                                     {"ctx", 1, 0, O_CTX},
                                     {"max-windows", 1, 0, O_WINDOWS},
                                     {"kv-dtype", 1, 0, O_KVDTYPE},
                                     {"prefill", 1, 0, O_PREFILL},
                                     {"max-kl", 1, 0, O_MAXKL},
                                     {"min-top1", 1, 0, O_MINTOP1},
                                     {"max-ppl-delta", 1, 0, O_MAXPPL},
                                     {"max-memory", 1, 0, O_MAX_MEMORY},
                                     {"help", 0, 0, 'h'},
                                     {"version", 0, 0, O_VERSION},
                                     {0, 0, 0, 0}};

typedef struct {
    int json, allow_no_device, batch_a, batch_b;
    int cpu, threads, exact; /* kernels --device cpu --threads N --exact */
    const char *filter;
    long seed;
    double atol;
    double rtol; /* tensors */
    /* model */
    const char *device, *text_path;
    int atol_set, ctx, max_windows;
    kv_dtype kv_dtype;
    kv_prefill prefill;
    double max_kl, min_top1, max_ppl_delta; /* < 0: no gate */
} verify_opts;

/* JSON string body: the names and messages here are plain text, but quote and escape anyway */
static void json_str(const char *s) {
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
}

static int cmd_kernels(const verify_opts *o) {
    kv_backend dev = {0}, ref = {0};
    kv_error err = {0};
    int rc =
        o->cpu ? kv_backend_cpu_init(&dev, o->threads, &err) : kv_backend_cuda_init(&dev, 0, &err);
    if (rc) {
        const char *status = rc == KV_EUNSUPPORTED ? "no CUDA device" : "error";
        if (o->json) {
            printf("{\"command\":\"kernels\",\"status\":\"%s\",\"device\":\"\",\"error\":\"",
                   status);
            json_str(err.msg);
            printf("\",\"kernels\":[]}\n");
        } else {
            printf("kernels: %s\n", status);
        }
        if (rc == KV_EUNSUPPORTED && o->allow_no_device) {
            fprintf(
                stderr, "%s: note: %s%s (not verified)\n", TOOL,
                strstr(err.msg, "no CUDA device found") ? "" : "no CUDA device found: ", err.msg);
            return 0;
        }
        if (rc == KV_EUNSUPPORTED && !strstr(err.msg, "no CUDA device found"))
            cli_error(TOOL, "kernels: no CUDA device found: %s", err.msg);
        else cli_error(TOOL, "kernels: %s", err.msg);
        return EXIT_FAIL;
    }
    /* the CUDA run compares with the CPU on every core; the CPU self-check with 1 thread */
    kv_backend_cpu_init(&ref, o->cpu ? 1 : 0, &err);
    kv_parity_report rep;
    const kv_parity_opts po = {
        .seed = (uint64_t)o->seed, .filter = o->filter, .flags = o->exact ? KV_PARITY_EXACT : 0};
    rc = kv_parity_run(&rep, &dev, &ref, &po, &err);
    const char *status = rc == 0 ? "passed" : rc == KV_EMISMATCH ? "failed" : "error";
    if (rep.cases == 0 && rc == 0) status = "no cases";
    if (o->json) {
        printf("{\"command\":\"kernels\",\"status\":\"%s\",\"device\":\"", status);
        json_str(rep.device);
        printf("\",\"reference\":\"");
        json_str(rep.reference);
        printf("\",\"exact\":%s,\"cases\":%d,\"failed\":%d,\"kernels\":[",
               o->exact ? "true" : "false", rep.cases, rep.failed);
        for (int i = 0; i < rep.n; i++) {
            const kv_parity_result *r = &rep.r[i];
            printf("%s{\"name\":\"", i ? "," : "");
            json_str(r->name);
            printf("\",\"op\":\"%s\",\"n\":%zu,\"bad\":%zu,\"max_abs\":%.6g,\"max_rel\":%.6g,"
                   "\"atol\":%g,\"rtol\":%g,\"pass\":%s",
                   r->op, r->n, r->bad, r->max_abs, r->max_rel, r->atol, r->rtol,
                   r->pass ? "true" : "false");
            if (r->note[0]) {
                printf(",\"note\":\"");
                json_str(r->note);
                printf("\"");
            }
            printf("}");
        }
        printf("]}\n");
    } else {
        printf("device: %s\nreference: %s%s\n", rep.device, rep.reference,
               o->exact ? " (bit for bit)" : "");
        for (int i = 0; i < rep.n; i++) {
            const kv_parity_result *r = &rep.r[i];
            printf("%-62s %s  max_abs %.3g  max_rel %.3g  (n=%zu)%s%s\n", r->name,
                   r->pass ? "ok  " : "FAIL", r->max_abs, r->max_rel, r->n, r->note[0] ? "  " : "",
                   r->note);
        }
        printf("kernels: %s (%d cases, %d of %d results failed)\n", status, rep.cases, rep.failed,
               rep.n);
    }
    kv_parity_report_free(&rep);
    kv_backend_free(&dev);
    kv_backend_free(&ref);
    if (rc) return cli_fail(TOOL, &err);
    if (!strcmp(status, "no cases")) {
        cli_error(TOOL, "kernels: no case matches --filter '%s'", o->filter ? o->filter : "");
        return EXIT_FAIL;
    }
    return 0;
}

static int cmd_bundle(const verify_opts *o, const char *path) {
    kv_bundle_report r;
    kv_error err = {0};
    int rc = kv_bundle_verify(path, &r, &err);
    if (o->json) {
        printf("{\"command\":\"bundle\",\"file\":\"%s\",\"ok\":%s", path, rc ? "false" : "true");
        if (!rc)
            printf(",\"tensors\":%d,\"chunks\":%d,\"zstd_chunks\":%d,\"files\":%d,\"raw_bytes\":%"
                   "llu,\"bundle_bytes\":%llu",
                   r.n_tensors, r.n_chunks, r.n_zstd_chunks, r.n_files,
                   (unsigned long long)r.raw_bytes, (unsigned long long)r.file_bytes);
        else printf(",\"error\":\"%s\"", kv_code_name(rc));
        printf("}\n");
    } else if (!rc) {
        printf("%s: ok: %d tensors in %d chunks (%d zstd), %d files; %llu raw bytes in %llu\n",
               path, r.n_tensors, r.n_chunks, r.n_zstd_chunks, r.n_files,
               (unsigned long long)r.raw_bytes, (unsigned long long)r.file_bytes);
    }
    return rc ? cli_fail(TOOL, &err) : 0;
}

static int cmd_logits(const verify_opts *o, const char *a, const char *b) {
    kv_logits_report r;
    kv_error err = {0};
    if (kv_logits_compare(&r, a, o->batch_a, b, o->batch_b, &err)) return cli_fail(TOOL, &err);
    int pass = r.max_abs <= o->atol;
    if (o->json)
        printf("{\"command\":\"logits\",\"positions\":%d,\"vocab\":%d,\"max_abs\":%.6g,\"worst_"
               "position\":%d,"
               "\"mean_kl\":%.6g,\"max_kl\":%.6g,\"argmax_agree\":%d,\"tokens_checked\":%s,"
               "\"atol\":%g,\"pass\":%s}\n",
               r.n_positions, r.vocab, r.max_abs, r.worst_position, r.mean_kl, r.max_kl,
               r.argmax_agree, r.tokens_checked ? "true" : "false", o->atol,
               pass ? "true" : "false");
    else
        printf("positions %d  vocab %d  max|a-b| %.3g (position %d)  KL mean %.3g max %.3g  argmax "
               "agree %d/%d%s\nlogits: %s\n",
               r.n_positions, r.vocab, r.max_abs, r.worst_position, r.mean_kl, r.max_kl,
               r.argmax_agree, r.n_positions, r.tokens_checked ? "  tokens equal" : "",
               pass ? "match" : "MISMATCH");
    if (!pass) {
        cli_error(TOOL, "%s vs %s: max |a-b| %.3g exceeds --atol %g", a, b, r.max_abs, o->atol);
        return EXIT_FAIL;
    }
    return 0;
}

static int cmd_tensors(const verify_opts *o, const char *a, const char *b) {
    kv_tensor_report r;
    kv_error err = {0};
    /* a bundle is compared as its unpacked directory */
    char dir[4096];
    int is_bundle = 0;
    if (!kv_model_path_resolve(a, dir, sizeof dir, &is_bundle, NULL) && is_bundle &&
        !(a = cli_model_arg(TOOL, a, 0)))
        return EXIT_FAIL;
    if (!kv_model_path_resolve(b, dir, sizeof dir, &is_bundle, NULL) && is_bundle &&
        !(b = cli_model_arg(TOOL, b, 0)))
        return EXIT_FAIL;
    if (kv_tensor_compare(&r, a, b, &err)) return cli_fail(TOOL, &err);
    const int pass = r.max_rel <= o->rtol;
    if (o->json) {
        printf("{\"command\":\"tensors\",\"tensors\":%d,\"differing\":%d,\"values\":%zu,"
               "\"max_abs\":%.6g,\"max_rel\":%.6g,\"worst\":\"",
               r.n_tensors, r.n_differing, r.n_values, r.max_abs, r.max_rel);
        json_str(r.worst);
        printf("\",\"rtol\":%g,\"pass\":%s}\n", o->rtol, pass ? "true" : "false");
    } else {
        printf("tensors %d (%zu values), %d differ; max|a-b| %.3g; max relative %.3g%s%s\n"
               "tensors: %s\n",
               r.n_tensors, r.n_values, r.n_differing, r.max_abs, r.max_rel,
               r.worst[0] ? " in " : "", r.worst, pass ? "match" : "MISMATCH");
    }
    if (!pass) {
        cli_error(TOOL, "%s vs %s: tensor '%s' differs by %.3g relative, over --rtol %g", a, b,
                  r.worst, r.max_rel, o->rtol);
        return EXIT_FAIL;
    }
    return 0;
}

/* ---- model ------------------------------------------------------------------------------- */

static const char DEFAULT_TEXT[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun "
    "with her dog, Max. One day, Lily and Max went to the park. They saw a big tree with red "
    "apples. Lily wanted an apple, but the tree was too tall. Max barked and ran around the tree. "
    "Then a kind old man came and picked an apple for Lily. She said thank you and shared the "
    "apple with Max. They were very happy and went home to tell Mom about their fun day.";

typedef struct {
    kv_model m;
    kv_bundle *bundle;
    int open;
} opened_model;

static int open_one(opened_model *om, const char *path, int threads, kv_error *err) {
    int rc = kv_model_open_path(&om->m, &om->bundle, path, threads, err);
    om->open = rc == 0;
    return rc;
}

static void close_one(opened_model *om) {
    if (!om->open) return;
    kv_model_free(&om->m);
    if (om->bundle) kv_bundle_close(om->bundle);
    om->open = 0;
}

/* the text's ids, without BOS (the windows open with it) */
static int model_tokens(const verify_opts *o, const char *path, const opened_model *a, int **ids,
                        int *n, kv_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = 0;
    if (o->text_path && (rc = kv_read_file(o->text_path, &text, &len, (size_t)1 << 30, err)))
        return rc;
    kv_tokenizer *tk = NULL;
    if (!(rc = kv_tokenizer_open_path(&tk, a->bundle, path, err)))
        rc = kv_tokenizer_encode(tk, text ? text : DEFAULT_TEXT, text ? len : strlen(DEFAULT_TEXT),
                                 0, ids, n, err);
    kv_tokenizer_free(tk);
    free(text);
    return rc;
}

static int cmd_model(const verify_opts *o, const char *path_a, const char *path_b) {
    kv_error err = {0};
    if (!(path_a = cli_model_arg(TOOL, path_a, 1)) ||
        (path_b && !(path_b = cli_model_arg(TOOL, path_b, 1))))
        return EXIT_FAIL;
    const char *device = o->device ? o->device : path_b ? "cpu" : "cuda";
    kv_device dev_kind;
    kv_device_parse(&dev_kind, device, &err);
    if (!path_b && dev_kind == KV_DEVICE_CPU)
        return cli_usage_error(TOOL, "model with one model compares the CPU with --device cuda; "
                                     "give a second model to compare two models on the CPU");
    kv_backend ref = {0}, dev = {0};
    opened_model a = {0}, b = {0};
    int *ids = NULL, n = 0, rc, status = EXIT_FAIL;
    /* one model: A on the CPU (reference) and A on the device; two: both on the device */
    if ((rc = kv_backend_init(&dev, device, o->threads, &err))) {
        if (rc == KV_EUNSUPPORTED)
            cli_error(
                TOOL, "model: %s%s (not verified)",
                strstr(err.msg, "no CUDA device found") ? "" : "no CUDA device found: ", err.msg);
        else cli_fail(TOOL, &err);
        return EXIT_FAIL;
    }
    if (!path_b && (rc = kv_backend_cpu_init(&ref, o->threads, &err))) goto out;
    if ((rc = open_one(&a, path_a, o->threads, &err))) goto out;
    if (path_b && (rc = open_one(&b, path_b, o->threads, &err))) goto out;
    if ((rc = model_tokens(o, path_a, &a, &ids, &n, &err))) goto out;
    const kv_model_parity_opts po = {.ctx = o->ctx,
                                     .bos = a.m.cfg.bos_token_id,
                                     .max_windows = o->max_windows,
                                     .kv_cache_dtype = o->kv_dtype,
                                     .prefill = o->prefill};
    kv_model_parity r;
    if (path_b) rc = kv_model_parity_run(&r, &dev, &a.m, &dev, &b.m, ids, n, &po, &err);
    else rc = kv_model_parity_run(&r, &ref, &a.m, &dev, &a.m, ids, n, &po, &err);
    if (rc) goto out;
    const kv_logits_report *l = &r.logits;
    const double atol = o->atol_set ? o->atol : path_b ? -1 : 1e-3;
    const double top1 = l->n_positions ? (double)l->argmax_agree / l->n_positions : 0;
    const double ppl_a = exp(r.nll_a), ppl_b = exp(r.nll_b), ppl_delta = ppl_b / ppl_a - 1;
    const int fail_abs = atol >= 0 && !(l->max_abs <= atol);
    const int fail_kl = o->max_kl >= 0 && !(l->mean_kl <= o->max_kl);
    const int fail_top1 = o->min_top1 >= 0 && !(top1 >= o->min_top1);
    const int fail_ppl = o->max_ppl_delta >= 0 && !(ppl_delta <= o->max_ppl_delta);
    const int gated = atol >= 0 || o->max_kl >= 0 || o->min_top1 >= 0 || o->max_ppl_delta >= 0;
    const int pass = !(fail_abs || fail_kl || fail_top1 || fail_ppl);
    const char *name_a = path_b ? "cpu" : ref.name, *name_b = dev.name;
    if (path_b) name_a = dev.name;
    if (o->json) {
        printf("{\"command\":\"model\",\"a\":\"");
        json_str(path_a);
        printf("\",\"b\":\"");
        json_str(path_b ? path_b : path_a);
        printf("\",\"device_a\":\"");
        json_str(name_a);
        printf("\",\"device_b\":\"");
        json_str(name_b);
        printf("\",\"windows\":%d,\"ctx\":%d,\"positions\":%d,\"vocab\":%d,\"max_abs\":%.6g,"
               "\"worst_position\":%d,\"mean_kl\":%.6g,\"max_kl\":%.6g,\"top1_agree\":%d,"
               "\"top1\":%.6f,\"ppl_a\":%.6g,\"ppl_b\":%.6g,\"ppl_delta\":%.6g,\"gated\":%s,"
               "\"pass\":%s}\n",
               r.windows, l->n_positions / (r.windows ? r.windows : 1), l->n_positions, l->vocab,
               l->max_abs, l->worst_position, l->mean_kl, l->max_kl, l->argmax_agree, top1, ppl_a,
               ppl_b, ppl_delta, gated ? "true" : "false", pass ? "true" : "false");
    } else {
        printf("A %s (%s)\nB %s (%s)\n", path_a, name_a, path_b ? path_b : path_a, name_b);
        printf("windows     %d x %d tokens (%d positions)\n", r.windows,
               l->n_positions / (r.windows ? r.windows : 1), l->n_positions);
        printf("max|a-b|    %.4g (position %d)%s\n", l->max_abs, l->worst_position,
               fail_abs ? "  over --atol" : "");
        printf("KL(A||B)    mean %.4g  max %.4g nats%s\n", l->mean_kl, l->max_kl,
               fail_kl ? "  over --max-kl" : "");
        printf("top-1       %.2f%% (%d/%d)%s\n", 100 * top1, l->argmax_agree, l->n_positions,
               fail_top1 ? "  under --min-top1" : "");
        printf("ppl         A %.4f  B %.4f  (%+.2f%%)%s\n", ppl_a, ppl_b, 100 * ppl_delta,
               fail_ppl ? "  over --max-ppl-delta" : "");
        printf("model: %s\n", !gated ? "reported (no tolerance given)" : pass ? "PASS" : "FAIL");
    }
    status = pass ? 0 : EXIT_FAIL;
    if (!pass)
        cli_error(TOOL, "model: %s vs %s out of tolerance", path_a, path_b ? path_b : device);
out:
    if (rc) cli_fail(TOOL, &err);
    free(ids);
    close_one(&a);
    close_one(&b);
    kv_backend_free(&dev);
    if (!path_b) kv_backend_free(&ref);
    return status;
}

int main(int argc, char **argv) {
    verify_opts o = {.seed = 1,
                     .atol = 1e-4,
                     .batch_a = -1,
                     .batch_b = -1,
                     .threads = 2,
                     .rtol = 1e-5,
                     .ctx = 128,
                     .max_windows = 8,
                     .kv_dtype = KV_F32,
                     .max_kl = -1,
                     .min_top1 = -1,
                     .max_ppl_delta = -1};
    int c;
    long v;
    const char *max_memory = NULL;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case O_JSON: o.json = 1; break;
        case O_ALLOW: o.allow_no_device = 1; break;
        case O_FILTER: o.filter = optarg; break;
        case O_EXACT: o.exact = 1; break;
        case O_DEVICE: {
            kv_device d;
            kv_error e = {0};
            if (kv_device_parse(&d, optarg, &e)) return cli_usage_error(TOOL, "%s", e.msg);
            o.cpu = d == KV_DEVICE_CPU;
            o.device = optarg;
            break;
        }
        case O_THREADS:
            if (cli_parse_int(optarg, 1, 256, &v))
                return cli_usage_error(TOOL, "bad --threads '%s'", optarg);
            o.threads = (int)v;
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffL, &o.seed))
                return cli_usage_error(TOOL, "bad --seed '%s'", optarg);
            break;
        case O_ATOL:
            if (cli_parse_double(optarg, &o.atol) || o.atol < 0)
                return cli_usage_error(TOOL, "bad --atol '%s'", optarg);
            o.atol_set = 1;
            break;
        case O_TEXT: o.text_path = optarg; break;
        case O_MAX_MEMORY: max_memory = optarg; break;
        case O_CTX:
            if (cli_parse_int(optarg, 2, 1 << 20, &v))
                return cli_usage_error(TOOL, "bad --ctx '%s' (2..1048576)", optarg);
            o.ctx = (int)v;
            break;
        case O_WINDOWS:
            if (cli_parse_int(optarg, 0, 1 << 20, &v))
                return cli_usage_error(TOOL, "bad --max-windows '%s'", optarg);
            o.max_windows = (int)v;
            break;
        case O_KVDTYPE:
            if (cli_parse_float_dtype(optarg, &o.kv_dtype) || o.kv_dtype == KV_F16)
                return cli_usage_error(TOOL, "bad --kv-dtype '%s' (f32 or bf16)", optarg);
            break;
        case O_PREFILL: {
            kv_error e = {0};
            if (kv_prefill_parse(&o.prefill, optarg, &e)) return cli_usage_error(TOOL, "%s", e.msg);
            break;
        }
        case O_MAXKL:
        case O_MINTOP1:
        case O_MAXPPL: {
            double *dst = c == O_MAXKL     ? &o.max_kl
                          : c == O_MINTOP1 ? &o.min_top1
                                           : &o.max_ppl_delta;
            if (cli_parse_double(optarg, dst) || !(*dst >= 0) || (c == O_MINTOP1 && *dst > 1))
                return cli_usage_error(TOOL, "bad value '%s' for --%s", optarg,
                                       c == O_MAXKL     ? "max-kl"
                                       : c == O_MINTOP1 ? "min-top1"
                                                        : "max-ppl-delta");
            break;
        }
        case O_RTOL:
            if (cli_parse_double(optarg, &o.rtol) || !(o.rtol >= 0))
                return cli_usage_error(TOOL, "bad --rtol '%s'", optarg);
            break;
        case O_BA:
        case O_BB:
            if (cli_parse_int(optarg, 0, 1 << 30, &v))
                return cli_usage_error(TOOL, "bad batch row '%s'", optarg);
            *(c == O_BA ? &o.batch_a : &o.batch_b) = (int)v;
            break;
        default: return cli_bad_option(TOOL, c, argv);
        }
    }
    if (cli_memory_budget(TOOL, max_memory)) return EXIT_USAGE;
    int n_args = argc - optind;
    if (n_args < 1) return cli_usage_error(TOOL, "missing COMMAND");
    const char *cmd = argv[optind];
    char **args = argv + optind + 1;
    n_args--;
    if (strcmp(cmd, "kernels") == 0) {
        if (n_args) return cli_usage_error(TOOL, "kernels takes no arguments");
        return cmd_kernels(&o);
    }
    if (strcmp(cmd, "bundle") == 0) {
        if (n_args != 1) return cli_usage_error(TOOL, "bundle needs one FILE.kvb");
        return cmd_bundle(&o, args[0]);
    }
    if (strcmp(cmd, "logits") == 0) {
        if (n_args != 2) return cli_usage_error(TOOL, "logits needs two files");
        return cmd_logits(&o, args[0], args[1]);
    }
    if (strcmp(cmd, "model") == 0) {
        if (n_args < 1 || n_args > 2) return cli_usage_error(TOOL, "model needs one or two models");
        return cmd_model(&o, args[0], n_args == 2 ? args[1] : NULL);
    }
    if (strcmp(cmd, "tensors") == 0) {
        if (n_args != 2) return cli_usage_error(TOOL, "tensors needs two checkpoints");
        return cmd_tensors(&o, args[0], args[1]);
    }
    return cli_usage_error(TOOL, "unknown command '%s'", cmd);
}
