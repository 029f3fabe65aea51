/* access.c: the access log: one line per RPC, one write(2) each (access.h). */
#include "access.h"

#include "log.h"

#include <fcntl.h>

#define ACCESS_LINE_MAX  1024
#define ACCESS_FIELD_MAX 128
#define ACCESS_ERR_LOG_NS (60ull * 1000000000ull)

/* The descriptor number never changes while the log is on: reopen dup3()s the
 * new file over it, so writers on other threads never see a closed number. */
static struct {
    int fd;                  /* -1 = off */
    char path[PATH_MAX];
    uint64_t err_log_ns;     /* rate limit of write errors; atomic */
} access_log = {.fd = -1};

static int access_open_file(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int cr_access_open(const char *path)
{
    if (path == NULL || path[0] == '\0')
        return CR_OK;
    if (strlen(path) >= sizeof(access_log.path)) {
        cr_log(CR_LOG_EMERG, 0, "access_log path is too long (%zu bytes, at most %zu)",
               strlen(path), sizeof(access_log.path) - 1);
        return CR_ERROR;
    }
    int fd = access_open_file(path);
    if (fd == -1) {
        cr_log(CR_LOG_EMERG, errno,
               "cannot open access_log \"%s\"; check that its directory exists and "
               "is writable by the user crunchd runs as",
               path);
        return CR_ERROR;
    }
    strcpy(access_log.path, path);
    __atomic_store_n(&access_log.fd, fd, __ATOMIC_RELEASE);
    return CR_OK;
}

int cr_access_reopen(void)
{
    int old = __atomic_load_n(&access_log.fd, __ATOMIC_ACQUIRE);
    if (old == -1)
        return CR_OK;
    int fd = access_open_file(access_log.path);
    if (fd == -1) {
        cr_log(CR_LOG_ERR, errno,
               "cannot reopen access_log \"%s\"; lines keep going to the old file",
               access_log.path);
        return CR_ERROR;
    }
    int rc = CR_OK;
    if (dup3(fd, old, O_CLOEXEC) == -1) {
        cr_log(CR_LOG_ERR, errno, "dup3() while reopening access_log \"%s\"",
               access_log.path);
        rc = CR_ERROR;
    }
    close(fd);
    return rc;
}

bool cr_access_on(void)
{
    return __atomic_load_n(&access_log.fd, __ATOMIC_RELAXED) != -1;
}

/* Append one field: "-" when empty; cut, and made of printable non-space ASCII
 * only, because peers, methods and handler names come from clients. */
static size_t access_field(char *p, size_t room, const char *s)
{
    size_t n = 0;

    if (room < 2)
        return 0;
    if (s == NULL || s[0] == '\0') {
        p[0] = '-';
        return 1;
    }
    for (; s[n] && n < ACCESS_FIELD_MAX && n < room - 1; n++) {
        unsigned char ch = (unsigned char)s[n];
        p[n] = ch > 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    return n;
}

void cr_access_log(const cr_access_rec_t *rec)
{
    char line[ACCESS_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int fd = __atomic_load_n(&access_log.fd, __ATOMIC_ACQUIRE);

    if (fd == -1)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y/%m/%d %H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld ", ts.tv_nsec / 1000000);
    n += access_field(line + n, sizeof(line) - n, rec->peer);
    line[n++] = ' ';
    n += access_field(line + n, sizeof(line) - n, rec->method);
    line[n++] = ' ';
    n += access_field(line + n, sizeof(line) - n, rec->handler);
    /* Room is certain: three fields of at most 128 bytes and the date. */
    n += (size_t)snprintf(line + n, sizeof(line) - n,
                          " %d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64, rec->status,
                          rec->bytes_in, rec->bytes_out, rec->queue_us, rec->run_us);
    if (rec->stream)
        n += (size_t)snprintf(line + n, sizeof(line) - n,
                              " tasks=%" PRIu64 " ok=%" PRIu64 " failed=%" PRIu64,
                              rec->tasks, rec->ok, rec->failed);
    if (n > sizeof(line) - 1)
        n = sizeof(line) - 1;
    line[n++] = '\n';

    /* One write(2) on an O_APPEND file: the line lands whole, never mixed with
     * another thread's or process's. A short write only happens on a full
     * disk; the rest of that line is dropped with it. */
    if (write(fd, line, n) < 0) {
        int err = errno;
        uint64_t now = cr_now_ns(), last = __atomic_load_n(&access_log.err_log_ns,
                                                             __ATOMIC_RELAXED);
        if ((last == 0 || now - last >= ACCESS_ERR_LOG_NS) &&
            __atomic_compare_exchange_n(&access_log.err_log_ns, &last, now, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            cr_log(CR_LOG_ERR, err,
                   "write() to access_log \"%s\" failed; access lines are lost until "
                   "it works again",
                   access_log.path);
    }
}

void cr_access_close(void)
{
    int fd = __atomic_exchange_n(&access_log.fd, -1, __ATOMIC_ACQ_REL);
    if (fd != -1)
        close(fd);
}
