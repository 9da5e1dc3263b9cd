/* The parity table: one registered list of cases through which every op of kv_backend_ops is
 * checked against the CPU reference backend.
 *
 * A case runs one op (a few for the memory ops) on a `dev` backend and on a `ref` backend from
 * the same seeded inputs (inputs depend on the seed and the case's name only), downloads every
 * output from both and compares them: an element passes when |dev - ref| <= atol + rtol * |ref|
 * (NaN fails), with the case's own tolerance; with KV_PARITY_EXACT it passes only when the bits
 * are equal. Shapes cover odd sizes, GQA ratios 1/2/4/8, long caches (S over 1000), both masks,
 * F32 and BF16 weights and caches, T = 1 and T > 1.
 *
 * Uses: `kvverify kernels` (dev = CUDA, ref = CPU, tolerances) and tests/test_kernels_parity.c
 * (dev = CPU at 2 threads, ref = CPU at 1 thread, exact: kernels.h promises results that do not
 * depend on the thread count). The CPU backend's thread count is process-wide
 * (kv_kernels_set_threads): the runner sets it to each CPU backend's `threads` before calling
 * that backend's ops, and restores it at the end.
 *
 * The library never prints: callers format the report. */
#ifndef KV_PARITY_H
#define KV_PARITY_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the table ---- */

int kv_parity_n_cases(void);
const char *kv_parity_case_name(int i);
/* the op names of kv_backend_ops a case exercises, space-separated ("matmul", "alloc free ...") */
const char *kv_parity_case_ops(int i);

/* the members of kv_backend_ops by name, in declaration order */
int kv_parity_n_ops(void);
const char *kv_parity_op_name(int i);
/* how many cases of the table exercise op i */
int kv_parity_op_cases(int i);
/* the table is whole: every member of kv_backend_ops listed once in order, each with at least
 * one case, case names unique, every op a case names a member. 0 or KV_EINVAL naming the gap. */
int kv_parity_table_check(kv_error *err);

/* ---- running it ---- */

typedef struct {
    char name[96]; /* "<case>: <output>", e.g. "attention bf16 gqa4 T=1 S=1200: out" */
    const char *op; /* the case's ops */
    size_t n; /* elements compared (0: an op failed, see note) */
    size_t bad; /* elements outside tolerance */
    double max_abs; /* max |dev - ref| */
    double max_rel; /* max |dev - ref| / (|ref| + atol) */
    double atol, rtol;
    int pass;
    char note[512]; /* the error of an op that failed, or what was expected */
} kv_parity_result;

typedef struct {
    kv_parity_result *r; /* grows as cases run */
    int n, cap;
    int cases; /* cases run */
    int failed; /* results that did not pass */
    char device[128], reference[128]; /* the backends' names */
} kv_parity_report;

enum { KV_PARITY_EXACT = 1 }; /* pass only on equal bits (tolerances ignored) */

typedef struct {
    uint64_t seed;
    unsigned flags; /* KV_PARITY_EXACT */
    const char *filter; /* run only cases whose name contains this (NULL: all) */
} kv_parity_opts;

/* Runs the cases on dev and ref. 0 when every result passes; KV_EMISMATCH when any does not
 * (err names the first few); KV_ENOMEM or another code when the run itself could not go on
 * (host memory, a reference op failing): rep holds what ran. An op failing on dev is a failed
 * result, not an error: the run goes on. Free rep with kv_parity_report_free either way. */
int kv_parity_run(kv_parity_report *rep, kv_backend *dev, kv_backend *ref,
                  const kv_parity_opts *opts, kv_error *err);
void kv_parity_report_free(kv_parity_report *rep);

#ifdef __cplusplus
}
#endif

#endif
