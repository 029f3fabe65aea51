/* crunchctl_rpc.c: crunchctl's gRPC core client: the channel, unary and
 * streaming calls, the stdin reader thread and the signal thread.
 *
 * Threads: the main thread owns the completion queue (one NEXT queue, one
 * call at a time) and runs every callback. A streaming call that sends stdin
 * lines has a reader thread that reads them and starts each SEND_MESSAGE
 * batch itself, one at a time (core allows one outstanding op of each kind,
 * from any thread), so results print while stdin is still being read. The
 * signal thread takes SIGINT, SIGTERM and SIGHUP and cancels the call in
 * progress, so that what already arrived is printed and stdout flushed
 * before the process dies of the signal. */
#include "crunchctl.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

/* A PEM file larger than this is not a certificate. */
#define PEM_MAX    (4u << 20)
#define LINE_CHUNK 4096

static struct {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    const cctl_opts_t *o;
    /* Guards active: the signal thread cancels it. */
    pthread_mutex_t mu;
    grpc_call *active;
} rpc = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* --- signals ---------------------------------------------------------------------- */

static sigset_t sig_set;
static pthread_t sig_thread;
static bool sig_started;
static atomic_int sig_got;

static void *sig_main(void *arg)
{
    int s;

    (void)arg;
    for (;;) {
        if (sigwait(&sig_set, &s) != 0)
            continue;
        /* A second signal while the first one's cancel is still being
         * processed: the user means it. */
        if (atomic_exchange(&sig_got, s) != 0)
            _exit(128 + s);
        pthread_mutex_lock(&rpc.mu);
        if (rpc.active != NULL)
            grpc_call_cancel(rpc.active, NULL);
        pthread_mutex_unlock(&rpc.mu);
    }
    return NULL;
}

int cctl_signals_start(void)
{
    int err;

    sigemptyset(&sig_set);
    sigaddset(&sig_set, SIGINT);
    sigaddset(&sig_set, SIGTERM);
    sigaddset(&sig_set, SIGHUP);
    err = pthread_sigmask(SIG_BLOCK, &sig_set, NULL);
    if (err == 0)
        err = pthread_create(&sig_thread, NULL, sig_main, NULL);
    if (err != 0) {
        cctl_error(NULL, "cannot start the signal thread: %s", strerror(err));
        return CR_ERROR;
    }
    sig_started = true;
    return CR_OK;
}

int cctl_interrupted(void)
{
    return atomic_load(&sig_got);
}

void cctl_signals_finish(void)
{
    int s;

    if (sig_started) {
        /* sigwait is a cancellation point. */
        pthread_cancel(sig_thread);
        pthread_join(sig_thread, NULL);
        sig_started = false;
    }
    s = atomic_load(&sig_got);
    if (s == 0)
        return;
    /* Die of the signal, as a shell expects of an interrupted command. */
    fflush(stdout);
    signal(s, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &sig_set, NULL);
    raise(s);
    _exit(128 + s);
}

/* --- channel ---------------------------------------------------------------------- */

static void log_quiet(gpr_log_func_args *args)
{
    (void)args;
}

/* Read a whole PEM file for --ca, --cert or --key. Returns a NUL-terminated
 * malloc'ed copy, or NULL with the error printed. */
static char *read_pem(const char *opt, const char *path)
{
    struct stat sb;
    char *buf = NULL;
    size_t len = 0;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        cctl_error(NULL, "%s %s: %s", opt, path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode) || (size_t)sb.st_size > PEM_MAX) {
        cctl_error(NULL, "%s %s: not a PEM file (a regular file under %u MiB)", opt, path,
                   PEM_MAX >> 20);
        goto err;
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (buf == NULL) {
        cctl_error(NULL, "%s %s: out of memory", opt, path);
        goto err;
    }
    while (len < (size_t)sb.st_size) {
        n = read(fd, buf + len, (size_t)sb.st_size - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            cctl_error(NULL, "%s %s: %s", opt, path, strerror(errno));
            goto err;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fd);
    /* gRPC would only say "handshake failed" much later. */
    if (strstr(buf, "-----BEGIN ") == NULL) {
        cctl_error(NULL, "%s %s: no PEM data in it (expected -----BEGIN ...)", opt, path);
        free(buf);
        return NULL;
    }
    return buf;
err:
    free(buf);
    close(fd);
    return NULL;
}

static grpc_channel_credentials *make_creds(const cctl_opts_t *o)
{
    grpc_ssl_pem_key_cert_pair kp;
    grpc_channel_credentials *creds = NULL;
    char *ca = NULL, *cert = NULL, *key = NULL;

    if (!o->tls)
        return grpc_insecure_credentials_create();
    if (o->ca != NULL && (ca = read_pem("--ca", o->ca)) == NULL)
        goto done;
    if (o->cert != NULL) {
        if ((cert = read_pem("--cert", o->cert)) == NULL ||
            (key = read_pem("--key", o->key)) == NULL)
            goto done;
        kp.private_key = key;
        kp.cert_chain = cert;
    }
    /* NULL roots: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else the system's. */
    creds = grpc_ssl_credentials_create_ex(ca, cert != NULL ? &kp : NULL, NULL, NULL);
    if (creds == NULL)
        cctl_error(NULL, "cannot make TLS credentials (check --ca, --cert, --key)");
done:
    free(ca);
    free(cert);
    free(key);
    return creds;
}

int cctl_rpc_open(const cctl_opts_t *o)
{
    grpc_channel_credentials *creds;
    grpc_arg args[4];
    grpc_channel_args cargs;
    size_t n = 0;

    rpc.o = o;
    /* gRPC logs to stderr (TLS handshake failures at ERROR, for example);
     * crunchctl's errors are one line of its own. GRPC_VERBOSITY or
     * GRPC_TRACE in the environment bring gRPC's log back, for debugging. */
    if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
        gpr_set_log_function(log_quiet);
    grpc_init();

    /* Retries off: with them (the 1.51 default) a stream cut before its
     * headers may be retried and then hang until the deadline (notes 8.4). */
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = GRPC_ARG_ENABLE_RETRIES;
    args[n++].value.integer = 0;
    /* The server bounds what it sends (max_message_size); a client limit
     * would only turn a large output into an error here. */
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[n++].value.integer = -1;
    args[n].type = GRPC_ARG_STRING;
    args[n].key = GRPC_ARG_PRIMARY_USER_AGENT_STRING;
    args[n++].value.string = "crunchctl/" PACKAGE_VERSION;
    if (o->server_name != NULL) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n++].value.string = (char *)o->server_name;
    }
    cargs.num_args = n;
    cargs.args = args;

    creds = make_creds(o);
    if (creds == NULL) {
        grpc_shutdown_blocking();
        return CR_ERROR;
    }
    rpc.ch = grpc_channel_create(o->target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    rpc.cq = grpc_completion_queue_create_for_next(NULL);
    if (rpc.ch == NULL || rpc.cq == NULL) {
        cctl_error(NULL, "cannot create a gRPC channel to %s", o->target);
        cctl_rpc_close();
        return CR_ERROR;
    }
    return CR_OK;
}

void cctl_rpc_close(void)
{
    grpc_event ev;

    if (rpc.ch != NULL)
        grpc_channel_destroy(rpc.ch);
    rpc.ch = NULL;
    if (rpc.cq != NULL) {
        grpc_completion_queue_shutdown(rpc.cq);
        do {
            ev = grpc_completion_queue_next(rpc.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                            NULL);
        } while (ev.type != GRPC_QUEUE_SHUTDOWN);
        grpc_completion_queue_destroy(rpc.cq);
        rpc.cq = NULL;
    }
    /* Blocking: gRPC's threads end before we do, so valgrind sees only its
     * few never-freed globals (notes 10.11), and nothing runs during exit. */
    grpc_shutdown_blocking();
}

/* --- helpers ---------------------------------------------------------------------- */

void cctl_status_set(cctl_status_t *st, grpc_status_code code, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) == -1)
        s = NULL;
    va_end(ap);
    free(st->details);
    st->code = code;
    st->details = s != NULL ? s : strdup("");
    st->no_connection = false;
    st->local = false;
}

void cctl_status_free(cctl_status_t *st)
{
    free(st->details);
    st->details = NULL;
}

static gpr_timespec call_deadline(void)
{
    int64_t us = (int64_t)(rpc.o->timeout_s * 1e6);

    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_micros(us > 0 ? us : 1, GPR_TIMESPAN));
}

grpc_byte_buffer *cctl_pack(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    grpc_byte_buffer *bb;

    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Hand the bytes of bb to fn as one contiguous block. */
static int with_bytes(grpc_byte_buffer *bb, int (*fn)(void *, const uint8_t *, size_t),
                      void *ud)
{
    grpc_byte_buffer_reader r;
    grpc_slice all;
    int rc;

    if (!grpc_byte_buffer_reader_init(&r, bb))
        return CR_ERROR;
    all = grpc_byte_buffer_reader_readall(&r);
    rc = fn(ud, GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&r);
    return rc;
}

/* The status a finished call received, into st. */
static void status_from_call(cctl_status_t *st, grpc_status_code code, grpc_slice details)
{
    grpc_connectivity_state cs;

    free(st->details);
    st->code = code;
    st->details =
        strndup((const char *)GRPC_SLICE_START_PTR(details), GRPC_SLICE_LENGTH(details));
    if (st->details == NULL)
        st->details = strdup("");
    st->no_connection = false;
    st->local = false;
    /* A call that failed for want of a connection leaves the channel in
     * TRANSIENT_FAILURE (refused, no such socket, TLS handshake failed,
     * name not resolved), or still CONNECTING when the deadline came first.
     * An UNAVAILABLE from a server that is there (draining) leaves it READY
     * or IDLE (after its GOAWAY). */
    if (code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_DEADLINE_EXCEEDED) {
        cs = grpc_channel_check_connectivity_state(rpc.ch, 0);
        st->no_connection =
            cs == GRPC_CHANNEL_TRANSIENT_FAILURE ||
            (code == GRPC_STATUS_DEADLINE_EXCEEDED && cs == GRPC_CHANNEL_CONNECTING);
    }
}

static void set_active(grpc_call *call)
{
    pthread_mutex_lock(&rpc.mu);
    rpc.active = call;
    pthread_mutex_unlock(&rpc.mu);
    /* A signal that came before the call existed had nothing to cancel. */
    if (call != NULL && cctl_interrupted())
        grpc_call_cancel(call, NULL);
}

static grpc_call *new_call(const char *method)
{
    grpc_call *call;

    call = grpc_channel_create_call(rpc.ch, NULL, GRPC_PROPAGATE_DEFAULTS, rpc.cq,
                                    grpc_slice_from_static_string(method), NULL,
                                    call_deadline(), NULL);
    if (call != NULL)
        set_active(call);
    return call;
}

static void end_call(grpc_call *call)
{
    set_active(NULL);
    grpc_call_unref(call);
}

/* --- unary ------------------------------------------------------------------------ */

typedef struct {
    const ProtobufCMessageDescriptor *desc;
    ProtobufCMessage *msg;
} unpack_t;

static int unpack_cb(void *ud, const uint8_t *p, size_t n)
{
    unpack_t *u = ud;

    u->msg = protobuf_c_message_unpack(u->desc, NULL, n, p);
    return u->msg != NULL ? CR_OK : CR_ERROR;
}

void cctl_unary(const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *reply_desc, ProtobufCMessage **reply,
                cctl_status_t *st)
{
    grpc_metadata_array imd, tmd;
    grpc_byte_buffer *sbb, *rbb = NULL;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_call_error err;
    grpc_event ev;
    grpc_op ops[6];
    grpc_call *call;
    unpack_t u = {reply_desc, NULL};

    *reply = NULL;
    st->details = NULL;
    sbb = cctl_pack(req);
    call = new_call(method);
    if (call == NULL) {
        grpc_byte_buffer_destroy(sbb);
        cctl_status_set(st, GRPC_STATUS_INTERNAL, "cannot create a call");
        return;
    }
    grpc_metadata_array_init(&imd);
    grpc_metadata_array_init(&tmd);
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = sbb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &rbb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &tmd;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    err = grpc_call_start_batch(call, ops, 6, &ops, NULL);
    if (err != GRPC_CALL_OK) {
        grpc_call_cancel(call, NULL);
        cctl_status_set(st, GRPC_STATUS_INTERNAL, "grpc_call_start_batch: error %d",
                        (int)err);
        goto done;
    }
    /* One call, one batch: the only event is ours (RECV_STATUS makes it
     * succeed). */
    do {
        ev =
            grpc_completion_queue_next(rpc.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    } while (ev.type != GRPC_OP_COMPLETE || ev.tag != &ops);

    status_from_call(st, code, details);
    if (code == GRPC_STATUS_OK) {
        if (rbb == NULL)
            cctl_status_set(st, GRPC_STATUS_INTERNAL, "the server sent no reply message");
        else if (with_bytes(rbb, unpack_cb, &u) != CR_OK)
            cctl_status_set(st, GRPC_STATUS_INTERNAL,
                            "malformed reply from the server (not a %s)",
                            reply_desc->name);
        else
            *reply = u.msg;
    }
done:
    if (rbb != NULL)
        grpc_byte_buffer_destroy(rbb);
    grpc_byte_buffer_destroy(sbb);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&imd);
    grpc_metadata_array_destroy(&tmd);
    end_call(call);
}

/* --- streaming -------------------------------------------------------------------- */

enum { TAG_STATUS = 1, TAG_RECV, TAG_SEND, TAG_CLOSE };
#define TAG(t)   ((void *)(intptr_t)(t))
#define UNTAG(p) ((int)(intptr_t)(p))

typedef struct {
    const cctl_stream_t *s;
    grpc_call *call;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;  /* send_busy went false, or finished went true */
    bool finished;      /* the status is in: no batch starts any more */
    bool send_busy;     /* a SEND_MESSAGE is outstanding */
    bool send_failed;   /* a send did not go out: the call is over */
    unsigned pending;   /* batches started whose completion is not seen */
    grpc_byte_buffer *send_bb;
    uint64_t sent;       /* lines sent */
    cctl_status_t local; /* a local failure that ended the call, if code set */

    int wake[2]; /* the main thread tells the reader to stop */
    /* The reader's buffer: bytes [pos, end) not yet returned. */
    uint8_t *buf;
    size_t pos, end, cap;
    bool eof;
} stream_t;

/* End the call for a local reason (stdin, a malformed message): that reason
 * is what the user is told, not the CANCELLED it causes. */
static void stream_fail(stream_t *x, grpc_status_code code, bool local, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

static void stream_fail(stream_t *x, grpc_status_code code, bool local, const char *fmt,
                        ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) == -1)
        s = NULL;
    va_end(ap);
    pthread_mutex_lock(&x->mu);
    if (x->local.code == GRPC_STATUS_OK) {
        x->local.code = code;
        x->local.local = local;
        x->local.details = s != NULL ? s : strdup("");
        s = NULL;
    }
    pthread_mutex_unlock(&x->mu);
    free(s);
    grpc_call_cancel(x->call, NULL);
}

/* Next stdin line into *line, *len (newline and a CR before it removed; a
 * last line without newline counts). Returns 1 (a line), 0 (end of input),
 * -1 (read error, errno set) or -2 (told to stop). */
static int next_line(stream_t *x, const uint8_t **line, size_t *len)
{
    struct pollfd pfd[2];
    uint8_t *nl, *p;
    ssize_t n;
    size_t cap;

    for (;;) {
        if (x->pos < x->end) {
            nl = memchr(x->buf + x->pos, '\n', x->end - x->pos);
            if (nl != NULL || x->eof) {
                *line = x->buf + x->pos;
                *len = nl != NULL ? (size_t)(nl - *line) : x->end - x->pos;
                x->pos = nl != NULL ? (size_t)(nl - x->buf) + 1 : x->end;
                if (nl != NULL && *len > 0 && (*line)[*len - 1] == '\r')
                    (*len)--;
                return 1;
            }
        }
        if (x->eof)
            return 0;
        if (x->pos > 0) {
            memmove(x->buf, x->buf + x->pos, x->end - x->pos);
            x->end -= x->pos;
            x->pos = 0;
        }
        if (x->cap - x->end < LINE_CHUNK) {
            cap = x->cap ? x->cap * 2 : 4 * LINE_CHUNK;
            p = realloc(x->buf, cap);
            if (p == NULL) {
                errno = ENOMEM;
                return -1;
            }
            x->buf = p;
            x->cap = cap;
        }
        pfd[0].fd = cctl_stdin_fd;
        pfd[0].events = POLLIN;
        pfd[1].fd = x->wake[0];
        pfd[1].events = POLLIN;
        if (poll(pfd, 2, -1) == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (pfd[1].revents)
            return -2;
        if (pfd[0].revents == 0)
            continue;
        n = read(cctl_stdin_fd, x->buf + x->end, x->cap - x->end);
        if (n == -1 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n == -1)
            return -1;
        if (n == 0)
            x->eof = true;
        x->end += (size_t)n;
    }
}

/* Wait until no send is outstanding. Returns true if another batch may
 * start. x->mu held. */
static bool send_slot(stream_t *x)
{
    while (x->send_busy && !x->finished)
        pthread_cond_wait(&x->cv, &x->mu);
    return !x->finished && !x->send_failed;
}

static void *reader_main(void *arg)
{
    stream_t *x = arg;
    const uint8_t *line;
    grpc_byte_buffer *bb;
    grpc_call_error err;
    grpc_op op;
    size_t len;
    int r;

    for (;;) {
        r = next_line(x, &line, &len);
        if (r == -2)
            break;
        if (r == -1) {
            stream_fail(x, GRPC_STATUS_CANCELLED, true, "cannot read stdin: %s",
                        strerror(errno));
            break;
        }
        memset(&op, 0, sizeof(op));
        bb = NULL;
        if (r == 1) {
            if (x->s->on_line(x->s->ud, line, len, x->sent, &bb) != CR_OK || bb == NULL) {
                stream_fail(x, GRPC_STATUS_RESOURCE_EXHAUSTED, true,
                            "cannot make the message of stdin line %" PRIu64
                            ": out of memory",
                            x->sent + 1);
                break;
            }
            op.op = GRPC_OP_SEND_MESSAGE;
            op.data.send_message.send_message = bb;
        } else {
            op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        }
        pthread_mutex_lock(&x->mu);
        if (!send_slot(x)) {
            pthread_mutex_unlock(&x->mu);
            if (bb != NULL)
                grpc_byte_buffer_destroy(bb);
            break;
        }
        err =
            grpc_call_start_batch(x->call, &op, 1, TAG(bb ? TAG_SEND : TAG_CLOSE), NULL);
        if (err == GRPC_CALL_OK) {
            x->pending++;
            if (bb != NULL) {
                x->send_busy = true;
                x->send_bb = bb;
                x->sent++;
            }
        }
        pthread_mutex_unlock(&x->mu);
        if (err != GRPC_CALL_OK) {
            if (bb != NULL)
                grpc_byte_buffer_destroy(bb);
            stream_fail(x, GRPC_STATUS_INTERNAL, false, "grpc_call_start_batch: error %d",
                        (int)err);
            break;
        }
        if (r == 0)
            break;
    }
    return NULL;
}

typedef struct {
    const cctl_stream_t *s;
    stream_t *x;
} msg_ctx_t;

static int msg_cb(void *ud, const uint8_t *p, size_t n)
{
    msg_ctx_t *m = ud;

    return m->s->on_msg(m->s->ud, p, n);
}

static bool start_recv(stream_t *x, grpc_byte_buffer **rbb, grpc_metadata_array *imd,
                       bool first)
{
    grpc_op ops[2];
    size_t n = 0;

    memset(ops, 0, sizeof(ops));
    if (first) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = imd;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = rbb;
    if (grpc_call_start_batch(x->call, ops, n, TAG(TAG_RECV), NULL) != GRPC_CALL_OK)
        return false;
    x->pending++;
    return true;
}

uint64_t cctl_stream(const cctl_stream_t *s, cctl_status_t *st)
{
    stream_t x;
    msg_ctx_t mctx = {s, &x};
    grpc_metadata_array imd, tmd;
    grpc_byte_buffer *rbb = NULL, *first_bb = NULL;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    pthread_t reader;
    bool reader_up = false, failed;
    grpc_event ev;
    grpc_op ops[2];
    int err;

    memset(&x, 0, sizeof(x));
    x.s = s;
    x.wake[0] = x.wake[1] = -1;
    st->details = NULL;
    pthread_mutex_init(&x.mu, NULL);
    pthread_cond_init(&x.cv, NULL);
    grpc_metadata_array_init(&imd);
    grpc_metadata_array_init(&tmd);

    if (s->on_line != NULL && pipe2(x.wake, O_CLOEXEC) == -1) {
        cctl_status_set(st, GRPC_STATUS_INTERNAL, "pipe2: %s", strerror(errno));
        goto out;
    }
    x.call = new_call(s->method);
    if (x.call == NULL) {
        cctl_status_set(st, GRPC_STATUS_INTERNAL, "cannot create a call");
        goto out;
    }

    /* The status batch first: its tag fires only at the very end, and it
     * tells core we will collect the status (notes 8.3). */
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[1].data.recv_status_on_client.trailing_metadata = &tmd;
    ops[1].data.recv_status_on_client.status = &code;
    ops[1].data.recv_status_on_client.status_details = &details;
    if (grpc_call_start_batch(x.call, ops, 2, TAG(TAG_STATUS), NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(x.call, NULL);
        cctl_status_set(st, GRPC_STATUS_INTERNAL, "grpc_call_start_batch failed");
        goto out_call;
    }
    x.pending = 1;
    if (!start_recv(&x, &rbb, &imd, true))
        stream_fail(&x, GRPC_STATUS_INTERNAL, false, "cannot start receiving");

    if (s->first != NULL) {
        first_bb = cctl_pack(s->first);
        memset(ops, 0, sizeof(ops));
        ops[0].op = GRPC_OP_SEND_MESSAGE;
        ops[0].data.send_message.send_message = first_bb;
        ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        if (grpc_call_start_batch(x.call, ops, 2, TAG(TAG_CLOSE), NULL) == GRPC_CALL_OK)
            x.pending++;
        else
            stream_fail(&x, GRPC_STATUS_INTERNAL, false, "cannot send the request");
    } else if (s->on_line != NULL) {
        err = pthread_create(&reader, NULL, reader_main, &x);
        if (err != 0)
            stream_fail(&x, GRPC_STATUS_INTERNAL, false,
                        "cannot start the stdin reader: %s", strerror(err));
        else
            reader_up = true;
    }

    for (;;) {
        ev =
            grpc_completion_queue_next(rpc.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        pthread_mutex_lock(&x.mu);
        x.pending--;
        switch (UNTAG(ev.tag)) {
        case TAG_RECV:
            /* After a failure only the status matters. */
            failed = x.local.code != GRPC_STATUS_OK;
            pthread_mutex_unlock(&x.mu);
            if (rbb != NULL) {
                /* Unlocked: printing may block on a slow stdout, and the
                 * reader must go on meanwhile. */
                if (!failed && with_bytes(rbb, msg_cb, &mctx) != CR_OK)
                    stream_fail(&x, GRPC_STATUS_INTERNAL, false,
                                "malformed message from the server");
                grpc_byte_buffer_destroy(rbb);
                rbb = NULL;
                pthread_mutex_lock(&x.mu);
                if (ev.success && x.local.code == GRPC_STATUS_OK &&
                    !start_recv(&x, &rbb, &imd, false)) {
                    pthread_mutex_unlock(&x.mu);
                    stream_fail(&x, GRPC_STATUS_INTERNAL, false,
                                "cannot start receiving");
                    pthread_mutex_lock(&x.mu);
                }
            } else {
                pthread_mutex_lock(&x.mu);
            }
            break;
        case TAG_SEND:
            /* Destroyed at completion, as the Python wrapper does (notes 5). */
            grpc_byte_buffer_destroy(x.send_bb);
            x.send_bb = NULL;
            x.send_busy = false;
            if (!ev.success)
                x.send_failed = true;
            pthread_cond_broadcast(&x.cv);
            break;
        case TAG_CLOSE:
            break;
        case TAG_STATUS:
            x.finished = true;
            pthread_cond_broadcast(&x.cv);
            if (x.wake[1] != -1 && write(x.wake[1], "x", 1) == -1) {
                /* A full pipe has a byte in it already: the reader wakes. */
            }
            break;
        }
        if (x.finished && x.pending == 0) {
            pthread_mutex_unlock(&x.mu);
            break;
        }
        pthread_mutex_unlock(&x.mu);
    }
    if (reader_up)
        pthread_join(reader, NULL);

    if (x.local.code != GRPC_STATUS_OK && !cctl_interrupted()) {
        st->code = x.local.code;
        st->details = x.local.details;
        st->no_connection = false;
        st->local = x.local.local;
        x.local.details = NULL;
    } else {
        status_from_call(st, code, details);
    }
out_call:
    end_call(x.call);
out:
    if (first_bb != NULL)
        grpc_byte_buffer_destroy(first_bb);
    if (x.wake[0] != -1) {
        close(x.wake[0]);
        close(x.wake[1]);
    }
    free(x.local.details);
    free(x.buf);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&imd);
    grpc_metadata_array_destroy(&tmd);
    pthread_cond_destroy(&x.cv);
    pthread_mutex_destroy(&x.mu);
    return x.sent;
}
