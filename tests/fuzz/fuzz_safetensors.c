/* safetensors header + data validation from memory (st_parse): a file that parses has tensors
 * inside the buffer, sorted and distinct, tiling the data exactly */
#include "formats/safetensors.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f;
    kv_error err = {0};
    if (st_parse(&f, data, size, "fuzz.safetensors", &err)) {
        FUZZ_CHECK(f.path == NULL && f.tensors == NULL && f.n_tensors == 0,
                   "a failed parse left state: %s", err.msg);
        return 0;
    }
    FUZZ_CHECK(f.path && !strcmp(f.path, "fuzz.safetensors"), "path");
    size_t covered = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        FUZZ_CHECK(t->offset <= f.data_size && t->n_bytes <= f.data_size - t->offset,
                   "tensor %s outside the data", t->name);
        FUZZ_CHECK((const uint8_t *)t->data == f.data + t->offset, "data pointer");
        FUZZ_CHECK(i == 0 || strcmp(f.tensors[i - 1].name, t->name) < 0, "not sorted/distinct");
        FUZZ_CHECK(st_find(&f, t->name) == t, "st_find");
        FUZZ_CHECK(t->n_dims >= 0 && t->n_dims <= ST_MAX_DIMS, "rank");
        fuzz_touch(t->data, t->n_bytes);
        covered += t->n_bytes;
    }
    FUZZ_CHECK(covered == f.data_size, "tensors cover %zu of %zu bytes", covered, f.data_size);
    for (int i = 0; i < f.n_meta; i++) {
        FUZZ_CHECK(i == 0 || strcmp(f.meta_keys[i - 1], f.meta_keys[i]) < 0,
                   "metadata not sorted/distinct");
        FUZZ_CHECK(st_meta(&f, f.meta_keys[i]) == f.meta_values[i], "st_meta");
    }
    st_close(&f);
    return 0;
}
