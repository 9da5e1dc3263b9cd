/* The memory budget: a process-wide ledger of the large allocations the library plans (weights
 * widened to F32, KV cache, activations, training arenas with gradients, AdamW moments), each
 * reserved *before* it is allocated. A reservation that would take the total over the budget is
 * refused with KV_ENOMEM and a message listing what the run needs, so a tool stops with an
 * error instead of being killed by the kernel.
 *
 * The budget is what kv_mem_set_budget set (the tools: --max-memory SIZE, else the environment
 * variable KVFORGE_MAX_MEMORY), else the physical RAM (sysconf(_SC_PHYS_PAGES) * page size).
 * Mapped checkpoint pages (zero-copy F32 weights) are file cache and not counted; nor are small
 * tables (names, per-layer pointers). One ledger for host and device memory alike. */
#ifndef KV_MEMBUDGET_H
#define KV_MEMBUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct {
    const char *what; /* category: "weights", "KV cache", "activations", ... (a literal) */
    uint64_t bytes;
} kv_mem_item;

/* budget in bytes (0: back to the default, physical RAM); `source` names where it came from in
 * refusals ("--max-memory", "KVFORGE_MAX_MEMORY"; a literal or NULL) */
void kv_mem_set_budget(uint64_t bytes, const char *source);
uint64_t kv_mem_budget(void);
uint64_t kv_mem_physical(void); /* physical RAM in bytes (0 when unknown) */

/* reserves every item (all or none): KV_ENOMEM with "<who> needs 6.6 GB (weights 4.4 GB, KV
 * cache 2.1 GB, ...), over the 4 GB memory budget (--max-memory)" when the ledger's total
 * would pass the budget */
int kv_mem_reserve(const char *who, const kv_mem_item *items, int n, kv_error *err);
/* gives back what a kv_mem_reserve of the same items took */
void kv_mem_release(const kv_mem_item *items, int n);
uint64_t kv_mem_reserved(void); /* the ledger's total */

/* "6.6 GB", "512 kB", "100 B" (decimal units, 2 significant digits above 10) into buf */
const char *kv_mem_human(uint64_t bytes, char *buf, size_t cap);

#endif
