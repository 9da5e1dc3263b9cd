/* Reading the fields of a JSON object (config.json and the files beside it): every reader names
 * LABEL and the field on failure (KV_EFORMAT). JSON null counts as absent. */
#ifndef KV_JSON_FIELD_H
#define KV_JSON_FIELD_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "base/error.h"

/* obj[name]; NULL when absent or null */
const cJSON *json_field(const cJSON *obj, const char *name);
/* "a number", "a list", ... for messages */
const char *json_kind(const cJSON *it);
/* an integral number within [lo, hi] */
int json_number_int(const cJSON *it, const char *label, const char *name, long lo, long hi,
                    int *out, kv_error *err);
/* json_number_int of obj[name]; when absent: an error if required, else dflt */
int json_get_int(const cJSON *obj, const char *label, const char *name, int required, int dflt,
                 long lo, long hi, int *out, kv_error *err);
/* a finite number > 0 */
int json_number_positive(const cJSON *it, const char *label, const char *name, double *out,
                         kv_error *err);
int json_get_positive(const cJSON *obj, const char *label, const char *name, int required,
                      double dflt, double *out, kv_error *err);
/* true / false; dflt when absent */
int json_get_bool(const cJSON *obj, const char *label, const char *name, int dflt, int *out,
                  kv_error *err);
/* a string shorter than cap bytes; *out NULL when absent */
int json_get_string(const cJSON *obj, const char *label, const char *name, size_t cap,
                    const char **out, kv_error *err);
/* no key twice in obj (Python keeps the last, cJSON the first); WHERE prefixes the key */
int json_unique_keys(const cJSON *obj, const char *label, const char *where, kv_error *err);

#endif
