/* Shared by the libFuzzer targets tests/fuzz/fuzz_*.c (built by `make fuzz-build`, run by
 * `make fuzz`; see tests/fuzz/README.md). A target returns 0 for every input; a broken
 * invariant is FUZZ_CHECK, which aborts so that libFuzzer records the input. */
#ifndef KV_FUZZ_H
#define KV_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FUZZ_CHECK %s:%d: %s: ", __FILE__, __LINE__, #cond);                  \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* the input as a NUL-terminated string (inputs holding a NUL are cut there by the parsers that
 * take C strings: that is how a file with a NUL would arrive too) */
static inline char *fuzz_cstr(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* reads every byte of [p, p + n): ASan reports any that is out of bounds */
static inline void fuzz_touch(const void *p, size_t n) {
    const volatile uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++) x ^= b[i];
    (void)x;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
