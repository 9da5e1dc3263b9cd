/* model.safetensors.index.json (st_index_parse, the from-memory half of st_checkpoint_open):
 * an index that parses has sorted distinct entries and shards, each entry naming a shard */
#include "formats/safetensors.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_index ix;
    kv_error err = {0};
    if (st_index_parse(&ix, (const char *)data, size, "fuzz.index.json", &err)) {
        FUZZ_CHECK(ix.entries == NULL && ix.shards == NULL && strstr(err.msg, "fuzz.index.json"),
                   "failed parse: %s", err.msg);
        return 0;
    }
    FUZZ_CHECK(ix.n_entries > 0 && ix.n_shards > 0 && ix.n_shards <= ix.n_entries, "counts");
    for (int i = 0; i < ix.n_entries; i++) {
        FUZZ_CHECK(i == 0 || strcmp(ix.entries[i - 1].tensor, ix.entries[i].tensor) < 0,
                   "entries sorted/distinct");
        FUZZ_CHECK(ix.entries[i].shard >= 0 && ix.entries[i].shard < ix.n_shards, "shard index");
    }
    for (int i = 0; i < ix.n_shards; i++) {
        FUZZ_CHECK(i == 0 || strcmp(ix.shards[i - 1], ix.shards[i]) < 0, "shards sorted/distinct");
        FUZZ_CHECK(!strchr(ix.shards[i], '/') && !strstr(ix.shards[i], ".."), "shard name '%s'",
                   ix.shards[i]);
    }
    st_index_free(&ix);
    return 0;
}
