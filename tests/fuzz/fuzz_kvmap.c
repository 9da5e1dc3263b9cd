/* KV-map spec strings (kvmap_parse): the first two bytes pick the layer count (0..1025, so the
 * bounds are tried too), the rest is the spec. A map that parses validates, and every query on
 * it stays in range. */
#include "formats/kvmap.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int L = (data[0] | data[1] << 8) % (KVMAP_MAX_LAYERS + 2);
    char *spec = fuzz_cstr(data + 2, size - 2);
    kv_map m;
    kv_error err = {0};
    for (int swift = 0; swift < 2; swift++) {
        int rc = swift ? kvmap_parse_swiftkv(&m, spec, L, &err) : kvmap_parse(&m, spec, L, &err);
        if (rc) continue;
        FUZZ_CHECK(m.n_layers == L, "layers");
        FUZZ_CHECK(kvmap_validate(&m, &err) == 0, "parsed map invalid: %s", err.msg);
        int slots = kvmap_n_slots(&m);
        FUZZ_CHECK(slots >= 1 && slots <= L, "slots %d", slots);
        FUZZ_CHECK(memchr(m.name, 0, sizeof m.name) != NULL, "name not terminated");
        for (int i = 0; i < L; i++) {
            int s = kvmap_slot_of(&m, i);
            FUZZ_CHECK(s >= 0 && s < slots, "slot of %d: %d", i, s);
            (void)kvmap_is_kv_layer(&m, i);
            (void)kvmap_is_upward(&m, i);
        }
        int lo, hi, out[8];
        (void)kvmap_cyclic_block(&m, &lo, &hi);
        (void)kvmap_readers(&m, L / 2, out, 8);
        (void)kvmap_readers(&m, L, out, 8);
        (void)kvmap_cache_saving(&m);
        (void)kvmap_cache_bytes_per_token(&m, 8, 64, 2);
        static char buf[1 << 16];
        char tiny[5];
        int n = kvmap_layer_types(&m, buf, sizeof buf);
        FUZZ_CHECK(n >= 0 && (size_t)n < sizeof buf && strlen(buf) == (size_t)n,
                   "layer_types length %d", n);
        FUZZ_CHECK(kvmap_layer_types(&m, tiny, sizeof tiny) == n && strlen(tiny) < sizeof tiny,
                   "truncated layer_types");
        n = kvmap_diagram(&m, buf, sizeof buf);
        FUZZ_CHECK(n >= 0 && (size_t)n < sizeof buf && strlen(buf) == (size_t)n,
                   "diagram length %d", n);
        FUZZ_CHECK(kvmap_diagram(&m, tiny, sizeof tiny) == n && strlen(tiny) < sizeof tiny,
                   "truncated diagram");
        /* the canonical name parses back to the same map (unless it is "custom") */
        kv_map again;
        if (strcmp(m.name, "custom") != 0) {
            FUZZ_CHECK(kvmap_parse(&again, m.name, L, &err) == 0, "name '%s' does not parse: %s",
                       m.name, err.msg);
            FUZZ_CHECK(!memcmp(again.kv_layer_of, m.kv_layer_of, sizeof(int) * (size_t)L),
                       "name '%s' gives another map", m.name);
        }
    }
    free(spec);
    return 0;
}
