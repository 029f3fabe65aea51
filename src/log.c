/* log.c: the error log: nginx-style lines, one write(2) each, reopened on SIGUSR1. */
#include "log.h"

#include <fcntl.h>

/* A line longer than this is cut and ends with "...": one write(2) of a few
 * KiB to an O_APPEND file is never interleaved with another process's line. */
#define LOG_LINE_MAX 2048

cr_role_t cr_role = CR_ROLE_TOOL;
int cr_log_level = CR_LOG_NOTICE;

static const char *const log_level_names[] = {
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
};

/* Until cr_log_open succeeds everything goes to stderr. The fd number never
 * changes afterwards except through cr_log_open: reopen dup3()s the new file
 * over it, so a copy dup2()ed onto a child's stderr keeps pointing at the log
 * that was current when the child started, and the master's own number stays
 * valid in every thread. */
static int log_fd = STDERR_FILENO;
static char log_path[PATH_MAX] = "stderr";

int cr_log_level_parse(const char *name)
{
    for (unsigned i = 0; i < cr_nelem(log_level_names); i++) {
        if (strcmp(name, log_level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

const char *cr_log_level_name(int level)
{
    if (level < 0 || (unsigned)level >= cr_nelem(log_level_names))
        return "unknown";
    return log_level_names[level];
}

static int log_open_file(const char *path)
{
    /* O_CLOEXEC: children are forked, not exec'd, so they keep it; anything a
     * process exec()s later must not inherit the log by accident. */
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int cr_log_open(const char *path)
{
    int fd;

    if (strcmp(path, "stderr") == 0) {
        if (log_fd != STDERR_FILENO)
            close(log_fd);
        log_fd = STDERR_FILENO;
        strcpy(log_path, "stderr");
        return CR_OK;
    }

    if (strlen(path) >= sizeof(log_path)) {
        fprintf(stderr,
                "crunchd: error log path is too long (%zu bytes, at most %zu); "
                "shorten error_log\n",
                strlen(path), sizeof(log_path) - 1);
        return CR_ERROR;
    }

    fd = log_open_file(path);
    if (fd == -1) {
        fprintf(stderr,
                "crunchd: cannot open error log \"%s\": %s; check error_log and "
                "that its directory exists and is writable\n",
                path, strerror(errno));
        return CR_ERROR;
    }

    /* Reuse the current file descriptor number when there is one, for the
     * same reason as in cr_log_reopen. */
    if (log_fd != STDERR_FILENO) {
        if (dup3(fd, log_fd, O_CLOEXEC) == -1) {
            int e = errno;
            close(fd);
            fprintf(stderr, "crunchd: cannot switch the error log to \"%s\": %s\n", path,
                    strerror(e));
            return CR_ERROR;
        }
        close(fd);
    } else {
        log_fd = fd;
    }
    strcpy(log_path, path);
    return CR_OK;
}

int cr_log_reopen(void)
{
    int fd;

    if (log_fd == STDERR_FILENO)
        return CR_OK;

    fd = log_open_file(log_path);
    if (fd == -1) {
        /* Keep writing to the old (renamed) file: losing lines is worse. */
        cr_log(CR_LOG_ALERT, errno,
               "cannot reopen error log \"%s\", still writing to the "
               "old file; check that its directory exists and is writable",
               log_path);
        return CR_ERROR;
    }
    if (dup3(fd, log_fd, O_CLOEXEC) == -1) {
        int e = errno;
        close(fd);
        cr_log(CR_LOG_ALERT, e, "cannot reopen error log \"%s\"", log_path);
        return CR_ERROR;
    }
    close(fd);
    return CR_OK;
}

int cr_log_fd(void)
{
    return log_fd;
}

/* Format and write one line whatever cr_log_level says. */
static void log_vwrite(int level, int err, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX], suffix[160];
    size_t n, room, slen = 0;
    int saved_errno = errno;
    struct tm tm;
    time_t now;
    int r;

    now = time(NULL);
    localtime_r(&now, &tm);
    r = snprintf(line, sizeof(line),
                 "%04d/%02d/%02d %02d:%02d:%02d [%s] %d#%d: ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 cr_log_level_name(level), (int)getpid(), (int)gettid());
    n = r > 0 ? (size_t)r : 0;

    if (err != 0) {
        char ebuf[128];
        /* GNU strerror_r: thread-safe and returns the text to use. */
        const char *etext = strerror_r(err, ebuf, sizeof(ebuf));
        r = snprintf(suffix, sizeof(suffix), " (%d: %s)", err, etext);
        slen = r > 0 ? ((size_t)r < sizeof(suffix) ? (size_t)r : sizeof(suffix) - 1) : 0;
    }

    /* The message gets what is left after the header, the errno suffix and
     * "...\n", so a cut line still says why (the suffix) and that it was cut. */
    room = sizeof(line) - n - slen - 4;
    r = vsnprintf(line + n, room + 1, fmt, ap);
    if (r < 0) {
        r = 0;
        line[n] = '\0';
    }
    if ((size_t)r > room) {
        n += room;
        memcpy(line + n, "...", 3);
        n += 3;
    } else {
        n += (size_t)r;
    }
    memcpy(line + n, suffix, slen);
    n += slen;
    line[n++] = '\n';

    /* One write per line; retry only what a signal interrupted or a full
     * pipe cut short (stderr may be a pipe to a supervisor). */
    for (size_t off = 0; off < n;) {
        ssize_t w = write(log_fd, line + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        off += (size_t)w;
    }

    errno = saved_errno;
}

void cr_log(int level, int err, const char *fmt, ...)
{
    va_list ap;

    if (level > cr_log_level)
        return;
    va_start(ap, fmt);
    log_vwrite(level, err, fmt, ap);
    va_end(ap);
}

static void log_write(int level, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void log_write(int level, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(level, err, fmt, ap);
    va_end(ap);
}

void cr_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    /* Logged even at log_level "emerg": the reason a process died must be seen. */
    log_write(CR_LOG_ALERT, 0, "assertion \"%s\" failed at %s:%d (%s)", expr, file, line,
              func);
    abort();
}
