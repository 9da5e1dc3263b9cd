/* F32 <-> F16/BF16: exhaustive over all 65536 16-bit patterns, against gcc's _Float16 and a
 * exhaustive midpoint/neighbour check for BF16 */
#include <string.h>

#include "base/dtype.h"
#include "base/error.h"
#include "tests/check.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(void) {
    /* names and sizes */
    kv_dtype t;
    CHECK(kv_dtype_parse("BF16", &t) == 0 && t == KV_BF16, "parse BF16");
    CHECK(kv_dtype_parse("F8_E4M3", &t) == 0 && kv_dtype_size(t) == 1, "F8_E4M3");
    CHECK(kv_dtype_parse("bf16", &t) != 0, "names are case-sensitive");
    CHECK(kv_dtype_size(KV_I64) == 8 && kv_dtype_size(KV_BOOL) == 1, "sizes");

    /* f16 -> f32 exhaustive vs _Float16; f32 -> f16 round trip exact for every non-NaN pattern */
    int bad_widen = 0, bad_round_trip = 0, bad_nan = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 ref;
        uint16_t h16 = (uint16_t)h;
        memcpy(&ref, &h16, 2);
        float got = kv_f16_to_f32(h16), want = (float)ref;
        if (isnan(want)) {
            if (!isnan(got)) bad_nan++;
            if (!isnan(kv_f16_to_f32(kv_f32_to_f16(got)))) bad_nan++;
            continue;
        }
        if (bits(got) != bits(want)) bad_widen++;
        if (kv_f32_to_f16(got) != h16) bad_round_trip++;
    }
    CHECK(bad_widen == 0, "%d f16->f32 mismatches vs _Float16", bad_widen);
    CHECK(bad_round_trip == 0, "%d f16 round-trip mismatches", bad_round_trip);
    CHECK(bad_nan == 0, "%d NaN not kept", bad_nan);

    /* f32 -> f16 rounding: every f16 pattern, its midpoints and neighbours, vs _Float16 */
    int bad_narrow = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float base = kv_f16_to_f32((uint16_t)h);
        if (isnan(base) || isinf(base)) continue;
        uint32_t u = bits(base);
        for (int delta = -4096; delta <= 4096; delta += 512) {
            float f = from_bits(u + (uint32_t)delta);
            if (isnan(f)) continue;
            _Float16 ref = (_Float16)f;
            uint16_t want;
            memcpy(&want, &ref, 2);
            if (kv_f32_to_f16(f) != want) bad_narrow++;
        }
    }
    CHECK(bad_narrow == 0, "%d f32->f16 rounding mismatches vs _Float16", bad_narrow);
    CHECK(kv_f32_to_f16(65519.0f) == 0x7bff && kv_f32_to_f16(65520.0f) == 0x7c00,
          "f16 overflow threshold");
    CHECK(kv_f32_to_f16(-INFINITY) == 0xfc00, "-Inf kept");

    /* bf16: widening is exact; narrowing of every bf16 value and of its exact midpoints */
    int bad_bf = 0, bad_bf_mid = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float f = kv_bf16_to_f32((uint16_t)b);
        if (bits(f) != b << 16) bad_bf++;
        if (isnan(f)) {
            if (!isnan(kv_bf16_to_f32(kv_f32_to_bf16(f)))) bad_bf++;
            continue;
        }
        if (kv_f32_to_bf16(f) != b) bad_bf++;
        if (isinf(f)) continue;
        /* midpoint to the next pattern: ties to even */
        float mid = from_bits((b << 16) | 0x8000u);
        if (isnan(mid) || isinf(mid)) continue;
        uint16_t want = (b & 1) ? (uint16_t)(b + 1) : (uint16_t)b;
        if (kv_f32_to_bf16(mid) != want) bad_bf_mid++;
        float above = from_bits((b << 16) | 0x8001u), below = from_bits((b << 16) | 0x7fffu);
        if (kv_f32_to_bf16(above) != (uint16_t)(b + 1) || kv_f32_to_bf16(below) != (uint16_t)b)
            bad_bf_mid++;
    }
    CHECK(bad_bf == 0, "%d bf16 widen/round-trip errors", bad_bf);
    CHECK(bad_bf_mid == 0, "%d bf16 midpoint rounding errors", bad_bf_mid);
    CHECK(kv_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80, "1+2^-8 ties to even (down)");
    CHECK(kv_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82, "1+3*2^-8 ties to even (up)");
    CHECK(kv_f32_to_bf16(INFINITY) == 0x7f80, "bf16 Inf");
    CHECK(kv_f32_to_bf16(3.4028235e38f) == 0x7f80, "bf16 max float rounds to Inf");

    /* kv_dtype_cast over arrays */
    float src[5] = {1.0f, -2.5f, 0.1f, 65504.0f, 1e-8f}, back[5];
    uint16_t half[5];
    CHECK(kv_dtype_cast(half, KV_F16, src, KV_F32, 5) == 0, "convert f32->f16");
    CHECK(kv_to_f32(back, half, KV_F16, 5) == 0, "convert f16->f32");
    CHECK(back[0] == 1.0f && back[1] == -2.5f && back[3] == 65504.0f, "exact values survive");
    CHECK(fabsf(back[2] - 0.1f) < 1e-4f, "0.1 approx");
    CHECK(kv_dtype_cast(half, KV_I8, src, KV_F32, 5) == KV_EUNSUPPORTED, "int conversion refused");
    /* the BF16 <-> F32 array paths agree with the element functions on every BF16 pattern */
    static uint16_t all_bf[65536], again[65536];
    static float wide[65536];
    for (int i = 0; i < 65536; i++) all_bf[i] = (uint16_t)i;
    int bad_array = kv_to_f32(wide, all_bf, KV_BF16, 65536) != 0 ||
                    kv_dtype_cast(again, KV_BF16, wide, KV_F32, 65536) != 0;
    for (int i = 0; i < 65536 && !bad_array; i++) {
        float w = kv_bf16_to_f32(all_bf[i]);
        bad_array = memcmp(&wide[i], &w, 4) != 0 || again[i] != kv_f32_to_bf16(w);
    }
    CHECK(!bad_array, "bf16 <-> f32 arrays match the element functions");
    return check_done("test_dtype");
}
