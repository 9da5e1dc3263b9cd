/* The memory budget's ledger (membudget.h). */
#include "base/membudget.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { MAX_KINDS = 16 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t budget_set; /* 0: physical RAM */
static const char *budget_source;
static struct {
    const char *what;
    uint64_t bytes;
} ledger[MAX_KINDS]; /* reserved bytes per category, in first-reserved order */
static int n_kinds;

static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

void kv_mem_set_budget(uint64_t bytes, const char *source) {
    pthread_mutex_lock(&lock);
    budget_set = bytes;
    budget_source = bytes ? source : NULL;
    pthread_mutex_unlock(&lock);
}

uint64_t kv_mem_physical(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    return (uint64_t)pages * (uint64_t)page;
}

uint64_t kv_mem_budget(void) {
    pthread_mutex_lock(&lock);
    uint64_t b = budget_set;
    pthread_mutex_unlock(&lock);
    if (b) return b;
    b = kv_mem_physical();
    return b ? b : UINT64_MAX;
}

static int kind_index(const char *what) {
    for (int i = 0; i < n_kinds; i++)
        if (strcmp(ledger[i].what, what) == 0) return i;
    if (n_kinds == MAX_KINDS) return MAX_KINDS - 1; /* shares the last slot */
    ledger[n_kinds].what = what;
    ledger[n_kinds].bytes = 0;
    return n_kinds++;
}

static uint64_t total_locked(void) {
    uint64_t t = 0;
    for (int i = 0; i < n_kinds; i++) t = add_sat(t, ledger[i].bytes);
    return t;
}

uint64_t kv_mem_reserved(void) {
    pthread_mutex_lock(&lock);
    uint64_t t = total_locked();
    pthread_mutex_unlock(&lock);
    return t;
}

const char *kv_mem_human(uint64_t bytes, char *buf, size_t cap) {
    static const char *const unit[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1000 && u < 6) {
        v /= 1000;
        u++;
    }
    if (u == 0) snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
    else snprintf(buf, cap, v < 10 ? "%.1f %s" : "%.0f %s", v, unit[u]);
    return buf;
}

int kv_mem_reserve(const char *who, const kv_mem_item *items, int n, kv_error *err) {
    const uint64_t budget = kv_mem_budget();
    pthread_mutex_lock(&lock);
    uint64_t add = 0;
    for (int i = 0; i < n; i++) add = add_sat(add, items[i].bytes);
    const uint64_t total = add_sat(total_locked(), add);
    if (total <= budget) {
        for (int i = 0; i < n; i++) {
            int k = kind_index(items[i].what);
            ledger[k].bytes = add_sat(ledger[k].bytes, items[i].bytes);
        }
        pthread_mutex_unlock(&lock);
        return 0;
    }
    /* the breakdown: the ledger with these items added, category by category */
    char parts[768] = "", a[32], b[32];
    size_t len = 0;
    const char *seen[MAX_KINDS + 16];
    int n_seen = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < (pass ? n : n_kinds); i++) {
            const char *what = pass ? items[i].what : ledger[i].what;
            int dup = 0;
            for (int j = 0; j < n_seen && !dup; j++) dup = strcmp(seen[j], what) == 0;
            if (dup || n_seen == (int)(sizeof seen / sizeof *seen)) continue;
            seen[n_seen++] = what;
            uint64_t bytes = 0;
            for (int j = 0; j < n_kinds; j++)
                if (strcmp(ledger[j].what, what) == 0) bytes = add_sat(bytes, ledger[j].bytes);
            for (int j = 0; j < n; j++)
                if (strcmp(items[j].what, what) == 0) bytes = add_sat(bytes, items[j].bytes);
            if (!bytes) continue;
            int m = snprintf(parts + len, sizeof parts - len, "%s%s %s", len ? ", " : "", what,
                             kv_mem_human(bytes, a, sizeof a));
            if (m < 0 || (size_t)m >= sizeof parts - len) break;
            len += (size_t)m;
        }
    const char *source = budget_source;
    pthread_mutex_unlock(&lock);
    kv_mem_human(total, a, sizeof a);
    kv_mem_human(budget, b, sizeof b);
    if (source)
        return kv_fail(err, KV_ENOMEM, "%s needs %s (%s), over the %s memory budget (%s)", who, a,
                       parts, b, source);
    return kv_fail(err, KV_ENOMEM,
                   "%s needs %s (%s), over the %s of physical memory (the default memory "
                   "budget; --max-memory or KVFORGE_MAX_MEMORY sets another)",
                   who, a, parts, b);
}

void kv_mem_release(const kv_mem_item *items, int n) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n_kinds; k++)
            if (strcmp(ledger[k].what, items[i].what) == 0) {
                ledger[k].bytes -=
                    ledger[k].bytes < items[i].bytes ? ledger[k].bytes : items[i].bytes;
                break;
            }
    pthread_mutex_unlock(&lock);
}
