/* Backend selection and the helpers every backend shares (kernels/backend.h). */
#include "kernels/backend.h"

#include <string.h>

int kv_device_parse(kv_device *d, const char *s, kv_error *err) {
    if (s && strcmp(s, "cpu") == 0) *d = KV_DEVICE_CPU;
    else if (s && strcmp(s, "cuda") == 0) *d = KV_DEVICE_CUDA;
    else return kv_fail(err, KV_EINVAL, "device '%s': expected 'cpu' or 'cuda'", s ? s : "");
    return 0;
}

int kv_backend_init(kv_backend *b, const char *device, int threads, kv_error *err) {
    kv_device d;
    int rc = kv_device_parse(&d, device, err);
    if (rc) return rc;
    return d == KV_DEVICE_CUDA ? kv_backend_cuda_init(b, 0, err)
                               : kv_backend_cpu_init(b, threads, err);
}

#if !KV_CUDA
int kv_backend_cuda_init(kv_backend *b, int ordinal, kv_error *err) {
    (void)ordinal;
    *b = (kv_backend){0};
    return kv_fail(err, KV_EUNSUPPORTED,
                   "cuda: this build has no CUDA support (nvcc was not "
                   "found when it was built; rebuild with CUDA=1)");
}
int kv_cuda_blas_load(kv_error *err) {
    return kv_fail(err, KV_EUNSUPPORTED, "cuda: this build has no CUDA support");
}
#endif

void kv_backend_free(kv_backend *b) {
    if (b->ops && b->ops->release) b->ops->release(b);
    *b = (kv_backend){0};
}

int kv_backend_rope_table(kv_backend *b, kv_rope_table *dev, const kv_rope_table *host,
                          kv_error *err) {
    *dev = (kv_rope_table){.head_dim = host->head_dim, .max_pos = host->max_pos};
    if (b->unified) {
        dev->cos = host->cos;
        dev->sin = host->sin;
        return 0;
    }
    const size_t bytes = sizeof(float) * (size_t)host->max_pos * (size_t)(host->head_dim / 2);
    void *c = NULL, *s = NULL;
    int rc = b->ops->alloc(b, &c, bytes, err);
    if (!rc) rc = b->ops->alloc(b, &s, bytes, err);
    if (!rc) rc = b->ops->upload(b, c, host->cos, bytes, err);
    if (!rc) rc = b->ops->upload(b, s, host->sin, bytes, err);
    if (rc) {
        b->ops->free(b, c);
        b->ops->free(b, s);
        return rc;
    }
    dev->cos = c;
    dev->sin = s;
    return 0;
}

void kv_backend_rope_table_free(kv_backend *b, kv_rope_table *dev) {
    if (!b->unified) {
        b->ops->free(b, dev->cos);
        b->ops->free(b, dev->sin);
    }
    *dev = (kv_rope_table){0};
}
