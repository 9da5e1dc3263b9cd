/* verify/kernel_parity: on a machine with a CUDA device every CUDA twin must match its CPU
 * reference; without a device (or without a CUDA build) the call must say so clearly. */
#include <string.h>

#include "kernels/kernels.h"
#if KV_CUDA
#include "kernels/cuda/kv_cuda.h"
#endif
#include "tests/check.h"
#include "verify/kernel_parity.h"

int main(void) {
    kv_parity_report rep;
    kv_error err = {0};
    int rc = kv_kernel_parity(&rep, 1234, &err);
    printf("kernel parity: %s%s%s\n", kv_parity_status_name(rep.status), rc ? ": " : "",
           rc ? err.msg : "");
    for (int i = 0; i < rep.n; i++)
        printf("  %-20s n=%-7zu max_abs %.3g max_rel %.3g (atol %g rtol %g) %s\n", rep.r[i].name,
               rep.r[i].n, rep.r[i].max_abs, rep.r[i].max_rel, rep.r[i].atol, rep.r[i].rtol,
               rep.r[i].pass ? "ok" : "FAIL");
#if KV_CUDA
    if (kv_cuda_device_count() == 0) {
        CHECK(rep.status == KV_PARITY_NO_DEVICE, "status %s without a device",
              kv_parity_status_name(rep.status));
        CHECK(rc == KV_EUNSUPPORTED && strstr(err.msg, "no CUDA device"), "rc %d: %s", rc, err.msg);
        CHECK(rep.n == 0, "%d results without a device", rep.n);
    } else {
        CHECK(rc == 0 && rep.status == KV_PARITY_PASSED, "rc %d: %s", rc, err.msg);
        CHECK(rep.n >= 11, "only %d kernels compared", rep.n);
        for (int i = 0; i < rep.n; i++)
            CHECK(rep.r[i].pass, "%s: max abs %g", rep.r[i].name, rep.r[i].max_abs);
        CHECK(rep.device[0] != 0, "device name empty");
    }
#else
    CHECK(rep.status == KV_PARITY_NOT_BUILT, "status %s in a CPU-only build",
          kv_parity_status_name(rep.status));
    CHECK(rc == KV_EUNSUPPORTED && strstr(err.msg, "without CUDA"), "rc %d: %s", rc, err.msg);
    CHECK(rep.n == 0, "%d results in a CPU-only build", rep.n);
#endif
    CHECK(strcmp(kv_parity_status_name(KV_PARITY_FAILED), "failed") == 0, "status names");
    return check_done("test_kernels_parity");
}
