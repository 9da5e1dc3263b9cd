/* chunkcodec: transforms, round trips of awkward sizes, raw fallback, determinism across
 * thread counts, and corrupted / inconsistent inputs giving errors rather than crashes. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "formats/chunkcodec.h"
#include "base/dtype.h"
#include "tests/check.h"

static uint64_t rng = 0x243F6A8885A308D3ULL;
static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double uniform01(void) { return (double)(next_u64() >> 11) / 9007199254740992.0; }
static float gaussian(float std) {
    double u1 = uniform01(), u2 = uniform01();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* n elements of dtype holding weight-like values (std 0.02), or small ints for I8 */
static uint8_t *make_values(kv_dtype t, size_t n) {
    size_t es = kv_dtype_size(t);
    uint8_t *b = malloc(n * es + 1);
    for (size_t i = 0; i < n; i++) {
        float v = gaussian(0.02f);
        if (t == KV_F32) memcpy(b + 4 * i, &v, 4);
        else if (t == KV_F16) {
            uint16_t h = kv_f32_to_f16(v);
            memcpy(b + 2 * i, &h, 2);
        } else if (t == KV_BF16) {
            uint16_t h = kv_f32_to_bf16(v);
            memcpy(b + 2 * i, &h, 2);
        } else b[i] = (uint8_t)(int8_t)lrintf(v * 400.0f);
    }
    return b;
}

static void check_transform_layout(void) {
    const uint8_t in2[6] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66};
    const uint8_t want2[6] = {0x22, 0x44, 0x66, 0x11, 0x33, 0x55};
    uint8_t out[8], back[8];
    kv_transform_apply(KV_XFORM_BYTEGROUP2, out, in2, 6);
    CHECK(memcmp(out, want2, 6) == 0, "bytegroup2 layout");
    const uint8_t in4[8] = {0xa0, 0xa1, 0xa2, 0xa3, 0xb0, 0xb1, 0xb2, 0xb3};
    const uint8_t want4[8] = {0xa3, 0xb3, 0xa2, 0xb2, 0xa1, 0xb1, 0xa0, 0xb0};
    kv_transform_apply(KV_XFORM_BYTEPLANE4, out, in4, 8);
    CHECK(memcmp(out, want4, 8) == 0, "byteplane4 layout");
    kv_transform_undo(KV_XFORM_BYTEPLANE4, back, out, 8);
    CHECK(memcmp(back, in4, 8) == 0, "byteplane4 undo");

    /* lengths around the vector width, both transforms, undo(apply(x)) == x */
    int bad = 0;
    uint8_t src[400], mid[400], dst[400];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)next_u64();
    for (size_t n = 0; n <= 400; n += 4) {
        kv_chunk_transform ts[2] = {KV_XFORM_BYTEGROUP2, KV_XFORM_BYTEPLANE4};
        for (int k = 0; k < 2; k++) {
            kv_transform_apply(ts[k], mid, src, n);
            kv_transform_undo(ts[k], dst, mid, n);
            if (memcmp(dst, src, n) != 0) bad++;
        }
    }
    CHECK(bad == 0, "%d transform round trips failed", bad);
    CHECK(kv_transform_for(KV_BF16) == KV_XFORM_BYTEGROUP2 &&
              kv_transform_for(KV_F16) == KV_XFORM_BYTEGROUP2 &&
              kv_transform_for(KV_F32) == KV_XFORM_BYTEPLANE4 &&
              kv_transform_for(KV_I8) == KV_XFORM_NONE,
          "transform by dtype");
}

/* encode then decode into a poisoned buffer; the result must equal the input */
static void round_trip(kv_dtype t, size_t n_elem, size_t chunk_size, int threads, int expect_zstd) {
    size_t es = kv_dtype_size(t), n = n_elem * es;
    uint8_t *src = make_values(t, n_elem);
    kv_codec_opts o = {.chunk_size = chunk_size, .level = 3, .threads = threads};
    kv_encoded e;
    kv_error err = {0};
    int rc = kv_chunk_encode(src, n, t, &o, &e, &err);
    CHECK(rc == 0, "%s n=%zu encode: %s", kv_dtype_name(t), n_elem, err.msg);
    size_t cs = chunk_size ? chunk_size - chunk_size % es : KV_CHUNK_DEFAULT_SIZE;
    if (cs == 0) cs = es;
    size_t want_chunks = n ? (n + cs - 1) / cs : 0;
    CHECK((size_t)e.n_chunks == want_chunks, "%s n=%zu: %d chunks, want %zu", kv_dtype_name(t),
          n_elem, e.n_chunks, want_chunks);
    int n_zstd = 0;
    for (int i = 0; i < e.n_chunks; i++) {
        n_zstd += e.chunks[i].codec == KV_CODEC_ZSTD;
        CHECK(e.chunks[i].raw_size % es == 0, "chunk %d not whole elements", i);
        if (e.chunks[i].codec == KV_CODEC_ZSTD)
            CHECK(e.chunks[i].transform == kv_transform_for(t), "chunk %d transform", i);
    }
    if (expect_zstd) CHECK(n_zstd > 0, "%s n=%zu: nothing compressed", kv_dtype_name(t), n_elem);
    uint8_t *dst = malloc(n + 1);
    memset(dst, 0xA5, n + 1);
    int bad = -2;
    rc = kv_chunk_decode(e.chunks, e.n_chunks, e.stored, e.stored_size, dst, n, threads, &bad,
                         "test", &err);
    CHECK(rc == 0 && bad == -1, "%s n=%zu decode: %s", kv_dtype_name(t), n_elem, err.msg);
    CHECK(memcmp(src, dst, n) == 0, "%s n=%zu chunk %zu threads %d: bytes differ", kv_dtype_name(t),
          n_elem, chunk_size, threads);
    CHECK(dst[n] == 0xA5, "decode wrote past the end");
    kv_encoded_free(&e);
    free(src);
    free(dst);
}

static void check_round_trips(void) {
    kv_dtype types[] = {KV_F32, KV_F16, KV_BF16, KV_I8};
    for (int k = 0; k < 4; k++) {
        kv_dtype t = types[k];
        round_trip(t, 0, 0, 2, 0);
        round_trip(t, 1, 0, 2, 0);
        round_trip(t, 8000, 0, 1, 1); /* one chunk */
        round_trip(t, 10007, 4099, 3, 1); /* chunk size not a multiple of the element */
        round_trip(t, 50000, 16384, 4, 1); /* many chunks, last one short */
        round_trip(t, 3, 1, 2, 0); /* chunk smaller than an element */
    }
    round_trip(KV_BF16, (3u << 20) / 2 + 77, 0, 2, 1); /* default 2 MiB chunks, short tail */
}

static void check_determinism(void) {
    size_t n_elem = 100000;
    uint8_t *src = make_values(KV_BF16, n_elem);
    kv_codec_opts o1 = {.chunk_size = 20000, .level = 5, .threads = 1};
    kv_codec_opts o4 = {.chunk_size = 20000, .level = 5, .threads = 4};
    kv_encoded a, b;
    kv_error err = {0};
    CHECK(kv_chunk_encode(src, 2 * n_elem, KV_BF16, &o1, &a, &err) == 0, "%s", err.msg);
    CHECK(kv_chunk_encode(src, 2 * n_elem, KV_BF16, &o4, &b, &err) == 0, "%s", err.msg);
    CHECK(a.n_chunks == b.n_chunks && a.stored_size == b.stored_size &&
              memcmp(a.chunks, b.chunks, sizeof *a.chunks * (size_t)a.n_chunks) == 0 &&
              memcmp(a.stored, b.stored, a.stored_size) == 0,
          "1 and 4 threads give different output");
    /* Gaussian BF16 with the transform shrinks well below the raw size */
    CHECK(a.stored_size < 2 * n_elem * 80 / 100, "BF16 stored %zu of %zu", a.stored_size,
          2 * n_elem);
    kv_encoded_free(&a);
    kv_encoded_free(&b);
    free(src);
}

static void check_raw_fallback(void) {
    size_t n = 300000;
    uint8_t *src = malloc(n), *dst = malloc(n);
    for (size_t i = 0; i < n; i++) src[i] = (uint8_t)(next_u64() >> 17);
    kv_codec_opts o = {.chunk_size = 65536, .level = 19, .threads = 2};
    kv_encoded e;
    kv_error err = {0};
    CHECK(kv_chunk_encode(src, n, KV_BF16, &o, &e, &err) == 0, "%s", err.msg);
    int raw = 0;
    for (int i = 0; i < e.n_chunks; i++)
        raw += e.chunks[i].codec == KV_CODEC_RAW && e.chunks[i].transform == KV_XFORM_NONE &&
               e.chunks[i].stored_size == e.chunks[i].raw_size;
    CHECK(raw == e.n_chunks, "random bytes: %d of %d chunks raw", raw, e.n_chunks);
    CHECK(e.stored_size == n && memcmp(e.stored, src, n) == 0, "raw chunks hold the input bytes");
    CHECK(kv_chunk_decode(e.chunks, e.n_chunks, e.stored, e.stored_size, dst, n, 2, NULL, "t",
                          &err) == 0 &&
              memcmp(dst, src, n) == 0,
          "raw decode");
    kv_encoded_free(&e);
    free(src);
    free(dst);
}

/* encodes a compressible BF16 buffer in 4 chunks for the corruption tests */
static size_t corrupt_setup(kv_encoded *e, uint8_t **src) {
    size_t n_elem = 40000;
    *src = make_values(KV_BF16, n_elem);
    kv_codec_opts o = {.chunk_size = 20000, .level = 3, .threads = 1};
    kv_error err = {0};
    CHECK(kv_chunk_encode(*src, 2 * n_elem, KV_BF16, &o, e, &err) == 0, "%s", err.msg);
    return 2 * n_elem;
}

static void check_corruption(void) {
    kv_encoded e;
    uint8_t *src;
    size_t n = corrupt_setup(&e, &src);
    uint8_t *dst = malloc(n + 64), *stored = malloc(e.stored_size);
    kv_error err = {0};
    int bad;

    /* every chunk compressed, so flips land in zstd frames */
    int all_zstd = 1;
    for (int i = 0; i < e.n_chunks; i++) all_zstd &= e.chunks[i].codec == KV_CODEC_ZSTD;
    CHECK(all_zstd && e.n_chunks == 4, "setup: %d chunks", e.n_chunks);

    /* frame magic of chunk 2 broken: error naming chunk 2 */
    memcpy(stored, e.stored, e.stored_size);
    stored[e.chunks[2].stored_offset] ^= 0xFF;
    int rc =
        kv_chunk_decode(e.chunks, e.n_chunks, stored, e.stored_size, dst, n, 2, &bad, "t", &err);
    CHECK(rc == KV_ECHECKSUM && bad == 2, "broken magic: rc %d bad %d (%s)", rc, bad, err.msg);
    CHECK(strstr(err.msg, "chunk 2") != NULL, "message names the chunk: %s", err.msg);

    /* 300 random single-bit flips anywhere: always an error (the crc32c), never a crash or a
     * write outside the destination (ASan watches) */
    int errors = 0, trials = 300;
    for (int k = 0; k < trials; k++) {
        memcpy(stored, e.stored, e.stored_size);
        size_t at = (size_t)(next_u64() % e.stored_size);
        stored[at] ^= (uint8_t)(1u << (next_u64() % 8));
        memset(dst, 0x5A, n + 64);
        rc = kv_chunk_decode(e.chunks, e.n_chunks, stored, e.stored_size, dst, n, 2, &bad, "t",
                             &err);
        if (rc) errors++;
        int tail_ok = 1;
        for (int i = 0; i < 64; i++) tail_ok &= dst[n + i] == 0x5A;
        CHECK(tail_ok, "flip at %zu wrote past the destination", at);
    }
    CHECK(errors == trials, "%d of %d flips went unnoticed", trials - errors, trials);

    /* table says fewer raw bytes than the frame holds: refused before writing */
    kv_chunk t[4];
    memcpy(t, e.chunks, sizeof t);
    t[1].raw_size -= 2;
    rc = kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 2, &bad, "t", &err);
    CHECK(rc == KV_ECHECKSUM && bad == 1, "short declared size: rc %d bad %d", rc, bad);

    /* stored size cut: not one whole frame */
    memcpy(t, e.chunks, sizeof t);
    t[3].stored_size -= 1;
    rc = kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 2, &bad, "t", &err);
    CHECK(rc == KV_ECHECKSUM && bad == 3, "truncated frame: rc %d bad %d", rc, bad);

    /* chunks swapped in the table: sizes disagree with the frames, or the bytes land elsewhere */
    memcpy(t, e.chunks, sizeof t);
    t[0].stored_offset = e.chunks[1].stored_offset;
    t[0].stored_size = e.chunks[1].stored_size;
    t[1].stored_offset = e.chunks[0].stored_offset;
    t[1].stored_size = e.chunks[0].stored_size;
    rc = kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 1, &bad, "t", &err);
    CHECK(rc != 0 || memcmp(dst, src, n) != 0, "swapped chunks went unnoticed");

    /* table outside the buffers */
    memcpy(t, e.chunks, sizeof t);
    t[2].stored_offset = e.stored_size;
    CHECK(kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 1, NULL, "t", &err) == KV_EFORMAT,
          "stored offset past the end");
    memcpy(t, e.chunks, sizeof t);
    t[3].raw_offset = UINT64_MAX - 10;
    CHECK(kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 1, NULL, "t", &err) == KV_EFORMAT,
          "raw offset overflow");
    memcpy(t, e.chunks, sizeof t);
    t[0].codec = KV_CODEC_RAW;
    t[0].transform = KV_XFORM_NONE;
    CHECK(kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 1, NULL, "t", &err) == KV_EFORMAT,
          "raw chunk whose stored size differs from raw size");
    memcpy(t, e.chunks, sizeof t);
    t[0].raw_size = KV_CHUNK_MAX_SIZE + 2;
    CHECK(kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n, 1, NULL, "t", &err) == KV_EFORMAT,
          "oversized chunk");
    memcpy(t, e.chunks, sizeof t);
    t[0].raw_size += 1;
    CHECK(kv_chunk_decode(t, 4, e.stored, e.stored_size, dst, n + 64, 1, NULL, "t", &err) ==
              KV_EFORMAT,
          "odd size for a 2-byte transform");

    /* a frame without a declared content size is refused */
    size_t cap = ZSTD_compressBound(1000);
    uint8_t *frame = malloc(cap), plain[1000];
    memset(plain, 7, sizeof plain);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_inBuffer in = {plain, sizeof plain, 0};
    ZSTD_outBuffer out = {frame, cap, 0};
    size_t left = ZSTD_compressStream2(cc, &out, &in, ZSTD_e_end);
    CHECK(left == 0, "streaming compress");
    ZSTD_freeCCtx(cc);
    kv_chunk one = {.raw_offset = 0,
                    .raw_size = 500,
                    .stored_offset = 0,
                    .stored_size = out.pos,
                    .codec = KV_CODEC_ZSTD,
                    .transform = KV_XFORM_NONE,
                    .stored_crc32c = kv_crc32c(frame, out.pos)};
    rc = kv_chunk_decode(&one, 1, frame, out.pos, dst, 500, 1, &bad, "t", &err);
    CHECK(rc == KV_ECHECKSUM && strstr(err.msg, "unknown") != NULL, "unknown content size: %s",
          err.msg);
    free(frame);

    kv_encoded_free(&e);
    free(src);
    free(dst);
    free(stored);
}

static void check_bad_args(void) {
    kv_encoded e;
    kv_error err = {0};
    uint8_t b[16] = {0};
    CHECK(kv_chunk_encode(b, 3, KV_F32, NULL, &e, &err) == KV_EINVAL, "partial element");
    kv_codec_opts o = {.level = 99};
    CHECK(kv_chunk_encode(b, 16, KV_F32, &o, &e, &err) == KV_EINVAL, "bad level");
    kv_codec_opts big = {.chunk_size = KV_CHUNK_MAX_SIZE + 1};
    CHECK(kv_chunk_encode(b, 16, KV_F32, &big, &e, &err) == KV_EINVAL, "chunk too big");
}

static void check_crc32c(void) {
    const char *check = "123456789"; /* the catalogue check value of CRC-32C */
    int have_hw = kv_crc32c_use_hw(1);
    CHECK(kv_crc32c(check, 9) == 0xE3069283u, "crc32c check value (hw=%d): %08x", have_hw,
          kv_crc32c(check, 9));
    CHECK(kv_crc32c("", 0) == 0, "crc32c of nothing");
    kv_crc32c_use_hw(0);
    CHECK(kv_crc32c(check, 9) == 0xE3069283u, "crc32c check value (tables)");
    static uint8_t buf[5000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)next_u64();
    int bad = 0;
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n + off <= sizeof buf; n += n < 80 ? 1 : 397) {
            kv_crc32c_use_hw(0);
            uint32_t a = kv_crc32c(buf + off, n);
            kv_crc32c_use_hw(1);
            bad += a != kv_crc32c(buf + off, n);
        }
    CHECK(bad == 0, "%d lengths where the crc32c paths differ", bad);
}

static int fail_at(void *ctx, int i, int worker, kv_error *err) {
    int *ran = ctx;
    (void)worker;
    __atomic_add_fetch(ran, 1, __ATOMIC_RELAXED);
    if (i == 5 || i == 9) return kv_fail(err, KV_EIO, "task %d failed", i);
    return 0;
}

static void check_pool(void) {
    for (int threads = 1; threads <= 4; threads++) {
        int ran = 0, failed = -2;
        kv_error err = {0};
        int rc = kv_pool_run(100, threads, fail_at, &ran, &failed, &err);
        CHECK(rc == KV_EIO && failed == 5 && strcmp(err.msg, "task 5 failed") == 0,
              "threads %d: rc %d failed %d msg %s", threads, rc, failed, err.msg);
        CHECK(ran < 100, "threads %d: kept going after the failure (%d ran)", threads, ran);
    }
    CHECK(kv_resolve_threads(0, 1000) >= 1 && kv_resolve_threads(8, 3) == 3 &&
              kv_resolve_threads(4, 0) == 1,
          "resolve threads");
}

int main(void) {
    check_transform_layout();
    check_crc32c();
    check_round_trips();
    check_determinism();
    check_raw_fallback();
    check_corruption();
    check_bad_args();
    check_pool();
    return check_done("test_chunkcodec");
}
