#include "transform/convert/hashcache.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "base/sha256.h"

#define ENTRY_MAX 8192

/* 1 if st is ours and nobody else can write it: what another user could write is not trusted */
static int trusted(const struct stat *st) {
    return st->st_uid == geteuid() && (st->st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

/* the cache folder (a trusted real folder, created 0700 on demand); 0 or -1 when there is none */
static int cache_dir(char *out, size_t cap) {
    const char *dir = getenv("KVFORGE_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"),
               *home = getenv("HOME");
    int n;
    if (dir && *dir) n = snprintf(out, cap, "%s", dir);
    else if (xdg && *xdg) n = snprintf(out, cap, "%s/kvforge", xdg);
    else if (home && *home) n = snprintf(out, cap, "%s/.cache/kvforge", home);
    else return -1;
    if (n < 0 || (size_t)n + sizeof "/sha256" > cap || kv_mkdir_p(out, NULL) != 0) return -1;
    strcat(out, "/sha256");
    if (mkdir(out, 0700) != 0 && errno != EEXIST) return -1;
    struct stat st;
    return lstat(out, &st) == 0 && S_ISDIR(st.st_mode) && trusted(&st) ? 0 : -1;
}

/* the entry's path (named by the sha256 of the file's canonical path) and the key it must hold */
static int entry_of(const char *path, const struct stat *st, char *entry, size_t entry_cap,
                    char *key, size_t key_cap) {
    char real[PATH_MAX], dir[4096], hex[65];
    uint8_t d[32];
    if (!realpath(path, real) || cache_dir(dir, sizeof dir) != 0) return -1;
    kv_sha256(real, strlen(real), d);
    kv_sha256_hex(d, hex);
    int n = snprintf(entry, entry_cap, "%s/%.32s", dir, hex);
    if (n < 0 || (size_t)n >= entry_cap) return -1;
    n = snprintf(key, key_cap, "kvforge sha256 cache 1\n%s\n%llu %llu %lld %lld.%09ld %lld.%09ld\n",
                 real, (unsigned long long)st->st_dev, (unsigned long long)st->st_ino,
                 (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
                 (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    return n < 0 || (size_t)n >= key_cap ? -1 : 0;
}

int kv_hash_cache_lookup(const char *path, const struct stat *st, char hex[65]) {
    char entry[4200], key[ENTRY_MAX];
    if (st->st_size < KV_HASH_CACHE_MIN_BYTES ||
        entry_of(path, st, entry, sizeof entry, key, sizeof key) != 0)
        return 0;
    int fd = open(entry, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    char text[ENTRY_MAX];
    struct stat est;
    size_t kl = strlen(key), n = 0;
    int hit = fstat(fd, &est) == 0 && S_ISREG(est.st_mode) && trusted(&est) &&
              kl + 65 <= sizeof text && (size_t)est.st_size == kl + 65;
    while (hit && n < kl + 65) {
        ssize_t got = read(fd, text + n, kl + 65 - n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) hit = 0;
        else n += (size_t)got;
    }
    close(fd);
    uint8_t d[32];
    hit = hit && memcmp(text, key, kl) == 0 && text[kl + 64] == '\n';
    if (hit) {
        text[kl + 64] = 0;
        hit = kv_sha256_parse_hex(text + kl, d) == 0;
    }
    if (hit) kv_sha256_hex(d, hex);
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
    if (kv_write_all(fd, key, kl + 65) != 0) {
        close(fd);
        unlink(tmp);
        return;
    }
    kv_commit_tmpfile_ex(fd, tmp, entry, 0, NULL); /* a torn entry fails the key check */
}
