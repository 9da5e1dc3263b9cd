/* convert_bench: kvconvert on a synthetic TinyLlama-1.1B BF16 checkpoint (kvsynth) against cp of
 * the same bytes, measured in the same run: medians of 5 alternating rounds after a warm-up,
 * ratios, and kvconvert's peak RSS. Like is compared with like: kvconvert --no-sync against
 * cp, and kvconvert's default (fsync before the rename: durable, atomic) against cp + fsync.
 * kvconvert also records the source's sha256 in kvforge.json: "cold" runs start from an empty
 * digest cache (formats/hashcache.h) and hash all 2.2 GB, "warm" ones reuse the digest of the
 * unchanged source, as every conversion after the first of a checkpoint does. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "formats/sha256.h"

#define ROUNDS 5

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* runs argv, waits; returns the exit status (-1 if it could not run), peak RSS in KB */
static int run(char *const argv[], long *maxrss_kb) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid) return -1;
    if (maxrss_kb) *maxrss_kb = ru.ru_maxrss;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void remove_tree(const char *path) {
    char *argv[] = {"rm", "-rf", (char *)path, NULL};
    run(argv, NULL);
}

static int fsync_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

typedef enum { VS_CP, VS_CP_SYNC } baseline;

typedef struct {
    const char *label;
    const char *args[4]; /* transform options for kvconvert */
    int cold;            /* empty digest cache first */
    baseline vs;
    double secs[ROUNDS];
    long rss_kb;
} convert_case;

int main(void) {
    const char *bin = getenv("KV_BIN") ? getenv("KV_BIN") : "build/bin";
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char work[4096], src[4200], model[4300], cp_dir[4200], cp_file[4300], out[4200], synth[4200], conv[4200];
    snprintf(work, sizeof work, "%s/kvforge-convert-bench-XXXXXX", tmpdir);
    if (!mkdtemp(work)) { fprintf(stderr, "convert_bench: cannot create a folder in %s: %s\n", tmpdir, strerror(errno)); return 1; }
    snprintf(src, sizeof src, "%s/src", work);
    snprintf(model, sizeof model, "%s/model.safetensors", src);
    snprintf(cp_dir, sizeof cp_dir, "%s/cp", work);
    snprintf(cp_file, sizeof cp_file, "%s/model.safetensors", cp_dir);
    snprintf(out, sizeof out, "%s/out", work);
    snprintf(synth, sizeof synth, "%s/kvsynth", bin);
    snprintf(conv, sizeof conv, "%s/kvconvert", bin);
    char cache[4200];
    snprintf(cache, sizeof cache, "%s/cache", work);
    setenv("KVFORGE_CACHE_DIR", cache, 1);

    int status = 1;
    printf("convert_bench: writing a synthetic TinyLlama-1.1B BF16 checkpoint (kvsynth)...\n");
    fflush(stdout);
    char *synth_argv[] = {synth, "--preset", "tinyllama-1.1b", src, NULL};
    if (run(synth_argv, NULL) != 0) { fprintf(stderr, "convert_bench: kvsynth failed\n"); goto done; }
    struct stat st;
    if (stat(model, &st) != 0) { fprintf(stderr, "convert_bench: %s missing\n", model); goto done; }

    convert_case cases[] = {
        {"swiftkv:11 --no-sync, warm", {"--swiftkv", "11", "--no-sync", NULL}, 0, VS_CP, {0}, 0},
        {"lasagna-bottom:11 --no-sync, warm", {"--map", "lasagna-bottom:11", "--no-sync", NULL}, 0, VS_CP, {0}, 0},
        {"swiftkv:11 (fsync), warm", {"--swiftkv", "11", NULL, NULL}, 0, VS_CP_SYNC, {0}, 0},
        {"lasagna-bottom:11 (fsync), warm", {"--map", "lasagna-bottom:11", NULL, NULL}, 0, VS_CP_SYNC, {0}, 0},
        {"swiftkv:11 (fsync), cold", {"--swiftkv", "11", NULL, NULL}, 1, VS_CP_SYNC, {0}, 0},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    double cp_secs[ROUNDS], cp_sync_secs[ROUNDS], hash_secs[ROUNDS];
    char *cp_argv[] = {"cp", model, cp_dir, NULL};
    mkdir(cp_dir, 0755);
    if (run(cp_argv, NULL) != 0) { fprintf(stderr, "convert_bench: cp failed\n"); goto done; } /* warm-up */
    for (int r = 0; r < ROUNDS; r++) {
        remove_tree(cp_dir);
        mkdir(cp_dir, 0755);
        sync();
        double t = now();
        if (run(cp_argv, NULL) != 0) { fprintf(stderr, "convert_bench: cp failed\n"); goto done; }
        cp_secs[r] = now() - t;
        remove_tree(cp_dir);
        mkdir(cp_dir, 0755);
        sync();
        t = now();
        if (run(cp_argv, NULL) != 0 || fsync_file(cp_file) != 0) { fprintf(stderr, "convert_bench: cp failed\n"); goto done; }
        cp_sync_secs[r] = now() - t;
        remove_tree(cp_dir);
        char hex[65];
        kv_error err;
        t = now();
        if (kv_sha256_file(model, hex, &err) != 0) { fprintf(stderr, "convert_bench: %s\n", err.msg); goto done; }
        hash_secs[r] = now() - t;
        for (int c = 0; c < n_cases; c++) {
            remove_tree(out);
            if (cases[c].cold) remove_tree(cache);
            sync();
            char *argv[] = {conv, "-q", src, out, (char *)cases[c].args[0], (char *)cases[c].args[1], (char *)cases[c].args[2], NULL};
            long rss;
            t = now();
            if (run(argv, &rss) != 0) { fprintf(stderr, "convert_bench: kvconvert %s failed\n", cases[c].label); goto done; }
            cases[c].secs[r] = now() - t;
            if (rss > cases[c].rss_kb) cases[c].rss_kb = rss;
        }
        remove_tree(out);
    }
    double cp = median(cp_secs, ROUNDS), cp_sync = median(cp_sync_secs, ROUNDS), hash = median(hash_secs, ROUNDS);
    printf("source: %.2f GB BF16 (22 layers); medians of %d rounds; %ld CPUs online\n", st.st_size / 1e9, ROUNDS,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("cp same bytes: %.2f s   cp + fsync: %.2f s   sha256 of the source: %.2f s\n", cp, cp_sync, hash);
    for (int c = 0; c < n_cases; c++) {
        double s = median(cases[c].secs, ROUNDS), base = cases[c].vs == VS_CP ? cp : cp_sync;
        printf("convert 1.1B bf16 %-34s %.2f s   ratio vs %-9s %.2f   peak RSS %.0f MB\n", cases[c].label, s,
               cases[c].vs == VS_CP ? "cp" : "cp+fsync", s / base, cases[c].rss_kb / 1024.0);
    }
    printf("goal: ratio <= 1.3 and peak RSS < 300 MB (cold runs also hash the 2.2 GB source; see docs/CONVERT.md)\n");
    status = 0;
done:
    remove_tree(work);
    return status;
}
