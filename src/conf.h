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

/* TLS on a listener (gRPC binds such a listener itself, with SO_REUSEPORT,
 * inside each acceptor: DESIGN section 2). */
typedef struct {
    bool on;
    char cert[PATH_MAX];      /* PEM certificate chain (absolute) */
    char key[PATH_MAX];       /* PEM private key (absolute) */
    char client_ca[PATH_MAX]; /* PEM CA bundle for client certificates, "" = none */
    bool verify_client;       /* require and verify a client certificate (mTLS) */
} cr_tls_conf_t;

typedef struct {
    cr_listen_kind_t kind;
    char text[512];                /* the address as written, for logs and -T */
    struct sockaddr_storage addr;  /* resolved numeric address (no DNS) */
    socklen_t addrlen;
    char path[108];                /* unix: resolved path */
    int line;                      /* line in the config file */
    cr_tls_conf_t tls;             /* TCP only */
    int mode;                      /* unix: file mode to chmod to, -1 = leave */
    char group[64];                /* unix: group to chown to, "" = leave */
} cr_listen_conf_t;

/* A handler module (modules = ( { path = "..."; config = "..."; } );). */
#define CR_MAX_MODULES 16
typedef struct {
    char path[PATH_MAX];      /* absolute (relative ones resolve against the prefix) */
    char config[1024];        /* handed to the module's init, "" = none */
    int line;                 /* line in the config file */
} cr_module_conf_t;

typedef enum {
    CR_AFFINITY_OFF = 0,
    CR_AFFINITY_AUTO,              /* worker i on CPU i mod online CPUs */
} cr_affinity_t;

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
    unsigned queue_spin_us;   /* 0..10000, default 10 */
    char pid_file[PATH_MAX];  /* absolute, "" = none; default "crunchd.pid" */
    char error_log[PATH_MAX]; /* "stderr" or absolute path; default "stderr" */
    int log_level;            /* cr_log_level_t, default notice */
    char access_log[PATH_MAX];/* absolute path, "" = off (default) */

    /* supervision (worker-level on reload) */
    unsigned task_retries;        /* 0..5, default 0 */
    unsigned task_timeout_ms;     /* 0 = off, ..86400000, default 30000 */
    unsigned worker_max_tasks;    /* 0 = off, ..4294967295, default 0 */
    unsigned respawn_burst;       /* 1..1000, default 5 */
    unsigned respawn_window_ms;   /* 100..3600000, default 10000 */
    uint64_t worker_rlimit_nofile;/* 0 = leave, ..1048576 */
    int64_t worker_rlimit_core;   /* -1 = leave (default), else bytes ("0", "1g", "unlimited" = INT64_MAX) */
    cr_affinity_t worker_cpu_affinity; /* "off" (default) or "auto" */
    cr_module_conf_t modules[CR_MAX_MODULES]; /* loaded by workers, in this order */
    unsigned nmodules;

    /* reload and stop (master-level) */
    unsigned shutdown_timeout_ms;      /* drain cap, 1000..3600000, default 60000 */
    unsigned max_draining_generations; /* 1..64, default 4 */

    /* gRPC channel (acceptor-level) */
    uint64_t max_receive_message;      /* bytes, 1k..2g-1, default max_payload + 4k */
    bool max_receive_message_set;      /* given in the file (else follows max_payload) */
    unsigned max_concurrent_streams;   /* 1..1000000, default 1000 */
    unsigned keepalive_time_ms;        /* 1000..86400000, default 7200000 */
    unsigned keepalive_timeout_ms;     /* 1000..3600000, default 20000 */
    unsigned max_connection_idle_ms;   /* 0 = off (default), ..86400000 */
    unsigned max_connection_age_ms;    /* 1000..86400000, default 30000 */
    unsigned max_connection_age_grace_ms; /* 0..3600000, default 10000 */
    unsigned stream_max_pending;       /* results waiting to be sent per stream, 1..1000000, default 1024 */

    /* updates feed (Submit/Updates) */
    unsigned updates_capacity;         /* results waiting for a subscriber, 1..1048576, default 65536 */

    /* process (master-level; need a restart to change) */
    bool daemon;                       /* default false */
    char user[64];                     /* "" = stay (default) */
    char group[64];                    /* "" = the user's primary group */
} cr_conf_t;

/* What a reload with a changed setting has to do (DESIGN section 5). */
#define CR_CHANGE_MASTER   0x1u /* master only: log_level, error_log, pid_file, access_log path... */
#define CR_CHANGE_WORKER   0x2u /* new workers, same region and acceptors */
#define CR_CHANGE_ACCEPTOR 0x4u /* a new generation: region, acceptors, workers */
#define CR_CHANGE_RESTART  0x8u /* cannot change without a restart (daemon, user, group) */

/* Compare two loaded configurations. Returns a mask of CR_CHANGE_* (0 = same)
 * and, when names is not NULL, writes the changed setting names into it
 * ("workers, max_connection_age_ms"), for the reload log line. */
unsigned cr_conf_diff(const cr_conf_t *old, const cr_conf_t *new_, char *names,
                      size_t len);

/* Fill `c` with every default (prefix as given, no listeners). */
void cr_conf_defaults(cr_conf_t *c, const char *prefix);

/* Read and validate `file` completely. `prefix` is absolute or NULL (= the
 * current directory). Never binds or opens anything but the file itself.
 * Returns CR_OK, or CR_ERROR with err holding one line "FILE:LINE: what is
 * wrong; what to do" (no trailing newline). `c` is undefined on error. */
int cr_conf_load(cr_conf_t *c, const char *file, const char *prefix, char *err,
                 size_t errlen);

/* cr_conf_load, then check that the files crunchd writes (pid_file, error_log,
 * access_log) can be created or appended to: their directory exists and is
 * writable (stat and access only; nothing is created). What -t, start and
 * reload use, so that such a mistake is "FILE:LINE: ..." before anything runs. */
int cr_conf_load_run(cr_conf_t *c, const char *file, const char *prefix, char *err,
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
