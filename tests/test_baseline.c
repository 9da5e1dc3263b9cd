/* kernels/cpu/baseline.h's read loop: an owned buffer read whole, and a loop over a caller's
 * spans reading exactly the whole 128-byte blocks of each span from its first 32-byte
 * boundary (misaligned starts, short spans, an empty one), on 1 and 2 threads. */
#include "tests/check.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/baseline.h"
#include "kernels/kernels.h"

enum { WORDS = 1 << 18 }; /* 2 MiB of 64-bit words: a span of it spans several 1 MiB chunks */

/* the sum the loop should give over span [p, p + bytes) and the bytes it should read */
static uint64_t expected(const kv_span *s, size_t *bytes) {
    const uintptr_t a = ((uintptr_t)s->p + 31) & ~(uintptr_t)31, end = (uintptr_t)s->p + s->bytes;
    const size_t blocks = end > a ? (end - a) / 128 : 0;
    const uint64_t *w = (const uint64_t *)a;
    uint64_t sum = 0;
    for (size_t i = 0; i < 16 * blocks; i++) sum += w[i];
    *bytes += 128 * blocks;
    return sum;
}

int main(void) {
    uint64_t *buf = aligned_alloc(64, sizeof(uint64_t) * WORDS);
    CHECK(buf != NULL, "buffer");
    if (!buf) return check_done("test_baseline");
    for (size_t i = 0; i < WORDS; i++) buf[i] = i * 0x9e3779b97f4a7c15ull + 1;
    const char *b = (const char *)buf;
    const kv_span spans[] = {
        {b, 1000}, /* aligned, a partial last block */
        {b + 8, 4096}, /* starts 24 bytes before a 32-byte boundary */
        {b + 40, 100}, /* shorter than one block after aligning: nothing */
        {b + 64, 0}, /* empty */
        {b + 4096, sizeof(uint64_t) * WORDS - 4096}, /* long: several chunks */
        {b + 1, 3 * 128 + 31}, /* an odd start */
    };
    const int n = (int)(sizeof spans / sizeof spans[0]);
    size_t want_bytes = 0;
    uint64_t want_sum = 0;
    for (int i = 0; i < n; i++) want_sum += expected(&spans[i], &want_bytes);
    for (int threads = 1; threads <= 2; threads++) {
        kv_kernels_set_threads(threads);
        kv_error err = {0};
        kv_read_loop *rl = NULL;
        CHECK(kv_read_loop_init_spans(&rl, spans, n, &err) == 0, "spans: %s", err.msg);
        if (!rl) continue;
        CHECK(kv_read_loop_bytes(rl) == want_bytes, "%d threads: %zu bytes per sweep, wanted %zu",
              threads, kv_read_loop_bytes(rl), want_bytes);
        CHECK(kv_read_loop_run(rl, 2) > 0, "%d threads: a rate", threads);
        CHECK(kv_read_loop_sum(rl) == want_sum, "%d threads: the words read", threads);
        kv_read_loop_free(rl);
        /* the owned buffer: every word 0 .. n-1 once (sum n (n - 1) / 2) */
        const size_t bytes = (size_t)3 << 20, words = bytes / 8;
        CHECK(kv_read_loop_init(&rl, bytes, &err) == 0, "owned: %s", err.msg);
        if (!rl) continue;
        CHECK(kv_read_loop_bytes(rl) == bytes, "owned: %zu bytes", kv_read_loop_bytes(rl));
        CHECK(kv_read_loop_best(rl, 2) > 0, "owned: a rate");
        CHECK(kv_read_loop_sum(rl) == (uint64_t)words * (words - 1) / 2, "owned: the words read");
        kv_read_loop_free(rl);
        /* no spans at all: a loop that reads nothing */
        CHECK(kv_read_loop_init_spans(&rl, NULL, 0, &err) == 0 && kv_read_loop_bytes(rl) == 0,
              "no spans");
        if (rl) CHECK(kv_read_loop_run(rl, 1) == 0.0, "no spans: no rate");
        kv_read_loop_free(rl);
    }
    free(buf);
    return check_done("test_baseline");
}
