/* The step log OUT_DIR/train_log.jsonl: one JSON object per optimiser step, appended and flushed
 * as the step ends; a resumed run first trims the lines past its checkpoint. */
#ifndef KV_DISTILL_LOG_H
#define KV_DISTILL_LOG_H

#include <stdio.h>

#include "base/error.h"

typedef struct {
    FILE *f;
    char path[4096];
} distill_log;

typedef struct {
    long step; /* steps done */
    double loss, kl, mse, ce, lr, grad_norm; /* the step's (kvt_loss, schedule, before clipping) */
    long tokens; /* trained so far */
    double seconds; /* wall time of the run so far, all processes */
} distill_log_entry;

/* append: keep the lines there (resume); else start the file empty */
int distill_log_open(distill_log *l, const char *path, int append, kv_error *err);
int distill_log_append(distill_log *l, const distill_log_entry *e, kv_error *err);
/* closes an open log (a no-op otherwise); KV_EIO when buffered lines could not be written */
int distill_log_close(distill_log *l, kv_error *err);
/* keeps the lines of steps <= step (those of a killed run past its checkpoint go, and a torn
 * last line); atomic; nothing to do when the file does not exist */
int distill_log_trim(const char *path, long step, kv_error *err);

#endif
