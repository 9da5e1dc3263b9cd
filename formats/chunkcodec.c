#include "formats/chunkcodec.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---------------- names ---------------- */

const char *kv_codec_name(kv_chunk_codec c) { return c == KV_CODEC_ZSTD ? "zstd" : "raw"; }

const char *kv_transform_name(kv_chunk_transform t) {
    switch (t) {
    case KV_XFORM_BYTEGROUP2: return "bytegroup2";
    case KV_XFORM_BYTEPLANE4: return "byteplane4";
    default: return "none";
    }
}

int kv_codec_parse(const char *name, kv_chunk_codec *out) {
    if (!name) return -1;
    if (strcmp(name, "raw") == 0) *out = KV_CODEC_RAW;
    else if (strcmp(name, "zstd") == 0) *out = KV_CODEC_ZSTD;
    else return -1;
    return 0;
}

int kv_transform_parse(const char *name, kv_chunk_transform *out) {
    if (!name) return -1;
    if (strcmp(name, "none") == 0) *out = KV_XFORM_NONE;
    else if (strcmp(name, "bytegroup2") == 0) *out = KV_XFORM_BYTEGROUP2;
    else if (strcmp(name, "byteplane4") == 0) *out = KV_XFORM_BYTEPLANE4;
    else return -1;
    return 0;
}

kv_chunk_transform kv_transform_for(kv_dtype t) {
    switch (t) {
    case KV_F16:
    case KV_BF16:
    case KV_I16:
    case KV_U16: return KV_XFORM_BYTEGROUP2;
    case KV_F32:
    case KV_I32:
    case KV_U32: return KV_XFORM_BYTEPLANE4;
    default: return KV_XFORM_NONE;
    }
}

size_t kv_transform_elem_size(kv_chunk_transform t) {
    return t == KV_XFORM_BYTEGROUP2 ? 2 : t == KV_XFORM_BYTEPLANE4 ? 4 : 1;
}

/* ---------------- transforms ---------------- */

/* [l0 h0 l1 h1 ...] -> [h0 h1 ... | l0 l1 ...] */
static void group2_apply(uint8_t *dst, const uint8_t *src, size_t m) {
    uint8_t *hi = dst, *lo = dst + m;
    for (size_t i = 0; i < m; i++) {
        lo[i] = src[2 * i];
        hi[i] = src[2 * i + 1];
    }
}

static void group2_undo(uint8_t *dst, const uint8_t *src, size_t m) {
    const uint8_t *hi = src, *lo = src + m;
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= m; i += 16) {
        __m128i h = _mm_loadu_si128((const __m128i *)(hi + i));
        __m128i l = _mm_loadu_si128((const __m128i *)(lo + i));
        _mm_storeu_si128((__m128i *)(dst + 2 * i), _mm_unpacklo_epi8(l, h));
        _mm_storeu_si128((__m128i *)(dst + 2 * i + 16), _mm_unpackhi_epi8(l, h));
    }
#endif
    for (; i < m; i++) {
        dst[2 * i] = lo[i];
        dst[2 * i + 1] = hi[i];
    }
}

/* [a0 b0 c0 d0 a1 ...] (a = least significant) -> [d0 d1 ... | c... | b... | a...] */
static void plane4_apply(uint8_t *dst, const uint8_t *src, size_t m) {
    uint8_t *p3 = dst, *p2 = dst + m, *p1 = dst + 2 * m, *p0 = dst + 3 * m;
    for (size_t i = 0; i < m; i++) {
        p0[i] = src[4 * i];
        p1[i] = src[4 * i + 1];
        p2[i] = src[4 * i + 2];
        p3[i] = src[4 * i + 3];
    }
}

static void plane4_undo(uint8_t *dst, const uint8_t *src, size_t m) {
    const uint8_t *p3 = src, *p2 = src + m, *p1 = src + 2 * m, *p0 = src + 3 * m;
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= m; i += 16) {
        __m128i b0 = _mm_loadu_si128((const __m128i *)(p0 + i));
        __m128i b1 = _mm_loadu_si128((const __m128i *)(p1 + i));
        __m128i b2 = _mm_loadu_si128((const __m128i *)(p2 + i));
        __m128i b3 = _mm_loadu_si128((const __m128i *)(p3 + i));
        __m128i lo01 = _mm_unpacklo_epi8(b0, b1), hi01 = _mm_unpackhi_epi8(b0, b1);
        __m128i lo23 = _mm_unpacklo_epi8(b2, b3), hi23 = _mm_unpackhi_epi8(b2, b3);
        uint8_t *o = dst + 4 * i;
        _mm_storeu_si128((__m128i *)(o + 0), _mm_unpacklo_epi16(lo01, lo23));
        _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(lo01, lo23));
        _mm_storeu_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(hi01, hi23));
        _mm_storeu_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(hi01, hi23));
    }
#endif
    for (; i < m; i++) {
        dst[4 * i] = p0[i];
        dst[4 * i + 1] = p1[i];
        dst[4 * i + 2] = p2[i];
        dst[4 * i + 3] = p3[i];
    }
}

void kv_transform_apply(kv_chunk_transform t, uint8_t *dst, const uint8_t *src, size_t n) {
    if (t == KV_XFORM_BYTEGROUP2) group2_apply(dst, src, n / 2);
    else if (t == KV_XFORM_BYTEPLANE4) plane4_apply(dst, src, n / 4);
    else if (n) memcpy(dst, src, n);
}

void kv_transform_undo(kv_chunk_transform t, uint8_t *dst, const uint8_t *src, size_t n) {
    if (t == KV_XFORM_BYTEGROUP2) group2_undo(dst, src, n / 2);
    else if (t == KV_XFORM_BYTEPLANE4) plane4_undo(dst, src, n / 4);
    else if (n) memcpy(dst, src, n);
}

/* ---------------- CRC-32C ---------------- */

static uint32_t crc_table[8][256]; /* slicing-by-8 */

static void crc_tables_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

static uint32_t crc32c_tables(uint32_t crc, const uint8_t *p, size_t n) {
    for (; n && ((uintptr_t)p & 7); n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc; /* little-endian: the low 4 bytes absorb the running crc */
        crc = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^
              crc_table[5][(v >> 16) & 0xFF] ^ crc_table[4][(v >> 24) & 0xFF] ^
              crc_table[3][(v >> 32) & 0xFF] ^ crc_table[2][(v >> 40) & 0xFF] ^
              crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
    }
    for (; n; n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <nmmintrin.h>
#define KV_CRC_X86 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p,
                                                               size_t n) {
    for (; n && ((uintptr_t)p & 7); n--) crc = _mm_crc32_u8(crc, *p++);
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    crc = (uint32_t)c;
    for (; n; n--) crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

static int cpu_has_sse42(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 20) & 1;
}
#endif

typedef uint32_t (*crc_fn)(uint32_t crc, const uint8_t *p, size_t n);
static crc_fn crc_impl = crc32c_tables;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_pick(void) {
    crc_tables_init();
#ifdef KV_CRC_X86
    if (cpu_has_sse42()) crc_impl = crc32c_sse42;
#endif
}

int kv_crc32c_use_hw(int enable) {
    pthread_once(&crc_once, crc_pick);
    crc_impl = crc32c_tables;
#ifdef KV_CRC_X86
    if (enable && cpu_has_sse42()) crc_impl = crc32c_sse42;
    return crc_impl == crc32c_sse42;
#else
    (void)enable;
    return 0;
#endif
}

uint32_t kv_crc32c(const void *data, size_t n) {
    pthread_once(&crc_once, crc_pick);
    return ~crc_impl(~0u, data, n);
}

/* ---------------- encode ---------------- */

typedef struct {
    const uint8_t *src;
    size_t n, chunk_size;
    kv_chunk_transform transform;
    int level, hash_log;
    kv_chunk *chunks;
    uint8_t **frames; /* per chunk: its stored bytes (NULL for raw) */
    uint8_t **scratch; /* per worker: chunk_size transformed bytes */
    ZSTD_CCtx **cctx; /* per worker */
} encode_job;

/* One frame (content size in its header) in which every byte plane starts a new block:
 * zstd gives each block its own literal statistics, so a plane of exponents is not coded
 * with the statistics of a plane of mantissa bytes even when planes are small. */
static size_t compress_planes(ZSTD_CCtx *cc, uint8_t *dst, size_t cap, const uint8_t *src, size_t n,
                              size_t n_planes) {
    ZSTD_outBuffer out = {dst, cap, 0};
    size_t plane = n / n_planes;
    for (size_t p = 0; p < n_planes; p++) {
        size_t len = p + 1 == n_planes ? n - p * plane : plane;
        ZSTD_inBuffer in = {src + p * plane, len, 0};
        ZSTD_EndDirective mode = p + 1 == n_planes ? ZSTD_e_end : ZSTD_e_flush;
        size_t left;
        do {
            left = ZSTD_compressStream2(cc, &out, &in, mode);
            if (ZSTD_isError(left)) return left;
            if (left && out.pos == out.size) return (size_t)-ZSTD_error_dstSize_tooSmall;
        } while (left != 0 || in.pos < in.size);
    }
    return out.pos;
}

static int encode_chunk(void *ctx, int i, int worker, kv_error *err) {
    encode_job *j = ctx;
    kv_chunk *c = &j->chunks[i];
    const uint8_t *raw = j->src + c->raw_offset;
    size_t rs = (size_t)c->raw_size;
    const uint8_t *input = raw;
    if (j->transform != KV_XFORM_NONE) {
        kv_transform_apply(j->transform, j->scratch[worker], raw, rs);
        input = j->scratch[worker];
    }
    size_t cap = ZSTD_compressBound(rs);
    uint8_t *frame = malloc(cap);
    if (!frame) return kv_fail(err, KV_ENOMEM, "chunk %d: no memory for %zu bytes", i, cap);
    ZSTD_CCtx *cc = j->cctx[worker];
    size_t got = ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters);
    if (!ZSTD_isError(got)) got = ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, j->level);
    if (!ZSTD_isError(got) && j->hash_log)
        got = ZSTD_CCtx_setParameter(cc, ZSTD_c_hashLog, j->hash_log);
    if (!ZSTD_isError(got)) got = ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
    if (!ZSTD_isError(got)) got = ZSTD_CCtx_setPledgedSrcSize(cc, rs);
    if (!ZSTD_isError(got))
        got = compress_planes(cc, frame, cap, input, rs, kv_transform_elem_size(j->transform));
    if (ZSTD_isError(got)) {
        free(frame);
        return kv_fail(err, KV_EIO, "chunk %d: zstd: %s", i, ZSTD_getErrorName(got));
    }
    if ((unsigned long long)got * 100 >= (unsigned long long)rs * KV_CHUNK_RAW_PERCENT) {
        free(frame); /* does not shrink enough: stored raw */
        c->codec = KV_CODEC_RAW;
        c->transform = KV_XFORM_NONE;
        c->stored_size = rs;
        c->stored_crc32c = kv_crc32c(raw, rs);
        return 0;
    }
    uint8_t *fit = realloc(frame, got);
    j->frames[i] = fit ? fit : frame;
    c->codec = KV_CODEC_ZSTD;
    c->transform = j->transform;
    c->stored_size = got;
    c->stored_crc32c = kv_crc32c(j->frames[i], got);
    return 0;
}

void kv_encoded_free(kv_encoded *e) {
    if (!e) return;
    free(e->chunks);
    free(e->stored);
    memset(e, 0, sizeof *e);
}

int kv_chunk_encode(const void *buf, size_t n, kv_dtype dtype, const kv_codec_opts *opts,
                    kv_encoded *out, kv_error *err) {
    memset(out, 0, sizeof *out);
    if ((unsigned)dtype >= KV_DTYPE_COUNT)
        return kv_fail(err, KV_EINVAL, "chunk encode: unknown dtype %d", (int)dtype);
    kv_chunk_transform transform = kv_transform_for(dtype);
    size_t esize = kv_dtype_size(dtype);
    if (esize == 0) esize = 1;
    if (n % esize)
        return kv_fail(err, KV_EINVAL,
                       "chunk encode: %zu bytes is not a whole number of %s elements", n,
                       kv_dtype_name(dtype));
    size_t cs = opts && opts->chunk_size ? opts->chunk_size : KV_CHUNK_DEFAULT_SIZE;
    if (cs > KV_CHUNK_MAX_SIZE)
        return kv_fail(err, KV_EINVAL, "chunk encode: chunk size %zu above the %zu limit", cs,
                       KV_CHUNK_MAX_SIZE);
    cs -= cs % esize;
    if (cs == 0) cs = esize;
    int level = opts && opts->level ? opts->level : KV_CHUNK_DEFAULT_LEVEL;
    int hash_log = opts && opts->hash_log ? opts->hash_log
                   : opts && opts->level  ? 0
                                          : KV_CHUNK_DEFAULT_HASH_LOG;
    if (level < 1 || level > ZSTD_maxCLevel())
        return kv_fail(err, KV_EINVAL, "chunk encode: zstd level %d outside 1..%d", level,
                       ZSTD_maxCLevel());
    ZSTD_bounds hb = ZSTD_cParam_getBounds(ZSTD_c_hashLog);
    if (hash_log && (hash_log < hb.lowerBound || hash_log > hb.upperBound))
        return kv_fail(err, KV_EINVAL, "chunk encode: zstd hash log %d outside %d..%d", hash_log,
                       hb.lowerBound, hb.upperBound);
    if (n == 0) return 0;
    size_t n_chunks = n / cs + (n % cs != 0);
    if (n_chunks > (size_t)1 << 30)
        return kv_fail(err, KV_EINVAL, "chunk encode: %zu chunks is too many", n_chunks);
    int threads = kv_resolve_threads(opts ? opts->threads : 0, (int)n_chunks);

    encode_job j = {.src = buf,
                    .n = n,
                    .chunk_size = cs,
                    .transform = transform,
                    .level = level,
                    .hash_log = hash_log};
    int rc = 0;
    j.chunks = calloc(n_chunks, sizeof *j.chunks);
    j.frames = calloc(n_chunks, sizeof *j.frames);
    j.scratch = calloc((size_t)threads, sizeof *j.scratch);
    j.cctx = calloc((size_t)threads, sizeof *j.cctx);
    if (!j.chunks || !j.frames || !j.scratch || !j.cctx) {
        rc = kv_fail(err, KV_ENOMEM, "chunk encode: no memory for %zu chunks", n_chunks);
        goto done;
    }
    for (int t = 0; t < threads; t++) {
        j.cctx[t] = ZSTD_createCCtx();
        j.scratch[t] = transform != KV_XFORM_NONE ? malloc(cs) : NULL;
        if (!j.cctx[t] || (transform != KV_XFORM_NONE && !j.scratch[t])) {
            rc = kv_fail(err, KV_ENOMEM, "chunk encode: no memory for worker scratch");
            goto done;
        }
    }
    for (size_t i = 0; i < n_chunks; i++) {
        j.chunks[i].raw_offset = i * cs;
        j.chunks[i].raw_size = n - i * cs < cs ? n - i * cs : cs;
    }
    rc = kv_pool_run((int)n_chunks, threads, encode_chunk, &j, NULL, err);
    if (rc) goto done;

    size_t total = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        j.chunks[i].stored_offset = total;
        total += j.chunks[i].stored_size;
    }
    out->stored = malloc(total ? total : 1);
    if (!out->stored) {
        rc = kv_fail(err, KV_ENOMEM, "chunk encode: no memory for %zu stored bytes", total);
        goto done;
    }
    for (size_t i = 0; i < n_chunks; i++) {
        const kv_chunk *c = &j.chunks[i];
        const uint8_t *from = c->codec == KV_CODEC_RAW ? j.src + c->raw_offset : j.frames[i];
        memcpy(out->stored + c->stored_offset, from, (size_t)c->stored_size);
    }
    out->stored_size = total;
    out->chunks = j.chunks;
    out->n_chunks = (int)n_chunks;
    j.chunks = NULL;
done:
    if (j.frames)
        for (size_t i = 0; i < n_chunks; i++) free(j.frames[i]);
    if (j.scratch)
        for (int t = 0; t < threads; t++) free(j.scratch[t]);
    if (j.cctx)
        for (int t = 0; t < threads; t++) ZSTD_freeCCtx(j.cctx[t]);
    free(j.frames);
    free(j.scratch);
    free(j.cctx);
    free(j.chunks);
    if (rc) kv_encoded_free(out);
    return rc;
}

/* ---------------- decode ---------------- */

int kv_chunk_table_check(const kv_chunk *chunks, int n_chunks, size_t stored_size, size_t dst_size,
                         const char *label, kv_error *err) {
    if (n_chunks < 0) return kv_fail(err, KV_EFORMAT, "%s: negative chunk count", label);
    for (int i = 0; i < n_chunks; i++) {
        const kv_chunk *c = &chunks[i];
        uint64_t raw_end, stored_end;
        if (c->codec != KV_CODEC_RAW && c->codec != KV_CODEC_ZSTD)
            return kv_fail(err, KV_EFORMAT, "%s: chunk %d: unknown codec %d", label, i,
                           (int)c->codec);
        if (c->transform != KV_XFORM_NONE && c->transform != KV_XFORM_BYTEGROUP2 &&
            c->transform != KV_XFORM_BYTEPLANE4)
            return kv_fail(err, KV_EFORMAT, "%s: chunk %d: unknown transform %d", label, i,
                           (int)c->transform);
        if (c->raw_size == 0 || c->raw_size > KV_CHUNK_MAX_SIZE)
            return kv_fail(err, KV_EFORMAT, "%s: chunk %d: raw size %llu outside 1..%zu", label, i,
                           (unsigned long long)c->raw_size, KV_CHUNK_MAX_SIZE);
        if (c->raw_size % kv_transform_elem_size(c->transform))
            return kv_fail(err, KV_EFORMAT, "%s: chunk %d: raw size %llu is not whole %s elements",
                           label, i, (unsigned long long)c->raw_size,
                           kv_transform_name(c->transform));
        if (c->codec == KV_CODEC_RAW &&
            (c->stored_size != c->raw_size || c->transform != KV_XFORM_NONE))
            return kv_fail(
                err, KV_EFORMAT,
                "%s: chunk %d: raw chunk with stored size %llu != raw size %llu or a transform",
                label, i, (unsigned long long)c->stored_size, (unsigned long long)c->raw_size);
        if (c->codec == KV_CODEC_ZSTD && c->stored_size == 0)
            return kv_fail(err, KV_EFORMAT, "%s: chunk %d: empty zstd chunk", label, i);
        if (__builtin_add_overflow(c->raw_offset, c->raw_size, &raw_end) || raw_end > dst_size)
            return kv_fail(err, KV_EFORMAT,
                           "%s: chunk %d: raw bytes [%llu, +%llu) outside the %zu-byte destination",
                           label, i, (unsigned long long)c->raw_offset,
                           (unsigned long long)c->raw_size, dst_size);
        if (__builtin_add_overflow(c->stored_offset, c->stored_size, &stored_end) ||
            stored_end > stored_size)
            return kv_fail(err, KV_EFORMAT,
                           "%s: chunk %d: stored bytes [%llu, +%llu) outside the %zu stored bytes",
                           label, i, (unsigned long long)c->stored_offset,
                           (unsigned long long)c->stored_size, stored_size);
    }
    return 0;
}

typedef struct {
    const kv_chunk *chunks;
    const uint8_t *stored;
    uint8_t *dst;
    const char *label;
    ZSTD_DCtx **dctx; /* per worker */
    uint8_t **scratch; /* per worker, max raw_size of a transformed chunk */
} decode_job;

static int decode_chunk(void *ctx, int i, int worker, kv_error *err) {
    decode_job *j = ctx;
    const kv_chunk *c = &j->chunks[i];
    const uint8_t *src = j->stored + c->stored_offset;
    uint8_t *dst = j->dst + c->raw_offset;
    size_t rs = (size_t)c->raw_size, ss = (size_t)c->stored_size;
    if (kv_crc32c(src, ss) != c->stored_crc32c)
        return kv_fail(err, KV_ECHECKSUM,
                       "%s: chunk %d: stored bytes fail their crc32c (corrupted)", j->label, i);
    if (c->codec == KV_CODEC_RAW) {
        memcpy(dst, src, rs);
        return 0;
    }
    size_t frame = ZSTD_findFrameCompressedSize(src, ss);
    if (ZSTD_isError(frame) || frame != ss)
        return kv_fail(err, KV_ECHECKSUM,
                       "%s: chunk %d: stored bytes are not one zstd frame of %zu bytes", j->label,
                       i, ss);
    unsigned long long declared = ZSTD_getFrameContentSize(src, ss);
    if (declared != (unsigned long long)rs)
        return kv_fail(err, KV_ECHECKSUM,
                       "%s: chunk %d: zstd frame declares %s bytes, chunk table says %zu", j->label,
                       i,
                       declared == ZSTD_CONTENTSIZE_UNKNOWN ? "an unknown number of"
                       : declared == ZSTD_CONTENTSIZE_ERROR ? "an invalid number of"
                                                            : "a different number of",
                       rs);
    uint8_t *out = c->transform == KV_XFORM_NONE ? dst : j->scratch[worker];
    size_t got = ZSTD_decompressDCtx(j->dctx[worker], out, rs, src, ss); /* capacity: exactly rs */
    if (ZSTD_isError(got))
        return kv_fail(err, KV_ECHECKSUM, "%s: chunk %d: zstd: %s", j->label, i,
                       ZSTD_getErrorName(got));
    if (got != rs)
        return kv_fail(err, KV_ECHECKSUM, "%s: chunk %d: decompressed to %zu bytes, expected %zu",
                       j->label, i, got, rs);
    if (c->transform != KV_XFORM_NONE) kv_transform_undo(c->transform, dst, out, rs);
    return 0;
}

int kv_chunk_decode(const kv_chunk *chunks, int n_chunks, const uint8_t *stored, size_t stored_size,
                    void *dst, size_t dst_size, int threads, int *bad_chunk, const char *label,
                    kv_error *err) {
    if (bad_chunk) *bad_chunk = -1;
    if (!label) label = "chunks";
    int rc = kv_chunk_table_check(chunks, n_chunks, stored_size, dst_size, label, err);
    if (rc || n_chunks == 0) return rc;
    size_t scratch_size = 0;
    for (int i = 0; i < n_chunks; i++)
        if (chunks[i].transform != KV_XFORM_NONE && chunks[i].raw_size > scratch_size)
            scratch_size = (size_t)chunks[i].raw_size;
    threads = kv_resolve_threads(threads, n_chunks);
    decode_job j = {.chunks = chunks, .stored = stored, .dst = dst, .label = label};
    j.dctx = calloc((size_t)threads, sizeof *j.dctx);
    j.scratch = calloc((size_t)threads, sizeof *j.scratch);
    if (!j.dctx || !j.scratch) {
        rc = kv_fail(err, KV_ENOMEM, "%s: no memory for decoder state", label);
        goto done;
    }
    for (int t = 0; t < threads; t++) {
        j.dctx[t] = ZSTD_createDCtx();
        j.scratch[t] = scratch_size ? malloc(scratch_size) : NULL;
        if (!j.dctx[t] || (scratch_size && !j.scratch[t])) {
            rc = kv_fail(err, KV_ENOMEM, "%s: no memory for decoder scratch", label);
            goto done;
        }
    }
    rc = kv_pool_run(n_chunks, threads, decode_chunk, &j, bad_chunk, err);
done:
    if (j.dctx)
        for (int t = 0; t < threads; t++) ZSTD_freeDCtx(j.dctx[t]);
    if (j.scratch)
        for (int t = 0; t < threads; t++) free(j.scratch[t]);
    free(j.dctx);
    free(j.scratch);
    return rc;
}
