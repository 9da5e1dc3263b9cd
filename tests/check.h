/* Minimal test harness: each tests/test_*.c is one binary; CHECK counts, the last line is
 * "RESULT <name> <passed> <failed>", parsed by tests/run.sh. Fixtures: ../shared/... */
#ifndef KV_CHECK_H
#define KV_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol, what)                                                                \
    CHECK(fabs((double)(a) - (double)(b)) <= (tol), "%s: %.9g vs %.9g (tol %g)", (what),           \
          (double)(a), (double)(b), (double)(tol))

/* ends main(): prints the summary line, exit status 1 on any failure */
static inline int check_done(const char *name) {
    printf("RESULT %s %d %d\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#define SHARED_DIR "../shared"

#endif
