/* acceptor.h: the gRPC acceptor process (the only place gRPC is initialised). */
#ifndef CR_ACCEPTOR_H
#define CR_ACCEPTOR_H

#include "conf.h"
#include "shm.h"

/* Everything an acceptor inherits from the master at fork. */
typedef struct {
    const cr_conf_t *conf;
    cr_region_t *region;    /* this generation's queues */
    cr_region_t *feed;      /* the updates feed (Submit/Updates), shared by all generations */
    unsigned slot;          /* acceptor slot in the region */
    unsigned generation;
    int row;                /* this process's row in the control page (ctl.h) */
    const int *listen_fds;  /* listening sockets, bound by the master (one per
                             * conf->listen[i]; -1 for a TLS listener, which
                             * gRPC binds itself with SO_REUSEPORT) */
    unsigned nlisten;
} cr_acceptor_ctx_t;

/* Run acceptor `ctx->slot`: grpc_init (after fork, never before), serve until
 * SIGTERM/SIGINT (stop now) or SIGQUIT (drain, then stop), then exit(0).
 * Called in the child right after fork with every signal blocked; never returns.
 * Exit codes: 0 normal, 2 fatal init error (not respawned). */
void cr_acceptor_main(const cr_acceptor_ctx_t *ctx) __attribute__((noreturn));

#endif /* CR_ACCEPTOR_H */
