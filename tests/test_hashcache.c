/* formats/hashcache: digests remembered by stat key (hits, misses after a change, torn and
 * foreign entries), and st_writer_copy (in-kernel copy into a safetensors file, durable or not). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/fileio.h"
#include "transform/convert/hashcache.h"
#include "formats/safetensors.h"
#include "base/sha256.h"
#include "tests/check.h"

static char dir[] = "/tmp/kvforge-test-hashcache-XXXXXX";

static void write_bytes(const char *path, size_t n, uint8_t seed) {
    uint8_t *b = malloc(n);
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(i * 131u + seed + (i >> 9));
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    free(b);
}

static void file_hex(const char *path, char hex[65]) {
    kv_error err;
    if (kv_sha256_file(path, hex, &err)) hex[0] = 0;
}

static int lookup(const char *path, char hex[65]) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return kv_hash_cache_lookup(path, &st, hex);
}

static void store(const char *path) {
    struct stat st;
    char hex[65];
    stat(path, &st);
    file_hex(path, hex);
    kv_hash_cache_store(path, &st, hex);
}

static void test_cache(void) {
    char cache[200], big[200], small[200], other[200], want[65], got[65];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    setenv("KVFORGE_CACHE_DIR", cache, 1);
    snprintf(big, sizeof big, "%s/big.bin", dir);
    snprintf(small, sizeof small, "%s/small.bin", dir);
    snprintf(other, sizeof other, "%s/other.bin", dir);
    write_bytes(big, (3u << 20) + 17, 1);
    write_bytes(small, 1000, 1);
    write_bytes(other, (3u << 20) + 17, 2);
    file_hex(big, want);

    CHECK(lookup(big, got) == 0, "empty cache: miss");
    store(big);
    memset(got, 0, sizeof got);
    CHECK(lookup(big, got) == 1, "stored: hit");
    CHECK(strcmp(got, want) == 0, "cached digest %s, file's %s", got, want);
    CHECK(lookup(other, got) == 0, "another file of the same size: miss");
    store(small);
    CHECK(lookup(small, got) == 0, "files under %lld bytes are not cached",
          (long long)KV_HASH_CACHE_MIN_BYTES);

    /* rewritten in place, same size, mtime set back: ctime still moves, so a miss */
    struct stat before;
    stat(big, &before);
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
    write_bytes(big, (3u << 20) + 17, 3);
    struct timespec times[2] = {before.st_atim, before.st_mtim};
    utimensat(AT_FDCWD, big, times, 0);
    CHECK(lookup(big, got) == 0, "changed file (mtime restored): miss");
    store(big);
    file_hex(big, want);
    CHECK(lookup(big, got) == 1 && strcmp(got, want) == 0,
          "rehashed and stored: hit with the new digest");

    /* a store whose stat is stale (the file changed while hashed) records nothing */
    struct stat stale;
    stat(other, &stale);
    nanosleep(&pause, NULL);
    write_bytes(other, (3u << 20) + 17, 4);
    kv_hash_cache_store(other, &stale, want);
    CHECK(lookup(other, got) == 0, "a digest of a file that changed meanwhile is not kept");

    /* torn and foreign entries: every entry file truncated, then filled with junk */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "for f in %s/sha256/*; do head -c 40 \"$f\" > \"$f.x\" && mv \"$f.x\" \"$f\"; done",
             cache);
    CHECK(system(cmd) == 0, "truncating entries");
    CHECK(lookup(big, got) == 0, "torn entry: miss");
    store(big);
    snprintf(cmd, sizeof cmd, "for f in %s/sha256/*; do sed -i 's/[0-9a-f]$/z/' \"$f\"; done",
             cache);
    CHECK(system(cmd) == 0, "corrupting entries");
    CHECK(lookup(big, got) == 0, "entry with a malformed digest: miss");

    /* what others could write is not trusted: a group-writable entry, a link, an open folder */
    store(big);
    CHECK(lookup(big, got) == 1, "fresh entry: hit");
    snprintf(cmd, sizeof cmd, "chmod g+w %s/sha256/*", cache);
    CHECK(system(cmd) == 0, "chmod entries");
    CHECK(lookup(big, got) == 0, "group-writable entry: miss");
    snprintf(cmd, sizeof cmd,
             "cd %s/sha256 && for f in *; do chmod 600 \"$f\" && mv \"$f\" \"../$f\" && ln -s "
             "\"../$f\" \"$f\"; done",
             cache);
    CHECK(system(cmd) == 0, "entries replaced by links");
    CHECK(lookup(big, got) == 0, "entry that is a symbolic link: miss");
    snprintf(cmd, sizeof cmd, "rm -f %s/sha256/*", cache);
    CHECK(system(cmd) == 0, "clearing entries");
    store(big);
    CHECK(lookup(big, got) == 1, "stored again: hit");
    struct stat folder;
    snprintf(cmd, sizeof cmd, "%s/sha256", cache);
    CHECK(stat(cmd, &folder) == 0 && (folder.st_mode & 077) == 0,
          "cache folder created 0700 (mode %o)", (unsigned)(folder.st_mode & 0777));
    chmod(cmd, 0777);
    CHECK(lookup(big, got) == 0, "world-writable cache folder: miss");
    chmod(cmd, 0700);
    CHECK(lookup(big, got) == 1, "folder closed again: hit");

    /* no usable cache folder: lookups miss and stores are silent */
    setenv("KVFORGE_CACHE_DIR", "/proc/kvforge-no-such-cache", 1);
    store(big);
    CHECK(lookup(big, got) == 0, "unwritable cache: miss, no error");
    setenv("KVFORGE_CACHE_DIR", cache, 1);
}

/* a safetensors file whose tensors are copied from ranges of another file (in src_dir: another
 * filesystem makes copy_file_range refuse, so the pread/pwrite path runs) */
static void test_writer_copy(const char *src_dir, int durable) {
    char src[200], out[200];
    snprintf(src, sizeof src, "%s/kvforge-copy-src-%d.bin", src_dir, (int)getpid());
    snprintf(out, sizeof out, "%s/copy%d.safetensors", dir, durable);
    const size_t n_a = (37u << 20) + 4099, n_b = 1000; /* a: several copy_file_range steps */
    write_bytes(src, n_a + n_b + 333, 7);
    st_spec specs[2] = {{.name = "a", .dtype = KV_U8, .n_dims = 1, .shape = {(int64_t)n_a}},
                        {.name = "b", .dtype = KV_U8, .n_dims = 1, .shape = {(int64_t)n_b}}};
    st_writer *w;
    kv_error err;
    int fd = open(src, O_RDONLY);
    int rc = st_writer_open(&w, out, specs, 2, NULL, 0, &err);
    CHECK(rc == 0, "open: %s", err.msg);
    if (rc) {
        close(fd);
        return;
    }
    st_writer_set_durable(w, durable);
    CHECK(st_writer_copy(w, fd, 333, n_a, &err) == 0, "copy a: %s", err.msg);
    CHECK(st_writer_put(w, "x", 1, &err) == 0, "put one byte of b: %s", err.msg);
    CHECK(st_writer_copy(w, fd, 333 + n_a + 1, n_b - 1, &err) == 0, "copy the rest of b: %s",
          err.msg);
    CHECK(st_writer_copy(w, fd, 0, 1, &err) != 0, "a byte beyond the header's total is refused");
    CHECK(st_writer_finish(w, &err) == 0, "finish: %s", err.msg);
    close(fd);

    st_file f;
    rc = st_open(&f, out, &err);
    CHECK(rc == 0, "reopen: %s", err.msg);
    if (rc) return;
    char *raw;
    size_t raw_n;
    kv_read_file(src, &raw, &raw_n, 1u << 30, &err);
    const st_tensor *a = st_find(&f, "a"), *b = st_find(&f, "b");
    CHECK(a && a->n_bytes == n_a && memcmp(a->data, raw + 333, n_a) == 0,
          "tensor a = source bytes [333, +%zu)", n_a);
    CHECK(b && ((const char *)b->data)[0] == 'x' &&
              memcmp((const char *)b->data + 1, raw + 333 + n_a + 1, n_b - 1) == 0,
          "tensor b = 'x' + source bytes");
    free(raw);
    st_close(&f);
    unlink(src);
}

int main(void) {
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_cache();
    test_writer_copy(dir, 1);
    test_writer_copy(dir, 0);
    struct stat shm;
    if (stat("/dev/shm", &shm) == 0 && S_ISDIR(shm.st_mode) && access("/dev/shm", W_OK) == 0)
        test_writer_copy("/dev/shm", 1); /* tmpfs -> the temp folder's filesystem */
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_hashcache");
}
