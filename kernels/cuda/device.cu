// Device discovery and device buffers.
#include <string.h>

#include "kernels/cuda/cuda_util.h"

extern "C" int kv_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError(); // clear it: no driver / no device is an answer, not a failure
        return 0;
    }
    return n;
}

extern "C" int kv_cuda_device_name(char *buf, size_t n, kv_error *err) {
    if (n) buf[0] = 0;
    if (kv_cuda_device_count() <= 0)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: no CUDA device");
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, 0);
    if (e != cudaSuccess)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: device 0: %s", cudaGetErrorString(e));
    if (n) {
        strncpy(buf, prop.name, n - 1);
        buf[n - 1] = 0;
    }
    return 0;
}

extern "C" int kv_cuda_alloc(void **dptr, size_t bytes, kv_error *err) {
    *dptr = NULL;
    cudaError_t e = cudaMalloc(dptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *dptr = NULL;
        return kv_fail(err, e == cudaErrorMemoryAllocation ? KV_ENOMEM : KV_EIO,
                       "cuda: allocating %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    return 0;
}

extern "C" void kv_cuda_free(void *dptr) {
    if (dptr) cudaFree(dptr);
}

extern "C" int kv_cuda_upload(void *dst_dev, const void *src_host, size_t bytes, kv_error *err) {
    cudaError_t e = cudaMemcpy(dst_dev, src_host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: upload of %zu bytes: %s", bytes, cudaGetErrorString(e));
    return 0;
}

extern "C" int kv_cuda_download(void *dst_host, const void *src_dev, size_t bytes,
                                kv_error *err) {
    cudaError_t e = cudaMemcpy(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: download of %zu bytes: %s", bytes,
                       cudaGetErrorString(e));
    return 0;
}

extern "C" int kv_cuda_sync(kv_error *err) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return kv_fail(err, KV_EIO, "cuda: %s", cudaGetErrorString(e));
    return 0;
}
