#include "base/dtype.h"

#include <string.h>

#include "base/error.h"

static const struct {
    const char *name;
    size_t size;
} dtype_table[KV_DTYPE_COUNT] = {
    [KV_F32] = {"F32", 4},   [KV_F16] = {"F16", 2},         [KV_BF16] = {"BF16", 2},
    [KV_F64] = {"F64", 8},   [KV_I64] = {"I64", 8},         [KV_I32] = {"I32", 4},
    [KV_I16] = {"I16", 2},   [KV_I8] = {"I8", 1},           [KV_U8] = {"U8", 1},
    [KV_BOOL] = {"BOOL", 1}, [KV_F8_E4M3] = {"F8_E4M3", 1}, [KV_F8_E5M2] = {"F8_E5M2", 1},
    [KV_U16] = {"U16", 2},   [KV_U32] = {"U32", 4},         [KV_U64] = {"U64", 8},
};

size_t kv_dtype_size(kv_dtype t) { return (unsigned)t < KV_DTYPE_COUNT ? dtype_table[t].size : 0; }
const char *kv_dtype_name(kv_dtype t) {
    return (unsigned)t < KV_DTYPE_COUNT ? dtype_table[t].name : "?";
}
int kv_dtype_is_float16(kv_dtype t) { return t == KV_F16 || t == KV_BF16; }

int kv_dtype_parse(const char *name, kv_dtype *out) {
    for (int t = 0; t < KV_DTYPE_COUNT; t++)
        if (strcmp(name, dtype_table[t].name) == 0) {
            *out = (kv_dtype)t;
            return 0;
        }
    return -1;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kv_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t kv_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    uint32_t round = 0x7fffu + ((u >> 16) & 1u); /* nearest even */
    return (uint16_t)((u + round) >> 16);
}

float kv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* Inf / NaN */
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        int shift = 0; /* subnormal: normalise */
        while (!(mant & 0x400u)) {
            mant <<= 1;
            shift++;
        }
        mant &= 0x3ffu;
        return bits_f32(sign | ((uint32_t)(113 - shift) << 23) | (mant << 13));
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t kv_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((abs >> 13) & 0x3ffu); /* NaN */
    if (abs >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to Inf */
    int32_t exp = (int32_t)(abs >> 23) - 127;
    uint32_t mant = abs & 0x7fffffu;
    if (exp >= -14) { /* normal half */
        uint32_t h = ((uint32_t)(exp + 15) << 10) | (mant >> 13);
        uint32_t rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
            h++; /* carry may bump exponent: fine */
        return sign | (uint16_t)h;
    }
    if (exp < -25) return sign; /* below half of min subnormal */
    /* subnormal half: value = m * 2^-24, m = (1.mant) * 2^(exp+24) */
    mant |= 0x800000u;
    int shift = -exp - 1; /* 14 .. 24: bits of the 24-bit significand dropped = shift - 0 ... */
    uint32_t h = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

int kv_dtype_cast(void *dst, kv_dtype dst_t, const void *src, kv_dtype src_t, size_t n) {
    if (dst_t == src_t) {
        memcpy(dst, src, n * kv_dtype_size(src_t));
        return 0;
    }
    if ((dst_t != KV_F32 && !kv_dtype_is_float16(dst_t)) ||
        (src_t != KV_F32 && !kv_dtype_is_float16(src_t)))
        return KV_EUNSUPPORTED;
    const uint16_t *s16 = src;
    const float *s32 = src;
    uint16_t *d16 = dst;
    float *d32 = dst;
    if (src_t == KV_BF16 && dst_t == KV_F32) { /* the common pairs without a per-element dispatch */
        for (size_t i = 0; i < n; i++) d32[i] = kv_bf16_to_f32(s16[i]);
        return 0;
    }
    if (src_t == KV_F32 && dst_t == KV_BF16) {
        for (size_t i = 0; i < n; i++) d16[i] = kv_f32_to_bf16(s32[i]);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        float v = src_t == KV_F32   ? s32[i]
                  : src_t == KV_F16 ? kv_f16_to_f32(s16[i])
                                    : kv_bf16_to_f32(s16[i]);
        if (dst_t == KV_F32) d32[i] = v;
        else d16[i] = dst_t == KV_F16 ? kv_f32_to_f16(v) : kv_f32_to_bf16(v);
    }
    return 0;
}

int kv_to_f32(float *dst, const void *src, kv_dtype src_t, size_t n) {
    return kv_dtype_cast(dst, KV_F32, src, src_t, n);
}
