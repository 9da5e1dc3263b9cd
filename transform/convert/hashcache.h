/* sha256 digests of large files remembered across runs, keyed by what stat(2) says of the
 * file: device, inode, size, mtime and ctime to the nanosecond (git's index trusts the same
 * fields). ctime cannot be set by a user program, so a file changed after it was hashed no
 * longer matches and is hashed again. One small entry per path under the cache folder:
 * $KVFORGE_CACHE_DIR, else $XDG_CACHE_HOME/kvforge, else $HOME/.cache/kvforge; plus /sha256.
 * Only what the user alone can write is trusted: the sha256/ folder (created 0700) and each
 * entry must be owned by the effective user and not writable by group or others, and an entry
 * must be a regular file (not a link); anything else is a miss.
 * Best-effort: a cache that cannot be read or written only means hashing. */
#ifndef KV_HASHCACHE_H
#define KV_HASHCACHE_H

#include <sys/stat.h>

#define KV_HASH_CACHE_MIN_BYTES ((off_t)1 << 20) /* smaller files are hashed every time */

/* 1 and the digest in hex when the entry for path matches st (the file's stat now), else 0 */
int kv_hash_cache_lookup(const char *path, const struct stat *st, char hex[65]);
/* records hex for path as st describes it, unless the file's stat no longer equals st */
void kv_hash_cache_store(const char *path, const struct stat *st, const char hex[65]);

#endif
