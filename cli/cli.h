/* Shared by the tools in cli/: error printing, exit codes, progress bar, small parsers.
 * Only cli/ prints; library code returns kv_error values. */
#ifndef KV_CLI_H
#define KV_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"

#include "base/version.h"
#include "formats/kvmap.h"
#define KVFORGE_VERSION KVFORGE_VERSION_STRING

enum { EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* "TOOL: error: msg" on stderr */
void cli_error(const char *tool, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* prints err->msg and returns EXIT_FAIL */
int cli_fail(const char *tool, const kv_error *err);
/* usage error: message + "Try 'TOOL --help'." ; returns EXIT_USAGE */
int cli_usage_error(const char *tool, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cli_version(const char *tool);
/* "TOOL: warning: ..." on stderr, one line per limitation of SwiftKV map M in LAYOUT that the
 * reference server cannot load (kvmap_swiftkv_serving_limits); nothing for other maps */
void cli_warn_swiftkv_serving(const char *tool, const kv_map *m, kv_swiftkv_layout layout);
/* the one usage error for what getopt_long returned as '?' or ':' (call with opterr = 0 and an
 * optstring that starts with ':'): "unknown option 'X'" or "option 'X' needs a value" */
int cli_bad_option(const char *tool, int c, char **argv);

/* A MODEL argument as every tool takes it (runtime/model_source.h): a model directory, a .kvb
 * bundle or a file of a model directory (model.safetensors: its folder). Returns the directory
 * to read; a bundle is returned as given when keep_bundle, else unpacked into a temporary
 * directory removed at exit. NULL after printing the error ("TOOL: error: PATH: not a model..."). */
const char *cli_model_arg(const char *tool, const char *path, int keep_bundle);

/* strict number parsing: whole string must be a number in range; 0 or -1 */
int cli_parse_int(const char *s, long min, long max, long *out);
int cli_parse_double(const char *s, double *out);
/* sizes like 500M, 2G, 4096 (bytes) */
int cli_parse_size(const char *s, uint64_t *out);
/* the memory budget (base/membudget.h) from --max-memory SIZE (opt, NULL when not given), else
 * the environment variable KVFORGE_MAX_MEMORY, else physical RAM: 0, or EXIT_USAGE after the
 * message when the SIZE is bad (not a size, or 0) */
int cli_memory_budget(const char *tool, const char *opt);
/* a float type as options spell it: f32, f16 or bf16; 0 or -1 */
int cli_parse_float_dtype(const char *s, kv_dtype *out);

/* progress bar on stderr when it is a terminal; plain lines every ~10% otherwise (or never if quiet) */
typedef struct {
    const char *label;
    uint64_t total, done;
    double start, last_draw;
    int tty, quiet, last_decile;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *label, uint64_t total, int quiet);
void cli_progress_update(cli_progress *p, uint64_t done, const char *extra);
void cli_progress_finish(cli_progress *p);
double cli_now(void); /* monotonic seconds */

#endif
