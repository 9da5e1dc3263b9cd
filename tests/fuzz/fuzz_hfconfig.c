/* config.json through the public API (hf_config_parse), then everything derived from it: the
 * parameter count, KV slots, the layer map string, the KV map, and the write-back */
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
        int slots = hf_config_kv_slots(&c);
        FUZZ_CHECK(slots >= 1 && slots <= c.n_layers, "slots %d of %d", slots, c.n_layers);
        for (int i = 0; i < c.n_layers; i++) {
            (void)hf_config_is_kv_layer(&c, i);
            (void)hf_config_swiftkv_leader(&c, i);
        }
        static char buf[HF_MAX_LAYERS * 6];
        (void)hf_config_layer_map_string(&c, buf, sizeof buf, &err);
        char small[8];
        (void)hf_config_layer_map_string(&c, small, sizeof small, &err);
        kv_map m;
        if (kvmap_from_config(&m, &c, &err) == 0) {
            FUZZ_CHECK(kvmap_validate(&m, &err) == 0, "kvmap_from_config gave an invalid map: %s", err.msg);
            FUZZ_CHECK(kvmap_n_slots(&m) == slots, "slots: map %d, config %d", kvmap_n_slots(&m), slots);
        }
        char *out = NULL;
        if (hf_config_write_json(&c, json, "fuzz.config.json", &out, &err) == 0) {
            hf_config back;
            FUZZ_CHECK(hf_config_parse(&back, out, "written", &err) == 0, "written config does not parse: %s", err.msg);
            FUZZ_CHECK(back.n_layers == c.n_layers && back.swiftkv == c.swiftkv && back.has_layer_map == c.has_layer_map,
                       "written config differs");
        }
        free(out);
    }
    free(json);
    return 0;
}
