/* Whole-file reads and atomic writes (temp file in the destination folder, fsync, rename,
 * fsync the folder): a killed process leaves the old state or the new, never half. */
#ifndef KV_FILEIO_H
#define KV_FILEIO_H

#include <stddef.h>

#include "base/error.h"

/* reads at most max_bytes (error if larger); *out is NUL-terminated, free() it */
int kv_read_file(const char *path, char **out, size_t *n_out, size_t max_bytes, kv_error *err);
int kv_write_file_atomic(const char *path, const void *bytes, size_t n, kv_error *err);
int kv_write_file_atomic_ex(const char *path, const void *bytes, size_t n, int durable,
                            kv_error *err);
/* Crash safety: every temporary name is "<path>.tmp-XXXXXX" (X: mkstemp's 6 characters) beside
 * the final path, and its writer holds an flock(2) on it while it lives. A writer killed
 * mid-write (SIGKILL, power loss) leaves such a name behind, never a partial file under path;
 * the next write of the same path removes it (kv_remove_stale_tmp). */

/* removes the leftovers "<path>.tmp-XXXXXX" (files, or flat folders of a staged output) of
 * killed writers: those no live process holds locked; errors are ignored */
void kv_remove_stale_tmp(const char *path);
/* creates "<path>.tmp-XXXXXX" beside path (after kv_remove_stale_tmp), locked; fd and temp name
 * returned */
int kv_tmpfile_beside(const char *path, char *tmp_out, size_t tmp_cap, int *fd_out, kv_error *err);
/* creates the folder "<path>.tmp-XXXXXX" (mode 0755) beside path (after kv_remove_stale_tmp) and
 * locks it: *lock_fd holds the lock until the caller closes it (after renaming or removing it) */
int kv_tmpdir_beside(const char *path, char *tmp_out, size_t tmp_cap, int *lock_fd, kv_error *err);
/* fsync fd, close, rename tmp -> path, fsync the folder; on failure unlinks tmp */
int kv_commit_tmpfile(int fd, const char *tmp, const char *path, kv_error *err);
/* durable = 0: no fsync (scratch output: atomic for readers, not across a crash) */
int kv_commit_tmpfile_ex(int fd, const char *tmp, const char *path, int durable, kv_error *err);
/* write(2) until all n bytes are out (EINTR retried); 0 or -1 with errno set */
int kv_write_all(int fd, const void *bytes, size_t n);
int kv_copy_file_atomic(const char *src, const char *dst, kv_error *err);
int kv_copy_file_atomic_ex(const char *src, const char *dst, int durable, kv_error *err);
int kv_mkdir_p(const char *dir, kv_error *err);
int kv_path_exists(const char *path);
int kv_dir_is_empty(const char *dir); /* 1 empty or absent, 0 has entries */
/* dir + "/" + name into out (error if it does not fit) */
int kv_join(char *out, size_t cap, const char *dir, const char *name, kv_error *err);

/* removes dir and the entries directly in it (a flat temporary directory this process made and
 * filled: no recursion); errors are ignored */
void kv_remove_flat_dir(const char *dir);

/* drops this process's pages of the whole pages inside [p, p + bytes) of a read-only file
 * mapping (madvise MADV_DONTNEED: they leave the resident set; a later read maps them again from
 * the page cache). Only for mappings never written. A hint: failures are ignored. */
void kv_release_mapped(const void *p, size_t bytes);

#endif
