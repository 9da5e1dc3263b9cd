/* Tensor element types (safetensors names) and F32 <-> F16/BF16 conversion.
 * Conversions round to nearest even; NaN stays NaN (quiet), Inf stays Inf. */
#ifndef KV_DTYPE_H
#define KV_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KV_F32,
    KV_F16,
    KV_BF16,
    KV_F64,
    KV_I64,
    KV_I32,
    KV_I16,
    KV_I8,
    KV_U8,
    KV_BOOL,
    KV_F8_E4M3,
    KV_F8_E5M2,
    KV_U16,
    KV_U32,
    KV_U64,
    KV_DTYPE_COUNT
} kv_dtype;

size_t kv_dtype_size(kv_dtype t); /* bytes per element */
const char *kv_dtype_name(kv_dtype t); /* "F32", "BF16", ... */
int kv_dtype_parse(const char *name, kv_dtype *out); /* 0 or -1 if unknown */
int kv_dtype_is_float16(kv_dtype t); /* F16 or BF16 */

float kv_f16_to_f32(uint16_t h);
uint16_t kv_f32_to_f16(float f);
float kv_bf16_to_f32(uint16_t b);
uint16_t kv_f32_to_bf16(float f);

/* n elements of src (F32/F16/BF16) to dst (F32/F16/BF16); same type = memcpy. 0 or KV_EUNSUPPORTED */
int kv_dtype_cast(void *dst, kv_dtype dst_t, const void *src, kv_dtype src_t, size_t n);
/* convenience: n elements of a float tensor (F32/F16/BF16) to float */
int kv_to_f32(float *dst, const void *src, kv_dtype src_t, size_t n);

#ifdef __cplusplus
}
#endif

#endif
