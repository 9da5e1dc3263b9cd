/* The single-process group, the launcher detection and the collective wrappers (dist.h). */
#include "transform/train/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int single_allreduce_f32(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                                kv_error *err) {
    (void)d, (void)bufs, (void)counts, (void)k, (void)err;
    return 0;
}

static int single_allreduce_f64(kv_dist *d, double *buf, size_t n, kv_error *err) {
    (void)d, (void)buf, (void)n, (void)err;
    return 0;
}

static int single_bcast(kv_dist *d, void *buf, size_t n, int root, kv_error *err) {
    (void)d, (void)buf, (void)n;
    if (root != 0) return kv_fail(err, KV_EINVAL, "broadcast from rank %d of 1", root);
    return 0;
}

static int single_fail_any(kv_dist *d, int failed, int *first_failed, kv_error *err) {
    (void)d, (void)err;
    *first_failed = failed ? 0 : -1;
    return 0;
}

static int single_barrier(kv_dist *d, kv_error *err) {
    (void)d, (void)err;
    return 0;
}

static const kv_dist_ops SINGLE_OPS = {.allreduce_f32 = single_allreduce_f32,
                                       .allreduce_f64 = single_allreduce_f64,
                                       .bcast = single_bcast,
                                       .fail_any = single_fail_any,
                                       .barrier = single_barrier,
                                       .release = NULL};

void kv_dist_init_single(kv_dist *d) {
    memset(d, 0, sizeof *d);
    d->ops = &SINGLE_OPS;
    d->size = d->local_size = 1;
    snprintf(d->name, sizeof d->name, "single process");
}

/* a positive integer from the environment, else 0 */
static int env_count(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    const long v = strtol(s, &end, 10);
    return *end || v < 1 || v > (1 << 24) ? 0 : (int)v;
}

int kv_dist_launcher_size(void) {
    int n = env_count("OMPI_COMM_WORLD_SIZE"); /* Open MPI's mpirun */
    if (!n) n = env_count("PMI_SIZE"); /* MPICH's hydra, srun --mpi=pmi2 */
    if (!n) n = env_count("PMIX_SIZE");
    if (!n && getenv("PMIX_RANK")) n = env_count("SLURM_NTASKS"); /* srun --mpi=pmix, PRRTE */
    if (!n && getenv("PMIX_RANK")) n = -1; /* started by PMIx, size unknown here */
    return n;
}

int kv_dist_init(kv_dist *d, kv_error *err) {
    const int n = kv_dist_launcher_size();
    if (n == 0) {
        kv_dist_init_single(d);
        return 0;
    }
    if (kv_dist_have_mpi()) return kv_dist_init_mpi(d, err);
    if (n == 1) {
        kv_dist_init_single(d);
        return 0;
    }
    kv_dist_init_single(d);
    return kv_fail(err, KV_EUNSUPPORTED,
                   "started by an MPI launcher (%s processes) but this "
                   "build has no MPI support: rebuild with mpicc on PATH (make MPI=1; 'make "
                   "setup' installs Open MPI)",
                   n > 0 ? "several" : "an unknown number of");
}

void kv_dist_free(kv_dist *d) {
    if (d->ops && d->ops->release) d->ops->release(d);
    memset(d, 0, sizeof *d);
}

static int broke(kv_dist *d, int rc) {
    if (rc) d->broken = 1;
    return rc;
}

int kv_dist_allreduce_f32(kv_dist *d, float *const *bufs, const size_t *counts, int k,
                          kv_error *err) {
    if (d->size == 1) return 0;
    return broke(d, d->ops->allreduce_f32(d, bufs, counts, k, err));
}

int kv_dist_allreduce_f64(kv_dist *d, double *buf, size_t n, kv_error *err) {
    if (d->size == 1) return 0;
    return broke(d, d->ops->allreduce_f64(d, buf, n, err));
}

int kv_dist_bcast(kv_dist *d, void *buf, size_t n, int root, kv_error *err) {
    if (d->size == 1) return root ? d->ops->bcast(d, buf, n, root, err) : 0;
    return broke(d, d->ops->bcast(d, buf, n, root, err));
}

int kv_dist_fail_any(kv_dist *d, int failed, int *first_failed, kv_error *err) {
    if (d->size == 1) {
        *first_failed = failed ? 0 : -1;
        return 0;
    }
    return broke(d, d->ops->fail_any(d, failed, first_failed, err));
}

int kv_dist_barrier(kv_dist *d, kv_error *err) {
    if (d->size == 1) return 0;
    return broke(d, d->ops->barrier(d, err));
}
