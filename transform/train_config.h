/* config.json for the distillation tools: read into hf_config, and the config text of a student
 * written in memory (calibration candidates, test students).
 * kvt_config_load stands in for formats/hfconfig.c's hf_config_load until that lands on main;
 * it reads the fields the trainer needs and validates them. */
#ifndef KV_TRAIN_CONFIG_H
#define KV_TRAIN_CONFIG_H

#include "formats/error.h"
#include "formats/hfconfig.h"
#include "transform/kvmap.h"

/* path to config.json */
int kvt_config_load(hf_config *c, const char *path, kv_error *err);
int kvt_config_parse(hf_config *c, const char *json, const char *label, kv_error *err);

/* src_json (a teacher's config.json text) with the KV fields of `map` written in (layer_types
 * for a cross-layer map; swiftkv, num_key_value_layers, key_value_group_size, model_type and
 * architectures for SwiftKV). *out is malloc'd. */
int kvt_config_student_json(const char *src_json, const kv_map *map, char **out, kv_error *err);

#endif
