/* module.h: handler modules (include/crunchd/module.h): the probe that checks
 * them for -t, start and reload, and their loading in workers. */
#ifndef CR_MODULE_H
#define CR_MODULE_H

#include "conf.h"
#include "handlers.h"

/* Master or tool: check every module of `c` in a short-lived child process
 * (the master never loads a module itself: constructors could start threads
 * or crash). Checks the file loads, exports crunchd_module with our ABI, and
 * that handler names are valid and unique across built-ins and modules.
 * Returns CR_OK and remembers the handler names for cr_module_publish, or
 * CR_ERROR with err holding one line naming the module and the fix. */
int cr_module_check(const cr_conf_t *c, char *err, size_t len);

/* Master: append the handler names found by the last successful check to the
 * control page's table (names already there keep their index: the table only
 * grows, so queued tasks stay valid across reloads). CR_ERROR if it is full. */
int cr_module_publish(char *err, size_t len);

/* Worker, after fork, before taking tasks: load every module of `c`, call
 * init and map table indices to functions. CR_ERROR (logged): the worker
 * must exit with status 2 (not respawned). */
int cr_module_worker_load(const cr_conf_t *c);

/* Worker: run handler h if a module of this configuration provides it.
 * Returns false when none does; else sets *code (a CR_STATUS_*). */
bool cr_module_run(uint32_t h, const uint8_t *in, size_t len, cr_buf_t *out, int *code);

/* Worker, exiting normally: call every module's fini. */
void cr_module_worker_fini(void);

#endif /* CR_MODULE_H */
