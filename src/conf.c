/* conf.c: reads crunchd.conf (libconfig) into cr_conf_t through a table of settings. */
#include "conf.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <grp.h>
#include <libconfig.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/un.h>

#define CONF_FILE_MAX      (16u << 20) /* a config file larger than this is a mistake */
#define CONF_INCLUDE_DEPTH 10          /* libconfig's own limit */
#define CONF_SEE           "see conf/crunchd.conf for every setting"
#define CONF_MAX_CMDS      48    /* rows conf_cmds may have (conf_ctx_t.lines) */
#define RECEIVE_SLACK      4096u /* max_receive_message default: max_payload + this */
#define RECEIVE_MIN_SLACK  64u   /* ... and at least max_payload + this when set */

#define KB UINT64_C(1024)
#define MB (UINT64_C(1024) * KB)
#define GB (UINT64_C(1024) * MB)

/*
 * The pre-scan. libconfig 1.5 (Debian 12) gets two things wrong that users
 * would trip on, so conf_scan reads the text first, the way libconfig's lexer
 * does, and records what libconfig cannot tell us:
 *   - an integer literal beyond 32 bits written without the L suffix is stored
 *     silently truncated: "shm_size = 4294967296;" reads as 0 and
 *     "queue_capacity = 4294967297;" as 1. We record such literals with their
 *     true value; settings take it from there, so big sizes work as plain
 *     integers and a huge number is out of range, not some other number.
 *   - the line of a list element is where the parser finished it, for a
 *     string the line of the next token. We record where each element of a
 *     top-level list starts, so messages point at the right line.
 *   - an integer with a leading zero is decimal to libconfig: "mode = 0660;"
 *     reads as 660. We record such literals (at any depth) with their octal
 *     value, for the one setting written in octal by habit (a unix socket's
 *     mode); the others take libconfig's decimal reading.
 * It also notes a string or comment left open at the end of the file, and a
 * group written inside an array ("listen = [ { ... } ]"), which libconfig only
 * calls a syntax error.
 * Records are keyed by file, setting name and the line of the name (what
 * config_setting_source_file/line/name give), and for OCTAL by the index of the
 * top-level list element the setting sits in.
 */
enum { CONF_REC_BIGINT = 1, CONF_REC_ELEM, CONF_REC_OCTAL };

typedef struct {
    int kind;           /* CONF_REC_* */
    const char *file;   /* as libconfig records it: NULL for the main text */
    char name[64];      /* the top-level setting it belongs to */
    unsigned name_line; /* line of that setting's name */
    unsigned index;     /* ELEM: position in the list */
    unsigned line;      /* ELEM: line where the element starts */
    bool fits;          /* BIGINT: fits in int64; OCTAL: only digits 0-7 */
    long long value;
    char text[32]; /* BIGINT, OCTAL: the number for messages */
} conf_rec_t;

typedef struct {
    cr_conf_t *c;
    const char *name;        /* FILE in messages for the main text */
    const char *include_dir; /* relative @include paths resolve against this */
    char *err;
    size_t errlen;

    conf_rec_t *recs; /* from the pre-scan */
    unsigned nrecs, recs_cap;
    char *inc_names[64]; /* include paths seen by the scan, owned here */
    unsigned ninc_names;
    bool check_paths;      /* cr_conf_load_run: the files crunchd writes */
    const char *open_what; /* "string" or "comment" left open, or NULL */
    const char *open_file;
    unsigned open_line;
    const char *group_in_array_file; /* first "[ {" the scan saw */
    unsigned group_in_array_line;    /* 0 = none */

    unsigned lines[CONF_MAX_CMDS]; /* per table entry: line it was set on, 0 = default */
    const char *files[CONF_MAX_CMDS]; /* per table entry: its file (libconfig's) */
} conf_ctx_t;

typedef struct conf_cmd_s conf_cmd_t;

/* A type of setting: how to read it from libconfig, its default, how to print
 * it for -T, and whether two configurations hold the same value (reload). A
 * new setting of an existing type is one line in conf_cmds. */
typedef struct {
    int (*set)(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s);
    int (*init)(conf_ctx_t *cx, const conf_cmd_t *cmd);
    void (*dump)(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out);
    bool (*same)(const cr_conf_t *a, const cr_conf_t *b, const conf_cmd_t *cmd);
} conf_type_t;

struct conf_cmd_s {
    const char *name;
    const conf_type_t *type;
    size_t offset;       /* into cr_conf_t */
    size_t width;        /* sizeof the field: uint takes unsigned or uint64_t */
    unsigned change;     /* CR_CHANGE_*: what a reload that changes it must do */
    uint64_t min, max;   /* numbers; for listen, how many entries */
    uint64_t def;        /* default of numeric and boolean types */
    const char *def_str; /* default of string types */
    const char *literal; /* path types: a value that is not a path ("stderr") */
    const char *off;     /* path types: the word that means none ("off"), stored as "" */
    bool required;       /* path types: "" is refused */
    const char *hint;    /* path and string types: what to write instead */
    const char *const
        *words; /* enum: the accepted words, NULL-terminated; index = value */
};

static const conf_type_t conf_type_listen, conf_type_uint, conf_type_size,
    conf_type_workers, conf_type_path, conf_type_level, conf_type_bool, conf_type_user,
    conf_type_group, conf_type_rlimit, conf_type_enum, conf_type_modules;

#define CONF_OFF(field)   offsetof(cr_conf_t, field)
#define CONF_WIDTH(field) sizeof(((cr_conf_t *)0)->field)
#define CONF_AT(field)    .offset = CONF_OFF(field), .width = CONF_WIDTH(field)

/* Table rows for the common types: a new setting is one line. */
#define CONF_UINT(n, field, lo, hi, d, chg)                                              \
    {                                                                                    \
        .name = n, .type = &conf_type_uint, CONF_AT(field), .change = chg, .min = lo,    \
        .max = hi, .def = d                                                              \
    }
#define CONF_SIZE(n, field, lo, hi, d, chg)                                              \
    {                                                                                    \
        .name = n, .type = &conf_type_size, CONF_AT(field), .change = chg, .min = lo,    \
        .max = hi, .def = d                                                              \
    }
#define CONF_BOOL(n, field, d, chg)                                                      \
    {                                                                                    \
        .name = n, .type = &conf_type_bool, CONF_AT(field), .change = chg, .def = d      \
    }

#define W CR_CHANGE_WORKER
#define A CR_CHANGE_ACCEPTOR
#define M CR_CHANGE_MASTER
#define R CR_CHANGE_RESTART

static const char *const conf_affinity_words[] = {"off", "auto", NULL};

/* Every setting crunchd.conf may hold, in the order -T prints them (and the
 * shipped file documents them), with what a reload changing it has to do
 * (DESIGN section 5): cr_conf_diff reads the class from here. */
/* clang-format off */
static const conf_cmd_t conf_cmds[] = {
    { .name = "listen", .type = &conf_type_listen, CONF_AT(listen), .change = A,
      .min = 1, .max = CR_MAX_LISTEN },

    /* workers: worker-level */
    { .name = "workers", .type = &conf_type_workers, CONF_AT(workers), .change = W,
      .min = 1, .max = CR_MAX_WORKERS, .def_str = "auto" },
    CONF_UINT("task_timeout_ms", task_timeout_ms, 0, 86400000, 30000, W),
    CONF_UINT("task_retries", task_retries, 0, 5, 0, W),
    CONF_UINT("worker_max_tasks", worker_max_tasks, 0, UINT32_MAX, 0, W),
    CONF_UINT("respawn_burst", respawn_burst, 1, 1000, 5, W),
    CONF_UINT("respawn_window_ms", respawn_window_ms, 100, 3600000, 10000, W),
    CONF_UINT("worker_rlimit_nofile", worker_rlimit_nofile, 0, 1048576, 0, W),
    { .name = "worker_rlimit_core", .type = &conf_type_rlimit, CONF_AT(worker_rlimit_core),
      .change = W, .min = 0, .max = 1024 * GB },
    { .name = "worker_cpu_affinity", .type = &conf_type_enum, CONF_AT(worker_cpu_affinity),
      .change = W, .def = CR_AFFINITY_OFF, .words = conf_affinity_words },
    /* a rebuilt module takes effect on SIGHUP: new workers load the new file */
    { .name = "modules", .type = &conf_type_modules, CONF_AT(modules), .change = W,
      .max = CR_MAX_MODULES },

    /* acceptors and gRPC: a new generation */
    CONF_UINT("acceptors", acceptors, 1, CR_MAX_ACCEPTORS, 1, A),
    CONF_SIZE("max_receive_message", max_receive_message, 1 * KB, 2 * GB - 1, 0, A),
    CONF_UINT("max_concurrent_streams", max_concurrent_streams, 1, 1000000, 1000, A),
    CONF_UINT("keepalive_time_ms", keepalive_time_ms, 1000, 86400000, 7200000, A),
    CONF_UINT("keepalive_timeout_ms", keepalive_timeout_ms, 1000, 3600000, 20000, A),
    CONF_UINT("max_connection_idle_ms", max_connection_idle_ms, 0, 86400000, 0, A),
    CONF_UINT("max_connection_age_ms", max_connection_age_ms, 1000, 86400000, 30000, A),
    CONF_UINT("max_connection_age_grace_ms", max_connection_age_grace_ms, 0, 3600000,
              10000, A),
    CONF_UINT("stream_max_pending", stream_max_pending, 1, 1000000, 1024, A),

    /* queue and memory: a new generation, except the updates feed (its own
     * region, which the master re-creates) */
    CONF_UINT("queue_capacity", queue_capacity, 1, 1048576, 1024, A),
    CONF_UINT("queue_wait_ms", queue_wait_ms, 0, 600000, 1000, A),
    CONF_UINT("queue_spin_us", queue_spin_us, 0, 10000, 10, A),
    CONF_SIZE("shm_size", shm_size, 64 * KB, 64 * GB, 64 * MB, A),
    CONF_SIZE("max_payload", max_payload, 1, 1 * GB, 4 * MB, A),
    CONF_UINT("updates_capacity", updates_capacity, 1, 1048576, 65536, M),

    /* reload and stop: the master */
    CONF_UINT("shutdown_timeout_ms", shutdown_timeout_ms, 1000, 3600000, 60000, M),
    CONF_UINT("max_draining_generations", max_draining_generations, 1, 64, 4, M),

    /* files */
    { .name = "pid_file", .type = &conf_type_path, CONF_AT(pid_file), .change = M,
      .def_str = "crunchd.pid", .hint = "use a file path, or \"\" for no pid file" },
    { .name = "error_log", .type = &conf_type_path, CONF_AT(error_log), .change = M,
      .def_str = "stderr", .literal = "stderr", .required = true,
      .hint = "use \"stderr\" or a file path" },
    { .name = "log_level", .type = &conf_type_level, CONF_AT(log_level), .change = M,
      .def_str = "notice" },
    { .name = "access_log", .type = &conf_type_path, CONF_AT(access_log), .change = A,
      .def_str = "off", .off = "off", .hint = "use a file path, or \"off\"" },

    /* the process: only at start */
    CONF_BOOL("daemon", daemon, false, R),
    { .name = "user", .type = &conf_type_user, CONF_AT(user), .change = R, .def_str = "",
      .hint = "name an existing user, or \"\" to keep the user crunchd starts as" },
    { .name = "group", .type = &conf_type_group, CONF_AT(group), .change = R, .def_str = "",
      .hint = "name an existing group, or \"\" for the user's primary group" },
};
/* clang-format on */

#undef W
#undef A
#undef M
#undef R

_Static_assert(cr_nelem(conf_cmds) <= CONF_MAX_CMDS, "raise CONF_MAX_CMDS");
_Static_assert(sizeof(cr_affinity_t) == sizeof(int), "conf_type_enum stores an int");

#define CONF_FIELD(c, cmd, type) ((type *)((char *)(c) + (cmd)->offset))

/* --- messages --------------------------------------------------------------- */

/* The file a setting came from, for messages: the main file, or an included
 * one (libconfig records include paths as written: resolve them). */
static const char *conf_file(conf_ctx_t *cx, const char *file, char *buf, size_t len)
{
    if (file == NULL)
        return cx->name;
    if (file[0] != '/' && cx->include_dir != NULL) {
        snprintf(buf, len, "%s/%s", cx->include_dir, file);
        return buf;
    }
    return file;
}

/* "FILE:LINE: " + message, into cx->err. line 0 = no line. */
static int conf_error_at(conf_ctx_t *cx, const char *file, unsigned line, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));

static int conf_error_at(conf_ctx_t *cx, const char *file, unsigned line, const char *fmt,
                         ...)
{
    char fbuf[PATH_MAX + 256];
    const char *f = conf_file(cx, file, fbuf, sizeof(fbuf));
    va_list ap;
    int n;

    if (cx->errlen == 0)
        return CR_ERROR;
    if (line)
        n = snprintf(cx->err, cx->errlen, "%s:%u: ", f, line);
    else
        n = snprintf(cx->err, cx->errlen, "%s: ", f);
    if (n >= 0 && (size_t)n < cx->errlen) {
        va_start(ap, fmt);
        vsnprintf(cx->err + n, cx->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* One line whatever the file holds: a quoted value may span lines (a
     * libconfig string can), and the message goes to the log and the
     * terminal (found by t/fuzz/fuzz-conf). */
    for (char *p = cx->err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return CR_ERROR;
}

#define conf_error(cx, s, ...)                                                           \
    conf_error_at(cx, config_setting_source_file(s), config_setting_source_line(s),      \
                  __VA_ARGS__)
#define conf_error_line(cx, s, line, ...)                                                \
    conf_error_at(cx, config_setting_source_file(s), line, __VA_ARGS__)

static const char *conf_type_name(const config_setting_t *s)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "nothing";
    }
}

/* A size the way a user writes it: "64m" when exact, else bytes. */
static const char *conf_size_text(uint64_t v, char *buf, size_t len)
{
    if (v != 0 && v % GB == 0)
        snprintf(buf, len, "%" PRIu64 "g", v / GB);
    else if (v != 0 && v % MB == 0)
        snprintf(buf, len, "%" PRIu64 "m", v / MB);
    else if (v != 0 && v % KB == 0)
        snprintf(buf, len, "%" PRIu64 "k", v / KB);
    else
        snprintf(buf, len, "%" PRIu64, v);
    return buf;
}

/* Write s as a libconfig string literal body (without the quotes). */
static void conf_put_escaped(FILE *out, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\t')
            fputs("\\t", out);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
}

/* Optimal string alignment distance (Levenshtein plus transpositions), for
 * "did you mean". Names are short: anything longer is never close. */
static unsigned conf_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned d[33][33];

    if (la > 32 || lb > 32)
        return UINT_MAX;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            unsigned cost = a[i - 1] != b[j - 1], v = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < v)
                v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

/* The name in `names` (NULL-terminated) closest to `name`, if close enough to
 * be a typo, else NULL. */
static const char *conf_suggest(const char *name, const char *const *names)
{
    const char *best = NULL;
    unsigned best_d = 3;

    for (; *names != NULL; names++) {
        unsigned dist = conf_distance(name, *names);
        if (dist < best_d) {
            best_d = dist;
            best = *names;
        }
    }
    return best;
}

/* Two configurations hold the same value of a fixed-size setting. */
static bool conf_same_mem(const cr_conf_t *a, const cr_conf_t *b, const conf_cmd_t *cmd)
{
    return memcmp(CONF_FIELD(a, cmd, const char), CONF_FIELD(b, cmd, const char),
                  cmd->width) == 0;
}

/* ... of a string setting. */
static bool conf_same_str(const cr_conf_t *a, const cr_conf_t *b, const conf_cmd_t *cmd)
{
    return strcmp(CONF_FIELD(a, cmd, const char), CONF_FIELD(b, cmd, const char)) == 0;
}

/* --- paths ------------------------------------------------------------------ */

/* dst = path if absolute, else prefix/path. Returns CR_ERROR if too long. */
static int conf_resolve(const char *prefix, const char *path, char *dst, size_t len)
{
    int n;

    if (path[0] == '/')
        n = snprintf(dst, len, "%s", path);
    else if (strcmp(prefix, "/") == 0)
        n = snprintf(dst, len, "/%s", path);
    else
        n = snprintf(dst, len, "%s/%s", prefix, path);
    return n < 0 || (size_t)n >= len ? CR_ERROR : CR_OK;
}

/* Make the prefix absolute (against the current directory) without touching
 * the file system beyond getcwd: it need not exist yet for -t. */
static int conf_set_prefix(conf_ctx_t *cx, const char *prefix)
{
    char cwd[PATH_MAX], *p = cx->c->prefix;
    size_t n;

    if (prefix == NULL || prefix[0] != '/') {
        if (getcwd(cwd, sizeof(cwd)) == NULL)
            return conf_error_at(cx, NULL, 0,
                                 "cannot get the current directory (%s); "
                                 "give an absolute prefix with -p",
                                 strerror(errno));
    }
    if (prefix == NULL)
        snprintf(p, PATH_MAX, "%s", cwd);
    else if (conf_resolve(cwd, prefix, p, PATH_MAX) != CR_OK)
        return conf_error_at(cx, NULL, 0,
                             "the prefix \"%.40s...\" is too long; use a "
                             "shorter path with -p",
                             prefix);
    /* "/srv/crunchd/" and "/srv/crunchd" are the same prefix. */
    n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    return CR_OK;
}

/* --- the pre-scan (see conf_rec_t) ----------------------------------------- */

typedef struct {
    conf_ctx_t *cx;
    const char *file; /* NULL for the main text, else the include path */
    char name[64];    /* top-level setting being read */
    unsigned name_line;
    char inner[64]; /* the setting being read below the top level */
    unsigned inner_line;
    int depth;      /* brackets open */
    bool in_list;   /* depth 1 is a list or an array, not a group */
    unsigned elem;  /* index of the element being read at depth 1 */
    bool elem_seen; /* its start was recorded */
    char open[32];  /* the brackets open, innermost last (the first 32) */
} conf_scan_t;

static int conf_scan(conf_ctx_t *cx, const char *text, const char *file, int depth);

static bool conf_is_name_start(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '*';
}

static bool conf_is_name_char(char ch)
{
    return conf_is_name_start(ch) || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

static conf_rec_t *conf_rec_add(conf_scan_t *st, int kind)
{
    conf_ctx_t *cx = st->cx;
    conf_rec_t *r;

    if (cx->nrecs == cx->recs_cap) {
        unsigned cap = cx->recs_cap ? cx->recs_cap * 2 : 16;
        conf_rec_t *p = realloc(cx->recs, cap * sizeof(*p));
        if (p == NULL) {
            conf_error_at(cx, NULL, 0, "out of memory");
            return NULL;
        }
        cx->recs = p;
        cx->recs_cap = cap;
    }
    r = &cx->recs[cx->nrecs++];
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->file = st->file;
    memcpy(r->name, st->name, sizeof(r->name));
    r->name_line = st->name_line;
    return r;
}

/* A value starts at `line`: if it is an element of a top-level list, note
 * where it starts. */
static int conf_scan_value(conf_scan_t *st, unsigned line)
{
    conf_rec_t *r;

    if (st->depth != 1 || !st->in_list || st->elem_seen)
        return CR_OK;
    st->elem_seen = true;
    if ((r = conf_rec_add(st, CONF_REC_ELEM)) == NULL)
        return CR_ERROR;
    r->index = st->elem;
    r->line = line;
    return CR_OK;
}

/* One integer literal at *pp (sign included); records it if libconfig 1.5
 * would store it wrong. Floats are skipped whole. */
static int conf_scan_number(conf_scan_t *st, const char **pp)
{
    const char *p = *pp, *start = p, *digits;
    bool neg = false, hex = false, is_long = false, fits = true;
    unsigned long long mag = 0;
    long long value = 0;
    size_t len;
    conf_rec_t *r;

    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && isxdigit((unsigned char)p[2])) {
        hex = true;
        p += 2;
    }
    digits = p;
    while (hex ? isxdigit((unsigned char)*p) : isdigit((unsigned char)*p)) {
        unsigned base = hex ? 16 : 10;
        unsigned dv = isdigit((unsigned char)*p)
                          ? (unsigned)(*p - '0')
                          : (unsigned)(tolower((unsigned char)*p) - 'a' + 10);
        if (mag > (ULLONG_MAX - dv) / base)
            fits = false;
        else
            mag = mag * base + dv;
        p++;
    }
    if (!hex && (*p == '.' || *p == 'e' || *p == 'E')) {
        /* A float: libconfig reads those right. */
        while (isalnum((unsigned char)*p) || *p == '.' || *p == '+' || *p == '-')
            p++;
        *pp = p;
        return CR_OK;
    }
    if (*p == 'L') {
        is_long = true;
        p++;
        if (*p == 'L')
            p++;
    }
    *pp = p;
    if (p == digits)
        return CR_OK;

    /* 0660: libconfig reads 660. Keep the octal reading for whoever wants it. */
    if (!hex && p - digits > 1 && digits[0] == '0' && !is_long) {
        unsigned long long oct = 0;
        bool octal = true;

        for (const char *q = digits; q < p; q++) {
            if (*q > '7')
                octal = false;
            else if (oct <= (unsigned long long)LLONG_MAX / 8)
                oct = oct * 8 + (unsigned)(*q - '0');
            else
                oct = (unsigned long long)LLONG_MAX; /* out of every range */
        }
        if ((r = conf_rec_add(st, CONF_REC_OCTAL)) == NULL)
            return CR_ERROR;
        if (st->depth > 0) {
            memcpy(r->name, st->inner, sizeof(r->name));
            r->name_line = st->inner_line;
        }
        r->index = st->depth > 0 && st->in_list ? st->elem : 0;
        r->fits = octal;
        r->value = neg ? -(long long)oct : (long long)oct;
        len = (size_t)(p - start);
        snprintf(r->text, sizeof(r->text), "%.*s%s", (int)(len < 24 ? len : 24), start,
                 len < 24 ? "" : "...");
    }

    if (fits) {
        if (neg ? mag > (unsigned long long)LLONG_MAX + 1
                : mag > (unsigned long long)LLONG_MAX)
            fits = false;
        else
            value = neg ? (long long)(0 - mag) : (long long)mag;
    }
    /* libconfig 1.5 takes non-L hex as unsigned 32 bits, decimals as int. */
    if (fits &&
        (is_long || (hex ? mag <= 0x7fffffffull : value >= INT_MIN && value <= INT_MAX)))
        return CR_OK;
    if ((r = conf_rec_add(st, CONF_REC_BIGINT)) == NULL)
        return CR_ERROR;
    r->fits = fits;
    r->value = value;
    if (!fits) {
        /* Shown as written (cut), the only form that means anything. */
        len = (size_t)(p - start);
        snprintf(r->text, sizeof(r->text), "%.*s%s", (int)(len < 24 ? len : 24), start,
                 len < 24 ? "" : "...");
    } else {
        snprintf(r->text, sizeof(r->text), "%lld", value);
    }
    return CR_OK;
}

static int conf_scan_include(conf_ctx_t *cx, const char *path, const char *from,
                             unsigned line, int depth)
{
    char full[PATH_MAX], *copy, *text = NULL;
    struct stat st;
    int fd, rc = CR_OK;
    ssize_t r;

    /* libconfig reports an include it cannot open (or one too deep) itself. */
    if (depth >= CONF_INCLUDE_DEPTH)
        return CR_OK;
    if (conf_resolve(cx->include_dir ? cx->include_dir : cx->c->prefix, path, full,
                     sizeof(full)) != CR_OK)
        return CR_OK;
    /* O_NONBLOCK: a FIFO must not hang -t or a reload here. libconfig would
     * only say "cannot open include file": name the file and the reason. */
    fd = open(full, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1)
        return conf_error_at(cx, from, line,
                             "@include \"%s\": cannot open %s: %s; check the @include path "
                             "(relative paths start in the directory of the main file)",
                             path, full, strerror(errno));
    if (fstat(fd, &st) == -1)
        goto done;
    /* libconfig opens a directory (@include "" names the include directory)
     * and its scanner then calls exit(2) ("input in flex scanner failed"):
     * in the master, on a reload. Found by t/fuzz/fuzz-conf. */
    if (!S_ISREG(st.st_mode)) {
        rc = conf_error_at(cx, from, line,
                           "@include \"%s\": %s is %s; include a configuration file",
                           path, full, S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
        goto done;
    }
    if (st.st_size > CONF_FILE_MAX || cx->ninc_names == cr_nelem(cx->inc_names))
        goto done;
    text = malloc((size_t)st.st_size + 1);
    copy = strdup(path);
    if (text == NULL || copy == NULL) {
        free(copy);
        rc = conf_error_at(cx, NULL, 0, "out of memory");
        goto done;
    }
    /* Records point at this name, which must live as long as cx. */
    cx->inc_names[cx->ninc_names++] = copy;
    r = read(fd, text, (size_t)st.st_size);
    if (r < 0)
        goto done;
    text[r] = '\0';
    rc = conf_scan(cx, text, copy, depth + 1);

done:
    free(text);
    close(fd);
    return rc;
}

/* A string or comment runs to the end of the text: remember where it began
 * (libconfig would point at the end of the file, or say nothing at all). */
static void conf_scan_open(conf_scan_t *st, const char *what, unsigned line)
{
    conf_ctx_t *cx = st->cx;

    if (cx->open_what == NULL) {
        cx->open_what = what;
        cx->open_file = st->file;
        cx->open_line = line;
    }
}

/* Walk the text like libconfig's scanner does (comments, strings, names,
 * numbers, brackets, @include) and record what conf_rec_t holds. */
static int conf_scan(conf_ctx_t *cx, const char *text, const char *file, int depth)
{
    conf_scan_t st = {.cx = cx, .file = file};
    char pending[64] = "";
    unsigned line = 1, pending_line = 0;
    bool line_start = true;
    const char *p = text;

    while (*p) {
        char ch = *p;

        if (ch == '\n') {
            line++;
            line_start = true;
            p++;
            continue;
        }
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v') {
            p++;
            continue;
        }
        if (ch == '#' || (ch == '/' && p[1] == '/')) {
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (ch == '/' && p[1] == '*') {
            unsigned start = line;
            for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
                line += *p == '\n';
            if (*p)
                p += 2;
            else
                conf_scan_open(&st, "comment", start);
            line_start = false;
            continue;
        }
        if (ch == '@' && line_start && strncmp(p, "@include", 8) == 0 &&
            (p[8] == ' ' || p[8] == '\t')) {
            char path[PATH_MAX];
            size_t n = 0;

            for (p += 8; *p == ' ' || *p == '\t'; p++)
                ;
            if (*p != '"')
                continue;
            for (p++; *p && *p != '"' && *p != '\n'; p++) {
                if (*p == '\\' && p[1] && p[1] != '\n')
                    p++;
                if (n < sizeof(path) - 1)
                    path[n++] = *p;
            }
            path[n] = '\0';
            if (*p == '"')
                p++;
            if (conf_scan_include(cx, path, file, line, depth) != CR_OK)
                return CR_ERROR;
            line_start = false;
            continue;
        }
        line_start = false;
        if (ch == '"') {
            unsigned start = line;
            if (conf_scan_value(&st, line) != CR_OK)
                return CR_ERROR;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                line += *p == '\n';
            }
            if (*p)
                p++;
            else
                conf_scan_open(&st, "string", start);
            continue;
        }
        if (conf_is_name_start(ch)) {
            size_t n = 0;
            if (conf_scan_value(&st, line) != CR_OK) /* true, false */
                return CR_ERROR;
            for (; conf_is_name_char(*p); p++) {
                if (n < sizeof(pending) - 1)
                    pending[n++] = *p;
            }
            pending[n] = '\0';
            pending_line = line;
            continue;
        }
        if (ch == '=' || ch == ':') {
            if (st.depth == 0) {
                memcpy(st.name, pending, sizeof(st.name));
                st.name_line = pending_line;
            } else {
                memcpy(st.inner, pending, sizeof(st.inner));
                st.inner_line = pending_line;
            }
            p++;
            continue;
        }
        if (ch == '[' || ch == '(' || ch == '{') {
            if (conf_scan_value(&st, line) != CR_OK)
                return CR_ERROR;
            if (st.depth == 0) {
                st.in_list = ch != '{';
                st.elem = 0;
                st.elem_seen = false;
            }
            if (ch == '{' && st.depth > 0 && (size_t)st.depth <= sizeof(st.open) &&
                st.open[st.depth - 1] == '[' && cx->group_in_array_line == 0) {
                cx->group_in_array_file = st.file;
                cx->group_in_array_line = line;
            }
            if ((size_t)st.depth < sizeof(st.open))
                st.open[st.depth] = ch;
            st.depth++;
            p++;
            continue;
        }
        if (ch == ']' || ch == ')' || ch == '}') {
            if (st.depth > 0)
                st.depth--;
            p++;
            continue;
        }
        if (ch == ',' && st.depth == 1) {
            st.elem++;
            st.elem_seen = false;
            p++;
            continue;
        }
        if (isdigit((unsigned char)ch) || ch == '.' ||
            ((ch == '-' || ch == '+') && (isdigit((unsigned char)p[1]) || p[1] == '.'))) {
            /* conf_scan_number always moves past at least one character. */
            if (conf_scan_value(&st, line) != CR_OK || conf_scan_number(&st, &p) != CR_OK)
                return CR_ERROR;
            continue;
        }
        p++;
    }
    return CR_OK;
}

static bool conf_same_file(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The scan's record of `kind` for top-level setting s (and index). */
static const conf_rec_t *conf_rec_find(conf_ctx_t *cx, const config_setting_t *s,
                                       int kind, unsigned index)
{
    const char *name = config_setting_name(s);

    if (name == NULL)
        return NULL;
    for (unsigned i = 0; i < cx->nrecs; i++) {
        const conf_rec_t *r = &cx->recs[i];
        if (r->kind == kind && r->index == index &&
            r->name_line == config_setting_source_line(s) &&
            conf_same_file(r->file, config_setting_source_file(s)) &&
            strcmp(r->name, name) == 0)
            return r;
    }
    return NULL;
}

/* The line element i of list s starts on. libconfig gives the line its
 * parser was on when it finished the element, which for a string is the
 * line of the next token: "]" below the last one. */
static unsigned conf_elem_line(conf_ctx_t *cx, const config_setting_t *s, unsigned i,
                               const config_setting_t *e)
{
    const conf_rec_t *r = conf_rec_find(cx, s, CONF_REC_ELEM, i);

    return r != NULL ? r->line : config_setting_source_line(e);
}

/* Read an integer setting, correcting for libconfig 1.5 (conf_rec_t).
 * Returns CR_OK with *v, CR_AGAIN when the value does not fit in int64 (the
 * literal is in *big), or CR_ERROR when s is not an integer at all. */
static int conf_get_int(conf_ctx_t *cx, const config_setting_t *s, long long *v,
                        const conf_rec_t **big)
{
    int type = config_setting_type(s);
    const conf_rec_t *r;

    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
        return CR_ERROR;
    r = conf_rec_find(cx, s, CONF_REC_BIGINT, 0);
    if (r != NULL) {
        *big = r;
        *v = r->value;
        return r->fits ? CR_OK : CR_AGAIN;
    }
    *v =
        type == CONFIG_TYPE_INT ? config_setting_get_int(s) : config_setting_get_int64(s);
    return CR_OK;
}

/* --- setting types ---------------------------------------------------------- */

/* unsigned or uint64_t (cmd->width), min..max */

static void conf_uint_store(cr_conf_t *c, const conf_cmd_t *cmd, uint64_t v)
{
    if (cmd->width == sizeof(uint64_t))
        *CONF_FIELD(c, cmd, uint64_t) = v;
    else
        *CONF_FIELD(c, cmd, unsigned) = (unsigned)v;
}

static uint64_t conf_uint_get(const cr_conf_t *c, const conf_cmd_t *cmd)
{
    if (cmd->width == sizeof(uint64_t))
        return *CONF_FIELD(c, cmd, const uint64_t);
    return *CONF_FIELD(c, cmd, const unsigned);
}

static int conf_uint_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    const conf_rec_t *big = NULL;
    long long v;

    switch (conf_get_int(cx, s, &v, &big)) {
    case CR_ERROR:
        return conf_error(cx, s,
                          "%s: expected an integer, got %s; use an integer from %" PRIu64
                          " to %" PRIu64,
                          cmd->name, conf_type_name(s), cmd->min, cmd->max);
    case CR_AGAIN:
        return conf_error(
            cx, s, "%s: %s is out of range; use an integer from %" PRIu64 " to %" PRIu64,
            cmd->name, big->text, cmd->min, cmd->max);
    }
    if (v < 0 || (uint64_t)v < cmd->min || (uint64_t)v > cmd->max)
        return conf_error(cx, s,
                          "%s: %lld is out of range; use an integer from %" PRIu64
                          " to %" PRIu64,
                          cmd->name, v, cmd->min, cmd->max);
    conf_uint_store(cx->c, cmd, (uint64_t)v);
    return CR_OK;
}

static int conf_uint_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    conf_uint_store(cx->c, cmd, cmd->def);
    return CR_OK;
}

static void conf_uint_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = %" PRIu64 ";\n", cmd->name, conf_uint_get(c, cmd));
}

static const conf_type_t conf_type_uint = {conf_uint_set, conf_uint_init, conf_uint_dump,
                                           conf_same_mem};

/* size: bytes as an integer, or a string "64k" "64m" "1g" */

int cr_conf_parse_size(const char *s, uint64_t *out)
{
    uint64_t v = 0, mult = 1;
    const char *p = s;

    if (!isdigit((unsigned char)*p))
        return CR_ERROR;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return CR_ERROR;
        v = v * 10 + d;
    }
    switch (*p) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mult = KB;
        p++;
        break;
    case 'm':
    case 'M':
        mult = MB;
        p++;
        break;
    case 'g':
    case 'G':
        mult = GB;
        p++;
        break;
    default:
        return CR_ERROR;
    }
    if (*p != '\0' || v > UINT64_MAX / mult)
        return CR_ERROR;
    *out = v * mult;
    return CR_OK;
}

static int conf_size_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    char lo[32], hi[32], shown[40];
    const conf_rec_t *big = NULL;
    uint64_t v;
    long long iv;
    int rc;

    conf_size_text(cmd->min, lo, sizeof(lo));
    conf_size_text(cmd->max, hi, sizeof(hi));

    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(s);
        if (cr_conf_parse_size(str, &v) != CR_OK)
            return conf_error(
                cx, s,
                "%s: \"%.64s\" is not a size; use a number of bytes or "
                "a number with a k, m or g suffix like \"64m\", from %s to %s",
                cmd->name, str, lo, hi);
        snprintf(shown, sizeof(shown), "%.32s", str);
    } else {
        rc = conf_get_int(cx, s, &iv, &big);
        if (rc == CR_ERROR)
            return conf_error(cx, s,
                              "%s: expected a size, got %s; use a number of bytes or "
                              "a string like \"64m\", from %s to %s",
                              cmd->name, conf_type_name(s), lo, hi);
        if (rc == CR_AGAIN || iv < 0)
            return conf_error(
                cx, s, "%s: %s is out of range; use a size from %s to %s", cmd->name,
                rc == CR_AGAIN ? big->text
                               : (snprintf(shown, sizeof(shown), "%lld", iv), shown),
                lo, hi);
        v = (uint64_t)iv;
        snprintf(shown, sizeof(shown), "%" PRIu64, v);
    }
    if (v < cmd->min || v > cmd->max)
        return conf_error(cx, s, "%s: %s is out of range; use a size from %s to %s",
                          cmd->name, shown, lo, hi);
    *CONF_FIELD(cx->c, cmd, uint64_t) = v;
    return CR_OK;
}

static int conf_size_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    *CONF_FIELD(cx->c, cmd, uint64_t) = cmd->def;
    return CR_OK;
}

static void conf_size_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    uint64_t v = *CONF_FIELD(c, cmd, const uint64_t);
    char buf[32];

    /* Plain bytes (what the program uses), the short form as a reminder. */
    fprintf(out, "%s = %" PRIu64 ";", cmd->name, v);
    if (v % KB == 0)
        fprintf(out, "  # %s", conf_size_text(v, buf, sizeof(buf)));
    fputc('\n', out);
}

static const conf_type_t conf_type_size = {conf_size_set, conf_size_init, conf_size_dump,
                                           conf_same_mem};

/* workers: "auto" (online CPUs) or min..max */

static unsigned conf_online_cpus(const conf_cmd_t *cmd)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < (long)cmd->min)
        return (unsigned)cmd->min;
    if ((uint64_t)n > cmd->max)
        return (unsigned)cmd->max;
    return (unsigned)n;
}

static int conf_workers_set(conf_ctx_t *cx, const conf_cmd_t *cmd,
                            const config_setting_t *s)
{
    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(s);
        if (strcmp(str, "auto") != 0)
            return conf_error(cx, s,
                              "%s: \"%.64s\" is not valid; use \"auto\" or an integer "
                              "from %" PRIu64 " to %" PRIu64,
                              cmd->name, str, cmd->min, cmd->max);
        cx->c->workers_auto = true;
        *CONF_FIELD(cx->c, cmd, unsigned) = conf_online_cpus(cmd);
        return CR_OK;
    }
    if (config_setting_type(s) != CONFIG_TYPE_INT &&
        config_setting_type(s) != CONFIG_TYPE_INT64)
        return conf_error(cx, s,
                          "%s: expected \"auto\" or an integer, got %s; use \"auto\" "
                          "or an integer from %" PRIu64 " to %" PRIu64,
                          cmd->name, conf_type_name(s), cmd->min, cmd->max);
    {
        const conf_rec_t *big = NULL;
        long long v;
        int rc = conf_get_int(cx, s, &v, &big);
        if (rc == CR_AGAIN)
            return conf_error(
                cx, s,
                "%s: %s is out of range; use \"auto\" or an integer from %" PRIu64
                " to %" PRIu64,
                cmd->name, big->text, cmd->min, cmd->max);
        if (v < 0 || (uint64_t)v < cmd->min || (uint64_t)v > cmd->max)
            return conf_error(cx, s,
                              "%s: %lld is out of range; use \"auto\" or an integer "
                              "from %" PRIu64 " to %" PRIu64,
                              cmd->name, v, cmd->min, cmd->max);
        cx->c->workers_auto = false;
        *CONF_FIELD(cx->c, cmd, unsigned) = (unsigned)v;
    }
    return CR_OK;
}

static int conf_workers_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    cx->c->workers_auto = true;
    *CONF_FIELD(cx->c, cmd, unsigned) = conf_online_cpus(cmd);
    return CR_OK;
}

static void conf_workers_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    /* "auto" stays "auto", so a dump moved to a bigger machine still uses it. */
    if (c->workers_auto)
        fprintf(out, "%s = \"auto\";  # %u online CPUs now\n", cmd->name,
                *CONF_FIELD(c, cmd, const unsigned));
    else
        fprintf(out, "%s = %u;\n", cmd->name, *CONF_FIELD(c, cmd, const unsigned));
}

/* The number counts, not how it was written: "auto" and the same number of
 * CPUs need no new workers. */
static const conf_type_t conf_type_workers = {conf_workers_set, conf_workers_init,
                                              conf_workers_dump, conf_same_mem};

/* path: a string, relative ones resolved against the prefix. cmd->literal
 * ("stderr") stays as is; "" (no file) is allowed unless cmd->required;
 * cmd->off ("off") means no file too and is stored as "". */

static int conf_path_store(conf_ctx_t *cx, const conf_cmd_t *cmd, const char *v)
{
    char *dst = CONF_FIELD(cx->c, cmd, char);

    if (cmd->off != NULL && strcmp(v, cmd->off) == 0)
        v = "";
    if (v[0] == '\0' || (cmd->literal != NULL && strcmp(v, cmd->literal) == 0)) {
        snprintf(dst, PATH_MAX, "%s", v);
        return CR_OK;
    }
    return conf_resolve(cx->c->prefix, v, dst, PATH_MAX);
}

static int conf_path_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    const char *v;

    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_error(cx, s, "%s: expected a string, got %s; %s", cmd->name,
                          conf_type_name(s), cmd->hint);
    v = config_setting_get_string(s);
    if (v[0] == '\0' && cmd->required)
        return conf_error(cx, s, "%s: the path is empty; %s", cmd->name, cmd->hint);
    if (conf_path_store(cx, cmd, v) != CR_OK)
        return conf_error(cx, s,
                          "%s: the path is too long once resolved against the prefix "
                          "%s (the limit is %d bytes); use a shorter path",
                          cmd->name, cx->c->prefix, PATH_MAX - 1);
    return CR_OK;
}

static int conf_path_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    if (conf_path_store(cx, cmd, cmd->def_str) != CR_OK)
        return conf_error_at(cx, NULL, 0,
                             "%s: the default \"%s\" is too long once "
                             "resolved against the prefix; use a shorter prefix with -p",
                             cmd->name, cmd->def_str);
    return CR_OK;
}

static void conf_path_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    const char *v = CONF_FIELD(c, cmd, const char);

    fprintf(out, "%s = \"", cmd->name);
    conf_put_escaped(out, v[0] == '\0' && cmd->off != NULL ? cmd->off : v);
    fputs("\";\n", out);
}

static const conf_type_t conf_type_path = {conf_path_set, conf_path_init, conf_path_dump,
                                           conf_same_str};

/* log level: one of the nginx names */

static int conf_level_set(conf_ctx_t *cx, const conf_cmd_t *cmd,
                          const config_setting_t *s)
{
    static const char levels[] = "debug, info, notice, warn, error, crit, alert, emerg";
    int level;

    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_error(cx, s, "%s: expected a string, got %s; use one of %s",
                          cmd->name, conf_type_name(s), levels);
    level = cr_log_level_parse(config_setting_get_string(s));
    if (level < 0)
        return conf_error(cx, s, "%s: \"%.64s\" is not a log level; use one of %s",
                          cmd->name, config_setting_get_string(s), levels);
    *CONF_FIELD(cx->c, cmd, int) = level;
    return CR_OK;
}

static int conf_level_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    *CONF_FIELD(cx->c, cmd, int) = cr_log_level_parse(cmd->def_str);
    return CR_OK;
}

static void conf_level_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = \"%s\";\n", cmd->name,
            cr_log_level_name(*CONF_FIELD(c, cmd, const int)));
}

static const conf_type_t conf_type_level = {conf_level_set, conf_level_init,
                                            conf_level_dump, conf_same_mem};

/* boolean: libconfig's true or false, nothing else ("yes", 1 are mistakes) */

static int conf_bool_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return conf_error(cx, s,
                          "%s: expected true or false, got %s; write %s = true; or "
                          "%s = false; (no quotes)",
                          cmd->name, conf_type_name(s), cmd->name, cmd->name);
    *CONF_FIELD(cx->c, cmd, bool) = config_setting_get_bool(s) != 0;
    return CR_OK;
}

static int conf_bool_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    *CONF_FIELD(cx->c, cmd, bool) = cmd->def != 0;
    return CR_OK;
}

static void conf_bool_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = %s;\n", cmd->name,
            *CONF_FIELD(c, cmd, const bool) ? "true" : "false");
}

static const conf_type_t conf_type_bool = {conf_bool_set, conf_bool_init, conf_bool_dump,
                                           conf_same_mem};

/* user, group: a name that exists on this system now (getpwnam, getgrnam), or
 * "" for none. Checked at load time so that a typo is a -t error, not a
 * child that cannot drop its privileges. */

/* Does the account exist? CR_OK, CR_AGAIN (no such name) or CR_ERROR with
 * errno (the lookup itself failed). */
static int conf_account_exists(bool group, const char *name)
{
    errno = 0;
    if (group ? getgrnam(name) != NULL : getpwnam(name) != NULL)
        return CR_OK;
    /* getpwnam(3): "not found" may come as 0 or as one of these. */
    if (errno == 0 || errno == ENOENT || errno == ESRCH || errno == EBADF ||
        errno == EPERM)
        return CR_AGAIN;
    return CR_ERROR;
}

/* The check shared by user, group and a listener's group: `what` names the
 * setting in messages ("user", "listen: \"unix:x\": group"). */
static int conf_account_check(conf_ctx_t *cx, const config_setting_t *s, unsigned line,
                              const char *what, bool group, const char *name, size_t max)
{
    if (strlen(name) >= max)
        return conf_error_line(cx, s, line,
                               "%s: \"%.32s...\" is too long (at most %zu bytes)", what,
                               name, max - 1);
    switch (conf_account_exists(group, name)) {
    case CR_AGAIN:
        return conf_error_line(cx, s, line,
                               "%s: there is no %s \"%s\" on this system; create it "
                               "(%s) or name an existing one",
                               what, group ? "group" : "user", name,
                               group ? "groupadd" : "useradd");
    case CR_ERROR:
        return conf_error_line(cx, s, line,
                               "%s: cannot look up the %s \"%s\": %s; check "
                               "/etc/nsswitch.conf",
                               what, group ? "group" : "user", name, strerror(errno));
    }
    return CR_OK;
}

static int conf_account_set(conf_ctx_t *cx, const conf_cmd_t *cmd,
                            const config_setting_t *s)
{
    const char *v;

    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_error(cx, s, "%s: expected a string, got %s; %s", cmd->name,
                          conf_type_name(s), cmd->hint);
    v = config_setting_get_string(s);
    if (v[0] != '\0' &&
        conf_account_check(cx, s, (unsigned)config_setting_source_line(s), cmd->name,
                           cmd->type == &conf_type_group, v, cmd->width) != CR_OK)
        return CR_ERROR;
    snprintf(CONF_FIELD(cx->c, cmd, char), cmd->width, "%s", v);
    return CR_OK;
}

static int conf_account_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    snprintf(CONF_FIELD(cx->c, cmd, char), cmd->width, "%s", cmd->def_str);
    return CR_OK;
}

static void conf_account_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = \"", cmd->name);
    conf_put_escaped(out, CONF_FIELD(c, cmd, const char));
    fputs("\";\n", out);
}

static const conf_type_t conf_type_user = {conf_account_set, conf_account_init,
                                           conf_account_dump, conf_same_str};
static const conf_type_t conf_type_group = {conf_account_set, conf_account_init,
                                            conf_account_dump, conf_same_str};

/* rlimit: a size in bytes (min..max), "unlimited" (INT64_MAX) or -1 (leave
 * the limit crunchd was started with: the default) */

#define RLIMIT_LEAVE (-1)

static int conf_rlimit_set(conf_ctx_t *cx, const conf_cmd_t *cmd,
                           const config_setting_t *s)
{
    char hi[32], shown[40];
    const conf_rec_t *big = NULL;
    uint64_t v;
    long long iv;
    int rc;

    conf_size_text(cmd->max, hi, sizeof(hi));
    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(s);
        if (strcmp(str, "unlimited") == 0) {
            *CONF_FIELD(cx->c, cmd, int64_t) = INT64_MAX;
            return CR_OK;
        }
        if (cr_conf_parse_size(str, &v) != CR_OK)
            return conf_error(cx, s,
                              "%s: \"%.64s\" is not a size; use \"unlimited\", -1 (leave "
                              "as is) or a size like \"1g\", from 0 to %s",
                              cmd->name, str, hi);
        snprintf(shown, sizeof(shown), "%.32s", str);
    } else {
        rc = conf_get_int(cx, s, &iv, &big);
        if (rc == CR_ERROR)
            return conf_error(cx, s,
                              "%s: expected a size, got %s; use \"unlimited\", -1 (leave "
                              "as is) or a size like \"1g\", from 0 to %s",
                              cmd->name, conf_type_name(s), hi);
        if (rc == CR_OK && iv == RLIMIT_LEAVE) {
            *CONF_FIELD(cx->c, cmd, int64_t) = RLIMIT_LEAVE;
            return CR_OK;
        }
        if (rc == CR_AGAIN || iv < 0)
            return conf_error(cx, s,
                              "%s: %s is out of range; use \"unlimited\", -1 (leave as "
                              "is) or a size from 0 to %s",
                              cmd->name,
                              rc == CR_AGAIN
                                  ? big->text
                                  : (snprintf(shown, sizeof(shown), "%lld", iv), shown),
                              hi);
        v = (uint64_t)iv;
        snprintf(shown, sizeof(shown), "%" PRIu64, v);
    }
    if (v < cmd->min || v > cmd->max)
        return conf_error(
            cx, s,
            "%s: %s is out of range; use \"unlimited\", -1 (leave as is) or "
            "a size from 0 to %s",
            cmd->name, shown, hi);
    *CONF_FIELD(cx->c, cmd, int64_t) = (int64_t)v;
    return CR_OK;
}

static int conf_rlimit_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    *CONF_FIELD(cx->c, cmd, int64_t) = RLIMIT_LEAVE;
    return CR_OK;
}

static void conf_rlimit_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    int64_t v = *CONF_FIELD(c, cmd, const int64_t);
    char buf[32];

    if (v == RLIMIT_LEAVE)
        fprintf(out, "%s = -1;  # leave as inherited\n", cmd->name);
    else if (v == INT64_MAX)
        fprintf(out, "%s = \"unlimited\";\n", cmd->name);
    else if (v != 0 && v % (int64_t)KB == 0)
        fprintf(out, "%s = %" PRId64 ";  # %s\n", cmd->name, v,
                conf_size_text((uint64_t)v, buf, sizeof(buf)));
    else
        fprintf(out, "%s = %" PRId64 ";\n", cmd->name, v);
}

static const conf_type_t conf_type_rlimit = {conf_rlimit_set, conf_rlimit_init,
                                             conf_rlimit_dump, conf_same_mem};

/* enum: one of cmd->words, stored as its index (an int-sized enum) */

static void conf_enum_list(const conf_cmd_t *cmd, char *buf, size_t len)
{
    size_t n = 0;

    buf[0] = '\0';
    for (unsigned i = 0; cmd->words[i] != NULL && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s\"%s\"",
                              i == 0                      ? ""
                              : cmd->words[i + 1] == NULL ? " or "
                                                          : ", ",
                              cmd->words[i]);
}

static int conf_enum_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    char words[256];
    const char *v;

    conf_enum_list(cmd, words, sizeof(words));
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_error(cx, s, "%s: expected a string, got %s; use %s", cmd->name,
                          conf_type_name(s), words);
    v = config_setting_get_string(s);
    for (int i = 0; cmd->words[i] != NULL; i++) {
        if (strcmp(v, cmd->words[i]) == 0) {
            *CONF_FIELD(cx->c, cmd, int) = i;
            return CR_OK;
        }
    }
    return conf_error(cx, s, "%s: \"%.64s\" is not valid; use %s", cmd->name, v, words);
}

static int conf_enum_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    *CONF_FIELD(cx->c, cmd, int) = (int)cmd->def;
    return CR_OK;
}

static void conf_enum_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = \"%s\";\n", cmd->name, cmd->words[*CONF_FIELD(c, cmd, const int)]);
}

static const conf_type_t conf_type_enum = {conf_enum_set, conf_enum_init, conf_enum_dump,
                                           conf_same_mem};

/* listen: list or array of "host:port", "[v6]:port", "unix:path" */

#define LISTEN_FORMS                                                                     \
    "use \"host:port\" with a numeric IPv4 address, \"*\" or \"localhost\", "            \
    "\"[v6]:port\" or \"unix:/path\""

static int conf_listen_port(conf_ctx_t *cx, const config_setting_t *s, unsigned line,
                            const char *text, const char *port, uint16_t *out)
{
    unsigned long v = 0;

    if (*port == '\0')
        return conf_error_line(cx, s, line, "listen: \"%s\": the port is missing; %s",
                               text, LISTEN_FORMS);
    for (const char *p = port; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return conf_error_line(
                cx, s, line,
                "listen: \"%s\": the port \"%s\" is not a number; use a "
                "port from 1 to 65535",
                text, port);
        if (v <= 65535)
            v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v < 1 || v > 65535)
        return conf_error_line(
            cx, s, line,
            "listen: \"%s\": the port %s is out of range; use a port from "
            "1 to 65535",
            text, port);
    *out = htons((uint16_t)v);
    return CR_OK;
}

/* Parse one listen string into l (text already set). */
static int conf_listen_parse(conf_ctx_t *cx, const config_setting_t *s, unsigned line,
                             cr_listen_conf_t *l)
{
    char host[sizeof(l->text)];
    const char *text = l->text, *colon;
    uint16_t port;

    memset(&l->addr, 0, sizeof(l->addr));

    if (strncmp(text, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&l->addr;
        char full[PATH_MAX];
        size_t n;

        if (text[5] == '\0')
            return conf_error_line(cx, s, line,
                                   "listen: \"%s\": the path is missing; write "
                                   "\"unix:/path/to/crunchd.sock\"",
                                   text);
        if (conf_resolve(cx->c->prefix, text + 5, full, sizeof(full)) != CR_OK ||
            (n = strlen(full)) >= sizeof(sun->sun_path) || n >= sizeof(l->path))
            return conf_error_line(
                cx, s, line,
                "listen: \"%s\": the socket path %s is too long (at "
                "most %zu bytes); use a shorter path or a shorter prefix (-p)",
                text, full, sizeof(sun->sun_path) - 1);
        l->kind = CR_LISTEN_UNIX;
        memcpy(l->path, full, n + 1);
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, full, n + 1);
        l->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return CR_OK;
    }

    l->kind = CR_LISTEN_TCP;
    l->path[0] = '\0';

    if (text[0] == '[') {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&l->addr;
        const char *end = strchr(text, ']');

        if (end == NULL)
            return conf_error_line(cx, s, line,
                                   "listen: \"%s\": the ']' after the IPv6 address is "
                                   "missing; write \"[::1]:50051\"",
                                   text);
        snprintf(host, sizeof(host), "%.*s", (int)(end - text - 1), text + 1);
        if (end[1] != ':')
            return conf_error_line(
                cx, s, line, "listen: \"%s\": the port is missing; write \"[%s]:50051\"",
                text, host);
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return conf_error_line(
                cx, s, line,
                "listen: \"%s\": \"%s\" is not a numeric IPv6 address; "
                "use one like \"[::1]:50051\" or \"[::]:50051\" (no DNS lookups)",
                text, host);
        if (conf_listen_port(cx, s, line, text, end + 2, &port) != CR_OK)
            return CR_ERROR;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = port;
        l->addrlen = sizeof(*sin6);
        return CR_OK;
    }

    {
        struct sockaddr_in *sin = (struct sockaddr_in *)&l->addr;

        colon = strrchr(text, ':');
        if (colon == NULL)
            return conf_error_line(
                cx, s, line,
                "listen: \"%s\": the port is missing; write \"host:port\", "
                "like \"127.0.0.1:50051\"",
                text);
        if (memchr(text, ':', (size_t)(colon - text)) != NULL)
            return conf_error_line(cx, s, line,
                                   "listen: \"%s\": an IPv6 address needs brackets, like "
                                   "\"[::1]:50051\"",
                                   text);
        snprintf(host, sizeof(host), "%.*s", (int)(colon - text), text);
        if (host[0] == '\0')
            return conf_error_line(cx, s, line,
                                   "listen: \"%s\": the host is missing; use \"*%s\" for "
                                   "every address or \"127.0.0.1%s\" for this host only",
                                   text, colon, colon);
        if (strcmp(host, "*") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (strcmp(host, "localhost") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return conf_error_line(
                cx, s, line,
                "listen: \"%s\": \"%s\" is not a numeric IPv4 address; "
                "use digits like \"127.0.0.1\", \"*\" or \"localhost\" (crunchd "
                "does no DNS lookups)",
                text, host);
        if (conf_listen_port(cx, s, line, text, colon + 1, &port) != CR_OK)
            return CR_ERROR;
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        l->addrlen = sizeof(*sin);
    }
    return CR_OK;
}

static bool conf_listen_same(const cr_listen_conf_t *a, const cr_listen_conf_t *b)
{
    if (a->kind != b->kind || a->addrlen != b->addrlen)
        return false;
    if (a->kind == CR_LISTEN_UNIX)
        return strcmp(a->path, b->path) == 0;
    if (a->addr.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->addr, *y = (const void *)&b->addr;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    {
        const struct sockaddr_in6 *x = (const void *)&a->addr,
                                  *y = (const void *)&b->addr;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
}

/* A listener's TLS files must be readable now: a typo or a permission is a
 * -t error, not an acceptor that fails after the reload was taken. Opened
 * (not access(2)) so that ACLs and security modules have their say; O_NONBLOCK
 * so that a FIFO given by mistake cannot hang the load. */
static int conf_tls_file(conf_ctx_t *cx, const config_setting_t *m, const char *addr,
                         char *dst)
{
    const char *name = config_setting_name(m), *v;
    struct stat st;
    int fd;

    if (config_setting_type(m) != CONFIG_TYPE_STRING)
        return conf_error(cx, m,
                          "listen: \"%s\": tls: %s: expected a string (a file path), got "
                          "%s",
                          addr, name, conf_type_name(m));
    v = config_setting_get_string(m);
    if (v[0] == '\0') {
        if (strcmp(name, "client_ca") == 0) { /* "" = none */
            dst[0] = '\0';
            return CR_OK;
        }
        return conf_error(
            cx, m, "listen: \"%s\": tls: %s: the path is empty; give the PEM %s", addr,
            name,
            strcmp(name, "cert") == 0 ? "certificate chain file" : "private key file");
    }
    if (conf_resolve(cx->c->prefix, v, dst, PATH_MAX) != CR_OK)
        return conf_error(cx, m,
                          "listen: \"%s\": tls: %s: the path is too long once resolved "
                          "against the prefix %s (the limit is %d bytes); use a shorter "
                          "path",
                          addr, name, cx->c->prefix, PATH_MAX - 1);
    fd = open(dst, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd == -1) {
        int e = errno;
        return conf_error(
            cx, m, "listen: \"%s\": tls: %s %s: %s; %s", addr, name, dst, strerror(e),
            e == EACCES   ? "make it readable by the user crunchd runs as"
            : v[0] == '/' ? "check the path"
                          : "check the path (a relative path is under the prefix)");
    }
    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        close(fd);
        return conf_error(cx, m,
                          "listen: \"%s\": tls: %s %s: not a regular file; give the "
                          "PEM file itself",
                          addr, name, dst);
    }
    close(fd);
    return CR_OK;
}

/* tls = { cert = ...; key = ...; client_ca = ...; verify_client = ...; } */
static int conf_listen_tls(conf_ctx_t *cx, const config_setting_t *t, cr_listen_conf_t *l)
{
    static const char *const keys[] = {"cert", "key", "client_ca", "verify_client", NULL};
    const config_setting_t *verify = NULL;
    cr_tls_conf_t *tls = &l->tls;
    bool have_cert = false, have_key = false;
    int n;

    if (config_setting_type(t) != CONFIG_TYPE_GROUP)
        return conf_error(cx, t,
                          "listen: \"%s\": tls: expected a group, got %s; write tls = { "
                          "cert = \"server.pem\"; key = \"server.key\"; };",
                          l->text, conf_type_name(t));
    n = config_setting_length(t);
    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(t, (unsigned)i);
        const char *name = config_setting_name(m), *near;

        if (strcmp(name, "cert") == 0) {
            if (conf_tls_file(cx, m, l->text, tls->cert) != CR_OK)
                return CR_ERROR;
            have_cert = true;
        } else if (strcmp(name, "key") == 0) {
            if (conf_tls_file(cx, m, l->text, tls->key) != CR_OK)
                return CR_ERROR;
            have_key = true;
        } else if (strcmp(name, "client_ca") == 0) {
            if (conf_tls_file(cx, m, l->text, tls->client_ca) != CR_OK)
                return CR_ERROR;
        } else if (strcmp(name, "verify_client") == 0) {
            if (config_setting_type(m) != CONFIG_TYPE_BOOL)
                return conf_error(
                    cx, m,
                    "listen: \"%s\": tls: verify_client: expected true or "
                    "false, got %s; write verify_client = true; (no quotes)",
                    l->text, conf_type_name(m));
            tls->verify_client = config_setting_get_bool(m) != 0;
            verify = m;
        } else if ((near = conf_suggest(name, keys)) != NULL) {
            return conf_error(cx, m,
                              "listen: \"%s\": tls: unknown key \"%s\"; did you mean "
                              "\"%s\"? (tls takes cert, key, client_ca, verify_client)",
                              l->text, name, near);
        } else {
            return conf_error(cx, m,
                              "listen: \"%s\": tls: unknown key \"%s\"; tls takes cert, "
                              "key, client_ca, verify_client",
                              l->text, name);
        }
    }
    if (!have_cert || !have_key)
        return conf_error(cx, t,
                          "listen: \"%s\": tls: %s is missing; add %s = \"%s\"; (the PEM "
                          "%s)",
                          l->text, have_cert ? "key" : "cert", have_cert ? "key" : "cert",
                          have_cert ? "server.key" : "server.pem",
                          have_cert ? "private key" : "certificate chain");
    if (tls->verify_client && tls->client_ca[0] == '\0')
        return conf_error(
            cx, verify,
            "listen: \"%s\": tls: verify_client = true needs client_ca, the "
            "CA bundle that signs client certificates; add client_ca = "
            "\"ca.pem\";",
            l->text);
    tls->on = true;
    return CR_OK;
}

/* A unix socket's mode: a string of octal digits ("0660"), or an integer
 * written in octal (0660) or hex. A decimal integer is refused: "660" meant
 * as octal would be a very different mode. */
static int conf_listen_mode(conf_ctx_t *cx, const config_setting_t *m, unsigned elem,
                            cr_listen_conf_t *l)
{
#define MODE_FIX "write it in octal, like \"0660\" (owner and group read and write)"
    const conf_rec_t *big = NULL, *oct;
    long long v = 0;
    char shown[40];

    if (config_setting_type(m) == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(m), *p = str;

        if (*p == '\0')
            return conf_error(cx, m, "listen: \"%s\": mode \"\" is empty; " MODE_FIX,
                              l->text);
        for (; *p; p++) {
            if (*p < '0' || *p > '7')
                return conf_error(cx, m,
                                  "listen: \"%s\": mode \"%.32s\" is not an octal "
                                  "number; " MODE_FIX,
                                  l->text, str);
            if (v <= 07777)
                v = v * 8 + (*p - '0');
        }
        snprintf(shown, sizeof(shown), "\"%.32s\"", str);
    } else if ((oct = conf_rec_find(cx, m, CONF_REC_OCTAL, elem)) != NULL) {
        if (!oct->fits)
            return conf_error(cx, m,
                              "listen: \"%s\": mode %s is not an octal number; " MODE_FIX,
                              l->text, oct->text);
        v = oct->value;
        snprintf(shown, sizeof(shown), "%s", oct->text);
    } else {
        switch (conf_get_int(cx, m, &v, &big)) {
        case CR_ERROR:
            return conf_error(
                cx, m, "listen: \"%s\": mode: expected a string, got %s; " MODE_FIX,
                l->text, conf_type_name(m));
        case CR_AGAIN:
            return conf_error(cx, m, "listen: \"%s\": mode %s is out of range; " MODE_FIX,
                              l->text, big->text);
        }
        if (v != 0 && config_setting_get_format(m) != CONFIG_FORMAT_HEX)
            return conf_error(cx, m,
                              "listen: \"%s\": mode %lld is a decimal number; write the "
                              "mode in octal with a leading zero, like 0660, or as a "
                              "string, like \"0660\"",
                              l->text, v);
        if (v < 0)
            snprintf(shown, sizeof(shown), "-0x%llx", 0ull - (unsigned long long)v);
        else
            snprintf(shown, sizeof(shown), "0x%llx", (unsigned long long)v);
    }
    if (v < 0 || v > 07777)
        return conf_error(cx, m,
                          "listen: \"%s\": mode %s is out of range; use a mode from 0 to "
                          "07777, like \"0660\"",
                          l->text, shown);
    l->mode = (int)v;
    return CR_OK;
#undef MODE_FIX
}

/* { address = ...; tls = { ... }; mode = ...; group = ...; } */
static int conf_listen_group(conf_ctx_t *cx, const config_setting_t *e, unsigned elem,
                             unsigned line, cr_listen_conf_t *l)
{
    static const char *const keys[] = {"address", "tls", "mode", "group", NULL};
    const config_setting_t *addr = NULL, *tls = NULL, *mode = NULL, *grp = NULL;
    int n = config_setting_length(e);
    const char *str;

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(e, (unsigned)i);
        const char *name = config_setting_name(m), *near;

        if (strcmp(name, "address") == 0)
            addr = m;
        else if (strcmp(name, "tls") == 0)
            tls = m;
        else if (strcmp(name, "mode") == 0)
            mode = m;
        else if (strcmp(name, "group") == 0)
            grp = m;
        else if ((near = conf_suggest(name, keys)) != NULL)
            return conf_error(cx, m,
                              "listen: unknown key \"%s\"; did you mean \"%s\"? (a "
                              "listener takes address, tls, mode, group)",
                              name, near);
        else
            return conf_error(
                cx, m,
                "listen: unknown key \"%s\"; a listener takes address, tls, "
                "mode, group",
                name);
    }
    if (addr == NULL)
        return conf_error_line(cx, e, line,
                               "listen: this listener has no address; add address = "
                               "\"127.0.0.1:50051\"; (or \"unix:/path\")");
    line = (unsigned)config_setting_source_line(addr);
    if (config_setting_type(addr) != CONFIG_TYPE_STRING)
        return conf_error(cx, addr,
                          "listen: address: expected a string like \"127.0.0.1:50051\", "
                          "got %s",
                          conf_type_name(addr));
    str = config_setting_get_string(addr);
    if (strlen(str) >= sizeof(l->text))
        return conf_error(
            cx, addr, "listen: the address \"%.32s...\" is too long (at most %zu bytes)",
            str, sizeof(l->text) - 1);
    strcpy(l->text, str);
    l->line = (int)line;
    if (conf_listen_parse(cx, addr, line, l) != CR_OK)
        return CR_ERROR;

    if (tls != NULL) {
        if (l->kind != CR_LISTEN_TCP)
            return conf_error(cx, tls,
                              "listen: \"%s\": tls is for TCP addresses only; remove it "
                              "(limit who may connect to a unix socket with mode and "
                              "group)",
                              l->text);
        if (conf_listen_tls(cx, tls, l) != CR_OK)
            return CR_ERROR;
    }
    if (mode != NULL) {
        if (l->kind != CR_LISTEN_UNIX)
            return conf_error(cx, mode,
                              "listen: \"%s\": mode is for unix: sockets only; remove it",
                              l->text);
        if (conf_listen_mode(cx, mode, elem, l) != CR_OK)
            return CR_ERROR;
    }
    if (grp != NULL) {
        char what[sizeof(l->text) + 32];

        if (l->kind != CR_LISTEN_UNIX)
            return conf_error(
                cx, grp, "listen: \"%s\": group is for unix: sockets only; remove it",
                l->text);
        snprintf(what, sizeof(what), "listen: \"%s\": group", l->text);
        if (config_setting_type(grp) != CONFIG_TYPE_STRING)
            return conf_error(cx, grp, "%s: expected a string (a group name), got %s",
                              what, conf_type_name(grp));
        str = config_setting_get_string(grp);
        if (str[0] == '\0')
            return conf_error(
                cx, grp, "%s: the name is empty; name a group, or remove group", what);
        if (conf_account_check(cx, grp, (unsigned)config_setting_source_line(grp), what,
                               true, str, sizeof(l->group)) != CR_OK)
            return CR_ERROR;
        strcpy(l->group, str);
    }
    return CR_OK;
}

static int conf_listen_set(conf_ctx_t *cx, const conf_cmd_t *cmd,
                           const config_setting_t *s)
{
    int type = config_setting_type(s), n;
    cr_conf_t *c = cx->c;

    if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
        return conf_error(cx, s,
                          "listen: expected a list of addresses, got %s; write "
                          "listen = [ \"127.0.0.1:50051\" ];",
                          conf_type_name(s));
    n = config_setting_length(s);
    if (n < (int)cmd->min)
        return conf_error(cx, s,
                          "listen: the list is empty; give at least one address, like "
                          "listen = [ \"127.0.0.1:50051\" ];");
    if (n > (int)cmd->max)
        return conf_error(cx, s, "listen: %d addresses; at most %" PRIu64 " are allowed",
                          n, cmd->max);

    c->nlisten = 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        unsigned line = conf_elem_line(cx, s, (unsigned)i, e);
        cr_listen_conf_t *l = &c->listen[i];
        const char *str;

        memset(l, 0, sizeof(*l));
        l->mode = -1;
        if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
            if (conf_listen_group(cx, e, (unsigned)i, line, l) != CR_OK)
                return CR_ERROR;
            line = (unsigned)l->line;
        } else if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            return conf_error_line(
                cx, e, line,
                "listen: expected a string like \"127.0.0.1:50051\" or "
                "a group like { address = \"127.0.0.1:50051\"; }, got %s",
                conf_type_name(e));
        } else {
            str = config_setting_get_string(e);
            if (strlen(str) >= sizeof(l->text))
                return conf_error_line(cx, e, line,
                                       "listen: the address \"%.32s...\" is too long "
                                       "(at most %zu bytes)",
                                       str, sizeof(l->text) - 1);
            strcpy(l->text, str);
            l->line = (int)line;
            if (conf_listen_parse(cx, e, line, l) != CR_OK)
                return CR_ERROR;
        }
        for (int j = 0; j < i; j++) {
            if (conf_listen_same(&c->listen[j], l))
                return conf_error_line(cx, e, line,
                                       "listen: \"%s\" is the same address as "
                                       "\"%s\" on line %d; remove one of them",
                                       l->text, c->listen[j].text, c->listen[j].line);
        }
        c->nlisten = (unsigned)i + 1;
    }
    return CR_OK;
}

static int conf_listen_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    (void)cmd;
    cx->c->nlisten = 0;
    return CR_OK;
}

/* Does a listener have more than an address (then -T prints the group form)? */
static bool conf_listen_is_group(const cr_listen_conf_t *l)
{
    return l->tls.on || l->mode != -1 || l->group[0] != '\0';
}

static void conf_dump_str(FILE *out, const char *indent, const char *name, const char *v)
{
    fprintf(out, "%s%s = \"", indent, name);
    conf_put_escaped(out, v);
    fputs("\";\n", out);
}

static void conf_listen_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    bool groups = false;

    /* A group cannot sit in an array [ ]: use a list ( ) when there is one. */
    for (unsigned i = 0; i < c->nlisten; i++)
        groups = groups || conf_listen_is_group(&c->listen[i]);
    fprintf(out, "%s = %c%s", cmd->name, groups ? '(' : '[', c->nlisten ? "\n" : "");
    for (unsigned i = 0; i < c->nlisten; i++) {
        const cr_listen_conf_t *l = &c->listen[i];
        const char *comma = i + 1 < c->nlisten ? "," : "";
        /* Relative unix paths depend on the prefix: show where it points. */
        bool where = l->kind == CR_LISTEN_UNIX && strcmp(l->text + 5, l->path) != 0;

        if (!conf_listen_is_group(l)) {
            fputs("    \"", out);
            conf_put_escaped(out, l->text);
            fprintf(out, "\"%s", comma);
        } else {
            fputs("    {\n        address = \"", out);
            conf_put_escaped(out, l->text);
            fputs("\";", out);
        }
        if (where) {
            fputs("  # ", out);
            conf_put_escaped(out, l->path);
        }
        fputc('\n', out);
        if (!conf_listen_is_group(l))
            continue;
        if (l->tls.on) {
            fputs("        tls = {\n", out);
            conf_dump_str(out, "            ", "cert", l->tls.cert);
            conf_dump_str(out, "            ", "key", l->tls.key);
            if (l->tls.client_ca[0] != '\0')
                conf_dump_str(out, "            ", "client_ca", l->tls.client_ca);
            fprintf(out, "            verify_client = %s;\n        };\n",
                    l->tls.verify_client ? "true" : "false");
        }
        if (l->mode != -1)
            fprintf(out, "        mode = \"%04o\";\n", (unsigned)l->mode);
        if (l->group[0] != '\0')
            conf_dump_str(out, "        ", "group", l->group);
        fprintf(out, "    }%s\n", comma);
    }
    fprintf(out, "%s%c;\n", c->nlisten ? "" : " ", groups ? ')' : ']');
}

static bool conf_listen_entry_same(const cr_listen_conf_t *x, const cr_listen_conf_t *y)
{
    const cr_tls_conf_t *a = &x->tls, *b = &y->tls;

    if (strcmp(x->text, y->text) != 0 || strcmp(x->path, y->path) != 0 ||
        x->mode != y->mode || strcmp(x->group, y->group) != 0 || a->on != b->on)
        return false;
    return !a->on || (strcmp(a->cert, b->cert) == 0 && strcmp(a->key, b->key) == 0 &&
                      strcmp(a->client_ca, b->client_ca) == 0 &&
                      a->verify_client == b->verify_client);
}

/* The same listeners, in any order (addresses are unique within a file). */
static bool conf_listen_same_set(const cr_conf_t *a, const cr_conf_t *b,
                                 const conf_cmd_t *cmd)
{
    (void)cmd;
    if (a->nlisten != b->nlisten)
        return false;
    for (unsigned i = 0; i < a->nlisten; i++) {
        unsigned j;
        for (j = 0; j < b->nlisten; j++) {
            if (conf_listen_entry_same(&a->listen[i], &b->listen[j]))
                break;
        }
        if (j == b->nlisten)
            return false;
    }
    return true;
}

static const conf_type_t conf_type_listen = {conf_listen_set, conf_listen_init,
                                             conf_listen_dump, conf_listen_same_set};

/* --- modules ---------------------------------------------------------------- */

/* modules = ( { path = "x.so"; config = "..."; }, ... ); only the file is
 * checked here: loading is the probe's job (module.c), never the parser's. */
static int conf_modules_set(conf_ctx_t *cx, const conf_cmd_t *cmd, const config_setting_t *s)
{
    int type = config_setting_type(s), n;
    cr_conf_t *c = cx->c;

    if (type != CONFIG_TYPE_LIST)
        return conf_error(cx, s,
                          "modules: expected a list of groups, got %s; write modules = "
                          "( { path = \"modules/x.so\"; } );",
                          conf_type_name(s));
    n = config_setting_length(s);
    if (n > (int)cmd->max)
        return conf_error(cx, s, "modules: %d modules; at most %" PRIu64 " are allowed", n,
                          cmd->max);
    c->nmodules = 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        unsigned line = conf_elem_line(cx, s, (unsigned)i, e);
        cr_module_conf_t *m = &c->modules[i];
        const config_setting_t *path = NULL, *cfg = NULL;

        memset(m, 0, sizeof(*m));
        if (config_setting_type(e) != CONFIG_TYPE_GROUP)
            return conf_error_line(cx, e, line,
                                   "modules[%d]: expected a group like { path = "
                                   "\"modules/x.so\"; }, got %s",
                                   i, conf_type_name(e));
        for (int k = 0; k < config_setting_length(e); k++) {
            const config_setting_t *x = config_setting_get_elem(e, (unsigned)k);
            const char *name = config_setting_name(x);
            if (strcmp(name, "path") == 0)
                path = x;
            else if (strcmp(name, "config") == 0)
                cfg = x;
            else
                return conf_error(cx, x,
                                  "modules[%d]: unknown key \"%s\"; a module takes path "
                                  "and config",
                                  i, name);
        }
        if (path == NULL)
            return conf_error_line(cx, e, line,
                                   "modules[%d]: no path; add path = \"modules/x.so\"; "
                                   "(relative to the prefix)",
                                   i);
        m->line = config_setting_source_line(path);
        if (config_setting_type(path) != CONFIG_TYPE_STRING ||
            config_setting_get_string(path)[0] == '\0')
            return conf_error(cx, path,
                              "modules[%d].path: expected the path of a shared object, "
                              "got %s",
                              i, conf_type_name(path));
        if (conf_resolve(c->prefix, config_setting_get_string(path), m->path,
                         sizeof(m->path)) != CR_OK)
            return conf_error(cx, path, "modules[%d].path: too long once resolved against "
                              "the prefix; use a shorter path", i);
        if (cfg != NULL) {
            if (config_setting_type(cfg) != CONFIG_TYPE_STRING)
                return conf_error(cx, cfg, "modules[%d].config: expected a string, got %s",
                                  i, conf_type_name(cfg));
            if (strlen(config_setting_get_string(cfg)) >= sizeof(m->config))
                return conf_error(cx, cfg,
                                  "modules[%d].config: longer than %zu bytes; point it to "
                                  "a file instead",
                                  i, sizeof(m->config) - 1);
            strcpy(m->config, config_setting_get_string(cfg));
        }
        for (int j = 0; j < i; j++)
            if (strcmp(c->modules[j].path, m->path) == 0)
                return conf_error(cx, path,
                                  "modules[%d]: %s is already modules[%d] (line %d); "
                                  "list a module once",
                                  i, m->path, j, c->modules[j].line);
        c->nmodules = (unsigned)i + 1;
    }
    return CR_OK;
}

static int conf_modules_init(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    (void)cmd;
    cx->c->nmodules = 0;
    return CR_OK;
}

static void conf_modules_dump(const cr_conf_t *c, const conf_cmd_t *cmd, FILE *out)
{
    fprintf(out, "%s = (%s", cmd->name, c->nmodules ? "\n" : "");
    for (unsigned i = 0; i < c->nmodules; i++) {
        fputs("    {\n", out);
        conf_dump_str(out, "        ", "path", c->modules[i].path);
        if (c->modules[i].config[0] != '\0')
            conf_dump_str(out, "        ", "config", c->modules[i].config);
        fprintf(out, "    }%s\n", i + 1 < c->nmodules ? "," : "");
    }
    fprintf(out, "%s);\n", c->nmodules ? "" : " ");
}

static bool conf_modules_same(const cr_conf_t *a, const cr_conf_t *b, const conf_cmd_t *cmd)
{
    (void)cmd;
    if (a->nmodules != b->nmodules)
        return false;
    for (unsigned i = 0; i < a->nmodules; i++)
        if (strcmp(a->modules[i].path, b->modules[i].path) != 0 ||
            strcmp(a->modules[i].config, b->modules[i].config) != 0)
            return false;
    return true;
}

static const conf_type_t conf_type_modules = {conf_modules_set, conf_modules_init,
                                              conf_modules_dump, conf_modules_same};

/* --- loading ---------------------------------------------------------------- */

static int conf_defaults(conf_ctx_t *cx, const char *prefix)
{
    cr_conf_t *c = cx->c;

    memset(c, 0, sizeof(*c));
    if (conf_set_prefix(cx, prefix) != CR_OK)
        return CR_ERROR;
    for (unsigned i = 0; i < cr_nelem(conf_cmds); i++) {
        /* Every row says what a reload changing it must do (cr_conf_diff),
         * and an integer row is as wide as conf_uint_store can write. */
        cr_assert(conf_cmds[i].change != 0);
        cr_assert(conf_cmds[i].type != &conf_type_uint ||
                  conf_cmds[i].width == sizeof(unsigned) ||
                  conf_cmds[i].width == sizeof(uint64_t));
        if (conf_cmds[i].type->init(cx, &conf_cmds[i]) != CR_OK)
            return CR_ERROR;
    }
    /* Follows max_payload unless set: room for the Task around the payload. */
    c->max_receive_message = c->max_payload + RECEIVE_SLACK;
    return CR_OK;
}

void cr_conf_defaults(cr_conf_t *c, const char *prefix)
{
    conf_ctx_t cx = {.c = c, .name = "(defaults)"};

    /* Only getcwd can fail here; then paths resolve against "/". */
    if (conf_defaults(&cx, prefix) != CR_OK)
        (void)conf_defaults(&cx, "/");
}

/* The table entry of the setting stored at `offset`. */
static unsigned conf_cmd_index(size_t offset)
{
    unsigned i;

    for (i = 0; i < cr_nelem(conf_cmds); i++) {
        if (conf_cmds[i].offset == offset)
            break;
    }
    cr_assert(i < cr_nelem(conf_cmds));
    return i;
}

/* Check the settings after each was read alone: what involves several. */
static int conf_check(conf_ctx_t *cx)
{
    cr_conf_t *c = cx->c;
    char mp[32], shm[32], need[32], most[32];
    unsigned at;

    if (c->nlisten == 0)
        return conf_error_at(cx, NULL, 0,
                             "listen: missing; add at least one address, like "
                             "listen = [ \"127.0.0.1:50051\" ];");

    if (c->max_payload > c->shm_size / 2) {
        /* Point at max_payload if the file set it, else at shm_size. */
        at = conf_cmd_index(CONF_OFF(max_payload));
        if (cx->lines[at] == 0)
            at = conf_cmd_index(CONF_OFF(shm_size));
        return conf_error_at(cx, cx->files[at], cx->lines[at],
                             "max_payload: %s is more than half of shm_size (%s); raise "
                             "shm_size to at least %s or lower max_payload to at most %s",
                             conf_size_text(c->max_payload, mp, sizeof(mp)),
                             conf_size_text(c->shm_size, shm, sizeof(shm)),
                             conf_size_text(c->max_payload * 2, need, sizeof(need)),
                             conf_size_text(c->shm_size / 2, most, sizeof(most)));
    }

    /* A message carries the payload plus the Task's other fields. */
    at = conf_cmd_index(CONF_OFF(max_receive_message));
    c->max_receive_message_set = cx->lines[at] != 0;
    if (!c->max_receive_message_set) {
        c->max_receive_message = c->max_payload + RECEIVE_SLACK;
    } else if (c->max_receive_message < c->max_payload + RECEIVE_MIN_SLACK) {
        return conf_error_at(
            cx, cx->files[at], cx->lines[at],
            "max_receive_message: %s is less than max_payload (%s) + %u bytes; raise "
            "max_receive_message to at least %" PRIu64 ", or remove it (it defaults to "
            "max_payload + 4k)",
            conf_size_text(c->max_receive_message, mp, sizeof(mp)),
            conf_size_text(c->max_payload, shm, sizeof(shm)), RECEIVE_MIN_SLACK,
            c->max_payload + RECEIVE_MIN_SLACK);
    }

    /* gRPC waits keepalive_timeout_ms for a ping's answer, and pings every
     * keepalive_time_ms: the wait must end before the next ping. */
    if (c->keepalive_timeout_ms >= c->keepalive_time_ms) {
        at = conf_cmd_index(CONF_OFF(keepalive_timeout_ms));
        if (cx->lines[at] == 0)
            at = conf_cmd_index(CONF_OFF(keepalive_time_ms));
        return conf_error_at(
            cx, cx->files[at], cx->lines[at],
            "keepalive_timeout_ms (%u) must be less than "
            "keepalive_time_ms (%u); lower keepalive_timeout_ms or raise "
            "keepalive_time_ms",
            c->keepalive_timeout_ms, c->keepalive_time_ms);
    }
    return CR_OK;
}

/* Can crunchd create or append to the file at `path` (cmd's setting)? Only
 * stat and access: -t must not create anything. Names the line that set it,
 * or the file alone for a default. */
static int conf_check_path(conf_ctx_t *cx, const conf_cmd_t *cmd)
{
    const char *path = CONF_FIELD(cx->c, cmd, const char);
    unsigned at = conf_cmd_index(cmd->offset);
    char dir[PATH_MAX], *slash;
    struct stat st;

    if (path[0] == '\0' || (cmd->literal != NULL && strcmp(path, cmd->literal) == 0))
        return CR_OK;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return conf_error_at(cx, cx->files[at], cx->lines[at],
                                 "%s: %s is a directory; name a file in it, like %s/%s",
                                 cmd->name, path, path,
                                 strcmp(cmd->name, "pid_file") == 0 ? "crunchd.pid"
                                                                     : "crunchd.log");
        if (access(path, W_OK) != 0)
            return conf_error_at(cx, cx->files[at], cx->lines[at],
                                 "%s: cannot write %s: %s; fix its permissions or "
                                 "change %s",
                                 cmd->name, path, strerror(errno), cmd->name);
        return CR_OK;
    }
    if (errno != ENOENT)
        return conf_error_at(cx, cx->files[at], cx->lines[at],
                             "%s: cannot use %s: %s; fix the path or change %s", cmd->name,
                             path, strerror(errno), cmd->name);
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        return CR_OK; /* resolved paths are absolute */
    slash[slash == dir] = '\0';
    if (stat(dir, &st) != 0)
        return conf_error_at(cx, cx->files[at], cx->lines[at],
                             "%s: the directory %s does not exist (%s); create it or "
                             "change %s",
                             cmd->name, dir, strerror(errno), cmd->name);
    if (!S_ISDIR(st.st_mode))
        return conf_error_at(cx, cx->files[at], cx->lines[at],
                             "%s: %s is not a directory; change %s", cmd->name, dir,
                             cmd->name);
    if (access(dir, W_OK | X_OK) != 0)
        return conf_error_at(cx, cx->files[at], cx->lines[at],
                             "%s: cannot create files in %s: %s; fix its permissions or "
                             "change %s",
                             cmd->name, dir, strerror(errno), cmd->name);
    return CR_OK;
}

static int conf_check_paths(conf_ctx_t *cx)
{
    static const size_t paths[] = {CONF_OFF(pid_file), CONF_OFF(error_log),
                                   CONF_OFF(access_log)};

    for (size_t i = 0; i < cr_nelem(paths); i++)
        if (conf_check_path(cx, &conf_cmds[conf_cmd_index(paths[i])]) != CR_OK)
            return CR_ERROR;
    return CR_OK;
}

static int conf_apply(conf_ctx_t *cx, const config_t *cfg)
{
    const config_setting_t *root = config_root_setting(cfg);
    int n = config_setting_length(root);

    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s);
        const conf_cmd_t *best = NULL;
        unsigned best_d = UINT_MAX, k;

        for (k = 0; k < cr_nelem(conf_cmds); k++) {
            const char *cn = conf_cmds[k].name;
            size_t len = strlen(name);
            unsigned dist = conf_distance(name, cn);

            if (dist == 0)
                break;
            /* "task_timeout" for task_timeout_ms: the unit is part of the name. */
            if (strncmp(name, cn, len) == 0 && strcmp(cn + len, "_ms") == 0)
                dist = 1;
            if (dist < best_d) {
                best_d = dist;
                best = &conf_cmds[k];
            }
        }
        if (k == cr_nelem(conf_cmds)) {
            if (strcmp(name, "tls") == 0)
                return conf_error(cx, s,
                                  "unknown setting \"tls\"; TLS is set per listener: "
                                  "listen = ( { address = \"127.0.0.1:50051\"; tls = { "
                                  "cert = \"server.pem\"; key = \"server.key\"; }; } );");
            if (best_d <= 2)
                return conf_error(
                    cx, s, "unknown setting \"%s\"; did you mean \"%s\"? (" CONF_SEE ")",
                    name, best->name);
            return conf_error(cx, s, "unknown setting \"%s\"; " CONF_SEE, name);
        }
        if (conf_cmds[k].type->set(cx, &conf_cmds[k], s) != CR_OK)
            return CR_ERROR;
        cx->lines[k] = config_setting_source_line(s);
        cx->files[k] = config_setting_source_file(s);
    }
    if (conf_check(cx) != CR_OK)
        return CR_ERROR;
    return cx->check_paths ? conf_check_paths(cx) : CR_OK;
}

/* A string or comment the scan found open at the end of the text. */
static void conf_error_open(conf_ctx_t *cx)
{
    conf_error_at(cx, cx->open_file, cx->open_line,
                  "syntax error: this %s is never closed; "
                  "add the closing %s",
                  cx->open_what, strcmp(cx->open_what, "comment") == 0 ? "*/" : "'\"'");
}

/* The common part of cr_conf_load and cr_conf_load_string: `text` holds the
 * whole main file. */
static int conf_load_text(conf_ctx_t *cx, const char *text)
{
    config_t cfg;
    int rc = CR_ERROR;

    config_init(&cfg);
    config_set_auto_convert(&cfg, 0);
    if (cx->include_dir != NULL)
        config_set_include_dir(&cfg, cx->include_dir);

    if (conf_scan(cx, text, NULL, 0) != CR_OK)
        goto done;
    /* An open string or comment is the error whatever libconfig says, and
     * libconfig 1.5 leaks the buffer of a string still open at the end of
     * the text (found by t/fuzz/fuzz-conf): do not call it then. */
    if (cx->open_what != NULL) {
        conf_error_open(cx);
        goto done;
    }

    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        const char *what = config_error_text(&cfg), *hint = "", *kind = "syntax error: ";

        if (cx->open_what != NULL) {
            conf_error_open(cx);
            goto done;
        }
        if (what == NULL)
            what = "unknown error";
        else if (strcmp(what, "duplicate setting name") == 0) {
            kind = "";
            hint = "; a setting appears twice: keep one of them";
        } else if (strcmp(what, "cannot open include file") == 0) {
            kind = "";
            hint =
                "; check the @include path (relative paths start in the directory of the "
                "main file)";
        } else if (strcmp(what, "syntax error") == 0) {
            kind = "";
            hint = "; check the quotes, '=' and brackets on this line and the one before";
        }
        /* The error file is NULL for the main text, the path as written for
         * an include (conf_file resolves it). */
        if (cx->group_in_array_line != 0 &&
            cx->group_in_array_line == (unsigned)config_error_line(&cfg) &&
            conf_same_file(cx->group_in_array_file, config_error_file(&cfg)))
            conf_error_at(cx, config_error_file(&cfg), cx->group_in_array_line,
                          "syntax error: a group { } cannot be an element of an array "
                          "[ ]; use a list ( ) instead, like listen = ( { address = "
                          "\"127.0.0.1:50051\"; } );");
        else
            conf_error_at(cx, config_error_file(&cfg), (unsigned)config_error_line(&cfg),
                          "%s%s%s", kind, what, hint);
        goto done;
    }
    /* libconfig takes an open comment as running to the end of the file and
     * silently drops every setting after it. */
    if (cx->open_what != NULL)
        conf_error_open(cx);
    else
        rc = conf_apply(cx, &cfg);

done:
    config_destroy(&cfg);
    free(cx->recs);
    cx->recs = NULL;
    cx->nrecs = cx->recs_cap = 0;
    for (unsigned i = 0; i < cx->ninc_names; i++)
        free(cx->inc_names[i]);
    cx->ninc_names = 0;
    return rc;
}

int cr_conf_load_string(cr_conf_t *c, const char *text, const char *name,
                        const char *prefix, char *err, size_t errlen)
{
    conf_ctx_t cx = {.c = c, .name = name, .err = err, .errlen = errlen};

    if (errlen)
        err[0] = '\0';
    if (conf_defaults(&cx, prefix) != CR_OK)
        return CR_ERROR;
    snprintf(c->file, sizeof(c->file), "%s", name);
    cx.include_dir = c->prefix;
    return conf_load_text(&cx, text);
}

static int conf_load_file(cr_conf_t *c, const char *file, const char *prefix, char *err,
                          size_t errlen, bool check_paths)
{
    conf_ctx_t cx = {.c = c, .name = file, .err = err, .errlen = errlen,
                     .check_paths = check_paths};
    char dir[PATH_MAX], shown[PATH_MAX + 256], *text = NULL, *slash;
    struct stat st;
    size_t got = 0;
    int fd = -1, rc = CR_ERROR;

    if (errlen)
        err[0] = '\0';
    if (conf_defaults(&cx, prefix) != CR_OK)
        return CR_ERROR;

    /* Name the file in messages the way it will be looked for: absolute. */
    if (file[0] == '/' || getcwd(dir, sizeof(dir)) == NULL ||
        conf_resolve(dir, file, shown, sizeof(shown)) != CR_OK)
        snprintf(shown, sizeof(shown), "%s", file);
    cx.name = shown;

    if (realpath(file, c->file) == NULL) {
        conf_error_at(&cx, NULL, 0, "cannot open: %s; check the path given with -c",
                      strerror(errno));
        goto done;
    }
    cx.name = c->file;

    fd = open(c->file, O_RDONLY | O_CLOEXEC);
    if (fd == -1 || fstat(fd, &st) == -1) {
        conf_error_at(&cx, NULL, 0, "cannot open: %s; check the path given with -c",
                      strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        conf_error_at(&cx, NULL, 0, "cannot open: %s; check the path given with -c",
                      S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
        goto done;
    }
    if (st.st_size > CONF_FILE_MAX) {
        conf_error_at(&cx, NULL, 0,
                      "the file is %lld bytes, more than a config file can be "
                      "(%u); check the path given with -c",
                      (long long)st.st_size, CONF_FILE_MAX);
        goto done;
    }
    text = malloc((size_t)st.st_size + 1);
    if (text == NULL) {
        conf_error_at(&cx, NULL, 0, "out of memory reading the file");
        goto done;
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, text + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            conf_error_at(&cx, NULL, 0, "cannot read: %s; check the path given with -c",
                          strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    text[got] = '\0';

    /* Includes in a file resolve against its directory, like nginx's. */
    snprintf(dir, sizeof(dir), "%s", c->file);
    slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    cx.include_dir = dir;

    rc = conf_load_text(&cx, text);

done:
    free(text);
    if (fd != -1)
        close(fd);
    return rc;
}

int cr_conf_load(cr_conf_t *c, const char *file, const char *prefix, char *err,
                 size_t errlen)
{
    return conf_load_file(c, file, prefix, err, errlen, false);
}

int cr_conf_load_run(cr_conf_t *c, const char *file, const char *prefix, char *err,
                     size_t errlen)
{
    return conf_load_file(c, file, prefix, err, errlen, true);
}

unsigned cr_conf_diff(const cr_conf_t *old, const cr_conf_t *new_, char *names,
                      size_t len)
{
    unsigned mask = 0;
    size_t n = 0;
    bool cut = names == NULL || len == 0;

    if (!cut)
        names[0] = '\0';
    for (unsigned i = 0; i < cr_nelem(conf_cmds); i++) {
        const conf_cmd_t *cmd = &conf_cmds[i];
        const char *sep = n > 0 ? ", " : "";

        if (cmd->type->same(old, new_, cmd))
            continue;
        mask |= cmd->change;
        if (cut)
            continue;
        /* A name that does not fit ends the list with "...", cut to fit. */
        if (n + strlen(sep) + strlen(cmd->name) < len) {
            n += (size_t)snprintf(names + n, len - n, "%s%s", sep, cmd->name);
        } else {
            snprintf(names + n, len - n, "%s...", sep);
            cut = true;
        }
    }
    return mask;
}

void cr_conf_dump(const cr_conf_t *c, FILE *out)
{
    fputs(
        "# crunchd effective configuration: every setting, defaults filled in.\n# file: ",
        out);
    conf_put_escaped(out, c->file);
    fputs("\n# prefix: ", out);
    conf_put_escaped(out, c->prefix);
    fputc('\n', out);
    for (unsigned i = 0; i < cr_nelem(conf_cmds); i++) {
        /* Unset, it follows max_payload: a value here would pin it on reload. */
        if (conf_cmds[i].offset == CONF_OFF(max_receive_message) &&
            !c->max_receive_message_set) {
            fprintf(out,
                    "# max_receive_message = %" PRIu64 ";  # not set: max_payload + 4k\n",
                    c->max_receive_message);
            continue;
        }
        conf_cmds[i].type->dump(c, &conf_cmds[i], out);
    }
}
