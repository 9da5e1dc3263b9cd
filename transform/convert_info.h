/* kvconvert info: what a checkpoint folder holds (config, KV map, parameters, bytes per dtype,
 * KV-cache bytes per token) as text or JSON. */
#ifndef KV_CONVERT_INFO_H
#define KV_CONVERT_INFO_H

#include <stddef.h>
#include <stdint.h>

#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/hfconfig.h"
#include "transform/kvmap.h"

typedef struct {
    char dir[1024];
    hf_config cfg;
    kv_map map;                 /* from the config (identity, layer_types or SwiftKV) */
    int n_tensors, n_files, sharded;
    uint64_t params;            /* elements of all tensors in the weight files */
    int64_t params_config;      /* what config.json implies (deploy layout), -1 on overflow */
    uint64_t weight_bytes;
    uint64_t bytes_per_dtype[KV_DTYPE_COUNT];
    kv_dtype cache_dtype;       /* torch_dtype (F32 when not a float type) */
    size_t kv_bytes_per_token;  /* 2 * slots * nkv * hd * sizeof(cache_dtype) */
    int slots;
} convert_info;

int convert_info_load(convert_info *info, const char *dir, kv_error *err);
char *convert_info_text(const convert_info *info); /* malloc'd; NULL if no memory */
char *convert_info_json(const convert_info *info); /* malloc'd; NULL if no memory */

#endif
