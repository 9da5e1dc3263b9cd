/* Deployable model bundle (.kvb): one pax tar archive, specified in docs/BUNDLE.md.
 *   manifest.json         format version, architecture, config + KV map, recipe/provenance,
 *                         tensor table (name, dtype, shape, raw offset, chunk list, sha256),
 *                         file table
 *   manifest.json.sha256  digest of manifest.json (sha256sum format)
 *   tensors.bin           every tensor's chunks (formats/chunkcodec.h), in manifest order
 *   config.json, tokenizer.json(.zst), ...   the model directory's other files
 * Writing is deterministic and atomic; reading trusts nothing (entries matched by name and
 * order, sizes bounded before allocation, every byte covered by a digest or a structure check). */
#ifndef KV_BUNDLE_H
#define KV_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "formats/safetensors.h"

#define KV_BUNDLE_FORMAT       "kvforge-bundle"
#define KV_BUNDLE_VERSION      1
#define KV_BUNDLE_ALIGN        64 /* tensor offsets in the raw stream */
#define KV_BUNDLE_MAX_MANIFEST ((size_t)256 << 20)
#define KV_BUNDLE_MAX_FILE     ((size_t)256 << 20) /* config, tokenizer... each */

typedef struct {
    size_t chunk_size; /* raw bytes per chunk; 0 = KV_CHUNK_DEFAULT_SIZE (2 MiB) */
    int level; /* zstd level; 0 = the codec's default profile */
    int threads; /* 0 = online CPUs */
    int check_model; /* refuse a model kvforge does not run (unsupported config.json schema or
                          fields, tensors the config does not describe: hf_config, llama_view)
                          before writing anything; kvconvert bundle sets it */
} kv_bundle_opts;

/* Reads MODEL_DIR (config.json, model.safetensors or a sharded index, optional tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json, tokenizer.model, generation_config.json,
 * kvforge.json) and writes OUT atomically. opts may be NULL. */
int kv_bundle_write(const char *model_dir, const char *out_path, const kv_bundle_opts *opts,
                    kv_error *err);
/* Checks OUT before a bundle is written: never a directory, never one of the n_dirs model paths
 * (a directory, or a source bundle file) nor a file in one of the directories (an input), and,
 * unless force, not an existing file. NULL entries and paths that do not exist (yet) are
 * skipped. kv_bundle_write applies it with force = 1. */
int kv_bundle_check_output(const char *out_path, const char *const *dirs, int n_dirs, int force,
                           kv_error *err);

typedef struct kv_bundle kv_bundle;

/* Maps the file and checks the archive structure, the manifest (and its digest), every file
 * entry (and its digest); tensor data are checked by kv_bundle_load_tensors. */
int kv_bundle_open(kv_bundle **b, const char *path, kv_error *err);
void kv_bundle_close(kv_bundle *b);

/* Bytes of the raw tensor stream (tensors at KV_BUNDLE_ALIGN-aligned offsets, zero gaps). */
size_t kv_bundle_raw_size(const kv_bundle *b);
/* Decompresses every tensor in parallel (threads 0 = online CPUs) straight into its place and
 * checks its sha256. buf = NULL: the bundle allocates (and frees in close); else buf must hold
 * kv_bundle_raw_size bytes (cap) and outlive the bundle's use of it. On failure the error names
 * the tensor, nothing stays allocated and the tensors are not available. */
int kv_bundle_load_tensors(kv_bundle *b, void *buf, size_t cap, int threads, kv_error *err);

/* The tensor table as a one-file checkpoint (sorted by name; path = the bundle): shapes and
 * dtypes after open, data pointers after a successful load (NULL before). Owned by the bundle:
 * never st_checkpoint_close it. */
const st_checkpoint *kv_bundle_checkpoint(const kv_bundle *b);
const st_tensor *kv_bundle_find(const kv_bundle *b, const char *name);

/* An embedded file by name ("config.json", "tokenizer.json", ...): its verified bytes,
 * NUL-terminated, size in *n; NULL if the bundle has none. */
const char *kv_bundle_file(const kv_bundle *b, const char *name, size_t *n);
const char *kv_bundle_manifest(const kv_bundle *b); /* manifest.json text */
const char *kv_bundle_architecture(const kv_bundle *b); /* "" when the config names none */
/* Writes the embedded files (not the tensors) into DIR, which must exist. */
int kv_bundle_extract_files(const kv_bundle *b, const char *dir, kv_error *err);

typedef struct {
    int n_tensors, n_chunks, n_zstd_chunks, n_files;
    uint64_t raw_bytes; /* tensor bytes */
    uint64_t stored_bytes; /* tensors.bin */
    uint64_t file_bytes; /* the bundle file */
} kv_bundle_report;

/* Structure, manifest, files and every tensor checksum, with bounded memory (tensors are
 * decoded in batches, on all CPUs). report may be NULL. */
int kv_bundle_verify(const char *path, kv_bundle_report *report, kv_error *err);

/* Writes an HF directory: model.safetensors (tensors byte-identical to the source's) and the
 * embedded files byte-identical. DIR must be absent or empty; it is filled under a temporary
 * name and renamed into place, so a failure leaves nothing behind. */
int kv_bundle_unbundle(const char *path, const char *dir, kv_error *err);

#endif
