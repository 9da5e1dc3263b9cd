/* Errors are values: library code returns 0 or a negative KV_E* code and fills a kv_error
 * with one sentence naming the file, tensor or field. Only cli/ prints. */
#ifndef KV_ERROR_H
#define KV_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
    KV_OK = 0,
    KV_EIO = -1, /* open/read/write/rename failed */
    KV_EFORMAT = -2, /* malformed input file */
    KV_EINVAL = -3, /* bad argument or impossible request */
    KV_ENOMEM = -4, /* allocation failed or size overflow */
    KV_ECHECKSUM = -5, /* integrity check failed */
    KV_EUNSUPPORTED = -6, /* valid but not handled (architecture, dtype...) */
    KV_EMISMATCH = -7, /* parity check failed */
};

typedef struct {
    int code;
    char msg[1024];
} kv_error;

/* formats msg into err (if non-NULL) and returns code */
int kv_fail(kv_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* prefixes an existing message: "context: old message" */
int kv_wrap(kv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* replaces every "from" in err's message by "to" (a staging path by the final one); a result
 * longer than the message buffer is cut */
void kv_error_replace(kv_error *err, const char *from, const char *to);
/* the same for folder paths: "from_dir/" becomes "to_dir/" (a file in a staging folder is named
 * as it will be called) */
void kv_error_replace_dir(kv_error *err, const char *from_dir, const char *to_dir);
const char *kv_code_name(int code);

#ifdef __cplusplus
}
#endif

#endif
