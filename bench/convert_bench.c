/* convert_bench: kvconvert on a synthetic TinyLlama-1.1B BF16 checkpoint (kvsynth) against cp of
 * the same bytes, measured in the same run: every kvconvert run is paired with a cp run just
 * before it (both after a sync), 5 rounds after a warm-up; medians of the times and of the paired
 * ratios (pairing keeps the drift of a shared VM out of the ratio), and kvconvert's peak RSS.
 * Like is compared with like: kvconvert --no-sync against cp, and kvconvert's default (fsync before the rename: durable, atomic) against cp + fsync.
 * kvconvert also records the source's sha256 in kvforge.json: "cold" runs start from an empty
 * digest cache (transform/convert/hashcache.h) and hash all 2.2 GB, "warm" ones reuse the digest of the
 * unchanged source, as every conversion after the first of a checkpoint does. One cold row
 * converts the same model in 4 shards (hashed on parallel threads). The last row times
 * that hash alone in this process, paired with cp like the others: no cold conversion can be
 * faster than it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "base/sha256.h"

#define ROUNDS 5

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
    int cold; /* empty digest cache first */
    int hash_only; /* no kvforge run: the sha256 of the source alone, in this process */
    int sharded; /* the source in 4 shards of about 600 MB (cp copies their folder) */
    baseline vs;
    double secs[ROUNDS], base_secs[ROUNDS], ratio[ROUNDS];
    long rss_kb;
} convert_case;

/* cp of the model (a file, or a folder of shards) into an empty cp_dir after a sync, plus the
 * fsync of cp_file when durable; seconds or -1 */
static double time_cp(const char *model, const char *cp_dir, const char *cp_file, int durable) {
    char *argv[] = {"cp", "-r", (char *)model, (char *)cp_dir, NULL};
    remove_tree(cp_dir);
    mkdir(cp_dir, 0755);
    sync();
    double t = bench_seconds();
    if (run(argv, NULL) != 0 || (durable && fsync_file(cp_file) != 0)) return -1;
    t = bench_seconds() - t;
    remove_tree(cp_dir);
    return t;
}

int main(void) {
    const char *bin = getenv("KV_BIN") ? getenv("KV_BIN") : "build/bin";
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char work[4096], src[4200], model[4300], cp_dir[4200], cp_file[4300], out[4200], synth[4200],
        conv[4200];
    snprintf(work, sizeof work, "%s/kvforge-convert-bench-XXXXXX", tmpdir);
    if (!mkdtemp(work)) {
        fprintf(stderr, "convert_bench: cannot create a folder in %s: %s\n", tmpdir,
                strerror(errno));
        return 1;
    }
    snprintf(src, sizeof src, "%s/src", work);
    snprintf(model, sizeof model, "%s/model.safetensors", src);
    snprintf(cp_dir, sizeof cp_dir, "%s/cp", work);
    snprintf(cp_file, sizeof cp_file, "%s/model.safetensors", cp_dir);
    snprintf(out, sizeof out, "%s/out", work);
    snprintf(synth, sizeof synth, "%s/kvsynth", bin);
    snprintf(conv, sizeof conv, "%s/kvconvert", bin);
    char cache[4200], sharded[4200];
    snprintf(cache, sizeof cache, "%s/cache", work);
    snprintf(sharded, sizeof sharded, "%s/sharded", work);
    setenv("KVFORGE_CACHE_DIR", cache, 1);

    int status = 1;
    printf("convert_bench: writing a synthetic TinyLlama-1.1B BF16 checkpoint (kvsynth)...\n");
    fflush(stdout);
    char *synth_argv[] = {synth, "--preset", "tinyllama-1.1b", src, NULL};
    if (run(synth_argv, NULL) != 0) {
        fprintf(stderr, "convert_bench: kvsynth failed\n");
        goto done;
    }
    struct stat st;
    if (stat(model, &st) != 0) {
        fprintf(stderr, "convert_bench: %s missing\n", model);
        goto done;
    }
    char *shard_argv[] = {conv,       "-q",           src,    sharded,     "--map",
                          "identity", "--shard-size", "600M", "--no-sync", NULL};
    if (run(shard_argv, NULL) != 0) {
        fprintf(stderr, "convert_bench: sharding the source failed\n");
        goto done;
    }

    convert_case cases[] = {
        {.label = "swiftkv:11 --no-sync, warm",
         .args = {"--swiftkv", "11", "--no-sync", NULL},
         .cold = 0,
         .vs = VS_CP},
        {.label = "lasagna-bottom:11 --no-sync, warm",
         .args = {"--map", "lasagna-bottom:11", "--no-sync", NULL},
         .cold = 0,
         .vs = VS_CP},
        {.label = "swiftkv:11 (fsync), warm",
         .args = {"--swiftkv", "11", NULL, NULL},
         .cold = 0,
         .vs = VS_CP_SYNC},
        {.label = "lasagna-bottom:11 (fsync), warm",
         .args = {"--map", "lasagna-bottom:11", NULL, NULL},
         .cold = 0,
         .vs = VS_CP_SYNC},
        /* the sharded cold run leaves only the shards' digests in the cache; the cold runs after it
         * put the single file's back before the next round's warm runs */
        {.label = "4 shards, swiftkv:11 --no-sync, cold",
         .args = {"--swiftkv", "11", "--no-sync", NULL},
         .cold = 1,
         .vs = VS_CP,
         .sharded = 1},
        {.label = "swiftkv:11 --no-sync, cold",
         .args = {"--swiftkv", "11", "--no-sync", NULL},
         .cold = 1,
         .vs = VS_CP},
        {.label = "swiftkv:11 (fsync), cold",
         .args = {"--swiftkv", "11", NULL, NULL},
         .cold = 1,
         .vs = VS_CP_SYNC},
        {.label = "sha256 of the source alone", .hash_only = 1, .vs = VS_CP},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    _Static_assert(sizeof cases / sizeof cases[0] <= 8, "cp_secs holds the baselines of 8 cases");
    double cp_secs[ROUNDS * 8], cp_sync_secs[ROUNDS * 8];
    int n_cp = 0, n_cp_sync = 0;
    if (time_cp(model, cp_dir, cp_file, 0) < 0) {
        fprintf(stderr, "convert_bench: cp failed\n");
        goto done;
    } /* warm-up */
    char *prime_argv[] = {conv,        "-q", src,         out,
                          "--swiftkv", "11", "--no-sync", NULL}; /* fills the digest cache */
    if (run(prime_argv, NULL) != 0) {
        fprintf(stderr, "convert_bench: kvconvert failed\n");
        goto done;
    }
    remove_tree(out);
    for (int r = 0; r < ROUNDS; r++) {
        for (int c = 0; c < n_cases; c++) {
            const int durable = cases[c].vs == VS_CP_SYNC;
            const double base =
                time_cp(cases[c].sharded ? sharded : model, cp_dir, cp_file, durable);
            if (base < 0) {
                fprintf(stderr, "convert_bench: cp failed\n");
                goto done;
            }
            if (durable) cp_sync_secs[n_cp_sync++] = base;
            else cp_secs[n_cp++] = base;
            remove_tree(out);
            if (cases[c].cold) remove_tree(cache);
            sync();
            char *argv[] = {conv,
                            "-q",
                            cases[c].sharded ? sharded : src,
                            out,
                            (char *)cases[c].args[0],
                            (char *)cases[c].args[1],
                            (char *)cases[c].args[2],
                            NULL};
            long rss = 0;
            char hex[65];
            kv_error err;
            double t = bench_seconds();
            if (cases[c].hash_only && kv_sha256_file(model, hex, &err) != 0) {
                fprintf(stderr, "convert_bench: %s\n", err.msg);
                goto done;
            }
            if (!cases[c].hash_only && run(argv, &rss) != 0) {
                fprintf(stderr, "convert_bench: kvconvert %s failed\n", cases[c].label);
                goto done;
            }
            cases[c].secs[r] = bench_seconds() - t;
            cases[c].base_secs[r] = base;
            cases[c].ratio[r] = cases[c].secs[r] / base;
            if (rss > cases[c].rss_kb) cases[c].rss_kb = rss;
            remove_tree(out);
        }
    }
    printf("source: %.2f GB BF16 (22 layers); %d rounds, each kvconvert run paired with a cp run; "
           "%ld CPUs online\n",
           st.st_size / 1e9, ROUNDS, sysconf(_SC_NPROCESSORS_ONLN));
    printf("medians: cp same bytes %.2f s   cp + fsync %.2f s\n", median(cp_secs, n_cp),
           median(cp_sync_secs, n_cp_sync));
    for (int c = 0; c < n_cases; c++) {
        const char *vs = cases[c].vs == VS_CP ? "cp" : "cp+fsync";
        double secs = median(cases[c].secs, ROUNDS), base = median(cases[c].base_secs, ROUNDS);
        double lo = 1e30, hi = 0;
        for (int r = 0; r < ROUNDS; r++) {
            if (cases[c].ratio[r] < lo) lo = cases[c].ratio[r];
            if (cases[c].ratio[r] > hi) hi = cases[c].ratio[r];
        }
        printf("%-17s %-36s %.2f s (%-8s %.2f s)   ratio %.2f [%.2f-%.2f]",
               cases[c].hash_only ? "floor (no copy)" : "convert 1.1B bf16", cases[c].label, secs,
               vs, base, median(cases[c].ratio, ROUNDS), lo, hi);
        if (cases[c].hash_only) printf("\n");
        else printf("   peak RSS %.0f MB\n", cases[c].rss_kb / 1024.0);
    }
    printf("ratio: median of the paired ratios [lowest-highest]\n");
    printf("goal: ratio <= 1.3 and peak RSS < 300 MB. Cold runs also hash the 2.2 GB source for "
           "kvforge.json;\n"
           "the floor row is that hash alone (one stream: SHA-256 cannot be split), the least any "
           "cold run can take;\n"
           "see docs/CONVERT.md\n");
    status = 0;
done:
    remove_tree(work);
    return status;
}
