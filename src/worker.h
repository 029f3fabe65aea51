/* worker.h: the CPU worker process: takes tasks, runs handlers; never touches gRPC. */
#ifndef CR_WORKER_H
#define CR_WORKER_H

#include "conf.h"
#include "shm.h"

typedef struct {
    const cr_conf_t *conf;
    cr_region_t *region;
    cr_region_t *feed;      /* the updates feed: results of Submit tasks go there */
    unsigned slot;          /* worker number (0..workers-1): what clients see */
    int row;                /* control-page row; also the worker's slot in the region */
    unsigned generation;
} cr_worker_ctx_t;

/* Run worker `ctx->slot` until SIGTERM (exit now) or SIGQUIT (finish the task
 * in hand, then exit). Called in the child right after fork with every signal
 * blocked; never returns. */
void cr_worker_main(const cr_worker_ctx_t *ctx) __attribute__((noreturn));

#endif /* CR_WORKER_H */
