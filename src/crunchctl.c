/* crunchctl.c: the command-line client of crunchd: options, the address, the
 * commands (run, stream, submit, updates, stats, health) and exit statuses.
 *
 * Exit status: 0 when everything succeeded; otherwise the gRPC status code
 * of the failure (1..16: UNAVAILABLE is 14, DEADLINE_EXCEEDED 4, NOT_FOUND
 * 5), where a failed task of stream and updates counts with its own code;
 * 2 for a usage or local error (as for UNKNOWN: the stderr line says which).
 * crunchctl(1) has the whole table. */
#include "crunchctl.h"

#include <fcntl.h>
#include <getopt.h>
#include <math.h>

#include "grpc/health/v1/health.pb-c.h"

#define M_RUN     "/crunch.v1.Crunch/Run"
#define M_STREAM  "/crunch.v1.Crunch/RunStream"
#define M_SUBMIT  "/crunch.v1.Crunch/Submit"
#define M_UPDATES "/crunch.v1.Crunch/Updates"
#define M_STATS   "/crunch.v1.Crunch/Stats"
#define M_HEALTH  "/grpc.health.v1.Health/Check"

/* The longest --timeout: about 115 days (gRPC takes far more; a typo is likelier). */
#define TIMEOUT_MAX 1e7

#define USAGE_LINE                                                                       \
    "usage: crunchctl [-a ADDR] [--tls] [--ca FILE] [--cert FILE --key FILE]\n"          \
    "                 [--server-name NAME] [--timeout SECONDS] [--json] COMMAND ...\n"

static const char help_text[] = USAGE_LINE
    "\n"
    "Commands:\n"
    "  run HANDLER [PAYLOAD|-]  one task (Run); prints its output as is; - reads\n"
    "                           the payload from stdin [--id N] [--task-timeout MS]\n"
    "  stream HANDLER           one task per stdin line (RunStream); prints\n"
    "                           ID<TAB>OUTPUT as results come, failures on stderr\n"
    "                           as ID<TAB>error: CODE: message\n"
    "                           [--id N] [--task-timeout MS]\n"
    "  submit HANDLER           one task per stdin line (Submit); prints\n"
    "                           \"accepted N rejected N\" [--id N] [--task-timeout MS]\n"
    "  updates                  results of submitted tasks (Updates), like stream\n"
    "                           [--max N]\n"
    "  stats                    the server's state as a table (--json: JSON)\n"
    "  health [SERVICE]         Health/Check; exit 0 only if SERVING\n"
    "\n"
    "Options:\n"
    "  -a, --address ADDR       host:port, [v6]:port, unix:/path (default:\n"
    "                           $CRUNCH_ADDR, else " CR_CLIENT_DEFAULT_ADDR ")\n"
    "      --tls                use TLS (the system roots unless --ca)\n"
    "      --ca FILE            PEM roots to verify the server with (implies --tls)\n"
    "      --cert FILE --key FILE  client certificate and key (imply --tls)\n"
    "      --server-name NAME   the name to verify in the server's certificate\n"
    "      --timeout SECONDS    deadline of the whole call (default 30)\n"
    "      --json               JSON output (one object per result line)\n"
    "  -h, --help               this text;  -V, --version  the version\n"
    "\n"
    "Exit status: 0 OK; else the gRPC status code (14 UNAVAILABLE, 4\n"
    "DEADLINE_EXCEEDED, ...); 2 also for usage errors. See crunchctl(1).\n";

enum {
    OPT_TLS = 256,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_SERVER_NAME,
    OPT_TIMEOUT,
    OPT_JSON,
    OPT_ID,
    OPT_TASK_TIMEOUT,
    OPT_MAX,
};

/* Command options, as bits: which command takes which. */
#define F_ID           0x1u
#define F_TASK_TIMEOUT 0x2u
#define F_MAX          0x4u

static const struct option long_opts[] = {
    {"address", required_argument, NULL, 'a'},
    {"tls", no_argument, NULL, OPT_TLS},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"server-name", required_argument, NULL, OPT_SERVER_NAME},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"json", no_argument, NULL, OPT_JSON},
    {"id", required_argument, NULL, OPT_ID},
    {"task-timeout", required_argument, NULL, OPT_TASK_TIMEOUT},
    {"max", required_argument, NULL, OPT_MAX},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

typedef struct {
    const char *name;
    int (*fn)(cctl_opts_t *o, int argc, char **argv);
    int min_args, max_args;
    unsigned flags;   /* the command options it takes */
    const char *args; /* for its usage line */
    const char *opts; /* its options, for the same */
} cmd_t;

/* --- errors and exit statuses ----------------------------------------------------- */

/* The command whose usage line a usage error shows (NULL: the general one). */
static const cmd_t *usage_cmd;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line saying what is wrong, one usage line; exit status 2. */
static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("crunchctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (usage_cmd != NULL)
        fprintf(stderr, "\nusage: crunchctl [OPTIONS] %s%s%s%s (crunchctl --help)\n",
                usage_cmd->name, usage_cmd->args[0] ? " " : "", usage_cmd->args,
                usage_cmd->opts);
    else
        fputs("\nusage: crunchctl [OPTIONS] run|stream|submit|updates|stats|health ... "
              "(crunchctl --help)\n",
              stderr);
    return CCTL_EXIT_USAGE;
}

static int exit_status(int code)
{
    if (code == GRPC_STATUS_OK)
        return 0;
    return code > 0 && code <= GRPC_STATUS_UNAUTHENTICATED ? code : GRPC_STATUS_UNKNOWN;
}

/* One line about a failed call; returns its exit status. */
static int report(const cctl_opts_t *o, const cctl_status_t *st)
{
    const char *hint = o->tls ? "is crunchd listening there with TLS? (check -a, --ca, "
                                "--server-name; --cert and --key if it verifies clients)"
                              : "is crunchd running? (set -a or CRUNCH_ADDR)";
    const char *d = st->details != NULL ? st->details : "";

    if (cctl_interrupted())
        return 128 + cctl_interrupted();
    if (st->local) {
        cctl_error(o, "%s", d);
        return CCTL_EXIT_USAGE;
    }
    if (st->no_connection && st->code == GRPC_STATUS_DEADLINE_EXCEEDED)
        cctl_error(NULL, "cannot connect to %s within %gs (%s); %s", o->addr,
                   o->timeout_s, cr_client_code_name(st->code), hint);
    else if (st->no_connection)
        cctl_error(NULL, "cannot connect to %s: %s; %s", o->addr,
                   d[0] ? d : "UNAVAILABLE", hint);
    else if (d[0] != '\0')
        cctl_error(o, "%s: %s", cr_client_code_name(st->code), d);
    else
        cctl_error(o, "%s", cr_client_code_name(st->code));
    return exit_status(st->code);
}

/* --- arguments -------------------------------------------------------------------- */

/* A decimal in [0, max], digits only. */
static bool parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (max - (uint64_t)(*s - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

/* Apply one option. Returns 0, or an exit status for main to return. */
static int set_option(cctl_opts_t *o, int c, const char *arg, unsigned *given)
{
    uint64_t v;
    char *end;

    switch (c) {
    case 'a':
        o->addr = arg;
        break;
    case OPT_TLS:
        o->tls = true;
        break;
    case OPT_CA:
        o->ca = arg;
        o->tls = true;
        break;
    case OPT_CERT:
        o->cert = arg;
        o->tls = true;
        break;
    case OPT_KEY:
        o->key = arg;
        o->tls = true;
        break;
    case OPT_SERVER_NAME:
        o->server_name = arg;
        o->tls = true;
        break;
    case OPT_TIMEOUT:
        errno = 0;
        o->timeout_s = strtod(arg, &end);
        if (errno != 0 || end == arg || *end != '\0' || !isfinite(o->timeout_s) ||
            o->timeout_s <= 0 || o->timeout_s > TIMEOUT_MAX)
            return usage_error(
                "--timeout: expected seconds (> 0, at most %g), got \"%s\"", TIMEOUT_MAX,
                arg);
        break;
    case OPT_JSON:
        o->json = true;
        break;
    case OPT_ID:
        if (!parse_uint(arg, UINT64_MAX, &o->id))
            return usage_error("--id: expected a number from 0 to %" PRIu64
                               ", got \"%s\"",
                               UINT64_MAX, arg);
        *given |= F_ID;
        break;
    case OPT_TASK_TIMEOUT:
        if (!parse_uint(arg, UINT32_MAX, &v))
            return usage_error("--task-timeout: expected milliseconds (0 to %" PRIu32
                               "), got \"%s\"",
                               UINT32_MAX, arg);
        o->task_timeout_ms = (uint32_t)v;
        *given |= F_TASK_TIMEOUT;
        break;
    case OPT_MAX:
        if (!parse_uint(arg, UINT32_MAX, &v))
            return usage_error("--max: expected a number (0 to %" PRIu32 "), got \"%s\"",
                               UINT32_MAX, arg);
        o->max_results = (uint32_t)v;
        *given |= F_MAX;
        break;
    case 'h':
        fputs(help_text, stdout);
        return -1;
    case 'V':
        printf("crunchctl %s (gRPC core %s, protobuf-c %s)\n", PACKAGE_VERSION,
               GRPC_CORE_VERSION, PROTOBUF_C_VERSION);
        return -1;
    default:
        return usage_error("internal error: option %d", c);
    }
    return 0;
}

/* getopt_long over argv; stop_at_command: stop at the first non-option (the
 * command). Returns 0, -1 (--help or --version done: exit 0) or an exit
 * status. */
static int parse_options(cctl_opts_t *o, int argc, char **argv, bool stop_at_command,
                         unsigned *given)
{
    int c, rc;

    opterr = 0;
    optind = 0; /* GNU: start over, also for the second pass */
    while ((c = getopt_long(argc, argv, stop_at_command ? "+:a:hV" : ":a:hV", long_opts,
                            NULL)) != -1) {
        if (c == '?') {
            if (optopt != 0)
                return usage_error("unknown option -%c", optopt);
            return usage_error("unknown option %s", argv[optind - 1]);
        }
        if (c == ':') {
            if (optopt != 0 && optopt < 256)
                return usage_error("option -%c needs a value", optopt);
            return usage_error("option %s needs a value", argv[optind - 1]);
        }
        rc = set_option(o, c, optarg, given);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int cctl_stdin_fd = STDIN_FILENO;

/* Started with stdin, stdout or stderr closed (`<&-`), crunchctl would find
 * the first descriptor a library opened in its place: gRPC makes an eventfd
 * before main. Such a descriptor has FD_CLOEXEC, which no descriptor that
 * came through exec can have. Stand /dev/null in for what we were not given.
 * Returns CR_OK or CR_ERROR. */
static int std_fds(void)
{
    int fl, fd, i;
    FILE *f;

    fl = fcntl(STDIN_FILENO, F_GETFD);
    if (fl == -1 || (fl & FD_CLOEXEC)) {
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd == -1)
            return CR_ERROR;
        cctl_stdin_fd = fd;
    }
    for (i = STDOUT_FILENO; i <= STDERR_FILENO; i++) {
        fl = fcntl(i, F_GETFD);
        if (fl == -1) {
            /* Free: /dev/null takes it (a closed stdout must not become the
             * next socket). */
            fd = open("/dev/null", O_WRONLY);
            if (fd == -1)
                return CR_ERROR;
            if (fd != i) {
                if (dup2(fd, i) == -1)
                    return CR_ERROR;
                close(fd);
            }
        } else if (fl & FD_CLOEXEC) {
            /* Taken by a library: point the stdio stream elsewhere (glibc's
             * stdout and stderr are assignable). */
            f = fopen("/dev/null", "we");
            if (f == NULL)
                return CR_ERROR;
            if (i == STDOUT_FILENO)
                stdout = f;
            else
                stderr = f;
        }
    }
    return CR_OK;
}

/* All of stdin (run -). Returns CR_OK or CR_ERROR (errno set). */
static int read_stdin(uint8_t **out, size_t *len)
{
    uint8_t *buf = NULL, *p;
    size_t n = 0, cap = 0;
    ssize_t r;

    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 65536;
            p = realloc(buf, cap);
            if (p == NULL) {
                free(buf);
                errno = ENOMEM;
                return CR_ERROR;
            }
            buf = p;
        }
        r = read(cctl_stdin_fd, buf + n, cap - n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            free(buf);
            return CR_ERROR;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *out = buf;
    *len = n;
    return CR_OK;
}

/* --- commands --------------------------------------------------------------------- */

static int cmd_run(cctl_opts_t *o, int argc, char **argv)
{
    Crunch__V1__Task t = CRUNCH__V1__TASK__INIT;
    ProtobufCMessage *reply;
    Crunch__V1__Result *r;
    cctl_status_t st = {0};
    uint8_t *in = NULL;
    size_t len = 0;
    int rc = 0;

    t.id = o->id;
    t.handler = argv[0];
    t.timeout_ms = o->task_timeout_ms;
    if (argc > 1 && strcmp(argv[1], "-") == 0) {
        if (read_stdin(&in, &len) != CR_OK) {
            cctl_error(o, "cannot read stdin: %s", strerror(errno));
            return CCTL_EXIT_USAGE;
        }
        t.payload.data = in;
        t.payload.len = len;
    } else if (argc > 1) {
        t.payload.data = (uint8_t *)argv[1];
        t.payload.len = strlen(argv[1]);
    }
    cctl_unary(M_RUN, &t.base, &crunch__v1__result__descriptor, &reply, &st);
    free(in);
    if (st.code != GRPC_STATUS_OK) {
        rc = report(o, &st);
        cctl_status_free(&st);
        return rc;
    }
    cctl_status_free(&st);
    r = (Crunch__V1__Result *)reply;
    if (r->code != 0) {
        /* Run sends a handler's error as the call's status; a Result that
         * carries one anyway is still a failure. */
        cctl_error(o, "%s: %s", cr_client_code_name(r->code), r->error ? r->error : "");
        rc = exit_status(r->code);
    } else if (o->json) {
        cctl_print_result_json(r);
    } else {
        if (r->output.len != 0)
            fwrite(r->output.data, 1, r->output.len, stdout);
        /* A prompt must not land after the output; a pipe gets it as is. */
        if (isatty(fileno(stdout)) &&
            (r->output.len == 0 || r->output.data[r->output.len - 1] != '\n'))
            putchar('\n');
    }
    protobuf_c_message_free_unpacked(reply, NULL);
    return rc;
}

/* What stream, submit and updates keep between messages. */
typedef struct {
    const cctl_opts_t *o;
    const char *handler;
    uint64_t results, failed;
    int first_failure;
    Crunch__V1__SubmitReply *reply;
} feed_t;

/* Reader thread: a stdin line into a Task. */
static int line_to_task(void *ud, const uint8_t *line, size_t len, uint64_t lineno,
                        grpc_byte_buffer **out)
{
    feed_t *f = ud;
    Crunch__V1__Task t = CRUNCH__V1__TASK__INIT;

    t.id = f->o->id + lineno;
    t.handler = (char *)f->handler;
    t.payload.data = (uint8_t *)line;
    t.payload.len = len;
    t.timeout_ms = f->o->task_timeout_ms;
    *out = cctl_pack(&t.base);
    return *out != NULL ? CR_OK : CR_ERROR;
}

static int on_result(void *ud, const uint8_t *p, size_t n)
{
    feed_t *f = ud;
    Crunch__V1__Result *r = crunch__v1__result__unpack(NULL, n, p);

    if (r == NULL)
        return CR_ERROR;
    f->results++;
    if (r->code != 0 && f->failed++ == 0)
        f->first_failure = r->code;
    cctl_print_result(f->o, r);
    crunch__v1__result__free_unpacked(r, NULL);
    return CR_OK;
}

static int on_submit_reply(void *ud, const uint8_t *p, size_t n)
{
    feed_t *f = ud;

    if (f->reply != NULL)
        return CR_ERROR; /* Submit answers once */
    f->reply = crunch__v1__submit_reply__unpack(NULL, n, p);
    return f->reply != NULL ? CR_OK : CR_ERROR;
}

/* The end of stream and updates: the call's status, else the first failed
 * task's code. */
static int feed_status(const cctl_opts_t *o, feed_t *f, cctl_status_t *st, uint64_t sent)
{
    int rc;

    if (st->code != GRPC_STATUS_OK) {
        rc = report(o, st);
    } else if (f->handler != NULL && f->results != sent) {
        cctl_error(o, "the server answered %" PRIu64 " of %" PRIu64 " tasks", f->results,
                   sent);
        rc = GRPC_STATUS_INTERNAL;
    } else if (f->failed != 0) {
        cctl_error(o, "%" PRIu64 " of %" PRIu64 " tasks failed; the first with %s",
                   f->failed, f->results, cr_client_code_name(f->first_failure));
        rc = exit_status(f->first_failure);
    } else {
        rc = 0;
    }
    cctl_status_free(st);
    return rc;
}

static int cmd_stream(cctl_opts_t *o, int argc, char **argv)
{
    feed_t f = {o, argv[0], 0, 0, 0, NULL};
    cctl_stream_t s = {M_STREAM, NULL, line_to_task, on_result, &f};
    cctl_status_t st;
    uint64_t sent;

    sent = cctl_stream(&s, &st);
    return feed_status(o, &f, &st, sent);
}

static int cmd_updates(cctl_opts_t *o, int argc, char **argv)
{
    Crunch__V1__UpdatesRequest req = CRUNCH__V1__UPDATES_REQUEST__INIT;
    feed_t f = {o, NULL, 0, 0, 0, NULL};
    cctl_stream_t s = {M_UPDATES, &req.base, NULL, on_result, &f};
    cctl_status_t st;

    req.max_results = o->max_results;
    cctl_stream(&s, &st);
    return feed_status(o, &f, &st, 0);
}

static int cmd_submit(cctl_opts_t *o, int argc, char **argv)
{
    feed_t f = {o, argv[0], 0, 0, 0, NULL};
    cctl_stream_t s = {M_SUBMIT, NULL, line_to_task, on_submit_reply, &f};
    cctl_status_t st;
    uint64_t sent;
    int rc = 0;

    sent = cctl_stream(&s, &st);
    if (st.code == GRPC_STATUS_OK && f.reply == NULL)
        cctl_status_set(&st, GRPC_STATUS_INTERNAL, "the server sent no SubmitReply");
    if (st.code != GRPC_STATUS_OK) {
        rc = report(o, &st);
    } else {
        if (o->json)
            printf("{\"accepted\":%" PRIu64 ",\"rejected\":%" PRIu64 "}\n",
                   f.reply->accepted, f.reply->rejected);
        else
            printf("accepted %" PRIu64 " rejected %" PRIu64 "\n", f.reply->accepted,
                   f.reply->rejected);
        /* The server says why in its error log, not to us. */
        if (f.reply->rejected != 0) {
            cctl_error(o,
                       "%" PRIu64 " of %" PRIu64 " tasks rejected (the updates feed was "
                       "full, or the tasks were invalid: see the crunchd error log)",
                       f.reply->rejected, sent);
            rc = GRPC_STATUS_RESOURCE_EXHAUSTED;
        }
    }
    if (f.reply != NULL)
        crunch__v1__submit_reply__free_unpacked(f.reply, NULL);
    cctl_status_free(&st);
    return rc;
}

static int cmd_stats(cctl_opts_t *o, int argc, char **argv)
{
    Crunch__V1__StatsRequest req = CRUNCH__V1__STATS_REQUEST__INIT;
    ProtobufCMessage *reply;
    cctl_status_t st;
    int rc = 0;

    cctl_unary(M_STATS, &req.base, &crunch__v1__stats_reply__descriptor, &reply, &st);
    if (st.code != GRPC_STATUS_OK)
        rc = report(o, &st);
    else
        cctl_print_stats(o, (Crunch__V1__StatsReply *)reply);
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    cctl_status_free(&st);
    return rc;
}

static int cmd_health(cctl_opts_t *o, int argc, char **argv)
{
    static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                        "SERVICE_UNKNOWN"};
    Grpc__Health__V1__HealthCheckRequest req =
        GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *r;
    ProtobufCMessage *reply;
    cctl_status_t st;
    const char *name;
    char buf[32];
    int rc;

    req.service = argc > 0 ? argv[0] : "";
    cctl_unary(M_HEALTH, &req.base, &grpc__health__v1__health_check_response__descriptor,
               &reply, &st);
    if (st.code != GRPC_STATUS_OK) {
        rc = report(o, &st);
        cctl_status_free(&st);
        return rc;
    }
    cctl_status_free(&st);
    r = (Grpc__Health__V1__HealthCheckResponse *)reply;
    if ((size_t)r->status < cr_nelem(names)) {
        name = names[r->status];
    } else {
        snprintf(buf, sizeof(buf), "STATUS_%d", (int)r->status);
        name = buf;
    }
    if (o->json) {
        fputs("{\"service\":", stdout);
        cctl_json_string(stdout, (const uint8_t *)req.service, strlen(req.service));
        printf(",\"status\":\"%s\"}\n", name);
    } else {
        printf("%s\n", name);
    }
    switch (r->status) {
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
        rc = 0;
        break;
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
        rc = GRPC_STATUS_NOT_FOUND;
        break;
    default:
        rc = GRPC_STATUS_UNAVAILABLE;
    }
    protobuf_c_message_free_unpacked(reply, NULL);
    return rc;
}

static const cmd_t cmds[] = {
#define TASK_OPTS " [--id N] [--task-timeout MS]"
    {"run", cmd_run, 1, 2, F_ID | F_TASK_TIMEOUT, "HANDLER [PAYLOAD|-]", TASK_OPTS},
    {"stream", cmd_stream, 1, 1, F_ID | F_TASK_TIMEOUT, "HANDLER", TASK_OPTS " < LINES"},
    {"submit", cmd_submit, 1, 1, F_ID | F_TASK_TIMEOUT, "HANDLER", TASK_OPTS " < LINES"},
    {"updates", cmd_updates, 0, 0, F_MAX, "", " [--max N]"},
    {"stats", cmd_stats, 0, 0, 0, "", ""},
    {"health", cmd_health, 0, 1, 0, "[SERVICE]", ""},
};

/* --- main ------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    cctl_opts_t o;
    const cmd_t *cmd = NULL;
    unsigned given = 0;
    char **cargv;
    int cargc, rc;
    size_t i;

    if (std_fds() != CR_OK)
        return CCTL_EXIT_USAGE;

    memset(&o, 0, sizeof(o));
    o.timeout_s = CCTL_DEFAULT_TIMEOUT;
    o.id = 1;

    /* Options before the command, then the command's (options may follow it). */
    rc = parse_options(&o, argc, argv, true, &given);
    if (rc != 0)
        return rc == -1 ? 0 : rc;
    if (optind >= argc)
        return usage_error("no command given");
    cargc = argc - optind;
    cargv = argv + optind;
    for (i = 0; i < cr_nelem(cmds); i++)
        if (strcmp(cargv[0], cmds[i].name) == 0)
            cmd = &cmds[i];
    if (cmd == NULL)
        return usage_error("unknown command \"%s\" (run, stream, submit, updates, stats, "
                           "health)",
                           cargv[0]);
    o.cmd = cmd->name;
    usage_cmd = cmd;
    rc = parse_options(&o, cargc, cargv, false, &given);
    if (rc != 0)
        return rc == -1 ? 0 : rc;
    cargc -= optind;
    cargv += optind;
    if (cargc < cmd->min_args)
        return usage_error("%s: too few arguments", cmd->name);
    if (cargc > cmd->max_args)
        return usage_error("%s: too many arguments (from \"%s\" on)", cmd->name,
                           cargv[cmd->max_args]);
    if (given & ~cmd->flags)
        return usage_error("%s: --%s does not apply to it", cmd->name,
                           given & ~cmd->flags & F_ID             ? "id"
                           : given & ~cmd->flags & F_TASK_TIMEOUT ? "task-timeout"
                                                                  : "max");
    if ((o.cert == NULL) != (o.key == NULL))
        return usage_error("--cert and --key go together");

    if (o.addr == NULL)
        o.addr = cr_client_default_addr();
    o.target = cr_client_target(o.addr);
    if (o.target == NULL)
        return usage_error("bad address \"%s\" (expected host:port, [v6]:port or "
                           "unix:/path)",
                           o.addr);

    if (cctl_signals_start() != CR_OK) {
        free(o.target);
        return CCTL_EXIT_USAGE;
    }
    if (cctl_rpc_open(&o) == CR_OK) {
        rc = cmd->fn(&o, cargc, cargv);
        cctl_rpc_close();
    } else {
        rc = CCTL_EXIT_USAGE;
    }
    free(o.target);
    if ((fflush(stdout) == EOF || ferror(stdout)) && !cctl_interrupted()) {
        cctl_error(&o, "cannot write to stdout: %s", strerror(errno));
        if (rc == 0)
            rc = CCTL_EXIT_USAGE;
    }
    cctl_signals_finish(); /* dies of a signal that came */
    return rc;
}
