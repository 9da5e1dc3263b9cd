/* Deterministic kill / full-disk shim for the crash tests (tests/cli_crash.sh): an LD_PRELOAD
 * library, built into $(BUILD)/tests/fault_shim.so, never linked into the tools.
 *
 * It counts the calls the write paths make on regular files and folders (write, pwrite,
 * writev, copy_file_range, sendfile, ftruncate, fallocate, sync_file_range, fsync, fdatasync,
 * rename, renameat, renameat2) in one process-wide counter, starting at 1, and acts on them
 * as the environment says:
 *   KVFAULT_KILL_AT=N    raise(SIGKILL) at the N-th counted call, before it runs
 *   KVFAULT_ENOSPC_AT=N  from the N-th counted call on, every data write (write, pwrite,
 *                        writev, copy_file_range, sendfile, fallocate, ftruncate) fails with
 *                        ENOSPC, as on a full disk
 *   KVFAULT_LOG=FILE     appends "N CALL" per counted call (the schedule of a clean run)
 * Calls on pipes, terminals and sockets (stderr, progress) are not counted, so the schedule
 * does not depend on where output goes. Threads share the counter (atomic). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long calls;

static long env_long(const char *name) {
    const char *s = getenv(name);
    return s && *s ? strtol(s, NULL, 10) : 0;
}

static void *real(const char *name) { return dlsym(RTLD_NEXT, name); }

/* a file, a folder or a path (rename): counted; pipes and terminals are not */
static int counted_fd(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode));
}

static void log_call(long n, const char *what) {
    const char *path = getenv("KVFAULT_LOG");
    if (!path || !*path) return;
    static ssize_t (*real_write)(int, const void *, size_t);
    if (!real_write) real_write = (ssize_t(*)(int, const void *, size_t))real("write");
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    char line[64];
    int len = snprintf(line, sizeof line, "%ld %s\n", n, what);
    if (len > 0 && real_write) real_write(fd, line, (size_t)len);
    close(fd);
}

/* 1: the call must fail with ENOSPC (data writes only); raises SIGKILL when due */
static int fault(const char *what, int is_data_write) {
    long n = atomic_fetch_add(&calls, 1) + 1;
    log_call(n, what);
    long kill_at = env_long("KVFAULT_KILL_AT");
    if (kill_at > 0 && n >= kill_at) raise(SIGKILL);
    long enospc_at = env_long("KVFAULT_ENOSPC_AT");
    return is_data_write && enospc_at > 0 && n >= enospc_at;
}

#define FAIL_NOSPC()                                                                               \
    do {                                                                                           \
        errno = ENOSPC;                                                                            \
        return -1;                                                                                 \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*f)(int, const void *, size_t);
    if (!f) f = (ssize_t(*)(int, const void *, size_t))real("write");
    if (counted_fd(fd) && fault("write", 1)) FAIL_NOSPC();
    return f(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    static ssize_t (*f)(int, const void *, size_t, off_t);
    if (!f) f = (ssize_t(*)(int, const void *, size_t, off_t))real("pwrite");
    if (counted_fd(fd) && fault("pwrite", 1)) FAIL_NOSPC();
    return f(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    static ssize_t (*f)(int, const void *, size_t, off_t);
    if (!f) f = (ssize_t(*)(int, const void *, size_t, off_t))real("pwrite64");
    if (counted_fd(fd) && fault("pwrite", 1)) FAIL_NOSPC();
    return f(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    static ssize_t (*f)(int, const struct iovec *, int);
    if (!f) f = (ssize_t(*)(int, const struct iovec *, int))real("writev");
    if (counted_fd(fd) && fault("writev", 1)) FAIL_NOSPC();
    return f(fd, iov, n);
}

ssize_t copy_file_range(int in, off_t *in_off, int out, off_t *out_off, size_t n, unsigned flags) {
    static ssize_t (*f)(int, off_t *, int, off_t *, size_t, unsigned);
    if (!f) f = (ssize_t(*)(int, off_t *, int, off_t *, size_t, unsigned))real("copy_file_range");
    if (fault("copy_file_range", 1)) FAIL_NOSPC();
    return f(in, in_off, out, out_off, n, flags);
}

ssize_t sendfile(int out, int in, off_t *off, size_t n) {
    static ssize_t (*f)(int, int, off_t *, size_t);
    if (!f) f = (ssize_t(*)(int, int, off_t *, size_t))real("sendfile");
    if (counted_fd(out) && fault("sendfile", 1)) FAIL_NOSPC();
    return f(out, in, off, n);
}

int ftruncate(int fd, off_t len) {
    static int (*f)(int, off_t);
    if (!f) f = (int (*)(int, off_t))real("ftruncate");
    if (fault("ftruncate", 1)) FAIL_NOSPC();
    return f(fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    static int (*f)(int, int, off_t, off_t);
    if (!f) f = (int (*)(int, int, off_t, off_t))real("fallocate");
    if (fault("fallocate", 1)) FAIL_NOSPC();
    return f(fd, mode, off, len);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned flags) {
    static int (*f)(int, off_t, off_t, unsigned);
    if (!f) f = (int (*)(int, off_t, off_t, unsigned))real("sync_file_range");
    fault("sync_file_range", 0);
    return f(fd, off, n, flags);
}

int fsync(int fd) {
    static int (*f)(int);
    if (!f) f = (int (*)(int))real("fsync");
    fault("fsync", 0);
    return f(fd);
}

int fdatasync(int fd) {
    static int (*f)(int);
    if (!f) f = (int (*)(int))real("fdatasync");
    fault("fdatasync", 0);
    return f(fd);
}

int rename(const char *from, const char *to) {
    static int (*f)(const char *, const char *);
    if (!f) f = (int (*)(const char *, const char *))real("rename");
    fault("rename", 0);
    return f(from, to);
}

int renameat(int dfrom, const char *from, int dto, const char *to) {
    static int (*f)(int, const char *, int, const char *);
    if (!f) f = (int (*)(int, const char *, int, const char *))real("renameat");
    fault("rename", 0);
    return f(dfrom, from, dto, to);
}

int renameat2(int dfrom, const char *from, int dto, const char *to, unsigned flags) {
    static int (*f)(int, const char *, int, const char *, unsigned);
    if (!f) f = (int (*)(int, const char *, int, const char *, unsigned))real("renameat2");
    fault("rename", 0);
    return f(dfrom, from, dto, to, flags);
}
