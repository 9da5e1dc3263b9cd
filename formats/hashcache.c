#include "formats/hashcache.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/fileio.h"
#include "formats/sha256.h"

#define ENTRY_MAX 8192

/* the cache folder, created on demand; 0 or -1 when there is none */
static int cache_dir(char *out, size_t cap) {
    const char *dir = getenv("KVFORGE_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (dir && *dir) n = snprintf(out, cap, "%s/sha256", dir);
    else if (xdg && *xdg) n = snprintf(out, cap, "%s/kvforge/sha256", xdg);
    else if (home && *home) n = snprintf(out, cap, "%s/.cache/kvforge/sha256", home);
    else return -1;
    if (n < 0 || (size_t)n >= cap) return -1;
    return kv_mkdir_p(out, NULL) == 0 ? 0 : -1;
}

/* the entry's path (named by the sha256 of the file's canonical path) and the key it must hold */
static int entry_of(const char *path, const struct stat *st, char *entry, size_t entry_cap, char *key, size_t key_cap) {
    char real[PATH_MAX], dir[4096], hex[65];
    uint8_t d[32];
    if (!realpath(path, real) || cache_dir(dir, sizeof dir) != 0) return -1;
    kv_sha256(real, strlen(real), d);
    kv_sha256_hex(d, hex);
    int n = snprintf(entry, entry_cap, "%s/%.32s", dir, hex);
    if (n < 0 || (size_t)n >= entry_cap) return -1;
    n = snprintf(key, key_cap, "kvforge sha256 cache 1\n%s\n%llu %llu %lld %lld.%09ld %lld.%09ld\n", real,
                 (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, (long long)st->st_size,
                 (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    return n < 0 || (size_t)n >= key_cap ? -1 : 0;
}

int kv_hash_cache_lookup(const char *path, const struct stat *st, char hex[65]) {
    char entry[4200], key[ENTRY_MAX];
    if (st->st_size < KV_HASH_CACHE_MIN_BYTES || entry_of(path, st, entry, sizeof entry, key, sizeof key) != 0) return 0;
    char *text;
    size_t n;
    if (kv_read_file(entry, &text, &n, ENTRY_MAX, NULL) != 0) return 0;
    size_t kl = strlen(key);
    uint8_t d[32];
    int hit = n == kl + 65 && memcmp(text, key, kl) == 0 && text[kl + 64] == '\n';
    if (hit) {
        text[kl + 64] = 0;
        hit = kv_sha256_parse_hex(text + kl, d) == 0;
    }
    if (hit) kv_sha256_hex(d, hex);
    free(text);
    return hit;
}

void kv_hash_cache_store(const char *path, const struct stat *st, const char hex[65]) {
    char entry[4200], key[ENTRY_MAX + 80];
    struct stat now;
    if (st->st_size < KV_HASH_CACHE_MIN_BYTES || stat(path, &now) != 0) return;
    if (now.st_dev != st->st_dev || now.st_ino != st->st_ino || now.st_size != st->st_size ||
        now.st_mtim.tv_sec != st->st_mtim.tv_sec || now.st_mtim.tv_nsec != st->st_mtim.tv_nsec ||
        now.st_ctim.tv_sec != st->st_ctim.tv_sec || now.st_ctim.tv_nsec != st->st_ctim.tv_nsec)
        return; /* changed while it was hashed */
    if (entry_of(path, st, entry, sizeof entry, key, ENTRY_MAX) != 0) return;
    size_t kl = strlen(key);
    memcpy(key + kl, hex, 64);
    key[kl + 64] = '\n';
    char tmp[4300];
    int fd;
    if (kv_tmpfile_beside(entry, tmp, sizeof tmp, &fd, NULL) != 0) return;
    if (kv_write_all(fd, key, kl + 65) != 0) { close(fd); unlink(tmp); return; }
    kv_commit_tmpfile_ex(fd, tmp, entry, 0, NULL); /* a torn entry fails the key check */
}
