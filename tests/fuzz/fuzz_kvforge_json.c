/* kvforge.json: the project reads it only when bundling (formats/bundle_write.c checks it is a
 * JSON object and kvb_manifest_print copies its recipe/provenance into the manifest). Any JSON
 * object there must give a manifest the reader accepts: else kv_bundle_write makes bundles that
 * no tool can open. */
#include "formats/bundle_internal.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *kvforge = cJSON_ParseWithLength((const char *)data, size);
    if (!cJSON_IsObject(kvforge)) { /* bundle_write refuses it: "not a JSON object" */
        cJSON_Delete(kvforge);
        return 0;
    }
    cJSON *config = cJSON_Parse("{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2}");
    int *map = NULL, n_layers = 0;
    kv_error err = {0};
    FUZZ_CHECK(config && kvb_kv_map(config, &map, &n_layers, "config.json", &err) == 0, "config: %s", err.msg);
    kvb_manifest m;
    memset(&m, 0, sizeof m);
    m.architecture = "LlamaForCausalLM";
    m.chunk_size = 4096;
    m.n_files = 1;
    m.files[0] = (kvb_file){.name = "config.json", .entry = "config.json", .codec = KV_CODEC_RAW, .size = 2, .stored_size = 2};
    char *text = kvb_manifest_print(&m, config, map, n_layers, kvforge);
    FUZZ_CHECK(text != NULL, "manifest not printed");
    kvb_manifest back;
    int rc = kvb_manifest_parse(&back, text, strlen(text), "fuzz.kvb", &err);
    FUZZ_CHECK(rc == 0, "the manifest made with this kvforge.json does not parse: %s", err.msg);
    kvb_manifest_free(&back);
    free(text);
    free(map);
    cJSON_Delete(config);
    cJSON_Delete(kvforge);
    return 0;
}
