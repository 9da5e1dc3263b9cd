/* base/fileio.h's leftovers of killed writers: kv_remove_stale_tmp removes "<path>.tmp-XXXXXX"
 * files and flat folders that no live writer holds locked, and nothing else; kv_tmpfile_beside
 * and kv_tmpdir_beside clean before they create and hold the lock; kv_error_replace. */
#include "tests/check.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"

static char dir[] = "/tmp/kv_fileio_tmp_XXXXXX";

static void touch(const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) close(fd);
}

static int exists(const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return kv_path_exists(p);
}

int main(void) {
    if (!mkdtemp(dir)) return check_done("test_fileio_tmp");
    char path[4096], p[4096];
    snprintf(path, sizeof path, "%s/out.kvb", dir);
    touch("out.kvb.tmp-AAAAAA"); /* a killed writer's file */
    snprintf(p, sizeof p, "%s/out.kvb.tmp-BBBBBB", dir); /* a killed writer's staging folder */
    mkdir(p, 0755);
    touch("out.kvb.tmp-BBBBBB/model.safetensors");
    touch("out.kvb.tmp-CCCCCC"); /* a live writer's: locked */
    snprintf(p, sizeof p, "%s/out.kvb.tmp-CCCCCC", dir);
    int live = open(p, O_RDONLY);
    CHECK(live >= 0 && flock(live, LOCK_EX | LOCK_NB) == 0, "lock the live temporary");
    touch("out.kvb.tmp-DDDDDDD"); /* not mkstemp's pattern */
    touch("out.kvb.tmp-EEEEE");
    touch("other.kvb.tmp-FFFFFF"); /* another path's */
    touch("out.kvb"); /* the output itself */

    kv_remove_stale_tmp(path);
    CHECK(!exists("out.kvb.tmp-AAAAAA"), "stale file left");
    CHECK(!exists("out.kvb.tmp-BBBBBB"), "stale folder left");
    CHECK(exists("out.kvb.tmp-CCCCCC"), "a live writer's temporary removed");
    CHECK(exists("out.kvb.tmp-DDDDDDD") && exists("out.kvb.tmp-EEEEE"), "other names removed");
    CHECK(exists("other.kvb.tmp-FFFFFF"), "another path's temporary removed");
    CHECK(exists("out.kvb"), "the output removed");

    /* a new temporary: locked while it lives, so a second cleaner leaves it */
    char tmp[4096];
    int fd = -1;
    kv_error err = {0};
    touch("out.kvb.tmp-GGGGGG");
    CHECK(kv_tmpfile_beside(path, tmp, sizeof tmp, &fd, &err) == 0, "tmpfile: %s", err.msg);
    CHECK(!exists("out.kvb.tmp-GGGGGG"), "kv_tmpfile_beside did not clean first");
    kv_remove_stale_tmp(path);
    CHECK(kv_path_exists(tmp), "the new temporary was taken for a leftover");
    CHECK(kv_commit_tmpfile_ex(fd, tmp, path, 0, &err) == 0, "commit: %s", err.msg);
    CHECK(!kv_path_exists(tmp), "temporary left after the commit");

    char sdir[4096];
    int lock = -1;
    snprintf(path, sizeof path, "%s/model", dir);
    CHECK(kv_tmpdir_beside(path, sdir, sizeof sdir, &lock, &err) == 0, "tmpdir: %s", err.msg);
    kv_remove_stale_tmp(path);
    CHECK(kv_path_exists(sdir), "a live staging folder removed");
    close(lock);
    kv_remove_stale_tmp(path);
    CHECK(!kv_path_exists(sdir), "an abandoned staging folder kept");

    /* removing a path with no folder part or a trailing slash does not crash */
    kv_remove_stale_tmp("nonexistent-kvforge-file");
    snprintf(p, sizeof p, "%s/model/", dir);
    kv_remove_stale_tmp(p);

    kv_error e = {0};
    snprintf(e.msg, sizeof e.msg, "d.tmp-ab/x: write failed; d.tmp-ab/y too");
    kv_error_replace(&e, "d.tmp-ab/", "dst/");
    CHECK(!strcmp(e.msg, "dst/x: write failed; dst/y too"), "replace: %s", e.msg);
    kv_error_replace(&e, "", "z");
    CHECK(!strcmp(e.msg, "dst/x: write failed; dst/y too"), "empty pattern: %s", e.msg);
    snprintf(e.msg, sizeof e.msg, "out/.tmp-q1/model.safetensors: short write (out/.tmp-q1x kept)");
    kv_error_replace_dir(&e, "out/.tmp-q1", "out/m");
    CHECK(!strcmp(e.msg, "out/m/model.safetensors: short write (out/.tmp-q1x kept)"),
          "replace_dir: %s", e.msg);

    close(live);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "note: could not remove %s\n", dir);
    return check_done("test_fileio_tmp");
}
