/* rpc_svc.c: call contexts, requests and batches shared by the service
 * modules (rpc_svc.h). */
#include "rpc_svc.h"

#include "log.h"

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

void *cr_rpc_svc_alloc(cr_rpc_svc_t *svc, size_t size, const char *what)
{
    cr_rpc_svc_call_t *c;

    cr_assert(size >= sizeof(*c));
    c = calloc(1, size);
    if (c == NULL)
        return NULL;
    c->svc = svc;
    c->what = what;
    c->refs = 1; /* the request's tag */
    grpc_metadata_array_init(&c->md);
    __atomic_add_fetch(&svc->live, 1, __ATOMIC_RELAXED);
    return c;
}

static void svc_free(cr_rpc_svc_call_t *c)
{
    cr_rpc_svc_t *svc = c->svc;

    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->bb)
        grpc_byte_buffer_destroy(c->bb);
    free(c); /* the module's context: c is its first member */
    __atomic_sub_fetch(&svc->live, 1, __ATOMIC_RELEASE);
}

void cr_rpc_svc_unref(cr_rpc_svc_call_t *c)
{
    cr_assert(c->refs > 0);
    if (--c->refs == 0)
        svc_free(c);
}

int cr_rpc_svc_request(cr_rpc_svc_call_t *c, void *method, bool with_payload,
                       cr_rpc_cb_t *tag, const char *name)
{
    cr_rpc_svc_t *svc = c->svc;

    grpc_call_error e = grpc_server_request_registered_call(
        svc->server, method, &c->call, &c->deadline, &c->md, with_payload ? &c->bb : NULL,
        svc->cq, svc->cq, tag);
    if (e != GRPC_CALL_OK) {
        cr_log(CR_LOG_CRIT, 0, "grpc_server_request_registered_call(%s) failed with %d",
               name, (int)e);
        svc_free(c);
        return CR_ERROR;
    }
    return CR_OK;
}

bool cr_rpc_svc_start(cr_rpc_svc_call_t *c, const grpc_op *ops, size_t n,
                      cr_rpc_cb_t *tag)
{
    if (cr_rpc_closed())
        return false; /* cannot happen while c is live; never start one then */
    c->refs++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e == GRPC_CALL_OK)
        return true;
    c->refs--;
    cr_log(CR_LOG_ALERT, 0, "grpc_call_start_batch() failed with %d (%s)", (int)e,
           c->what);
    grpc_call_cancel(c->call, NULL);
    return false;
}

bool cr_rpc_svc_recv_close(cr_rpc_svc_call_t *c, cr_rpc_cb_t *tag)
{
    grpc_op op;

    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    return cr_rpc_svc_start(c, &op, 1, tag);
}

void cr_rpc_svc_finish(cr_rpc_svc_call_t *c, grpc_byte_buffer *bb, grpc_status_code code,
                       const char *msg, bool with_close, cr_rpc_cb_t *tag)
{
    grpc_op ops[4];
    size_t n = 0;
    grpc_slice details = grpc_slice_from_static_string(msg ? msg : "");

    c->finishing = true;
    memset(ops, 0, sizeof(ops));
    if (!c->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->md_sent = true;
    }
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = msg ? &details : NULL;
    if (with_close) {
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    }
    cr_rpc_svc_start(c, ops, n, tag);
    /* SEND_MESSAGE moved the slices out; the shell is ours either way. */
    if (bb)
        grpc_byte_buffer_destroy(bb);
}

void *cr_rpc_svc_register(grpc_server *server, const char *path,
                          grpc_server_register_method_payload_handling payload)
{
    void *m = grpc_server_register_method(server, path, NULL, payload, 0);
    if (m == NULL)
        cr_log(CR_LOG_EMERG, 0, "grpc_server_register_method(\"%s\") failed", path);
    return m;
}

bool cr_rpc_svc_complain(cr_rpc_svc_t *svc)
{
    uint64_t now = cr_now_ns();

    if (svc->complain_ns != 0 && now - svc->complain_ns <= UINT64_C(1000000000))
        return false;
    svc->complain_ns = now;
    return true;
}

int cr_rpc_svc_started(bool ok, const char *name)
{
    if (ok)
        return CR_OK;
    cr_log(CR_LOG_EMERG, 0, "cannot post any %s request; out of memory?", name);
    return CR_ERROR;
}

int cr_rpc_svc_live(cr_rpc_svc_t *svc)
{
    return __atomic_load_n(&svc->live, __ATOMIC_ACQUIRE);
}
