/* rpc.c: the gRPC server of an acceptor: Run, RunStream, Submit and Updates,
 * UNIMPLEMENTED for unknown methods, the service modules (health, reflection,
 * Stats) on the same server, connection tracking, and the drain. The one wall
 * around gRPC core, with the rpc_*.c services.
 *
 * Threads (all inherit the acceptor's fully blocked signal mask):
 *   - the gRPC thread (cr_rpc_serve, cr_rpc_shutdown) polls the one completion
 *     queue: accepts calls, reads and validates tasks and submits them,
 *     finishes writes, answers errors, drains;
 *   - the result thread takes finished tasks from this acceptor's result ring
 *     and sends them itself under the call's mutex (notes 4.4, design A): the
 *     reply of a Run, one SEND_MESSAGE of a RunStream; it also retries the
 *     calls and streams that found the queue full (the pending list), so the
 *     gRPC thread never waits for queue space;
 *   - the updates thread takes entries from the shared updates feed, one per
 *     Updates call that can write (round robin), and starts those writes. It
 *     is the only thread that may block on the feed.
 *
 * Call contexts (rpc_call_t, one per call of our four methods) are reference
 * counted: one reference per started gRPC tag, one for the call table, one
 * for the pending list, one for the updates list, one while another thread
 * holds it. The last reference unrefs the grpc_call and frees the context,
 * from whichever thread drops it.
 *
 * Every grpc_call_start_batch on a call happens under the call's mutex (sends
 * and receives of one stream start on three threads; core wants them
 * serialized), with at most one batch of each kind outstanding per call: one
 * RECV_MESSAGE, one SEND_MESSAGE, one final status (notes 3.1, 4.2). Nothing
 * starts once `closed` is set (a batch after the queue shut down aborts).
 *
 * Lock order: call->mu, then at most one of tbl_mu, pend_mu, upd_mu, conn_mu,
 * then the region's own lock inside cr_task_* and cr_feed_*. The last
 * reference is never dropped under call->mu.
 *
 * Who owns descriptor d of a submitted task: the shared region, until the
 * result thread takes it from the ring; from then on the result thread, which
 * always releases it. A Run's task_live, and a RunStream's live set, say "d is
 * submitted and its result not taken yet"; both are read and changed only
 * under call->mu: a call that ends marks exactly its live descriptors
 * cancelled, so cr_task_cancel never touches a descriptor that was released
 * (and maybe reused). A Submit task belongs to the region and then to the
 * updates feed (its reservation travels with it): its call never waits for
 * it. A feed entry the updates thread took is ours until its write
 * completes: released once sent, put back (cr_feed_requeue) when the call
 * died first, so each result reaches exactly one subscriber. */
#include "rpc.h"

#include "access.h"
#include "ctl.h"
#include "handlers.h"
#include "log.h"
#include "task_check.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "crunch/v1/crunch.pb-c.h"

#define RPC_GENERIC_POSTED   8     /* generic requests kept posted (UNIMPLEMENTED) */
#define RPC_TICK_MS          100   /* completion-queue poll: stop, drain, log level */
#define RPC_RESULT_BATCH     64
#define RPC_RESULT_WAIT_MS   100
#define RPC_PENDING_RETRY_MS 5     /* retry period while calls wait for queue space */
#define RPC_PENDING_MAX      65536 /* Run calls waiting for queue space, at most */
#define RPC_CANCEL_AFTER_MS  1000  /* after grpc_server_shutdown_and_notify of a
                                    * drained server: then cancel what is left */
#define RPC_CANCEL_WAIT_MS   2000  /* after cancel_all_calls: then give up */
#define RPC_UPDATES_WAIT_MS  100   /* updates thread: one feed wait, then look again */
#define RPC_CONN_RESCAN_MS   250   /* connection table: at most this stale */
#define RPC_PEM_MAX          (1 << 20)
#define RPC_MSG_MAX          1024  /* status details we build */
#define RPC_NS_PER_MS        UINT64_C(1000000)
#define RPC_RELOADING        "server reloading, reconnect"

typedef enum {
    TAG_CALL_NEW = 1, /* a call of ours arrived (or its request failed at shutdown) */
    TAG_CALL_CLOSE,   /* RECV_CLOSE_ON_SERVER: the call is over */
    TAG_CALL_RECV,    /* a stream's RECV_MESSAGE completed */
    TAG_CALL_WRITE,   /* a stream's SEND_MESSAGE completed */
    TAG_CALL_STATUS,  /* the final batch (status, maybe a message) completed */
    TAG_GEN_NEW,      /* any other method arrived */
    TAG_GEN_DONE,     /* its UNIMPLEMENTED batch completed */
    TAG_SHUTDOWN,     /* grpc_server_shutdown_and_notify finished */
} rpc_tag_type_t;

_Static_assert(TAG_SHUTDOWN < CR_RPC_TAG_CALLBACK,
               "tag types must not meet the services'");

/* What goes through the completion queue. Its first member has the layout of
 * cr_rpc_cb_t's, so that the dispatcher tells the two apart by `type`. */
typedef struct {
    int type; /* rpc_tag_type_t, or CR_RPC_TAG_CALLBACK */
    void *obj;
} rpc_tag_t;

typedef enum {
    CALL_RUN = 0, /* unary: Task in, Result (or an error status) out */
    CALL_STREAM,  /* RunStream: bidi */
    CALL_SUBMIT,  /* Submit: client streaming, results go to the updates feed */
    CALL_UPDATES, /* Updates: server streaming from the updates feed */
    CALL_KINDS,
} rpc_kind_t;

static const struct {
    const char *path;
    const char *name;
    grpc_server_register_method_payload_handling payload;
    unsigned posted; /* requests kept posted */
} rpc_methods[CALL_KINDS] = {
    [CALL_RUN] = {"/crunch.v1.Crunch/Run", "Run",
                  GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 32},
    [CALL_STREAM] = {"/crunch.v1.Crunch/RunStream", "RunStream", GRPC_SRM_PAYLOAD_NONE,
                     8},
    [CALL_SUBMIT] = {"/crunch.v1.Crunch/Submit", "Submit", GRPC_SRM_PAYLOAD_NONE, 8},
    [CALL_UPDATES] = {"/crunch.v1.Crunch/Updates", "Updates",
                      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 8},
};

typedef enum {
    PEND_NONE = 0,
    PEND_LISTED,   /* on rpc.pend_head list */
    PEND_RETRYING, /* taken off the list by the result thread for one retry round */
} rpc_pend_state_t;

/* A message waiting to be sent on a RunStream. */
typedef struct rpc_out_s rpc_out_t;
struct rpc_out_s {
    rpc_out_t *next;
    grpc_byte_buffer *bb;
};

typedef struct rpc_call_s rpc_call_t;

struct rpc_call_s {
    rpc_kind_t kind;
    /* Filled by gRPC at TAG_CALL_NEW; then only read. */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload; /* the first message (Run, Updates) */
    int close_cancelled;       /* written by core for RECV_CLOSE_ON_SERVER */
    rpc_tag_t tag_new, tag_close, tag_recv, tag_write, tag_status;
    int refs; /* atomic */
    char *peer; /* for the access log (free) */

    /* Open calls, for the drain: gRPC thread only. */
    rpc_call_t *onext, *oprev;
    bool open;
    bool accepted; /* the call arrived: it gets an access-log line when freed */

    pthread_mutex_t mu; /* guards everything below, and start_batch on this call */
    bool status_started; /* the final batch was started */
    bool gone;           /* RECV_CLOSE came back: nothing more may be sent */
    bool broken;         /* a batch failed: the call is being torn down */
    bool md_sent;        /* SEND_INITIAL_METADATA went out (with the first send) */
    bool reading;        /* a RECV_MESSAGE is outstanding */
    bool writing;        /* a SEND_MESSAGE is outstanding */
    bool half_closed;    /* the client finished sending */
    bool draining;       /* the acceptor drains: end this stream */
    bool in_table;
    int status;          /* the status sent, for the access log */
    int abort_code;      /* end now with this status (malformed message...) */
    char *abort_msg;
    uint64_t tag;        /* call-table tag carried by our descriptors */
    grpc_byte_buffer *recv_bb; /* RECV_MESSAGE target */

    /* The task being submitted: a Run's request, or the one task a stream
     * holds while the queue is full (then the stream is not read). */
    Crunch__V1__Task *task;
    uint32_t handler;
    uint64_t id;          /* Task.id, for logs */
    uint64_t deadline_ns; /* CLOCK_MONOTONIC, 0 = none */
    uint32_t held_fd;     /* Submit: the feed reservation of `task` */
    uint64_t pend_since_ns, pend_until_ns;
    size_t pend_bytes;

    /* Run: the one submitted descriptor. */
    bool task_live;
    uint32_t d;

    /* RunStream: submitted descriptors whose result is not taken (rpc.dpos
     * holds each one's index here), and the results waiting to be sent. */
    uint32_t *live;
    uint32_t nlive, live_cap;
    rpc_out_t *out_head, *out_tail;
    unsigned out_n;

    /* Updates. */
    uint32_t max_results; /* 0 = unlimited */
    uint64_t sent;        /* entries written and released */
    uint32_t feed_d;      /* entry being written, CR_NONE if none */
    int feed_code;        /* its code and times, counted once sent */
    uint64_t feed_queue_us, feed_run_us;

    /* Access log. */
    char hname[64];
    uint64_t tasks, ok, failed; /* Submit: ok = accepted, failed = rejected */
    uint64_t bytes_in, bytes_out, queue_us, run_us;

    /* Pending list links and state: guarded by rpc.pend_mu. */
    rpc_pend_state_t pend;
    rpc_call_t *pnext;

    /* Updates list links and state: guarded by rpc.upd_mu. */
    rpc_call_t *unext, *uprev;
    bool upd_listed, upd_ready;
};

/* A call to a method we do not serve: answered UNIMPLEMENTED at once. */
typedef struct {
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    int cancelled;
    rpc_tag_t tag_new, tag_done;
} rpc_generic_t;

/* Call table slot: the 64-bit tag is (gen << 32 | index), so that the tag of a
 * call that ended never matches the call that reuses its slot. */
typedef struct {
    rpc_call_t *call;
    uint32_t gen;
    uint32_t next; /* free list */
} rpc_slot_t;

/* A connection handed to gRPC: alive while its fd still names that socket. */
typedef struct {
    int fd;
    dev_t dev;
    ino_t ino;
    char peer[64]; /* for the access log: gRPC names such a peer "fd:N" */
} rpc_conn_t;

static struct {
    const cr_acceptor_ctx_t *ctx;
    const cr_conf_t *conf;
    cr_region_t *region;
    cr_region_t *feed; /* NULL when this crunchd has none (Submit/Updates refused) */
    unsigned slot;
    int row;   /* control-page row, -1 = none */
    pid_t pid; /* the process that ran grpc_init */

    grpc_server *server;
    grpc_completion_queue *cq;
    grpc_server_credentials *creds;
    void *method[CALL_KINDS];
    unsigned ntls; /* TLS listeners bound by gRPC itself */
    rpc_tag_t tag_shutdown;

    /* gRPC thread only */
    bool shutting_down; /* no more requests are posted */
    bool shutdown_seen;
    unsigned posted[CALL_KINDS], gen_posted;
    uint64_t post_err_ns; /* rate limit of request errors */
    rpc_call_t *open_head; /* calls accepted and not closed */
    unsigned nopen;
    uint64_t drain_start_ns, last_tick_ns;
    int log_level;
    uint64_t reject_log_ns; /* Submit rejections: at most one line a second */
    uint64_t reject_quiet;  /* rejections not logged since that line */

    int stop;     /* atomic cr_rpc_stop_t */
    int draining; /* atomic */
    int closed;   /* atomic: no batch may start any more */
    int live;     /* atomic: call contexts alive (ours + generic) */

    uint32_t *dpos; /* per region descriptor: its index in its RunStream's live set */

    pthread_mutex_t tbl_mu;
    rpc_slot_t *tbl;
    uint32_t tbl_cap, tbl_free;

    pthread_mutex_t pend_mu;
    rpc_call_t *pend_head, *pend_tail;
    unsigned pend_count; /* listed + retrying; atomic reads outside */
    unsigned pend_runs;  /* of which Run calls (bounded by RPC_PENDING_MAX) */
    uint64_t pend_bytes;

    pthread_mutex_t upd_mu;
    pthread_cond_t upd_cv;
    rpc_call_t *upd_head, *upd_next; /* Updates calls; next = round-robin cursor */
    unsigned upd_ready;              /* how many can take an entry now */

    pthread_mutex_t conn_mu;
    rpc_conn_t *conns;
    unsigned nconns, conns_cap;
    uint64_t conn_scan_ns;

    pthread_t results_tid, updates_tid;
    bool results_started, updates_started;
    int threads_stop; /* atomic */
} rpc = {
    .row = -1,
    .tbl_mu = PTHREAD_MUTEX_INITIALIZER,
    .pend_mu = PTHREAD_MUTEX_INITIALIZER,
    .upd_mu = PTHREAD_MUTEX_INITIALIZER,
    .upd_cv = PTHREAD_COND_INITIALIZER,
    .conn_mu = PTHREAD_MUTEX_INITIALIZER,
    .tbl_free = CR_NONE,
};

static const cr_rpc_service_t *const rpc_services[] = {
    &cr_rpc_health,
    &cr_rpc_reflection,
    &cr_rpc_stats,
};

static void rpc_call_unref(rpc_call_t *c);
static void rpc_stream_pump(rpc_call_t *c);
static void rpc_updates_ready(rpc_call_t *c);

/* --- logging ------------------------------------------------------------------- */

static void rpc_gpr_log(gpr_log_func_args *a)
{
    int level;
    const char *file = a->file ? strrchr(a->file, '/') : NULL;

    switch (a->severity) {
    case GPR_LOG_SEVERITY_ERROR:
        /* A client that fails the TLS handshake (no or a wrong certificate,
         * plain text, a port scanner) is the client's problem, as in nginx. */
        level = strstr(a->message, "Handshake failed") ? CR_LOG_INFO : CR_LOG_ERR;
        break;
    case GPR_LOG_SEVERITY_INFO:
        level = CR_LOG_INFO;
        break;
    default:
        level = CR_LOG_DEBUG;
        break;
    }
    cr_log(level, 0, "grpc: %s (%s:%d)", a->message,
           file ? file + 1 : (a->file ? a->file : "?"), a->line);
}

/* gRPC's own verbosity follows ours, unless GRPC_VERBOSITY says otherwise. */
static void rpc_gpr_verbosity(void)
{
    if (getenv("GRPC_VERBOSITY") == NULL)
        gpr_set_log_verbosity(cr_log_level >= CR_LOG_DEBUG ? GPR_LOG_SEVERITY_DEBUG
                                                           : GPR_LOG_SEVERITY_ERROR);
}

/* --- time ---------------------------------------------------------------------- */

/* Nanoseconds left until a gRPC deadline. Returns false when there is none.
 * The server publishes deadlines on GPR_CLOCK_MONOTONIC, whose epoch need not
 * be CLOCK_MONOTONIC's: only the difference from gpr_now() is meaningful. */
static bool rpc_time_left(gpr_timespec dl, int64_t *left_ns)
{
    if (dl.tv_sec == INT64_MAX)
        return false;
    if (dl.clock_type != GPR_CLOCK_MONOTONIC)
        dl = gpr_convert_clock_type(dl, GPR_CLOCK_MONOTONIC);
    if (dl.tv_sec == INT64_MAX)
        return false;
    gpr_timespec left = gpr_time_sub(dl, gpr_now(GPR_CLOCK_MONOTONIC));
    /* A deadline years away is no deadline; this also keeps the sum below in
     * range. */
    if (left.tv_sec > 100LL * 365 * 24 * 3600)
        return false;
    *left_ns = left.tv_sec * 1000000000LL + left.tv_nsec;
    return true;
}

static gpr_timespec rpc_deadline_ms(int ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* "64m" when the size is a whole number of k/m/g, as the config accepts it. */
static void rpc_fmt_size(uint64_t n, char *buf, size_t len)
{
    static const char sfx[] = "gmk";
    for (int i = 0; i < 3; i++) {
        uint64_t unit = 1ull << (10 * (3 - i));
        if (n >= unit && n % unit == 0) {
            snprintf(buf, len, "%" PRIu64 "%c", n / unit, sfx[i]);
            return;
        }
    }
    snprintf(buf, len, "%" PRIu64, n);
}

/* --- messages ------------------------------------------------------------------ */

grpc_byte_buffer *cr_rpc_pack(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Unpack a received message. protobuf-c wants contiguous bytes: a one-slice
 * message is read in place, a larger one (many slices) is joined first. */
ProtobufCMessage *cr_rpc_unpack(const ProtobufCMessageDescriptor *desc,
                                grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    ProtobufCMessage *m;

    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        grpc_slice *s = &bb->data.raw.slice_buffer.slices[0];
        return protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(*s),
                                         GRPC_SLICE_START_PTR(*s));
    }
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all),
                                  GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&r);
    return m;
}

static Crunch__V1__Task *rpc_decode_task(grpc_byte_buffer *bb)
{
    return (Crunch__V1__Task *)cr_rpc_unpack(&crunch__v1__task__descriptor, bb);
}

static const char *rpc_handler_name(uint32_t h)
{
    return cr_handler_name(h);
}

/* What a finished descriptor (of a region or of the feed) says. */
typedef struct {
    int code;
    uint64_t queue_us, run_us;
    char err[RPC_MSG_MAX]; /* code != 0: the error text */
} rpc_res_t;

static void rpc_res_read(cr_region_t *r, uint32_t d, rpc_res_t *res)
{
    cr_task_sh_t *t = cr_task(r, d);

    res->code = t->code;
    if (res->code < 0 || res->code > GRPC_STATUS_UNAUTHENTICATED)
        res->code = GRPC_STATUS_UNKNOWN;
    res->queue_us =
        t->start_ns > t->enqueue_ns ? (t->start_ns - t->enqueue_ns) / 1000 : 0;
    res->run_us = t->end_ns > t->start_ns ? (t->end_ns - t->start_ns) / 1000 : 0;
    res->err[0] = '\0';
    if (res->code != GRPC_STATUS_OK)
        cr_task_error_text(r, d, rpc_handler_name(t->handler), res->err,
                           sizeof(res->err));
}

/* The Result message of descriptor d: the output copied straight from the
 * arena into the slice by the pack, or the error text. */
static grpc_byte_buffer *rpc_res_pack(cr_region_t *r, uint32_t d, const rpc_res_t *res)
{
    cr_task_sh_t *t = cr_task(r, d);
    Crunch__V1__Result m = CRUNCH__V1__RESULT__INIT;

    m.id = t->id;
    m.code = res->code;
    if (res->code == GRPC_STATUS_OK) {
        m.output.data = (uint8_t *)cr_task_result(r, d);
        m.output.len = t->result_len;
    } else {
        m.error = (char *)res->err;
    }
    m.worker = t->worker;
    m.queued_us = res->queue_us;
    m.run_us = res->run_us;
    return cr_rpc_pack(&m.base);
}

/* --- call contexts ------------------------------------------------------------- */

/* Our row on the control page (Stats), or NULL (unit tests, no row). */
static cr_proc_sh_t *rpc_ctl_row(void)
{
    return cr_ctl && rpc.row >= 0 && rpc.row < CR_MAX_PROCS ? &cr_ctl->procs[rpc.row] : NULL;
}

static void rpc_call_ref(rpc_call_t *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

static void rpc_out_drop(rpc_call_t *c)
{
    while (c->out_head) {
        rpc_out_t *o = c->out_head;
        c->out_head = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
    }
    c->out_tail = NULL;
    c->out_n = 0;
}

static void rpc_call_log(rpc_call_t *c);

/* The last reference: every tag of the call has come back, so what the
 * access log says is final (a write may complete after RECV_CLOSE). */
static void rpc_call_free(rpc_call_t *c)
{
    if (c->accepted) {
        if (cr_access_on())
            rpc_call_log(c);
        cr_proc_sh_t *row = rpc_ctl_row();
        if (row)
            __atomic_add_fetch(&row->tasks_done, 1, __ATOMIC_RELAXED);
    }
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    if (c->task)
        crunch__v1__task__free_unpacked(c->task, NULL);
    free(c->peer);
    rpc_out_drop(c);
    free(c->live);
    free(c->abort_msg);
    pthread_mutex_destroy(&c->mu);
    free(c);
    __atomic_sub_fetch(&rpc.live, 1, __ATOMIC_RELEASE);
}

static void rpc_call_unref(rpc_call_t *c)
{
    int left = __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    cr_assert(left >= 0);
    if (left == 0)
        rpc_call_free(c);
}

/* Start a batch on a call; the tag holds a reference until it returns. A
 * refused batch poisons the call in 1.51 (notes 3.1): cancel it, never retry.
 * c->mu held (or c not shared yet). Returns true if started. */
static bool rpc_call_start(rpc_call_t *c, const grpc_op *ops, size_t n, rpc_tag_t *tag)
{
    rpc_call_ref(c);
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e == GRPC_CALL_OK)
        return true;
    cr_log(CR_LOG_ALERT, 0,
           "grpc_call_start_batch() failed with %d (%s, tag %d); cancelling the call",
           (int)e, rpc_methods[c->kind].name, tag->type);
    grpc_call_cancel(c->call, NULL);
    c->broken = true;
    /* The caller still holds a reference: this one is never the last. */
    __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    return false;
}

/* May anything still be sent on c? c->mu held. */
static bool rpc_call_sendable(const rpc_call_t *c)
{
    return !c->status_started && !c->gone && !c->broken &&
           !__atomic_load_n(&rpc.closed, __ATOMIC_ACQUIRE);
}

/* Start the final batch: initial metadata unless sent, the message bb when
 * set (consumed), the status. At most once per call, never after it ended or
 * once the queue closes. c->mu held. */
static void rpc_call_finish(rpc_call_t *c, int status, const char *msg,
                            grpc_byte_buffer *bb)
{
    grpc_op ops[3];
    grpc_slice details;
    size_t n = 0;

    if (!rpc_call_sendable(c)) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return;
    }
    c->status_started = true;
    c->status = status;

    memset(ops, 0, sizeof(ops));
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = 0;
        n++;
        c->md_sent = true;
    }
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        c->bytes_out += grpc_byte_buffer_length(bb);
        n++;
    }
    /* status_details is copied by start_batch (call.cc), so a local slice is fine. */
    details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n].data.send_status_from_server.status_details = msg ? &details : NULL;
    n++;

    rpc_call_start(c, ops, n, &c->tag_status);
    grpc_slice_unref(details);
    /* SEND_MESSAGE moved the slices out already; the shell is ours. */
    if (bb)
        grpc_byte_buffer_destroy(bb);
}

static void rpc_call_finishf(rpc_call_t *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rpc_call_finishf(rpc_call_t *c, int status, const char *fmt, ...)
{
    char msg[RPC_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rpc_call_finish(c, status, msg, NULL);
}

/* --- call table ---------------------------------------------------------------- */

/* Register c so that its results can find it. Takes a reference for the table.
 * c->mu held. Returns CR_OK or CR_ERROR (out of memory). */
static int rpc_tbl_add(rpc_call_t *c)
{
    pthread_mutex_lock(&rpc.tbl_mu);
    if (rpc.tbl_free == CR_NONE) {
        uint32_t cap = rpc.tbl_cap ? rpc.tbl_cap * 2 : 256;
        rpc_slot_t *t = cap > rpc.tbl_cap ? realloc(rpc.tbl, cap * sizeof(*t)) : NULL;
        if (t == NULL) {
            pthread_mutex_unlock(&rpc.tbl_mu);
            cr_log(CR_LOG_CRIT, ENOMEM, "cannot grow the call table to %u calls", cap);
            return CR_ERROR;
        }
        for (uint32_t i = rpc.tbl_cap; i < cap; i++) {
            t[i].call = NULL;
            t[i].gen = 0;
            t[i].next = i + 1 < cap ? i + 1 : CR_NONE;
        }
        rpc.tbl_free = rpc.tbl_cap;
        rpc.tbl = t;
        rpc.tbl_cap = cap;
    }
    uint32_t i = rpc.tbl_free;
    rpc_slot_t *s = &rpc.tbl[i];
    rpc.tbl_free = s->next;
    if (++s->gen == 0)
        s->gen = 1; /* tag 0 never names a call: Submit tasks carry it */
    s->call = c;
    s->next = CR_NONE;
    c->tag = (uint64_t)s->gen << 32 | i;
    c->in_table = true;
    rpc_call_ref(c);
    pthread_mutex_unlock(&rpc.tbl_mu);
    return CR_OK;
}

/* Unregister c (c->mu held). The caller drops the table's reference after
 * unlocking c->mu. */
static void rpc_tbl_del(rpc_call_t *c)
{
    uint32_t i = (uint32_t)(c->tag & 0xffffffffu);

    pthread_mutex_lock(&rpc.tbl_mu);
    cr_assert(i < rpc.tbl_cap && rpc.tbl[i].call == c);
    rpc.tbl[i].call = NULL;
    rpc.tbl[i].next = rpc.tbl_free;
    rpc.tbl_free = i;
    pthread_mutex_unlock(&rpc.tbl_mu);
    c->in_table = false;
}

/* The call a result belongs to, with a reference, or NULL if it ended. */
static rpc_call_t *rpc_tbl_get(uint64_t tag)
{
    uint32_t i = (uint32_t)(tag & 0xffffffffu);
    rpc_call_t *c = NULL;

    pthread_mutex_lock(&rpc.tbl_mu);
    if (i < rpc.tbl_cap && rpc.tbl[i].gen == (uint32_t)(tag >> 32) && rpc.tbl[i].call) {
        c = rpc.tbl[i].call;
        rpc_call_ref(c);
    }
    pthread_mutex_unlock(&rpc.tbl_mu);
    return c;
}

/* --- a RunStream's live descriptors --------------------------------------------- */

static bool rpc_live_reserve(rpc_call_t *c)
{
    if (c->nlive < c->live_cap)
        return true;
    uint32_t cap = c->live_cap ? c->live_cap * 2 : 16;
    uint32_t *l = realloc(c->live, cap * sizeof(*l));
    if (l == NULL)
        return false;
    c->live = l;
    c->live_cap = cap;
    return true;
}

/* Room was reserved by rpc_live_reserve. */
static void rpc_live_add(rpc_call_t *c, uint32_t d)
{
    rpc.dpos[d] = c->nlive;
    c->live[c->nlive++] = d;
}

/* Remove d if it is live in c; returns whether it was. */
static bool rpc_live_del(rpc_call_t *c, uint32_t d)
{
    uint32_t i = rpc.dpos[d];
    if (i >= c->nlive || c->live[i] != d)
        return false;
    uint32_t last = c->live[--c->nlive];
    c->live[i] = last;
    rpc.dpos[last] = i;
    return true;
}

/* The call is over: every task still submitted is cancelled (a worker skips
 * it; a result that comes anyway is freed by the result thread). */
static void rpc_live_cancel(rpc_call_t *c)
{
    for (uint32_t i = 0; i < c->nlive; i++)
        cr_task_cancel(rpc.region, c->live[i]);
    if (c->nlive)
        cr_log_debug("RunStream: %u tasks cancelled: the call ended before their "
                     "results",
                     c->nlive);
    c->nlive = 0;
}

/* --- submitting ---------------------------------------------------------------- */

/* Wake the result thread out of cr_result_take so that it retries the pending
 * list now rather than after its 100 ms wait. */
static void rpc_results_kick(void)
{
    cr_result_wake(rpc.region, rpc.slot);
}

/* Check a task read from a client. Returns GRPC_STATUS_OK with *handler and
 * *deadline_ns set (both the call deadline, if with_call_deadline, and
 * Task.timeout_ms bound it: the smaller wins), or another status with msg. */
static int rpc_task_check(const rpc_call_t *c, const Crunch__V1__Task *task,
                          bool with_call_deadline, uint32_t *handler,
                          uint64_t *deadline_ns, char *msg, size_t len)
{
    /* The checks themselves are gRPC-free (task_check.c, fuzzed by t/fuzz);
     * only the call's deadline is read here. CR_STATUS_* are gRPC's numbers. */
    cr_task_limits_t lim = {.max_payload = rpc.conf->max_payload, .now_ns = cr_now_ns()};

    lim.call_deadline = with_call_deadline && rpc_time_left(c->deadline, &lim.call_left_ns);
    return cr_task_check(&lim, task->handler ? task->handler : "", task->payload.len,
                         task->timeout_ms, handler, deadline_ns, msg, len);
}

static void rpc_stream_push(rpc_call_t *c, grpc_byte_buffer *bb);

/* A RunStream task failed before a worker saw it: its Result goes out with
 * the others. c->mu held. */
static void rpc_stream_error(rpc_call_t *c, uint64_t id, int code, const char *msg)
{
    Crunch__V1__Result m = CRUNCH__V1__RESULT__INIT;

    m.id = id;
    m.code = code;
    m.error = (char *)msg;
    c->failed++;
    rpc_stream_push(c, cr_rpc_pack(&m.base));
}

/* A Submit task was refused: counted in SubmitReply.rejected, and said in the
 * log (at most one line a second, with how many were not shown). gRPC thread
 * or result thread with c->mu held; the rate limit tolerates the rare race. */
static void rpc_submit_reject(rpc_call_t *c, uint64_t id, const char *why)
{
    uint64_t now = cr_now_ns();

    c->failed++;
    if (rpc.reject_log_ns != 0 && now - rpc.reject_log_ns < 1000 * RPC_NS_PER_MS) {
        rpc.reject_quiet++;
        return;
    }
    if (rpc.reject_quiet)
        cr_log(CR_LOG_WARN, 0,
               "Submit: task %" PRIu64 " rejected: %s (and %" PRIu64
               " more rejections since the last such line)",
               id, why, rpc.reject_quiet);
    else
        cr_log(CR_LOG_WARN, 0, "Submit: task %" PRIu64 " rejected: %s", id, why);
    rpc.reject_log_ns = now;
    rpc.reject_quiet = 0;
}

/* Queue c's task (c->task). c->mu held. Returns CR_OK (submitted), CR_AGAIN
 * (no space now: c->task stays) or CR_ERROR (the task failed; for a Run an
 * error status was sent). */
static int rpc_submit(rpc_call_t *c)
{
    cr_submit_t s;
    uint32_t d;

    if (c->kind != CALL_SUBMIT && !c->in_table && rpc_tbl_add(c) != CR_OK)
        goto nomem;
    if (c->kind == CALL_STREAM && !rpc_live_reserve(c))
        goto nomem;
    s.id = c->task->id;
    s.tag = c->kind == CALL_SUBMIT ? 0 : c->tag;
    s.deadline_ns = c->deadline_ns;
    s.handler = c->handler;
    s.acceptor = rpc.slot;
    s.feed_d = c->kind == CALL_SUBMIT ? c->held_fd : CR_NONE;
    s.payload = c->task->payload.data;
    s.len = c->task->payload.len;

    int rc = cr_task_submit(rpc.region, &s, &d);
    if (rc == CR_AGAIN)
        return CR_AGAIN;
    if (rc != CR_OK) {
        cr_log(CR_LOG_ERR, 0, "%s: task %" PRIu64 " could not be queued (%d)",
               rpc_methods[c->kind].name, c->task->id, rc);
        switch (c->kind) {
        case CALL_RUN:
            rpc_call_finish(c, GRPC_STATUS_INTERNAL,
                            "the task could not be queued; see the crunchd error log",
                            NULL);
            break;
        case CALL_STREAM:
            rpc_stream_error(c, c->task->id, GRPC_STATUS_INTERNAL,
                             "the task could not be queued; see the crunchd error log");
            break;
        default:
            cr_feed_unreserve(rpc.feed, c->held_fd);
            rpc_submit_reject(c, c->task->id, "the task could not be queued");
            break;
        }
        goto done;
    }
    switch (c->kind) {
    case CALL_RUN:
        c->d = d;
        c->task_live = true;
        break;
    case CALL_STREAM:
        rpc_live_add(c, d);
        break;
    default:
        /* The reservation is the task's now: the worker (or the master)
         * fills it, whatever happens to this call. */
        c->ok++;
        c->held_fd = CR_NONE;
        break;
    }
    crunch__v1__task__free_unpacked(c->task, NULL);
    c->task = NULL;
    return CR_OK;

nomem:
    if (c->kind == CALL_RUN)
        rpc_call_finish(c, GRPC_STATUS_INTERNAL,
                        "the acceptor is out of memory; retry later", NULL);
    else if (c->kind == CALL_STREAM)
        rpc_stream_error(c, c->task->id, GRPC_STATUS_INTERNAL,
                         "the acceptor is out of memory; retry later");
    else {
        cr_feed_unreserve(rpc.feed, c->held_fd);
        rpc_submit_reject(c, c->task->id, "the acceptor is out of memory");
    }
done:
    rc = CR_ERROR;
    crunch__v1__task__free_unpacked(c->task, NULL);
    c->task = NULL;
    c->held_fd = CR_NONE;
    return rc;
}

/* Drop the task a stream holds (its call ended). c->mu held. */
static void rpc_held_drop(rpc_call_t *c)
{
    if (c->task == NULL)
        return;
    if (c->kind == CALL_SUBMIT && c->held_fd != CR_NONE)
        cr_feed_unreserve(rpc.feed, c->held_fd);
    c->held_fd = CR_NONE;
    crunch__v1__task__free_unpacked(c->task, NULL);
    c->task = NULL;
}

/* RESOURCE_EXHAUSTED after waiting for queue space (Run). c->mu held. */
static void rpc_reply_full(rpc_call_t *c, uint64_t now)
{
    char shm[32];
    uint64_t waited = now > c->pend_since_ns ? now - c->pend_since_ns : 0;
    cr_proc_sh_t *row = rpc_ctl_row();

    if (row)
        __atomic_add_fetch(&row->refused_full, 1, __ATOMIC_RELAXED);
    rpc_fmt_size(rpc.conf->shm_size, shm, sizeof(shm));
    rpc_call_finishf(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                     "task queue full (queue_capacity %u) or payload arena full "
                     "(shm_size %s) for %" PRIu64 " ms; retry later, or raise "
                     "queue_capacity / shm_size / workers",
                     rpc.conf->queue_capacity, shm, waited / RPC_NS_PER_MS);
}

/* A Run stops waiting for queue space: DEADLINE_EXCEEDED when its own
 * deadline (the call's, or Task.timeout_ms) is what ran out, as for a task
 * that expires in the queue; RESOURCE_EXHAUSTED when queue_wait_ms did. The
 * deadline is checked first: when both end at once (the call deadline is
 * shorter than queue_wait_ms), the status does not depend on which thread
 * looks first. c->mu held. */
/* The DEADLINE_EXCEEDED text of task id, which waited for queue space since
 * c->pend_since_ns until its deadline passed. */
static void rpc_fmt_expired(const rpc_call_t *c, uint64_t id, uint64_t now, char *msg,
                            size_t len)
{
    uint64_t waited = now > c->pend_since_ns ? now - c->pend_since_ns : 0;

    snprintf(msg, len,
             "task %" PRIu64 " (handler %s) waited %" PRIu64
             " ms for room in the queue (queue_capacity %u) and its deadline "
             "passed; it was not run (add workers, raise queue_capacity or the "
             "deadline)",
             id, rpc_handler_name(c->handler), waited / RPC_NS_PER_MS,
             rpc.conf->queue_capacity);
}

static void rpc_reply_waited(rpc_call_t *c, uint64_t now)
{
    char msg[RPC_MSG_MAX];

    if (c->deadline_ns == 0 || now < c->deadline_ns) {
        rpc_reply_full(c, now);
        return;
    }
    rpc_fmt_expired(c, c->id, now, msg, sizeof(msg));
    rpc_call_finish(c, GRPC_STATUS_DEADLINE_EXCEEDED, msg, NULL);
}

/* The task a RunStream holds waited for queue space past its deadline: its
 * Result says so now (a descriptor spent on it would only carry the same
 * verdict later, as "waited 0 ms in the queue"), and the stream reads on.
 * c->mu held. */
static void rpc_stream_expired(rpc_call_t *c, uint64_t now)
{
    char msg[RPC_MSG_MAX];

    rpc_fmt_expired(c, c->task->id, now, msg, sizeof(msg));
    rpc_stream_error(c, c->task->id, GRPC_STATUS_DEADLINE_EXCEEDED, msg);
    crunch__v1__task__free_unpacked(c->task, NULL);
    c->task = NULL;
}

/* Stats: how many calls wait for queue space now. Under pend_mu. */
static void rpc_pend_publish(void)
{
    cr_proc_sh_t *row = rpc_ctl_row();

    if (row)
        __atomic_store_n(&row->waiting, rpc.pend_count, __ATOMIC_RELAXED);
}

/* Put c on the pending list: it waits for queue space. A Run waits up to
 * queue_wait_ms or its deadline, whichever comes first; a stream waits as long
 * as it lives (it is not read meanwhile: HTTP/2 flow control holds the
 * client). c->mu held. */
static void rpc_pend_add(rpc_call_t *c, uint64_t now)
{
    bool run = c->kind == CALL_RUN;
    uint64_t until = UINT64_MAX;
    size_t bytes = c->task->payload.len;
    bool first;

    c->pend_since_ns = now;
    if (run) {
        until = now + (uint64_t)rpc.conf->queue_wait_ms * RPC_NS_PER_MS;
        if (c->deadline_ns && c->deadline_ns < until)
            until = c->deadline_ns;
        if (until <= now) {
            rpc_reply_waited(c, now);
            return;
        }
    }
    cr_assert(c->pend == PEND_NONE);
    c->pend_until_ns = until;
    c->pend_bytes = bytes;

    pthread_mutex_lock(&rpc.pend_mu);
    /* Waiting calls hold their payload in our heap: bound them like the arena.
     * A stream holds one task at most and is not read meanwhile: it is
     * bounded by the number of streams, and is never refused. */
    if (run && (rpc.pend_runs >= RPC_PENDING_MAX ||
                rpc.pend_bytes + bytes > rpc.conf->shm_size)) {
        pthread_mutex_unlock(&rpc.pend_mu);
        rpc_reply_full(c, now);
        return;
    }
    c->pend = PEND_LISTED;
    c->pnext = NULL;
    if (rpc.pend_tail)
        rpc.pend_tail->pnext = c;
    else
        rpc.pend_head = c;
    rpc.pend_tail = c;
    first = rpc.pend_count == 0;
    __atomic_store_n(&rpc.pend_count, rpc.pend_count + 1, __ATOMIC_RELEASE);
    rpc_pend_publish();
    rpc.pend_runs += run;
    rpc.pend_bytes += bytes;
    rpc_call_ref(c);
    pthread_mutex_unlock(&rpc.pend_mu);
    if (first)
        rpc_results_kick();
}

/* Forget a pending call (its reference is the caller's to drop). Under pend_mu. */
static void rpc_pend_forget_locked(rpc_call_t *c)
{
    c->pend = PEND_NONE;
    c->pnext = NULL;
    __atomic_store_n(&rpc.pend_count, rpc.pend_count - 1, __ATOMIC_RELEASE);
    rpc_pend_publish();
    rpc.pend_runs -= c->kind == CALL_RUN;
    rpc.pend_bytes -= c->pend_bytes;
}

/* Take c off the list if it is on it. c->mu held. Returns true if the caller
 * must drop the list's reference. A call in PEND_RETRYING is left to the
 * result thread, which sees c->gone. */
static bool rpc_pend_remove(rpc_call_t *c)
{
    bool removed = false;

    pthread_mutex_lock(&rpc.pend_mu);
    if (c->pend == PEND_LISTED) {
        rpc_call_t **pp = &rpc.pend_head, *prev = NULL;
        while (*pp && *pp != c) {
            prev = *pp;
            pp = &(*pp)->pnext;
        }
        cr_assert(*pp == c);
        *pp = c->pnext;
        if (rpc.pend_tail == c)
            rpc.pend_tail = prev;
        rpc_pend_forget_locked(c);
        removed = true;
    }
    pthread_mutex_unlock(&rpc.pend_mu);
    return removed;
}

/* One retry round over the pending list, oldest first (result thread). Once a
 * submit finds no space, later calls are only checked for expiry: they do not
 * overtake the older ones. */
static void rpc_pend_retry(uint64_t now)
{
    rpc_call_t *batch, *keep = NULL, *keep_tail = NULL, *next;
    bool blocked = false;

    pthread_mutex_lock(&rpc.pend_mu);
    batch = rpc.pend_head;
    for (rpc_call_t *c = batch; c; c = c->pnext)
        c->pend = PEND_RETRYING;
    rpc.pend_head = rpc.pend_tail = NULL;
    pthread_mutex_unlock(&rpc.pend_mu);

    for (rpc_call_t *c = batch; c; c = next) {
        bool done = true, pump = false;

        next = c->pnext;
        pthread_mutex_lock(&c->mu);
        if (!c->gone && !c->status_started && !c->broken && c->task) {
            int rc = CR_AGAIN;
            if (!blocked) {
                rc = rpc_submit(c);
                blocked = rc == CR_AGAIN;
            }
            if (rc == CR_AGAIN) {
                if (c->kind == CALL_RUN && now >= c->pend_until_ns) {
                    rpc_reply_waited(c, now);
                } else if (c->kind == CALL_STREAM && c->deadline_ns &&
                           now >= c->deadline_ns) {
                    rpc_stream_expired(c, now);
                    pump = true;
                } else {
                    done = false;
                }
            } else if (c->kind != CALL_RUN) {
                pump = true;
            }
        }
        if (done) {
            /* Off the list before the stream reads on: the next message's
             * completion may find the queue full and list c again. */
            pthread_mutex_lock(&rpc.pend_mu);
            rpc_pend_forget_locked(c);
            pthread_mutex_unlock(&rpc.pend_mu);
            if (pump)
                rpc_stream_pump(c); /* room again: read on (or finish, half-closed) */
        }
        pthread_mutex_unlock(&c->mu);

        if (done) {
            rpc_call_unref(c);
            continue;
        }
        c->pnext = NULL;
        if (keep_tail)
            keep_tail->pnext = c;
        else
            keep = c;
        keep_tail = c;
    }

    if (keep == NULL)
        return;
    /* Back in front of the calls that arrived meanwhile, in their old order. */
    pthread_mutex_lock(&rpc.pend_mu);
    for (rpc_call_t *c = keep; c; c = c->pnext)
        c->pend = PEND_LISTED;
    keep_tail->pnext = rpc.pend_head;
    if (rpc.pend_head == NULL)
        rpc.pend_tail = keep_tail;
    rpc.pend_head = keep;
    pthread_mutex_unlock(&rpc.pend_mu);
}

/* Submit c->task now, or park c until there is room. Calls already waiting
 * for space go first: nobody overtakes them. c->mu held. */
static void rpc_submit_or_wait(rpc_call_t *c)
{
    if (__atomic_load_n(&rpc.pend_count, __ATOMIC_ACQUIRE) == 0 &&
        rpc_submit(c) != CR_AGAIN)
        return;
    rpc_pend_add(c, cr_now_ns());
}

/* --- Run ----------------------------------------------------------------------- */

/* Take and decode the one request message of a new unary-request call
 * (Run, Updates). Answers INTERNAL (no message) or INVALID_ARGUMENT
 * (malformed) itself and returns NULL then. c->mu held. */
static ProtobufCMessage *rpc_take_request(rpc_call_t *c,
                                          const ProtobufCMessageDescriptor *desc)
{
    char msg[RPC_MSG_MAX];
    grpc_byte_buffer *bb = c->payload;

    c->payload = NULL;
    if (bb == NULL) {
        /* Also what a message cut off by the end of the stream looks like:
         * gRPC 1.51 drops the partial bytes and reports no message and no
         * error (grpc_call_failed_before_recv_message is false; measured,
         * see t/test_races.py), so that case cannot get INVALID_ARGUMENT. */
        snprintf(msg, sizeof(msg),
                 "no %s message: the client closed the call without sending a "
                 "complete one",
                 desc->short_name);
        rpc_call_finish(c, GRPC_STATUS_INTERNAL, msg, NULL);
        return NULL;
    }
    c->bytes_in = grpc_byte_buffer_length(bb);
    ProtobufCMessage *m = cr_rpc_unpack(desc, bb);
    grpc_byte_buffer_destroy(bb);
    if (m == NULL) {
        snprintf(msg, sizeof(msg), "malformed %s message; send a %s", desc->short_name,
                 desc->name);
        rpc_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, msg, NULL);
    }
    return m;
}

/* Validate the request of a new Run call and submit it (or park it on the
 * pending list, or answer an error). c->mu held. */
static void rpc_run_accept(rpc_call_t *c)
{
    Crunch__V1__Task *task;
    char msg[RPC_MSG_MAX];
    uint32_t h;
    uint64_t dl;

    task = (Crunch__V1__Task *)rpc_take_request(c, &crunch__v1__task__descriptor);
    if (task == NULL)
        return;
    c->task = task;
    c->id = task->id;
    if (task->handler)
        cr_task_printable(c->hname, sizeof(c->hname), task->handler,
                          strlen(task->handler));

    int code = rpc_task_check(c, task, true, &h, &dl, msg, sizeof(msg));
    if (code != GRPC_STATUS_OK) {
        rpc_call_finish(c, code, msg, NULL);
        return;
    }
    c->handler = h;
    c->deadline_ns = dl;
    cr_log_debug("Run: task %" PRIu64 " handler %s, %zu bytes", task->id,
                 cr_handler_name(h), task->payload.len);
    rpc_submit_or_wait(c);
}

/* The result of c's task (descriptor d, taken from our ring). c->mu held;
 * always releases d. */
static void rpc_run_deliver(rpc_call_t *c, uint32_t d)
{
    rpc_res_t res;

    if (c->gone || c->status_started || !c->task_live || c->d != d) {
        /* The call ended between the lookup and the lock (it marked d
         * cancelled then). Anything else cannot happen: a live tag names the
         * call that submitted d. */
        if (!c->gone && !c->status_started)
            cr_log(CR_LOG_ALERT, 0,
                   "result of descriptor %u matched a call waiting for %u", d,
                   c->task_live ? c->d : CR_NONE);
        cr_task_release(rpc.region, d);
        return;
    }
    c->task_live = false;

    rpc_res_read(rpc.region, d, &res);
    c->queue_us = res.queue_us;
    c->run_us = res.run_us;
    if (res.code == GRPC_STATUS_OK) {
        grpc_byte_buffer *bb = rpc_res_pack(rpc.region, d, &res);
        cr_task_release(rpc.region, d); /* the bytes are in bb now */
        rpc_call_finish(c, GRPC_STATUS_OK, NULL, bb);
    } else {
        cr_task_release(rpc.region, d);
        rpc_call_finish(c, res.code, res.err, NULL);
    }
}

/* --- streams: RunStream, Submit, Updates ------------------------------------------ */

/* Queue a message on a RunStream (or drop it if nothing may be sent). c->mu held. */
static void rpc_stream_push(rpc_call_t *c, grpc_byte_buffer *bb)
{
    rpc_out_t *o;

    if (!rpc_call_sendable(c) || c->abort_code || (o = malloc(sizeof(*o))) == NULL) {
        if (rpc_call_sendable(c) && !c->abort_code)
            cr_log(CR_LOG_CRIT, ENOMEM, "RunStream: a result was lost: out of memory");
        grpc_byte_buffer_destroy(bb);
        return;
    }
    o->bb = bb;
    o->next = NULL;
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_n++;
}

/* Start one SEND_MESSAGE (bb consumed). c->mu held. Returns true if started. */
static bool rpc_stream_write(rpc_call_t *c, grpc_byte_buffer *bb)
{
    grpc_op ops[2];
    size_t n = 0, len = grpc_byte_buffer_length(bb);
    bool started;

    memset(ops, 0, sizeof(ops));
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = bb;
    n++;
    started = rpc_call_start(c, ops, n, &c->tag_write);
    if (started) {
        c->writing = true;
        c->md_sent = true;
        c->bytes_out += len;
    }
    grpc_byte_buffer_destroy(bb);
    return started;
}

/* Results in flight or waiting to be sent on a RunStream. */
static unsigned rpc_stream_pending(const rpc_call_t *c)
{
    return c->nlive + c->out_n + (c->writing ? 1u : 0u);
}

/* Read the next message now? Never while a task is held (queue full), while
 * too many results are pending (the client does not read them), once the
 * client half-closed, or while the stream ends. c->mu held. */
static bool rpc_stream_may_read(const rpc_call_t *c)
{
    if (c->half_closed || c->draining || c->abort_code || c->task)
        return false;
    switch (c->kind) {
    case CALL_STREAM:
        return rpc_stream_pending(c) < rpc.conf->stream_max_pending;
    case CALL_SUBMIT:
        return true;
    default:
        return false;
    }
}

/* Nothing is being written: end the stream if it is over. c->mu held. */
static void rpc_stream_try_finish(rpc_call_t *c)
{
    if (c->abort_code) {
        rpc_call_finish(c, c->abort_code, c->abort_msg, NULL);
        return;
    }
    switch (c->kind) {
    case CALL_STREAM:
        if (c->task || c->nlive)
            return;
        if (c->half_closed)
            rpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL);
        else if (c->draining)
            rpc_call_finish(c, GRPC_STATUS_UNAVAILABLE, RPC_RELOADING, NULL);
        break;
    case CALL_SUBMIT:
        if (c->task)
            return;
        if (c->half_closed) {
            Crunch__V1__SubmitReply m = CRUNCH__V1__SUBMIT_REPLY__INIT;
            m.accepted = c->ok;
            m.rejected = c->failed;
            rpc_call_finish(c, GRPC_STATUS_OK, NULL, cr_rpc_pack(&m.base));
        } else if (c->draining) {
            rpc_call_finishf(c, GRPC_STATUS_UNAVAILABLE,
                             RPC_RELOADING "; the first %" PRIu64
                             " tasks of this call were read (%" PRIu64
                             " accepted, %" PRIu64 " rejected): send the rest again",
                             c->ok + c->failed, c->ok, c->failed);
        }
        break;
    case CALL_UPDATES:
        if (c->max_results && c->sent >= c->max_results)
            rpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL);
        else if (c->draining)
            rpc_call_finish(c, GRPC_STATUS_UNAVAILABLE, RPC_RELOADING, NULL);
        break;
    default:
        break;
    }
}

/* Move a stream along after anything happened to it: start the next write,
 * post the next read, or finish. c->mu held. */
static void rpc_stream_pump(rpc_call_t *c)
{
    if (!rpc_call_sendable(c))
        return;
    if (!c->writing && c->out_head) {
        rpc_out_t *o = c->out_head;
        c->out_head = o->next;
        if (c->out_head == NULL)
            c->out_tail = NULL;
        c->out_n--;
        grpc_byte_buffer *bb = o->bb;
        free(o);
        if (!rpc_stream_write(c, bb))
            return;
    }
    if (!c->reading && rpc_stream_may_read(c)) {
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        if (!rpc_call_start(c, &op, 1, &c->tag_recv))
            return;
        c->reading = true;
    }
    if (!c->writing && c->out_head == NULL)
        rpc_stream_try_finish(c);
}

/* End a stream at once with status code (after the write in progress):
 * its tasks are cancelled, its results dropped. c->mu held. */
static void rpc_stream_abort(rpc_call_t *c, int code, const char *msg)
{
    if (c->abort_code)
        return;
    c->abort_code = code;
    c->abort_msg = strdup(msg);
    rpc_live_cancel(c);
    rpc_held_drop(c);
    rpc_out_drop(c);
}

/* Hold a valid Task read from a RunStream or a Submit call (fd: its feed
 * reservation, CR_NONE for RunStream) and submit it, or wait for room.
 * c->mu held; task is c's now. */
static void rpc_stream_hold(rpc_call_t *c, Crunch__V1__Task *task, uint32_t h, uint64_t dl,
                            uint32_t fd)
{
    c->task = task;
    c->id = task->id;
    c->handler = h;
    c->deadline_ns = dl;
    c->held_fd = fd;
    cr_log_debug("%s: task %" PRIu64 " handler %s, %zu bytes",
                 fd == CR_NONE ? "RunStream" : "Submit", task->id, cr_handler_name(h),
                 task->payload.len);
    rpc_submit_or_wait(c);
}

/* A Task read from a RunStream. c->mu held; task is ours. */
static void rpc_stream_task(rpc_call_t *c, Crunch__V1__Task *task)
{
    char msg[RPC_MSG_MAX];
    uint32_t h;
    uint64_t dl;

    int code = rpc_task_check(c, task, true, &h, &dl, msg, sizeof(msg));
    if (code != GRPC_STATUS_OK) {
        rpc_stream_error(c, task->id, code, msg);
        crunch__v1__task__free_unpacked(task, NULL);
        return;
    }
    rpc_stream_hold(c, task, h, dl, CR_NONE);
}

/* A Task read from a Submit call: reserve its place in the updates feed first
 * (a full feed is a refusal at the door, never a dropped result), then queue
 * it. Its result goes to the feed; only Task.timeout_ms bounds it: the call
 * usually ends long before its tasks do. c->mu held; task is ours. */
static void rpc_submit_task(rpc_call_t *c, Crunch__V1__Task *task)
{
    char msg[RPC_MSG_MAX];
    uint32_t h, fd;
    uint64_t dl;

    int code = rpc_task_check(c, task, false, &h, &dl, msg, sizeof(msg));
    if (code != GRPC_STATUS_OK) {
        rpc_submit_reject(c, task->id, msg);
        crunch__v1__task__free_unpacked(task, NULL);
        return;
    }
    if (cr_feed_reserve(rpc.feed, &fd) != CR_OK) {
        snprintf(msg, sizeof(msg),
                 "updates feed full (updates_capacity %u); subscribe with Updates or "
                 "raise updates_capacity",
                 rpc.conf->updates_capacity);
        rpc_submit_reject(c, task->id, msg);
        crunch__v1__task__free_unpacked(task, NULL);
        return;
    }
    rpc_stream_hold(c, task, h, dl, fd);
}

/* RECV_MESSAGE of a RunStream or Submit completed (gRPC thread). */
static void rpc_stream_on_recv(rpc_call_t *c, bool ok)
{
    grpc_byte_buffer *bb;

    pthread_mutex_lock(&c->mu);
    c->reading = false;
    bb = c->recv_bb;
    c->recv_bb = NULL;
    if (!rpc_call_sendable(c) || c->abort_code) {
        /* Ended meanwhile: what arrived now is not read. */
    } else if (!ok || (bb == NULL && grpc_call_failed_before_recv_message(c->call))) {
        /* Cancelled, past its deadline, or a message over the receive limit:
         * core ends the call, RECV_CLOSE follows. */
        c->broken = true;
    } else if (bb == NULL) {
        c->half_closed = true;
        rpc_stream_pump(c);
    } else {
        c->bytes_in += grpc_byte_buffer_length(bb);
        Crunch__V1__Task *task = rpc_decode_task(bb);
        c->tasks++;
        if (task == NULL) {
            char msg[RPC_MSG_MAX];
            snprintf(msg, sizeof(msg),
                     "message %" PRIu64 " of the stream is not a crunch.v1.Task; "
                     "the stream was ended",
                     c->tasks);
            c->failed++;
            rpc_stream_abort(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
        } else if (c->kind == CALL_STREAM) {
            rpc_stream_task(c, task);
        } else {
            rpc_submit_task(c, task);
        }
        rpc_stream_pump(c);
    }
    if (bb)
        grpc_byte_buffer_destroy(bb);
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c); /* the TAG_CALL_RECV reference */
}

/* SEND_MESSAGE of a RunStream or an Updates call completed (gRPC thread). For
 * Updates it decides the fate of the feed entry in it: sent (released) or
 * not (back to the feed for another subscriber). */
static void rpc_stream_on_write(rpc_call_t *c, bool ok)
{
    pthread_mutex_lock(&c->mu);
    c->writing = false;
    if (c->kind == CALL_UPDATES && c->feed_d != CR_NONE) {
        uint32_t d = c->feed_d;
        c->feed_d = CR_NONE;
        if (ok) {
            cr_task_release(rpc.feed, d);
            c->sent++;
            c->tasks++;
            if (c->feed_code == GRPC_STATUS_OK)
                c->ok++;
            else
                c->failed++;
            c->queue_us += c->feed_queue_us;
            c->run_us += c->feed_run_us;
        } else {
            cr_feed_requeue(rpc.feed, d);
        }
    }
    if (!ok) {
        /* The call is gone (or going): nothing more can be sent. */
        c->broken = true;
        rpc_out_drop(c);
    } else {
        rpc_stream_pump(c);
        if (c->kind == CALL_UPDATES)
            rpc_updates_ready(c);
    }
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c); /* the TAG_CALL_WRITE reference */
}

/* The result of a RunStream task (descriptor d, taken from our ring). c->mu
 * held; always releases d. */
static void rpc_stream_deliver(rpc_call_t *c, uint32_t d)
{
    rpc_res_t res;

    if (!rpc_live_del(c, d)) {
        /* The stream ended (or was aborted) and cancelled d before its
         * result came: drop it. */
        cr_task_release(rpc.region, d);
        return;
    }
    rpc_res_read(rpc.region, d, &res);
    grpc_byte_buffer *bb = rpc_res_pack(rpc.region, d, &res);
    cr_task_release(rpc.region, d);
    if (res.code == GRPC_STATUS_OK)
        c->ok++;
    else
        c->failed++;
    c->queue_us += res.queue_us;
    c->run_us += res.run_us;
    rpc_stream_push(c, bb);
    rpc_stream_pump(c);
}

/* --- Updates ---------------------------------------------------------------------- */

/* c can take a feed entry now: tell the updates thread. c->mu held. */
static void rpc_updates_ready(rpc_call_t *c)
{
    if (!rpc_call_sendable(c) || c->writing || c->draining || c->abort_code ||
        (c->max_results && c->sent >= c->max_results))
        return;
    pthread_mutex_lock(&rpc.upd_mu);
    if (c->upd_listed && !c->upd_ready) {
        c->upd_ready = true;
        rpc.upd_ready++;
        pthread_cond_signal(&rpc.upd_cv);
    }
    pthread_mutex_unlock(&rpc.upd_mu);
}

/* c no longer takes entries (draining, ending). c->mu held. */
static void rpc_updates_unready(rpc_call_t *c)
{
    pthread_mutex_lock(&rpc.upd_mu);
    if (c->upd_ready) {
        c->upd_ready = false;
        rpc.upd_ready--;
    }
    pthread_mutex_unlock(&rpc.upd_mu);
}

/* On the updates list (takes a reference for it). gRPC thread, c->mu held. */
static void rpc_updates_list(rpc_call_t *c)
{
    pthread_mutex_lock(&rpc.upd_mu);
    c->uprev = NULL;
    c->unext = rpc.upd_head;
    if (rpc.upd_head)
        rpc.upd_head->uprev = c;
    rpc.upd_head = c;
    c->upd_listed = true;
    rpc_call_ref(c);
    pthread_mutex_unlock(&rpc.upd_mu);
}

/* Off the updates list. Returns true if the caller must drop the list's
 * reference. Never under c->mu (the updates thread takes upd_mu, then a
 * reference, then c->mu). */
static bool rpc_updates_unlist(rpc_call_t *c)
{
    bool was;

    pthread_mutex_lock(&rpc.upd_mu);
    was = c->upd_listed;
    if (was) {
        if (c->upd_ready) {
            c->upd_ready = false;
            rpc.upd_ready--;
        }
        if (rpc.upd_next == c)
            rpc.upd_next = c->unext;
        if (c->uprev)
            c->uprev->unext = c->unext;
        else
            rpc.upd_head = c->unext;
        if (c->unext)
            c->unext->uprev = c->uprev;
        c->unext = c->uprev = NULL;
        c->upd_listed = false;
    }
    pthread_mutex_unlock(&rpc.upd_mu);
    return was;
}

/* The next Updates call that can take an entry, round robin, marked busy and
 * with a reference; NULL if none. */
static rpc_call_t *rpc_updates_pick(void)
{
    rpc_call_t *c = NULL;

    pthread_mutex_lock(&rpc.upd_mu);
    if (rpc.upd_ready > 0) {
        rpc_call_t *start = rpc.upd_next ? rpc.upd_next : rpc.upd_head;
        for (rpc_call_t *p = start; p; p = p->unext)
            if (p->upd_ready) {
                c = p;
                break;
            }
        for (rpc_call_t *p = rpc.upd_head; c == NULL && p != start; p = p->unext)
            if (p->upd_ready)
                c = p;
        if (c) {
            c->upd_ready = false;
            rpc.upd_ready--;
            rpc.upd_next = c->unext;
            rpc_call_ref(c);
        }
    }
    pthread_mutex_unlock(&rpc.upd_mu);
    return c;
}

/* Send feed entry d (taken by the updates thread) to a subscriber. Returns
 * false if none could take it: the caller puts it back. */
static bool rpc_updates_give(uint32_t d)
{
    rpc_call_t *c;

    while ((c = rpc_updates_pick()) != NULL) {
        bool sent = false;
        pthread_mutex_lock(&c->mu);
        if (rpc_call_sendable(c) && !c->writing && !c->draining && !c->abort_code) {
            rpc_res_t res;
            rpc_res_read(rpc.feed, d, &res);
            c->feed_d = d;
            c->feed_code = res.code;
            c->feed_queue_us = res.queue_us;
            c->feed_run_us = res.run_us;
            sent = rpc_stream_write(c, rpc_res_pack(rpc.feed, d, &res));
            if (!sent)
                c->feed_d = CR_NONE;
        }
        pthread_mutex_unlock(&c->mu);
        rpc_call_unref(c);
        if (sent)
            return true;
    }
    return false;
}

/* The updates thread: while some subscriber can write, take the oldest feed
 * entry (this acceptor's control-page row is its slot in the feed: the master
 * puts back what a dead acceptor held) and give it to the next subscriber. */
static void *rpc_updates_main(void *arg)
{
    (void)arg;
    for (;;) {
        /* Asleep while nobody subscribes; the stop is signalled under upd_mu. */
        pthread_mutex_lock(&rpc.upd_mu);
        while (rpc.upd_ready == 0 &&
               !__atomic_load_n(&rpc.threads_stop, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&rpc.upd_cv, &rpc.upd_mu);
        pthread_mutex_unlock(&rpc.upd_mu);
        if (__atomic_load_n(&rpc.threads_stop, __ATOMIC_ACQUIRE))
            break;

        uint32_t d;
        if (cr_task_take(rpc.feed, (unsigned)rpc.row, &d, RPC_UPDATES_WAIT_MS) != CR_OK)
            continue;
        if (!rpc_updates_give(d))
            cr_feed_requeue(rpc.feed, d);
    }
    return NULL;
}

/* A new Updates call: decode the request and subscribe. c->mu held. */
static void rpc_updates_accept(rpc_call_t *c)
{
    Crunch__V1__UpdatesRequest *req = (Crunch__V1__UpdatesRequest *)rpc_take_request(
        c, &crunch__v1__updates_request__descriptor);
    if (req == NULL)
        return;
    c->max_results = req->max_results;
    crunch__v1__updates_request__free_unpacked(req, NULL);
    if (!rpc.updates_started) {
        rpc_call_finish(c, GRPC_STATUS_UNAVAILABLE,
                        "this crunchd has no updates feed; see the error log", NULL);
        return;
    }
    cr_log_debug("Updates: subscriber for %u results%s", c->max_results,
                 c->max_results ? "" : " (unlimited)");
    rpc_updates_list(c);
    rpc_updates_ready(c);
}

/* --- calls: arrival and end ------------------------------------------------------- */

static int rpc_call_post(rpc_kind_t kind)
{
    rpc_call_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return CR_ERROR;
    c->kind = kind;
    pthread_mutex_init(&c->mu, NULL);
    grpc_metadata_array_init(&c->md);
    c->tag_new = (rpc_tag_t){TAG_CALL_NEW, c};
    c->tag_close = (rpc_tag_t){TAG_CALL_CLOSE, c};
    c->tag_recv = (rpc_tag_t){TAG_CALL_RECV, c};
    c->tag_write = (rpc_tag_t){TAG_CALL_WRITE, c};
    c->tag_status = (rpc_tag_t){TAG_CALL_STATUS, c};
    c->d = CR_NONE;
    c->held_fd = CR_NONE;
    c->feed_d = CR_NONE;
    c->refs = 1; /* the TAG_CALL_NEW tag */
    __atomic_add_fetch(&rpc.live, 1, __ATOMIC_RELAXED);

    bool initial = rpc_methods[kind].payload == GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
    grpc_call_error e = grpc_server_request_registered_call(
        rpc.server, rpc.method[kind], &c->call, &c->deadline, &c->md,
        initial ? &c->payload : NULL, rpc.cq, rpc.cq, &c->tag_new);
    if (e != GRPC_CALL_OK) {
        cr_log(CR_LOG_CRIT, 0, "grpc_server_request_registered_call(%s) failed with %d",
               rpc_methods[kind].name, (int)e);
        rpc_call_unref(c);
        return CR_ERROR;
    }
    rpc.posted[kind]++;
    return CR_OK;
}

static void rpc_open_add(rpc_call_t *c)
{
    c->oprev = NULL;
    c->onext = rpc.open_head;
    if (rpc.open_head)
        rpc.open_head->oprev = c;
    rpc.open_head = c;
    c->open = true;
    rpc.nopen++;
}

static void rpc_open_del(rpc_call_t *c)
{
    if (!c->open)
        return;
    if (c->oprev)
        c->oprev->onext = c->onext;
    else
        rpc.open_head = c->onext;
    if (c->onext)
        c->onext->oprev = c->oprev;
    c->onext = c->oprev = NULL;
    c->open = false;
    rpc.nopen--;
}

static void rpc_call_on_new(rpc_call_t *c, bool ok)
{
    grpc_op op;

    rpc.posted[c->kind]--;
    if (!ok) {
        /* The server is shutting down: the request was cancelled, no call. */
        rpc_call_unref(c);
        return;
    }

    /* RECV_CLOSE first, in its own batch: it reports the end of the call,
     * cancelled or not, and keeps the success flag of the send batches
     * meaningful. */
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (!rpc_call_start(c, &op, 1, &c->tag_close)) {
        rpc_call_unref(c);
        return;
    }
    c->accepted = true;
    if (cr_access_on())
        c->peer = cr_rpc_peer(c->call);
    rpc_open_add(c);

    pthread_mutex_lock(&c->mu);
    c->draining = __atomic_load_n(&rpc.draining, __ATOMIC_ACQUIRE) != 0;
    switch (c->kind) {
    case CALL_RUN:
        rpc_run_accept(c);
        break;
    case CALL_STREAM:
        rpc_stream_pump(c);
        break;
    case CALL_SUBMIT:
        if (rpc.feed == NULL)
            rpc_call_finish(c, GRPC_STATUS_UNAVAILABLE,
                            "this crunchd has no updates feed; see the error log", NULL);
        else
            rpc_stream_pump(c);
        break;
    case CALL_UPDATES:
        if (c->draining)
            rpc_stream_pump(c); /* UNAVAILABLE at once */
        else
            rpc_updates_accept(c);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c); /* the TAG_CALL_NEW reference */
}

static void rpc_call_log(rpc_call_t *c)
{
    cr_access_rec_t r;
    int64_t left;

    memset(&r, 0, sizeof(r));
    r.peer = c->peer;
    r.method = rpc_methods[c->kind].path;
    r.handler = c->kind == CALL_RUN ? c->hname : NULL;
    /* A call cancelled at its deadline was cut by it: the client's own timer
     * usually fires a moment before ours (its clock started first). */
    if (c->status_started)
        r.status = c->status;
    else if (rpc_time_left(c->deadline, &left) && left <= 100 * (int64_t)RPC_NS_PER_MS)
        r.status = GRPC_STATUS_DEADLINE_EXCEEDED;
    else
        r.status = GRPC_STATUS_CANCELLED;
    r.bytes_in = c->bytes_in;
    r.bytes_out = c->bytes_out;
    r.queue_us = c->queue_us;
    r.run_us = c->run_us;
    r.stream = c->kind != CALL_RUN;
    r.tasks = c->tasks;
    r.ok = c->ok;
    r.failed = c->failed;
    cr_access_log(&r);
}

/* RECV_CLOSE came back: the call is over, whatever we still wanted to send
 * (gRPC thread). */
static void rpc_call_on_close(rpc_call_t *c)
{
    bool in_table, listed, upd = false;

    pthread_mutex_lock(&c->mu);
    c->gone = true;
    if (c->task_live) {
        /* Submitted and no reply sent: the client cancelled, disconnected or
         * ran out of time. A worker skips the task, or its result is freed. */
        cr_task_cancel(rpc.region, c->d);
        c->task_live = false;
        cr_log_debug("Run: task %" PRIu64
                     " (handler %s) cancelled: its call ended before "
                     "the result (descriptor %u)",
                     c->id, rpc_handler_name(c->handler), c->d);
    }
    rpc_live_cancel(c);
    rpc_held_drop(c);
    rpc_out_drop(c);
    in_table = c->in_table;
    if (in_table)
        rpc_tbl_del(c);
    listed = rpc_pend_remove(c);
    /* A write still in flight settles its feed entry when it completes. */
    pthread_mutex_unlock(&c->mu);

    if (c->kind == CALL_UPDATES)
        upd = rpc_updates_unlist(c);
    rpc_open_del(c);

    if (in_table)
        rpc_call_unref(c);
    if (listed)
        rpc_call_unref(c);
    if (upd)
        rpc_call_unref(c);
    rpc_call_unref(c); /* the TAG_CALL_CLOSE reference */
}

/* --- results ------------------------------------------------------------------- */

/* Send the result of descriptor d (taken from our ring) on its call, or drop
 * it; always releases d. Result thread. */
static void rpc_deliver(uint32_t d)
{
    cr_task_sh_t *t = cr_task(rpc.region, d);
    rpc_call_t *c = rpc_tbl_get(t->tag);

    if (c == NULL) {
        /* The call ended (and marked d cancelled) before the result came. */
        cr_task_release(rpc.region, d);
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (c->kind == CALL_STREAM)
        rpc_stream_deliver(c, d);
    else
        rpc_run_deliver(c, d);
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c);
}

static void *rpc_results_main(void *arg)
{
    uint32_t ds[RPC_RESULT_BATCH];
    uint64_t last_retry = 0;

    (void)arg;
    while (!__atomic_load_n(&rpc.threads_stop, __ATOMIC_ACQUIRE)) {
        bool pending = __atomic_load_n(&rpc.pend_count, __ATOMIC_ACQUIRE) > 0;
        int n = cr_result_take(rpc.region, rpc.slot, ds, RPC_RESULT_BATCH,
                               pending ? RPC_PENDING_RETRY_MS : RPC_RESULT_WAIT_MS);
        for (int i = 0; i < n; i++)
            rpc_deliver(ds[i]);

        /* Freed descriptors are room for waiting calls: retry at once; and at
         * least every few ms, also for expiry, while any waits. */
        if (__atomic_load_n(&rpc.pend_count, __ATOMIC_ACQUIRE) > 0) {
            uint64_t now = cr_now_ns();
            if (n > 0 || now - last_retry >= RPC_PENDING_RETRY_MS * RPC_NS_PER_MS) {
                rpc_pend_retry(now);
                last_retry = now;
            }
        }
    }
    return NULL;
}

/* --- other methods: UNIMPLEMENTED ---------------------------------------------- */

static void rpc_gen_free(rpc_generic_t *g)
{
    if (g->call)
        grpc_call_unref(g->call);
    grpc_call_details_destroy(&g->details);
    grpc_metadata_array_destroy(&g->md);
    free(g);
    __atomic_sub_fetch(&rpc.live, 1, __ATOMIC_RELEASE);
}

static int rpc_gen_post(void)
{
    rpc_generic_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return CR_ERROR;
    grpc_call_details_init(&g->details);
    grpc_metadata_array_init(&g->md);
    g->tag_new = (rpc_tag_t){TAG_GEN_NEW, g};
    g->tag_done = (rpc_tag_t){TAG_GEN_DONE, g};
    __atomic_add_fetch(&rpc.live, 1, __ATOMIC_RELAXED);

    grpc_call_error e = grpc_server_request_call(rpc.server, &g->call, &g->details,
                                                 &g->md, rpc.cq, rpc.cq, &g->tag_new);
    if (e != GRPC_CALL_OK) {
        cr_log(CR_LOG_CRIT, 0, "grpc_server_request_call() failed with %d", (int)e);
        rpc_gen_free(g);
        return CR_ERROR;
    }
    rpc.gen_posted++;
    return CR_OK;
}

/* The method path a client sent, printable and cut. */
static void rpc_gen_method(const rpc_generic_t *g, char *buf, size_t len)
{
    cr_task_printable(buf, len, (const char *)GRPC_SLICE_START_PTR(g->details.method),
                  GRPC_SLICE_LENGTH(g->details.method));
}

static void rpc_gen_on_new(rpc_generic_t *g, bool ok)
{
    char method[128], msg[RPC_MSG_MAX];
    grpc_op ops[3];

    rpc.gen_posted--;
    if (!ok) {
        rpc_gen_free(g);
        return;
    }
    rpc_gen_method(g, method, sizeof(method));
    snprintf(msg, sizeof(msg), "method %s is not implemented by this crunchd; see README",
             method);
    cr_log_debug("unimplemented method %s", method);

    grpc_slice details = grpc_slice_from_copied_string(msg);
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[1].data.recv_close_on_server.cancelled = &g->cancelled;
    ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[2].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
    ops[2].data.send_status_from_server.status_details = &details;
    grpc_call_error e = grpc_call_start_batch(g->call, ops, 3, &g->tag_done, NULL);
    grpc_slice_unref(details);
    if (e != GRPC_CALL_OK) {
        cr_log(CR_LOG_ALERT, 0, "grpc_call_start_batch() failed with %d for %s", (int)e,
               method);
        grpc_call_cancel(g->call, NULL);
        rpc_gen_free(g);
    }
}

static void rpc_gen_on_done(rpc_generic_t *g)
{
    if (cr_access_on()) {
        char method[128];
        cr_access_rec_t r;
        char *peer = cr_rpc_peer(g->call);
        rpc_gen_method(g, method, sizeof(method));
        memset(&r, 0, sizeof(r));
        r.peer = peer;
        r.method = method;
        r.status = GRPC_STATUS_UNIMPLEMENTED;
        cr_access_log(&r);
        free(peer);
    }
    rpc_gen_free(g);
}

/* --- connections ----------------------------------------------------------------- */

static void rpc_check_pid(void)
{
    /* Ruby's guard: gRPC state is only valid in the process that initialised it. */
    if (getpid() != rpc.pid) {
        cr_log(CR_LOG_EMERG, 0, "gRPC used in pid %d but initialised in pid %d",
               (int)getpid(), (int)rpc.pid);
        abort();
    }
}

/* Publish our count for the siblings' balancing. conn_mu held. */
static void rpc_conn_publish(void)
{
    cr_proc_sh_t *row = rpc_ctl_row();

    __atomic_store_n(&rpc.region->acceptors[rpc.slot].conns, rpc.nconns,
                     __ATOMIC_RELEASE);
    if (row)
        __atomic_store_n(&row->conns, rpc.nconns, __ATOMIC_RELAXED);
}

/* The peer of an accepted connection as gRPC would name it: "ipv4:a.b.c.d:p",
 * "ipv6:[::1]:p", or "unix:" and the socket path. */
static void rpc_conn_peer(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";

    snprintf(buf, len, "fd:%d", fd);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == -1)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(buf, len, "ipv4:%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "ipv6:[%s]:%u", host, ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        /* Clients of a unix socket are nameless: name the socket itself. */
        struct sockaddr_un *u = (struct sockaddr_un *)&ss;
        sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
            sl > offsetof(struct sockaddr_un, sun_path) && u->sun_path[0])
            snprintf(buf, len, "unix:%.*s", (int)(len - 6), u->sun_path);
        else
            snprintf(buf, len, "unix:");
    }
}

/* gRPC names a connection we handed over by its fd ("fd:12"): that fd is open
 * while the call lives, so the connection table says who it is. */
char *cr_rpc_peer(grpc_call *call)
{
    char *g = grpc_call_get_peer(call), *p = NULL;
    int fd;
    char end;

    if (g && sscanf(g, "fd:%d%c", &fd, &end) == 1) {
        pthread_mutex_lock(&rpc.conn_mu);
        for (unsigned i = 0; i < rpc.nconns; i++)
            if (rpc.conns[i].fd == fd) {
                p = strdup(rpc.conns[i].peer);
                break;
            }
        pthread_mutex_unlock(&rpc.conn_mu);
    }
    if (p == NULL && g)
        p = strdup(g);
    gpr_free(g);
    return p;
}

void cr_rpc_add_connection(int fd)
{
    struct stat st;

    rpc_check_pid();
    /* gRPC closes the descriptor itself when the connection ends; the fd
     * number may then be reused, so remember which socket it was. */
    if (fstat(fd, &st) == 0) {
        pthread_mutex_lock(&rpc.conn_mu);
        unsigned i;
        for (i = 0; i < rpc.nconns && rpc.conns[i].fd != fd; i++) {
        }
        if (i == rpc.nconns && rpc.nconns == rpc.conns_cap) {
            unsigned cap = rpc.conns_cap ? rpc.conns_cap * 2 : 64;
            rpc_conn_t *n = realloc(rpc.conns, cap * sizeof(*n));
            if (n) {
                rpc.conns = n;
                rpc.conns_cap = cap;
            }
        }
        /* The same number again means the old connection is gone. */
        if (i < rpc.conns_cap) {
            rpc.conns[i] = (rpc_conn_t){.fd = fd, .dev = st.st_dev, .ino = st.st_ino};
            if (cr_access_on())
                rpc_conn_peer(fd, rpc.conns[i].peer, sizeof(rpc.conns[i].peer));
            if (i == rpc.nconns)
                rpc.nconns++;
        } else {
            cr_log(CR_LOG_CRIT, ENOMEM, "connection on fd %d not tracked", fd);
        }
        rpc_conn_publish();
        pthread_mutex_unlock(&rpc.conn_mu);
    }
    grpc_server_add_channel_from_fd(rpc.server, fd, rpc.creds);
}

unsigned cr_rpc_connections(bool rescan)
{
    unsigned n;

    pthread_mutex_lock(&rpc.conn_mu);
    if (rescan) {
        uint64_t now = cr_now_ns();
        if (now - rpc.conn_scan_ns >= RPC_CONN_RESCAN_MS * RPC_NS_PER_MS) {
            rpc.conn_scan_ns = now;
            for (unsigned i = 0; i < rpc.nconns;) {
                struct stat st;
                rpc_conn_t *k = &rpc.conns[i];
                if (fstat(k->fd, &st) == 0 && st.st_ino == k->ino &&
                    st.st_dev == k->dev) {
                    i++;
                    continue;
                }
                *k = rpc.conns[--rpc.nconns];
            }
            rpc_conn_publish();
        }
    }
    n = rpc.nconns;
    pthread_mutex_unlock(&rpc.conn_mu);
    return n;
}

/* --- TLS listeners ----------------------------------------------------------------- */

/* A PEM file as a NUL-terminated string (the caller frees it), or NULL
 * (logged). */
static char *rpc_read_pem(const char *path, const char *what, const char *listener)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = NULL;
    size_t len = 0;

    if (fd == -1) {
        cr_log(CR_LOG_EMERG, errno, "listen \"%s\": cannot open tls %s %s", listener,
               what, path);
        return NULL;
    }
    buf = malloc(RPC_PEM_MAX + 1);
    if (buf == NULL) {
        close(fd);
        cr_log(CR_LOG_EMERG, ENOMEM, "listen \"%s\": reading tls %s", listener, what);
        return NULL;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, RPC_PEM_MAX - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            cr_log(CR_LOG_EMERG, errno, "listen \"%s\": cannot read tls %s %s", listener,
                   what, path);
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == RPC_PEM_MAX) {
            cr_log(CR_LOG_EMERG, 0, "listen \"%s\": tls %s %s is larger than %d bytes; "
                   "is it really a PEM file?", listener, what, path, RPC_PEM_MAX);
            goto fail;
        }
    }
    close(fd);
    buf[len] = '\0';
    return buf;
fail:
    close(fd);
    explicit_bzero(buf, len);
    free(buf);
    return NULL;
}

/* "1.2.3.4:443" or "[::1]:443" from the resolved address: gRPC binds it
 * itself (DESIGN 2), and a literal address never needs a DNS lookup. */
static void rpc_listen_addr(const cr_listen_conf_t *l, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (l->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&l->addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&l->addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
    }
}

/* Bind a TLS listener inside this acceptor (before grpc_server_start), with
 * SO_REUSEPORT so that every acceptor, of this generation and the next, binds
 * it too. Returns CR_OK or CR_ERROR (logged). */
static int rpc_tls_listen(const cr_listen_conf_t *l)
{
    char addr[INET6_ADDRSTRLEN + 16];
    char *cert = NULL, *key = NULL, *ca = NULL;
    int rc = CR_ERROR;

    cert = rpc_read_pem(l->tls.cert, "cert", l->text);
    key = cert ? rpc_read_pem(l->tls.key, "key", l->text) : NULL;
    if (key == NULL)
        goto out;
    if (l->tls.client_ca[0] != '\0' &&
        (ca = rpc_read_pem(l->tls.client_ca, "client_ca", l->text)) == NULL)
        goto out;

    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    grpc_ssl_client_certificate_request_type req =
        l->tls.verify_client ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
        : ca                 ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
    /* The credentials copy the PEM strings. */
    grpc_server_credentials *creds =
        grpc_ssl_server_credentials_create_ex(ca, &pair, 1, req, NULL);
    if (creds == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "listen \"%s\": gRPC refused the tls cert/key/client_ca (see the grpc "
               "line above); check that they are PEM and that the key matches the cert",
               l->text);
        goto out;
    }
    rpc_listen_addr(l, addr, sizeof(addr));
    int port = grpc_server_add_http2_port(rpc.server, addr, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        cr_log(CR_LOG_EMERG, 0,
               "listen \"%s\": gRPC could not bind %s for TLS (see the grpc line above); "
               "another program may hold the port without SO_REUSEPORT",
               l->text, addr);
        goto out;
    }
    rpc.ntls++;
    rc = CR_OK;
out:
    if (key) {
        explicit_bzero(key, strlen(key));
        free(key);
    }
    free(cert);
    free(ca);
    return rc;
}

/* --- the gRPC thread ----------------------------------------------------------- */

/* Keep the requests posted: every call answered promptly, never left queued in
 * core without a request to match (notes 2.2). */
static void rpc_top_up(void)
{
    unsigned short_of = 0;

    if (rpc.shutting_down)
        return;
    for (int k = 0; k < CALL_KINDS; k++) {
        while (rpc.posted[k] < rpc_methods[k].posted &&
               rpc_call_post((rpc_kind_t)k) == CR_OK) {
        }
        short_of += rpc_methods[k].posted - rpc.posted[k];
    }
    while (rpc.gen_posted < RPC_GENERIC_POSTED && rpc_gen_post() == CR_OK) {
    }
    short_of += RPC_GENERIC_POSTED - rpc.gen_posted;
    if (short_of) {
        uint64_t now = cr_now_ns();
        if (now - rpc.post_err_ns > 1000 * RPC_NS_PER_MS || rpc.post_err_ns == 0) {
            rpc.post_err_ns = now;
            cr_log(CR_LOG_CRIT, ENOMEM, "%u gRPC requests could not be posted; retrying",
                   short_of);
        }
    }
}

static void rpc_dispatch(const grpc_event *ev)
{
    rpc_tag_t *tag = ev->tag;
    bool ok = ev->success != 0;

    switch (tag->type) {
    case TAG_CALL_NEW:
        rpc_call_on_new(tag->obj, ok);
        rpc_top_up();
        break;
    case TAG_CALL_CLOSE:
        rpc_call_on_close(tag->obj);
        break;
    case TAG_CALL_RECV:
        rpc_stream_on_recv(tag->obj, ok);
        break;
    case TAG_CALL_WRITE:
        rpc_stream_on_write(tag->obj, ok);
        break;
    case TAG_CALL_STATUS:
        if (!ok)
            cr_log_debug("%s: status not sent: the call ended first",
                         rpc_methods[((rpc_call_t *)tag->obj)->kind].name);
        rpc_call_unref(tag->obj);
        break;
    case TAG_GEN_NEW:
        rpc_gen_on_new(tag->obj, ok);
        rpc_top_up();
        break;
    case TAG_GEN_DONE:
        rpc_gen_on_done(tag->obj);
        break;
    case TAG_SHUTDOWN:
        rpc.shutdown_seen = true;
        break;
    case CR_RPC_TAG_CALLBACK: {
        cr_rpc_cb_t *cb = ev->tag;
        cb->fn(cb, ok);
        break;
    }
    default:
        cr_log(CR_LOG_ALERT, 0, "unknown completion-queue tag type %d", tag->type);
        break;
    }
}

/* Poll the queue once, up to ms. Returns false when the queue is shut down. */
static bool rpc_poll(int ms)
{
    grpc_event ev = grpc_completion_queue_next(rpc.cq, rpc_deadline_ms(ms), NULL);
    switch (ev.type) {
    case GRPC_OP_COMPLETE:
        rpc_dispatch(&ev);
        return true;
    case GRPC_QUEUE_TIMEOUT:
        return true;
    case GRPC_QUEUE_SHUTDOWN:
    default:
        return false;
    }
}

static void rpc_row_state(cr_proc_state_t st)
{
    cr_proc_sh_t *row = rpc_ctl_row();

    if (row)
        __atomic_store_n(&row->state, (uint8_t)st, __ATOMIC_RELEASE);
}

/* Every RPC_TICK_MS on the gRPC thread: follow log_level reloads. */
static void rpc_tick(void)
{
    if (cr_ctl) {
        int lv = __atomic_load_n(&cr_ctl->log_level, __ATOMIC_RELAXED);
        if (lv >= CR_LOG_EMERG && lv <= CR_LOG_DEBUG && lv != cr_log_level) {
            cr_log_level = lv;
            rpc_gpr_verbosity();
        }
    }
}

/* The drain begins (SIGQUIT: a reload retires this generation, or a graceful
 * stop): the accept thread stopped already; health says NOT_SERVING; every
 * call on the open connections is still served, and max_connection_age sends
 * each connection a graceful GOAWAY in its time, so clients move on by
 * themselves; the streams we own end (RunStream after the results of the
 * tasks it submitted, Updates after the entry in flight) with UNAVAILABLE
 * "server reloading, reconnect". gRPC thread. */
static void rpc_drain_begin(uint64_t now)
{
    rpc.drain_start_ns = now;
    __atomic_store_n(&rpc.draining, 1, __ATOMIC_RELEASE);
    rpc_row_state(CR_PROC_DRAINING);
    for (size_t i = 0; i < cr_nelem(rpc_services); i++)
        if (rpc_services[i]->drain)
            rpc_services[i]->drain();

    unsigned streams = 0;
    for (rpc_call_t *c = rpc.open_head; c; c = c->onext) {
        if (c->kind == CALL_RUN)
            continue;
        pthread_mutex_lock(&c->mu);
        c->draining = true;
        if (c->kind == CALL_UPDATES)
            rpc_updates_unready(c);
        rpc_stream_pump(c);
        pthread_mutex_unlock(&c->mu);
        streams++;
    }
    unsigned conns = cr_rpc_connections(true);
    cr_log(CR_LOG_NOTICE, 0,
           "acceptor %u draining: no new connections; open connections: %u (each "
           "closes at max_connection_age_ms, %u ms, + %u ms grace); streams ending "
           "now: %u",
           rpc.slot, conns, rpc.conf->max_connection_age_ms,
           rpc.conf->max_connection_age_grace_ms, streams);
}

/* Is the drain over? Every connection we accepted has closed (and, with TLS
 * listeners, whose connections gRPC accepts itself, every connection older
 * than the drain has aged out and no call is open), or shutdown_timeout_ms
 * passed. gRPC thread. */
static bool rpc_drain_done(uint64_t now)
{
    uint64_t took = now - rpc.drain_start_ns;
    unsigned conns = cr_rpc_connections(true);

    if (conns == 0) {
        uint64_t aged = ((uint64_t)rpc.conf->max_connection_age_ms * 11 / 10 +
                         rpc.conf->max_connection_age_grace_ms + RPC_TICK_MS) *
                        RPC_NS_PER_MS;
        if (rpc.ntls == 0 || (took >= aged && rpc.nopen == 0)) {
            cr_log(CR_LOG_INFO, 0,
                   "acceptor %u: every connection closed %" PRIu64
                   " ms into the drain; shutting down",
                   rpc.slot, took / RPC_NS_PER_MS);
            return true;
        }
    }
    if (took >= (uint64_t)rpc.conf->shutdown_timeout_ms * RPC_NS_PER_MS) {
        cr_log(CR_LOG_WARN, 0,
               "acceptor %u: %u connection%s and %u call%s still open after "
               "shutdown_timeout_ms (%u ms) of draining; closing them",
               rpc.slot, conns, conns == 1 ? "" : "s", rpc.nopen,
               rpc.nopen == 1 ? "" : "s", rpc.conf->shutdown_timeout_ms);
        return true;
    }
    return false;
}

/* Server channel arguments from the configuration (DESIGN 7). */
static void rpc_arg(grpc_arg *a, const char *key, uint64_t v)
{
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key;
    a->value.integer = v > INT_MAX ? INT_MAX : (int)v;
}

int cr_rpc_init(const cr_acceptor_ctx_t *ctx)
{
    grpc_arg args[13];
    grpc_channel_args cargs;
    const cr_conf_t *conf = ctx->conf;
    size_t n = 0;

    rpc.ctx = ctx;
    rpc.conf = conf;
    rpc.region = ctx->region;
    rpc.feed = ctx->feed;
    rpc.slot = ctx->slot;
    rpc.row = ctx->row >= 0 && ctx->row < CR_MAX_PROCS ? ctx->row : -1;
    rpc.pid = getpid();
    rpc.tag_shutdown = (rpc_tag_t){TAG_SHUTDOWN, NULL};

    rpc.dpos = calloc(rpc.region->ntasks ? rpc.region->ntasks : 1, sizeof(*rpc.dpos));
    if (rpc.dpos == NULL) {
        cr_log(CR_LOG_EMERG, ENOMEM, "cannot allocate the stream index (%u descriptors)",
               rpc.region->ntasks);
        return CR_ERROR;
    }
    pthread_mutex_lock(&rpc.conn_mu);
    rpc_conn_publish(); /* 0: a predecessor in this slot may have left a count */
    pthread_mutex_unlock(&rpc.conn_mu);

    gpr_set_log_function(rpc_gpr_log);
    grpc_init();
    rpc_gpr_verbosity();

    rpc.cq = grpc_completion_queue_create_for_next(NULL);
    if (rpc.cq == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "grpc_completion_queue_create_for_next() failed; "
               "check the gRPC library (libgrpc29) and the error log above");
        return CR_ERROR;
    }

    /* The receive limit is max_receive_message (by default max_payload + 4k:
     * a payload just over max_payload still reaches us, so that the client
     * gets our INVALID_ARGUMENT naming the limit). Bigger messages get
     * RESOURCE_EXHAUSTED from gRPC itself. */
    uint64_t recv_max = conf->max_receive_message ? conf->max_receive_message
                                                  : conf->max_payload + 4096;
    rpc_arg(&args[n++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, recv_max);
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[n++].value.integer = -1;
    rpc_arg(&args[n++], GRPC_ARG_MAX_CONCURRENT_STREAMS, conf->max_concurrent_streams);
    rpc_arg(&args[n++], GRPC_ARG_KEEPALIVE_TIME_MS, conf->keepalive_time_ms);
    rpc_arg(&args[n++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS, conf->keepalive_timeout_ms);
    /* Ping idle connections too, so a vanished client is noticed; and accept
     * client pings as often as we send ours (capped at gRPC's own 5 minute
     * default), also between calls, so a client configured like us is never
     * sent GOAWAY too_many_pings. */
    rpc_arg(&args[n++], GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    rpc_arg(&args[n++], GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
            conf->keepalive_time_ms < 300000 ? conf->keepalive_time_ms : 300000);
    /* Always set: the age is what moves clients off a draining acceptor
     * (DESIGN 5 step 4) and spreads long-lived connections over acceptors. */
    rpc_arg(&args[n++], GRPC_ARG_MAX_CONNECTION_AGE_MS, conf->max_connection_age_ms);
    rpc_arg(&args[n++], GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
            conf->max_connection_age_grace_ms);
    if (conf->max_connection_idle_ms > 0)
        rpc_arg(&args[n++], GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                conf->max_connection_idle_ms);
    /* TLS listeners are bound by gRPC in every acceptor: they must share. */
    rpc_arg(&args[n++], GRPC_ARG_ALLOW_REUSEPORT, 1);
    /* gRPC 1.51 keeps opening the flow-control window of a message being read
     * and checks max_receive_message only once all of it is in, so a prefix
     * claiming 4 GiB had us buffer all that was sent. A memory quota bounds
     * what gRPC buffers here: over it, gRPC closes idle connections and
     * cancels calls (RESOURCE_EXHAUSTED) until it is under again. Twice the
     * region and two largest messages, at least 32m: traffic never needs it
     * (more than shm_size in flight waits for queue room anyway). */
    uint64_t quota = 2 * (conf->shm_size + recv_max);
    if (quota < (32u << 20))
        quota = 32u << 20;
    grpc_resource_quota *rq = grpc_resource_quota_create("crunchd");
    grpc_resource_quota_resize(rq, quota < SIZE_MAX ? (size_t)quota : SIZE_MAX);
    args[n].type = GRPC_ARG_POINTER;
    args[n].key = (char *)GRPC_ARG_RESOURCE_QUOTA;
    args[n].value.pointer.p = rq;
    args[n++].value.pointer.vtable = grpc_resource_quota_arg_vtable();
    cr_assert(n <= cr_nelem(args));
    cargs.num_args = n;
    cargs.args = args;

    rpc.server = grpc_server_create(&cargs, NULL);
    grpc_resource_quota_unref(rq); /* the server holds its own reference */
    if (rpc.server == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "grpc_server_create() failed; check the gRPC library "
               "(libgrpc29) and the error log above");
        return CR_ERROR;
    }
    grpc_server_register_completion_queue(rpc.server, rpc.cq, NULL);
    for (int k = 0; k < CALL_KINDS; k++) {
        rpc.method[k] = grpc_server_register_method(rpc.server, rpc_methods[k].path, NULL,
                                                    rpc_methods[k].payload, 0);
        if (rpc.method[k] == NULL) {
            cr_log(CR_LOG_EMERG, 0,
                   "grpc_server_register_method(\"%s\") failed; "
                   "this gRPC library is not compatible with crunchd",
                   rpc_methods[k].path);
            return CR_ERROR;
        }
    }
    for (size_t i = 0; i < cr_nelem(rpc_services); i++)
        if (rpc_services[i]->setup &&
            rpc_services[i]->setup(ctx, rpc.server, rpc.cq) != CR_OK) {
            cr_log(CR_LOG_EMERG, 0, "the %s service could not be set up (see above)",
                   rpc_services[i]->name);
            return CR_ERROR;
        }

    /* grpc_server_add_channel_from_fd takes insecure credentials only (1.51). */
    rpc.creds = grpc_insecure_server_credentials_create();
    if (rpc.creds == NULL) {
        cr_log(CR_LOG_EMERG, 0, "grpc_insecure_server_credentials_create() failed");
        return CR_ERROR;
    }
    /* Plain listeners are the master's sockets (DESIGN 2); TLS ones gRPC binds
     * here, before start. */
    for (unsigned i = 0; i < conf->nlisten; i++)
        if (conf->listen[i].tls.on && rpc_tls_listen(&conf->listen[i]) != CR_OK)
            return CR_ERROR;
    /* The server must be started before connections are added: start creates
     * the pollsets their endpoints join. */
    grpc_server_start(rpc.server);

    for (size_t i = 0; i < cr_nelem(rpc_services); i++)
        if (rpc_services[i]->start && rpc_services[i]->start() != CR_OK) {
            cr_log(CR_LOG_EMERG, 0, "the %s service could not start (see above)",
                   rpc_services[i]->name);
            return CR_ERROR;
        }
    rpc_top_up();
    for (int k = 0; k < CALL_KINDS; k++)
        if (rpc.posted[k] == 0) {
            cr_log(CR_LOG_EMERG, 0, "cannot post any gRPC request; out of memory?");
            return CR_ERROR;
        }
    if (rpc.gen_posted == 0) {
        cr_log(CR_LOG_EMERG, 0, "cannot post any gRPC request; out of memory?");
        return CR_ERROR;
    }

    int err = pthread_create(&rpc.results_tid, NULL, rpc_results_main, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_create() of the result thread failed");
        return CR_ERROR;
    }
    rpc.results_started = true;
    if (rpc.feed && rpc.row >= 0 && (unsigned)rpc.row < CR_WORKER_SLOTS) {
        err = pthread_create(&rpc.updates_tid, NULL, rpc_updates_main, NULL);
        if (err != 0) {
            cr_log(CR_LOG_EMERG, err, "pthread_create() of the updates thread failed");
            return CR_ERROR;
        }
        rpc.updates_started = true;
    } else {
        cr_log(CR_LOG_WARN, 0,
               "acceptor %u: no updates feed (feed %s, control row %d): Submit and "
               "Updates answer UNAVAILABLE",
               rpc.slot, rpc.feed ? "present" : "missing", ctx->row);
    }
    rpc_row_state(CR_PROC_IDLE);
    return CR_OK;
}

void cr_rpc_request_stop(cr_rpc_stop_t how)
{
    int cur = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);
    while ((int)how > cur &&
           !__atomic_compare_exchange_n(&rpc.stop, &cur, (int)how, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

bool cr_rpc_closed(void)
{
    return __atomic_load_n(&rpc.closed, __ATOMIC_ACQUIRE) != 0;
}

bool cr_rpc_draining(void)
{
    return __atomic_load_n(&rpc.draining, __ATOMIC_ACQUIRE) != 0;
}

cr_rpc_stop_t cr_rpc_serve(void)
{
    rpc_check_pid();
    for (;;) {
        rpc_poll(RPC_TICK_MS);
        int how = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);
        if (how == CR_RPC_STOP_FAST)
            return CR_RPC_STOP_FAST;
        uint64_t now = cr_now_ns();
        if (now - rpc.last_tick_ns < RPC_TICK_MS * RPC_NS_PER_MS)
            continue;
        rpc.last_tick_ns = now;
        rpc_tick();
        if (how == CR_RPC_STOP_GRACEFUL) {
            if (rpc.drain_start_ns == 0)
                rpc_drain_begin(now);
            else if (rpc_drain_done(now))
                return CR_RPC_STOP_GRACEFUL;
        }
    }
}

int cr_rpc_shutdown(void)
{
    uint64_t start = cr_now_ns(), cancel_ns = 0;
    bool cancelled = false;

    rpc_check_pid();
    if (rpc.drain_start_ns == 0) {
        /* A fast stop (or a drain cut short): health and friends still hear it. */
        __atomic_store_n(&rpc.draining, 1, __ATOMIC_RELEASE);
        rpc_row_state(CR_PROC_DRAINING);
    }
    /* Posted requests fail now (TAG_*_NEW with ok=0), GOAWAY goes out, and the
     * tag comes once every connection has closed. */
    rpc.shutting_down = true;
    grpc_server_shutdown_and_notify(rpc.server, rpc.cq, &rpc.tag_shutdown);
    for (size_t i = 0; i < cr_nelem(rpc_services); i++)
        if (rpc_services[i]->stop)
            rpc_services[i]->stop();

    for (;;) {
        uint64_t now = cr_now_ns();
        int how = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);
        int live = __atomic_load_n(&rpc.live, __ATOMIC_ACQUIRE);
        for (size_t i = 0; i < cr_nelem(rpc_services); i++)
            if (rpc_services[i]->live)
                live += rpc_services[i]->live();

        if (rpc.shutdown_seen && live == 0)
            break;
        if (!cancelled && (how == CR_RPC_STOP_FAST ||
                           now - start >= RPC_CANCEL_AFTER_MS * RPC_NS_PER_MS)) {
            if (how != CR_RPC_STOP_FAST)
                cr_log(CR_LOG_INFO, 0,
                       "%d calls and %u connections still open %d ms after the gRPC "
                       "server shut down; cancelling them",
                       live, cr_rpc_connections(true), RPC_CANCEL_AFTER_MS);
            /* Clients see UNAVAILABLE; RECV_CLOSE reports cancelled on each
             * call, which cancels its tasks in the queue. */
            grpc_server_cancel_all_calls(rpc.server);
            cancelled = true;
            cancel_ns = now;
        }
        if (cancelled && now - cancel_ns >= RPC_CANCEL_WAIT_MS * RPC_NS_PER_MS) {
            cr_log(CR_LOG_WARN, 0,
                   "gRPC did not finish %d calls within %d ms of cancelling "
                   "them; exiting without cleanup",
                   live, RPC_CANCEL_WAIT_MS);
            return CR_ERROR;
        }
        rpc_poll(100);
    }

    /* Every call has ended, so the result and updates threads have nothing
     * left to send: stop them before the queue shuts down (a batch started
     * after that aborts). */
    __atomic_store_n(&rpc.threads_stop, 1, __ATOMIC_RELEASE);
    if (rpc.results_started) {
        rpc_results_kick();
        int err = pthread_join(rpc.results_tid, NULL);
        if (err != 0)
            cr_log(CR_LOG_ALERT, err, "pthread_join() of the result thread failed");
        rpc.results_started = false;
    }
    if (rpc.updates_started) {
        pthread_mutex_lock(&rpc.upd_mu);
        pthread_cond_signal(&rpc.upd_cv);
        pthread_mutex_unlock(&rpc.upd_mu);
        int err = pthread_join(rpc.updates_tid, NULL);
        if (err != 0)
            cr_log(CR_LOG_ALERT, err, "pthread_join() of the updates thread failed");
        rpc.updates_started = false;
    }
    __atomic_store_n(&rpc.closed, 1, __ATOMIC_RELEASE);

    grpc_server_destroy(rpc.server);
    rpc.server = NULL;
    grpc_completion_queue_shutdown(rpc.cq);
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(rpc.cq, rpc_deadline_ms(RPC_CANCEL_WAIT_MS), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            cr_log(CR_LOG_WARN, 0,
                   "the gRPC completion queue did not drain within %d ms; "
                   "exiting without cleanup",
                   RPC_CANCEL_WAIT_MS);
            return CR_ERROR;
        }
        /* Nothing may be started any more; nothing should arrive either. */
        cr_log(CR_LOG_ALERT, 0, "completion after shutdown (tag type %d)",
               ((rpc_tag_t *)ev.tag)->type);
    }
    grpc_completion_queue_destroy(rpc.cq);
    rpc.cq = NULL;
    grpc_server_credentials_release(rpc.creds);
    rpc.creds = NULL;
    grpc_shutdown();

    free(rpc.tbl);
    rpc.tbl = NULL;
    rpc.tbl_cap = 0;
    rpc.tbl_free = CR_NONE;
    free(rpc.dpos);
    rpc.dpos = NULL;
    pthread_mutex_lock(&rpc.conn_mu);
    free(rpc.conns);
    rpc.conns = NULL;
    rpc.nconns = rpc.conns_cap = 0;
    pthread_mutex_unlock(&rpc.conn_mu);
    cr_log_debug("gRPC shut down in %" PRIu64 " ms",
                 (cr_now_ns() - start) / RPC_NS_PER_MS);
    return CR_OK;
}
