/* safetensors reader: every field validated once, at the door (see safetensors.h) */
#include "formats/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->n_bytes < y->n_bytes ? -1 : x->n_bytes > y->n_bytes;
}

/* metadata entries by key, ties by position (a stable order: the first of a repeated key first) */
static int cmp_meta_index(const void *a, const void *b, void *ctx) {
    char *const *keys = ctx;
    int x = *(const int *)a, y = *(const int *)b, c = strcmp(keys[x], keys[y]);
    return c ? c : (x > y) - (x < y);
}

/* a JSON number that is a whole, non-negative value below 2^53 */
static int json_whole(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static void free_tensors(st_file *f) {
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    f->tensors = NULL;
    f->meta_keys = f->meta_values = NULL;
    f->n_tensors = f->n_meta = 0;
}

static int parse_metadata(st_file *f, const cJSON *meta, const char *label, kv_error *err) {
    if (!cJSON_IsObject(meta))
        return kv_fail(err, KV_EFORMAT, "%s: __metadata__ is not an object", label);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_values = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values)
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    const cJSON *e;
    cJSON_ArrayForEach(e, meta) {
        if (!cJSON_IsString(e))
            return kv_fail(err, KV_EFORMAT, "%s: __metadata__ value of '%s' is not a string", label,
                           e->string);
        f->meta_keys[f->n_meta] = strdup(e->string);
        f->meta_values[f->n_meta] = strdup(e->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1])
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    }
    /* sorted by key for deterministic iteration; a repeated key
     * then sits next to itself (sort once and scan: linear-logarithmic, never quadratic) */
    int *order = malloc(((size_t)f->n_meta + 1) * sizeof *order);
    char **keys = malloc(((size_t)f->n_meta + 1) * sizeof *keys),
         **values = malloc(((size_t)f->n_meta + 1) * sizeof *values);
    if (!order || !keys || !values) {
        free(order), free(keys), free(values);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    }
    for (int i = 0; i < f->n_meta; i++) order[i] = i;
    qsort_r(order, (size_t)f->n_meta, sizeof *order, cmp_meta_index, f->meta_keys);
    for (int i = 0; i < f->n_meta; i++)
        keys[i] = f->meta_keys[order[i]], values[i] = f->meta_values[order[i]];
    free(order);
    free(f->meta_keys);
    free(f->meta_values);
    f->meta_keys = keys;
    f->meta_values = values;
    for (int i = 1; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i - 1], f->meta_keys[i]) == 0)
            return kv_fail(err, KV_EFORMAT, "%s: __metadata__ key '%s' appears twice", label,
                           f->meta_keys[i]);
    return 0;
}

static int parse_tensor(st_tensor *t, const cJSON *e, const char *label, kv_error *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': entry is not an object", label, name);
    if (name[0] == 0) return kv_fail(err, KV_EFORMAT, "%s: tensor with an empty name", label);
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *field;
    cJSON_ArrayForEach(field, e) {
        if (strcmp(field->string, "dtype") == 0 && !dtype) dtype = field;
        else if (strcmp(field->string, "shape") == 0 && !shape) shape = field;
        else if (strcmp(field->string, "data_offsets") == 0 && !offsets) offsets = field;
        else
            return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': unexpected or repeated field '%s'",
                           label, name, field->string);
    }
    if (!cJSON_IsString(dtype))
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': missing or non-string 'dtype'", label,
                       name);
    if (kv_dtype_parse(dtype->valuestring, &t->dtype) != 0)
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", label, name,
                       dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': missing or non-array 'shape'", label,
                       name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS)
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': %d dimensions, at most %d", label, name,
                       n_dims, ST_MAX_DIMS);
    t->n_dims = n_dims;
    size_t n_elements = 1;
    for (int d = 0; d < n_dims; d++) {
        uint64_t dim;
        if (json_whole(cJSON_GetArrayItem(shape, d), &dim) != 0)
            return kv_fail(err, KV_EFORMAT,
                           "%s: tensor '%s': shape[%d] is not a non-negative integer", label, name,
                           d);
        t->shape[d] = (int64_t)dim;
        if (__builtin_mul_overflow(n_elements, (size_t)dim, &n_elements))
            return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': shape overflows", label, name);
    }
    t->n_elements = n_elements;
    if (__builtin_mul_overflow(n_elements, kv_dtype_size(t->dtype), &t->n_bytes))
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': byte size overflows", label, name);
    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return kv_fail(err, KV_EFORMAT,
                       "%s: tensor '%s': 'data_offsets' must be an array of two integers", label,
                       name);
    if (json_whole(cJSON_GetArrayItem(offsets, 0), &begin) ||
        json_whole(cJSON_GetArrayItem(offsets, 1), &end))
        return kv_fail(err, KV_EFORMAT,
                       "%s: tensor '%s': data_offsets are not non-negative integers", label, name);
    if (end < begin)
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': data_offsets end %llu before begin %llu",
                       label, name, (unsigned long long)end, (unsigned long long)begin);
    if (end - begin != t->n_bytes)
        return kv_fail(
            err, KV_EFORMAT,
            "%s: tensor '%s': data_offsets span %llu bytes but %s x %zu elements needs %zu", label,
            name, (unsigned long long)(end - begin), kv_dtype_name(t->dtype), n_elements,
            t->n_bytes);
    t->offset = (size_t)begin;
    t->name = strdup(name);
    if (!t->name) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    return 0;
}

/* offsets must tile [0, data_size) exactly: contiguous, no overlap, no hole */
static int check_layout(st_file *f, const char *label, kv_error *err) {
    st_tensor **order = malloc(((size_t)f->n_tensors + 1) * sizeof *order);
    if (!order) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    for (int i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_tensor_offset);
    size_t pos = 0;
    int rc = 0;
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        st_tensor *t = order[i];
        if (t->offset < pos)
            rc = kv_fail(err, KV_EFORMAT,
                         "%s: tensor '%s': data_offsets [%zu, %zu) overlap the previous tensor "
                         "(ends at %zu)",
                         label, t->name, t->offset, t->offset + t->n_bytes, pos);
        else if (t->offset > pos)
            rc = kv_fail(err, KV_EFORMAT,
                         "%s: tensor '%s': hole of %zu bytes before its data_offsets [%zu, %zu)",
                         label, t->name, t->offset - pos, t->offset, t->offset + t->n_bytes);
        pos = t->offset + t->n_bytes;
    }
    if (!rc && pos != f->data_size)
        rc = kv_fail(err, KV_EFORMAT, "%s: tensors cover %zu bytes but the data buffer holds %zu%s",
                     label, pos, f->data_size,
                     pos > f->data_size ? " (file truncated?)" : " (trailing bytes)");
    free(order);
    return rc;
}

int st_parse(st_file *f, const void *buf, size_t size, const char *label, kv_error *err) {
    memset(f, 0, sizeof *f);
    if (!label) label = ST_MEMORY_LABEL;
    const uint8_t *bytes = buf;
    if (size < 8)
        return kv_fail(err, KV_EFORMAT, "%s: %zu bytes, too short for the 8-byte header length",
                       label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
    if (n > ST_MAX_HEADER)
        return kv_fail(err, KV_EFORMAT, "%s: header length %llu exceeds the 100 MB limit", label,
                       (unsigned long long)n);
    if (n > size - 8)
        return kv_fail(err, KV_EFORMAT,
                       "%s: header length %llu runs past the end of the file (%zu bytes)", label,
                       (unsigned long long)n, size);
    if (n < 2 || bytes[8] != '{')
        return kv_fail(err, KV_EFORMAT, "%s: header is not a JSON object", label);
    const char *json = (const char *)bytes + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)n, &end, 0);
    if (!root)
        return kv_fail(err, KV_EFORMAT, "%s: header is not valid JSON (near byte %td)", label,
                       cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - json : (ptrdiff_t)0);
    int rc = 0;
    for (const char *p = end; p < json + n; p++)
        if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != 0) {
            rc = kv_fail(err, KV_EFORMAT, "%s: trailing bytes after the header JSON", label);
            break;
        }
    if (!rc && !cJSON_IsObject(root))
        rc = kv_fail(err, KV_EFORMAT, "%s: header is not a JSON object", label);
    f->header_len = (size_t)n;
    f->data = bytes + 8 + n;
    f->data_size = size - 8 - (size_t)n;
    int n_entries = rc ? 0 : cJSON_GetArraySize(root);
    if (!rc && !(f->tensors = calloc((size_t)n_entries + 1, sizeof *f->tensors)))
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    const cJSON *e;
    int seen_meta = 0;
    if (!rc) cJSON_ArrayForEach(e, root) {
            if (strcmp(e->string, "__metadata__") == 0) {
                if (seen_meta++)
                    rc = kv_fail(err, KV_EFORMAT, "%s: __metadata__ appears twice", label);
                else rc = parse_metadata(f, e, label, err);
            } else {
                rc = parse_tensor(&f->tensors[f->n_tensors], e, label, err);
                if (!rc) f->n_tensors++;
            }
            if (rc) break;
        }
    cJSON_Delete(root);
    if (!rc) {
        qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
        for (int i = 1; i < f->n_tensors && !rc; i++)
            if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
                rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' appears twice", label,
                             f->tensors[i].name);
    }
    if (!rc) rc = check_layout(f, label, err);
    /* path: the label, so that whoever names the file (errors, llama_view) has a string */
    if (!rc && !(f->path = strdup(label))) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    if (rc) {
        free_tensors(f);
        return rc;
    }
    for (int i = 0; i < f->n_tensors; i++) f->tensors[i].data = f->data + f->tensors[i].offset;
    return 0;
}

int st_open(st_file *f, const char *path, kv_error *err) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_fail(err, KV_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kv_fail(err, KV_EIO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return kv_fail(err, KV_EIO, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    static const uint8_t empty[1];
    int rc = st_parse(f, map ? map : empty, size, path, err); /* sets f->path */
    if (rc) {
        if (map) munmap(map, size);
        return rc;
    }
    f->map = map;
    f->map_size = size;
    return 0;
}

void st_close(st_file *f) {
    free_tensors(f);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

size_t st_spec_bytes(const st_spec *s) {
    size_t n = kv_dtype_size(s->dtype);
    if (s->n_dims < 0 || s->n_dims > ST_MAX_DIMS || n == 0) return SIZE_MAX;
    for (int d = 0; d < s->n_dims; d++)
        if (s->shape[d] < 0 || __builtin_mul_overflow(n, (size_t)s->shape[d], &n)) return SIZE_MAX;
    return n;
}
