/* kvverify: parity and integrity checks. Exit 0 = verified, 1 = a check failed or could not run,
 * 2 = usage error. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "runtime/model_source.h"
#include "formats/bundle.h"
#include "kernels/backend.h"
#include "kernels/parity.h"
#include "verify/logits_parity.h"
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
           "  tensors A B             compare two checkpoints tensor by tensor (model\n"
           "                          directories or .safetensors files): same names and\n"
           "                          shapes; per tensor max|a-b| / max|b| within --rtol\n"
           "      --rtol X            relative difference allowed (default 1e-5; 0: equal)\n"
           "Common options:\n"
           "  --json                  machine-readable report on stdout\n"
           "  -h, --help              this help\n"
           "  --version               print the version\n");
}

enum { O_JSON = 256, O_SEED, O_ALLOW, O_ATOL, O_BA, O_BB, O_VERSION, O_FILTER, O_DEVICE,
       O_THREADS, O_EXACT, O_RTOL };
static const struct option opts[] = {
    {"json", 0, 0, O_JSON}, {"seed", 1, 0, O_SEED}, {"allow-no-device", 0, 0, O_ALLOW},
    {"atol", 1, 0, O_ATOL}, {"batch-a", 1, 0, O_BA}, {"batch-b", 1, 0, O_BB},
    {"filter", 1, 0, O_FILTER}, {"device", 1, 0, O_DEVICE}, {"threads", 1, 0, O_THREADS},
    {"exact", 0, 0, O_EXACT}, {"rtol", 1, 0, O_RTOL},
    {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};

typedef struct {
    int json, allow_no_device, batch_a, batch_b;
    int cpu, threads, exact; /* kernels --device cpu --threads N --exact */
    const char *filter;
    long seed;
    double atol;
    double rtol; /* tensors */
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
    int rc = o->cpu ? kv_backend_cpu_init(&dev, o->threads, &err)
                    : kv_backend_cuda_init(&dev, 0, &err);
    if (rc) {
        const char *status = rc == KV_EUNSUPPORTED ? "no CUDA device" : "error";
        if (o->json) {
            printf("{\"command\":\"kernels\",\"status\":\"%s\",\"device\":\"\",\"error\":\"", status);
            json_str(err.msg);
            printf("\",\"kernels\":[]}\n");
        } else {
            printf("kernels: %s\n", status);
        }
        if (rc == KV_EUNSUPPORTED && o->allow_no_device) {
            fprintf(stderr, "%s: note: %s%s (not verified)\n", TOOL,
                    strstr(err.msg, "no CUDA device found") ? "" : "no CUDA device found: ", err.msg);
            return 0;
        }
        if (rc == KV_EUNSUPPORTED && !strstr(err.msg, "no CUDA device found"))
            cli_error(TOOL, "kernels: no CUDA device found: %s", err.msg);
        else
            cli_error(TOOL, "kernels: %s", err.msg);
        return EXIT_FAIL;
    }
    /* the CUDA run compares with the CPU on every core; the CPU self-check with 1 thread */
    kv_backend_cpu_init(&ref, o->cpu ? 1 : 0, &err);
    kv_parity_report rep;
    const kv_parity_opts po = {.seed = (uint64_t)o->seed, .filter = o->filter,
                               .flags = o->exact ? KV_PARITY_EXACT : 0};
    rc = kv_parity_run(&rep, &dev, &ref, &po, &err);
    const char *status = rc == 0 ? "passed" : rc == KV_EMISMATCH ? "failed" : "error";
    if (rep.cases == 0 && rc == 0) status = "no cases";
    if (o->json) {
        printf("{\"command\":\"kernels\",\"status\":\"%s\",\"device\":\"", status);
        json_str(rep.device);
        printf("\",\"reference\":\"");
        json_str(rep.reference);
        printf("\",\"exact\":%s,\"cases\":%d,\"failed\":%d,\"kernels\":[", o->exact ? "true" : "false",
               rep.cases, rep.failed);
        for (int i = 0; i < rep.n; i++) {
            const kv_parity_result *r = &rep.r[i];
            printf("%s{\"name\":\"", i ? "," : "");
            json_str(r->name);
            printf("\",\"op\":\"%s\",\"n\":%zu,\"bad\":%zu,\"max_abs\":%.6g,\"max_rel\":%.6g,"
                   "\"atol\":%g,\"rtol\":%g,\"pass\":%s", r->op, r->n, r->bad, r->max_abs,
                   r->max_rel, r->atol, r->rtol, r->pass ? "true" : "false");
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
        if (!rc) printf(",\"tensors\":%d,\"chunks\":%d,\"zstd_chunks\":%d,\"files\":%d,\"raw_bytes\":%llu,\"bundle_bytes\":%llu",
                        r.n_tensors, r.n_chunks, r.n_zstd_chunks, r.n_files, (unsigned long long)r.raw_bytes, (unsigned long long)r.file_bytes);
        else printf(",\"error\":\"%s\"", kv_code_name(rc));
        printf("}\n");
    } else if (!rc) {
        printf("%s: ok: %d tensors in %d chunks (%d zstd), %d files; %llu raw bytes in %llu\n", path, r.n_tensors, r.n_chunks,
               r.n_zstd_chunks, r.n_files, (unsigned long long)r.raw_bytes, (unsigned long long)r.file_bytes);
    }
    return rc ? cli_fail(TOOL, &err) : 0;
}

static int cmd_logits(const verify_opts *o, const char *a, const char *b) {
    kv_logits_report r;
    kv_error err = {0};
    if (kv_logits_compare(&r, a, o->batch_a, b, o->batch_b, &err)) return cli_fail(TOOL, &err);
    int pass = r.max_abs <= o->atol;
    if (o->json)
        printf("{\"command\":\"logits\",\"positions\":%d,\"vocab\":%d,\"max_abs\":%.6g,\"worst_position\":%d,"
               "\"mean_kl\":%.6g,\"max_kl\":%.6g,\"argmax_agree\":%d,\"tokens_checked\":%s,\"atol\":%g,\"pass\":%s}\n",
               r.n_positions, r.vocab, r.max_abs, r.worst_position, r.mean_kl, r.max_kl, r.argmax_agree,
               r.tokens_checked ? "true" : "false", o->atol, pass ? "true" : "false");
    else
        printf("positions %d  vocab %d  max|a-b| %.3g (position %d)  KL mean %.3g max %.3g  argmax agree %d/%d%s\nlogits: %s\n",
               r.n_positions, r.vocab, r.max_abs, r.worst_position, r.mean_kl, r.max_kl, r.argmax_agree, r.n_positions,
               r.tokens_checked ? "  tokens equal" : "", pass ? "match" : "MISMATCH");
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
    if (!kv_model_path_resolve(a, dir, sizeof dir, &is_bundle, NULL) && is_bundle && !(a = cli_model_arg(TOOL, a, 0)))
        return EXIT_FAIL;
    if (!kv_model_path_resolve(b, dir, sizeof dir, &is_bundle, NULL) && is_bundle && !(b = cli_model_arg(TOOL, b, 0)))
        return EXIT_FAIL;
    if (kv_tensor_compare(&r, a, b, &err)) return cli_fail(TOOL, &err);
    const int pass = r.max_rel <= o->rtol;
    if (o->json) {
        printf("{\"command\":\"tensors\",\"tensors\":%d,\"differing\":%d,\"values\":%zu,"
               "\"max_abs\":%.6g,\"max_rel\":%.6g,\"worst\":\"", r.n_tensors, r.n_differing,
               r.n_values, r.max_abs, r.max_rel);
        json_str(r.worst);
        printf("\",\"rtol\":%g,\"pass\":%s}\n", o->rtol, pass ? "true" : "false");
    } else {
        printf("tensors %d (%zu values), %d differ; max|a-b| %.3g; max relative %.3g%s%s\n"
               "tensors: %s\n", r.n_tensors, r.n_values, r.n_differing, r.max_abs, r.max_rel,
               r.worst[0] ? " in " : "", r.worst, pass ? "match" : "MISMATCH");
    }
    if (!pass) {
        cli_error(TOOL, "%s vs %s: tensor '%s' differs by %.3g relative, over --rtol %g", a, b,
                  r.worst, r.max_rel, o->rtol);
        return EXIT_FAIL;
    }
    return 0;
}

int main(int argc, char **argv) {
    verify_opts o = {.seed = 1, .atol = 1e-4, .batch_a = -1, .batch_b = -1, .threads = 2,
                     .rtol = 1e-5};
    int c;
    long v;
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
            break;
        }
        case O_THREADS:
            if (cli_parse_int(optarg, 1, 256, &v)) return cli_usage_error(TOOL, "bad --threads '%s'", optarg);
            o.threads = (int)v;
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffL, &o.seed)) return cli_usage_error(TOOL, "bad --seed '%s'", optarg);
            break;
        case O_ATOL:
            if (cli_parse_double(optarg, &o.atol) || o.atol < 0) return cli_usage_error(TOOL, "bad --atol '%s'", optarg);
            break;
        case O_RTOL:
            if (cli_parse_double(optarg, &o.rtol) || !(o.rtol >= 0)) return cli_usage_error(TOOL, "bad --rtol '%s'", optarg);
            break;
        case O_BA: case O_BB:
            if (cli_parse_int(optarg, 0, 1 << 30, &v)) return cli_usage_error(TOOL, "bad batch row '%s'", optarg);
            *(c == O_BA ? &o.batch_a : &o.batch_b) = (int)v;
            break;
        default: return cli_bad_option(TOOL, c, argv);
        }
    }
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
    if (strcmp(cmd, "tensors") == 0) {
        if (n_args != 2) return cli_usage_error(TOOL, "tensors needs two checkpoints");
        return cmd_tensors(&o, args[0], args[1]);
    }
    return cli_usage_error(TOOL, "unknown command '%s'", cmd);
}
