/* KV maps: every configuration against arrays derived by hand from METHODS.md s1 (the worked
 * examples verbatim), presets, literals, SwiftKV, refusals, slots, cyclic block, diagram. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "formats/kvmap.h"

static kv_map map; /* ~4 KB: keep off the stack */

static int same_array(const int *a, const int *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void expect_map(const char *spec, int L, const int *want, const char *want_name) {
    kv_error err = {0};
    int rc = kvmap_parse(&map, spec, L, &err);
    CHECK(rc == 0, "%s L=%d: %s", spec, L, err.msg);
    if (rc) return;
    CHECK(map.n_layers == L, "%s: n_layers %d", spec, map.n_layers);
    CHECK(same_array(map.kv_layer_of, want, L), "%s L=%d: map differs from the hand derivation",
          spec, L);
    CHECK(!strcmp(map.name, want_name), "%s: name '%s', want '%s'", spec, map.name, want_name);
    CHECK(kvmap_validate(&map, &err) == 0, "%s: validate: %s", spec, err.msg);
    int slots = 0;
    for (int i = 0; i < L; i++) slots += want[i] == i;
    CHECK(kvmap_n_slots(&map) == slots, "%s: %d slots, want %d", spec, kvmap_n_slots(&map), slots);
    /* the canonical name parses back to the same map */
    kv_map again;
    CHECK(kvmap_parse(&again, map.name, L, &err) == 0 && same_array(again.kv_layer_of, want, L),
          "%s: name '%s' does not parse back: %s", spec, map.name, err.msg);
}

static void expect_refused(const char *spec, int L, const char *needle) {
    kv_error err = {0};
    int rc = kvmap_parse(&map, spec, L, &err);
    CHECK(rc == KV_EINVAL, "'%s' L=%d accepted (rc %d)", spec, L, rc);
    CHECK(err.code == KV_EINVAL && strlen(err.msg) > 10, "'%s': no message", spec);
    CHECK(strstr(err.msg, needle) != NULL, "'%s': message '%s' lacks '%s'", spec, err.msg, needle);
}

static void expect_swiftkv_refused(int L, int l, int g, const char *needle) {
    kv_error err = {0};
    int rc = kvmap_swiftkv(&map, L, l, g, &err);
    CHECK(rc == KV_EINVAL, "swiftkv L=%d l=%d g=%d accepted", L, l, g);
    CHECK(strstr(err.msg, needle) != NULL, "swiftkv L=%d l=%d g=%d: message '%s' lacks '%s'", L, l,
          g, err.msg, needle);
}

static void test_l12_l6(void) {
    /* worked examples, copied from METHODS.md */
    static const int pizza_bottom[12] = {0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5};
    static const int pizza_top[12] = {0, 1, 2, 3, 4, 11, 11, 11, 11, 11, 11, 11};
    static const int sandwich_middle[12] = {0, 1, 2, 6, 6, 6, 6, 6, 6, 6, 10, 11};
    static const int lasagna_bottom[12] = {0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10};
    static const int lasagna_top[12] = {1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11};
    /* by hand: pizza group [5,11] middle 8; sandwich b=3 t=2 group [3,9]; lasagna groups of 2,
     * middle floor((2k + 2k+1)/2) = 2k */
    static const int pizza_middle[12] = {0, 1, 2, 3, 4, 8, 8, 8, 8, 8, 8, 8};
    static const int sandwich_bottom[12] = {0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 10, 11};
    static const int sandwich_top[12] = {0, 1, 2, 9, 9, 9, 9, 9, 9, 9, 10, 11};
    static const int lasagna_middle[12] = {0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10};
    expect_map("pizza-bottom:6", 12, pizza_bottom, "pizza-bottom:6");
    expect_map("pizza-top:6", 12, pizza_top, "pizza-top:6");
    expect_map("pizza-middle:6", 12, pizza_middle, "pizza-middle:6");
    expect_map("sandwich-bottom:6", 12, sandwich_bottom, "sandwich-bottom:6");
    expect_map("sandwich-top:6", 12, sandwich_top, "sandwich-top:6");
    expect_map("sandwich-middle:6", 12, sandwich_middle, "sandwich-middle:6");
    expect_map("lasagna-bottom:6", 12, lasagna_bottom, "lasagna-bottom:6");
    expect_map("lasagna-top:6", 12, lasagna_top, "lasagna-top:6");
    expect_map("lasagna-middle:6", 12, lasagna_middle, "lasagna-middle:6");
}

static void test_l22_l11(void) {
    /* pizza: 0..9 KV, group [10,21], middle 15. sandwich: b=5 t=5, group [5,16], middle 10.
     * lasagna: 11 groups of 2. */
    static const int pizza_bottom[22] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                         10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10};
    static const int pizza_top[22] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  21,
                                      21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21};
    static const int pizza_middle[22] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  15,
                                         15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};
    static const int sandwich_bottom[22] = {0, 1, 2, 3, 4, 5, 5,  5,  5,  5,  5,
                                            5, 5, 5, 5, 5, 5, 17, 18, 19, 20, 21};
    static const int sandwich_top[22] = {0,  1,  2,  3,  4,  16, 16, 16, 16, 16, 16,
                                         16, 16, 16, 16, 16, 16, 17, 18, 19, 20, 21};
    static const int sandwich_middle[22] = {0,  1,  2,  3,  4,  10, 10, 10, 10, 10, 10,
                                            10, 10, 10, 10, 10, 10, 17, 18, 19, 20, 21};
    static const int lasagna_bottom[22] = {0,  0,  2,  2,  4,  4,  6,  6,  8,  8,  10,
                                           10, 12, 12, 14, 14, 16, 16, 18, 18, 20, 20};
    static const int lasagna_top[22] = {1,  1,  3,  3,  5,  5,  7,  7,  9,  9,  11,
                                        11, 13, 13, 15, 15, 17, 17, 19, 19, 21, 21};
    static const int lasagna_middle[22] = {0,  0,  2,  2,  4,  4,  6,  6,  8,  8,  10,
                                           10, 12, 12, 14, 14, 16, 16, 18, 18, 20, 20};
    expect_map("pizza-bottom:11", 22, pizza_bottom, "pizza-bottom:11");
    expect_map("pizza-top:11", 22, pizza_top, "pizza-top:11");
    expect_map("pizza-middle:11", 22, pizza_middle, "pizza-middle:11");
    expect_map("sandwich-bottom:11", 22, sandwich_bottom, "sandwich-bottom:11");
    expect_map("sandwich-top:11", 22, sandwich_top, "sandwich-top:11");
    expect_map("sandwich-middle:11", 22, sandwich_middle, "sandwich-middle:11");
    expect_map("lasagna-bottom:11", 22, lasagna_bottom, "lasagna-bottom:11");
    expect_map("lasagna-top:11", 22, lasagna_top, "lasagna-top:11");
    expect_map("lasagna-middle:11", 22, lasagna_middle, "lasagna-middle:11");
}

static void test_uneven(void) {
    /* lasagna L=12 l=5: sizes 3,3,2,2,2 -> [0,2] [3,5] [6,7] [8,9] [10,11] */
    static const int lb[12] = {0, 0, 0, 3, 3, 3, 6, 6, 8, 8, 10, 10};
    static const int lt[12] = {2, 2, 2, 5, 5, 5, 7, 7, 9, 9, 11, 11};
    static const int lm[12] = {1, 1, 1, 4, 4, 4, 6, 6, 8, 8, 10, 10};
    /* sandwich L=12 l=5: b=2 t=2 group [2,9] middle 5; l=4: b=2 t=1 group [2,10] */
    static const int sm5[12] = {0, 1, 5, 5, 5, 5, 5, 5, 5, 5, 10, 11};
    static const int st4[12] = {0, 1, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11};
    /* l=1: one group over everything; l=L: identity */
    static const int p1[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const int st1[12] = {11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11};
    static const int id12[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    expect_map("lasagna-bottom:5", 12, lb, "lasagna-bottom:5");
    expect_map("lasagna-top:5", 12, lt, "lasagna-top:5");
    expect_map("lasagna-middle:5", 12, lm, "lasagna-middle:5");
    expect_map("sandwich-middle:5", 12, sm5, "sandwich-middle:5");
    expect_map("sandwich-top:4", 12, st4, "sandwich-top:4");
    expect_map("pizza-bottom:1", 12, p1, "pizza-bottom:1");
    expect_map("sandwich-top:1", 12, st1, "sandwich-top:1");
    expect_map("lasagna-top:12", 12, id12, "lasagna-top:12");
    expect_map("identity", 12, id12, "identity");
    CHECK(kvmap_is_identity(&map), "identity map not identity");
    kvmap_parse(&map, "pizza-top:12", 12, NULL);
    CHECK(kvmap_is_identity(&map) && kvmap_n_slots(&map) == 12,
          "pizza-top:12 should share nothing");
    kvmap_parse(&map, "pizza-top:6", 12, NULL);
    CHECK(!kvmap_is_identity(&map), "pizza-top:6 is not identity");
}

static void test_presets(void) {
    static const int cla2[12] = {0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10};
    /* f=3 on 10 layers: [0,2] [3,5] [6,8] [9] (lasagna-bottom:4 would give 0 0 0 3 3 3 6 6 8 8) */
    static const int cla3_10[10] = {0, 0, 0, 3, 3, 3, 6, 6, 6, 9};
    static const int cla1[5] = {0, 1, 2, 3, 4};
    /* YOCO L=12: pizza-bottom l=7: 0..5 KV, group [6,11] */
    static const int yoco12[12] = {0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6};
    static const int yoco2[2] = {0, 1};
    /* LCKV w=2: sandwich-top l=3: b=1 t=1, group [1, L-2]; METHODS' 0_20_20_..._20_21 at L=22 */
    static const int lckv2_12[12] = {0, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11};
    static const int lckv2_22[22] = {0,  20, 20, 20, 20, 20, 20, 20, 20, 20, 20,
                                     20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 21};
    static const int lckv0_12[12] = {11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11};
    static const int lckv1_12[12] = {0, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11};
    expect_map("cla:2", 12, cla2, "cla:2");
    expect_map("cla:3", 10, cla3_10, "cla:3");
    CHECK(kvmap_n_slots(&map) == 4, "cla:3 on 10 layers: %d slots", kvmap_n_slots(&map));
    expect_map("cla:1", 5, cla1, "cla:1");
    expect_map("yoco", 12, yoco12, "yoco");
    expect_map("yoco", 2, yoco2, "yoco");
    expect_map("lckv:2", 12, lckv2_12, "lckv:2");
    expect_map("lckv:2", 22, lckv2_22, "lckv:2");
    expect_map("lckv:0", 12, lckv0_12, "lckv:0");
    expect_map("lckv:1", 12, lckv1_12, "lckv:1");
    char buf[128];
    kvmap_parse(&map, "lckv:2", 22, NULL);
    kvmap_layer_types(&map, buf, sizeof buf);
    CHECK(!strcmp(buf, "0_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_21"),
          "lckv:2 at L=22 layer_types '%s'", buf);
}

static void test_literals(void) {
    static const char *const lits[] = {"0_0_2_2_4", "0", "1_1_2", "0_2_2_4_4", "4_4_4_4_4"};
    static const int layers[] = {5, 1, 3, 5, 5};
    static const int want0[5] = {0, 0, 2, 2, 4};
    char buf[64];
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        kv_error err = {0};
        int rc = kvmap_parse(&map, lits[k], layers[k], &err);
        CHECK(rc == 0, "literal %s: %s", lits[k], err.msg);
        int n = kvmap_layer_types(&map, buf, sizeof buf);
        CHECK(n == (int)strlen(lits[k]) && !strcmp(buf, lits[k]), "round trip %s -> %s", lits[k],
              buf);
        CHECK(!strcmp(map.name, lits[k]), "literal name '%s'", map.name);
    }
    kvmap_parse(&map, "0_0_2_2_4", 5, NULL);
    CHECK(same_array(map.kv_layer_of, want0, 5) && map.kind == KVMAP_CROSS, "0_0_2_2_4 parsed");
    kvmap_parse(&map, "0_1_2", 3, NULL);
    CHECK(map.kind == KVMAP_IDENTITY, "all-self literal is identity");
    kvmap_parse(&map, "007_7_7_7_7_7_7_7", 8, NULL);
    CHECK(!strcmp(map.name, "7_7_7_7_7_7_7_7"), "leading zeros normalised: '%s'", map.name);
    /* truncation: snprintf-like */
    kvmap_parse(&map, "0_0_2_2_4", 5, NULL);
    char small[4];
    CHECK(kvmap_layer_types(&map, small, sizeof small) == 9 && !strcmp(small, "0_0"),
          "truncated layer_types '%s'", small);
    CHECK(kvmap_layer_types(&map, NULL, 0) == 9, "length query");
    /* a literal too long for name is named "custom" and still round trips */
    char lit[4096];
    size_t off = 0;
    for (int i = 0; i < 100; i++)
        off += (size_t)snprintf(lit + off, sizeof lit - off, i ? "_%d" : "%d", 99);
    kv_error err = {0};
    CHECK(kvmap_parse(&map, lit, 100, &err) == 0, "100-layer literal: %s", err.msg);
    CHECK(!strcmp(map.name, "custom"), "long literal name '%s'", map.name);
    CHECK(kvmap_layer_types(&map, lit + 2048, 2048) == (int)off && !strcmp(lit, lit + 2048),
          "long literal round trip");
}

static void test_refusals(void) {
    expect_refused("pizza-bottom:0", 12, "at least 1");
    expect_refused("sandwich-middle:13", 12, "only 12 layers");
    expect_refused("pizza-top:13", 12, "only 12 layers");
    expect_refused("lasagna-bottom:13", 12, "only 12 layers");
    expect_refused("lasagna-top:99", 12, "only 12 layers");
    expect_refused("cla:0", 12, "CLA factor 0");
    expect_refused("cla:13", 12, "CLA factor 13");
    expect_refused("cla:x", 12, "not a sharing factor");
    expect_refused("lckv:12", 12, "12 warm-up layers");
    expect_refused("lckv:-1", 12, "not a number");
    expect_refused("yoco", 11, "even number of layers");
    expect_refused("yoco", 1, "even number of layers");
    expect_refused("0_0__2_2", 5, "empty");
    expect_refused("0_0_2_2_", 5, "empty");
    expect_refused("0_a_2_2_4", 5, "not a number");
    expect_refused("0_0_2_2x_4", 5, "unexpected character");
    expect_refused("0 0 2 2 4", 5, "unexpected character");
    expect_refused("0_-1_2_2_4", 5, "not a number");
    expect_refused("0_00000000_2_2_4", 5, "too long");
    expect_refused("0_0_2_2", 5, "4 entries but the model has 5 layers");
    expect_refused("0_0_2_2_4_4", 5, "6 entries but the model has 5 layers");
    expect_refused("0_0_1_2_4", 5, "not a KV layer");
    expect_refused("1_2_2", 3, "not a KV layer");
    expect_refused("0_0_2_2_5", 5, "outside 0..4");
    expect_refused("pizza", 12, "unknown kind");
    expect_refused("pizza-left:3", 12, "unknown kind");
    expect_refused("pizzabottom:3", 12, "unknown kind");
    expect_refused("pizza-bottom-x:3", 12, "unknown kind");
    expect_refused("lasagna:3", 12, "unknown kind");
    expect_refused("pizza-bottom:3x", 12, "not a number of KV layers");
    expect_refused("pizza-bottom:", 12, "not a number of KV layers");
    expect_refused("pizza-bottom:-3", 12, "not a number of KV layers");
    expect_refused("", 12, "empty spec");
    expect_refused("pizza-bottom:3", 0, "0 layers");
    expect_refused("pizza-bottom:3", KVMAP_MAX_LAYERS + 1, "1025 layers");
    expect_refused("swiftkv:12", 12, "num_key_value_layers = 12");
    expect_refused("swiftkv:6,", 12, "expected \"l\" or \"l,g\"");
    kv_error err = {0};
    CHECK(kvmap_parse(&map, NULL, 12, &err) == KV_EINVAL, "NULL spec");

    expect_swiftkv_refused(32, 0, 1, "num_key_value_layers = 0");
    expect_swiftkv_refused(32, 32, 1, "num_key_value_layers = 32");
    expect_swiftkv_refused(32, 40, 1, "num_key_value_layers = 40");
    expect_swiftkv_refused(32, -1, 1, "num_key_value_layers = -1");
    expect_swiftkv_refused(32, 16, 0, "key_value_group_size = 0");
    expect_swiftkv_refused(32, 16, -2, "key_value_group_size = -2");
    expect_swiftkv_refused(32, 16, 5, "does not divide the 16 layers");
    expect_swiftkv_refused(32, 15, 2, "does not divide the 17 layers");
    CHECK(kvmap_parse_swiftkv(&map, "16,x", 32, &err) == KV_EINVAL, "16,x accepted");
    CHECK(kvmap_parse_swiftkv(&map, ",4", 32, &err) == KV_EINVAL, ",4 accepted");
    CHECK(kvmap_parse_swiftkv(&map, "", 32, &err) == KV_EINVAL, "empty accepted");
    CHECK(kvmap_parse_swiftkv(&map, "16,4,1", 32, &err) == KV_EINVAL, "16,4,1 accepted");

    /* validate catches hand-corrupted maps */
    kvmap_parse(&map, "sandwich-middle:6", 12, NULL);
    map.kv_layer_of[6] = 5;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL && strstr(err.msg, "not a KV layer"),
          "corrupted target: %s", err.msg);
    map.kv_layer_of[6] = 12;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL && strstr(err.msg, "outside 0..11"),
          "target out of range: %s", err.msg);
    map.kv_layer_of[6] = -1;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL, "negative target accepted");
    kvmap_identity(&map, 4);
    map.kv_layer_of[1] = 0;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL && strstr(err.msg, "marked identity"),
          "identity with sharing: %s", err.msg);
    kvmap_swiftkv(&map, 12, 6, 3, NULL);
    map.kv_layer_of[8] = 7;
    map.kv_layer_of[7] = 7;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL && strstr(err.msg, "expected 6"),
          "swiftkv leader corrupted: %s", err.msg);
    kvmap_swiftkv(&map, 12, 6, 3, NULL);
    map.swiftkv_g = 4;
    CHECK(kvmap_validate(&map, &err) == KV_EINVAL, "swiftkv g changed accepted");
    CHECK(kvmap_validate(NULL, &err) == KV_EINVAL, "NULL map accepted");
    CHECK(kvmap_identity(&map, 0) == KV_EINVAL, "identity of 0 layers");
}

static void test_swiftkv(void) {
    kv_error err = {0};
    CHECK(kvmap_swiftkv(&map, 32, 16, 4, &err) == 0, "swiftkv 32/16/4: %s", err.msg);
    CHECK(map.kind == KVMAP_SWIFTKV && map.swiftkv_l == 16 && map.swiftkv_g == 4, "fields");
    CHECK(!strcmp(map.name, "swiftkv:16,4"), "name '%s'", map.name);
    CHECK(kvmap_n_slots(&map) == 20, "slots %d, want 16 + 16/4 = 20", kvmap_n_slots(&map));
    /* 20 of 32 slots: the cache is 62.5% of the original, i.e. 37.5% smaller */
    CHECK_NEAR(kvmap_cache_saving(&map), 0.375, 1e-12, "saving");
    CHECK_NEAR(1.0 - kvmap_cache_saving(&map), 0.625, 1e-12, "remaining fraction");
    /* leaders 16, 20, 24, 28; layers below 16 read themselves */
    for (int j = 0; j < 32; j++) {
        int leader = j < 16 ? j : j < 20 ? 16 : j < 24 ? 20 : j < 28 ? 24 : 28;
        int slot = j < 16 ? j : j < 20 ? 16 : j < 24 ? 17 : j < 28 ? 18 : 19;
        CHECK(map.kv_layer_of[j] == leader, "layer %d reads %d, want %d", j, map.kv_layer_of[j],
              leader);
        CHECK(kvmap_slot_of(&map, j) == slot, "layer %d slot %d, want %d", j,
              kvmap_slot_of(&map, j), slot);
        CHECK(kvmap_is_kv_layer(&map, j) == (j < 16 || j % 4 == 0), "is_kv_layer %d", j);
        CHECK(!kvmap_is_upward(&map, j), "swiftkv layer %d upward", j);
    }
    int lo, hi;
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 0 && lo == -1 && hi == -1, "swiftkv block");
    int readers[8];
    CHECK(kvmap_readers(&map, 20, readers, 8) == 4 && readers[0] == 20 && readers[3] == 23,
          "readers of leader 20");
    CHECK(kvmap_readers(&map, 21, readers, 8) == 0, "readers of non-leader 21");
    CHECK(kvmap_readers(&map, 3, readers, 8) == 1 && readers[0] == 3, "readers of layer 3");
    CHECK(!kvmap_is_identity(&map), "swiftkv is not identity");
    /* 2 * 20 slots * 8 heads * 128 * 2 bytes */
    CHECK(kvmap_cache_bytes_per_token(&map, 8, 128, 2) == 81920, "swiftkv cache bytes");

    /* spec forms */
    CHECK(kvmap_parse_swiftkv(&map, "16,4", 32, &err) == 0 && kvmap_n_slots(&map) == 20, "16,4: %s",
          err.msg);
    CHECK(kvmap_parse_swiftkv(&map, "16", 32, &err) == 0 && map.swiftkv_g == 1 &&
              kvmap_n_slots(&map) == 32 && !strcmp(map.name, "swiftkv:16,1"),
          "16 -> g=1: %s", err.msg);
    CHECK_NEAR(kvmap_cache_saving(&map), 0.0, 0, "g=1 saves no cache");
    static const int s12[12] = {0, 1, 2, 3, 4, 5, 6, 6, 6, 9, 9, 9};
    CHECK(kvmap_parse(&map, "swiftkv:6,3", 12, &err) == 0 && same_array(map.kv_layer_of, s12, 12) &&
              kvmap_n_slots(&map) == 8,
          "swiftkv:6,3 via kvmap_parse: %s", err.msg);
    static const int s3[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    CHECK(kvmap_parse(&map, "swiftkv:3,1", 12, &err) == 0 && same_array(map.kv_layer_of, s3, 12) &&
              map.kind == KVMAP_SWIFTKV,
          "swiftkv:3,1: %s", err.msg);
    CHECK(kvmap_swiftkv(&map, 2, 1, 1, &err) == 0, "smallest swiftkv: %s", err.msg);
}

static void test_queries(void) {
    int lo, hi;
    kvmap_parse(&map, "sandwich-middle:6", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 4 && lo == 3 && hi == 6,
          "sandwich-middle:6 block %d..%d", lo, hi);
    for (int i = 0; i < 12; i++)
        CHECK(kvmap_is_upward(&map, i) == (i >= 3 && i <= 5), "upward %d", i);
    int r[12];
    CHECK(kvmap_readers(&map, 6, r, 12) == 7 && r[0] == 3 && r[6] == 9, "readers of 6");
    CHECK(kvmap_readers(&map, 6, r, 2) == 7 && r[0] == 3 && r[1] == 4, "readers, small cap");
    CHECK(kvmap_readers(&map, 3, r, 12) == 0, "layer 3 has no readers");
    CHECK(kvmap_readers(&map, 0, r, 12) == 1 && r[0] == 0, "readers of 0");
    CHECK(kvmap_readers(&map, 12, r, 12) == KV_EINVAL, "readers out of range");
    /* slots: KV layers 0 1 2 6 10 11 -> slots 0..5 */
    static const int slot[12] = {0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 4, 5};
    for (int i = 0; i < 12; i++)
        CHECK(kvmap_slot_of(&map, i) == slot[i], "slot of %d: %d", i, kvmap_slot_of(&map, i));
    CHECK(kvmap_slot_of(&map, 12) == -1 && kvmap_slot_of(&map, -1) == -1, "slot out of range");
    CHECK(kvmap_is_kv_layer(&map, 6) && !kvmap_is_kv_layer(&map, 7) && !kvmap_is_kv_layer(&map, 12),
          "is_kv_layer");
    /* 2 * 6 * 4 * 8 * 2 */
    CHECK(kvmap_cache_bytes_per_token(&map, 4, 8, 2) == 768, "cache bytes");
    CHECK(kvmap_cache_bytes_per_token(&map, 4, 8, (size_t)-1 / 2) == 0, "overflow -> 0");
    CHECK(kvmap_cache_bytes_per_token(&map, 0, 8, 2) == 0, "bad nkv -> 0");
    CHECK_NEAR(kvmap_cache_saving(&map), 0.5, 1e-12, "saving 50%");

    kvmap_parse(&map, "pizza-top:6", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 7 && lo == 5 && hi == 11, "pizza-top block");
    kvmap_parse(&map, "lasagna-top:6", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 12 && lo == 0 && hi == 11, "lasagna-top block");
    kvmap_parse(&map, "lasagna-middle:5", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 5 && lo == 0 && hi == 4, "lasagna-middle:5 block");
    kvmap_parse(&map, "lckv:2", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 10 && lo == 1 && hi == 10, "lckv:2 block");
    kvmap_parse(&map, "1_1_2_4_4", 5, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 5 && lo == 0 && hi == 4, "two upward groups");
    /* LCKV's cyclic groups: runs [i, kv(i)] of upward layers, merged while they overlap */
    CHECK(kvmap_cyclic_group(&map, 0, &lo, &hi) == 2 && lo == 0 && hi == 1 &&
              kvmap_cyclic_group(&map, 2, &lo, &hi) == 2 && lo == 3 && hi == 4 &&
              kvmap_cyclic_group(&map, 5, &lo, &hi) == 0 && lo == -1 && hi == -1 &&
              kvmap_n_cyclic_groups(&map) == 2,
          "1_1_2_4_4 groups");
    kvmap_parse(&map, "lasagna-top:6", 12, NULL);
    CHECK(kvmap_n_cyclic_groups(&map) == 6, "lasagna-top:6: 6 groups");
    for (int g = 0, from = 0; g < 6; g++, from = hi + 1)
        CHECK(kvmap_cyclic_group(&map, from, &lo, &hi) == 2 && lo == 2 * g && hi == 2 * g + 1,
              "lasagna-top:6 group %d: %d..%d", g, lo, hi);
    kvmap_parse(&map, "lckv:2", 12, NULL);
    CHECK(kvmap_n_cyclic_groups(&map) == 1 && kvmap_cyclic_group(&map, 0, &lo, &hi) == 10 &&
              lo == 1 && hi == 10 && kvmap_cyclic_group(&map, 1, NULL, NULL) == 10 &&
              kvmap_cyclic_group(&map, 11, NULL, NULL) == 0,
          "lckv:2: one group = the block");
    kvmap_parse(&map, "0_3_5_3_5_5_6", 7, NULL); /* [1,3] and [2,5] overlap: one group 1..5 */
    CHECK(kvmap_n_cyclic_groups(&map) == 1 && kvmap_cyclic_group(&map, 0, &lo, &hi) == 5 &&
              lo == 1 && hi == 5,
          "overlapping runs merge: %d..%d", lo, hi);
    kvmap_parse(&map, "2_1_2_4_4", 5, NULL); /* touching runs [0,2] [3,4] stay apart */
    CHECK(kvmap_n_cyclic_groups(&map) == 2, "touching runs: two groups");
    kvmap_parse(&map, "0_3_3_3_4_6_6", 7, NULL);
    cJSON *plan = kvmap_plan_json(&map);
    char *text = plan ? cJSON_PrintUnformatted(plan) : NULL;
    const char *want = "{\"passes\":9,\"cyclic_groups\":2,\"steps\":["
                       "{\"layers\":[0,0],\"passes\":1,\"cyclic\":false},"
                       "{\"layers\":[1,3],\"passes\":9,\"cyclic\":true},"
                       "{\"layers\":[4,4],\"passes\":1,\"cyclic\":false},"
                       "{\"layers\":[5,6],\"passes\":9,\"cyclic\":true}]}";
    CHECK(text && !strcmp(text, want), "plan json: %s", text ? text : "(null)");
    free(text);
    cJSON_Delete(plan);
    kvmap_parse(&map, "sandwich-bottom:6", 12, NULL);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 0 && lo == -1 && hi == -1, "bottom: no block");
    CHECK(kvmap_n_cyclic_groups(&map) == 0 && kvmap_cyclic_group(&map, 0, &lo, &hi) == 0 &&
              lo == -1 && hi == -1,
          "bottom: no group");
    CHECK(kvmap_plan_json(&map) == NULL, "bottom: no plan json");
    kvmap_identity(&map, 12);
    CHECK(kvmap_cyclic_block(&map, &lo, &hi) == 0 && lo == -1, "identity: no block");
    CHECK(kvmap_cache_bytes_per_token(&map, 4, 8, 2) == 1536, "identity cache bytes");
}

/* kvmap_read_config of a config.json text for L layers */
static int from_config(const char *json, int L, int swiftkv_default, kv_error *err) {
    cJSON *c = cJSON_Parse(json);
    int rc = kvmap_read_config(&map, c, L, swiftkv_default, NULL, "config.json", err);
    cJSON_Delete(c);
    return rc;
}

static void test_from_config(void) {
    kv_error err = {0};
    CHECK(from_config("{}", 12, 0, &err) == 0 && map.kind == KVMAP_IDENTITY &&
              kvmap_n_slots(&map) == 12,
          "no map -> identity: %s", err.msg);

    static const int lb[12] = {0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10};
    CHECK(from_config("{\"layer_types\": \"0_0_2_2_4_4_6_6_8_8_10_10\"}", 12, 0, &err) == 0 &&
              map.kind == KVMAP_CROSS && same_array(map.kv_layer_of, lb, 12) &&
              !strcmp(map.name, "0_0_2_2_4_4_6_6_8_8_10_10"),
          "layer_types: %s (name %s)", err.msg, map.name);
    CHECK(from_config("{\"layer_types\": [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]}", 12, 0, &err) ==
                  0 &&
              map.kind == KVMAP_CROSS && same_array(map.kv_layer_of, lb, 12),
          "layer_types list: %s", err.msg);
    /* layer 3 -> 1, which reads 0 */
    CHECK(from_config("{\"layer_types\": \"0_0_2_1_4_4_6_6_8_8_10_10\"}", 12, 0, &err) ==
                  KV_EFORMAT &&
              strstr(err.msg, "config.json") && strstr(err.msg, "not a KV layer"),
          "bad layer_types: %s", err.msg);
    CHECK(from_config("{\"layer_types\": \"0_0_2_40_4_4_6_6_8_8_10_10\"}", 12, 0, &err) ==
                  KV_EFORMAT &&
              strstr(err.msg, "outside 0..11"),
          "layer_types out of range: %s", err.msg);

    CHECK(from_config("{\"layer_types\": \"0_0_2_2_4_4_6_6_8_8_10_10\", \"swiftkv\": true,"
                      " \"num_key_value_layers\": 6, \"key_value_group_size\": 3}",
                      12, 0, &err) == KV_EUNSUPPORTED &&
              strstr(err.msg, "both"),
          "swiftkv + layer_types accepted: %s", err.msg);
    static const int s12[12] = {0, 1, 2, 3, 4, 5, 6, 6, 6, 9, 9, 9};
    CHECK(
        from_config("{\"swiftkv\": true, \"num_key_value_layers\": 6, \"key_value_group_size\": 3}",
                    12, 0, &err) == 0 &&
            map.kind == KVMAP_SWIFTKV && same_array(map.kv_layer_of, s12, 12),
        "swiftkv config: %s", err.msg);
    CHECK(from_config("{\"num_key_value_layers\": 6, \"key_value_group_size\": 3}", 12, 1, &err) ==
                  0 &&
              map.kind == KVMAP_SWIFTKV && same_array(map.kv_layer_of, s12, 12),
          "swiftkv implied by the architecture: %s", err.msg);
    CHECK(from_config("{\"swiftkv\": true, \"num_key_value_layers\": 6}", 12, 0, &err) == 0 &&
              map.swiftkv_g == 1,
          "absent group -> 1: %s", err.msg);
    CHECK(
        from_config("{\"swiftkv\": true, \"num_key_value_layers\": 6, \"key_value_group_size\": 4}",
                    12, 0, &err) == KV_EFORMAT &&
            strstr(err.msg, "config.json") && strstr(err.msg, "'key_value_group_size' (4)"),
        "swiftkv 12/6/4: %s", err.msg);
    CHECK(from_config("{\"swiftkv\": true, \"num_key_value_layers\": 12}", 12, 0, &err) ==
              KV_EFORMAT,
          "swiftkv l = L accepted");
    CHECK(from_config("{}", 0, 0, &err) == KV_EFORMAT && strstr(err.msg, "num_hidden_layers"),
          "0 layers: %s", err.msg);
}

static void test_diagram(void) {
    char buf[8192];
    kvmap_parse(&map, "0_2_2", 3, NULL);
    const char *want = "KV map 0_2_2: 3 layers, 2 KV layers\n"
                       "layer 0  KV          slot 0\n"
                       "layer 1  -> 2        slot 1  upward (diagonal masked)\n"
                       "layer 2  KV          slot 1  shared by 2 layers\n"
                       "iterative prefill: 1 cyclic group, N passes each (N = 9 unless kvrun "
                       "--prefill iterative:N / kvdistill --passes N)\n"
                       "  layers 0..0  once\n"
                       "  layers 1..2  cyclic group 1: 9 passes\n"
                       "KV cache: 2 of 3 slots (saving 33.3%)\n";
    int n = kvmap_diagram(&map, buf, sizeof buf);
    CHECK(n == (int)strlen(want) && !strcmp(buf, want), "diagram:\n%s\nwant:\n%s", buf, want);
    char small[10];
    CHECK(kvmap_diagram(&map, small, sizeof small) == n && strlen(small) == 9 &&
              !strncmp(small, want, 9),
          "truncated diagram");
    CHECK(kvmap_diagram(&map, NULL, 0) == n, "diagram length query");

    kvmap_parse(&map, "sandwich-middle:6", 12, NULL);
    kvmap_diagram(&map, buf, sizeof buf);
    CHECK(strstr(buf, "KV cache: 6 of 12 slots (saving 50.0%)\n") != NULL, "sandwich summary");
    CHECK(strstr(buf, "layer  4  ->  6       slot 3  upward (diagonal masked)\n") != NULL,
          "sandwich layer 4 line:\n%s", buf);
    CHECK(strstr(buf, "layer  8  ->  6       slot 3\n") != NULL, "sandwich layer 8 line");
    CHECK(strstr(buf, "layer  6  KV          slot 3  shared by 7 layers\n") != NULL,
          "sandwich layer 6 line");
    CHECK(strstr(buf, "  layers  3.. 6  cyclic group 1: 9 passes\n") != NULL &&
              strstr(buf, "  layers  7..11  once\n") != NULL,
          "sandwich plan lines:\n%s", buf);
    kvmap_parse(&map, "lasagna-top:2", 5, NULL);
    kvmap_diagram(&map, buf, sizeof buf);
    CHECK(strstr(buf, "iterative prefill: 2 cyclic groups") != NULL &&
              strstr(buf, "  layers 0..2  cyclic group 1: 9 passes\n"
                          "  layers 3..4  cyclic group 2: 9 passes\n") != NULL &&
              strstr(buf, "once") == NULL,
          "lasagna-top:2 plan:\n%s", buf);

    kvmap_swiftkv(&map, 32, 16, 4, NULL);
    kvmap_diagram(&map, buf, sizeof buf);
    CHECK(strstr(buf, "KV cache: 20 of 32 slots (saving 37.5%)\n") != NULL, "swiftkv summary");
    CHECK(strstr(buf, "layer 20  KV swiftkv  slot 17  shared by 4 layers\n") != NULL,
          "swiftkv leader line:\n%s", buf);
    CHECK(strstr(buf, "layer 23  -> 20       slot 17\n") != NULL, "swiftkv member line");
    CHECK(strstr(buf, "cyclic") == NULL, "swiftkv has no cyclic block");

    kvmap_identity(&map, 2);
    kvmap_diagram(&map, buf, sizeof buf);
    CHECK(!strcmp(buf, "KV map identity: 2 layers, 2 KV layers\n"
                       "layer 0  KV          slot 0\n"
                       "layer 1  KV          slot 1\n"
                       "KV cache: 2 of 2 slots (saving 0.0%)\n"),
          "identity diagram:\n%s", buf);
    map.kv_layer_of[1] = 5;
    CHECK(kvmap_diagram(&map, buf, sizeof buf) == KV_EINVAL, "diagram of invalid map");
    CHECK(kvmap_layer_types(&map, buf, sizeof buf) == KV_EINVAL, "layer_types of invalid map");
}

int main(void) {
    test_l12_l6();
    test_l22_l11();
    test_uneven();
    test_presets();
    test_literals();
    test_refusals();
    test_swiftkv();
    test_queries();
    test_from_config();
    test_diagram();
    return check_done("test_kvmap");
}
