/* JSON field readers for config.json-like objects. */
#include "formats/json_field.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* NULL when absent or JSON null */
const cJSON *json_field(const cJSON *obj, const char *name) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    return (it && !cJSON_IsNull(it)) ? it : NULL;
}

const char *json_kind(const cJSON *it) {
    if (cJSON_IsBool(it)) return "a boolean";
    if (cJSON_IsNumber(it)) return "a number";
    if (cJSON_IsString(it)) return "a string";
    if (cJSON_IsArray(it)) return "a list";
    if (cJSON_IsObject(it)) return "an object";
    if (cJSON_IsNull(it)) return "null";
    return "invalid";
}

/* an integral JSON number within [lo, hi] */
int json_number_int(const cJSON *it, const char *label, const char *name, long lo, long hi,
                    int *out, kv_error *err) {
    if (!cJSON_IsNumber(it))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %s, expected an integer", label, name,
                       json_kind(it));
    double d = it->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %g, expected an integer", label, name,
                       d);
    if (d < (double)lo || d > (double)hi)
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %.17g, outside [%ld, %ld]", label, name,
                       d, lo, hi);
    *out = (int)d;
    return 0;
}

int json_get_int(const cJSON *obj, const char *label, const char *name, int required, int dflt,
                 long lo, long hi, int *out, kv_error *err) {
    const cJSON *it = json_field(obj, name);
    if (!it) {
        if (required) return kv_fail(err, KV_EFORMAT, "%s: missing field '%s'", label, name);
        *out = dflt;
        return 0;
    }
    return json_number_int(it, label, name, lo, hi, out, err);
}

/* a finite number > 0 */
int json_number_positive(const cJSON *it, const char *label, const char *name, double *out,
                         kv_error *err) {
    if (!cJSON_IsNumber(it))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %s, expected a number", label, name,
                       json_kind(it));
    if (!isfinite(it->valuedouble) || it->valuedouble <= 0)
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %g, expected a positive number", label,
                       name, it->valuedouble);
    *out = it->valuedouble;
    return 0;
}

int json_get_positive(const cJSON *obj, const char *label, const char *name, int required,
                      double dflt, double *out, kv_error *err) {
    const cJSON *it = json_field(obj, name);
    if (!it) {
        if (required) return kv_fail(err, KV_EFORMAT, "%s: missing field '%s'", label, name);
        *out = dflt;
        return 0;
    }
    return json_number_positive(it, label, name, out, err);
}

int json_get_bool(const cJSON *obj, const char *label, const char *name, int dflt, int *out,
                  kv_error *err) {
    const cJSON *it = json_field(obj, name);
    if (!it) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %s, expected true or false", label, name,
                       json_kind(it));
    *out = cJSON_IsTrue(it) ? 1 : 0;
    return 0;
}

/* a string that fits in cap (NUL included); NULL *out when absent */
int json_get_string(const cJSON *obj, const char *label, const char *name, size_t cap,
                    const char **out, kv_error *err) {
    const cJSON *it = json_field(obj, name);
    *out = NULL;
    if (!it) return 0;
    if (!cJSON_IsString(it))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %s, expected a string", label, name,
                       json_kind(it));
    if (strlen(it->valuestring) >= cap)
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is longer than %zu bytes", label, name,
                       cap - 1);
    *out = it->valuestring;
    return 0;
}

static int key_order(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int json_unique_keys(const cJSON *obj, const char *label, const char *where, kv_error *err) {
    size_t n = 0;
    for (const cJSON *a = obj->child; a; a = a->next) n += a->string != NULL;
    if (n < 2) return 0;
    /* sorted once, then neighbours compared: O(n log n) for objects of any size */
    const char **keys = malloc(n * sizeof *keys);
    if (!keys) return kv_fail(err, KV_ENOMEM, "%s: out of memory checking %skeys", label, where);
    n = 0;
    for (const cJSON *a = obj->child; a; a = a->next)
        if (a->string) keys[n++] = a->string;
    qsort(keys, n, sizeof *keys, key_order);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0)
            rc = kv_fail(err, KV_EFORMAT, "%s: %skey '%s' appears twice", label, where, keys[i]);
    free(keys);
    return rc;
}
