/* A student built in memory from a teacher and a KV map, initialised as METHODS.md says
 * (s1 "Converting a pretrained model", s2 "Initialisation"). For calibration's zero-shot
 * candidates and for tests; kvconvert writes the same students to disk.
 *   cross layer: k/v_proj (and biases) of non-KV layers dropped; a KV layer read by others gets
 *                the mean of its readers' k/v_proj (itself included), or keeps its own (target);
 *   SwiftKV:     norm_swiftkv = layers[l].input_layernorm; q_proj_swiftkv = q_proj;
 *                k/v_proj_swiftkv of a group leader = mean of the group's k/v_proj; the
 *                teacher's q/k/v of layers >= l kept (hf-swiftkv layout) or dropped
 *                (deploy; what distill_student_init builds: in memory they are unused).
 * Unchanged tensors are shared with the teacher (the teacher must outlive the student). */
#ifndef KV_DISTILL_INIT_H
#define KV_DISTILL_INIT_H

#include "formats/kvmap.h"
#include "transform/train/train_model.h"

typedef enum { DISTILL_INIT_MEAN = 0, DISTILL_INIT_TARGET = 1 } distill_init_mode;

/* teacher: an original model (identity map); map: cross-layer or SwiftKV with teacher->dims.n_layers layers */
int distill_student_init(kvt_model *student, const kvt_model *teacher, const kv_map *map,
                         distill_init_mode mode, kv_error *err);
/* the same with the SwiftKV layout chosen (formats/kvmap.h), for students written to disk */
int distill_student_init_layout(kvt_model *student, const kvt_model *teacher, const kv_map *map,
                                distill_init_mode mode, kv_swiftkv_layout layout, kv_error *err);

#endif
