/* Reading back a kvdistill run's resume state (distill_state.h). */
#include "transform/train/distill_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int meta_long(const st_file *f, const char *key, long *out, kv_error *err) {
    const char *v = st_meta(f, key);
    char *end;
    if (!v || (*out = strtol(v, &end, 10), *end) || *out < 0)
        return kv_fail(err, KV_EFORMAT, "%s: metadata '%s' missing or bad", f->path, key);
    return 0;
}

int distill_state_read(const st_file *f, const char *fingerprint, long total_steps,
                       distill_state *out, kv_error *err) {
    const char *fmt = st_meta(f, "format"), *fp = st_meta(f, "fingerprint"),
               *secs = st_meta(f, "seconds");
    int rc;
    memset(out, 0, sizeof *out);
    if (!fmt || strcmp(fmt, DISTILL_STATE_FORMAT))
        return kv_fail(err, KV_EFORMAT, "%s: not a kvdistill checkpoint", f->path);
    if (!fp || strcmp(fp, fingerprint))
        return kv_fail(err, KV_EINVAL,
                       "%s: made with other options, data or student; resume with "
                       "the same command line as the interrupted run",
                       f->path);
    if ((rc = meta_long(f, "step", &out->step, err)) ||
        (rc = meta_long(f, "tokens_trained", &out->tokens_trained, err)))
        return rc;
    if (out->step > total_steps)
        return kv_fail(err, KV_EFORMAT, "%s: step %ld beyond %ld", f->path, out->step, total_steps);
    out->seconds = secs ? atof(secs) : 0;
    return 0;
}

const st_tensor *distill_state_tensor(const st_file *f, const char *kind, const char *name,
                                      size_t n) {
    char full[1024];
    int len = snprintf(full, sizeof full, "%s%s", kind, name);
    if (len < 0 || (size_t)len >= sizeof full) return NULL;
    const st_tensor *t = st_find(f, full);
    return t && t->dtype == KV_F32 && t->n_elements == n ? t : NULL;
}

size_t distill_log_keep(const char *text, long step) {
    size_t keep = 0;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        if (!nl) break; /* a torn last line goes */
        /* what sscanf(line, "{\"step\": %ld") accepts, without sscanf: glibc's takes the
         * strlen of the rest of the text on every call, quadratic over a long log */
        static const char prefix[] = "{\"step\":";
        if (strncmp(line, prefix, sizeof prefix - 1)) break;
        char *end;
        long s =
            strtol(line + sizeof prefix - 1, &end, 10); /* skips white space, as the format's ' ' */
        if (end == line + sizeof prefix - 1 || s > step) break;
        keep = (size_t)(nl + 1 - text);
        line = nl + 1;
    }
    return keep;
}
