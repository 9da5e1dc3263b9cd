/* safetensors: zero-copy reader (mmap, validated at the door) and deterministic atomic writer.
 * File = u64 little-endian header length N | N bytes JSON header | data buffer. */
#ifndef KV_SAFETENSORS_H
#define KV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/dtype.h"
#include "base/error.h"

#define ST_MAX_DIMS   8
#define ST_MAX_HEADER (100u * 1000u * 1000u) /* spec: header at most 100 MB */

typedef struct {
    char *name;
    kv_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    size_t n_elements;
    size_t n_bytes;
    size_t offset; /* into the file's data buffer */
    const void *data; /* points into the mapping (read-only) */
    int file_index; /* which shard (st_checkpoint) */
} st_tensor;

typedef struct {
    char *path; /* st_open: the path; st_parse: its label (ST_MEMORY_LABEL when NULL).
                           Never NULL in a file that opened or parsed */
    void *map; /* whole file, PROT_READ; NULL for an in-memory parse */
    size_t map_size;
    size_t header_len;
    const uint8_t *data;
    size_t data_size;
    int n_tensors;
    st_tensor *tensors; /* sorted by name */
    int n_meta;
    char **meta_keys, **meta_values; /* __metadata__, sorted by key */
} st_file;

/* mmaps and validates; on error nothing is left open */
int st_open(st_file *f, const char *path, kv_error *err);
/* validates a buffer in memory (not copied: it must outlive f); label (NULL: ST_MEMORY_LABEL)
 * names it in errors and becomes f->path, so readers of path need not know where f came from.
 * On error nothing is left allocated; on success st_close frees it. */
#define ST_MEMORY_LABEL "<memory>"
int st_parse(st_file *f, const void *buf, size_t size, const char *label, kv_error *err);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key);

/* A checkpoint directory: model.safetensors, or model.safetensors.index.json + shards
 * (or a lone *.safetensors file). Tensors of all shards, sorted by name. */
typedef struct {
    char *dir;
    int n_files;
    st_file *files;
    int n_tensors;
    const st_tensor **tensors; /* sorted by name, pointing into files[] */
    int sharded;
} st_checkpoint;

int st_checkpoint_open(st_checkpoint *c, const char *dir, kv_error *err);

/* model.safetensors.index.json, parsed and checked on its own (st_checkpoint_open then checks
 * it against the shards): every weight_map value a plain *.safetensors name, at least one
 * entry, no tensor listed twice. Time O(n log n) in the entries. label (NULL: the index's file
 * name) names it in errors; on error nothing is left allocated. */
typedef struct {
    char *tensor;
    int shard; /* into st_index.shards */
} st_index_entry;

typedef struct {
    int n_entries;
    st_index_entry *entries; /* weight_map, sorted by tensor name, names distinct */
    int n_shards;
    char **shards; /* the distinct shard file names, sorted */
} st_index;

int st_index_parse(st_index *ix, const char *json, size_t len, const char *label, kv_error *err);
void st_index_free(st_index *ix);
void st_checkpoint_close(st_checkpoint *c);
const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name);

/* ---- writer ---- */

typedef struct {
    const char *name;
    kv_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
} st_spec;

/* Streaming writer: the header is fixed up front from the specs (sorted by name inside),
 * then the data of each tensor is appended in sorted-name order with st_writer_put (any
 * number of calls per tensor). Data goes to PATH.tmp-XXXXXX beside PATH; finish checks every
 * byte arrived, fsyncs, renames, fsyncs the folder. abort (or a failed finish) removes it. */
typedef struct st_writer st_writer;

int st_writer_open(st_writer **w, const char *path, const st_spec *specs, int n_specs,
                   const char *const *meta_kv, int n_meta, kv_error *err);
/* the same, the header padded with spaces so the data starts at data_residue mod 4096 (a
 * multiple of 8; -1: no padding beyond 8) */
int st_writer_open_aligned(st_writer **w, const char *path, const st_spec *specs, int n_specs,
                           const char *const *meta_kv, int n_meta, long data_residue,
                           kv_error *err);
/* name of the tensor whose bytes are expected next (NULL when all written) */
const char *st_writer_next(const st_writer *w);
int st_writer_put(st_writer *w, const void *bytes, size_t n, kv_error *err);
/* appends n bytes read from src_fd at src_off (copy_file_range: the bytes stay in the kernel;
 * plain reads where the filesystems do not allow it) */
int st_writer_copy(st_writer *w, int src_fd, off_t src_off, size_t n, kv_error *err);
/* durable = 0: no fsync at finish (scratch output); set before the first put */
void st_writer_set_durable(st_writer *w, int durable);
int st_writer_finish(st_writer *w, kv_error *err); /* frees w */
void st_writer_abort(st_writer *w); /* frees w, removes the temp file */

/* One-shot: writes n tensors (data[i] holds specs[i]'s bytes). meta_kv = {k0,v0,k1,v1...} */
int st_write_file(const char *path, const st_spec *specs, const void *const *data, int n,
                  const char *const *meta_kv, int n_meta, kv_error *err);

size_t st_spec_bytes(const st_spec *s); /* SIZE_MAX on overflow or a bad dtype/rank */

/* Sharded output: tensors in sorted order packed into files of at most shard_bytes
 * (a larger tensor gets a shard of its own) named model-0000i-of-0000n.safetensors, plus
 * model.safetensors.index.json. shard_bytes = 0: one model.safetensors. Source of the bytes is
 * a callback so the data can stream (fill is called once per tensor, with its spec index). */
typedef int (*st_fill_fn)(void *ctx, int index, st_writer *w, kv_error *err);
int st_write_checkpoint(const char *dir, const st_spec *specs, int n, size_t shard_bytes,
                        const char *const *meta_kv, int n_meta, st_fill_fn fill, void *ctx,
                        kv_error *err);
#define ST_WRITE_NO_SYNC 1u /* flags: skip the fsyncs (scratch output) */
/* data_residue: as st_writer_open_aligned, for every file written */
int st_write_checkpoint_ex(const char *dir, const st_spec *specs, int n, size_t shard_bytes,
                           unsigned flags, long data_residue, const char *const *meta_kv,
                           int n_meta, st_fill_fn fill, void *ctx, kv_error *err);

#endif
