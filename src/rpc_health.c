/* rpc_health.c: grpc.health.v1.Health, Check and Watch (notes 9.1, 9.2).
 *
 * Services known: "" (the whole server) and "crunch.v1.Crunch". Both are
 * SERVING until the acceptor drains (the drain hook, or cr_rpc_draining()),
 * NOT_SERVING from then on. Check of another name fails with NOT_FOUND; Watch
 * of another name gets SERVICE_UNKNOWN and stays open, as the spec says.
 *
 * Watch sends the current status at once and again on every change. While
 * the acceptor drains it still serves its open connections, so a Watch stays
 * open then, saying NOT_SERVING: a client-side health checker moves its calls
 * elsewhere without any error. The stream has no natural end, and an open one
 * would hold the server's shutdown until cancel_all_calls (notes 6), so the
 * stop hook ends every Watch: after NOT_SERVING has gone out, the stream
 * finishes with UNAVAILABLE.
 * Why UNAVAILABLE and not OK: the watch did not complete, this acceptor went
 * away. UNAVAILABLE is gRPC's "transient, retry (elsewhere)" code, the one
 * clients already get for calls cut by a shutdown (cancel_all_calls), and the
 * one a generic client loop treats as "reconnect", where OK would read as "the
 * server ended the watch on purpose" and stop a naive watcher for good.
 * gRPC's client-side health checking retries on any status but UNIMPLEMENTED,
 * so it is indifferent.
 *
 * Threads: rpc.c calls our tags on the gRPC thread; the hooks may come from
 * another one, so one module mutex guards every Watch and every batch started
 * on it. A Watch context is reference counted (one per started tag, the
 * RECV_CLOSE tag included) and freed by whoever drops the last one. */
#include "rpc_svc.h"

#include "log.h"

#include <pthread.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/status.h>

#include "grpc/health/v1/health.pb-c.h"

#define HEALTH_CHECK_METHOD "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH_METHOD "/grpc.health.v1.Health/Watch"
#define HEALTH_CHECK_POSTED 4
#define HEALTH_WATCH_POSTED 2

#define H_SERVING     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define H_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define H_SERVICE_UNKNOWN                                                                \
    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

typedef enum { HEALTH_CHECK = 0, HEALTH_WATCH } health_kind_t;

typedef struct health_call_s health_call_t;

/* One Check or Watch call, from its posted request to its last tag. */
struct health_call_s {
    /* First: the call, its payload (base.bb); guarded by hl.mu: the
     * references (one per tag started and not yet back), md_sent (initial
     * metadata went with the first message), finishing (the status batch
     * was started). */
    cr_rpc_svc_call_t base;
    cr_rpc_cb_t cb_new;   /* the request matched a call (or failed at shutdown) */
    cr_rpc_cb_t cb_close; /* Watch: RECV_CLOSE_ON_SERVER, the call is over */
    cr_rpc_cb_t cb_send;  /* Watch: a status message went out (or not) */
    cr_rpc_cb_t cb_final; /* the status batch (Check: with RECV_CLOSE) */
    health_kind_t kind;

    /* Guarded by hl.mu. */
    bool known;                 /* a service we report on */
    int sent;                   /* last ServingStatus sent; -1 none */
    bool writing;               /* a SEND_MESSAGE is in flight */
    bool gone;                  /* RECV_CLOSE came back: nothing more may be sent */
    health_call_t *prev, *next; /* open Watch list */
};

_Static_assert(offsetof(health_call_t, base) == 0, "cr_rpc_svc_unref frees through base");

#define health_of(cb, member)                                                            \
    ((health_call_t *)(void *)((char *)(cb)-offsetof(health_call_t, member)))

static struct {
    pthread_mutex_t mu;
    cr_rpc_svc_t rpc; /* server, queue, live contexts */
    void *method[2];  /* Check, Watch */
    unsigned posted[2];
    bool draining;          /* NOT_SERVING from now on */
    bool stopping;          /* no more requests; Watch streams are being ended */
    health_call_t *watches; /* open Watch calls (after accept, before close) */
} hl = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void health_on_new(cr_rpc_cb_t *cb, bool ok);
static void health_on_close(cr_rpc_cb_t *cb, bool ok);
static void health_on_send(cr_rpc_cb_t *cb, bool ok);
static void health_on_final(cr_rpc_cb_t *cb, bool ok);

/* --- contexts ----------------------------------------------------------------------- */

static const char *const health_what[2] = {"health Check", "health Watch"};

/* Drop one reference (hl.mu held). */
static void health_unref(health_call_t *c)
{
    cr_rpc_svc_unref(&c->base);
}

/* Start a batch whose tag holds a reference (hl.mu held): see
 * cr_rpc_svc_start for the rule on refused batches. */
static bool health_start(health_call_t *c, const grpc_op *ops, size_t n, cr_rpc_cb_t *tag)
{
    return cr_rpc_svc_start(&c->base, ops, n, tag);
}

static int health_post(health_kind_t kind)
{
    health_call_t *c = cr_rpc_svc_alloc(&hl.rpc, sizeof(*c), health_what[kind]);
    if (c == NULL)
        return CR_ERROR;
    c->kind = kind;
    c->cb_new = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, health_on_new};
    c->cb_close = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, health_on_close};
    c->cb_send = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, health_on_send};
    c->cb_final = (cr_rpc_cb_t){CR_RPC_TAG_CALLBACK, health_on_final};
    c->sent = -1;
    if (cr_rpc_svc_request(&c->base, hl.method[kind], true, &c->cb_new,
                           health_what[kind]) != CR_OK)
        return CR_ERROR;
    hl.posted[kind]++;
    return CR_OK;
}

/* Keep requests posted for both methods (hl.mu held). */
static void health_top_up(void)
{
    static const unsigned want[2] = {HEALTH_CHECK_POSTED, HEALTH_WATCH_POSTED};

    if (hl.stopping)
        return;
    for (int k = HEALTH_CHECK; k <= HEALTH_WATCH; k++)
        while (hl.posted[k] < want[k] && health_post((health_kind_t)k) == CR_OK) {
        }
    if ((hl.posted[HEALTH_CHECK] < want[HEALTH_CHECK] ||
         hl.posted[HEALTH_WATCH] < want[HEALTH_WATCH]) &&
        cr_rpc_svc_complain(&hl.rpc))
        cr_log(CR_LOG_CRIT, ENOMEM,
               "only %u health Check and %u Watch requests posted; retrying",
               hl.posted[HEALTH_CHECK], hl.posted[HEALTH_WATCH]);
}

/* --- status ------------------------------------------------------------------------- */

static bool health_known(const char *svc)
{
    return svc == NULL || svc[0] == '\0' || strcmp(svc, "crunch.v1.Crunch") == 0;
}

/* The status of a known service now (hl.mu held). */
static int health_status(void)
{
    return hl.draining || hl.stopping || cr_rpc_draining() ? H_NOT_SERVING : H_SERVING;
}

static grpc_byte_buffer *health_message(int status)
{
    Grpc__Health__V1__HealthCheckResponse res =
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    res.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    return cr_rpc_pack(&res.base);
}

/* Decode a HealthCheckRequest; NULL if malformed. */
static Grpc__Health__V1__HealthCheckRequest *health_decode(grpc_byte_buffer *bb)
{
    return (Grpc__Health__V1__HealthCheckRequest *)cr_rpc_unpack(
        &grpc__health__v1__health_check_request__descriptor, bb);
}

/* --- Check, and the final batch of any call ----------------------------------------- */

/* Send the final status (with a message when bb is set, consumed), plus
 * RECV_CLOSE for a Check or a Watch that was never accepted (hl.mu held). */
static void health_finish(health_call_t *c, grpc_byte_buffer *bb, grpc_status_code code,
                          const char *msg, bool with_close)
{
    cr_rpc_svc_finish(&c->base, bb, code, msg, with_close, &c->cb_final);
}

static void health_check(health_call_t *c,
                         const Grpc__Health__V1__HealthCheckRequest *req)
{
    if (!health_known(req->service)) {
        health_finish(c, NULL, GRPC_STATUS_NOT_FOUND,
                      "unknown service; crunchd reports on \"\" and \"crunch.v1.Crunch\"",
                      true);
        return;
    }
    health_finish(c, health_message(health_status()), GRPC_STATUS_OK, NULL, true);
}

/* --- Watch
 * ------------------------------------------------------------------------------- */

static void health_list_add(health_call_t *c)
{
    c->prev = NULL;
    c->next = hl.watches;
    if (hl.watches)
        hl.watches->prev = c;
    hl.watches = c;
}

static void health_list_del(health_call_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        hl.watches = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Bring one Watch up to date (hl.mu held): send the status if it changed
 * since the last message; once stopping and nothing is left to send, end it.
 * One message in flight at most; its completion calls this again. */
static void health_watch_push(health_call_t *c)
{
    grpc_op ops[2];
    size_t n = 0;

    if (c->gone || c->base.finishing || c->writing)
        return;
    int want = c->known ? health_status() : H_SERVICE_UNKNOWN;
    if (c->sent == want) {
        if (hl.stopping)
            health_finish(c, NULL, GRPC_STATUS_UNAVAILABLE,
                          "crunchd acceptor shutting down; watch again to reach "
                          "a running one",
                          false);
        return;
    }

    memset(ops, 0, sizeof(ops));
    if (!c->base.md_sent)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_byte_buffer *bb = health_message(want);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    if (health_start(c, ops, n, &c->cb_send)) {
        c->base.md_sent = true;
        c->writing = true;
        c->sent = want;
    }
    grpc_byte_buffer_destroy(bb);
}

static void health_watch(health_call_t *c,
                         const Grpc__Health__V1__HealthCheckRequest *req)
{
    c->known = health_known(req->service);
    /* RECV_CLOSE in its own batch: it reports the end of the call (client
     * gone, deadline, cancel_all_calls) and keeps the send flags meaningful. */
    if (!cr_rpc_svc_recv_close(&c->base, &c->cb_close))
        return;
    health_list_add(c);
    health_watch_push(c);
}

/* --- tags
 * ---------------------------------------------------------------------------------- */

static void health_on_new(cr_rpc_cb_t *cb, bool ok)
{
    health_call_t *c = health_of(cb, cb_new);
    grpc_byte_buffer *payload;
    Grpc__Health__V1__HealthCheckRequest *req = NULL;

    pthread_mutex_lock(&hl.mu);
    hl.posted[c->kind]--;
    if (!ok) {
        /* The server is shutting down: the request failed, there is no call. */
        health_unref(c);
        pthread_mutex_unlock(&hl.mu);
        return;
    }
    health_top_up();

    payload = c->base.bb;
    c->base.bb = NULL;
    if (payload) {
        req = health_decode(payload);
        grpc_byte_buffer_destroy(payload);
    }
    if (payload == NULL)
        health_finish(c, NULL, GRPC_STATUS_INTERNAL,
                      "no HealthCheckRequest message: the client closed the call "
                      "without sending one",
                      true);
    else if (req == NULL)
        health_finish(c, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                      "malformed HealthCheckRequest message", true);
    else if (c->kind == HEALTH_CHECK)
        health_check(c, req);
    else
        health_watch(c, req);
    if (req)
        grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    health_unref(c); /* the cb_new reference */
    pthread_mutex_unlock(&hl.mu);
}

static void health_on_close(cr_rpc_cb_t *cb, bool ok)
{
    health_call_t *c = health_of(cb, cb_close);

    (void)ok; /* always true for RECV_CLOSE */
    pthread_mutex_lock(&hl.mu);
    c->gone = true;
    health_list_del(c);
    health_unref(c);
    pthread_mutex_unlock(&hl.mu);
}

static void health_on_send(cr_rpc_cb_t *cb, bool ok)
{
    health_call_t *c = health_of(cb, cb_send);

    pthread_mutex_lock(&hl.mu);
    c->writing = false;
    if (ok)
        health_watch_push(c); /* a change meanwhile, or the end when stopping */
    /* !ok: the call ended first; RECV_CLOSE reports it. */
    health_unref(c);
    pthread_mutex_unlock(&hl.mu);
}

static void health_on_final(cr_rpc_cb_t *cb, bool ok)
{
    health_call_t *c = health_of(cb, cb_final);

    (void)ok;
    pthread_mutex_lock(&hl.mu);
    health_unref(c);
    pthread_mutex_unlock(&hl.mu);
}

/* --- the service hooks
 * ------------------------------------------------------------------- */

static int health_setup(const cr_acceptor_ctx_t *ctx, grpc_server *server,
                        grpc_completion_queue *cq)
{
    static const char *const paths[2] = {HEALTH_CHECK_METHOD, HEALTH_WATCH_METHOD};

    (void)ctx;
    hl.rpc.server = server;
    hl.rpc.cq = cq;
    for (int k = HEALTH_CHECK; k <= HEALTH_WATCH; k++) {
        hl.method[k] = cr_rpc_svc_register(server, paths[k],
                                           GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER);
        if (hl.method[k] == NULL)
            return CR_ERROR;
    }
    return CR_OK;
}

static int health_start_hook(void)
{
    pthread_mutex_lock(&hl.mu);
    health_top_up();
    bool ok = hl.posted[HEALTH_CHECK] > 0 && hl.posted[HEALTH_WATCH] > 0;
    pthread_mutex_unlock(&hl.mu);
    return cr_rpc_svc_started(ok, "health");
}

/* Push the current status to every open Watch (hl.mu held). */
static void health_push_all(void)
{
    health_call_t *c, *next;

    /* A push never frees c (its RECV_CLOSE reference is held until the close
     * tag), but take next first all the same. */
    for (c = hl.watches; c; c = next) {
        next = c->next;
        health_watch_push(c);
    }
}

static void health_drain(void)
{
    pthread_mutex_lock(&hl.mu);
    if (!hl.draining) {
        hl.draining = true;
        cr_log_debug("health: NOT_SERVING (draining)");
        health_push_all();
    }
    pthread_mutex_unlock(&hl.mu);
}

static void health_stop(void)
{
    pthread_mutex_lock(&hl.mu);
    hl.draining = true;
    hl.stopping = true;
    health_push_all();
    pthread_mutex_unlock(&hl.mu);
}

static int health_live(void)
{
    return cr_rpc_svc_live(&hl.rpc);
}

const cr_rpc_service_t cr_rpc_health = {
    .name = "health",
    .setup = health_setup,
    .start = health_start_hook,
    .drain = health_drain,
    .stop = health_stop,
    .live = health_live,
};
