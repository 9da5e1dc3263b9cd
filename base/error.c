#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int kv_fail(kv_error *err, int code, const char *fmt, ...) {
    if (!err) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

int kv_wrap(kv_error *err, const char *fmt, ...) {
    if (!err) return KV_EINVAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t n_prefix = strlen(prefix), cap = sizeof err->msg;
    if (n_prefix + 2 >= cap) n_prefix = cap - 3;
    memcpy(err->msg, prefix, n_prefix);
    memcpy(err->msg + n_prefix, ": ", 2);
    size_t n_old = strnlen(old, sizeof old - 1);
    if (n_prefix + 2 + n_old >= cap) n_old = cap - n_prefix - 3;
    memcpy(err->msg + n_prefix + 2, old, n_old);
    err->msg[n_prefix + 2 + n_old] = 0;
    return err->code;
}

const char *kv_code_name(int code) {
    switch (code) {
    case KV_OK: return "ok";
    case KV_EIO: return "io";
    case KV_EFORMAT: return "format";
    case KV_EINVAL: return "invalid";
    case KV_ENOMEM: return "nomem";
    case KV_ECHECKSUM: return "checksum";
    case KV_EUNSUPPORTED: return "unsupported";
    case KV_EMISMATCH: return "mismatch";
    default: return "unknown";
    }
}

void kv_error_replace_dir(kv_error *err, const char *from_dir, const char *to_dir) {
    char from[4352], to[4352];
    snprintf(from, sizeof from, "%s/", from_dir);
    snprintf(to, sizeof to, "%s/", to_dir);
    kv_error_replace(err, from, to);
}

void kv_error_replace(kv_error *err, const char *from, const char *to) {
    if (!err || !from || !*from || !to) return;
    char out[sizeof err->msg];
    size_t n = 0, nf = strlen(from), nt = strlen(to);
    const char *p = err->msg;
    while (*p && n + 1 < sizeof out) {
        if (strncmp(p, from, nf) == 0) {
            size_t k = nt < sizeof out - 1 - n ? nt : sizeof out - 1 - n;
            memcpy(out + n, to, k);
            n += k;
            p += nf;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = 0;
    memcpy(err->msg, out, n + 1);
}
