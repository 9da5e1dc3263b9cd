/* config.json through the public API (hf_config_parse), then everything derived from it: the
 * parameter count, the KV map and its slots and layer_types string, and the write-back (the
 * same map and sliding windows read back) */
#include <string.h>

#include "formats/hfconfig.h"
#include "formats/kvmap.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = fuzz_cstr(data, size);
    hf_config c;
    kv_error err = {0};
    if (hf_config_parse(&c, json, "fuzz.config.json", &err) == 0) {
        FUZZ_CHECK(c.n_layers >= 1 && c.n_layers <= HF_MAX_LAYERS, "layers %d", c.n_layers);
        (void)hf_config_param_count(&c);
        FUZZ_CHECK(kvmap_validate(&c.map, &err) == 0, "parsed an invalid map: %s", err.msg);
        FUZZ_CHECK(c.map.n_layers == c.n_layers, "map of %d layers, config %d", c.map.n_layers,
                   c.n_layers);
        const int slots = kvmap_n_slots(&c.map);
        FUZZ_CHECK(slots >= 1 && slots <= c.n_layers, "slots %d of %d", slots, c.n_layers);
        for (int i = 0; i < c.n_layers; i++) {
            (void)kvmap_is_kv_layer(&c.map, i);
            (void)kvmap_slot_of(&c.map, i);
        }
        static char buf[HF_MAX_LAYERS * 6];
        (void)kvmap_layer_types(&c.map, buf, sizeof buf);
        char small[8];
        (void)kvmap_layer_types(&c.map, small, sizeof small);
        char *out = NULL;
        if (hf_config_write_json(&c, json, "fuzz.config.json", &out, &err) == 0) {
            hf_config back;
            FUZZ_CHECK(hf_config_parse(&back, out, "written", &err) == 0,
                       "written config does not parse: %s", err.msg);
            FUZZ_CHECK(back.n_layers == c.n_layers && kvmap_equal(&back.map, &c.map),
                       "written config differs");
            FUZZ_CHECK(
                back.sliding_window == c.sliding_window &&
                    !memcmp(back.layer_window, c.layer_window, sizeof(int) * (size_t)c.n_layers),
                "written config has other sliding windows");
        }
        free(out);
    }
    free(json);
    return 0;
}
