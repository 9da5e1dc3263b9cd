/* OUT_DIR/report.json of a distillation run, and the map name it shows. */
#ifndef KV_DISTILL_REPORT_H
#define KV_DISTILL_REPORT_H

#include <stddef.h>

#include "base/error.h"
#include "formats/kvmap.h"
#include "transform/train/distill.h"

/* a named configuration equal to the map ("pizza-bottom:3"), else the map's own name */
void distill_map_name(const kv_map *m, char *out, size_t cap);

/* rep with the run's options (o, warmup_steps) and the student's map and layer count, written
 * atomically to o->out_dir/report.json */
int distill_report_write(const distill_opts *o, long warmup_steps, const kv_map *map, int n_layers,
                         const distill_report *rep, kv_error *err);

#endif
