/* master.h: the master process: binds, allocates, forks, supervises. */
#ifndef CR_MASTER_H
#define CR_MASTER_H

#include "conf.h"

/* Run the master in the foreground on a validated configuration until a stop
 * signal. Binds the listeners, creates the shared region, writes the pid file,
 * forks acceptors and workers and re-forks those that die. Never calls any
 * grpc_* or gpr_* function and never starts a thread.
 * Returns the process exit code: 0 after a stop signal, 1 when it could not
 * start (the reason is logged). */
int cr_master_run(cr_conf_t *conf);

#endif /* CR_MASTER_H */
