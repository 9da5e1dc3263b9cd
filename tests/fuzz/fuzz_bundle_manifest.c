/* The bundle manifest parser (kvb_manifest_parse, formats/bundle_manifest.c) on its own: in a
 * bundle it sits behind the manifest's sha256, which a hostile bundle simply matches, but which
 * a mutating fuzzer rarely does. A manifest that parses is internally consistent. */
#include "formats/bundle_internal.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvb_manifest m;
    kv_error err = {0};
    if (kvb_manifest_parse(&m, (const char *)data, size, "fuzz.kvb", &err) == 0) {
        uint64_t raw = 0;
        for (int i = 0; i < m.n_tensors; i++) {
            const kvb_tensor *t = &m.tensors[i];
            FUZZ_CHECK(t->first_chunk >= 0 && t->n_chunks >= 0 &&
                           t->first_chunk + t->n_chunks <= m.n_chunks,
                       "chunks of %s", t->name);
            FUZZ_CHECK(t->offset >= raw && t->offset + t->size <= m.raw_size,
                       "tensor %s outside the raw stream", t->name);
            raw = t->offset + t->size;
            uint64_t sum = 0;
            for (int c = 0; c < t->n_chunks; c++) {
                const kv_chunk *k = &m.chunks[t->first_chunk + c];
                FUZZ_CHECK(k->stored_offset + k->stored_size <= m.stored_size,
                           "chunk outside tensors.bin");
                sum += k->raw_size;
            }
            FUZZ_CHECK(sum == t->size, "chunks of %s hold %llu of %llu bytes", t->name,
                       (unsigned long long)sum, (unsigned long long)t->size);
        }
        FUZZ_CHECK(m.n_files >= 1 && m.n_files <= KVB_MAX_FILES, "files %d", m.n_files);
        for (int i = 0; i < m.n_files; i++)
            FUZZ_CHECK(kvb_entry_name_safe(m.files[i].entry), "entry name");
        kvb_manifest_free(&m);
    }
    return 0;
}
