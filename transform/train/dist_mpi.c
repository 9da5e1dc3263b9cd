/* The MPI process group (dist.h): MPI_COMM_WORLD, host buffers, errors returned (not fatal). */
#include "transform/train/dist.h"

#include <stdio.h>
#include <string.h>

#if KV_MPI
#include <limits.h>
#include <mpi.h>

int kv_dist_have_mpi(void) { return 1; }

typedef struct {
    int finalize; /* MPI was initialised here: finalise it on release */
} mpi_state;

static mpi_state MPI_STATE;

/* err <- "what: MPI's message" */
static int mpi_fail(kv_error *err, const char *what, int code) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "code %d", code);
    return kv_fail(err, KV_EIO, "%s: %s", what, msg);
}

/* MPI counts are int: long buffers go in pieces */
enum { PIECE = 1 << 30 };

static int mpi_allreduce_f32(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                             kv_error *err) {
    (void)d;
    for (int i = 0; i < k; i++)
        for (size_t off = 0; off < counts[i]; off += PIECE) {
            const size_t n = counts[i] - off < PIECE ? counts[i] - off : PIECE;
            const int rc = MPI_Allreduce(MPI_IN_PLACE, bufs[i] + off, (int)n, MPI_FLOAT, MPI_SUM,
                                         MPI_COMM_WORLD);
            if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce (gradients)", rc);
        }
    return 0;
}

static int mpi_allreduce_f64(kv_dist *d, double *buf, size_t n, kv_error *err) {
    (void)d;
    for (size_t off = 0; off < n; off += PIECE) {
        const size_t c = n - off < PIECE ? n - off : PIECE;
        const int rc =
            MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)c, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce", rc);
    }
    return 0;
}

static int mpi_bcast(kv_dist *d, void *buf, size_t n, int root, kv_error *err) {
    if (root < 0 || root >= d->size)
        return kv_fail(err, KV_EINVAL, "broadcast from rank %d of %d", root, d->size);
    for (size_t off = 0; off < n; off += PIECE) {
        const size_t c = n - off < PIECE ? n - off : PIECE;
        const int rc = MPI_Bcast((char *)buf + off, (int)c, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    }
    return 0;
}

static int mpi_fail_any(kv_dist *d, int failed, int *first_failed, kv_error *err) {
    int mine = failed ? d->rank : INT_MAX, lowest = INT_MAX;
    const int rc = MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce (status)", rc);
    *first_failed = lowest == INT_MAX ? -1 : lowest;
    return 0;
}

static int mpi_barrier(kv_dist *d, kv_error *err) {
    (void)d;
    const int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Barrier", rc);
}

static void mpi_release(kv_dist *d) {
    mpi_state *s = d->impl;
    int finalized = 1;
    MPI_Finalized(&finalized);
    /* a broken group may never finish MPI_Finalize: end without it, and the launcher stops the
     * job (a process that exits without MPI_Finalize is a failed job to mpirun) */
    if (s && s->finalize && !finalized && !d->broken) MPI_Finalize();
}

static const kv_dist_ops MPI_OPS = {.allreduce_f32 = mpi_allreduce_f32,
                                    .allreduce_f64 = mpi_allreduce_f64,
                                    .bcast = mpi_bcast,
                                    .fail_any = mpi_fail_any,
                                    .barrier = mpi_barrier,
                                    .release = mpi_release};

int kv_dist_init_mpi(kv_dist *d, kv_error *err) {
    kv_dist_init_single(d);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) return kv_fail(err, KV_EINVAL, "MPI: already finalised in this process");
    if (!inited) {
        int provided = 0;
        const int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Init_thread", rc);
        MPI_STATE.finalize = 1;
    }
    /* errors come back as codes (kv_error), never abort the process from here */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm local = MPI_COMM_NULL;
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL,
                                 &local);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(local, &d->local_rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(local, &d->local_size);
    if (local != MPI_COMM_NULL) MPI_Comm_free(&local);
    d->ops = &MPI_OPS;
    d->impl = &MPI_STATE;
    if (rc != MPI_SUCCESS) {
        d->broken = 1;
        return mpi_fail(err, "MPI: rank and size of MPI_COMM_WORLD", rc);
    }
    snprintf(d->name, sizeof d->name, "mpi (%d process%s)", d->size, d->size == 1 ? "" : "es");
    return 0;
}

#else /* no MPI in this build */

int kv_dist_have_mpi(void) { return 0; }

int kv_dist_init_mpi(kv_dist *d, kv_error *err) {
    kv_dist_init_single(d);
    return kv_fail(err, KV_EUNSUPPORTED,
                   "this build has no MPI support (rebuild with mpicc on "
                   "PATH: make MPI=1)");
}

#endif
