/* log.h: the error log: levels, nginx-style lines, reopen on SIGUSR1. */
#ifndef CR_LOG_H
#define CR_LOG_H

#include "cr_core.h"

typedef enum {
    CR_LOG_EMERG = 0,
    CR_LOG_ALERT,
    CR_LOG_CRIT,
    CR_LOG_ERR,
    CR_LOG_WARN,
    CR_LOG_NOTICE,
    CR_LOG_INFO,
    CR_LOG_DEBUG,
} cr_log_level_t;

/* Current threshold: messages above it are dropped. Set from `log_level`. */
extern int cr_log_level;

/* Parse "debug".."emerg" (nginx names: debug info notice warn error crit alert
 * emerg). Returns the level or -1 for an unknown name. */
int cr_log_level_parse(const char *name);
const char *cr_log_level_name(int level);

/* Open the error log. `path` is "stderr" or a file path (opened O_APPEND, 0644,
 * created if missing). Until this is called, messages go to stderr.
 * Returns CR_OK, or CR_ERROR with a message already printed to stderr. */
int cr_log_open(const char *path);

/* Reopen the same path (logrotate renamed the old file). Async-signal-unsafe:
 * call from the main loop, not from a signal handler. Returns CR_OK/CR_ERROR. */
int cr_log_reopen(void);

/* The fd messages are written to (for dup2 onto stderr in children). */
int cr_log_fd(void);

/* Write one line: "YYYY/MM/DD HH:MM:SS [level] pid#tid: message\n", one write(2)
 * per line so that lines of different processes never interleave. If err != 0,
 * " (err: strerror)" is appended. */
void cr_log(int level, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define cr_log_error(...) cr_log(CR_LOG_ERR, 0, __VA_ARGS__)
#define cr_log_debug(...)                                                     \
    do {                                                                      \
        if (cr_log_level >= CR_LOG_DEBUG)                                     \
            cr_log(CR_LOG_DEBUG, 0, __VA_ARGS__);                             \
    } while (0)

#endif /* CR_LOG_H */
