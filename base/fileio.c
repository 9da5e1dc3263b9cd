#include "base/fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int kv_join(char *out, size_t cap, const char *dir, const char *name, kv_error *err) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return kv_fail(err, KV_EINVAL, "%s/%s: path too long", dir, name);
    return 0;
}

int kv_read_file(const char *path, char **out, size_t *n_out, size_t max_bytes, kv_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_fail(err, KV_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kv_fail(err, KV_EIO, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        close(fd);
        return kv_fail(err, KV_EFORMAT, "%s: %lld bytes, more than the %zu allowed", path,
                       (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return kv_fail(err, KV_EIO, "%s: read failed: %s", path,
                           r ? strerror(errno) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    if (n_out) *n_out = n;
    return 0;
}

static int fsync_dir_of(const char *path) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* 1 when name is base + ".tmp-" + 6 characters */
static int is_tmp_name_of(const char *name, const char *base) {
    size_t nb = strlen(base);
    return strncmp(name, base, nb) == 0 && strncmp(name + nb, ".tmp-", 5) == 0 &&
           strlen(name + nb + 5) == 6 && !strchr(name + nb + 5, '/');
}

void kv_remove_stale_tmp(const char *path) {
    char dir_buf[4096], base_buf[4096];
    if (snprintf(dir_buf, sizeof dir_buf, "%s", path) >= (int)sizeof dir_buf ||
        snprintf(base_buf, sizeof base_buf, "%s", path) >= (int)sizeof base_buf)
        return;
    size_t n = strlen(base_buf);
    while (n > 1 && base_buf[n - 1] == '/') base_buf[--n] = 0; /* "out/" names out */
    const char *dir = dirname(dir_buf), *base = basename(base_buf);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_tmp_name_of(e->d_name, base)) continue;
        char entry[4096];
        if (snprintf(entry, sizeof entry, "%s/%s", dir, e->d_name) >= (int)sizeof entry) continue;
        int fd = open(entry, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat st;
        /* a live writer holds the lock: its temporary is not a leftover */
        if (fstat(fd, &st) == 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) {
            if (S_ISDIR(st.st_mode)) kv_remove_flat_dir(entry);
            else if (S_ISREG(st.st_mode)) unlink(entry);
        }
        close(fd);
    }
    closedir(d);
}

int kv_tmpfile_beside(const char *path, char *tmp_out, size_t tmp_cap, int *fd_out, kv_error *err) {
    int n = snprintf(tmp_out, tmp_cap, "%s.tmp-XXXXXX", path);
    if (n < 0 || (size_t)n >= tmp_cap) return kv_fail(err, KV_EINVAL, "%s: path too long", path);
    kv_remove_stale_tmp(path);
    int fd = mkostemp(tmp_out, O_CLOEXEC);
    if (fd < 0)
        return kv_fail(err, KV_EIO, "%s: cannot create temporary file: %s", path, strerror(errno));
    fchmod(fd, 0644);
    flock(fd, LOCK_EX | LOCK_NB); /* released when fd closes (commit, abort or death) */
    *fd_out = fd;
    return 0;
}

int kv_tmpdir_beside(const char *path, char *tmp_out, size_t tmp_cap, int *lock_fd, kv_error *err) {
    *lock_fd = -1;
    int n = snprintf(tmp_out, tmp_cap, "%s.tmp-XXXXXX", path);
    if (n < 0 || (size_t)n >= tmp_cap) return kv_fail(err, KV_EINVAL, "%s: path too long", path);
    kv_remove_stale_tmp(path);
    if (!mkdtemp(tmp_out))
        return kv_fail(err, KV_EIO, "%s: cannot create a staging folder beside it: %s", path,
                       strerror(errno));
    chmod(tmp_out, 0755);
    int fd = open(tmp_out, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) flock(fd, LOCK_EX | LOCK_NB);
    *lock_fd = fd;
    return 0;
}

int kv_commit_tmpfile(int fd, const char *tmp, const char *path, kv_error *err) {
    return kv_commit_tmpfile_ex(fd, tmp, path, 1, err);
}

int kv_commit_tmpfile_ex(int fd, const char *tmp, const char *path, int durable, kv_error *err) {
    if (durable && fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return kv_fail(err, KV_EIO, "%s: fsync failed: %s", path, strerror(e));
    }
    /* renamed before the close: the lock keeps the temporary from kv_remove_stale_tmp until
     * it has its final name */
    if (rename(tmp, path) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return kv_fail(err, KV_EIO, "%s: cannot rename temporary file into place: %s", path,
                       strerror(e));
    }
    if (close(fd) != 0) return kv_fail(err, KV_EIO, "%s: close failed: %s", path, strerror(errno));
    if (durable) fsync_dir_of(path);
    return 0;
}

int kv_write_all(int fd, const void *bytes, size_t n) {
    const char *p = bytes;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int kv_write_file_atomic(const char *path, const void *bytes, size_t n, kv_error *err) {
    return kv_write_file_atomic_ex(path, bytes, n, 1, err);
}

int kv_write_file_atomic_ex(const char *path, const void *bytes, size_t n, int durable,
                            kv_error *err) {
    char tmp[4096];
    int fd, rc = kv_tmpfile_beside(path, tmp, sizeof tmp, &fd, err);
    if (rc) return rc;
    if (kv_write_all(fd, bytes, n) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return kv_fail(err, KV_EIO, "%s: write failed: %s", path, strerror(e));
    }
    return kv_commit_tmpfile_ex(fd, tmp, path, durable, err);
}

int kv_copy_file_atomic(const char *src, const char *dst, kv_error *err) {
    return kv_copy_file_atomic_ex(src, dst, 1, err);
}

int kv_copy_file_atomic_ex(const char *src, const char *dst, int durable, kv_error *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return kv_fail(err, KV_EIO, "%s: cannot open: %s", src, strerror(errno));
    char tmp[4096];
    int fd, rc = kv_tmpfile_beside(dst, tmp, sizeof tmp, &fd, err);
    if (rc) {
        close(in);
        return rc;
    }
    char buf[1 << 16];
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) break;
        if (r < 0 || kv_write_all(fd, buf, (size_t)r) != 0) {
            int e = errno;
            close(in);
            close(fd);
            unlink(tmp);
            return kv_fail(err, KV_EIO, "copying %s to %s: %s", src, dst, strerror(e));
        }
    }
    close(in);
    return kv_commit_tmpfile_ex(fd, tmp, dst, durable, err);
}

int kv_mkdir_p(const char *dir, kv_error *err) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s", dir);
    if (n < 0 || (size_t)n >= sizeof path) return kv_fail(err, KV_EINVAL, "%s: path too long", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return kv_fail(err, KV_EIO, "%s: cannot create: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return kv_fail(err, KV_EIO, "%s: cannot create: %s", path, strerror(errno));
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return kv_fail(err, KV_EIO, "%s: not a directory", path);
    return 0;
}

int kv_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int kv_dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 1;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = 0;
            break;
        }
    closedir(d);
    return empty;
}

void kv_remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
                unlink(path);
        closedir(d);
    }
    rmdir(dir);
}

void kv_release_mapped(const void *p, size_t bytes) {
    const long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !p) return;
    const uintptr_t lo = ((uintptr_t)p + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    const uintptr_t hi = ((uintptr_t)p + bytes) & ~(uintptr_t)(page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
