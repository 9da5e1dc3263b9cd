#include "base/arena.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* big blocks (weights) on 2 MiB boundaries with transparent huge pages where the kernel has them:
 * fewer TLB misses when a decode step streams through every weight */
#define HUGE_ALIGN ((size_t)2 << 20)

static int round_up(size_t n, size_t *out) {
    if (__builtin_add_overflow(n, (size_t)KV_ARENA_ALIGN - 1, out)) return -1;
    *out &= ~((size_t)KV_ARENA_ALIGN - 1);
    return 0;
}

int kv_arena_reserve(size_t *total, size_t count, size_t elem_size) {
    size_t n, r, sum;
    if (__builtin_mul_overflow(count, elem_size, &n) || round_up(n, &r) ||
        __builtin_add_overflow(*total, r, &sum))
        return -1;
    *total = sum;
    return 0;
}

int kv_arena_init(kv_arena *a, size_t bytes, const char *what, kv_error *err) {
    *a = (kv_arena){0};
    if (bytes == 0) return 0;
    void *p = NULL;
    const int huge = bytes >= 2 * HUGE_ALIGN;
    if (posix_memalign(&p, huge ? HUGE_ALIGN : KV_ARENA_ALIGN, bytes) != 0)
        return kv_fail(err, KV_ENOMEM, "%s: cannot allocate %zu bytes", what, bytes);
#ifdef MADV_HUGEPAGE
    if (huge) (void)madvise(p, bytes & ~(HUGE_ALIGN - 1), MADV_HUGEPAGE);
#endif
    memset(p, 0, bytes);
    a->base = p;
    a->size = bytes;
    return 0;
}

void *kv_arena_take(kv_arena *a, size_t count, size_t elem_size) {
    size_t n, r;
    if (__builtin_mul_overflow(count, elem_size, &n) || round_up(n, &r) || r > a->size - a->used)
        return NULL;
    void *p = a->base + a->used;
    a->used += r;
    return p;
}

void kv_arena_free(kv_arena *a) {
    free(a->base);
    *a = (kv_arena){0};
}
