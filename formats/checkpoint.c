/* A checkpoint directory: model.safetensors, or model.safetensors.index.json + shards, or a
 * lone *.safetensors file; and the sharded writer. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/safetensors.h"

#define INDEX_NAME "model.safetensors.index.json"
#define INDEX_MAX_BYTES (256u << 20)

static int cmp_tensor_ptr(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

void st_checkpoint_close(st_checkpoint *c) {
    for (int i = 0; i < c->n_files; i++) st_close(&c->files[i]);
    free(c->files);
    free(c->tensors);
    free(c->dir);
    memset(c, 0, sizeof *c);
}

const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name) {
    st_tensor key = {.name = (char *)name};
    const st_tensor *kp = &key;
    const st_tensor **hit = bsearch(&kp, c->tensors, (size_t)c->n_tensors, sizeof *c->tensors, cmp_tensor_ptr);
    return hit ? *hit : NULL;
}

static int shard_name_ok(const char *s) {
    if (!*s || strstr(s, "..") || strchr(s, '/') || strchr(s, '\\')) return 0;
    size_t n = strlen(s);
    return n > 12 && strcmp(s + n - 12, ".safetensors") == 0;
}

/* fills c->tensors from all files, sorted; duplicates across files are an error */
static int gather_tensors(st_checkpoint *c, kv_error *err) {
    size_t total = 0;
    for (int i = 0; i < c->n_files; i++) total += (size_t)c->files[i].n_tensors;
    c->tensors = malloc((total + 1) * sizeof *c->tensors);
    if (!c->tensors) return kv_fail(err, KV_ENOMEM, "%s: out of memory", c->dir);
    for (int i = 0; i < c->n_files; i++)
        for (int j = 0; j < c->files[i].n_tensors; j++) {
            c->files[i].tensors[j].file_index = i;
            c->tensors[c->n_tensors++] = &c->files[i].tensors[j];
        }
    qsort(c->tensors, (size_t)c->n_tensors, sizeof *c->tensors, cmp_tensor_ptr);
    for (int i = 1; i < c->n_tensors; i++)
        if (strcmp(c->tensors[i - 1]->name, c->tensors[i]->name) == 0)
            return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' appears in both %s and %s", c->dir, c->tensors[i]->name,
                           c->files[c->tensors[i - 1]->file_index].path, c->files[c->tensors[i]->file_index].path);
    return 0;
}

static int open_index(st_checkpoint *c, const char *index_path, kv_error *err) {
    char *text;
    int rc = kv_read_file(index_path, &text, NULL, INDEX_MAX_BYTES, err);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(root)) rc = kv_fail(err, KV_EFORMAT, "%s: not a JSON object", index_path);
    else if (!cJSON_IsObject(map)) rc = kv_fail(err, KV_EFORMAT, "%s: missing or non-object 'weight_map'", index_path);
    char **names = NULL;
    int n_names = 0;
    const cJSON *e;
    if (!rc) {
        names = calloc((size_t)cJSON_GetArraySize(map) + 1, sizeof *names);
        if (!names) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", index_path);
    }
    if (!rc) cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            rc = kv_fail(err, KV_EFORMAT, "%s: weight_map['%s'] is not a plain *.safetensors file name", index_path, e->string);
            break;
        }
        int k = 0;
        while (k < n_names && strcmp(names[k], e->valuestring) != 0) k++;
        if (k == n_names) names[n_names++] = e->valuestring;
    }
    /* shards opened in name order so the result does not depend on JSON order */
    for (int i = 1; i < n_names; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) { char *t = names[j]; names[j] = names[j - 1]; names[j - 1] = t; }
    if (!rc && n_names == 0) rc = kv_fail(err, KV_EFORMAT, "%s: weight_map is empty", index_path);
    if (!rc && !(c->files = calloc((size_t)n_names, sizeof *c->files))) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", index_path);
    for (int i = 0; i < n_names && !rc; i++) {
        char path[4096];
        rc = kv_join(path, sizeof path, c->dir, names[i], err);
        if (!rc) rc = st_open(&c->files[i], path, err);
        if (!rc) c->n_files++;
    }
    if (!rc) rc = gather_tensors(c, err);
    /* every listed tensor is in the shard the index names, and nothing else is anywhere */
    if (!rc) cJSON_ArrayForEach(e, map) {
        const st_tensor *t = st_checkpoint_find(c, e->string);
        if (!t) { rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is listed in weight_map but missing from %s", index_path, e->string, e->valuestring); break; }
        const char *file = strrchr(c->files[t->file_index].path, '/');
        if (strcmp(file ? file + 1 : c->files[t->file_index].path, e->valuestring) != 0) {
            rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is listed in %s but stored in %s", index_path, e->string, e->valuestring, c->files[t->file_index].path);
            break;
        }
    }
    if (!rc && c->n_tensors != cJSON_GetArraySize(map))
        for (int i = 0; i < c->n_tensors; i++)
            if (!cJSON_GetObjectItemCaseSensitive(map, c->tensors[i]->name)) {
                rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' in %s is not listed in weight_map", index_path, c->tensors[i]->name, c->files[c->tensors[i]->file_index].path);
                break;
            }
    if (!rc && c->n_tensors != cJSON_GetArraySize(map))
        rc = kv_fail(err, KV_EFORMAT, "%s: weight_map lists a tensor twice", index_path);
    free(names);
    cJSON_Delete(root);
    c->sharded = 1;
    return rc;
}

int st_checkpoint_open(st_checkpoint *c, const char *dir, kv_error *err) {
    memset(c, 0, sizeof *c);
    c->dir = strdup(dir);
    if (!c->dir) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    char path[4096];
    int rc = kv_join(path, sizeof path, dir, INDEX_NAME, err);
    if (!rc && kv_path_exists(path)) {
        rc = open_index(c, path, err);
    } else if (!rc) {
        rc = kv_join(path, sizeof path, dir, "model.safetensors", err);
        if (!rc && !kv_path_exists(path)) { /* a lone *.safetensors file */
            DIR *d = opendir(dir);
            int found = 0;
            struct dirent *e;
            while (d && (e = readdir(d)))
                if (shard_name_ok(e->d_name)) {
                    if (found++) break;
                    rc = kv_join(path, sizeof path, dir, e->d_name, err);
                }
            if (d) closedir(d);
            if (!d) rc = kv_fail(err, KV_EIO, "%s: cannot open directory", dir);
            else if (found == 0) rc = kv_fail(err, KV_EIO, "%s: no model.safetensors or %s", dir, INDEX_NAME);
            else if (found > 1) rc = kv_fail(err, KV_EFORMAT, "%s: several .safetensors files but no %s", dir, INDEX_NAME);
        }
        if (!rc && !(c->files = calloc(1, sizeof *c->files))) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
        if (!rc) rc = st_open(&c->files[0], path, err);
        if (!rc) c->n_files = 1;
        if (!rc) rc = gather_tensors(c, err);
    }
    if (rc) st_checkpoint_close(c);
    return rc;
}

/* ---- sharded writer ---- */

static int cmp_index_by_name(const void *a, const void *b, void *specs) {
    const st_spec *s = specs;
    return strcmp(s[*(const int *)a].name, s[*(const int *)b].name);
}

static int write_shard(const char *path, const st_spec *specs, const int *order, int n, unsigned flags,
                       long data_residue, const char *const *meta_kv, int n_meta, st_fill_fn fill, void *ctx, kv_error *err) {
    st_spec *subset = calloc((size_t)n + 1, sizeof *subset);
    if (!subset) return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) subset[i] = specs[order[i]];
    st_writer *w;
    int rc = st_writer_open_aligned(&w, path, subset, n, meta_kv, n_meta, data_residue, err);
    free(subset);
    if (rc) return rc;
    st_writer_set_durable(w, !(flags & ST_WRITE_NO_SYNC));
    for (int i = 0; i < n && !rc; i++) rc = fill(ctx, order[i], w, err);
    if (rc) { st_writer_abort(w); return rc; }
    return st_writer_finish(w, err);
}

int st_write_checkpoint(const char *dir, const st_spec *specs, int n, size_t shard_bytes,
                        const char *const *meta_kv, int n_meta, st_fill_fn fill, void *ctx, kv_error *err) {
    return st_write_checkpoint_ex(dir, specs, n, shard_bytes, 0, -1, meta_kv, n_meta, fill, ctx, err);
}

int st_write_checkpoint_ex(const char *dir, const st_spec *specs, int n, size_t shard_bytes, unsigned flags,
                           long data_residue, const char *const *meta_kv, int n_meta, st_fill_fn fill, void *ctx,
                           kv_error *err) {
    int *order = malloc(((size_t)n + 1) * sizeof *order), *shard_of = malloc(((size_t)n + 1) * sizeof *shard_of);
    if (!order || !shard_of) { free(order); free(shard_of); return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir); }
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_index_by_name, (void *)specs);
    int n_shards = 1, rc = 0;
    size_t in_shard = 0, total = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = st_spec_bytes(&specs[order[i]]);
        if (bytes == SIZE_MAX) { rc = kv_fail(err, KV_EINVAL, "%s: tensor '%s': bad dtype, rank or shape", dir, specs[order[i]].name); break; }
        if (shard_bytes && in_shard > 0 && in_shard + bytes > shard_bytes) { n_shards++; in_shard = 0; }
        in_shard += bytes;
        total += bytes;
        shard_of[i] = n_shards - 1;
    }
    char path[4096], name[64];
    if (!rc && (shard_bytes == 0 || n_shards == 1) ) {
        rc = kv_join(path, sizeof path, dir, "model.safetensors", err);
        if (!rc) rc = write_shard(path, specs, order, n, flags, data_residue, meta_kv, n_meta, fill, ctx, err);
    } else if (!rc) {
        cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
        for (int s = 0, first = 0; s < n_shards && !rc; s++) {
            int count = 0;
            while (first + count < n && shard_of[first + count] == s) count++;
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
            rc = kv_join(path, sizeof path, dir, name, err);
            if (!rc) rc = write_shard(path, specs, order + first, count, flags, data_residue, meta_kv, n_meta, fill, ctx, err);
            for (int i = first; i < first + count; i++) cJSON_AddStringToObject(map, specs[order[i]].name, name);
            first += count;
        }
        char *text = rc ? NULL : cJSON_Print(root);
        if (!rc && !text) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
        if (!rc) rc = kv_join(path, sizeof path, dir, INDEX_NAME, err);
        if (!rc) rc = kv_write_file_atomic(path, text, strlen(text), err);
        free(text);
        cJSON_Delete(root);
    }
    free(order);
    free(shard_of);
    return rc;
}
