/* Shared by formats/bundle_*.c only: the manifest in memory, its JSON form, entry names. */
#ifndef KV_BUNDLE_INTERNAL_H
#define KV_BUNDLE_INTERNAL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/bundle.h"
#include "formats/chunkcodec.h"
#include "formats/kvmap.h"
#include "base/dtype.h"

#define KVB_MANIFEST     "manifest.json"
#define KVB_MANIFEST_SHA "manifest.json.sha256"
#define KVB_DATA         "tensors.bin"
#define KVB_MAX_TENSORS  (1 << 22)
#define KVB_MAX_CHUNKS   (1 << 28)
#define KVB_MAX_FILES    16

/* the model-directory files a bundle may carry, in archive order */
extern const char *const kvb_file_names[];
extern const int kvb_n_file_names;
int kvb_file_index(const char *name); /* position in kvb_file_names, -1 if not one */

typedef struct {
    char *name;
    kv_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t offset, size; /* in the raw stream, bytes */
    uint8_t sha256[32]; /* of the size raw bytes */
    kv_chunk_transform transform; /* of its zstd chunks */
    int first_chunk, n_chunks; /* into kvb_manifest.chunks */
} kvb_tensor;

typedef struct {
    const char *name; /* one of kvb_file_names */
    char entry[64]; /* archive entry: name, or name + ".zst" when zstd */
    kv_chunk_codec codec;
    uint64_t size, stored_size;
    uint8_t sha256[32]; /* of the size original bytes */
} kvb_file;

typedef struct {
    char *architecture;
    uint64_t chunk_size; /* the writer's setting (informational) */
    uint64_t raw_size; /* raw stream bytes: end of the last tensor */
    uint64_t stored_size; /* tensors.bin bytes */
    int n_tensors;
    kvb_tensor *tensors; /* sorted by name */
    int n_chunks;
    kv_chunk *chunks; /* raw_offset in the raw stream, stored_offset in tensors.bin */
    int n_files;
    kvb_file files[KVB_MAX_FILES];
    int n_meta;
    char **meta_keys, **meta_values; /* the source's safetensors __metadata__ */
    kv_map *map; /* the KV map of the manifest's config (equal to its kv_map) */
} kvb_manifest;

/* an open bundle (formats/bundle_read.c opens it, bundle_load.c decodes it) */
struct kv_bundle {
    char *path;
    const uint8_t *map; /* the whole file, read-only */
    size_t map_size;
    char *manifest_text; /* NUL-terminated */
    kvb_manifest m;
    const uint8_t *stored; /* tensors.bin: into map, or stored_copy */
    uint8_t *stored_copy;
    char *file_data[KVB_MAX_FILES]; /* verified original bytes, NUL-terminated */
    st_file st; /* the tensor table as a one-file checkpoint */
    st_checkpoint ck;
    uint8_t *raw; /* loaded tensors */
    size_t raw_map_size; /* > 0 when raw is the bundle's own mapping */
    int loaded;
};

/* decodes tensors [t0, t1) into dst, which holds the raw stream from tensors[t0].offset on,
 * and checks their sha256; errors name the tensor */
int kvb_decode_tensors(kv_bundle *b, int t0, int t1, uint8_t *dst, int threads, kv_error *err);

/* validates everything (see docs/BUNDLE.md "Reader checks"); label names the bundle */
int kvb_manifest_parse(kvb_manifest *m, const char *text, size_t n, const char *label,
                       kv_error *err);
void kvb_manifest_free(kvb_manifest *m);
/* manifest JSON text (malloc'd). config, kvforge: the parsed files (kvforge may be NULL). */
char *kvb_manifest_print(const kvb_manifest *m, const cJSON *config, const kv_map *map,
                         const cJSON *kvforge);

/* the KV map of a config.json: num_hidden_layers, then kvmap_read_config (the swiftkv field
 * decides SwiftKV) */
int kvb_kv_map(const cJSON *config, kv_map *map, const char *label, kv_error *err);

/* a relative path without "..", empty or "." components, control characters or a leading '/' */
int kvb_entry_name_safe(const char *name);

static inline uint64_t kvb_align_up(uint64_t x) {
    return (x + KV_BUNDLE_ALIGN - 1) / KV_BUNDLE_ALIGN * KV_BUNDLE_ALIGN;
}

#endif
