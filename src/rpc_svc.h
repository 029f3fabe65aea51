/* rpc_svc.h: the call-context plumbing the service modules (rpc_health.c,
 * rpc_reflection.c, rpc_stats.c) share: allocating a context, posting a
 * request for a registered method, reference counting, starting batches
 * under the poison-on-failure rule (notes 3.1), the final status batch and
 * the count of live contexts. Each module keeps its own protocol logic.
 *
 * Locking is the module's: none of these functions locks. A module whose
 * contexts are touched from more than one thread calls them under its own
 * mutex; the live count alone is atomic. */
#ifndef CR_RPC_SVC_H
#define CR_RPC_SVC_H

#include "rpc.h"

#include <grpc/status.h>

/* One service module: the server and queue it posts to, and its contexts. */
typedef struct {
    grpc_server *server;
    grpc_completion_queue *cq;
    int live;             /* atomic: contexts allocated (posted or serving) */
    uint64_t complain_ns; /* the last "only N requests posted" line */
} cr_rpc_svc_t;

/* What every call context starts with: the FIRST member of a module's own
 * context struct (cr_rpc_svc_unref frees the whole context through it). */
typedef struct {
    cr_rpc_svc_t *svc;
    const char *what; /* in log lines: "grpc_call_start_batch() failed ... (what)" */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    /* The received message: the request's payload (posted with one), or the
     * buffer of a RECV_MESSAGE; destroyed with the context if still set. */
    grpc_byte_buffer *bb;
    int cancelled;  /* RECV_CLOSE_ON_SERVER */
    int refs;       /* tags started and not yet back, the request's included */
    bool md_sent;   /* SEND_INITIAL_METADATA went out (or was started) */
    bool finishing; /* the status batch was started */
} cr_rpc_svc_call_t;

/* A zeroed context of size bytes (base first) for svc, with one reference
 * (the request's tag), md initialized and counted live; NULL when out of
 * memory. */
void *cr_rpc_svc_alloc(cr_rpc_svc_t *svc, size_t size, const char *what);

/* Drop one reference; the last one unrefs the call and frees the context. */
void cr_rpc_svc_unref(cr_rpc_svc_call_t *c);

/* Post a request for method, its payload read into c->bb when with_payload
 * (a GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER method); tag comes back on
 * svc->cq. On failure logs "grpc_server_request_registered_call(name) failed"
 * and frees c. Returns CR_OK or CR_ERROR. */
int cr_rpc_svc_request(cr_rpc_svc_call_t *c, void *method, bool with_payload,
                       cr_rpc_cb_t *tag, const char *name);

/* Start a batch whose tag holds a reference. Never once cr_rpc_closed().
 * A refused batch poisons the call in 1.51 (notes 3.1): it is logged and the
 * call cancelled, never retried; RECV_CLOSE then reports the end. Returns
 * true if started. */
bool cr_rpc_svc_start(cr_rpc_svc_call_t *c, const grpc_op *ops, size_t n,
                      cr_rpc_cb_t *tag);

/* RECV_CLOSE_ON_SERVER in a batch of its own (into c->cancelled): it reports
 * the end of the call and keeps the send batches' flags meaningful. */
bool cr_rpc_svc_recv_close(cr_rpc_svc_call_t *c, cr_rpc_cb_t *tag);

/* The final batch: initial metadata unless sent, the message bb (consumed;
 * may be NULL), the status (msg NULL: no details), and RECV_CLOSE when
 * with_close. Sets finishing and md_sent. */
void cr_rpc_svc_finish(cr_rpc_svc_call_t *c, grpc_byte_buffer *bb, grpc_status_code code,
                       const char *msg, bool with_close, cr_rpc_cb_t *tag);

/* Register a method (before grpc_server_start); NULL with an [emerg] line. */
void *cr_rpc_svc_register(grpc_server *server, const char *path,
                          grpc_server_register_method_payload_handling payload);

/* True when a shortfall of posted requests is due to be logged again (at
 * most once a second). */
bool cr_rpc_svc_complain(cr_rpc_svc_t *svc);

/* The start hook's verdict: CR_OK if any request is posted (ok), else
 * CR_ERROR with "cannot post any <name> request" logged. */
int cr_rpc_svc_started(bool ok, const char *name);

/* Contexts of svc still allocated (the live hook). */
int cr_rpc_svc_live(cr_rpc_svc_t *svc);

#endif /* CR_RPC_SVC_H */
