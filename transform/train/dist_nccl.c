/* The NCCL process group (dist.h): gradient sums on the GPU (ncclAllReduce over device buffers,
 * one GPU per process), everything else through the MPI group that set it up. Built when CUDA,
 * MPI and nccl.h are all found (Makefile, -DKV_NCCL=1). Written and compiled here, not yet run on
 * GPUs: the first multi-GPU run is its test (docs/DISTILL.md). */
#include "transform/train/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if KV_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

int kv_dist_have_nccl(void) { return 1; }

typedef struct {
    kv_dist *mpi; /* the MPI group: scalars, status, broadcasts (not owned) */
    ncclComm_t comm;
    cudaStream_t stream; /* the sums run on it; waited for before returning */
} nccl_state;

static int nccl_fail(kv_error *err, const char *what, ncclResult_t r) {
    return kv_fail(err, KV_EIO, "%s: %s", what, ncclGetErrorString(r));
}

static int cuda_fail(kv_error *err, const char *what, cudaError_t e) {
    return kv_fail(err, KV_EIO, "%s: %s", what, cudaGetErrorString(e));
}

static int nccl_allreduce_f32(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                              kv_error *err) {
    nccl_state *s = d->impl;
    ncclResult_t r = ncclGroupStart();
    for (int i = 0; i < k && r == ncclSuccess; i++)
        r = ncclAllReduce(bufs[i], bufs[i], counts[i], ncclFloat, ncclSum, s->comm, s->stream);
    const ncclResult_t r2 = ncclGroupEnd();
    if (r != ncclSuccess) return nccl_fail(err, "ncclAllReduce (gradients)", r);
    if (r2 != ncclSuccess) return nccl_fail(err, "ncclGroupEnd (gradients)", r2);
    const cudaError_t e = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess) return cuda_fail(err, "NCCL gradient sum", e);
    return 0;
}

static int nccl_allreduce_f64(kv_dist *d, double *buf, size_t n, kv_error *err) {
    nccl_state *s = d->impl;
    return s->mpi->ops->allreduce_f64(s->mpi, buf, n, err);
}

static int nccl_bcast(kv_dist *d, void *buf, size_t n, int root, kv_error *err) {
    nccl_state *s = d->impl;
    return s->mpi->ops->bcast(s->mpi, buf, n, root, err);
}

static int nccl_fail_any(kv_dist *d, int failed, int *first_failed, kv_error *err) {
    nccl_state *s = d->impl;
    return s->mpi->ops->fail_any(s->mpi, failed, first_failed, err);
}

static int nccl_barrier(kv_dist *d, kv_error *err) {
    nccl_state *s = d->impl;
    return s->mpi->ops->barrier(s->mpi, err);
}

static void nccl_release(kv_dist *d) {
    nccl_state *s = d->impl;
    if (!s) return;
    if (s->comm) {
        if (d->broken) ncclCommAbort(s->comm);
        else ncclCommDestroy(s->comm);
    }
    if (s->stream) cudaStreamDestroy(s->stream);
    if (d->broken) s->mpi->broken = 1;
    free(s);
    d->impl = NULL;
}

static const kv_dist_ops NCCL_OPS = {.allreduce_f32 = nccl_allreduce_f32,
                                     .allreduce_f64 = nccl_allreduce_f64,
                                     .bcast = nccl_bcast,
                                     .fail_any = nccl_fail_any,
                                     .barrier = nccl_barrier,
                                     .release = nccl_release};

/* the collective status check of the set-up: every process learns whether all succeeded */
static int all_ok(kv_dist *mpi, int rc, kv_error *err) {
    int first = -1;
    kv_error derr = {0};
    const int drc = kv_dist_fail_any(mpi, rc != 0, &first, &derr);
    if (rc) return rc;
    if (drc) {
        *err = derr;
        return drc;
    }
    if (first >= 0)
        return kv_fail(err, KV_EIO, "NCCL set-up: process %d of %d failed", first, mpi->size);
    return 0;
}

int kv_dist_init_nccl(kv_dist *d, kv_dist *mpi, int device, kv_error *err) {
    memset(d, 0, sizeof *d);
    nccl_state *s = calloc(1, sizeof *s);
    int rc = s ? 0 : kv_fail(err, KV_ENOMEM, "NCCL: out of memory");
    cudaError_t e = cudaSuccess;
    ncclResult_t r = ncclSuccess;
    if (!rc && (e = cudaSetDevice(device)) != cudaSuccess)
        rc = cuda_fail(err, "NCCL: cudaSetDevice", e);
    if (!rc && (e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess)
        rc = cuda_fail(err, "NCCL: cudaStreamCreate", e);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (!rc && mpi->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess)
        rc = nccl_fail(err, "ncclGetUniqueId", r);
    /* every process meets every collective whatever its local state (dist.h); a failed status
     * check stops all of them at the same point */
    kv_error berr = {0};
    int crc = kv_dist_bcast(mpi, &id, sizeof id, 0, &berr);
    if (crc) {
        if (!rc) *err = berr;
        goto fail;
    }
    if ((crc = all_ok(mpi, rc, err))) goto fail;
    if ((r = ncclCommInitRank(&s->comm, mpi->size, id, mpi->rank)) != ncclSuccess) {
        s->comm = NULL;
        rc = nccl_fail(err, "ncclCommInitRank", r);
    }
    if ((crc = all_ok(mpi, rc, err))) goto fail;
    s->mpi = mpi;
    d->ops = &NCCL_OPS;
    d->impl = s;
    d->rank = mpi->rank;
    d->size = mpi->size;
    d->local_rank = mpi->local_rank;
    d->local_size = mpi->local_size;
    d->device_buffers = 1;
    snprintf(d->name, sizeof d->name, "nccl (%d GPUs)", d->size);
    return 0;
fail:
    if (s) {
        if (s->comm) ncclCommAbort(s->comm);
        if (s->stream) cudaStreamDestroy(s->stream);
        free(s);
    }
    kv_dist_init_single(d);
    return crc;
}

#else /* no NCCL in this build */

int kv_dist_have_nccl(void) { return 0; }

int kv_dist_init_nccl(kv_dist *d, kv_dist *mpi, int device, kv_error *err) {
    (void)mpi, (void)device;
    kv_dist_init_single(d);
    return kv_fail(err, KV_EUNSUPPORTED,
                   "this build has no NCCL support (it needs CUDA, MPI and "
                   "nccl.h at build time)");
}

#endif
