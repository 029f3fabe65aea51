/* worker.c: the CPU worker process: takes one task at a time from the shared
 * queue, runs its handler, writes the result back. Never touches gRPC. */
#include "cr_core.h"
#include "ctl.h"
#include "handlers.h"
#include "log.h"
#include "module.h"
#include "worker.h"

#include <signal.h>

static volatile sig_atomic_t cr_worker_quit, cr_worker_reopen;

/* TERM means exit now: a C handler cannot be interrupted cooperatively, and the
 * master fails the task in hand when it reaps us (cr_region_reap). */
static void cr_worker_on_term(int sig)
{
    (void)sig;
    _exit(0);
}

static void cr_worker_on_signal(int sig)
{
    if (sig == SIGQUIT)
        cr_worker_quit = 1;
    else if (sig == SIGUSR1)
        cr_worker_reopen = 1;
}

static void cr_worker_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = cr_worker_on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* No SA_RESTART: a signal must end the futex wait so the loop sees the flag. */
    sa.sa_handler = cr_worker_on_signal;
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGTTIN, &sa, NULL);
    sigaction(SIGTTOU, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigprocmask(SIG_SETMASK, &set, NULL);
}

/* Run task d: check its deadline and handler, run it, hand back the result.
 * If want_next, the next queued task is taken in the same step: returns true
 * with *next set. */
static bool cr_worker_run(const cr_worker_ctx_t *ctx, cr_buf_t *out, uint32_t d,
                          bool want_next, uint32_t *next)
{
    cr_region_t *r = ctx->region;
    cr_task_sh_t *t = cr_task(r, d);
    const char *hname = cr_handler_name(t->handler);

    uint64_t queued_us = (t->start_ns - t->enqueue_ns) / 1000u;
    uint32_t handler = t->handler;

    if (t->deadline_ns && t->start_ns >= t->deadline_ns) {
        __atomic_or_fetch(&t->flags, CR_TASK_EXPIRED, __ATOMIC_RELEASE);
        cr_log_debug("task %" PRIu64 " (handler %s) expired after %" PRIu64
                     " ms in the queue; not run", t->id, hname, queued_us / 1000u);
        cr_ctl_task_end(ctx->row, handler, CR_STATUS_DEADLINE_EXCEEDED, queued_us, 0);
        return cr_task_finish_next(r, (unsigned)ctx->row, d, CR_STATUS_DEADLINE_EXCEEDED,
                                   NULL, 0, want_next ? next : NULL) == CR_OK;
    }
    cr_ctl_task_start(ctx->row, t->id, handler);
    cr_buf_reset(out);
    int code;
    if (t->handler < cr_nhandlers) {
        code = cr_handlers[t->handler].run(cr_task_payload(r, d), t->payload_len, out);
    } else if (!cr_module_run(t->handler, cr_task_payload(r, d), t->payload_len, out,
                              &code)) {
        /* The name is in the shared table (a module of an earlier
         * configuration had it) but no module of ours serves it. */
        cr_buf_printf(out, "handler %s is not loaded by this configuration", hname);
        code = CR_STATUS_NOT_FOUND;
    }
    uint64_t run_us = (cr_now_ns() - t->start_ns) / 1000u;
    /* Figures first: a client that has its result sees them in Stats. */
    cr_ctl_task_end(ctx->row, handler, code, queued_us, run_us);
    bool took = cr_task_finish_next(r, (unsigned)ctx->row, d, code, out->data, out->len,
                                    want_next ? next : NULL) == CR_OK;

    /* A huge output leaves a huge buffer: give it back so an idle worker stays small. */
    if (out->cap > (1u << 20))
        cr_buf_free(out);
    return took;
}

void cr_worker_main(const cr_worker_ctx_t *ctx)
{
    cr_region_t *r = ctx->region;
    cr_buf_t out = {.max = ctx->conf->max_payload};

    uint64_t done = 0, max = ctx->conf->worker_max_tasks;

    cr_role = CR_ROLE_WORKER;
    r->feed = ctx->feed;
    cr_worker_attach(r, (unsigned)ctx->row, ctx->slot);
    cr_shm_set_spin(ctx->conf->queue_spin_us);
    cr_worker_signals();
    /* Modules before the first task; a failure is a start-up error (exit 2:
     * not respawned). A slow init delays only this worker. */
    if (cr_module_worker_load(ctx->conf) != CR_OK) {
        cr_module_worker_fini();
        _exit(2);
    }
    __atomic_store_n(&cr_ctl->procs[ctx->row].state, CR_PROC_IDLE, __ATOMIC_RELEASE);
    cr_log(CR_LOG_INFO, 0, "worker %u of generation %u started", ctx->slot, ctx->generation);

    uint32_t d;
    bool have = false; /* d was taken with the previous result (one lock, no wait) */
    while (have || !cr_worker_quit) {
        if (cr_worker_reopen) {
            cr_worker_reopen = 0;
            cr_log_reopen();
        }
        /* log_level follows reloads through the control page */
        cr_log_level = __atomic_load_n(&cr_ctl->log_level, __ATOMIC_RELAXED);
        if (!have && cr_task_take(r, (unsigned)ctx->row, &d, 1000) != CR_OK)
            continue;
        /* Take the next task with this result unless this is the last one:
         * recycling (worker_max_tasks) or SIGQUIT. A task in hand is always
         * run before the loop looks at the quit flag. */
        bool last = max && done + 1 >= max;
        have = cr_worker_run(ctx, &out, d, !last && !cr_worker_quit, &d);
        if (max && ++done >= max) {
            /* Recycling: exit between tasks; the master forks a fresh one. */
            cr_log(CR_LOG_INFO, 0, "worker %u of generation %u exiting after %" PRIu64
                   " tasks (worker_max_tasks)", ctx->slot, ctx->generation, done);
            cr_buf_free(&out);
            cr_module_worker_fini();
            _exit(0);
        }
    }
    cr_log(CR_LOG_INFO, 0, "worker %u of generation %u exiting (SIGQUIT)", ctx->slot,
           ctx->generation);
    cr_buf_free(&out);
    cr_module_worker_fini();
    _exit(0);
}
