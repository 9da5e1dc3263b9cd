/* Parity of the CUDA twins (kernels/cuda) with the CPU reference kernels (kernels/cpu): every
 * CUDA kernel and its reference run on the same random inputs; the report gives per-kernel
 * errors and a verdict. The library never prints: kvverify (cli) formats the report. */
#ifndef KV_KERNEL_PARITY_H
#define KV_KERNEL_PARITY_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define KV_PARITY_MAX 16

typedef enum {
    KV_PARITY_PASSED = 0, /* every kernel within tolerance */
    KV_PARITY_FAILED,     /* at least one kernel outside its tolerance */
    KV_PARITY_NO_DEVICE,  /* built with CUDA, but cudaGetDeviceCount failed or found none */
    KV_PARITY_NOT_BUILT,  /* built without CUDA (make CUDA=0, or no nvcc) */
    KV_PARITY_ERROR,      /* a CUDA call or an allocation failed midway */
} kv_parity_status;

typedef struct {
    char name[40];     /* e.g. "matmul T=1", "attention strict" */
    size_t n;          /* elements compared */
    double max_abs;    /* max |gpu - cpu| */
    double max_rel;    /* max |gpu - cpu| / (|cpu| + atol) */
    double atol, rtol; /* pass iff |gpu - cpu| <= atol + rtol * |cpu| for every element */
    int pass;
} kv_parity_result;

typedef struct {
    kv_parity_status status;
    char device[128];  /* CUDA device name, "" when none */
    int n;             /* results filled */
    kv_parity_result r[KV_PARITY_MAX];
} kv_parity_report;

/* Runs every case with inputs drawn from `seed`. Returns 0 when all pass; KV_EMISMATCH when
 * any fails (err names them); KV_EUNSUPPORTED when there is no CUDA build or device
 * (rep->status tells which); another KV_E* code on a CUDA or allocation failure. */
int kv_kernel_parity(kv_parity_report *rep, uint64_t seed, kv_error *err);
const char *kv_parity_status_name(kv_parity_status s);

#endif
