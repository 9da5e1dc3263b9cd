/* base/membudget.h: reservations within the budget pass and add up, one over it is refused with
 * the breakdown and leaves the ledger as it was, releases give back, the default budget is the
 * physical RAM, saturating sums; kv_state_init and kv_model_from_source are refused before they
 * allocate (a synthetic model, no fixtures). */
#include "tests/check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "base/membudget.h"
#include "kernels/backend.h"
#include "runtime/forward.h"
#include "runtime/model.h"
#include "transform/synth/synth.h"

static void ledger(void) {
    kv_error err = {0};
    CHECK(kv_mem_physical() > 0, "physical RAM unknown");
    kv_mem_set_budget(0, NULL);
    CHECK(kv_mem_budget() == kv_mem_physical(), "default budget %llu",
          (unsigned long long)kv_mem_budget());
    kv_mem_set_budget(1000000, "--max-memory");
    CHECK(kv_mem_budget() == 1000000, "set budget");
    const uint64_t base = kv_mem_reserved();
    const kv_mem_item a[2] = {{"weights", 400000}, {"KV cache", 300000}};
    CHECK(kv_mem_reserve("the run", a, 2, &err) == 0, "within: %s", err.msg);
    CHECK(kv_mem_reserved() == base + 700000, "ledger %llu", (unsigned long long)kv_mem_reserved());
    const kv_mem_item b = {"activations", 400000};
    CHECK(kv_mem_reserve("the run", &b, 1, &err) == KV_ENOMEM, "over the budget passed");
    CHECK(strstr(err.msg, "the run needs 1.1 MB (weights 400 kB, KV cache 300 kB, activations "
                          "400 kB), over the 1.0 MB memory budget (--max-memory)") != NULL,
          "message: %s", err.msg);
    CHECK(kv_mem_reserved() == base + 700000, "a refusal reserves nothing");
    kv_mem_release(a, 2);
    CHECK(kv_mem_reserved() == base, "release");
    CHECK(kv_mem_reserve("the run", &b, 1, &err) == 0, "after release: %s", err.msg);
    kv_mem_release(&b, 1);
    const kv_mem_item huge[2] = {{"KV cache", UINT64_MAX}, {"activations", UINT64_MAX}};
    CHECK(kv_mem_reserve("the run", huge, 2, &err) == KV_ENOMEM, "saturated sum refused");
    kv_mem_set_budget(0, NULL);
    CHECK(kv_mem_reserve("the run", huge, 1, &err) == KV_ENOMEM, "huge refused by default");
    CHECK(strstr(err.msg, "physical memory") != NULL, "default message: %s", err.msg);
    CHECK(kv_mem_reserved() == base, "ledger back to its start");
    char buf[32];
    CHECK(!strcmp(kv_mem_human(999, buf, sizeof buf), "999 B"), "%s", buf);
    CHECK(!strcmp(kv_mem_human(6600000000ull, buf, sizeof buf), "6.6 GB"), "%s", buf);
    CHECK(!strcmp(kv_mem_human(20480, buf, sizeof buf), "20 kB"), "%s", buf);
}

/* a model and a state under budgets around what they need */
static void runtime_refusals(void) {
    kv_error err = {0};
    char dir[] = "/tmp/kv_membudget_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    synth_spec so;
    synth_preset(&so, "tiny");
    so.dtype = KV_BF16; /* widened to F32 at load: the weights count */
    CHECK(synth_write(dir, &so, &err) == 0, "synth: %s", err.msg);
    kv_model m;
    kv_mem_set_budget(100000, "test");
    CHECK(kv_model_load(&m, dir, NULL, &err) == KV_ENOMEM, "model over the budget loaded");
    CHECK(strstr(err.msg, "the model needs") && strstr(err.msg, "weights"), "%s", err.msg);
    kv_mem_set_budget(0, NULL);
    const uint64_t base = kv_mem_reserved();
    CHECK(kv_model_load(&m, dir, NULL, &err) == 0, "load: %s", err.msg);
    CHECK(kv_mem_reserved() > base, "weights reserved");
    kv_backend b;
    CHECK(kv_backend_cpu_init(&b, 1, &err) == 0, "cpu: %s", err.msg);
    kv_state s;
    kv_mem_set_budget(kv_mem_reserved() + 1000, "test");
    CHECK(kv_state_init(&s, &b, &m, 64, 16, KV_F32, &err) == KV_ENOMEM, "state over the budget");
    CHECK(strstr(err.msg, "KV cache") && strstr(err.msg, "activations") &&
              strstr(err.msg, "weights"),
          "%s", err.msg);
    kv_mem_set_budget(0, NULL);
    const uint64_t before = kv_mem_reserved();
    CHECK(kv_state_init(&s, &b, &m, 64, 16, KV_F32, &err) == 0, "state: %s", err.msg);
    CHECK(kv_mem_reserved() >= before + kv_state_bytes(&s), "state reserved %llu for %zu",
          (unsigned long long)(kv_mem_reserved() - before), kv_state_bytes(&s));
    kv_state_free(&s);
    CHECK(kv_mem_reserved() == before, "state released");
    kv_model_free(&m);
    CHECK(kv_mem_reserved() == base, "model released");
    kv_backend_free(&b);
    kv_remove_flat_dir(dir);
}

int main(void) {
    ledger();
    runtime_refusals();
    return check_done("test_membudget");
}
