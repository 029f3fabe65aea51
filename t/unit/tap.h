/* tap.h: a tiny TAP producer for the C unit tests (run by automake's tap-driver). */
#ifndef CR_TAP_H
#define CR_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("# ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

static inline int tap_ok(int cond, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (!cond) {
        tap_failed++;
        printf("#   failed at %s:%d\n", file, line);
    }
    fflush(stdout);
    return cond;
}

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

#define is_int(got, want, name)                                               \
    do {                                                                      \
        long long g_ = (long long)(got), w_ = (long long)(want);              \
        if (!ok(g_ == w_, "%s", name))                                        \
            tap_diag("got %lld, want %lld", g_, w_);                          \
    } while (0)

#define is_str(got, want, name)                                               \
    do {                                                                      \
        const char *g_ = (got), *w_ = (want);                                 \
        int e_ = g_ && w_ && strcmp(g_, w_) == 0;                             \
        if (!ok(e_, "%s", name))                                              \
            tap_diag("got '%s', want '%s'", g_ ? g_ : "(null)", w_ ? w_ : "(null)"); \
    } while (0)

/* Print the plan and exit non-zero if anything failed. */
static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    fflush(stdout);
    return tap_failed ? 1 : 0;
}

#endif /* CR_TAP_H */
