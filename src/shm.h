/* shm.h: the shared-memory region of one generation: task descriptors, payload
 * arena, task queue, one result ring per acceptor, per-process slots.
 *
 * Ownership model (the invariant every function below keeps):
 *   - The descriptor table is the single source of truth. Every descriptor is in
 *     exactly one state (FREE, FILLING, QUEUED, RUNNING, DONE) and every arena
 *     block in use is referenced by exactly one descriptor.
 *   - Free lists, the task queue and the result rings are *derived* structures:
 *     they can be rebuilt from the descriptor table at any time.
 *   - One lock (a futex word holding the owner's pid) guards every state change.
 *     If a process dies holding it, the master, when it reaps that pid, takes
 *     the lock over and rebuilds the derived structures (cr_region_reap). No
 *     other repair is ever needed, whatever instruction the process died at.
 *   - Payload and result bytes are copied outside the lock, in blocks owned by a
 *     descriptor in FILLING (acceptor) or RUNNING (worker) state.
 * The region holds offsets and indices only, never pointers: each process maps
 * it at the address fork() gave it, but nothing relies on that. */
#ifndef CR_SHM_H
#define CR_SHM_H

#include "cr_core.h"

#define CR_SHM_MAGIC 0x3144484355524343ull /* "CCRUCHD1" */
#define CR_SHM_VERSION 1
#define CR_NONE 0xffffffffu
#define CR_NONE64 0xffffffffffffffffull

/* gRPC status numbers, so that workers never include a gRPC header. */
enum {
    CR_STATUS_OK = 0,
    CR_STATUS_CANCELLED = 1,
    CR_STATUS_UNKNOWN = 2,
    CR_STATUS_INVALID_ARGUMENT = 3,
    CR_STATUS_DEADLINE_EXCEEDED = 4,
    CR_STATUS_NOT_FOUND = 5,
    CR_STATUS_RESOURCE_EXHAUSTED = 8,
    CR_STATUS_FAILED_PRECONDITION = 9,
    CR_STATUS_ABORTED = 10,
    CR_STATUS_UNIMPLEMENTED = 12,
    CR_STATUS_INTERNAL = 13,
    CR_STATUS_UNAVAILABLE = 14,
};

typedef enum {
    CR_TASK_FREE = 0,
    CR_TASK_FILLING, /* allocated by an acceptor, payload being copied in */
    CR_TASK_QUEUED,  /* in the task queue */
    CR_TASK_RUNNING, /* taken by a worker */
    CR_TASK_DONE,    /* result written, in the owning acceptor's result ring */
    CR_TASK_DELIVERED, /* taken from the ring by its acceptor, being sent */
} cr_task_state_t;

/* Descriptor flags (atomic bits, may be set outside the lock). */
#define CR_TASK_CANCELLED 0x1u   /* the call is gone: skip it, drop its result */
#define CR_TASK_WORKER_DIED 0x2u /* code is ABORTED because the worker died */
#define CR_TASK_EXPIRED 0x4u     /* deadline passed before a worker ran it */
#define CR_TASK_NO_ROOM 0x8u     /* the output did not fit in the arena */
#define CR_TASK_TIMED_OUT 0x10u  /* ran past task_timeout_ms: its worker was killed */

typedef struct {
    uint32_t state;        /* cr_task_state_t; written last when a change commits */
    uint32_t flags;        /* CR_TASK_* (atomic) */
    uint32_t next;         /* free-list link while FREE */
    uint32_t handler;      /* index in the handler table */
    uint64_t id;           /* the client's Task.id */
    uint64_t tag;          /* the acceptor's call tag, opaque here */
    uint64_t seq;          /* enqueue order (QUEUED) or completion order (DONE) */
    uint64_t deadline_ns;  /* CLOCK_MONOTONIC; 0 = none */
    uint64_t enqueue_ns;
    uint64_t start_ns;
    uint64_t end_ns;
    uint64_t payload_off;  /* arena offset, CR_NONE64 if no bytes */
    uint64_t result_off;   /* arena offset, CR_NONE64 if no bytes */
    uint32_t payload_len;
    uint32_t result_len;   /* output bytes; for code != 0 the error message */
    uint8_t payload_order; /* buddy order of the block */
    uint8_t result_order;
    uint16_t acceptor;     /* owning acceptor slot */
    uint16_t worker;       /* worker number that ran (or is running) it */
    uint16_t attempt;
    int32_t acceptor_pid;  /* incarnation of the owning acceptor */
    int32_t worker_pid;    /* the worker running it, while RUNNING */
    int32_t code;          /* CR_STATUS_* of the result */
    int32_t wstatus;       /* wait status of a worker that died running it */
    uint32_t out_wanted;   /* CR_TASK_NO_ROOM: the output size that did not fit */
    uint32_t feed_d;       /* Submit: its reserved updates-feed entry, CR_NONE for a call */
    uint32_t pad[16];
} cr_task_sh_t;

/* One per acceptor slot. */
typedef struct {
    int32_t pid;
    uint32_t futex;        /* bumped on every push to this ring */
    uint32_t sleeping;     /* the result thread waits on futex (under lock) */
    uint32_t conns;        /* open client connections (written by the acceptor,
                            * read by its siblings to balance accepting) */
    uint64_t head, tail;   /* result ring positions (under lock) */
    uint64_t results;      /* results delivered (counter) */
    uint32_t kicked;       /* cr_result_wake: the next cr_result_take returns at once */
    uint32_t spare;
    uint8_t pad[CR_CACHELINE - 48];
} __attribute__((aligned(CR_CACHELINE))) cr_acceptor_sh_t;

typedef enum {
    CR_WORKER_EMPTY = 0,
    CR_WORKER_IDLE,
    CR_WORKER_BUSY,
} cr_worker_state_t;

/* One per worker slot (CR_WORKER_SLOTS of them, independent of `workers`). */
typedef struct {
    int32_t pid;
    uint32_t state;        /* cr_worker_state_t */
    uint32_t sleeping;     /* waiting on the task futex (under lock) */
    uint32_t task;         /* descriptor running, CR_NONE if idle */
    uint64_t start_ns;     /* when the running task started */
    uint64_t tasks_done;
    uint32_t number;       /* the worker number clients see (Result.worker) */
    uint8_t pad[CR_CACHELINE - 36];
} __attribute__((aligned(CR_CACHELINE))) cr_worker_sh_t;

/* Worker slots of a region are indexed by the process's control-page row, so
 * that old and new workers of one generation (a worker-level reload) never
 * share a slot. */
#define CR_WORKER_SLOTS 1024
#define CR_ARENA_MIN_ORDER 6 /* 64-byte blocks */

typedef struct {
    unsigned generation;
    unsigned queue_capacity; /* descriptors */
    unsigned acceptors;      /* result rings */
    uint64_t arena_size;     /* payload arena bytes */
    uint64_t max_block;      /* largest single payload or result */
    bool feed;               /* the updates feed, not a generation */
} cr_region_conf_t;

typedef struct cr_region_sh_s cr_region_sh_t;

/* Process-local handle on a mapped region. */
typedef struct cr_region_s {
    cr_region_sh_t *sh;
    size_t size;
    int fd;                  /* memfd, kept by the master only */
    cr_task_sh_t *tasks;
    uint32_t *task_ring;
    uint32_t *result_rings;  /* acceptors * (ring_mask + 1) */
    cr_acceptor_sh_t *acceptors;
    cr_worker_sh_t *workers;
    uint8_t *arena;
    uint8_t *free_order;     /* per min-block: order+1 of a free block starting here */
    uint32_t ntasks;
    uint32_t ring_mask;
    unsigned nacceptors;
    bool is_feed;
    struct cr_region_s *feed; /* the updates feed (a process-local pointer set by
                               * the master before forking), NULL in the feed */
} cr_region_t;

/* Region-wide figures, read without the lock (approximate under load). */
typedef struct {
    unsigned generation;
    uint32_t tasks_total, tasks_free, queued, running, done;
    uint64_t arena_size, arena_free;
    uint64_t submitted, completed, rejected_full;
    uint64_t task_wakes, result_wakes; /* futex wake calls for workers / acceptors */
} cr_region_stats_t;

/* --- master ---------------------------------------------------------------- */

/* Create a region (memfd "crunchd-gen-N", mmap MAP_SHARED) before forking.
 * Returns NULL with the reason logged. */
cr_region_t *cr_region_create(const cr_region_conf_t *rc);

/* Unmap and close. Only once no child of this generation is alive. */
void cr_region_destroy(cr_region_t *r);

/* Clean up after a child that died (or exited): called by the master for every
 * reaped child of this region, *after* waitpid returned it.
 *   - if it held the lock: take it over and rebuild every derived structure;
 *   - acceptor: free what it was filling and what waits in its result ring,
 *     mark its queued and running tasks cancelled (their results are dropped);
 *   - worker: a task it was running fails with ABORTED (CR_TASK_WORKER_DIED,
 *     wstatus recorded), or DEADLINE_EXCEEDED when the master killed it for
 *     task_timeout_ms (timed_out), and goes to its acceptor (a Submit task's
 *     result goes to the updates feed); unless the task has run fewer than
 *     1 + max_retries times and did not time out: then it is queued again.
 * `slot` is the acceptor slot or worker slot index. Returns the number of tasks
 * the death touched (for the obituary). */
unsigned cr_region_reap(cr_region_t *r, pid_t pid, cr_role_t role, unsigned slot,
                        int wstatus, unsigned max_retries, bool timed_out);

/* The updates feed's part of a child's death: a dead acceptor's unused
 * reservations are freed (those its submitted tasks own are kept: the master
 * passes every live generation region so they can be told apart), and feed
 * entries it had taken as a subscriber go back to the feed. */
void cr_feed_reap(cr_region_t *feed, pid_t pid, int row, cr_region_t *const *regions,
                  unsigned nregions);

void cr_region_stats(cr_region_t *r, cr_region_stats_t *st);

/* How long this process polls a queue (cr_task_take) or result ring
 * (cr_result_take) before it sleeps: queue_spin_us; 0 = sleep at once. */
void cr_shm_set_spin(unsigned us);

/* Wake every process sleeping on this region (stop, reload). */
void cr_region_wake_all(cr_region_t *r);

/* --- acceptor -------------------------------------------------------------- */

typedef struct {
    uint64_t id;
    uint64_t tag;
    uint64_t deadline_ns; /* 0 = none */
    uint32_t handler;
    unsigned acceptor;    /* slot */
    uint32_t feed_d;      /* Submit: the reserved updates-feed descriptor; CR_NONE for a
                           * call. Always set it: 0 is a valid feed descriptor. */
    const void *payload;
    size_t len;
} cr_submit_t;

/* Allocate a descriptor and payload space, copy the payload, queue the task
 * and wake a worker. Returns CR_OK with *d set, or CR_AGAIN when no descriptor
 * or arena space is free right now (the caller waits and retries, or refuses). */
int cr_task_submit(cr_region_t *r, const cr_submit_t *s, uint32_t *d);

/* Take up to n finished tasks from acceptor slot a's result ring, waiting up to
 * timeout_ms (0 = do not wait, -1 = forever) for the first. Returns how many
 * were taken (0 on timeout or wake). The caller owns them: it reads the result
 * and calls cr_task_release for each. */
int cr_result_take(cr_region_t *r, unsigned a, uint32_t *out, unsigned n, int timeout_ms);

/* Wake acceptor slot a's result thread out of cr_result_take (which then
 * returns 0), e.g. to retry calls waiting for queue space. Never lost: a wake
 * that comes before the thread is in cr_result_take makes its next call
 * return at once instead of sleeping. */
void cr_result_wake(cr_region_t *r, unsigned a);

/* The call is gone: a worker that has not started it frees it; a result that
 * arrives later is freed by the acceptor without sending. Lock-free. */
void cr_task_cancel(cr_region_t *r, uint32_t d);

/* Free a descriptor the caller owns (DONE, taken by cr_result_take). */
void cr_task_release(cr_region_t *r, uint32_t d);

/* Write into buf the error text for a task whose code is not OK: the worker's
 * message, or for a dead worker "worker 3 (pid 812) killed by SIGSEGV while
 * running task 42 (handler prime)". `handler_name` names d's handler. */
void cr_task_error_text(cr_region_t *r, uint32_t d, const char *handler_name,
                        char *buf, size_t len);

/* --- updates feed ------------------------------------------------------------
 * The feed is a region of its own (cr_region_create with acceptors = 1), made
 * once by the master and shared by every generation. Its task queue is the
 * feed: entries are results of Submit tasks waiting for an Updates subscriber.
 * A Submit reserves an entry first (so a full feed is a refusal at the door,
 * never a dropped result); the worker, or the master if the worker dies, fills
 * it; a subscriber takes it like a worker takes a task (cr_task_take, then
 * cr_task_release once sent). A subscriber that dies holding one is reaped
 * with retry, which puts the entry back for another subscriber. */

/* Reserve a feed entry for a task being submitted. Returns CR_OK with *fd, or
 * CR_AGAIN when the feed is full (updates_capacity). The reservation belongs
 * to the task (cr_submit_t.feed_d) from then on, not to the acceptor. */
int cr_feed_reserve(cr_region_t *feed, uint32_t *fd);

/* Give back a reservation whose task could not be submitted. */
void cr_feed_unreserve(cr_region_t *feed, uint32_t fd);

/* A subscriber took entry d but could not send it (its stream ended): put it
 * back at the head of the feed for another subscriber. */
void cr_feed_requeue(cr_region_t *feed, uint32_t d);

/* Feed entries carry the result in the descriptor fields: id, handler, code,
 * flags, worker, worker_pid, start_ns - enqueue_ns (queued), end_ns - start_ns
 * (run) of the original task, and the output (or the worker's error message)
 * as the result bytes (cr_task_result); cr_task_error_text works on them with
 * the feed region. While a subscriber holds an entry, acceptor_pid is its pid. */

/* --- worker ---------------------------------------------------------------- */

/* Register worker slot w (the process's control-page row) as this process,
 * reporting `number` in results (called by the worker itself at start). */
void cr_worker_attach(cr_region_t *r, unsigned w, unsigned number);

/* Take the oldest queued task, waiting up to timeout_ms (-1 = forever). Tasks
 * cancelled meanwhile are freed on the way. Marks it RUNNING by this worker and
 * records it in the worker slot. Returns CR_OK with *d set, or CR_TIMEDOUT
 * (also on a signal or cr_region_wake_all). */
int cr_task_take(cr_region_t *r, unsigned w, uint32_t *d, int timeout_ms);

/* Finish task d taken by worker w: copy `len` bytes of output (or of error
 * message when code != 0) into the arena, mark it DONE and push it to its
 * acceptor's ring. If the call was cancelled meanwhile the task is freed. If
 * the arena has no room for the output, the result becomes RESOURCE_EXHAUSTED.
 * The result reports worker slot w as the worker that ran it. */
void cr_task_finish(cr_region_t *r, unsigned w, uint32_t d, int code,
                    const void *out, size_t len);

/* cr_task_finish, then, in the same lock hold, take the next queued task if
 * there is one (never waits): CR_OK with *next set, else CR_TIMEDOUT and the
 * worker goes back to cr_task_take. next may be NULL (= cr_task_finish). */
int cr_task_finish_next(cr_region_t *r, unsigned w, uint32_t d, int code,
                        const void *out, size_t len, uint32_t *next);

/* --- access ---------------------------------------------------------------- */

static inline cr_task_sh_t *cr_task(cr_region_t *r, uint32_t d)
{
    return &r->tasks[d];
}

static inline const uint8_t *cr_task_payload(cr_region_t *r, uint32_t d)
{
    cr_task_sh_t *t = &r->tasks[d];
    return t->payload_off == CR_NONE64 ? (const uint8_t *)"" : r->arena + t->payload_off;
}

static inline const uint8_t *cr_task_result(cr_region_t *r, uint32_t d)
{
    cr_task_sh_t *t = &r->tasks[d];
    return t->result_off == CR_NONE64 ? (const uint8_t *)"" : r->arena + t->result_off;
}

#endif /* CR_SHM_H */
