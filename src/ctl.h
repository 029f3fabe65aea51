/* ctl.h: the control page: one small shared mapping the master creates once,
 * before the first fork, and every process of every generation sees. It holds
 * what Stats and health report and what outlives a generation: the current
 * generation, reload history, one row per process, per-handler figures, and
 * settings children follow without a restart (log_level). */
#ifndef CR_CTL_H
#define CR_CTL_H

#include "cr_core.h"

#define CR_CTL_MAGIC 0x314c544348435243ull /* "CRCHCTL1" */
#define CR_CTL_VERSION 1
#define CR_MAX_PROCS 1024     /* rows; also the worker slot space of a region */
#define CR_MAX_HANDLERS 256
#define CR_HIST_BUCKETS 128   /* log-linear, up to ~71 min: see cr_hist_bucket() */

typedef enum {
    CR_PROC_EMPTY = 0,
    CR_PROC_STARTING,   /* forked, not ready yet */
    CR_PROC_IDLE,       /* ready; a worker waiting for a task */
    CR_PROC_BUSY,       /* a worker running a task */
    CR_PROC_DRAINING,   /* acceptor: no new connections, finishing calls; worker: told to quit */
} cr_proc_state_t;

/* One row per live process (master-assigned index; also the worker's slot in
 * its region). Written by that process (state, counters) and by the master
 * (identity, at spawn and reap); read by anyone without a lock. */
typedef struct {
    int32_t pid;
    uint8_t role;         /* cr_role_t */
    uint8_t state;        /* cr_proc_state_t */
    uint16_t slot;        /* acceptor slot or worker number within its generation */
    uint32_t generation;
    uint32_t handler;     /* worker: handler of the running task */
    uint64_t task_id;     /* worker: id of the running task */
    uint64_t task_start_ns; /* worker: when it started, 0 = idle */
    uint64_t tasks_done;  /* worker: tasks finished; acceptor: calls finished */
    uint64_t started_wall_us;
    uint32_t conns;       /* acceptor: client connections it accepted, open now */
    uint32_t waiting;     /* acceptor: calls waiting for room in a full queue now */
    uint64_t refused_full; /* acceptor: Runs refused (RESOURCE_EXHAUSTED) for a full queue */
} __attribute__((aligned(CR_CACHELINE))) cr_proc_sh_t;

/* Per-handler figures, summed over every worker (atomic adds). */
typedef struct {
    uint64_t count, errors;
    uint64_t queue_max_us, run_max_us;
    uint64_t queue_hist[CR_HIST_BUCKETS];
    uint64_t run_hist[CR_HIST_BUCKETS];
} cr_handler_stats_sh_t;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t generation;          /* the serving generation */
    int32_t master_pid;
    int32_t log_level;            /* children apply it on their next tick */
    uint64_t start_wall_us;       /* master start */
    uint64_t reload_wall_us;      /* last reload attempt, 0 = none */
    uint32_t reloads_ok, reloads_failed;
    int32_t reload_ok;            /* outcome of the last attempt: 1 ok, 0 failed */
    char reload_msg[512];         /* its message: what changed, or the error */
    /* The handler table (handlers.h): built-ins, then module handlers as
     * reloads publish them (module.c). Append-only until a restart, so the
     * index a queued task carries keeps naming the same handler; the master
     * writes a name, then nhandlers (release). */
    uint32_t nhandlers;
    char handler_names[CR_MAX_HANDLERS][64];
    cr_proc_sh_t procs[CR_MAX_PROCS];
    cr_handler_stats_sh_t handlers[CR_MAX_HANDLERS];
} cr_ctl_sh_t;

/* The process-wide pointer (set by cr_ctl_create in the master; inherited). */
extern cr_ctl_sh_t *cr_ctl;

/* Master, before the first fork. Returns CR_OK or CR_ERROR (logged). */
int cr_ctl_create(void);

/* Master: claim a free row for a child about to be forked; -1 if none. */
int cr_ctl_row_alloc(cr_role_t role, unsigned slot, unsigned generation);
/* Master: after fork / after reap. */
void cr_ctl_row_set_pid(int row, pid_t pid);
void cr_ctl_row_free(int row);

/* Record a reload attempt (master). */
void cr_ctl_reload(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Worker: a task starts / ends (row = the worker's row). */
void cr_ctl_task_start(int row, uint64_t id, uint32_t handler);
void cr_ctl_task_end(int row, uint32_t handler, int code, uint64_t queued_us,
                     uint64_t run_us);

/* Bucket of a microsecond value: exact below 16, then 4 buckets per power of
 * two (at most 25% wide) up to 2^32 us. And the lower bound of a bucket. */
unsigned cr_hist_bucket(uint64_t us);
uint64_t cr_hist_value(unsigned bucket);
/* The value at quantile q (0..1) of a histogram, 0 if empty. */
uint64_t cr_hist_quantile(const uint64_t *hist, double q);

#endif /* CR_CTL_H */
