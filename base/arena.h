/* One allocation carved into buffers: sizes are added up first (kv_arena_reserve), the block is
 * allocated once (kv_arena_init), then handed out in the same order (kv_arena_take). Every
 * buffer starts on a 64-byte boundary. No allocation after init. */
#ifndef KV_ARENA_H
#define KV_ARENA_H

#include <stddef.h>

#include "base/error.h"

#define KV_ARENA_ALIGN 64

typedef struct {
    unsigned char *base;
    size_t size; /* bytes allocated */
    size_t used; /* bytes handed out */
} kv_arena;

/* *total += count * elem_size rounded up to KV_ARENA_ALIGN; -1 (total unchanged) on overflow */
int kv_arena_reserve(size_t *total, size_t count, size_t elem_size);
/* one zeroed block of `bytes` (0 allowed); `what` names it in the error */
int kv_arena_init(kv_arena *a, size_t bytes, const char *what, kv_error *err);
/* next count * elem_size bytes; NULL when they do not fit (the reservation was wrong) */
void *kv_arena_take(kv_arena *a, size_t count, size_t elem_size);
void kv_arena_free(kv_arena *a);

#endif
