#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/fileio.h"
#include "base/membudget.h"
#include "formats/bundle.h"
#include "runtime/model_source.h"

/* Every tool starts with SIGXFSZ ignored: past a file-size limit (ulimit -f) a write then fails
 * with EFBIG and the normal error path names the file and removes its temporary, instead of the
 * signal killing the process mid-write. Runs before main in each tool (cli.c links into all). */
__attribute__((constructor)) static void cli_ignore_sigxfsz(void) { signal(SIGXFSZ, SIG_IGN); }

void cli_error(const char *tool, const char *fmt, ...) {
    /* one write of the whole line: the lines of processes sharing stderr (mpirun) do not mix */
    char line[2048];
    int n = snprintf(line, sizeof line, "%s: error: ", tool);
    if (n < 0 || (size_t)n >= sizeof line) n = 0;
    va_list ap;
    va_start(ap, fmt);
    const int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = m < 0 ? (size_t)n : (size_t)n + (size_t)m;
    if (len > sizeof line - 2) len = sizeof line - 2; /* truncated: keep the newline */
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

/* a bundle unpacked for reading (cli_model_arg, below): its temporary folder and the name the
 * user gave; NULL when msg names none */
static const char *unpacked_name(const char *msg, const char **at, size_t *len);

int cli_fail(const char *tool, const kv_error *err) {
    const char *msg = err->msg[0] ? err->msg : "failed";
    const char *at = NULL;
    size_t len = 0;
    const char *orig = unpacked_name(msg, &at, &len);
    if (orig) cli_error(tool, "%.*s%s%s", (int)(at - msg), msg, orig, at + len);
    else cli_error(tool, "%s", msg);
    return EXIT_FAIL;
}

int cli_usage_error(const char *tool, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", tool);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry '%s --help'.\n", tool);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_bad_option(const char *tool, int c, char **argv) {
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':') return cli_usage_error(tool, "option '%s' needs a value", arg);
    if (optopt > 0 && optopt < 256) return cli_usage_error(tool, "unknown option '-%c'", optopt);
    return cli_usage_error(tool, "unknown option '%s'", arg);
}

void cli_version(const char *tool) { printf("%s (kvforge) %s\n", tool, KVFORGE_VERSION); }

int cli_parse_int(const char *s, long min, long max, long *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

int cli_parse_double(const char *s, double *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int cli_parse_float_dtype(const char *s, kv_dtype *out) {
    static const struct {
        const char *name;
        kv_dtype type;
    } types[] = {{"f32", KV_F32}, {"f16", KV_F16}, {"bf16", KV_BF16}};
    for (size_t i = 0; s && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(s, types[i].name) == 0) {
            *out = types[i].type;
            return 0;
        }
    return -1;
}

int cli_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || v < 0 || end == s) return -1;
    double mult = 1;
    if (*end == 'K' || *end == 'k') mult = 1e3, end++;
    else if (*end == 'M' || *end == 'm') mult = 1e6, end++;
    else if (*end == 'G' || *end == 'g') mult = 1e9, end++;
    if (*end == 'B') end++;
    if (*end || v * mult > 1.8e19) return -1;
    *out = (uint64_t)(v * mult);
    return 0;
}

int cli_memory_budget(const char *tool, const char *opt) {
    const char *env = getenv("KVFORGE_MAX_MEMORY");
    const char *s = opt ? opt : env && *env ? env : NULL;
    if (!s) return 0;
    uint64_t bytes;
    if (cli_parse_size(s, &bytes) != 0 || bytes == 0)
        return cli_usage_error(tool, "%s '%s': expected a size such as 4G, 512M or 1000000",
                               opt ? "--max-memory" : "KVFORGE_MAX_MEMORY", s);
    kv_mem_set_budget(bytes, opt ? "--max-memory" : "KVFORGE_MAX_MEMORY");
    return 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_start(cli_progress *p, const char *label, uint64_t total, int quiet) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->total = total ? total : 1;
    p->quiet = quiet;
    p->tty = isatty(STDERR_FILENO);
    p->start = p->last_draw = cli_now();
    p->last_decile = -1;
}

void cli_progress_update(cli_progress *p, uint64_t done, const char *extra) {
    p->done = done;
    if (p->quiet) return;
    double now = cli_now(), frac = (double)done / (double)p->total, elapsed = now - p->start;
    if (frac > 1) frac = 1;
    double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
    if (p->tty) {
        if (now - p->last_draw < 0.1 && done < p->total) return;
        p->last_draw = now;
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %5.1f%% %s ETA %.0fs\033[K", p->label, bar, 100 * frac,
                extra ? extra : "", eta);
        fflush(stderr);
    } else {
        int decile = (int)(frac * 10);
        if (decile == p->last_decile || elapsed < 1.0) return; /* short runs stay quiet */
        p->last_decile = decile;
        fprintf(stderr, "%s: %3.0f%% %s (%.1fs elapsed)\n", p->label, 100 * frac,
                extra ? extra : "", elapsed);
    }
}

void cli_progress_finish(cli_progress *p) {
    if (p->quiet) return;
    if (p->tty) fprintf(stderr, "\r%s: done in %.1fs\033[K\n", p->label, cli_now() - p->start);
}

/* ---- model arguments ---- */

#define CLI_MAX_MODEL_ARGS 8
static char *model_args[CLI_MAX_MODEL_ARGS]; /* resolved paths (freed at exit) */
static char *model_tmp[CLI_MAX_MODEL_ARGS]; /* temporary folders holding an unpacked bundle */
static char *model_orig[CLI_MAX_MODEL_ARGS]; /* the bundle's path as given */
static int n_model_args;

static const char *unpacked_name(const char *msg, const char **at, size_t *len) {
    for (int i = 0; i < n_model_args; i++) {
        const char *p;
        if (model_tmp[i] && model_args[i] && model_orig[i] && (p = strstr(msg, model_args[i]))) {
            *at = p;
            *len = strlen(model_args[i]);
            return model_orig[i];
        }
    }
    return NULL;
}

static void model_args_cleanup(void) {
    for (int i = 0; i < n_model_args; i++) {
        if (model_tmp[i]) {
            char inner[4200];
            snprintf(inner, sizeof inner, "%s/model", model_tmp[i]);
            kv_remove_flat_dir(inner);
            rmdir(model_tmp[i]);
        }
        free(model_tmp[i]);
        free(model_orig[i]);
        free(model_args[i]);
    }
    n_model_args = 0;
}

const char *cli_model_arg(const char *tool, const char *path, int keep_bundle) {
    kv_error err = {0};
    char dir[4096];
    int is_bundle = 0;
    if (kv_model_path_resolve(path, dir, sizeof dir, &is_bundle, &err)) {
        cli_fail(tool, &err);
        return NULL;
    }
    if (n_model_args == CLI_MAX_MODEL_ARGS) {
        cli_error(tool, "%s: too many model arguments", path);
        return NULL;
    }
    if (n_model_args == 0) atexit(model_args_cleanup);
    const int i = n_model_args++;
    if (is_bundle && !keep_bundle) {
        const char *base = getenv("TMPDIR");
        char tmpl[4096];
        snprintf(tmpl, sizeof tmpl, "%s/kvforge-bundle-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpl)) {
            cli_error(tool, "%s: cannot make a temporary folder to unpack the bundle: %s", tmpl,
                      strerror(errno));
            return NULL;
        }
        model_tmp[i] = strdup(tmpl);
        model_orig[i] = strdup(path);
        if (snprintf(dir, sizeof dir, "%.4000s/model", tmpl) >= (int)sizeof dir) return NULL;
        model_args[i] = strdup(dir);
        if (kv_bundle_unbundle(path, dir, &err)) {
            cli_fail(tool, &err);
            return NULL;
        }
        return model_args[i];
    }
    model_args[i] = strdup(dir);
    if (!model_args[i]) cli_error(tool, "out of memory");
    return model_args[i];
}

void cli_warn_swiftkv_serving(const char *tool, const kv_map *m, kv_swiftkv_layout layout) {
    char why[1024];
    if (kvmap_swiftkv_serving_limits(m, layout, why, sizeof why) <= 0) return;
    for (char *line = why, *next; line; line = next) {
        if ((next = strchr(line, '\n'))) *next++ = 0;
        fprintf(stderr, "%s: warning: %s\n", tool, line);
    }
}
