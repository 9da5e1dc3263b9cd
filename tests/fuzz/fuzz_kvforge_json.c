/* kvforge.json: the project reads it only when bundling (formats/bundle_write.c checks it is a
 * JSON object and kvb_manifest_print copies its recipe/provenance into the manifest). Any JSON
 * object there must give a manifest the reader accepts: else kv_bundle_write makes bundles that
 * no tool can open. */
#include "formats/bundle_internal.h"
#include "tests/fuzz/fuzz.h"

/* bundle_write.c's rule (KVB_MAX_JSON_DEPTH): deeper files are refused when bundling, since
 * the manifest holds them one level down and cJSON reads at most 1000 levels (this target found
 * that: a kvforge.json 999 levels deep made a bundle no reader could open) */
#define MAX_DEPTH 64

static int depth_ok(const cJSON *v, int depth) {
    if (depth > MAX_DEPTH) return 0;
    for (const cJSON *c = v->child; c; c = c->next)
        if (!depth_ok(c, depth + 1)) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *kvforge = cJSON_ParseWithLength((const char *)data, size);
    if (!cJSON_IsObject(kvforge) || !depth_ok(kvforge, 1)) { /* bundle_write refuses these */
        cJSON_Delete(kvforge);
        return 0;
    }
    cJSON *config =
        cJSON_Parse("{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2}");
    kv_map map;
    kv_error err = {0};
    FUZZ_CHECK(config && kvb_kv_map(config, &map, "config.json", &err) == 0, "config: %s", err.msg);
    kvb_manifest m;
    memset(&m, 0, sizeof m);
    m.architecture = "LlamaForCausalLM";
    m.chunk_size = 4096;
    m.n_files = 1;
    m.files[0] = (kvb_file){.name = "config.json",
                            .entry = "config.json",
                            .codec = KV_CODEC_RAW,
                            .size = 2,
                            .stored_size = 2};
    char *text = kvb_manifest_print(&m, config, &map, kvforge);
    FUZZ_CHECK(text != NULL, "manifest not printed");
    kvb_manifest back;
    int rc = kvb_manifest_parse(&back, text, strlen(text), "fuzz.kvb", &err);
    FUZZ_CHECK(rc == 0, "the manifest made with this kvforge.json does not parse: %s", err.msg);
    kvb_manifest_free(&back);
    free(text);
    cJSON_Delete(config);
    cJSON_Delete(kvforge);
    return 0;
}
