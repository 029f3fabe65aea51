/* ctl.c: the control page shared by every process of every generation (ctl.h). */
#include "cr_core.h"
#include "ctl.h"
#include "handlers.h"
#include "log.h"

#include <sys/mman.h>

cr_ctl_sh_t *cr_ctl;

int cr_ctl_create(void)
{
    /* Anonymous shared memory: inherited by every child, gone with the last
     * process; nobody outside the process tree can map it. */
    void *p = mmap(NULL, sizeof(cr_ctl_sh_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        cr_log(CR_LOG_EMERG, errno, "mmap(%zu) of the control page failed",
               sizeof(cr_ctl_sh_t));
        return CR_ERROR;
    }
    cr_ctl = p;
    cr_ctl->magic = CR_CTL_MAGIC;
    cr_ctl->version = CR_CTL_VERSION;
    cr_ctl->master_pid = (int32_t)getpid();
    cr_ctl->start_wall_us = cr_wall_us();
    cr_ctl->log_level = cr_log_level;
    cr_ctl->nhandlers = cr_nhandlers < CR_MAX_HANDLERS ? cr_nhandlers : CR_MAX_HANDLERS;
    for (unsigned i = 0; i < cr_ctl->nhandlers; i++)
        snprintf(cr_ctl->handler_names[i], sizeof(cr_ctl->handler_names[i]), "%s",
                 cr_handlers[i].name);
    cr_handler_names = (const char(*)[CR_HANDLER_NAME_SIZE])cr_ctl->handler_names;
    cr_handler_count = &cr_ctl->nhandlers;
    return CR_OK;
}

int cr_ctl_row_alloc(cr_role_t role, unsigned slot, unsigned generation)
{
    for (int i = 0; i < CR_MAX_PROCS; i++) {
        cr_proc_sh_t *p = &cr_ctl->procs[i];
        if (p->state != CR_PROC_EMPTY)
            continue;
        memset(p, 0, sizeof(*p));
        p->role = (uint8_t)role;
        p->slot = (uint16_t)slot;
        p->generation = generation;
        p->started_wall_us = cr_wall_us();
        __atomic_store_n(&p->state, CR_PROC_STARTING, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

void cr_ctl_row_set_pid(int row, pid_t pid)
{
    __atomic_store_n(&cr_ctl->procs[row].pid, (int32_t)pid, __ATOMIC_RELEASE);
}

void cr_ctl_row_free(int row)
{
    cr_proc_sh_t *p = &cr_ctl->procs[row];
    p->pid = 0;
    p->task_start_ns = 0;
    __atomic_store_n(&p->state, CR_PROC_EMPTY, __ATOMIC_RELEASE);
}

void cr_ctl_reload(bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cr_ctl->reload_msg, sizeof(cr_ctl->reload_msg), fmt, ap);
    va_end(ap);
    cr_ctl->reload_wall_us = cr_wall_us();
    cr_ctl->reload_ok = ok;
    if (ok)
        cr_ctl->reloads_ok++;
    else
        cr_ctl->reloads_failed++;
}

void cr_ctl_task_start(int row, uint64_t id, uint32_t handler)
{
    cr_proc_sh_t *p = &cr_ctl->procs[row];
    p->task_id = id;
    p->handler = handler;
    __atomic_store_n(&p->task_start_ns, cr_now_ns(), __ATOMIC_RELEASE);
    p->state = CR_PROC_BUSY;
}

static void cr_atomic_max(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur &&
           !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

void cr_ctl_task_end(int row, uint32_t handler, int code, uint64_t queued_us, uint64_t run_us)
{
    cr_proc_sh_t *p = &cr_ctl->procs[row];
    __atomic_store_n(&p->task_start_ns, 0, __ATOMIC_RELEASE);
    p->tasks_done++;
    p->state = CR_PROC_IDLE;
    if (handler >= CR_MAX_HANDLERS)
        return;
    cr_handler_stats_sh_t *h = &cr_ctl->handlers[handler];
    if (code != 0)
        __atomic_add_fetch(&h->errors, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->queue_hist[cr_hist_bucket(queued_us)], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->run_hist[cr_hist_bucket(run_us)], 1, __ATOMIC_RELAXED);
    cr_atomic_max(&h->queue_max_us, queued_us);
    cr_atomic_max(&h->run_max_us, run_us);
    /* count last: a reader that sees it sees the figures of that task too */
    __atomic_add_fetch(&h->count, 1, __ATOMIC_RELEASE);
}

/* 0..15 exact; then for each power of two 2^k (k >= 4) four sub-buckets. */
unsigned cr_hist_bucket(uint64_t us)
{
    if (us < 16)
        return (unsigned)us;
    unsigned k = 63u - (unsigned)__builtin_clzll(us); /* 2^k <= us */
    unsigned sub = (unsigned)((us >> (k - 2)) & 3u);
    unsigned b = 16 + (k - 4) * 4 + sub;
    return b < CR_HIST_BUCKETS ? b : CR_HIST_BUCKETS - 1;
}

uint64_t cr_hist_value(unsigned b)
{
    if (b < 16)
        return b;
    unsigned k = (b - 16) / 4 + 4, sub = (b - 16) % 4;
    return (1ull << k) + (uint64_t)sub * (1ull << (k - 2));
}

uint64_t cr_hist_quantile(const uint64_t *hist, double q)
{
    uint64_t total = 0;
    for (unsigned b = 0; b < CR_HIST_BUCKETS; b++)
        total += __atomic_load_n(&hist[b], __ATOMIC_RELAXED);
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total)
        want = total - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < CR_HIST_BUCKETS; b++) {
        seen += __atomic_load_n(&hist[b], __ATOMIC_RELAXED);
        if (seen > want)
            return cr_hist_value(b);
    }
    return cr_hist_value(CR_HIST_BUCKETS - 1);
}
