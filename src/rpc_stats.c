/* rpc_stats.c: crunch.v1.Crunch/Stats: the control page (ctl.h) and the shared
 * queues (shm.h) as a structured StatsReply (DESIGN 7).
 *
 * Everything runs on the gRPC thread (rpc.c's dispatcher calls our tags). The
 * shared figures are read without any lock: each one is exact when read, the
 * reply as a whole may be slightly skewed under load. Strings that another
 * process may rewrite (the reload message, handler names) are copied first, so
 * that protobuf-c's size pass and pack pass see the same bytes.
 *
 * A call context lives from its posted request to its one answer batch; the
 * batch carries RECV_CLOSE_ON_SERVER too, so its tag returns once the call is
 * over and the context is freed there (notes 3.2). */
#include "rpc_svc.h"

#include "ctl.h"
#include "log.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/status.h>

#include "crunch/v1/crunch.pb-c.h"

#define STATS_METHOD "/crunch.v1.Crunch/Stats"
#define STATS_POSTED 4 /* requests kept posted */

/* The context around one of its callback tags. */
#define stats_of(cb, member)                                                             \
    ((stats_call_t *)(void *)((char *)(cb)-offsetof(stats_call_t, member)))

typedef struct {
    cr_rpc_svc_call_t base; /* first: call, payload (base.bb), references */
    cr_rpc_cb_t cb_new;     /* the request matched a call (or failed at shutdown) */
    cr_rpc_cb_t cb_done;    /* the answer batch, RECV_CLOSE included, completed */
} stats_call_t;

_Static_assert(offsetof(stats_call_t, base) == 0, "cr_rpc_svc_unref frees through base");

static struct {
    const cr_acceptor_ctx_t *ctx;
    cr_rpc_svc_t rpc; /* server, queue, live contexts */
    void *method;
    unsigned posted; /* gRPC thread only */
    int stopping;    /* atomic: no more requests are posted */
} st;

static void stats_on_new(cr_rpc_cb_t *cb, bool ok);
static void stats_on_done(cr_rpc_cb_t *cb, bool ok);

/* --- call contexts ------------------------------------------------------------------ */

static int stats_post(void)
{
    stats_call_t *c = cr_rpc_svc_alloc(&st.rpc, sizeof(*c), "Stats");
    if (c == NULL)
        return CR_ERROR;
    c->cb_new = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, stats_on_new};
    c->cb_done = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, stats_on_done};
    if (cr_rpc_svc_request(&c->base, st.method, true, &c->cb_new, "Stats") != CR_OK)
        return CR_ERROR;
    st.posted++;
    return CR_OK;
}

/* Keep STATS_POSTED requests posted, so that a Stats call never waits in core
 * for a request (notes 2.2). Logs a shortfall at most once a second. */
static void stats_top_up(void)
{
    if (__atomic_load_n(&st.stopping, __ATOMIC_ACQUIRE))
        return;
    while (st.posted < STATS_POSTED && stats_post() == CR_OK) {
    }
    if (st.posted < STATS_POSTED && cr_rpc_svc_complain(&st.rpc))
        cr_log(CR_LOG_CRIT, ENOMEM, "only %u Stats requests posted; retrying", st.posted);
}

/* Answer the call in one batch: initial metadata, the reply (bb, consumed;
 * may be NULL), the status and RECV_CLOSE. Drops the request's reference:
 * frees c if the batch cannot start. */
static void stats_answer(stats_call_t *c, grpc_byte_buffer *bb, grpc_status_code code,
                         const char *msg)
{
    cr_rpc_svc_finish(&c->base, bb, code, msg, true, &c->cb_done);
    cr_rpc_svc_unref(&c->base);
}

/* --- the reply ---------------------------------------------------------------------- */

static const char *stats_role(unsigned role)
{
    switch (role) {
    case CR_ROLE_MASTER:
        return "master";
    case CR_ROLE_ACCEPTOR:
        return "acceptor";
    case CR_ROLE_WORKER:
        return "worker";
    default:
        return "other";
    }
}

static const char *stats_state(unsigned state)
{
    switch (state) {
    case CR_PROC_STARTING:
        return "starting";
    case CR_PROC_IDLE:
        return "idle";
    case CR_PROC_BUSY:
        return "busy";
    case CR_PROC_DRAINING:
        return "draining";
    default:
        return "unknown";
    }
}

/* A percentile as documented in crunch.proto: the upper end of the histogram
 * bucket holding quantile q, capped at the exact maximum. */
static uint64_t stats_quantile(const uint64_t *hist, double q, uint64_t max)
{
    uint64_t v = cr_hist_quantile(hist, q);
    unsigned b = cr_hist_bucket(v);
    uint64_t hi = b + 1 < CR_HIST_BUCKETS ? cr_hist_value(b + 1) - 1 : max;
    return hi < max ? hi : max;
}

/* Copy a string another process may rewrite: bounded, always terminated. */
static void stats_copy(char *dst, const char *src, size_t len)
{
    size_t i;
    for (i = 0; i + 1 < len; i++) {
        char ch = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
        if (ch == '\0')
            break;
        dst[i] = ch;
    }
    dst[i] = '\0';
}

/* Everything a reply points into, freed in one place after the pack. */
typedef struct {
    Crunch__V1__StatsReply r;
    Crunch__V1__StatsReply__Reload reload;
    Crunch__V1__StatsReply__Queue queue;
    char reload_msg[sizeof(((cr_ctl_sh_t *)0)->reload_msg)];
    Crunch__V1__StatsReply__Process *procs;
    Crunch__V1__StatsReply__Process **procp;
    Crunch__V1__StatsReply__HandlerStats *hs;
    Crunch__V1__StatsReply__HandlerStats **hsp;
    char (*names)[sizeof(((cr_ctl_sh_t *)0)->handler_names[0])];
} stats_reply_t;

static void stats_reply_free(stats_reply_t *s)
{
    free(s->procs);
    free(s->procp);
    free(s->hs);
    free(s->hsp);
    free(s->names);
    free(s);
}

/* The name of handler h for a process row (names copied in s->names). */
static const char *stats_handler_name(stats_reply_t *s, uint32_t h, unsigned nh)
{
    return h < nh ? s->names[h] : "?";
}

/* Fill a reply from the control page and the regions. NULL when out of memory. */
static stats_reply_t *stats_collect(void)
{
    const cr_acceptor_ctx_t *ctx = st.ctx;
    cr_ctl_sh_t *ctl = cr_ctl;
    stats_reply_t *s = calloc(1, sizeof(*s));
    cr_region_stats_t rs;
    unsigned nh = 0;

    if (s == NULL)
        return NULL;
    crunch__v1__stats_reply__init(&s->r);
    crunch__v1__stats_reply__reload__init(&s->reload);
    crunch__v1__stats_reply__queue__init(&s->queue);

    s->r.acceptor_slot = ctx->slot;
    s->r.acceptor_pid = (int32_t)getpid();
    s->r.generation = ctx->generation;

    /* The queue of the generation this acceptor serves. */
    cr_region_stats(ctx->region, &rs);
    s->queue.generation = rs.generation;
    s->queue.depth = rs.queued;
    s->queue.capacity = rs.tasks_total;
    s->queue.running = rs.running;
    s->queue.tasks_free = rs.tasks_free;
    s->queue.arena_size = rs.arena_size;
    s->queue.arena_free = rs.arena_free <= rs.arena_size ? rs.arena_free : rs.arena_size;
    s->queue.arena_used = rs.arena_size - s->queue.arena_free;
    s->queue.submitted = rs.submitted;
    s->queue.completed = rs.completed;
    s->r.queue = &s->queue;

    /* The updates feed: its queue holds the results waiting for a subscriber. */
    if (ctx->feed) {
        cr_region_stats(ctx->feed, &rs);
        s->r.updates_depth = rs.queued;
        s->r.updates_capacity = rs.tasks_total;
    } else {
        s->r.updates_capacity = ctx->conf->updates_capacity;
    }

    if (ctl == NULL)
        return s;

    uint32_t gen = __atomic_load_n(&ctl->generation, __ATOMIC_RELAXED);
    if (gen != 0)
        s->r.generation = gen;
    s->r.start_time_unix_us = ctl->start_wall_us;
    s->r.reloads_ok = __atomic_load_n(&ctl->reloads_ok, __ATOMIC_RELAXED);
    s->r.reloads_failed = __atomic_load_n(&ctl->reloads_failed, __ATOMIC_RELAXED);
    uint64_t reload_us = __atomic_load_n(&ctl->reload_wall_us, __ATOMIC_ACQUIRE);
    if (reload_us != 0) {
        s->reload.time_unix_us = reload_us;
        s->reload.ok = __atomic_load_n(&ctl->reload_ok, __ATOMIC_RELAXED) != 0;
        stats_copy(s->reload_msg, ctl->reload_msg, sizeof(s->reload_msg));
        s->reload.message = s->reload_msg;
        s->r.last_reload = &s->reload;
    }

    nh = __atomic_load_n(&ctl->nhandlers, __ATOMIC_RELAXED);
    if (nh > CR_MAX_HANDLERS)
        nh = CR_MAX_HANDLERS;
    s->names = calloc(nh ? nh : 1, sizeof(*s->names));
    s->hs = calloc(nh ? nh : 1, sizeof(*s->hs));
    s->hsp = calloc(nh ? nh : 1, sizeof(*s->hsp));
    s->procs = calloc(CR_MAX_PROCS, sizeof(*s->procs));
    s->procp = calloc(CR_MAX_PROCS, sizeof(*s->procp));
    if (!s->names || !s->hs || !s->hsp || !s->procs || !s->procp) {
        stats_reply_free(s);
        return NULL;
    }
    for (unsigned i = 0; i < nh; i++)
        stats_copy(s->names[i], ctl->handler_names[i], sizeof(s->names[i]));

    uint64_t now = cr_now_ns();
    size_t np = 0;
    for (unsigned i = 0; i < CR_MAX_PROCS; i++) {
        cr_proc_sh_t *p = &ctl->procs[i];
        unsigned state = __atomic_load_n(&p->state, __ATOMIC_ACQUIRE);
        if (state == CR_PROC_EMPTY)
            continue;
        Crunch__V1__StatsReply__Process *o = &s->procs[np];
        crunch__v1__stats_reply__process__init(o);
        o->role = (char *)stats_role(p->role);
        o->slot = p->slot;
        o->generation = p->generation;
        o->pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
        o->state = (char *)stats_state(state);
        o->tasks_done = __atomic_load_n(&p->tasks_done, __ATOMIC_RELAXED);
        o->start_time_unix_us = p->started_wall_us;
        if (p->role == CR_ROLE_ACCEPTOR) {
            o->connections = __atomic_load_n(&p->conns, __ATOMIC_RELAXED);
            o->waiting_for_room = __atomic_load_n(&p->waiting, __ATOMIC_RELAXED);
            o->refused_queue_full = __atomic_load_n(&p->refused_full, __ATOMIC_RELAXED);
        }
        uint64_t t0 = __atomic_load_n(&p->task_start_ns, __ATOMIC_ACQUIRE);
        if (t0 != 0 && p->role == CR_ROLE_WORKER) {
            o->current_task_id = p->task_id;
            o->current_handler = (char *)stats_handler_name(
                s, __atomic_load_n(&p->handler, __ATOMIC_RELAXED), nh);
            o->running_us = now > t0 ? (now - t0) / 1000 : 0;
        }
        s->procp[np++] = o;
    }
    s->r.n_processes = np;
    s->r.processes = s->procp;

    for (unsigned i = 0; i < nh; i++) {
        const cr_handler_stats_sh_t *h = &ctl->handlers[i];
        Crunch__V1__StatsReply__HandlerStats *o = &s->hs[i];
        crunch__v1__stats_reply__handler_stats__init(o);
        o->name = s->names[i];
        o->count = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
        o->errors = __atomic_load_n(&h->errors, __ATOMIC_RELAXED);
        o->queue_max_us = __atomic_load_n(&h->queue_max_us, __ATOMIC_RELAXED);
        o->run_max_us = __atomic_load_n(&h->run_max_us, __ATOMIC_RELAXED);
        o->queue_p50_us = stats_quantile(h->queue_hist, 0.50, o->queue_max_us);
        o->queue_p99_us = stats_quantile(h->queue_hist, 0.99, o->queue_max_us);
        o->run_p50_us = stats_quantile(h->run_hist, 0.50, o->run_max_us);
        o->run_p99_us = stats_quantile(h->run_hist, 0.99, o->run_max_us);
        s->hsp[i] = o;
    }
    s->r.n_handlers = nh;
    s->r.handlers = s->hsp;
    return s;
}

/* --- the call ----------------------------------------------------------------------- */

/* Decode the request only to refuse garbage: StatsRequest has no fields yet. */
static bool stats_request_ok(grpc_byte_buffer *bb)
{
    ProtobufCMessage *req = cr_rpc_unpack(&crunch__v1__stats_request__descriptor, bb);
    if (req == NULL)
        return false;
    protobuf_c_message_free_unpacked(req, NULL);
    return true;
}

static void stats_on_new(cr_rpc_cb_t *cb, bool ok)
{
    stats_call_t *c = stats_of(cb, cb_new);
    grpc_byte_buffer *payload = c->base.bb;

    st.posted--;
    if (!ok) {
        /* The server is shutting down: the request failed, there is no call. */
        cr_rpc_svc_unref(&c->base);
        return;
    }
    stats_top_up();

    c->base.bb = NULL;
    if (payload == NULL) {
        stats_answer(c, NULL, GRPC_STATUS_INTERNAL,
                     "no StatsRequest message: the client closed the call without "
                     "sending one");
        return;
    }
    bool good = stats_request_ok(payload);
    grpc_byte_buffer_destroy(payload);
    if (!good) {
        stats_answer(c, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                     "malformed StatsRequest message; send a crunch.v1.StatsRequest");
        return;
    }

    stats_reply_t *s = stats_collect();
    if (s == NULL) {
        cr_log(CR_LOG_CRIT, ENOMEM, "Stats: cannot allocate the reply");
        stats_answer(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED,
                     "the acceptor is out of memory; retry later");
        return;
    }
    grpc_byte_buffer *bb = cr_rpc_pack(&s->r.base);
    stats_reply_free(s);
    stats_answer(c, bb, GRPC_STATUS_OK, NULL);
}

static void stats_on_done(cr_rpc_cb_t *cb, bool ok)
{
    (void)ok; /* a batch with RECV_CLOSE always reports success */
    cr_rpc_svc_unref(&stats_of(cb, cb_done)->base);
}

/* --- the service hooks -------------------------------------------------------------- */

static int stats_setup(const cr_acceptor_ctx_t *ctx, grpc_server *server,
                       grpc_completion_queue *cq)
{
    st.ctx = ctx;
    st.rpc.server = server;
    st.rpc.cq = cq;
    st.method = cr_rpc_svc_register(server, STATS_METHOD,
                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER);
    return st.method ? CR_OK : CR_ERROR;
}

static int stats_start(void)
{
    stats_top_up();
    return cr_rpc_svc_started(st.posted > 0, "Stats");
}

static void stats_drain(void)
{
    /* Stats keeps answering while the acceptor drains. */
}

static void stats_stop(void)
{
    /* Posted requests come back failed once the server shuts down; answers
     * in flight are one batch each and end by themselves. */
    __atomic_store_n(&st.stopping, 1, __ATOMIC_RELEASE);
}

static int stats_live(void)
{
    return cr_rpc_svc_live(&st.rpc);
}

const cr_rpc_service_t cr_rpc_stats = {
    .name = "stats",
    .setup = stats_setup,
    .start = stats_start,
    .drain = stats_drain,
    .stop = stats_stop,
    .live = stats_live,
};
