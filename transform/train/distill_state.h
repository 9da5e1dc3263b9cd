/* The resume state of a kvdistill run as it is read back: the metadata and tensors of
 * OUT_DIR/checkpoint/state.safetensors and the step log train_log.jsonl. Parsing only, no model:
 * distill.c writes the state and restores it through these, and tests/fuzz/fuzz_distill_state.c
 * drives them with hostile files. */
#ifndef KV_DISTILL_STATE_H
#define KV_DISTILL_STATE_H

#include <stddef.h>

#include "base/error.h"
#include "formats/safetensors.h"

#define DISTILL_STATE_FORMAT "kvforge-distill-state-1"

typedef struct {
    long step, tokens_trained;
    double seconds; /* wall time of the runs before this one (informational; 0 when absent) */
} distill_state;

/* The metadata of a parsed checkpoint: format must be DISTILL_STATE_FORMAT (KV_EFORMAT "not a
 * kvdistill checkpoint"), fingerprint equal to `fingerprint` (KV_EINVAL: other options, data or
 * student), step and tokens_trained decimal integers >= 0 (KV_EFORMAT), step <= total_steps
 * (KV_EFORMAT). Errors name f->path. */
int distill_state_read(const st_file *f, const char *fingerprint, long total_steps,
                       distill_state *out, kv_error *err);

/* the tensor "<kind><name>" if it is F32 with exactly n elements, else NULL */
const st_tensor *distill_state_tensor(const st_file *f, const char *kind, const char *name,
                                      size_t n);

/* train_log.jsonl (NUL-terminated): the length of its prefix of whole lines that each begin
 * {"step": N with N <= step. A torn last line and the lines of a killed run past its checkpoint
 * are what is cut. */
size_t distill_log_keep(const char *text, long step);

#endif
