/* crunchd/module.h: the interface of a crunchd handler module (a shared object
 * that adds handlers to crunchd without touching its source).
 *
 * A module exports one symbol, `crunchd_module`, of type crunchd_module_t:
 *
 *     #include <crunchd/module.h>
 *
 *     static int upper(void *state, const unsigned char *in, size_t len,
 *                      crunchd_out_t *out)
 *     {
 *         for (size_t i = 0; i < len; i++) {
 *             unsigned char c = in[i] >= 'a' && in[i] <= 'z' ? in[i] - 32 : in[i];
 *             if (out->write(out, &c, 1) != 0)
 *                 return CRUNCHD_RESOURCE_EXHAUSTED;
 *         }
 *         return CRUNCHD_OK;
 *     }
 *
 *     static const crunchd_handler_t handlers[] = {
 *         {"upper", upper},
 *         {NULL, NULL},
 *     };
 *
 *     const crunchd_module_t crunchd_module = {
 *         .abi = CRUNCHD_MODULE_ABI,
 *         .name = "upper",
 *         .handlers = handlers,
 *     };
 *
 * Build it with `cc -shared -fPIC $(pkg-config --cflags crunchd-module)
 * -o upper.so upper.c` and list it in crunchd.conf:
 *
 *     modules = ( { path = "modules/upper.so"; config = "anything"; } );
 *
 * A module links against nothing of crunchd's: everything it may call is
 * reached through the function pointers below.
 *
 * The contract
 * - Process model. Modules are loaded (dlopen, RTLD_NOW | RTLD_LOCAL) only in
 *   worker processes, after fork, never in the master or the gRPC acceptors.
 *   At start, at `crunchd -t` and at every reload a short-lived probe process
 *   loads them too, only to check them (constructors run there as well; init
 *   does not). Each worker calls init once, then runs one task at a time,
 *   single-threaded, then calls fini when it exits normally (SIGQUIT after a
 *   reload or stop, or recycling after worker_max_tasks).
 * - Failure isolation. A crash (SIGSEGV, abort) in a handler kills only that
 *   worker: its task fails with ABORTED (or is retried, task_retries) and the
 *   master forks a new worker. A handler that runs past task_timeout_ms is
 *   killed the same way.
 * - init. `init(config, &state)` returns 0 on success, anything else on
 *   failure: the worker logs it and exits with status 2, which the master
 *   does not respawn (like nginx). `config` is the module's `config` string
 *   from crunchd.conf ("" when absent); it stays valid until fini. `state` is
 *   yours; it is passed to every handler and to fini. init and fini may be
 *   NULL.
 * - Handlers. `run(state, in, len, out)`: `in` holds `len` bytes of payload
 *   (owned by crunchd, valid during the call only, not NUL-terminated). Write
 *   the result into `out` and return CRUNCHD_OK, or return another
 *   CRUNCHD_* status (gRPC status numbers) with a message in `out` saying
 *   what was wrong and what is accepted; crunchd sends that message as the
 *   call's error details. `out` starts empty for every task.
 * - Output. out->write and out->writef return 0, or -1 when the output would
 *   exceed out->max (crunchd's max_payload) or memory ran out; the output is
 *   then left as it was. out->reset empties it (e.g. to replace a partial
 *   result by an error message).
 * - Names. Handler names are 1 to 63 bytes of [A-Za-z0-9_.-], unique across
 *   crunchd's built-in handlers (echo, prime, gcd, sleep) and every module
 *   of the configuration; the handler list ends with {NULL, NULL}.
 * - Reload. A rebuilt module takes effect on SIGHUP: new workers load the file
 *   anew. Replace the file with a new one (install, or cp then mv), never
 *   overwrite it in place: running workers have it mapped.
 * - ABI. `abi` must be CRUNCHD_MODULE_ABI of the header the module was built
 *   with; crunchd refuses a module built for another ABI.
 */
#ifndef CRUNCHD_MODULE_H
#define CRUNCHD_MODULE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRUNCHD_MODULE_ABI 1

/* Status codes: gRPC's numbers. */
#define CRUNCHD_OK 0
#define CRUNCHD_CANCELLED 1
#define CRUNCHD_UNKNOWN 2
#define CRUNCHD_INVALID_ARGUMENT 3
#define CRUNCHD_DEADLINE_EXCEEDED 4
#define CRUNCHD_NOT_FOUND 5
#define CRUNCHD_ALREADY_EXISTS 6
#define CRUNCHD_PERMISSION_DENIED 7
#define CRUNCHD_RESOURCE_EXHAUSTED 8
#define CRUNCHD_FAILED_PRECONDITION 9
#define CRUNCHD_ABORTED 10
#define CRUNCHD_OUT_OF_RANGE 11
#define CRUNCHD_UNIMPLEMENTED 12
#define CRUNCHD_INTERNAL 13
#define CRUNCHD_UNAVAILABLE 14
#define CRUNCHD_DATA_LOSS 15
#define CRUNCHD_UNAUTHENTICATED 16

#define CRUNCHD_NAME_MAX 63

/* The output of one task, owned by crunchd. */
typedef struct crunchd_out_s crunchd_out_t;
struct crunchd_out_s {
    /* Append n bytes. 0, or -1 (output unchanged) beyond max or out of memory. */
    int (*write)(crunchd_out_t *out, const void *p, size_t n);
    /* Append printf-style text. 0 or -1 as write. */
    int (*writef)(crunchd_out_t *out, const char *fmt, ...)
#ifdef __GNUC__
        __attribute__((format(printf, 2, 3)))
#endif
        ;
    /* Empty the output. */
    void (*reset)(crunchd_out_t *out);
    size_t max;   /* the most bytes the output may hold (max_payload) */
    void *priv;   /* crunchd's; do not touch */
};

typedef struct {
    const char *name;
    int (*run)(void *state, const unsigned char *in, size_t len, crunchd_out_t *out);
} crunchd_handler_t;

typedef struct {
    unsigned abi;                      /* CRUNCHD_MODULE_ABI: first, always */
    const char *name;                  /* for logs */
    const crunchd_handler_t *handlers; /* ends with {NULL, NULL} */
    int (*init)(const char *config, void **state); /* may be NULL */
    void (*fini)(void *state);                     /* may be NULL */
} crunchd_module_t;

/* What a module defines (the symbol crunchd looks up). */
extern const crunchd_module_t crunchd_module;

#ifdef __cplusplus
}
#endif

#endif /* CRUNCHD_MODULE_H */
