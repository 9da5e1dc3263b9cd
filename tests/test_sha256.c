/* SHA-256: FIPS 180-4 example vectors, streaming splits, portable vs accelerated, and a file
 * cross-checked against the system sha256sum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sha256.h"
#include "tests/check.h"

static void digest_hex(const void *p, size_t n, char hex[65]) {
    uint8_t d[32];
    kv_sha256(p, n, d);
    kv_sha256_hex(d, hex);
}

/* the FIPS 180-4 example messages and their published digests */
static void check_vectors(const char *mode) {
    static const struct {
        const char *msg, *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrl"
         "mnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char hex[65];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        digest_hex(v[i].msg, strlen(v[i].msg), hex);
        CHECK(strcmp(hex, v[i].hex) == 0, "%s: vector %zu: %s", mode, i, hex);
    }
    /* one million 'a', fed in uneven pieces */
    static char a[1000000];
    memset(a, 'a', sizeof a);
    kv_sha256_ctx c;
    kv_sha256_init(&c);
    size_t pos = 0, step = 1;
    while (pos < sizeof a) {
        size_t take = step < sizeof a - pos ? step : sizeof a - pos;
        kv_sha256_update(&c, a + pos, take);
        pos += take;
        step = step * 3 % 1031 + 1;
    }
    uint8_t d[32];
    kv_sha256_final(&c, d);
    kv_sha256_hex(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "%s: million a: %s", mode, hex);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint8_t rnd8(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint8_t)(rng_state >> 24);
}

/* every length 0..300 and a few large ones: one-shot (accelerated) == split (portable) */
static void check_paths_agree(int have_hw) {
    static uint8_t buf[70000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = rnd8();
    size_t lens[320];
    int n_lens = 0;
    for (size_t n = 0; n <= 300; n++) lens[n_lens++] = n;
    size_t big[] = {4095, 4096, 4097, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) lens[n_lens++] = big[i];
    int mismatches = 0;
    for (int i = 0; i < n_lens; i++) {
        size_t n = lens[i];
        uint8_t one[32], split[32];
        kv_sha256_use_hw(1);
        kv_sha256(buf, n, one);
        kv_sha256_use_hw(0);
        kv_sha256_ctx c;
        kv_sha256_init(&c);
        size_t cut = n / 3;
        kv_sha256_update(&c, buf, cut);
        kv_sha256_update(&c, buf + cut, 0);
        kv_sha256_update(&c, buf + cut, n - cut);
        kv_sha256_final(&c, split);
        if (memcmp(one, split, 32) != 0) mismatches++;
    }
    kv_sha256_use_hw(1);
    CHECK(mismatches == 0, "%d lengths differ between paths (hw=%d)", mismatches, have_hw);
}

/* two-message form == two one-shot digests, for lengths on both sides of every block edge */
static void check_x2(void) {
    static uint8_t a[9000], b[9000];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = rnd8();
        b[i] = rnd8();
    }
    size_t lens[] = {0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 1000, 4096, 8191, 9000};
    int n = (int)(sizeof lens / sizeof lens[0]), bad = 0;
    for (int hw = 0; hw < 2; hw++) {
        kv_sha256_use_hw(hw);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                uint8_t x[32], y[32], wx[32], wy[32];
                kv_sha256_x2(a, lens[i], x, b, lens[j], y);
                kv_sha256(a, lens[i], wx);
                kv_sha256(b, lens[j], wy);
                bad += memcmp(x, wx, 32) != 0 || memcmp(y, wy, 32) != 0;
            }
    }
    kv_sha256_use_hw(1);
    CHECK(bad == 0, "%d length pairs where kv_sha256_x2 differs", bad);
    uint8_t d1[32], d2[32];
    kv_sha256_x2("abc", 3, d1, "", 0, d2);
    char hex[65];
    kv_sha256_hex(d1, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
          "x2 abc");
}

static void check_hex_parse(void) {
    uint8_t d[32], back[32];
    char hex[65];
    kv_sha256("abc", 3, d);
    kv_sha256_hex(d, hex);
    CHECK(kv_sha256_parse_hex(hex, back) == 0 && memcmp(d, back, 32) == 0, "hex round trip");
    hex[10] = 'g';
    CHECK(kv_sha256_parse_hex(hex, back) == -1, "bad digit accepted");
    CHECK(kv_sha256_parse_hex("abcd", back) == -1, "short hex accepted");
}

/* kv_sha256_files on 1-6 threads, two at a time or one: files of unlike sizes (one ending in a buffer, the other going
 * on alone, sizes off the block grid, an empty one, an odd count) against one-shot digests */
static void check_files_in_pairs(void) {
    const size_t sizes[] = {(1u << 20) * 2 + 100, 70, 0, (1u << 20) + 63, 3 * (1u << 20) + 5};
    enum { N = 5 };
    char paths[N][64], hex[N][65], want[N][65];
    const char *path_ptrs[N];
    int ok_files = 1;
    for (int i = 0; i < N; i++) {
        snprintf(paths[i], sizeof paths[i], "/tmp/kv_sha256_files_XXXXXX");
        int fd = mkstemp(paths[i]);
        uint8_t *buf = malloc(sizes[i] + 1), d[32];
        for (size_t k = 0; k < sizes[i]; k++) buf[k] = rnd8();
        ok_files &= fd >= 0 && write(fd, buf, sizes[i]) == (ssize_t)sizes[i];
        if (fd >= 0) close(fd);
        kv_sha256(buf, sizes[i], d);
        kv_sha256_hex(d, want[i]);
        free(buf);
        path_ptrs[i] = paths[i];
    }
    CHECK(ok_files, "writing the test files");
    kv_error err = {0};
    for (int hw = 0; hw < 2; hw++) {
        kv_sha256_use_hw(hw);
        for (int threads = 1; threads <= 6; threads++) { /* pairs on 1-2 threads, singles on 3+ */
            memset(hex, 0, sizeof hex);
            CHECK(kv_sha256_files(path_ptrs, N, hex, threads, NULL, &err) == 0,
                  "kv_sha256_files: %s", err.msg);
            int bad = 0;
            for (int i = 0; i < N; i++) bad += strcmp(hex[i], want[i]) != 0;
            CHECK(bad == 0, "kv_sha256_files (hw %d, %d threads): %d of %d digests differ", hw,
                  threads, bad, N);
        }
    }
    kv_sha256_use_hw(1);
    atomic_int stop = 1;
    CHECK(kv_sha256_files(path_ptrs, 2, hex, 1, &stop, &err) != 0,
          "a raised stop flag ends the hashing");
    CHECK(kv_sha256_files(path_ptrs, N, hex, 3, &stop, &err) != 0,
          "a raised stop flag ends threaded hashing");
    const char *with_missing[2] = {paths[0], "/nonexistent/kv_sha256_pair"};
    CHECK(kv_sha256_files(with_missing, 2, hex, 1, NULL, &err) == KV_EIO &&
              strstr(err.msg, "/nonexistent/kv_sha256_pair") != NULL,
          "missing second file named: %s", err.msg);
    const char *missing_among[4] = {paths[0], paths[3], "/nonexistent/kv_sha256_threads", paths[4]};
    for (int threads = 1; threads <= 4; threads++)
        CHECK(kv_sha256_files(missing_among, 4, hex, threads, NULL, &err) == KV_EIO &&
                  strstr(err.msg, "/nonexistent/kv_sha256_threads") != NULL,
              "%d threads: the missing file named: %s", threads, err.msg);
    for (int i = 0; i < N; i++) unlink(paths[i]);
}

/* a 3 MB file of pseudo-random bytes: ours vs the system tool */
static void check_file_vs_sha256sum(void) {
    char path[] = "/tmp/kv_sha256_test_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    size_t n = 3 * 1000 * 1000 + 17;
    uint8_t *buf = malloc(n);
    for (size_t i = 0; i < n; i++) buf[i] = rnd8();
    CHECK(write(fd, buf, n) == (ssize_t)n, "write");
    close(fd);
    free(buf);

    char ours[65] = {0};
    kv_error err = {0};
    CHECK(kv_sha256_file(path, ours, &err) == 0, "kv_sha256_file: %s", err.msg);

    char cmd[128], theirs[65] = {0};
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "popen sha256sum");
    if (p) {
        CHECK(fscanf(p, "%64s", theirs) == 1, "sha256sum output");
        pclose(p);
    }
    CHECK(strcmp(ours, theirs) == 0, "file digest %s, sha256sum says %s", ours, theirs);
    unlink(path);

    CHECK(kv_sha256_file("/nonexistent/kv_sha256", ours, &err) == KV_EIO, "missing file");
    CHECK(strstr(err.msg, "/nonexistent/kv_sha256") != NULL, "error names the path: %s", err.msg);
}

int main(void) {
    int have_hw = kv_sha256_use_hw(1);
    check_vectors(have_hw ? "accelerated" : "portable");
    kv_sha256_use_hw(0);
    check_vectors("portable");
    kv_sha256_use_hw(1);
    check_paths_agree(have_hw);
    check_x2();
    check_hex_parse();
    check_file_vs_sha256sum();
    check_files_in_pairs();
    printf("sha256 accelerated path: %s\n", have_hw ? "yes" : "no (portable only)");
    return check_done("test_sha256");
}
