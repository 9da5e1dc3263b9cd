/* A checkpoint directory: model.safetensors, or model.safetensors.index.json + shards, or a
 * lone *.safetensors file; and the sharded writer. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/safetensors.h"

#define INDEX_NAME      "model.safetensors.index.json"
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
    const st_tensor **hit =
        bsearch(&kp, c->tensors, (size_t)c->n_tensors, sizeof *c->tensors, cmp_tensor_ptr);
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
            return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' appears in both %s and %s", c->dir,
                           c->tensors[i]->name, c->files[c->tensors[i - 1]->file_index].path,
                           c->files[c->tensors[i]->file_index].path);
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const st_index_entry *)a)->tensor, ((const st_index_entry *)b)->tensor);
}

void st_index_free(st_index *ix) {
    for (int i = 0; i < ix->n_entries; i++) free(ix->entries[i].tensor);
    free(ix->entries);
    for (int i = 0; i < ix->n_shards; i++) free(ix->shards[i]);
    free(ix->shards);
    memset(ix, 0, sizeof *ix);
}

/* Every step is a sort or a linear scan (no pairwise comparisons): an index of n entries costs
 * O(n log n) however its names repeat. */
int st_index_parse(st_index *ix, const char *json, size_t len, const char *label, kv_error *err) {
    memset(ix, 0, sizeof *ix);
    if (!label) label = INDEX_NAME;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL, *e;
    int rc = 0, n = 0;
    char **names = NULL; /* shard names of the entries, borrowed from the tree, then sorted */
    if (!root) rc = kv_fail(err, KV_EFORMAT, "%s: not valid JSON", label);
    else if (!cJSON_IsObject(root)) rc = kv_fail(err, KV_EFORMAT, "%s: not a JSON object", label);
    else if (!cJSON_IsObject(map))
        rc = kv_fail(err, KV_EFORMAT, "%s: missing or non-object 'weight_map'", label);
    if (!rc) {
        n = cJSON_GetArraySize(map);
        ix->entries = calloc((size_t)n + 1, sizeof *ix->entries);
        names = calloc((size_t)n + 1, sizeof *names);
        if (!ix->entries || !names) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    }
    if (!rc) cJSON_ArrayForEach(e, map) {
            if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
                rc = kv_fail(err, KV_EFORMAT,
                             "%s: weight_map['%s'] is not a plain *.safetensors file name", label,
                             e->string);
                break;
            }
            if (!(ix->entries[ix->n_entries].tensor = strdup(e->string))) {
                rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
                break;
            }
            names[ix->n_entries++] = e->valuestring;
        }
    if (!rc && ix->n_entries == 0) rc = kv_fail(err, KV_EFORMAT, "%s: weight_map is empty", label);
    /* the distinct shard names, sorted: the shards are opened in name order, so the result does
     * not depend on JSON order */
    if (!rc) {
        qsort(names, (size_t)ix->n_entries, sizeof *names, cmp_str_ptr);
        ix->shards = calloc((size_t)ix->n_entries + 1, sizeof *ix->shards);
        if (!ix->shards) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
        for (int i = 0; i < ix->n_entries && !rc; i++) {
            if (i > 0 && strcmp(names[i - 1], names[i]) == 0) continue;
            if (!(ix->shards[ix->n_shards] = strdup(names[i])))
                rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
            else ix->n_shards++;
        }
    }
    /* each entry's shard by binary search among the distinct names (entries still in JSON order) */
    if (!rc) {
        int i = 0;
        cJSON_ArrayForEach(e, map) {
            char *const *hit = bsearch(&e->valuestring, ix->shards, (size_t)ix->n_shards,
                                       sizeof *ix->shards, cmp_str_ptr);
            ix->entries[i++].shard =
                (int)(hit - ix->shards); /* always found: it was collected above */
        }
        qsort(ix->entries, (size_t)ix->n_entries, sizeof *ix->entries, cmp_entry);
        for (i = 1; i < ix->n_entries && !rc; i++)
            if (strcmp(ix->entries[i - 1].tensor, ix->entries[i].tensor) == 0)
                rc = kv_fail(err, KV_EFORMAT, "%s: weight_map lists a tensor twice ('%s')", label,
                             ix->entries[i].tensor);
    }
    free(names);
    cJSON_Delete(root);
    if (rc) st_index_free(ix);
    return rc;
}

static int open_index(st_checkpoint *c, const char *index_path, kv_error *err) {
    char *text;
    size_t len;
    st_index ix;
    int rc = kv_read_file(index_path, &text, &len, INDEX_MAX_BYTES, err);
    if (rc) return rc;
    rc = st_index_parse(&ix, text, len, index_path, err);
    free(text);
    if (rc) return rc;
    c->sharded = 1;
    if (!(c->files = calloc((size_t)ix.n_shards, sizeof *c->files)))
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", index_path);
    for (int i = 0; i < ix.n_shards && !rc; i++) {
        char path[4096];
        rc = kv_join(path, sizeof path, c->dir, ix.shards[i], err);
        if (!rc) rc = st_open(&c->files[i], path, err); /* files[i] is shard i */
        if (!rc) c->n_files++;
    }
    if (!rc) rc = gather_tensors(c, err);
    /* every listed tensor is in the shard the index names, and nothing else is anywhere: both
     * lists are sorted by name, so one merge-like walk per check */
    for (int i = 0, j = 0; i < ix.n_entries && !rc; i++) {
        const st_index_entry *x = &ix.entries[i];
        int cmp = -1;
        while (j < c->n_tensors && (cmp = strcmp(c->tensors[j]->name, x->tensor)) < 0) j++;
        if (j == c->n_tensors || cmp != 0)
            rc = kv_fail(err, KV_EFORMAT,
                         "%s: tensor '%s' is listed in weight_map but missing from %s", index_path,
                         x->tensor, ix.shards[x->shard]);
        else if (c->tensors[j]->file_index != x->shard)
            rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is listed in %s but stored in %s",
                         index_path, x->tensor, ix.shards[x->shard],
                         c->files[c->tensors[j]->file_index].path);
    }
    for (int i = 0, j = 0; i < c->n_tensors && !rc && c->n_tensors != ix.n_entries; i++) {
        int cmp = -1;
        while (j < ix.n_entries && (cmp = strcmp(ix.entries[j].tensor, c->tensors[i]->name)) < 0)
            j++;
        if (j == ix.n_entries || cmp != 0)
            rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s' in %s is not listed in weight_map",
                         index_path, c->tensors[i]->name, c->files[c->tensors[i]->file_index].path);
    }
    st_index_free(&ix);
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
            else if (found == 0)
                rc = kv_fail(err, KV_EIO, "%s: no model.safetensors or %s", dir, INDEX_NAME);
            else if (found > 1)
                rc = kv_fail(err, KV_EFORMAT, "%s: several .safetensors files but no %s", dir,
                             INDEX_NAME);
        }
        if (!rc && !(c->files = calloc(1, sizeof *c->files)))
            rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
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

static int write_shard(const char *path, const st_spec *specs, const int *order, int n,
                       unsigned flags, long data_residue, const char *const *meta_kv, int n_meta,
                       st_fill_fn fill, void *ctx, kv_error *err) {
    st_spec *subset = calloc((size_t)n + 1, sizeof *subset);
    if (!subset) return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) subset[i] = specs[order[i]];
    st_writer *w;
    int rc = st_writer_open_aligned(&w, path, subset, n, meta_kv, n_meta, data_residue, err);
    free(subset);
    if (rc) return rc;
    st_writer_set_durable(w, !(flags & ST_WRITE_NO_SYNC));
    for (int i = 0; i < n && !rc; i++) rc = fill(ctx, order[i], w, err);
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    return st_writer_finish(w, err);
}

int st_write_checkpoint(const char *dir, const st_spec *specs, int n, size_t shard_bytes,
                        const char *const *meta_kv, int n_meta, st_fill_fn fill, void *ctx,
                        kv_error *err) {
    return st_write_checkpoint_ex(dir, specs, n, shard_bytes, 0, -1, meta_kv, n_meta, fill, ctx,
                                  err);
}

int st_write_checkpoint_ex(const char *dir, const st_spec *specs, int n, size_t shard_bytes,
                           unsigned flags, long data_residue, const char *const *meta_kv,
                           int n_meta, st_fill_fn fill, void *ctx, kv_error *err) {
    int *order = malloc(((size_t)n + 1) * sizeof *order),
        *shard_of = malloc(((size_t)n + 1) * sizeof *shard_of);
    if (!order || !shard_of) {
        free(order);
        free(shard_of);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    }
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_index_by_name, (void *)specs);
    int n_shards = 1, rc = 0;
    size_t in_shard = 0, total = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = st_spec_bytes(&specs[order[i]]);
        if (bytes == SIZE_MAX) {
            rc = kv_fail(err, KV_EINVAL, "%s: tensor '%s': bad dtype, rank or shape", dir,
                         specs[order[i]].name);
            break;
        }
        if (shard_bytes && in_shard > 0 && in_shard + bytes > shard_bytes) {
            n_shards++;
            in_shard = 0;
        }
        in_shard += bytes;
        total += bytes;
        shard_of[i] = n_shards - 1;
    }
    char path[4096], name[64];
    if (!rc && (shard_bytes == 0 || n_shards == 1)) {
        rc = kv_join(path, sizeof path, dir, "model.safetensors", err);
        if (!rc)
            rc = write_shard(path, specs, order, n, flags, data_residue, meta_kv, n_meta, fill, ctx,
                             err);
    } else if (!rc) {
        cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
        for (int s = 0, first = 0; s < n_shards && !rc; s++) {
            int count = 0;
            while (first + count < n && shard_of[first + count] == s) count++;
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
            rc = kv_join(path, sizeof path, dir, name, err);
            if (!rc)
                rc = write_shard(path, specs, order + first, count, flags, data_residue, meta_kv,
                                 n_meta, fill, ctx, err);
            for (int i = first; i < first + count; i++)
                cJSON_AddStringToObject(map, specs[order[i]].name, name);
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
