/* The JSONL step log (distill_log.h). */
#include "transform/train/distill_log.h"

#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "transform/train/distill_state.h"

int distill_log_open(distill_log *l, const char *path, int append, kv_error *err) {
    snprintf(l->path, sizeof l->path, "%s", path);
    if (!(l->f = fopen(path, append ? "a" : "w")))
        return kv_fail(err, KV_EIO, "%s: cannot open for writing", path);
    return 0;
}

int distill_log_append(distill_log *l, const distill_log_entry *e, kv_error *err) {
    fprintf(l->f,
            "{\"step\": %ld, \"loss\": %.9g, \"kl\": %.9g, \"mse\": %.9g, \"ce\": %.9g, "
            "\"lr\": %.9g, \"grad_norm\": %.9g, \"tokens\": %ld, \"seconds\": %.3f}\n",
            e->step, e->loss, e->kl, e->mse, e->ce, e->lr, e->grad_norm, e->tokens, e->seconds);
    if (fflush(l->f)) return kv_fail(err, KV_EIO, "%s: write failed", l->path);
    return 0;
}

int distill_log_close(distill_log *l, kv_error *err) {
    if (!l->f) return 0;
    const int bad = fclose(l->f) != 0;
    l->f = NULL;
    return bad ? kv_fail(err, KV_EIO, "%s: write failed", l->path) : 0;
}

int distill_log_trim(const char *path, long step, kv_error *err) {
    if (!kv_path_exists(path)) return 0;
    char *text = NULL;
    size_t len = 0;
    int rc = kv_read_file(path, &text, &len, (size_t)1 << 32, err);
    if (rc) return rc;
    rc = kv_write_file_atomic(path, text, distill_log_keep(text, step), err);
    free(text);
    return rc;
}
