/* rpc.c: the gRPC server of an acceptor: Run calls in, results out, UNIMPLEMENTED
 * for everything else. The only file besides acceptor.c that may call gRPC core.
 *
 * Threads (all inherit the acceptor's fully blocked signal mask):
 *   - the gRPC thread (cr_rpc_serve, cr_rpc_shutdown) polls the one completion
 *     queue, accepts calls, validates and submits tasks, answers errors;
 *   - the result thread takes finished tasks from this acceptor's result ring
 *     and starts the reply batch itself under the call's mutex (notes 4.4,
 *     design A); it also retries calls that found the queue full (the pending
 *     list), so the gRPC thread never waits for queue space.
 *
 * A Run call context (rpc_call_t) is reference counted: one reference per
 * started gRPC tag, one for the call table, one for the pending list, one
 * while the result thread holds it. The last reference unrefs the grpc_call
 * and frees the context, from whichever thread drops it.
 *
 * Lock order: call->mu, then tbl_mu or pend_mu (never both), then the region's
 * own lock inside cr_task_*. The last reference is never dropped under call->mu.
 *
 * Who owns descriptor d of a submitted call: the shared region, until the
 * result thread takes it from the ring; from then on the result thread, which
 * always releases it. call->task_live says "d is submitted and its result not
 * yet taken" and is only read or cleared under call->mu: a cancelled call
 * marks d cancelled only while task_live, so cr_task_cancel never touches a
 * descriptor that was already released (and maybe reused). */
#include "rpc.h"

#include "handlers.h"
#include "log.h"

#include <pthread.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "crunch/v1/crunch.pb-c.h"

#define RPC_RUN_METHOD       "/crunch.v1.Crunch/Run"
#define RPC_RUN_POSTED       32  /* Run requests kept posted */
#define RPC_GENERIC_POSTED   8   /* generic requests kept posted (UNIMPLEMENTED) */
#define RPC_TICK_MS          200 /* completion-queue poll: stop-flag latency */
#define RPC_RESULT_BATCH     64
#define RPC_RESULT_WAIT_MS   100
#define RPC_PENDING_RETRY_MS 5     /* retry period while calls wait for queue space */
#define RPC_PENDING_MAX      65536 /* calls waiting for queue space, at most */
#define RPC_DRAIN_MS         10000 /* graceful stop: then cancel what still runs */
#define RPC_CANCEL_WAIT_MS   2000  /* after cancel_all_calls: then give up */
#define RPC_MSG_MAX          1024  /* status details we build */
#define RPC_NS_PER_MS        UINT64_C(1000000)

typedef enum {
    TAG_RUN_NEW = 1, /* a Run call arrived (or its request failed at shutdown) */
    TAG_RUN_CLOSE,   /* RECV_CLOSE_ON_SERVER: the call is over */
    TAG_RUN_SEND,    /* the reply batch completed */
    TAG_GEN_NEW,     /* any other method arrived */
    TAG_GEN_DONE,    /* its UNIMPLEMENTED batch completed */
    TAG_SHUTDOWN,    /* grpc_server_shutdown_and_notify finished */
} rpc_tag_type_t;

/* What goes through the completion queue: embedded in the call context. */
typedef struct {
    rpc_tag_type_t type;
    void *obj;
} rpc_tag_t;

typedef enum {
    PEND_NONE = 0,
    PEND_LISTED,   /* on rpc.pend_head list */
    PEND_RETRYING, /* taken off the list by the result thread for one retry round */
} rpc_pend_state_t;

typedef struct rpc_call_s rpc_call_t;

struct rpc_call_s {
    /* Filled by gRPC at TAG_RUN_NEW; then read only by the gRPC thread. */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    int close_cancelled; /* written by core for RECV_CLOSE_ON_SERVER */
    rpc_tag_t tag_new, tag_close, tag_send;
    int refs; /* atomic */

    pthread_mutex_t mu; /* guards the fields below, and start_batch on sends */
    bool replied;       /* the status batch was started */
    bool gone;          /* RECV_CLOSE came back: nothing more may be sent */
    bool task_live;     /* d submitted, result not taken yet */
    bool in_table;
    uint32_t d;
    uint64_t tag;           /* call-table tag carried by the descriptor */
    Crunch__V1__Task *task; /* decoded request, kept until submitted */
    uint32_t handler;
    uint64_t id;          /* Task.id, for logs */
    uint64_t deadline_ns; /* CLOCK_MONOTONIC, 0 = none */
    uint64_t pend_since_ns, pend_until_ns;
    size_t pend_bytes;

    /* Pending list links and state: guarded by rpc.pend_mu. */
    rpc_pend_state_t pend;
    rpc_call_t *pnext;
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

static struct {
    const cr_acceptor_ctx_t *ctx;
    const cr_conf_t *conf;
    cr_region_t *region;
    unsigned slot;
    pid_t pid; /* the process that ran grpc_init */

    grpc_server *server;
    grpc_completion_queue *cq;
    grpc_server_credentials *creds;
    void *run_method;
    rpc_tag_t tag_shutdown;

    /* gRPC thread only */
    bool shutting_down; /* no more requests are posted */
    bool shutdown_seen;
    unsigned run_posted, gen_posted;
    uint64_t post_err_ns; /* rate limit of request errors */

    int stop;   /* atomic cr_rpc_stop_t */
    int closed; /* atomic: no batch may start any more */
    int live;   /* atomic: call contexts alive (Run + generic) */

    pthread_mutex_t tbl_mu;
    rpc_slot_t *tbl;
    uint32_t tbl_cap, tbl_free;

    pthread_mutex_t pend_mu;
    rpc_call_t *pend_head, *pend_tail;
    unsigned pend_count; /* listed + retrying; atomic reads outside */
    uint64_t pend_bytes;

    pthread_t results_tid;
    bool results_started;
    int results_stop; /* atomic */
} rpc = {
    .tbl_mu = PTHREAD_MUTEX_INITIALIZER,
    .pend_mu = PTHREAD_MUTEX_INITIALIZER,
    .tbl_free = CR_NONE,
};

static void rpc_call_unref(rpc_call_t *c);

/* --- logging ------------------------------------------------------------------- */

static void rpc_gpr_log(gpr_log_func_args *a)
{
    int level;
    const char *file = a->file ? strrchr(a->file, '/') : NULL;

    switch (a->severity) {
    case GPR_LOG_SEVERITY_ERROR:
        level = CR_LOG_ERR;
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

/* --- call contexts ------------------------------------------------------------- */

static void rpc_call_ref(rpc_call_t *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

static void rpc_call_free(rpc_call_t *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->task)
        crunch__v1__task__free_unpacked(c->task, NULL);
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

/* Start a batch on a Run call; the tag holds a reference until it returns.
 * A refused batch poisons the call in 1.51 (notes 3.1): cancel it, never
 * retry. Returns true if started. */
static bool rpc_call_start(rpc_call_t *c, const grpc_op *ops, size_t n, rpc_tag_t *tag)
{
    rpc_call_ref(c);
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e == GRPC_CALL_OK)
        return true;
    cr_log(CR_LOG_ALERT, 0,
           "grpc_call_start_batch() failed with %d (tag %d); cancelling the call", (int)e,
           (int)tag->type);
    grpc_call_cancel(c->call, NULL);
    /* The caller still holds a reference: this one is never the last. */
    __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    return false;
}

/* Send the final status, with a message when bb is set (consumed). At most
 * once per call, never after the call ended or the queue is closing.
 * Called with c->mu held. */
static void rpc_call_reply(rpc_call_t *c, int status, const char *msg,
                           grpc_byte_buffer *bb)
{
    grpc_op ops[3];
    grpc_slice details;
    size_t n = 0;

    if (c->replied || c->gone || __atomic_load_n(&rpc.closed, __ATOMIC_ACQUIRE)) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return;
    }
    c->replied = true;

    memset(ops, 0, sizeof(ops));
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
    }
    /* status_details is copied by start_batch (call.cc), so a local slice is fine. */
    details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n].data.send_status_from_server.status_details = msg ? &details : NULL;
    n++;

    rpc_call_start(c, ops, n, &c->tag_send);
    grpc_slice_unref(details);
    /* SEND_MESSAGE moved the slices out already; the shell is ours. */
    if (bb)
        grpc_byte_buffer_destroy(bb);
}

static void rpc_call_replyf(rpc_call_t *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rpc_call_replyf(rpc_call_t *c, int status, const char *fmt, ...)
{
    char msg[RPC_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rpc_call_reply(c, status, msg, NULL);
}

/* --- call table ---------------------------------------------------------------- */

/* Register c so that its result can find it. Takes a reference for the table.
 * Called with c->mu held. Returns CR_OK or CR_ERROR (out of memory). */
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
        s->gen = 1; /* tag 0 never names a call */
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

/* --- submitting ---------------------------------------------------------------- */

/* Wake the result thread out of cr_result_take so that it retries the pending
 * list now rather than after its 100 ms wait. */
static void rpc_results_kick(void)
{
    cr_result_wake(rpc.region, rpc.slot);
}

/* Queue c's task. c->mu held. Returns CR_OK (submitted), CR_AGAIN (no space
 * now) or CR_ERROR (an error status was sent). */
static int rpc_submit(rpc_call_t *c)
{
    cr_submit_t s;
    uint32_t d;

    if (!c->in_table && rpc_tbl_add(c) != CR_OK) {
        rpc_call_reply(c, GRPC_STATUS_INTERNAL,
                       "the acceptor is out of memory; retry later", NULL);
        return CR_ERROR;
    }
    s.id = c->task->id;
    s.tag = c->tag;
    s.deadline_ns = c->deadline_ns;
    s.handler = c->handler;
    s.acceptor = rpc.slot;
    s.payload = c->task->payload.data;
    s.len = c->task->payload.len;

    int rc = cr_task_submit(rpc.region, &s, &d);
    if (rc == CR_AGAIN)
        return CR_AGAIN;
    if (rc != CR_OK) {
        rpc_call_reply(c, GRPC_STATUS_INTERNAL,
                       "the task could not be queued; see the crunchd error log", NULL);
        return CR_ERROR;
    }
    c->d = d;
    c->task_live = true;
    crunch__v1__task__free_unpacked(c->task, NULL);
    c->task = NULL;
    return CR_OK;
}

/* RESOURCE_EXHAUSTED after waiting for queue space. c->mu held. */
static void rpc_reply_full(rpc_call_t *c, uint64_t now)
{
    char shm[32];
    uint64_t waited = now > c->pend_since_ns ? now - c->pend_since_ns : 0;

    rpc_fmt_size(rpc.conf->shm_size, shm, sizeof(shm));
    rpc_call_replyf(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                    "task queue full (queue_capacity %u) or payload arena full "
                    "(shm_size %s) for %" PRIu64 " ms; retry later, or raise "
                    "queue_capacity / shm_size / workers",
                    rpc.conf->queue_capacity, shm, waited / RPC_NS_PER_MS);
}

/* Put c on the pending list: it waits for queue space up to queue_wait_ms or
 * its deadline, whichever comes first. c->mu held. */
static void rpc_pend_add(rpc_call_t *c, uint64_t now)
{
    uint64_t until = now + (uint64_t)rpc.conf->queue_wait_ms * RPC_NS_PER_MS;
    size_t bytes = c->task->payload.len;
    bool first;

    c->pend_since_ns = now;
    if (c->deadline_ns && c->deadline_ns < until)
        until = c->deadline_ns;
    c->pend_until_ns = until;
    c->pend_bytes = bytes;
    if (until <= now) {
        rpc_reply_full(c, now);
        return;
    }

    pthread_mutex_lock(&rpc.pend_mu);
    /* Waiting calls hold their payload in our heap: bound them like the arena. */
    if (rpc.pend_count >= RPC_PENDING_MAX ||
        rpc.pend_bytes + bytes > rpc.conf->shm_size) {
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
        bool done = true;

        next = c->pnext;
        pthread_mutex_lock(&c->mu);
        if (!c->gone && !c->replied) {
            int rc = CR_AGAIN;
            if (!blocked) {
                rc = rpc_submit(c);
                blocked = rc == CR_AGAIN;
            }
            if (rc == CR_AGAIN) {
                if (now >= c->pend_until_ns)
                    rpc_reply_full(c, now);
                else
                    done = false;
            }
        }
        pthread_mutex_unlock(&c->mu);

        if (done) {
            pthread_mutex_lock(&rpc.pend_mu);
            rpc_pend_forget_locked(c);
            pthread_mutex_unlock(&rpc.pend_mu);
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

/* --- Run ----------------------------------------------------------------------- */

static Crunch__V1__Task *rpc_decode_task(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    Crunch__V1__Task *t;

    /* protobuf-c wants contiguous bytes: a one-slice message is read in place,
     * a larger one (many slices) is joined first. */
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        grpc_slice *s = &bb->data.raw.slice_buffer.slices[0];
        return crunch__v1__task__unpack(NULL, GRPC_SLICE_LENGTH(*s),
                                        GRPC_SLICE_START_PTR(*s));
    }
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    t = crunch__v1__task__unpack(NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&r);
    return t;
}

/* Validate the request of a new Run call and submit it (or park it on the
 * pending list, or answer an error). c->mu held. */
static void rpc_run_accept(rpc_call_t *c)
{
    grpc_byte_buffer *bb = c->payload;
    Crunch__V1__Task *task;
    char list[256];
    int64_t left;
    uint64_t now, dl = 0;

    c->payload = NULL;
    if (bb == NULL) {
        rpc_call_reply(c, GRPC_STATUS_INTERNAL,
                       "no Task message: the client closed the call without sending a "
                       "crunch.v1.Task",
                       NULL);
        return;
    }
    task = rpc_decode_task(bb);
    grpc_byte_buffer_destroy(bb);
    if (task == NULL) {
        rpc_call_reply(c, GRPC_STATUS_INVALID_ARGUMENT,
                       "malformed Task message; send a crunch.v1.Task", NULL);
        return;
    }
    c->task = task;
    c->id = task->id;

    const char *name = task->handler ? task->handler : "";
    c->handler = cr_handler_find(name, strlen(name));
    if (c->handler == CR_NONE) {
        /* The name comes from the client: cut it and keep it printable. */
        char shown[68];
        size_t i, n = strlen(name);
        for (i = 0; i < n && i < 64; i++)
            shown[i] = name[i] >= 0x20 && name[i] < 0x7f ? name[i] : '?';
        if (i < n) {
            memcpy(shown + i, "...", 3);
            i += 3;
        }
        shown[i] = '\0';
        cr_handler_list(list, sizeof(list));
        rpc_call_replyf(c, GRPC_STATUS_NOT_FOUND,
                        "unknown handler \"%s\"; known handlers: %s", shown, list);
        return;
    }
    if (task->payload.len > rpc.conf->max_payload) {
        rpc_call_replyf(c, GRPC_STATUS_INVALID_ARGUMENT,
                        "payload is %zu bytes; max_payload is %" PRIu64
                        " bytes (raise max_payload in crunchd.conf or send less)",
                        task->payload.len, rpc.conf->max_payload);
        return;
    }

    /* Both the call deadline and Task.timeout_ms bound the task: the smaller
     * wins. Workers compare against cr_now_ns(), so translate the gRPC
     * deadline into a remaining time first. */
    now = cr_now_ns();
    if (rpc_time_left(c->deadline, &left)) {
        if (left <= 0) {
            rpc_call_reply(c, GRPC_STATUS_DEADLINE_EXCEEDED,
                           "the call's deadline passed before the task was queued", NULL);
            return;
        }
        dl = now + (uint64_t)left;
    }
    if (task->timeout_ms > 0) {
        uint64_t t = now + (uint64_t)task->timeout_ms * RPC_NS_PER_MS;
        if (dl == 0 || t < dl)
            dl = t;
    }
    c->deadline_ns = dl;

    cr_log_debug("Run: task %" PRIu64 " handler %s, %zu bytes", task->id, name,
                 task->payload.len);

    /* Calls already waiting for space go first: do not overtake them. */
    if (__atomic_load_n(&rpc.pend_count, __ATOMIC_ACQUIRE) == 0 &&
        rpc_submit(c) != CR_AGAIN)
        return;
    rpc_pend_add(c, now);
}

static int rpc_run_post(void)
{
    rpc_call_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return CR_ERROR;
    pthread_mutex_init(&c->mu, NULL);
    grpc_metadata_array_init(&c->md);
    c->tag_new = (rpc_tag_t){TAG_RUN_NEW, c};
    c->tag_close = (rpc_tag_t){TAG_RUN_CLOSE, c};
    c->tag_send = (rpc_tag_t){TAG_RUN_SEND, c};
    c->d = CR_NONE;
    c->refs = 1; /* the TAG_RUN_NEW tag */
    __atomic_add_fetch(&rpc.live, 1, __ATOMIC_RELAXED);

    grpc_call_error e = grpc_server_request_registered_call(
        rpc.server, rpc.run_method, &c->call, &c->deadline, &c->md, &c->payload, rpc.cq,
        rpc.cq, &c->tag_new);
    if (e != GRPC_CALL_OK) {
        cr_log(CR_LOG_CRIT, 0, "grpc_server_request_registered_call() failed with %d",
               (int)e);
        rpc_call_unref(c);
        return CR_ERROR;
    }
    rpc.run_posted++;
    return CR_OK;
}

static void rpc_run_on_new(rpc_call_t *c, bool ok)
{
    grpc_op op;

    rpc.run_posted--;
    if (!ok) {
        /* The server is shutting down: the request was cancelled, no call. */
        rpc_call_unref(c);
        return;
    }

    /* RECV_CLOSE first, in its own batch: it reports the end of the call,
     * cancelled or not, and keeps the success flag of the send batch meaningful. */
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (!rpc_call_start(c, &op, 1, &c->tag_close)) {
        rpc_call_unref(c);
        return;
    }

    pthread_mutex_lock(&c->mu);
    rpc_run_accept(c);
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c); /* the TAG_RUN_NEW reference */
}

static void rpc_run_on_close(rpc_call_t *c)
{
    bool in_table, listed;

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
                     c->id, cr_handlers[c->handler].name, c->d);
    }
    in_table = c->in_table;
    if (in_table)
        rpc_tbl_del(c);
    listed = rpc_pend_remove(c);
    pthread_mutex_unlock(&c->mu);

    if (in_table)
        rpc_call_unref(c);
    if (listed)
        rpc_call_unref(c);
    rpc_call_unref(c); /* the TAG_RUN_CLOSE reference */
}

/* --- results ------------------------------------------------------------------- */

/* The Result message of a successful task, as a byte buffer. The output is
 * copied straight from the arena into the slice by the pack. */
static grpc_byte_buffer *rpc_result_message(uint32_t d)
{
    cr_task_sh_t *t = cr_task(rpc.region, d);
    Crunch__V1__Result res = CRUNCH__V1__RESULT__INIT;

    res.id = t->id;
    res.code = 0;
    res.output.data = (uint8_t *)cr_task_result(rpc.region, d);
    res.output.len = t->result_len;
    res.worker = t->worker;
    res.queued_us =
        t->start_ns > t->enqueue_ns ? (t->start_ns - t->enqueue_ns) / 1000 : 0;
    res.run_us = t->end_ns > t->start_ns ? (t->end_ns - t->start_ns) / 1000 : 0;

    size_t len = crunch__v1__result__get_packed_size(&res);
    grpc_slice s = grpc_slice_malloc(len);
    crunch__v1__result__pack(&res, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

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
    if (c->gone || c->replied || !c->task_live || c->d != d) {
        /* The call ended between the lookup and the lock (it marked d
         * cancelled then). Anything else cannot happen: a live tag names the
         * call that submitted d. */
        if (!c->gone && !c->replied)
            cr_log(CR_LOG_ALERT, 0,
                   "result of descriptor %u matched a call waiting for %u", d,
                   c->task_live ? c->d : CR_NONE);
        pthread_mutex_unlock(&c->mu);
        cr_task_release(rpc.region, d);
        rpc_call_unref(c);
        return;
    }
    c->task_live = false;

    int code = t->code;
    if (code == CR_STATUS_OK) {
        grpc_byte_buffer *bb = rpc_result_message(d);
        cr_task_release(rpc.region, d); /* the bytes are in bb now */
        rpc_call_reply(c, GRPC_STATUS_OK, NULL, bb);
    } else {
        char msg[RPC_MSG_MAX];
        const char *h = t->handler < cr_nhandlers ? cr_handlers[t->handler].name : "?";
        cr_task_error_text(rpc.region, d, h, msg, sizeof(msg));
        cr_task_release(rpc.region, d);
        if (code < 0 || code > GRPC_STATUS_UNAUTHENTICATED)
            code = GRPC_STATUS_UNKNOWN;
        rpc_call_reply(c, code, msg, NULL);
    }
    pthread_mutex_unlock(&c->mu);
    rpc_call_unref(c);
}

static void *rpc_results_main(void *arg)
{
    uint32_t ds[RPC_RESULT_BATCH];
    uint64_t last_retry = 0;

    (void)arg;
    while (!__atomic_load_n(&rpc.results_stop, __ATOMIC_ACQUIRE)) {
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

static void rpc_gen_on_new(rpc_generic_t *g, bool ok)
{
    char method[128], msg[RPC_MSG_MAX];
    grpc_op ops[3];
    size_t len, i;

    rpc.gen_posted--;
    if (!ok) {
        rpc_gen_free(g);
        return;
    }

    /* The path comes from the client: cut it and keep it printable. */
    len = GRPC_SLICE_LENGTH(g->details.method);
    const uint8_t *p = GRPC_SLICE_START_PTR(g->details.method);
    for (i = 0; i < len && i < sizeof(method) - 4; i++)
        method[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    if (i < len) {
        memcpy(method + i, "...", 3);
        i += 3;
    }
    method[i] = '\0';
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

/* --- the gRPC thread ----------------------------------------------------------- */

/* Keep the requests posted: every call answered promptly, never left queued in
 * core without a request to match (notes 2.2). */
static void rpc_top_up(void)
{
    unsigned before = rpc.run_posted + rpc.gen_posted;

    if (rpc.shutting_down)
        return;
    while (rpc.run_posted < RPC_RUN_POSTED && rpc_run_post() == CR_OK) {
    }
    while (rpc.gen_posted < RPC_GENERIC_POSTED && rpc_gen_post() == CR_OK) {
    }
    if (rpc.run_posted < RPC_RUN_POSTED || rpc.gen_posted < RPC_GENERIC_POSTED) {
        uint64_t now = cr_now_ns();
        if (now - rpc.post_err_ns > 1000 * RPC_NS_PER_MS || rpc.post_err_ns == 0) {
            rpc.post_err_ns = now;
            cr_log(CR_LOG_CRIT, ENOMEM,
                   "only %u Run and %u other requests posted (was %u); "
                   "retrying",
                   rpc.run_posted, rpc.gen_posted, before);
        }
    }
}

static void rpc_dispatch(const grpc_event *ev)
{
    rpc_tag_t *tag = ev->tag;
    bool ok = ev->success != 0;

    switch (tag->type) {
    case TAG_RUN_NEW:
        rpc_run_on_new(tag->obj, ok);
        rpc_top_up();
        break;
    case TAG_RUN_CLOSE:
        rpc_run_on_close(tag->obj);
        break;
    case TAG_RUN_SEND:
        if (!ok)
            cr_log_debug("Run: reply not sent: the call ended first");
        rpc_call_unref(tag->obj);
        break;
    case TAG_GEN_NEW:
        rpc_gen_on_new(tag->obj, ok);
        rpc_top_up();
        break;
    case TAG_GEN_DONE:
        rpc_gen_free(tag->obj);
        break;
    case TAG_SHUTDOWN:
        rpc.shutdown_seen = true;
        break;
    default:
        cr_log(CR_LOG_ALERT, 0, "unknown completion-queue tag type %d", (int)tag->type);
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

static void rpc_check_pid(void)
{
    /* Ruby's guard: gRPC state is only valid in the process that initialised it. */
    if (getpid() != rpc.pid) {
        cr_log(CR_LOG_EMERG, 0, "gRPC used in pid %d but initialised in pid %d",
               (int)getpid(), (int)rpc.pid);
        abort();
    }
}

int cr_rpc_init(const cr_acceptor_ctx_t *ctx)
{
    grpc_arg args[2];
    grpc_channel_args cargs;
    uint64_t recv_max;

    rpc.ctx = ctx;
    rpc.conf = ctx->conf;
    rpc.region = ctx->region;
    rpc.slot = ctx->slot;
    rpc.pid = getpid();
    rpc.tag_shutdown = (rpc_tag_t){TAG_SHUTDOWN, NULL};

    gpr_set_log_function(rpc_gpr_log);
    grpc_init();
    /* GRPC_VERBOSITY in the environment wins (debugging); otherwise only
     * errors, or everything when crunchd itself logs at debug. */
    if (getenv("GRPC_VERBOSITY") == NULL)
        gpr_set_log_verbosity(cr_log_level >= CR_LOG_DEBUG ? GPR_LOG_SEVERITY_DEBUG
                                                           : GPR_LOG_SEVERITY_ERROR);

    rpc.cq = grpc_completion_queue_create_for_next(NULL);
    if (rpc.cq == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "grpc_completion_queue_create_for_next() failed; "
               "check the gRPC library (libgrpc29) and the error log above");
        return CR_ERROR;
    }

    /* A payload just over max_payload must still reach us, so that the client
     * gets our INVALID_ARGUMENT naming the limit rather than gRPC's own error. */
    recv_max = rpc.conf->max_payload + 4096;
    if (recv_max > INT_MAX)
        recv_max = INT_MAX;
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)recv_max;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = -1;
    cargs.num_args = cr_nelem(args);
    cargs.args = args;

    rpc.server = grpc_server_create(&cargs, NULL);
    if (rpc.server == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "grpc_server_create() failed; check the gRPC library "
               "(libgrpc29) and the error log above");
        return CR_ERROR;
    }
    grpc_server_register_completion_queue(rpc.server, rpc.cq, NULL);
    rpc.run_method = grpc_server_register_method(
        rpc.server, RPC_RUN_METHOD, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    if (rpc.run_method == NULL) {
        cr_log(CR_LOG_EMERG, 0,
               "grpc_server_register_method(\"%s\") failed; "
               "this gRPC library is not compatible with crunchd",
               RPC_RUN_METHOD);
        return CR_ERROR;
    }
    /* grpc_server_add_channel_from_fd takes insecure credentials only (1.51). */
    rpc.creds = grpc_insecure_server_credentials_create();
    if (rpc.creds == NULL) {
        cr_log(CR_LOG_EMERG, 0, "grpc_insecure_server_credentials_create() failed");
        return CR_ERROR;
    }
    /* No ports: the listening sockets are the master's (DESIGN 2). The server
     * must be started before connections are added: start creates the pollsets
     * their endpoints join. */
    grpc_server_start(rpc.server);

    rpc_top_up();
    if (rpc.run_posted == 0 || rpc.gen_posted == 0) {
        cr_log(CR_LOG_EMERG, 0, "cannot post any gRPC request; out of memory?");
        return CR_ERROR;
    }

    int err = pthread_create(&rpc.results_tid, NULL, rpc_results_main, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_create() of the result thread failed");
        return CR_ERROR;
    }
    rpc.results_started = true;
    return CR_OK;
}

void cr_rpc_add_connection(int fd)
{
    rpc_check_pid();
    grpc_server_add_channel_from_fd(rpc.server, fd, rpc.creds);
}

void cr_rpc_request_stop(cr_rpc_stop_t how)
{
    int cur = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);
    while ((int)how > cur &&
           !__atomic_compare_exchange_n(&rpc.stop, &cur, (int)how, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

cr_rpc_stop_t cr_rpc_serve(void)
{
    int how;

    rpc_check_pid();
    while ((how = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE)) == CR_RPC_RUNNING)
        rpc_poll(RPC_TICK_MS);
    return (cr_rpc_stop_t)how;
}

int cr_rpc_shutdown(void)
{
    uint64_t start = cr_now_ns(), cancel_ns = 0;
    bool cancelled = false;
    int how = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);

    rpc_check_pid();
    /* Posted requests fail now (TAG_*_NEW with ok=0), GOAWAY goes out, and the
     * tag comes once every connection has closed. */
    rpc.shutting_down = true;
    grpc_server_shutdown_and_notify(rpc.server, rpc.cq, &rpc.tag_shutdown);

    for (;;) {
        uint64_t now = cr_now_ns();
        how = __atomic_load_n(&rpc.stop, __ATOMIC_ACQUIRE);
        int live = __atomic_load_n(&rpc.live, __ATOMIC_ACQUIRE);

        if (rpc.shutdown_seen && live == 0)
            break;
        if (!cancelled &&
            (how == CR_RPC_STOP_FAST || now - start >= RPC_DRAIN_MS * RPC_NS_PER_MS)) {
            if (how != CR_RPC_STOP_FAST)
                cr_log(CR_LOG_WARN, 0,
                       "%d calls still open after %d ms of graceful stop; "
                       "cancelling them",
                       live, RPC_DRAIN_MS);
            /* Clients see UNAVAILABLE; RECV_CLOSE reports cancelled on each
             * call, which cancels its task in the queue. */
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

    /* Every call has ended, so the result thread has nothing left to send:
     * stop it before the queue shuts down (a batch started after that aborts). */
    __atomic_store_n(&rpc.results_stop, 1, __ATOMIC_RELEASE);
    if (rpc.results_started) {
        rpc_results_kick();
        int err = pthread_join(rpc.results_tid, NULL);
        if (err != 0)
            cr_log(CR_LOG_ALERT, err, "pthread_join() of the result thread failed");
        rpc.results_started = false;
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
               (int)((rpc_tag_t *)ev.tag)->type);
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
    cr_log_debug("gRPC shut down in %" PRIu64 " ms",
                 (cr_now_ns() - start) / RPC_NS_PER_MS);
    return CR_OK;
}
