/* The bundle reader (kv_bundle_open, then loading and checking every tensor) on a memory file
 * (memfd, opened by its /proc path). Before the bundle is opened the harness rewrites the
 * manifest.json.sha256 entry, when it finds one, to the digest of the manifest.json entry as it
 * is: a hostile bundle matches its own digest, and without the fix-up a mutated manifest would
 * stop at the digest every time. */
#include <sys/mman.h>
#include <unistd.h>

#include "base/sha256.h"
#include "formats/bundle.h"
#include "tests/fuzz/fuzz.h"

static uint64_t octal(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; i++) v = v * 8 + (uint64_t)(p[i] - '0');
    return v;
}

/* ustar entries: 512-byte header (name at 0, size in octal at 124, type at 156), data padded */
static void fix_manifest_digest(uint8_t *d, size_t n) {
    const uint8_t *manifest = NULL;
    uint64_t manifest_len = 0;
    for (size_t off = 0; off + 512 <= n;) {
        const uint8_t *h = d + off;
        if (!h[0]) break;
        uint64_t len = octal(h + 124, 12);
        size_t body = off + 512;
        if (len > n - body) break;
        if (h[156] != 'x' && h[156] != 'g') {
            if (!memcmp(h, "manifest.json", 14)) {
                manifest = d + body;
                manifest_len = len;
            } else if (!memcmp(h, "manifest.json.sha256", 21) && manifest && len >= 64) {
                uint8_t dig[32];
                char hex[65];
                kv_sha256(manifest, (size_t)manifest_len, dig);
                kv_sha256_hex(dig, hex);
                memcpy(d + body, hex, 64);
                return;
            }
        }
        off = body + (size_t)((len + 511) / 512 * 512);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *d = malloc(size + 1);
    if (!d) abort();
    memcpy(d, data, size);
    fix_manifest_digest(d, size);
    int fd = memfd_create("fuzz.kvb", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0, "memfd_create");
    FUZZ_CHECK(size == 0 || write(fd, d, size) == (ssize_t)size, "write");
    free(d);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    kv_bundle *b = NULL;
    kv_error err = {0};
    if (kv_bundle_open(&b, path, &err) == 0) {
        static const char *const names[] = {"config.json",     "tokenizer.json",
                                            "kvforge.json",    "generation_config.json",
                                            "tokenizer.model", "nothing.json"};
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            size_t n = 0;
            const char *f = kv_bundle_file(b, names[i], &n);
            if (f) FUZZ_CHECK(f[n] == 0, "file %s not terminated", names[i]);
        }
        (void)kv_bundle_architecture(b);
        const st_checkpoint *ck = kv_bundle_checkpoint(b);
        size_t raw = kv_bundle_raw_size(b);
        if (raw <= ((size_t)64 << 20) && kv_bundle_load_tensors(b, NULL, 0, 1, &err) == 0) {
            for (int i = 0; i < ck->n_tensors; i++) {
                const st_tensor *t = ck->tensors[i];
                FUZZ_CHECK(t->data != NULL, "tensor %s has no data after a load", t->name);
                fuzz_touch(t->data, t->n_bytes);
                FUZZ_CHECK(kv_bundle_find(b, t->name) != NULL, "find %s", t->name);
            }
        }
        kv_bundle_close(b);
        kv_bundle_report rep;
        (void)kv_bundle_verify(path, &rep, &err);
    }
    close(fd);
    return 0;
}
