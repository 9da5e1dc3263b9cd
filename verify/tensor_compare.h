/* Parity of two checkpoints tensor by tensor: the same names and shapes, and how far apart the
 * values are. A weight-level check of two training runs that should agree (kvdistill on one
 * process and under mpirun, an interrupted run resumed and an uninterrupted one). */
#ifndef KV_TENSOR_COMPARE_H
#define KV_TENSOR_COMPARE_H

#include <stddef.h>

#include "base/error.h"

typedef struct {
    int n_tensors; /* compared (every tensor of both) */
    int n_differing; /* tensors with at least one differing value */
    size_t n_values; /* values compared */
    double max_abs; /* max |a - b| over every value */
    /* the worst tensor by relative difference: max |a - b| / max |b| within one tensor (0 when
     * equal; max |a - b| when b is all zeros) */
    double max_rel;
    char worst[128]; /* its name ("" when every tensor is equal) */
} kv_tensor_report;

/* a, b: safetensors files or model directories (every *.safetensors shard); float tensors
 * (F32, F16, BF16) are compared as F32, others byte for byte (a difference counts as relative
 * difference 1). Names or shapes that differ are an error (KV_EMISMATCH) naming the tensor. */
int kv_tensor_compare(kv_tensor_report *r, const char *path_a, const char *path_b, kv_error *err);

#endif
