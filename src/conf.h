/* conf.h: the configuration (libconfig), parsed and validated in full before use. */
#ifndef CR_CONF_H
#define CR_CONF_H

#include "cr_core.h"
#include <sys/socket.h>

#define CR_MAX_LISTEN 16
#define CR_MAX_ACCEPTORS 64
#define CR_MAX_WORKERS 1024

typedef enum {
    CR_LISTEN_TCP = 1, /* "host:port", "[v6]:port" */
    CR_LISTEN_UNIX,    /* "unix:/path" (relative paths are under the prefix) */
} cr_listen_kind_t;

typedef struct {
    cr_listen_kind_t kind;
    char text[512];                /* as written in the file, for logs and -T */
    struct sockaddr_storage addr;  /* resolved numeric address (no DNS) */
    socklen_t addrlen;
    char path[108];                /* unix: resolved path */
    int line;                      /* line in the config file */
} cr_listen_conf_t;

typedef struct {
    char file[PATH_MAX];      /* absolute path of the config file */
    char prefix[PATH_MAX];    /* absolute; relative paths below resolve against it */

    cr_listen_conf_t listen[CR_MAX_LISTEN];
    unsigned nlisten;

    unsigned acceptors;       /* 1..64, default 1 */
    unsigned workers;         /* 1..1024; "auto" resolved to online CPUs */
    bool workers_auto;        /* the file said "auto" (for -T) */
    unsigned queue_capacity;  /* task descriptors, 1..1048576, default 1024 */
    uint64_t shm_size;        /* payload arena bytes, 64k..64g, default 64m */
    uint64_t max_payload;     /* bytes, 1..1g and <= shm_size/2, default 4m */
    unsigned queue_wait_ms;   /* 0..600000, default 1000 */
    char pid_file[PATH_MAX];  /* absolute, "" = none; default "crunchd.pid" */
    char error_log[PATH_MAX]; /* "stderr" or absolute path; default "stderr" */
    int log_level;            /* cr_log_level_t, default notice */
} cr_conf_t;

/* Fill `c` with every default (prefix as given, no listeners). */
void cr_conf_defaults(cr_conf_t *c, const char *prefix);

/* Read and validate `file` completely. `prefix` is absolute or NULL (= the
 * current directory). Never binds or opens anything but the file itself.
 * Returns CR_OK, or CR_ERROR with err holding one line "FILE:LINE: what is
 * wrong; what to do" (no trailing newline). `c` is undefined on error. */
int cr_conf_load(cr_conf_t *c, const char *file, const char *prefix, char *err,
                 size_t errlen);

/* Same as cr_conf_load, from a string (for tests and fuzzing); `name` is used
 * as FILE in messages and relative includes resolve against the prefix. */
int cr_conf_load_string(cr_conf_t *c, const char *text, const char *name,
                        const char *prefix, char *err, size_t errlen);

/* Print the effective configuration, every setting with defaults filled in, in
 * libconfig syntax that cr_conf_load accepts (crunchd -T). */
void cr_conf_dump(const cr_conf_t *c, FILE *out);

/* Parse a size: an integer number of bytes, or a string with an optional k, m
 * or g suffix ("64m"). Returns CR_OK and sets *out, or CR_ERROR. */
int cr_conf_parse_size(const char *s, uint64_t *out);

#endif /* CR_CONF_H */
