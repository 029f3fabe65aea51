/* rpc.h: the gRPC server of an acceptor (rpc.c), the one wall around gRPC core. */
#ifndef CR_RPC_H
#define CR_RPC_H

#include "acceptor.h"

/* How the acceptor was asked to stop. A fast stop overrides a graceful one. */
typedef enum {
    CR_RPC_RUNNING = 0,
    CR_RPC_STOP_GRACEFUL, /* SIGQUIT: refuse new calls, let the running ones end */
    CR_RPC_STOP_FAST,     /* SIGTERM, SIGINT: cancel everything now */
} cr_rpc_stop_t;

/* Route gRPC's log into cr_log, grpc_init(), create the server and its
 * completion queue, register the methods, start it, post the requests and
 * start the result thread. Call once, in the acceptor child, with every signal
 * blocked (gRPC's threads inherit the mask). Returns CR_OK, or CR_ERROR with an
 * [emerg] line logged: the caller exits with status 2. */
int cr_rpc_init(const cr_acceptor_ctx_t *ctx);

/* Hand an accepted, non-blocking, close-on-exec connection to gRPC, which owns
 * it from now on (also on error). Thread-safe; only between cr_rpc_init and
 * cr_rpc_shutdown. */
void cr_rpc_add_connection(int fd);

/* Ask cr_rpc_serve to return. Only an atomic store: callable from any thread. */
void cr_rpc_request_stop(cr_rpc_stop_t how);

/* Serve calls on the calling thread (the gRPC thread) until a stop is
 * requested; returns the stop mode. The caller then stops handing connections
 * over (cr_rpc_add_connection) and calls cr_rpc_shutdown. */
cr_rpc_stop_t cr_rpc_serve(void);

/* Shut the server down: fast (cancel every call) or graceful (let running calls
 * end, at most ~10 s, then cancel the rest), as requested; a fast request
 * arriving meanwhile cuts a graceful one short. Stops the result thread,
 * destroys the server and the queue, grpc_shutdown(). Returns CR_OK, or
 * CR_ERROR when gRPC did not finish within its bounds (logged): the caller
 * then exits without further cleanup. */
int cr_rpc_shutdown(void);

#endif /* CR_RPC_H */
