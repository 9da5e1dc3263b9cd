/* Runs a piece of a test in a forked child under a wall-clock cap (alarm) and a memory cap
 * (RLIMIT_AS: what the process has mapped at the fork plus mem_mb), so that a hostile input that
 * makes a parser run away is a test failure with a reason instead of a hung or swapping suite.
 * Under AddressSanitizer (which reserves terabytes of address space) the memory cap is not set,
 * and the time cap is 4 times longer (the instrumented code is that much slower, and so would
 * the super-linear code these caps catch be). */
#ifndef KV_BOUNDED_H
#define KV_BOUNDED_H

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define BOUNDED_NO_MEM_CAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BOUNDED_NO_MEM_CAP 1
#endif
#endif

/* bytes of address space the process has mapped now (VmSize), 0 if unknown */
static inline size_t bounded_vm_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

/* fn's return value is the child's exit status: 0 means the input was handled as expected.
 * Returns that status; or -1 when the child was killed (the reason in why: the time cap, or a
 * crash, which may be the memory cap making an allocation fail hard); -2 if fork failed.
 * *secs: the child's wall time. */
static inline int bounded_run(int (*fn)(void *), void *arg, size_t mem_mb, int max_secs,
                              double *secs, char *why, size_t why_cap) {
    struct timespec t0, t1;
    size_t base = bounded_vm_bytes();
    snprintf(why, why_cap, "ok");
    fflush(NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, why_cap, "fork failed");
        return -2;
    }
    if (pid == 0) {
#ifndef BOUNDED_NO_MEM_CAP
        if (base) {
            struct rlimit rl = {.rlim_cur = base + mem_mb * 1024 * 1024,
                                .rlim_max = base + mem_mb * 1024 * 1024};
            setrlimit(RLIMIT_AS, &rl);
        }
#else
        (void)mem_mb;
        (void)base;
#endif
#ifdef BOUNDED_NO_MEM_CAP
        max_secs *= 4;
#endif
        alarm((unsigned)max_secs);
        int rc = fn(arg);
        fflush(NULL);
        _exit(rc & 0x7f);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {}
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (secs) *secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status)) snprintf(why, why_cap, "exit status %d", WEXITSTATUS(status));
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
        snprintf(why, why_cap, "over the time cap (%d s%s)", max_secs,
#ifdef BOUNDED_NO_MEM_CAP
                 " x 4 under ASan"
#else
                 ""
#endif
        );
    else
        snprintf(why, why_cap, "killed by signal %d (%s; the %zu MB memory cap?)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), mem_mb);
    return -1;
}

#endif
