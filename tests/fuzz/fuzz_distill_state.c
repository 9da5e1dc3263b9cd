/* The distillation resume state (transform/train/distill_state.h): the checkpoint file parsed
 * from memory and its metadata read as a resumed run reads it; the same bytes as a step log */
#include "tests/fuzz/fuzz.h"
#include "transform/train/distill_state.h"

#define FINGERPRINT "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f;
    kv_error err = {0};
    if (st_parse(&f, data, size, "state.safetensors", &err) == 0) {
        distill_state st;
        if (distill_state_read(&f, FINGERPRINT, 1000, &st, &err) == 0)
            FUZZ_CHECK(st.step >= 0 && st.step <= 1000 && st.tokens_trained >= 0, "state %ld %ld",
                       st.step, st.tokens_trained);
        static const char *const kinds[] = {"param.", "adam_m.", "adam_v."};
        for (int k = 0; k < 3; k++) {
            const st_tensor *t = distill_state_tensor(&f, kinds[k], "w", 2);
            if (t) fuzz_touch(t->data, t->n_bytes);
        }
        st_close(&f);
    }
    char *text = fuzz_cstr(data, size);
    long step = size ? (long)(data[0] % 8) : 0;
    size_t keep = distill_log_keep(text, step);
    FUZZ_CHECK(keep <= strlen(text) && (keep == 0 || text[keep - 1] == '\n'), "keep %zu", keep);
    free(text);
    return 0;
}
