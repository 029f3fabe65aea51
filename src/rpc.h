/* rpc.h: the gRPC server of an acceptor (rpc.c), the one wall around gRPC core. */
#ifndef CR_RPC_H
#define CR_RPC_H

#include "acceptor.h"

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

/* How the acceptor was asked to stop. A fast stop overrides a graceful one. */
typedef enum {
    CR_RPC_RUNNING = 0,
    CR_RPC_STOP_GRACEFUL, /* SIGQUIT: drain (DESIGN 5 step 4), then stop */
    CR_RPC_STOP_FAST,     /* SIGTERM, SIGINT: cancel everything now */
} cr_rpc_stop_t;

/* Route gRPC's log into cr_log, grpc_init(), create the server and its
 * completion queue with the channel settings of the configuration, register
 * the methods (ours and the service modules'), bind the TLS listeners, start
 * it, post the requests and start the result and updates threads; mark the
 * control-page row idle. Call once, in the acceptor child, with every signal
 * blocked (gRPC's threads inherit the mask). Returns CR_OK, or CR_ERROR with
 * an [emerg] line logged: the caller exits with status 2. */
int cr_rpc_init(const cr_acceptor_ctx_t *ctx);

/* Hand an accepted, non-blocking, close-on-exec connection to gRPC, which owns
 * it from now on (also on error); it is counted until gRPC closes it.
 * Thread-safe; only between cr_rpc_init and cr_rpc_shutdown. */
void cr_rpc_add_connection(int fd);

/* Connections handed over and still open, also published in the region's
 * acceptor slot (`conns`) for the siblings' balancing. gRPC closes them
 * itself, so they are found closed by checking that each fd still names the
 * same socket: with `rescan` that check runs (at most every 250 ms);
 * without, the last count (plus connections added since) is returned.
 * Thread-safe. */
unsigned cr_rpc_connections(bool rescan);

/* The peer of a call as the access log writes it ("ipv4:127.0.0.1:5532",
 * "ipv6:[::1]:5532", "unix:/path"), malloc'ed (the caller free()s it), or
 * NULL. Use it instead of grpc_call_get_peer(), which names a connection the
 * acceptor handed over only "fd:12". Thread-safe, while the call lives. */
char *cr_rpc_peer(grpc_call *call);

/* Ask cr_rpc_serve to drain or return. Only an atomic store: callable from any
 * thread (the signal thread). */
void cr_rpc_request_stop(cr_rpc_stop_t how);

/* Serve calls on the calling thread (the gRPC thread). A fast stop returns at
 * once. A graceful one first drains: the caller has stopped accepting; every
 * service hears drain (health: NOT_SERVING); calls on the open connections are
 * served on; max_connection_age_ms sends each connection a graceful GOAWAY;
 * the streams we own end with UNAVAILABLE "server reloading, reconnect" once
 * their submitted tasks are answered. It returns once every connection has
 * closed, or shutdown_timeout_ms after the drain began. The caller then stops
 * handing connections over and calls cr_rpc_shutdown. Returns the stop mode. */
cr_rpc_stop_t cr_rpc_serve(void);

/* Shut the server down: grpc_server_shutdown_and_notify, every service's stop;
 * then cancel what is still open, at once for a fast stop, after 1 s
 * otherwise (a drained server has nothing open by then); a fast request
 * arriving meanwhile cuts that short. Stops the result and updates threads,
 * destroys the server and the queue, grpc_shutdown(). Returns CR_OK, or
 * CR_ERROR when gRPC did not finish within its bounds (logged): the caller
 * then exits without further cleanup. */
int cr_rpc_shutdown(void);

/* --- service modules (rpc_health.c, rpc_reflection.c, rpc_stats.c) ------------
 * A service plugs into the acceptor's one server and completion queue. Its
 * completion-queue tags start with a cr_rpc_cb_t: rpc.c's dispatcher calls
 * cb->fn(cb, ok) on the gRPC thread for any tag whose type is
 * CR_RPC_TAG_CALLBACK. A service must never start a batch once cr_rpc_closed()
 * is true (core aborts on a batch after the queue shut down). The call-context
 * plumbing the modules share (requests, references, batches) is rpc_svc.h. */

#define CR_RPC_TAG_CALLBACK 100

typedef struct cr_rpc_cb_s cr_rpc_cb_t;
struct cr_rpc_cb_s {
    int type; /* CR_RPC_TAG_CALLBACK; same layout as rpc.c's own tags */
    void (*fn)(cr_rpc_cb_t *cb, bool ok);
};

typedef struct {
    const char *name;
    /* Before grpc_server_start: register methods. CR_OK or CR_ERROR (logged). */
    int (*setup)(const cr_acceptor_ctx_t *ctx, grpc_server *server,
                 grpc_completion_queue *cq);
    /* After grpc_server_start: post requests. */
    int (*start)(void);
    /* The acceptor starts draining (reload, QUIT): e.g. health NOT_SERVING. */
    void (*drain)(void);
    /* Shutdown begins: stop posting requests, finish own long streams. */
    void (*stop)(void);
    /* Calls of this service still open: shutdown waits for 0. */
    int (*live)(void);
} cr_rpc_service_t;

extern const cr_rpc_service_t cr_rpc_health, cr_rpc_reflection, cr_rpc_stats;

/* A protobuf-c message as a byte buffer (one allocation, one pack). */
grpc_byte_buffer *cr_rpc_pack(const ProtobufCMessage *m);

/* Unpack a received message (joined first if it came in several slices).
 * NULL if malformed. The caller still owns bb. */
ProtobufCMessage *cr_rpc_unpack(const ProtobufCMessageDescriptor *desc,
                                grpc_byte_buffer *bb);

/* True once no batch may be started any more. */
bool cr_rpc_closed(void);

/* True while the acceptor drains (health reports NOT_SERVING). */
bool cr_rpc_draining(void);

#endif /* CR_RPC_H */
