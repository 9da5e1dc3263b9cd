/* The one thread pool of kvforge: kernels, checkpoint conversion, hashing and bundle codecs all
 * run their parallel work through it.
 *
 * kv_pool_run(n, threads, fn, ctx, ...) calls fn(ctx, i, worker, err) for every i in [0, n) on
 * min(threads, n) threads (threads >= 1; kv_resolve_threads picks a count). The calling thread is
 * worker 0; worker is in [0, threads) and indexes per-worker scratch; err is that worker's own.
 * Tasks are handed out in index order and none after the first failure, so the failure reported
 * (its code returned, its message in *err, its index in *failed if non-NULL) is that of the
 * lowest failing index. If a thread cannot be started the others do its share. */
#ifndef KV_POOL_H
#define KV_POOL_H

#include "base/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_POOL_MAX_THREADS 256

typedef int (*kv_pool_fn)(void *ctx, int i, int worker, kv_error *err);
int kv_pool_run(int n, int threads, kv_pool_fn fn, void *ctx, int *failed, kv_error *err);

/* threads <= 0: online CPUs; never more than n_tasks or KV_POOL_MAX_THREADS, never less than 1 */
int kv_resolve_threads(int threads, int n_tasks);

/* The same pool for work that cannot fail (kernels): fn(ctx, item, worker) for every item in
 * [0, n_items) on min(n_workers, n_items) workers. Its helper threads are started once and stay
 * parked between calls (no thread start per call; they spin up to 0.1 ms for the next call before
 * sleeping); a call made while another is running on them (nested, or from another thread) gets
 * threads of its own as kv_pool_run does. Each worker starts on a contiguous share of the items
 * (worker w of W: [w n / W, (w + 1) n / W), in order), then helps with the others' rest. */
typedef void (*kv_task_fn)(void *ctx, int item, int worker);
void kv_parallel_for(int n_items, int n_workers, kv_task_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif

#endif
