// cuBLAS, loaded on first use of the CUDA backend (dlopen) instead of linked: libcublas pulls in
// libcublasLt, whose start-up code costs most of a second in every process that links it, before
// main runs, so a tool's --help or usage error would pay for a GPU library it never touches.
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

#define KV_STR2(x) #x
#define KV_STR(x)  KV_STR2(x)
#ifndef KV_CUBLAS_DIR
#define KV_CUBLAS_DIR "/usr/local/cuda/lib64"
#endif

kv_cublas_api kv_cublas;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];

static void *find(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p && !load_error[0])
        snprintf(load_error, sizeof load_error, "cublas: libcublas.so.%d has no %s",
                 CUBLAS_VER_MAJOR, name);
    return p;
}

static void load(void) {
    static const char *const names[] = {"libcublas.so." KV_STR(CUBLAS_VER_MAJOR),
                                        KV_CUBLAS_DIR "/libcublas.so." KV_STR(CUBLAS_VER_MAJOR),
                                        "libcublas.so"};
    void *h = NULL;
    const char *why = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) why = dlerror();
    }
    if (!h) {
        snprintf(load_error, sizeof load_error, "cublas: cannot load libcublas.so.%d: %s",
                 CUBLAS_VER_MAJOR, why ? why : "not found");
        return;
    }
    kv_cublas_api a;
    a.create = (kv_cublas_api::create_fn)find(h, "cublasCreate_v2");
    a.destroy = (kv_cublas_api::destroy_fn)find(h, "cublasDestroy_v2");
    a.set_stream = (kv_cublas_api::set_stream_fn)find(h, "cublasSetStream_v2");
    a.set_math_mode = (kv_cublas_api::set_math_mode_fn)find(h, "cublasSetMathMode");
    a.status_string = (kv_cublas_api::status_string_fn)find(h, "cublasGetStatusString");
    a.gemm_ex = (kv_cublas_api::gemm_ex_fn)find(h, "cublasGemmEx");
    if (load_error[0]) return; // the handle stays open: dlclose of cuBLAS is not worth the risk
    kv_cublas = a;
}

int kv_cublas_load(kv_error *err) {
    pthread_once(&load_once, load);
    if (load_error[0]) return kv_fail(err, KV_EUNSUPPORTED, "%s", load_error);
    return 0;
}

extern "C" int kv_cuda_blas_load(kv_error *err) { return kv_cublas_load(err); }
