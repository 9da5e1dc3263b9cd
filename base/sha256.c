#include "base/sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KV_SHA_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* FIPS 180-4 4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64 primes */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* FIPS 180-4 5.3.3: fractional parts of the square roots of the first 8 primes */
static const uint32_t H256_INIT[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
static inline uint32_t big_sigma0(uint32_t x) { return rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22); }
static inline uint32_t big_sigma1(uint32_t x) { return rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25); }
static inline uint32_t small_sigma0(uint32_t x) { return rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3); }
static inline uint32_t small_sigma1(uint32_t x) { return rotr(x, 17) ^ rotr(x, 19) ^ (x >> 10); }
static inline uint32_t ch(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (~x & z); }
static inline uint32_t maj(uint32_t x, uint32_t y, uint32_t z) {
    return (x & y) ^ (x & z) ^ (y & z);
}

static inline uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* FIPS 180-4 6.2.2 on n_blocks consecutive 64-byte blocks */
static void compress_portable(uint32_t h[8], const uint8_t *p, size_t n_blocks) {
    uint32_t w[64];
    for (; n_blocks; n_blocks--, p += 64) {
        for (int t = 0; t < 16; t++) w[t] = load_be32(p + 4 * t);
        for (int t = 16; t < 64; t++)
            w[t] = small_sigma1(w[t - 2]) + w[t - 7] + small_sigma0(w[t - 15]) + w[t - 16];
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int t = 0; t < 64; t++) {
            uint32_t t1 = hh + big_sigma1(e) + ch(e, f, g) + K256[t] + w[t];
            uint32_t t2 = big_sigma0(a) + maj(a, b, c);
            hh = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
        h[5] += f;
        h[6] += g;
        h[7] += hh;
    }
}

#ifdef KV_SHA_X86
/* Same function with the SHA extensions. The state lives in two registers as the
 * instructions want it: abef = lanes (3..0) A,B,E,F and cdgh = C,D,G,H. Each
 * sha256rnds2 does two rounds; message words 16..63 come from sha256msg1/msg2. */
__attribute__((target("sha,sse4.1,ssse3"))) static void compress_shani(uint32_t h[8],
                                                                       const uint8_t *p,
                                                                       size_t n_blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abcd = _mm_loadu_si128((const __m128i *)&h[0]); /* lanes 0..3: A B C D */
    __m128i efgh = _mm_loadu_si128((const __m128i *)&h[4]); /* lanes 0..3: E F G H */
    __m128i badc = _mm_shuffle_epi32(abcd, 0xB1); /* B A D C */
    __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1B); /* H G F E */
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8); /* F E B A */
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xF0); /* H G D C */

    for (; n_blocks; n_blocks--, p += 64) {
        const __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i m[4]; /* W[4i..4i+3], rotating */
        for (int i = 0; i < 4; i++)
            m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
#pragma GCC unroll 16 /* m[] then lives in registers, the branch on g folds away */
        for (int g = 0; g < 16; g++) {
            __m128i wk = _mm_add_epi32(m[g & 3], _mm_loadu_si128((const __m128i *)&K256[4 * g]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk); /* rounds 4g, 4g+1: cdgh := new abef */
            wk = _mm_shuffle_epi32(wk, 0x0E);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, wk); /* rounds 4g+2, 4g+3 */
            if (g < 12) { /* W[4g+16..4g+19] */
                __m128i s = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
                s = _mm_add_epi32(s, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
                m[g & 3] = _mm_sha256msg2_epu32(s, m[(g + 3) & 3]);
            }
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }

    __m128i abfe = _mm_shuffle_epi32(abef, 0x1B); /* lanes 0..3: A B E F */
    __m128i ghcd = _mm_shuffle_epi32(cdgh, 0xB1); /* G H C D */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(abfe, ghcd, 0xF0)); /* A B C D */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(ghcd, abfe, 8)); /* E F G H */
}

/* two independent messages, n_blocks each, rounds interleaved: the second stream fills the SHA
 * units while the first waits on their latency (1.05-1.25x one unrolled stream here) */
__attribute__((target("sha,sse4.1,ssse3"))) static void compress_shani_x2(
    uint32_t ha[8], const uint8_t *pa, uint32_t hb[8], const uint8_t *pb, size_t n_blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef[2], cdgh[2];
    uint32_t *h[2] = {ha, hb};
    for (int s = 0; s < 2; s++) {
        __m128i badc = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[s][0]), 0xB1);
        __m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[s][4]), 0x1B);
        abef[s] = _mm_alignr_epi8(badc, hgfe, 8);
        cdgh[s] = _mm_blend_epi16(hgfe, badc, 0xF0);
    }
    for (; n_blocks; n_blocks--, pa += 64, pb += 64) {
        const __m128i abef_a = abef[0], cdgh_a = cdgh[0], abef_b = abef[1], cdgh_b = cdgh[1];
        __m128i ma[4], mb[4];
        for (int i = 0; i < 4; i++) {
            ma[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(pa + 16 * i)), bswap);
            mb[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(pb + 16 * i)), bswap);
        }
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m128i k = _mm_loadu_si128((const __m128i *)&K256[4 * g]);
            __m128i wa = _mm_add_epi32(ma[g & 3], k), wb = _mm_add_epi32(mb[g & 3], k);
            cdgh[0] = _mm_sha256rnds2_epu32(cdgh[0], abef[0], wa);
            cdgh[1] = _mm_sha256rnds2_epu32(cdgh[1], abef[1], wb);
            wa = _mm_shuffle_epi32(wa, 0x0E);
            wb = _mm_shuffle_epi32(wb, 0x0E);
            abef[0] = _mm_sha256rnds2_epu32(abef[0], cdgh[0], wa);
            abef[1] = _mm_sha256rnds2_epu32(abef[1], cdgh[1], wb);
            if (g < 12) {
                __m128i sa = _mm_sha256msg1_epu32(ma[g & 3], ma[(g + 1) & 3]);
                __m128i sb = _mm_sha256msg1_epu32(mb[g & 3], mb[(g + 1) & 3]);
                sa = _mm_add_epi32(sa, _mm_alignr_epi8(ma[(g + 3) & 3], ma[(g + 2) & 3], 4));
                sb = _mm_add_epi32(sb, _mm_alignr_epi8(mb[(g + 3) & 3], mb[(g + 2) & 3], 4));
                ma[g & 3] = _mm_sha256msg2_epu32(sa, ma[(g + 3) & 3]);
                mb[g & 3] = _mm_sha256msg2_epu32(sb, mb[(g + 3) & 3]);
            }
        }
        abef[0] = _mm_add_epi32(abef[0], abef_a);
        cdgh[0] = _mm_add_epi32(cdgh[0], cdgh_a);
        abef[1] = _mm_add_epi32(abef[1], abef_b);
        cdgh[1] = _mm_add_epi32(cdgh[1], cdgh_b);
    }
    for (int s = 0; s < 2; s++) {
        __m128i abfe = _mm_shuffle_epi32(abef[s], 0x1B);
        __m128i ghcd = _mm_shuffle_epi32(cdgh[s], 0xB1);
        _mm_storeu_si128((__m128i *)&h[s][0], _mm_blend_epi16(abfe, ghcd, 0xF0));
        _mm_storeu_si128((__m128i *)&h[s][4], _mm_alignr_epi8(ghcd, abfe, 8));
    }
}

static int cpu_has_sha(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) return 0; /* SSSE3, SSE4.1 */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1; /* SHA */
}
#endif

typedef void (*compress_fn)(uint32_t h[8], const uint8_t *p, size_t n_blocks);
static compress_fn compress = compress_portable;
static pthread_once_t compress_once = PTHREAD_ONCE_INIT;

static void pick_compress(void) {
#ifdef KV_SHA_X86
    if (cpu_has_sha()) compress = compress_shani;
#endif
}

int kv_sha256_use_hw(int enable) {
    pthread_once(&compress_once, pick_compress);
    compress = compress_portable;
#ifdef KV_SHA_X86
    if (enable && cpu_has_sha()) compress = compress_shani;
    return compress == compress_shani;
#else
    (void)enable;
    return 0;
#endif
}

void kv_sha256_init(kv_sha256_ctx *c) {
    pthread_once(&compress_once, pick_compress);
    memcpy(c->h, H256_INIT, sizeof c->h);
    c->n_bytes = 0;
    c->n_block = 0;
}

void kv_sha256_update(kv_sha256_ctx *c, const void *data, size_t n) {
    const uint8_t *p = data;
    c->n_bytes += n;
    if (c->n_block) {
        size_t take = 64 - c->n_block < n ? 64 - c->n_block : n;
        memcpy(c->block + c->n_block, p, take);
        c->n_block += take;
        p += take;
        n -= take;
        if (c->n_block < 64) return;
        compress(c->h, c->block, 1);
        c->n_block = 0;
    }
    if (n >= 64) {
        compress(c->h, p, n / 64);
        p += n & ~(size_t)63;
        n &= 63;
    }
    if (n) {
        memcpy(c->block, p, n);
        c->n_block = n;
    }
}

/* FIPS 180-4 5.1.1: a 1 bit, zeros up to 56 mod 64, the length in bits as 64-bit big-endian */
void kv_sha256_final(kv_sha256_ctx *c, uint8_t out[32]) {
    uint64_t bits = c->n_bytes * 8;
    c->block[c->n_block++] = 0x80;
    if (c->n_block > 56) {
        memset(c->block + c->n_block, 0, 64 - c->n_block);
        compress(c->h, c->block, 1);
        c->n_block = 0;
    }
    memset(c->block + c->n_block, 0, 56 - c->n_block);
    for (int i = 0; i < 8; i++) c->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    compress(c->h, c->block, 1);
    for (int i = 0; i < 8; i++) {
        out[4 * i + 0] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
    c->n_block = 0;
}

void kv_sha256(const void *data, size_t n, uint8_t out[32]) {
    kv_sha256_ctx c;
    kv_sha256_init(&c);
    kv_sha256_update(&c, data, n);
    kv_sha256_final(&c, out);
}

void kv_sha256_update_x2(kv_sha256_ctx *a, const void *pa, kv_sha256_ctx *b, const void *pb,
                         size_t n) {
    size_t joint = 0;
#ifdef KV_SHA_X86
    if (compress == compress_shani && a->n_block == 0 && b->n_block == 0 && a != b) {
        joint = n / 64;
        if (joint) compress_shani_x2(a->h, pa, b->h, pb, joint);
        a->n_bytes += (uint64_t)joint * 64;
        b->n_bytes += (uint64_t)joint * 64;
    }
#endif
    kv_sha256_update(a, (const uint8_t *)pa + joint * 64, n - joint * 64);
    kv_sha256_update(b, (const uint8_t *)pb + joint * 64, n - joint * 64);
}

void kv_sha256_x2(const void *a, size_t na, uint8_t out_a[32], const void *b, size_t nb,
                  uint8_t out_b[32]) {
    kv_sha256_ctx ca, cb;
    kv_sha256_init(&ca);
    kv_sha256_init(&cb);
    const size_t joint = na < nb ? na : nb;
    kv_sha256_update_x2(&ca, a, &cb, b, joint);
    kv_sha256_update(&ca, (const uint8_t *)a + joint, na - joint);
    kv_sha256_update(&cb, (const uint8_t *)b + joint, nb - joint);
    kv_sha256_final(&ca, out_a);
    kv_sha256_final(&cb, out_b);
}

void kv_sha256_hex(const uint8_t d[32], char out[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = 0;
}

static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

int kv_sha256_parse_hex(const char *hex, uint8_t out[32]) {
    if (!hex) return -1;
    for (int i = 0; i < 32; i++) {
        int hi = hex_value(hex[2 * i]);
        if (hi < 0) return -1;
        int lo = hex_value(hex[2 * i + 1]);
        if (lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[64] == 0 ? 0 : -1;
}

/* ---- files: buffered reads rather than mmap (a file truncated under us gives an error, not
 * SIGBUS), two files at a time through the interleaved compression ---- */

enum { FILE_BUF = 1 << 20 };

typedef struct {
    const char *path;
    int fd, eof;
    kv_sha256_ctx ctx;
    uint8_t *buf; /* [FILE_BUF] */
    size_t n; /* bytes in buf */
} file_lane;

static int lane_open(file_lane *l, const char *path, kv_error *err) {
    l->path = path;
    l->eof = 0;
    l->n = 0;
    kv_sha256_init(&l->ctx);
    if ((l->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return kv_fail(err, KV_EIO, "%s: cannot open: %s", path, strerror(errno));
    posix_fadvise(l->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return 0;
}

/* fills buf (whole, unless the file ends) */
static int lane_fill(file_lane *l, kv_error *err) {
    l->n = 0;
    while (!l->eof && l->n < FILE_BUF) {
        ssize_t got = read(l->fd, l->buf + l->n, FILE_BUF - l->n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return kv_fail(err, KV_EIO, "%s: read failed: %s", l->path, strerror(errno));
        if (got == 0) l->eof = 1;
        l->n += (size_t)got;
    }
    return 0;
}

static void lane_finish(file_lane *l, char hex[65]) {
    uint8_t d[32];
    kv_sha256_final(&l->ctx, d);
    kv_sha256_hex(d, hex);
}

/* path[0] alone (n_lanes 1) or path[0..1] side by side; digests into hex[0..n_lanes-1] */
static int hash_lanes(const char *const path[2], char *const hex[2], int n_lanes,
                      const atomic_int *stop, uint8_t *bufs, kv_error *err) {
    file_lane lane[2];
    int opened = 0, rc = 0;
    for (; opened < n_lanes && !rc; opened++) {
        lane[opened].buf = bufs + (size_t)opened * FILE_BUF;
        rc = lane_open(&lane[opened], path[opened], err);
    }
    if (rc) opened--; /* the failed one holds no descriptor */
    while (!rc) {
        if (stop && atomic_load(stop)) {
            rc = kv_fail(err, KV_EINVAL, "hashing stopped");
            break;
        }
        int live = 0;
        for (int i = 0; i < n_lanes && !rc; i++) {
            if (lane[i].eof) lane[i].n = 0; /* ended in an earlier round: nothing new */
            else rc = lane_fill(&lane[i], err), live++;
        }
        if (rc || !live) break;
        size_t joint = 0;
        if (n_lanes == 2) {
            joint = lane[0].n < lane[1].n ? lane[0].n : lane[1].n;
            kv_sha256_update_x2(&lane[0].ctx, lane[0].buf, &lane[1].ctx, lane[1].buf, joint);
        }
        for (int i = 0; i < n_lanes; i++)
            kv_sha256_update(&lane[i].ctx, lane[i].buf + joint, lane[i].n - joint);
    }
    for (int i = 0; i < opened; i++) close(lane[i].fd);
    if (!rc)
        for (int i = 0; i < n_lanes; i++) lane_finish(&lane[i], hex[i]);
    return rc;
}

/* files in tasks of `lanes` (largest first), on kv_pool_run's threads */
typedef struct {
    const char *const *paths;
    char (*hex)[65];
    const int *order; /* indices of paths, largest file first */
    int n, lanes;
    const atomic_int *stop;
    uint8_t *bufs; /* [threads, 2 * FILE_BUF] */
} files_job;

static int hash_task(void *ctx, int task, int worker, kv_error *err) {
    const files_job *j = ctx;
    const int i = task * j->lanes, n_lanes = j->n - i >= j->lanes ? j->lanes : j->n - i;
    const int a = j->order[i], b = j->order[i + n_lanes - 1];
    const char *const path[2] = {j->paths[a], j->paths[b]};
    char *const out[2] = {j->hex[a], j->hex[b]};
    return hash_lanes(path, out, n_lanes, j->stop, j->bufs + (size_t)worker * 2 * FILE_BUF, err);
}

int kv_sha256_files(const char *const *paths, int n, char (*hex)[65], int n_threads,
                    const atomic_int *stop, kv_error *err) {
    if (n <= 0) return 0;
    if (n_threads < 1) n_threads = 1;
    /* one thread: two files at a time (interleaved rounds); more: one file per thread unless
     * there are files enough to pair them on every thread */
    const int lanes = n_threads == 1 || n >= 2 * n_threads ? 2 : 1;
    const int n_tasks = (n + lanes - 1) / lanes;
    const int threads = kv_resolve_threads(n_threads, n_tasks);
    int *order = malloc(sizeof *order * (size_t)n);
    off_t *size = malloc(sizeof *size * (size_t)n);
    uint8_t *bufs = malloc(2 * (size_t)FILE_BUF * (size_t)threads);
    int rc = 0;
    if (!order || !size || !bufs)
        rc = kv_fail(err, KV_ENOMEM, "%s: no memory for read buffers", paths[0]);
    for (int i = 0; i < n && !rc;
         i++) { /* largest first, so that files of like size share a task */
        struct stat st;
        size[i] = stat(paths[i], &st) == 0 ? st.st_size : 0; /* a failed stat shows at open */
        int k = i;
        for (; k > 0 && size[order[k - 1]] < size[i]; k--) order[k] = order[k - 1];
        order[k] = i;
    }
    files_job job = {.paths = paths,
                     .hex = hex,
                     .order = order,
                     .n = n,
                     .lanes = lanes,
                     .stop = stop,
                     .bufs = bufs};
    if (!rc) rc = kv_pool_run(n_tasks, threads, hash_task, &job, NULL, err);
    if (!rc && stop && atomic_load(stop)) rc = kv_fail(err, KV_EINVAL, "hashing stopped");
    free(order);
    free(size);
    free(bufs);
    return rc;
}

int kv_sha256_file(const char *path, char hex[65], kv_error *err) {
    return kv_sha256_files(&path, 1, (char(*)[65])hex, 1, NULL, err);
}
