/* cr_core.h: common includes, return codes and small helpers for every crunchd file. */
#ifndef CR_CORE_H
#define CR_CORE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define CR_OK 0
#define CR_ERROR -1
#define CR_AGAIN -2     /* no space / nothing yet: try again later */
#define CR_TIMEDOUT -3  /* a wait ran out of time */

#define cr_likely(x) __builtin_expect(!!(x), 1)
#define cr_unlikely(x) __builtin_expect(!!(x), 0)
#define cr_nelem(a) (sizeof(a) / sizeof((a)[0]))
#define cr_align_up(x, a) (((x) + ((a)-1)) & ~((__typeof__(x))(a)-1))
#define CR_CACHELINE 64

/* Invariants stay checked in release builds (varnish AN, haproxy BUG_ON). */
#define cr_assert(e)                                                          \
    do {                                                                      \
        if (cr_unlikely(!(e)))                                                \
            cr_assert_fail(#e, __FILE__, __LINE__, __func__);                 \
    } while (0)

__attribute__((noreturn)) void cr_assert_fail(const char *expr, const char *file,
                                              int line, const char *func);

/* CLOCK_MONOTONIC in nanoseconds: one clock shared by every process on the host,
 * so deadlines and queue times written by one process are read by another. */
static inline uint64_t cr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in microseconds, for wall-clock times shown to users. */
static inline uint64_t cr_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The role of the current process; every process knows it (varnish ASSERT_MGT). */
typedef enum {
    CR_ROLE_MASTER = 0,
    CR_ROLE_ACCEPTOR,
    CR_ROLE_WORKER,
    CR_ROLE_TOOL, /* crunchd -t, -s, unit tests */
} cr_role_t;

extern cr_role_t cr_role;

#endif /* CR_CORE_H */
