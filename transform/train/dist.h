/* The process-group seam of data-parallel training: how many processes run one job, which one
 * this is, and the few collectives the trainer needs. The trainer (distill.c, optim.h) is written
 * once against this table; an implementation supplies the transport.
 *
 * Implementations
 *  - single (dist.c): one process, rank 0 of 1; every collective is a no-op (sums of one term).
 *  - MPI (dist_mpi.c, built with -DKV_MPI=1 when mpicc is found; Makefile): MPI_COMM_WORLD.
 *    Buffers are host memory; the trainer stages device gradients through the host when the
 *    backend is not unified (kvt_optim_allreduce_grads).
 *  - NCCL (dist_nccl.c, built with -DKV_NCCL=1 when CUDA, MPI and nccl.h are all found):
 *    gradients summed on the GPU with ncclAllReduce over device pointers (device_buffers = 1),
 *    one GPU per process (the CUDA backend opened on local_rank), the communicator set up
 *    through an MPI group (rank 0's ncclUniqueId broadcast); the scalar collectives (f64,
 *    fail_any, bcast, barrier) go through that MPI group. Compiled here but never run yet (no
 *    GPUs where it was written): TODO run it on a multi-GPU host against the MPI path.
 *
 * Conventions
 *  - Every op is collective: every rank calls it, in the same order, with the same sizes. An op
 *    returns 0 or a negative KV_E* code with err filled (KV_EIO naming the MPI call and MPI's
 *    message). After a failed op the group is broken (d->broken): the trainer stops and
 *    kv_dist_free skips MPI_Finalize, so the launcher sees a process end without it and stops
 *    the job.
 *  - Sums are in the implementation's order: every rank gets the same bits (MPI_Allreduce with
 *    the standard's recommended reproducible reduction, as Open MPI does), but not the bits of a
 *    sequential sum.
 *  - Failure protocol (the trainer's): a rank that fails locally must still meet the others at
 *    their next collective, so the trainer's collectives come in sections that every rank runs to
 *    the end whatever its local errors, each section preceded by a fail_any status check; a rank
 *    that fails between checks jumps to the next (or the final) check with failed = 1, and every
 *    rank leaves with an error (distill.c). */
#ifndef KV_TRAIN_DIST_H
#define KV_TRAIN_DIST_H

#include <stddef.h>

#include "base/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kv_dist kv_dist;

typedef struct {
    /* bufs[i][0 .. counts[i]) summed over the ranks, in place, for i < k; every rank gets the
     * sums. Host memory unless d->device_buffers. */
    int (*allreduce_f32)(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                         kv_error *err);
    /* buf[0 .. n) summed over the ranks, in place (host memory) */
    int (*allreduce_f64)(kv_dist *d, double *buf, size_t n, kv_error *err);
    /* root's bytes[0 .. n) to every rank (host memory) */
    int (*bcast)(kv_dist *d, void *buf, size_t n, int root, kv_error *err);
    /* *first_failed = the lowest rank that passed failed != 0, or -1 when none did */
    int (*fail_any)(kv_dist *d, int failed, int *first_failed, kv_error *err);
    int (*barrier)(kv_dist *d, kv_error *err);
    /* tears the group down (kv_dist_free calls it); NULL when there is nothing to do */
    void (*release)(kv_dist *d);
} kv_dist_ops;

struct kv_dist {
    const kv_dist_ops *ops;
    int rank, size; /* this process, the group's processes (>= 1) */
    int local_rank, local_size; /* among the group's processes on this host (GPU ordinal) */
    int device_buffers; /* allreduce_f32 takes device pointers (NCCL); 0: host memory */
    int broken; /* a collective failed: the group cannot be relied on any more */
    char name[64]; /* "single process", "mpi (2 processes)" */
    void *impl;
};

/* One process: rank 0 of 1. Never fails. */
void kv_dist_init_single(kv_dist *d);

/* MPI_COMM_WORLD (MPI_Init_thread, FUNNELED: only the calling thread talks to MPI).
 * KV_EUNSUPPORTED when built without MPI. */
int kv_dist_init_mpi(kv_dist *d, kv_error *err);

/* The group this process was started in: MPI when an MPI launcher started it (any of
 * OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK in the environment: mpirun, mpiexec, srun), else a
 * single process without MPI_Init (singleton MPI_Init is slow or fails in some containers).
 * KV_EUNSUPPORTED when a launcher asked for more than one process and the build has no MPI:
 * the processes would otherwise each train alone and write the same files. */
int kv_dist_init(kv_dist *d, kv_error *err);

/* NCCL over the MPI group mpi (which it uses for everything but the gradient sums; mpi must
 * outlive d): one communicator of mpi->size GPUs, this process's on CUDA device `device` (the
 * one its CUDA backend uses). Collective over mpi. KV_EUNSUPPORTED when built without NCCL. */
int kv_dist_init_nccl(kv_dist *d, kv_dist *mpi, int device, kv_error *err);

/* MPI_Finalize when MPI was initialised here and the group is not broken; NCCL: the
 * communicator destroyed (aborted when broken), the MPI group left to its owner */
void kv_dist_free(kv_dist *d);

/* 1 when the build has an MPI implementation (-DKV_MPI=1), an NCCL one (-DKV_NCCL=1) */
int kv_dist_have_mpi(void);
int kv_dist_have_nccl(void);

/* the processes a launcher asked for according to the environment; 0 when none started this
 * one, -1 when one did without saying how many (PMIx without a size) */
int kv_dist_launcher_size(void);

/* wrappers: d->ops->..., with broken set on failure; trivially 0 on a group of one */
int kv_dist_allreduce_f32(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                          kv_error *err);
int kv_dist_allreduce_f64(kv_dist *d, double *buf, size_t n, kv_error *err);
int kv_dist_bcast(kv_dist *d, void *buf, size_t n, int root, kv_error *err);
int kv_dist_fail_any(kv_dist *d, int failed, int *first_failed, kv_error *err);
int kv_dist_barrier(kv_dist *d, kv_error *err);

#ifdef __cplusplus
}
#endif

#endif
