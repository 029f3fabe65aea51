/* shm.c: the shared region of a generation: descriptors, buddy arena, task queue,
 * result rings, and the master's repair after a child dies (see shm.h). */
#include "cr_core.h"
#include "log.h"
#include "process.h"
#include "shm.h"

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

_Static_assert(sizeof(cr_task_sh_t) == 192, "descriptor is three cache lines");
_Static_assert(sizeof(cr_acceptor_sh_t) == CR_CACHELINE, "acceptor slot is a line");
_Static_assert(sizeof(cr_worker_sh_t) == CR_CACHELINE, "worker slot is a line");

/* Unit tests define this to kill a process at chosen instructions inside the
 * critical sections (t/unit/test_shm.c). */
#ifndef CR_TEST_POINT
#define CR_TEST_POINT(n) do { } while (0)
#endif

#define CR_LOCK_WAITERS 0x40000000u /* pids fit in 22 bits (pid_max <= 4M) */
#define CR_MAX_ORDER 40

/* The region header. Everything below `lock` is guarded by it, except the
 * futex words, which are only bumped under it and read anywhere. */
struct cr_region_sh_s {
    uint64_t magic;
    uint32_t version;
    uint32_t generation;
    uint32_t ntasks;
    uint32_t ring_mask;
    uint32_t nacceptors;
    uint32_t min_order, max_order;
    uint32_t is_feed;
    uint64_t arena_size;
    uint64_t size;
    uint64_t tasks_off, task_ring_off, result_rings_off, acceptors_off, workers_off,
        free_order_off, arena_off;

    uint32_t lock __attribute__((aligned(CR_CACHELINE)));
    uint32_t task_futex __attribute__((aligned(CR_CACHELINE)));

    /* futex wake system calls made (atomic counters, for Stats and bench/) */
    uint64_t task_wakes __attribute__((aligned(CR_CACHELINE)));
    uint64_t result_wakes;

    /* guarded by lock */
    uint32_t free_head __attribute__((aligned(CR_CACHELINE)));
    uint32_t free_count; /* free descriptors: on the free list, and fresh ones */
    uint32_t fresh;      /* descriptors [fresh, ntasks) were never used: their
                          * memory is untouched (zero: FREE) and on no list, so
                          * a big queue or feed costs no RSS until it fills */
    uint32_t task_sleepers;
    uint32_t task_wakes_pending; /* wakes sent to sleepers not yet back */
    uint64_t task_head, task_tail;
    uint64_t seq;
    uint64_t arena_free;
    uint64_t free_heads[CR_MAX_ORDER + 1]; /* arena offsets, CR_NONE64 = empty */
    uint64_t submitted, completed, rejected_full, rebuilds;
};

/* A free arena block starts with its free-list links. */
typedef struct {
    uint64_t next, prev;
} cr_free_block_t;

/* --- futex lock ------------------------------------------------------------- */

static long cr_futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    /* Shared (not PRIVATE) futexes: waiters and wakers are different processes. */
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static void cr_futex_wake(uint32_t *addr, int n)
{
    cr_futex(addr, FUTEX_WAKE, (uint32_t)n, NULL);
}

/* Wait while *addr == val, up to timeout_ms (-1 = forever). Returns 0 when woken
 * or the value changed, -1 on timeout or signal. */
static int cr_futex_wait(uint32_t *addr, uint32_t val, int timeout_ms)
{
    struct timespec ts, *tp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tp = &ts;
    }
    if (cr_futex(addr, FUTEX_WAIT, val, tp) == 0)
        return 0;
    return errno == EAGAIN ? 0 : -1;
}

/* Wake one sleeper of the task queue / of acceptor a's result ring. */
static void cr_task_wake(cr_region_t *r)
{
    __atomic_add_fetch(&r->sh->task_wakes, 1, __ATOMIC_RELAXED);
    cr_futex_wake(&r->sh->task_futex, 1);
}

static void cr_acceptor_wake(cr_region_t *r, unsigned a)
{
    __atomic_add_fetch(&r->sh->result_wakes, 1, __ATOMIC_RELAXED);
    cr_futex_wake(&r->acceptors[a].futex, 1);
}

static inline void cr_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spin-then-park: before a taker sleeps on a futex it polls, outside the
 * lock, whether *tail moved past *head, for a while. Under load the
 * next task or result arrives within that time and the handover costs neither
 * the taker's futex_wait nor the giver's futex_wake (each a system call, and a
 * wake-up several microseconds long; on a VM, waking a halted vCPU costs tens
 * of microseconds). After the first microsecond it yields between polls, and
 * when a yield lets something else run (it took CR_SPIN_YIELDED_NS or more),
 * it stops polling and sleeps: on a busy machine a poller would hold a CPU
 * that the processes making the work (acceptors' gRPC threads, the clients)
 * need. The time is queue_spin_us (cr_shm_set_spin), per process. Returns
 * true if something arrived. */
#define CR_SPIN_PAUSE_NS 1000u
#define CR_SPIN_YIELDED_NS 5000u

static uint64_t cr_spin_ns = 10000u;

void cr_shm_set_spin(unsigned us)
{
    cr_spin_ns = (uint64_t)us * 1000u;
}

static bool cr_spin_for(const uint64_t *head, const uint64_t *tail)
{
    uint64_t t0 = 0;
    for (unsigned i = 0;; i++) {
        if (__atomic_load_n(tail, __ATOMIC_ACQUIRE) != __atomic_load_n(head, __ATOMIC_RELAXED))
            return true;
        if ((i & 15) != 15) {
            cr_cpu_relax();
            continue;
        }
        uint64_t now = cr_now_ns();
        if (t0 == 0)
            t0 = now;
        else if (now - t0 >= cr_spin_ns)
            return false;
        if (now - t0 >= CR_SPIN_PAUSE_NS) {
            sched_yield();
            /* Somebody else ran meanwhile: this CPU is wanted, and polling
             * on it would delay the work it waits for. Sleep instead. */
            if (cr_now_ns() - now >= CR_SPIN_YIELDED_NS)
                return false;
        }
    }
}

/* The lock word holds the owner's pid, so that the master knows whom to blame
 * when a holder dies: it then takes the lock over (cr_lock_take_over). */
static void cr_lock(cr_region_sh_t *sh, uint32_t me)
{
    uint32_t c = 0;
    if (__atomic_compare_exchange_n(&sh->lock, &c, me, false, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED))
        return;
    for (int i = 0; i < 200; i++) {
        cr_cpu_relax();
        c = 0;
        if (__atomic_load_n(&sh->lock, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&sh->lock, &c, me, false, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return;
    }
    for (;;) {
        c = __atomic_load_n(&sh->lock, __ATOMIC_RELAXED);
        if (c == 0) {
            /* We may not be the last waiter: keep the waiters bit. */
            if (__atomic_compare_exchange_n(&sh->lock, &c, me | CR_LOCK_WAITERS, false,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            continue;
        }
        if (!(c & CR_LOCK_WAITERS)) {
            if (!__atomic_compare_exchange_n(&sh->lock, &c, c | CR_LOCK_WAITERS, false,
                                             __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                continue;
            c |= CR_LOCK_WAITERS;
        }
        cr_futex_wait(&sh->lock, c, -1);
    }
}

static void cr_unlock(cr_region_sh_t *sh)
{
    if (__atomic_exchange_n(&sh->lock, 0, __ATOMIC_RELEASE) & CR_LOCK_WAITERS)
        cr_futex_wake(&sh->lock, 1);
}

/* Our pid, cached: getpid() is a system call on every lock otherwise. Reset in
 * every child by the fork handler registered below. */
static uint32_t cr_self_pid;

static void cr_self_reset(void)
{
    cr_self_pid = 0;
}

__attribute__((constructor)) static void cr_self_init(void)
{
    pthread_atfork(NULL, NULL, cr_self_reset);
}

static inline uint32_t cr_self(void)
{
    if (cr_unlikely(cr_self_pid == 0))
        cr_self_pid = (uint32_t)getpid();
    return cr_self_pid;
}

/* --- layout ----------------------------------------------------------------- */

static inline uint64_t cr_blk(unsigned order)
{
    return 1ull << order;
}

static unsigned cr_order_for(uint64_t n)
{
    unsigned o = CR_ARENA_MIN_ORDER;
    while (cr_blk(o) < n)
        o++;
    return o;
}

static void cr_region_bind(cr_region_t *r, void *base)
{
    cr_region_sh_t *sh = base;
    uint8_t *b = base;
    r->sh = sh;
    r->size = sh->size;
    r->tasks = (cr_task_sh_t *)(b + sh->tasks_off);
    r->task_ring = (uint32_t *)(b + sh->task_ring_off);
    r->result_rings = (uint32_t *)(b + sh->result_rings_off);
    r->acceptors = (cr_acceptor_sh_t *)(b + sh->acceptors_off);
    r->workers = (cr_worker_sh_t *)(b + sh->workers_off);
    r->free_order = b + sh->free_order_off;
    r->arena = b + sh->arena_off;
    r->ntasks = sh->ntasks;
    r->ring_mask = sh->ring_mask;
    r->nacceptors = sh->nacceptors;
    r->is_feed = sh->is_feed != 0;
}

static inline uint32_t *cr_result_ring(cr_region_t *r, unsigned a)
{
    return r->result_rings + (size_t)a * (r->ring_mask + 1);
}

/* --- buddy arena (under lock) ------------------------------------------------ */

static inline cr_free_block_t *cr_fb(cr_region_t *r, uint64_t off)
{
    return (cr_free_block_t *)(r->arena + off);
}

static void cr_arena_push(cr_region_t *r, uint64_t off, unsigned order)
{
    cr_region_sh_t *sh = r->sh;
    cr_free_block_t *fb = cr_fb(r, off);
    fb->prev = CR_NONE64;
    fb->next = sh->free_heads[order];
    if (fb->next != CR_NONE64)
        cr_fb(r, fb->next)->prev = off;
    sh->free_heads[order] = off;
    r->free_order[off >> CR_ARENA_MIN_ORDER] = (uint8_t)(order + 1);
    sh->arena_free += cr_blk(order);
}

static void cr_arena_unlink(cr_region_t *r, uint64_t off, unsigned order)
{
    cr_region_sh_t *sh = r->sh;
    cr_free_block_t *fb = cr_fb(r, off);
    if (fb->prev != CR_NONE64)
        cr_fb(r, fb->prev)->next = fb->next;
    else
        sh->free_heads[order] = fb->next;
    if (fb->next != CR_NONE64)
        cr_fb(r, fb->next)->prev = fb->prev;
    r->free_order[off >> CR_ARENA_MIN_ORDER] = 0;
    sh->arena_free -= cr_blk(order);
}

/* Allocate a block of at least n bytes. Returns its offset and order, or
 * CR_NONE64 when no block is free. */
static uint64_t cr_arena_alloc(cr_region_t *r, uint64_t n, uint8_t *order_out)
{
    cr_region_sh_t *sh = r->sh;
    unsigned want = cr_order_for(n), o = want;
    if (want > sh->max_order)
        return CR_NONE64;
    while (o <= sh->max_order && sh->free_heads[o] == CR_NONE64)
        o++;
    if (o > sh->max_order)
        return CR_NONE64;
    uint64_t off = sh->free_heads[o];
    cr_arena_unlink(r, off, o);
    CR_TEST_POINT(1);
    while (o > want) { /* split: keep the lower half, free the upper */
        o--;
        cr_arena_push(r, off + cr_blk(o), o);
        CR_TEST_POINT(2);
    }
    *order_out = (uint8_t)want;
    return off;
}

static void cr_arena_free(cr_region_t *r, uint64_t off, unsigned order)
{
    cr_region_sh_t *sh = r->sh;
    while (order < sh->max_order) {
        uint64_t buddy = off ^ cr_blk(order);
        if (buddy + cr_blk(order) > sh->arena_size ||
            r->free_order[buddy >> CR_ARENA_MIN_ORDER] != order + 1)
            break;
        cr_arena_unlink(r, buddy, order);
        CR_TEST_POINT(3);
        off &= ~cr_blk(order);
        order++;
    }
    cr_arena_push(r, off, order);
}

/* Put [lo, hi) on the free lists as maximal aligned blocks. */
static void cr_arena_carve(cr_region_t *r, uint64_t lo, uint64_t hi)
{
    cr_region_sh_t *sh = r->sh;
    while (lo < hi) {
        unsigned o = sh->max_order;
        while (o > sh->min_order && ((lo & (cr_blk(o) - 1)) || lo + cr_blk(o) > hi))
            o--;
        if ((lo & (cr_blk(o) - 1)) || lo + cr_blk(o) > hi)
            break; /* a tail smaller than the minimum block */
        cr_arena_push(r, lo, o);
        lo += cr_blk(o);
    }
}

/* --- descriptors (under lock) ------------------------------------------------ */

static void cr_desc_free_locked(cr_region_t *r, uint32_t d)
{
    cr_region_sh_t *sh = r->sh;
    cr_task_sh_t *t = &r->tasks[d];
    if (t->payload_off != CR_NONE64)
        cr_arena_free(r, t->payload_off, t->payload_order);
    CR_TEST_POINT(4);
    if (t->result_off != CR_NONE64)
        cr_arena_free(r, t->result_off, t->result_order);
    t->payload_off = CR_NONE64;
    t->result_off = CR_NONE64;
    t->next = sh->free_head;
    __atomic_store_n(&t->state, CR_TASK_FREE, __ATOMIC_RELEASE);
    sh->free_head = d;
    sh->free_count++;
}

static bool cr_desc_available(cr_region_t *r)
{
    return r->sh->free_head != CR_NONE || r->sh->fresh < r->ntasks;
}

/* Take a free descriptor (cr_desc_available said there is one): the free
 * list first, then a fresh one. Its state stays FREE: the caller commits. */
static uint32_t cr_desc_alloc_locked(cr_region_t *r)
{
    cr_region_sh_t *sh = r->sh;
    uint32_t d = sh->free_head;
    if (d != CR_NONE) {
        sh->free_head = r->tasks[d].next;
    } else {
        d = sh->fresh;
        r->tasks[d].payload_off = CR_NONE64;
        r->tasks[d].result_off = CR_NONE64;
        sh->fresh = d + 1; /* dying before this leaves d fresh, which it still is */
    }
    CR_TEST_POINT(8);
    sh->free_count--;
    return d;
}

static void cr_task_push_locked(cr_region_t *r, uint32_t d)
{
    cr_region_sh_t *sh = r->sh;
    cr_task_sh_t *t = &r->tasks[d];
    t->seq = ++sh->seq;
    __atomic_store_n(&t->state, CR_TASK_QUEUED, __ATOMIC_RELEASE);
    CR_TEST_POINT(5);
    r->task_ring[sh->task_tail & r->ring_mask] = d;
    CR_TEST_POINT(6);
    sh->task_tail++;
    __atomic_add_fetch(&sh->task_futex, 1, __ATOMIC_RELEASE);
}

/* A task was queued: does a sleeping worker need a wake? Only if more workers
 * sleep than wakes are on their way to them: a burst of submits while a
 * worker is being woken makes one futex_wake, not one per task. */
static bool cr_task_wake_needed_locked(cr_region_sh_t *sh)
{
    if (sh->task_sleepers <= sh->task_wakes_pending)
        return false;
    sh->task_wakes_pending++;
    return true;
}

/* A sleeper is back (woken, timed out, or dead): it no longer waits for a
 * wake. Pending wakes never exceed sleepers, so none is counted for a worker
 * that will never come back to take it. */
static void cr_task_sleeper_back_locked(cr_region_sh_t *sh)
{
    sh->task_sleepers--;
    if (sh->task_wakes_pending > 0)
        sh->task_wakes_pending--;
    if (sh->task_wakes_pending > sh->task_sleepers)
        sh->task_wakes_pending = sh->task_sleepers;
}

/* Mark d DONE and push it to its acceptor's ring. Returns true if the acceptor
 * sleeps and must be woken (after unlocking). */
static bool cr_result_push_locked(cr_region_t *r, uint32_t d)
{
    cr_region_sh_t *sh = r->sh;
    cr_task_sh_t *t = &r->tasks[d];
    cr_acceptor_sh_t *a = &r->acceptors[t->acceptor];
    t->seq = ++sh->seq;
    __atomic_store_n(&t->state, CR_TASK_DONE, __ATOMIC_RELEASE);
    CR_TEST_POINT(7);
    cr_result_ring(r, t->acceptor)[a->tail & r->ring_mask] = d;
    a->tail++;
    __atomic_add_fetch(&a->futex, 1, __ATOMIC_RELEASE);
    sh->completed++;
    if (!a->sleeping)
        return false;
    a->sleeping = 0; /* one wake is enough until it sleeps again */
    return true;
}

/* --- rebuild ----------------------------------------------------------------- */

typedef struct {
    uint64_t key;
    uint64_t val;
} cr_pair_t;

static int cr_pair_cmp(const void *a, const void *b)
{
    const cr_pair_t *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

static bool cr_block_valid(cr_region_t *r, uint64_t off, unsigned order)
{
    cr_region_sh_t *sh = r->sh;
    return order >= sh->min_order && order <= sh->max_order &&
           (off & (cr_blk(order) - 1)) == 0 && off + cr_blk(order) <= sh->arena_size;
}

/* Recompute every derived structure from the descriptor table: free lists of
 * descriptors and arena, task queue, result rings. Called under the lock when
 * its previous holder died (or at creation). It takes no ownership decision:
 * what a dead process owned is settled by cr_region_reap afterwards. */
static void cr_region_rebuild(cr_region_t *r)
{
    cr_region_sh_t *sh = r->sh;
    uint32_t n = r->ntasks;
    cr_pair_t *blocks = malloc(sizeof(*blocks) * 2 * (size_t)n + 1);
    cr_pair_t *order = malloc(sizeof(*order) * (size_t)n + 1);
    cr_assert(blocks && order);

    /* arena: everything not referenced by a live descriptor is free */
    size_t nb = 0;
    if (sh->fresh > n)
        sh->fresh = n;
    n = sh->fresh; /* the fresh ones are FREE and untouched: never read them */
    for (uint32_t d = 0; d < n; d++) {
        cr_task_sh_t *t = &r->tasks[d];
        if (t->state == CR_TASK_FREE)
            continue;
        if (t->payload_off != CR_NONE64) {
            if (cr_block_valid(r, t->payload_off, t->payload_order))
                blocks[nb++] = (cr_pair_t){t->payload_off, t->payload_order};
            else
                t->payload_off = CR_NONE64, t->payload_len = 0;
        }
        if (t->result_off != CR_NONE64) {
            if (cr_block_valid(r, t->result_off, t->result_order))
                blocks[nb++] = (cr_pair_t){t->result_off, t->result_order};
            else
                t->result_off = CR_NONE64, t->result_len = 0;
        }
    }
    qsort(blocks, nb, sizeof(*blocks), cr_pair_cmp);
    for (unsigned o = 0; o <= CR_MAX_ORDER; o++)
        sh->free_heads[o] = CR_NONE64;
    memset(r->free_order, 0, sh->arena_size >> CR_ARENA_MIN_ORDER);
    sh->arena_free = 0;
    uint64_t at = 0;
    for (size_t i = 0; i < nb; i++) {
        if (blocks[i].key < at)
            continue; /* overlapping references cannot happen; be safe */
        cr_arena_carve(r, at, blocks[i].key);
        at = blocks[i].key + cr_blk((unsigned)blocks[i].val);
    }
    cr_arena_carve(r, at, sh->arena_size);

    /* descriptors: free list in index order, then the fresh ones */
    sh->free_head = CR_NONE;
    sh->free_count = r->ntasks - n;
    for (uint32_t d = n; d-- > 0;) {
        cr_task_sh_t *t = &r->tasks[d];
        if (t->state == CR_TASK_FREE) {
            t->next = sh->free_head;
            sh->free_head = d;
            sh->free_count++;
        }
    }

    /* task queue: QUEUED descriptors in enqueue order */
    size_t nq = 0;
    for (uint32_t d = 0; d < n; d++)
        if (r->tasks[d].state == CR_TASK_QUEUED)
            order[nq++] = (cr_pair_t){r->tasks[d].seq, d};
    qsort(order, nq, sizeof(*order), cr_pair_cmp);
    sh->task_head = 0;
    sh->task_tail = nq;
    for (size_t i = 0; i < nq; i++)
        r->task_ring[i] = (uint32_t)order[i].val;

    /* result rings: DONE descriptors per acceptor in completion order */
    for (unsigned a = 0; a < r->nacceptors; a++) {
        size_t nr = 0;
        for (uint32_t d = 0; d < n; d++)
            if (r->tasks[d].state == CR_TASK_DONE && r->tasks[d].acceptor == a)
                order[nr++] = (cr_pair_t){r->tasks[d].seq, d};
        qsort(order, nr, sizeof(*order), cr_pair_cmp);
        r->acceptors[a].head = 0;
        r->acceptors[a].tail = nr;
        for (size_t i = 0; i < nr; i++)
            cr_result_ring(r, a)[i] = (uint32_t)order[i].val;
    }

    /* sleepers: the flags in the slots are the truth */
    sh->task_sleepers = 0;
    for (unsigned w = 0; w < CR_WORKER_SLOTS; w++)
        sh->task_sleepers += r->workers[w].sleeping != 0;
    sh->task_wakes_pending = 0; /* too few is safe: at worst one wake too many */

    sh->rebuilds++;
    free(blocks);
    free(order);
}

/* --- master ------------------------------------------------------------------ */

cr_region_t *cr_region_create(const cr_region_conf_t *rc)
{
    cr_region_t *r = NULL;
    int fd = -1;
    void *base = MAP_FAILED;
    char name[64];

    uint32_t ntasks = rc->queue_capacity ? rc->queue_capacity : 1;
    uint32_t ring = 1;
    while (ring < ntasks)
        ring <<= 1;
    unsigned nacc = rc->acceptors ? rc->acceptors : 1;
    uint64_t arena = rc->arena_size & ~(cr_blk(CR_ARENA_MIN_ORDER) - 1);
    unsigned max_order = cr_order_for(rc->max_block ? rc->max_block : 1);
    while (max_order > CR_ARENA_MIN_ORDER && cr_blk(max_order) > arena)
        max_order--;
    if (max_order > CR_MAX_ORDER || arena < cr_blk(CR_ARENA_MIN_ORDER)) {
        cr_log(CR_LOG_EMERG, 0, "shared memory: arena of %" PRIu64 " bytes is too small; "
               "raise shm_size", rc->arena_size);
        return NULL;
    }

    uint64_t off = cr_align_up((uint64_t)sizeof(cr_region_sh_t), CR_CACHELINE);
    uint64_t tasks_off = off;
    off = cr_align_up(off + (uint64_t)ntasks * sizeof(cr_task_sh_t), CR_CACHELINE);
    uint64_t task_ring_off = off;
    off = cr_align_up(off + (uint64_t)ring * 4, CR_CACHELINE);
    uint64_t result_rings_off = off;
    off = cr_align_up(off + (uint64_t)ring * 4 * nacc, CR_CACHELINE);
    uint64_t acceptors_off = off;
    off = cr_align_up(off + (uint64_t)nacc * sizeof(cr_acceptor_sh_t), CR_CACHELINE);
    uint64_t workers_off = off;
    off = cr_align_up(off + (uint64_t)CR_WORKER_SLOTS * sizeof(cr_worker_sh_t), CR_CACHELINE);
    uint64_t free_order_off = off;
    off = cr_align_up(off + (arena >> CR_ARENA_MIN_ORDER), 4096);
    uint64_t arena_off = off;
    uint64_t size = cr_align_up(off + arena, 4096);

    snprintf(name, sizeof(name), "crunchd-gen-%u", rc->generation);
    fd = memfd_create(name, MFD_CLOEXEC);
    if (fd == -1) {
        cr_log(CR_LOG_EMERG, errno, "memfd_create(\"%s\") failed", name);
        goto err;
    }
    if (ftruncate(fd, (off_t)size) == -1) {
        cr_log(CR_LOG_EMERG, errno, "ftruncate(%s, %" PRIu64 ") failed; lower shm_size "
               "or queue_capacity", name, size);
        goto err;
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        cr_log(CR_LOG_EMERG, errno, "mmap(%s, %" PRIu64 ") failed; lower shm_size", name,
               size);
        goto err;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        goto err;

    cr_region_sh_t *sh = base;
    sh->magic = CR_SHM_MAGIC;
    sh->version = CR_SHM_VERSION;
    sh->generation = rc->generation;
    sh->ntasks = ntasks;
    sh->ring_mask = ring - 1;
    sh->nacceptors = nacc;
    sh->is_feed = rc->feed;
    sh->min_order = CR_ARENA_MIN_ORDER;
    sh->max_order = max_order;
    sh->arena_size = arena;
    sh->size = size;
    sh->tasks_off = tasks_off;
    sh->task_ring_off = task_ring_off;
    sh->result_rings_off = result_rings_off;
    sh->acceptors_off = acceptors_off;
    sh->workers_off = workers_off;
    sh->free_order_off = free_order_off;
    sh->arena_off = arena_off;
    cr_region_bind(r, base);
    r->fd = fd;
    sh->fresh = 0; /* descriptors are set up when first used */
    for (unsigned w = 0; w < CR_WORKER_SLOTS; w++)
        r->workers[w].task = CR_NONE;
    cr_region_rebuild(r);
    sh->rebuilds = 0;
    return r;

err:
    if (base != MAP_FAILED)
        munmap(base, size);
    if (fd != -1)
        close(fd);
    free(r);
    return NULL;
}

void cr_region_destroy(cr_region_t *r)
{
    if (r == NULL)
        return;
    munmap(r->sh, r->size);
    if (r->fd != -1)
        close(r->fd);
    free(r);
}

/* Is pid a child of ours that has died but is not reaped yet? */
static bool cr_pid_dead(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == -1)
        return errno == ECHILD && kill(pid, 0) == -1 && errno == ESRCH;
    return si.si_pid == pid;
}

/* The master's lock: like cr_lock, but never waits on a holder that is dead
 * (reaped already, or a zombie it has not reaped yet): it takes the lock over
 * and rebuilds. `dead` is a pid known to be dead (0 = none). */
static void cr_master_lock(cr_region_t *r, pid_t dead)
{
    cr_region_sh_t *sh = r->sh;
    uint32_t me = cr_self();
    for (;;) {
        uint32_t c = 0;
        if (__atomic_compare_exchange_n(&sh->lock, &c, me, false, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return;
        pid_t holder = (pid_t)(c & ~CR_LOCK_WAITERS);
        if (holder == dead || cr_pid_dead(holder)) {
            if (__atomic_compare_exchange_n(&sh->lock, &c, me | CR_LOCK_WAITERS, false,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                cr_log(CR_LOG_WARN, 0, "process %d died holding the shared-memory lock of "
                       "generation %u; rebuilding the queues from the task table",
                       (int)holder, sh->generation);
                cr_region_rebuild(r);
                return;
            }
            continue;
        }
        /* A live holder: critical sections are short, but it may die meanwhile. */
        if (!(c & CR_LOCK_WAITERS) &&
            !__atomic_compare_exchange_n(&sh->lock, &c, c | CR_LOCK_WAITERS, false,
                                         __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            continue;
        cr_futex_wait(&sh->lock, c | CR_LOCK_WAITERS, 10);
    }
}

/* The key a Submit task stamps on its feed reservation: which task of which
 * generation owns it. A descriptor is not reused before its feed entry is
 * filled, so the key is unique among reservations. */
static inline uint64_t cr_feed_key(cr_region_t *r, uint32_t d)
{
    return (uint64_t)r->sh->generation << 32 | d;
}

static bool cr_feed_fill(cr_region_t *feed, uint32_t fd, uint64_t key, const cr_task_sh_t *t,
                         int code, uint32_t flags, const void *out, size_t len);

/* Settle task d of a dead worker (under r's lock): queue it again, or fail
 * it; to its acceptor, or to the updates feed. Returns true if an acceptor
 * must be woken (*acc set). */
static bool cr_reap_task_locked(cr_region_t *r, uint32_t d, int wstatus,
                                unsigned max_retries, bool timed_out, bool *wake_workers,
                                unsigned *acc)
{
    cr_task_sh_t *t = &r->tasks[d];
    uint32_t flags = __atomic_load_n(&t->flags, __ATOMIC_ACQUIRE);

    if (flags & CR_TASK_CANCELLED) {
        cr_desc_free_locked(r, d);
        return false;
    }
    if (!timed_out && t->attempt < max_retries) {
        /* Another attempt, on whichever worker takes it: the dead one is
         * reaped already, so the task never runs twice at once. */
        t->attempt++;
        t->worker_pid = 0;
        if (t->result_off != CR_NONE64) {
            cr_arena_free(r, t->result_off, t->result_order);
            t->result_off = CR_NONE64;
        }
        t->result_len = 0;
        cr_task_push_locked(r, d);
        *wake_workers = true;
        return false;
    }
    t->code = timed_out ? CR_STATUS_DEADLINE_EXCEEDED : CR_STATUS_ABORTED;
    t->wstatus = wstatus;
    t->end_ns = cr_now_ns();
    t->result_len = 0;
    __atomic_or_fetch(&t->flags, timed_out ? CR_TASK_TIMED_OUT : CR_TASK_WORKER_DIED,
                      __ATOMIC_RELEASE);
    if (t->feed_d != CR_NONE) {
        /* A Submit task: its result goes to the feed, unless the worker had
         * filled the entry already and died before freeing the task. */
        if (r->feed)
            cr_feed_fill(r->feed, t->feed_d, cr_feed_key(r, d), t, t->code, t->flags, NULL, 0);
        cr_desc_free_locked(r, d);
        return false;
    }
    *acc = t->acceptor;
    return cr_result_push_locked(r, d);
}

unsigned cr_region_reap(cr_region_t *r, pid_t pid, cr_role_t role, unsigned slot,
                        int wstatus, unsigned max_retries, bool timed_out)
{
    cr_region_sh_t *sh = r->sh;
    unsigned touched = 0;
    bool wake_workers = false;
    uint64_t wake_acc = 0; /* bitmap of acceptors to wake (first 64) */

    cr_master_lock(r, pid);

    for (uint32_t d = 0; d < sh->fresh; d++) {
        cr_task_sh_t *t = &r->tasks[d];
        uint32_t st = t->state;
        if (st == CR_TASK_FREE)
            continue;
        if (role == CR_ROLE_ACCEPTOR && t->acceptor == slot && t->acceptor_pid == pid) {
            if (st == CR_TASK_QUEUED || st == CR_TASK_RUNNING) {
                /* A Submit task does not need its acceptor: it goes on. A call's
                 * task is freed by a worker: skipped if queued, dropped when
                 * it finishes. */
                if (t->feed_d == CR_NONE)
                    __atomic_or_fetch(&t->flags, CR_TASK_CANCELLED, __ATOMIC_RELEASE);
            } else {
                cr_desc_free_locked(r, d);
            }
            touched++;
        } else if (role == CR_ROLE_WORKER && st == CR_TASK_RUNNING && r->is_feed) {
            if (t->acceptor_pid == pid) {
                /* A subscriber died holding a feed entry: back to the feed. */
                t->acceptor_pid = 0;
                cr_task_push_locked(r, d);
                wake_workers = true;
                touched++;
            }
        } else if (role == CR_ROLE_WORKER && st == CR_TASK_RUNNING && t->worker_pid == pid) {
            unsigned acc = 0;
            touched++;
            if (cr_reap_task_locked(r, d, wstatus, max_retries, timed_out,
                                           &wake_workers, &acc) &&
                       acc < 64) {
                wake_acc |= 1ull << acc;
            }
        }
    }

    if (role == CR_ROLE_ACCEPTOR && slot < r->nacceptors) {
        cr_acceptor_sh_t *a = &r->acceptors[slot];
        if (a->pid == pid) {
            /* Every DONE task of this acceptor was freed above: the ring is empty. */
            a->head = a->tail = 0;
            a->sleeping = 0;
            a->kicked = 0;
            a->conns = 0;
            a->pid = 0;
        }
    } else if (role == CR_ROLE_WORKER && slot < CR_WORKER_SLOTS) {
        cr_worker_sh_t *w = &r->workers[slot];
        if (w->pid == pid) {
            if (w->sleeping) {
                w->sleeping = 0;
                cr_task_sleeper_back_locked(sh);
            }
            w->pid = 0;
            w->state = CR_WORKER_EMPTY;
            w->task = CR_NONE;
        }
    }
    bool sleepers = sh->task_sleepers > 0;
    cr_unlock(sh);

    if (wake_workers && sleepers)
        cr_futex_wake(&sh->task_futex, 1);
    for (unsigned a = 0; a < r->nacceptors && a < 64; a++)
        if (wake_acc & (1ull << a))
            cr_futex_wake(&r->acceptors[a].futex, 1);
    return touched;
}

void cr_region_stats(cr_region_t *r, cr_region_stats_t *st)
{
    cr_region_sh_t *sh = r->sh;
    memset(st, 0, sizeof(*st));
    st->generation = sh->generation;
    st->tasks_total = r->ntasks;
    uint32_t used = __atomic_load_n(&sh->fresh, __ATOMIC_RELAXED);
    if (used > r->ntasks)
        used = r->ntasks;
    st->tasks_free = r->ntasks - used; /* never used yet */
    for (uint32_t d = 0; d < used; d++) {
        switch (__atomic_load_n(&r->tasks[d].state, __ATOMIC_RELAXED)) {
        case CR_TASK_FREE: st->tasks_free++; break;
        case CR_TASK_QUEUED: st->queued++; break;
        case CR_TASK_RUNNING: st->running++; break;
        case CR_TASK_DONE:
        case CR_TASK_DELIVERED: st->done++; break;
        default: break;
        }
    }
    st->arena_size = sh->arena_size;
    st->arena_free = __atomic_load_n(&sh->arena_free, __ATOMIC_RELAXED);
    st->submitted = __atomic_load_n(&sh->submitted, __ATOMIC_RELAXED);
    st->completed = __atomic_load_n(&sh->completed, __ATOMIC_RELAXED);
    st->rejected_full = __atomic_load_n(&sh->rejected_full, __ATOMIC_RELAXED);
    st->task_wakes = __atomic_load_n(&sh->task_wakes, __ATOMIC_RELAXED);
    st->result_wakes = __atomic_load_n(&sh->result_wakes, __ATOMIC_RELAXED);
}

void cr_region_wake_all(cr_region_t *r)
{
    __atomic_add_fetch(&r->sh->task_futex, 1, __ATOMIC_RELEASE);
    cr_futex_wake(&r->sh->task_futex, INT_MAX);
    for (unsigned a = 0; a < r->nacceptors; a++) {
        __atomic_add_fetch(&r->acceptors[a].futex, 1, __ATOMIC_RELEASE);
        cr_futex_wake(&r->acceptors[a].futex, INT_MAX);
    }
}

/* --- acceptor ---------------------------------------------------------------- */

int cr_task_submit(cr_region_t *r, const cr_submit_t *s, uint32_t *dp)
{
    cr_region_sh_t *sh = r->sh;
    uint32_t me = cr_self();
    uint64_t off = CR_NONE64;
    uint8_t order = 0;

    cr_lock(sh, me);
    if (!cr_desc_available(r)) {
        sh->rejected_full++;
        cr_unlock(sh);
        return CR_AGAIN;
    }
    if (s->len > 0) {
        off = cr_arena_alloc(r, s->len, &order);
        if (off == CR_NONE64) {
            sh->rejected_full++;
            cr_unlock(sh);
            return CR_AGAIN;
        }
    }
    uint32_t d = cr_desc_alloc_locked(r);
    cr_task_sh_t *t = &r->tasks[d];
    t->flags = 0;
    t->next = CR_NONE;
    t->handler = s->handler;
    t->id = s->id;
    t->tag = s->tag;
    t->deadline_ns = s->deadline_ns;
    t->start_ns = t->end_ns = 0;
    t->payload_len = (uint32_t)s->len;
    t->payload_order = order;
    t->payload_off = off;
    t->result_off = CR_NONE64;
    t->result_len = 0;
    t->acceptor = (uint16_t)s->acceptor;
    t->acceptor_pid = (int32_t)me;
    t->worker_pid = 0;
    t->attempt = 0;
    t->code = 0;
    t->wstatus = 0;
    t->out_wanted = 0;
    t->feed_d = s->feed_d;
    if (s->feed_d != CR_NONE && r->feed) {
        /* The reservation is ours while FILLING: stamp which task owns it, so
         * that the master can tell it from a reservation nobody submitted. */
        cr_task_sh_t *e = &((cr_region_t *)r->feed)->tasks[s->feed_d];
        __atomic_store_n(&e->tag, cr_feed_key(r, d), __ATOMIC_RELEASE);
    }
    /* Commit: from here on the descriptor and its block belong to this acceptor. */
    __atomic_store_n(&t->state, CR_TASK_FILLING, __ATOMIC_RELEASE);

    bool small = s->len <= 4096;
    if (small) {
        /* Small payloads are copied under the lock: one lock round trip. */
        if (s->len)
            memcpy(r->arena + off, s->payload, s->len);
    } else {
        cr_unlock(sh);
        memcpy(r->arena + off, s->payload, s->len);
        cr_lock(sh, me);
    }
    t->enqueue_ns = cr_now_ns();
    cr_task_push_locked(r, d);
    sh->submitted++;
    bool wake = cr_task_wake_needed_locked(sh);
    cr_unlock(sh);
    if (wake)
        cr_task_wake(r);
    *dp = d;
    return CR_OK;
}

int cr_result_take(cr_region_t *r, unsigned ai, uint32_t *out, unsigned n, int timeout_ms)
{
    cr_region_sh_t *sh = r->sh;
    cr_acceptor_sh_t *a = &r->acceptors[ai];
    uint32_t me = cr_self();
    uint32_t *ring = cr_result_ring(r, ai);
    unsigned got = 0;
    bool waited = false, spun = false;

    cr_lock(sh, me);
    for (;;) {
        while (got < n && a->head != a->tail) {
            uint32_t d = ring[a->head & r->ring_mask];
            CR_TEST_POINT(10);
            a->head++;
            if (r->tasks[d].acceptor_pid != (int32_t)me) {
                /* Submitted by an earlier acceptor in this slot: nobody waits. */
                cr_desc_free_locked(r, d);
                continue;
            }
            __atomic_store_n(&r->tasks[d].state, CR_TASK_DELIVERED, __ATOMIC_RELEASE);
            out[got++] = d;
        }
        if (got > 0 || timeout_ms == 0 || waited)
            break;
        /* A wake sent before we got here (its bump of the futex would be in
         * the value we wait on, and lost): return now. */
        if (__atomic_exchange_n(&a->kicked, 0, __ATOMIC_ACQ_REL))
            break;
        if (!spun && cr_spin_ns) { /* queue_spin_us = 0: no unlock and relock */
            spun = true;
            cr_unlock(sh);
            cr_spin_for(&a->head, &a->tail);
            cr_lock(sh, me);
            continue;
        }
        uint32_t val = __atomic_load_n(&a->futex, __ATOMIC_ACQUIRE);
        a->sleeping = 1;
        cr_unlock(sh);
        cr_futex_wait(&a->futex, val, timeout_ms);
        cr_lock(sh, me);
        a->sleeping = 0;
        waited = true;
    }
    a->results += got;
    cr_unlock(sh);
    return (int)got;
}

void cr_result_wake(cr_region_t *r, unsigned a)
{
    __atomic_store_n(&r->acceptors[a].kicked, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&r->acceptors[a].futex, 1, __ATOMIC_RELEASE);
    cr_acceptor_wake(r, a);
}

void cr_task_cancel(cr_region_t *r, uint32_t d)
{
    __atomic_or_fetch(&r->tasks[d].flags, CR_TASK_CANCELLED, __ATOMIC_RELEASE);
}

void cr_task_release(cr_region_t *r, uint32_t d)
{
    cr_region_sh_t *sh = r->sh;
    cr_lock(sh, cr_self());
    cr_desc_free_locked(r, d);
    cr_unlock(sh);
}

void cr_task_error_text(cr_region_t *r, uint32_t d, const char *handler_name, char *buf,
                        size_t len)
{
    cr_task_sh_t *t = &r->tasks[d];
    uint32_t flags = __atomic_load_n(&t->flags, __ATOMIC_ACQUIRE);
    const char *h = handler_name ? handler_name : "?";

    if (flags & CR_TASK_WORKER_DIED) {
        char how[64];
        cr_wait_status_text(t->wstatus, how, sizeof(how));
        snprintf(buf, len, "worker %u (pid %d) %s while running task %" PRIu64
                 " (handler %s), attempt %u of %u; see task_retries", t->worker,
                 (int)t->worker_pid, how, t->id, h, t->attempt + 1u, t->attempt + 1u);
    } else if (flags & CR_TASK_TIMED_OUT) {
        snprintf(buf, len, "task %" PRIu64 " (handler %s) ran longer than task_timeout_ms; "
                 "worker %u (pid %d) was killed and replaced", t->id, h, t->worker,
                 (int)t->worker_pid);
    } else if (flags & CR_TASK_NO_ROOM) {
        snprintf(buf, len, "task %" PRIu64 " (handler %s): its output of %u bytes did not "
                 "fit in the payload arena; raise shm_size", t->id, h, t->out_wanted);
    } else if (flags & CR_TASK_EXPIRED) {
        snprintf(buf, len, "task %" PRIu64 " (handler %s) waited %" PRIu64 " ms in the queue "
                 "and its deadline passed; it was not run (add workers or raise the deadline)",
                 t->id, h, (t->end_ns - t->enqueue_ns) / 1000000u);
    } else if (t->result_len > 0) {
        size_t n = t->result_len < len - 1 ? t->result_len : len - 1;
        memcpy(buf, cr_task_result(r, d), n);
        buf[n] = '\0';
    } else {
        snprintf(buf, len, "task %" PRIu64 " (handler %s) failed with status %d", t->id, h,
                 t->code);
    }
}

/* --- updates feed ------------------------------------------------------------ */

int cr_feed_reserve(cr_region_t *feed, uint32_t *fdp)
{
    cr_region_sh_t *sh = feed->sh;
    uint32_t me = cr_self();
    cr_lock(sh, me);
    if (!cr_desc_available(feed)) {
        sh->rejected_full++;
        cr_unlock(sh);
        return CR_AGAIN;
    }
    uint32_t fd = cr_desc_alloc_locked(feed);
    cr_task_sh_t *e = &feed->tasks[fd];
    e->flags = 0;
    e->next = CR_NONE;
    e->tag = 0; /* stamped by cr_task_submit */
    e->payload_off = CR_NONE64;
    e->payload_len = 0;
    e->result_off = CR_NONE64;
    e->result_len = 0;
    e->acceptor = 0;
    e->acceptor_pid = (int32_t)me;
    e->worker_pid = 0;
    e->feed_d = CR_NONE;
    __atomic_store_n(&e->state, CR_TASK_FILLING, __ATOMIC_RELEASE);
    sh->submitted++;
    cr_unlock(sh);
    *fdp = fd;
    return CR_OK;
}

void cr_feed_unreserve(cr_region_t *feed, uint32_t fd)
{
    cr_region_sh_t *sh = feed->sh;
    cr_lock(sh, cr_self());
    if (feed->tasks[fd].state == CR_TASK_FILLING)
        cr_desc_free_locked(feed, fd);
    cr_unlock(sh);
}

void cr_feed_requeue(cr_region_t *feed, uint32_t d)
{
    cr_region_sh_t *sh = feed->sh;
    cr_lock(sh, cr_self());
    feed->tasks[d].acceptor_pid = 0;
    cr_task_push_locked(feed, d);
    bool wake = cr_task_wake_needed_locked(sh);
    cr_unlock(sh);
    if (wake)
        cr_futex_wake(&sh->task_futex, 1);
}

/* Fill reserved entry fd with the result of task t, if it is still the
 * reservation of that task (key); then it waits in the feed for a subscriber.
 * Returns false if it was filled already (or is not that task's). */
static bool cr_feed_fill(cr_region_t *feed, uint32_t fd, uint64_t key, const cr_task_sh_t *t,
                         int code, uint32_t flags, const void *out, size_t len)
{
    cr_region_sh_t *sh = feed->sh;
    cr_task_sh_t *e = &feed->tasks[fd];
    uint32_t me = cr_self();
    uint64_t off = CR_NONE64;
    uint8_t order = 0;

    cr_lock(sh, me);
    if (fd >= feed->ntasks || e->state != CR_TASK_FILLING || e->tag != key) {
        cr_unlock(sh);
        return false;
    }
    if (len > 0) {
        off = cr_arena_alloc(feed, len, &order);
        if (off == CR_NONE64) {
            flags |= CR_TASK_NO_ROOM;
            e->out_wanted = (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
            code = CR_STATUS_RESOURCE_EXHAUSTED;
            len = 0;
        } else {
            e->result_order = order;
            e->result_off = off;
            memcpy(feed->arena + off, out, len); /* under the lock: rare and bounded */
        }
    }
    e->id = t->id;
    e->handler = t->handler;
    e->code = code;
    e->flags = flags & ~CR_TASK_CANCELLED;
    e->worker = t->worker;
    e->attempt = t->attempt;
    e->wstatus = t->wstatus;
    e->enqueue_ns = t->enqueue_ns;
    e->start_ns = t->start_ns;
    e->end_ns = t->end_ns;
    e->result_len = (uint32_t)len;
    e->acceptor_pid = 0; /* while taken: the subscriber's pid */
    e->worker_pid = t->worker_pid;
    cr_task_push_locked(feed, fd);
    sh->completed++;
    bool wake = cr_task_wake_needed_locked(sh);
    cr_unlock(sh);
    if (wake)
        cr_futex_wake(&sh->task_futex, 1);
    return true;
}

void cr_feed_reap(cr_region_t *feed, pid_t pid, int row, cr_region_t *const *regions,
                  unsigned nregions)
{
    /* Entries it held as a subscriber go back to the feed. */
    cr_region_reap(feed, pid, CR_ROLE_WORKER, row >= 0 ? (unsigned)row : CR_WORKER_SLOTS,
                   0, 0, false);

    /* Reservations it made: kept if a task owns them (the task fills them
     * later), freed otherwise. The regions' own reap ran first, so a task it
     * was still filling is gone already. */
    cr_region_sh_t *sh = feed->sh;
    cr_master_lock(feed, pid);
    for (uint32_t fd = 0; fd < sh->fresh; fd++) {
        cr_task_sh_t *e = &feed->tasks[fd];
        if (e->state != CR_TASK_FILLING || e->acceptor_pid != pid)
            continue;
        bool owned = false;
        uint64_t key = __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE);
        for (unsigned i = 0; i < nregions && !owned && key; i++) {
            cr_region_t *r = regions[i];
            uint32_t d = (uint32_t)key;
            if ((key >> 32) != r->sh->generation || d >= r->ntasks)
                continue;
            owned = __atomic_load_n(&r->tasks[d].state, __ATOMIC_ACQUIRE) != CR_TASK_FREE &&
                    r->tasks[d].feed_d == fd;
        }
        if (owned)
            e->acceptor_pid = 0; /* the task's now */
        else
            cr_desc_free_locked(feed, fd);
    }
    cr_unlock(sh);
}

/* --- worker ------------------------------------------------------------------ */

void cr_worker_attach(cr_region_t *r, unsigned w, unsigned number)
{
    cr_region_sh_t *sh = r->sh;
    cr_lock(sh, cr_self());
    r->workers[w].number = number;
    r->workers[w].pid = (int32_t)cr_self();
    r->workers[w].state = CR_WORKER_IDLE;
    r->workers[w].sleeping = 0;
    r->workers[w].task = CR_NONE;
    cr_unlock(sh);
}

/* Take the oldest queued task for worker slot ws, if any (lock held). */
static bool cr_task_take_locked(cr_region_t *r, cr_worker_sh_t *ws, uint32_t me, uint32_t *dp)
{
    cr_region_sh_t *sh = r->sh;
    while (sh->task_head != sh->task_tail) {
        uint32_t d = r->task_ring[sh->task_head & r->ring_mask];
        cr_task_sh_t *t = &r->tasks[d];
        if (__atomic_load_n(&t->flags, __ATOMIC_ACQUIRE) & CR_TASK_CANCELLED) {
            sh->task_head++;
            cr_desc_free_locked(r, d);
            continue;
        }
        ws->start_ns = cr_now_ns();
        if (r->is_feed) {
            /* A feed entry keeps the worker, pid and times of the task it
             * reports; its subscriber is recorded as its acceptor. */
            t->acceptor_pid = (int32_t)me;
        } else {
            t->worker_pid = (int32_t)me;
            t->worker = (uint16_t)ws->number;
            t->start_ns = ws->start_ns;
        }
        ws->task = d;
        ws->state = CR_WORKER_BUSY;
        __atomic_store_n(&t->state, CR_TASK_RUNNING, __ATOMIC_RELEASE);
        CR_TEST_POINT(9);
        sh->task_head++; /* commit */
        *dp = d;
        return true;
    }
    return false;
}

int cr_task_take(cr_region_t *r, unsigned w, uint32_t *dp, int timeout_ms)
{
    cr_region_sh_t *sh = r->sh;
    cr_worker_sh_t *ws = &r->workers[w];
    uint32_t me = cr_self();
    bool waited = false, spun = false;

    cr_lock(sh, me);
    for (;;) {
        if (cr_task_take_locked(r, ws, me, dp)) {
            cr_unlock(sh);
            return CR_OK;
        }
        if (timeout_ms == 0 || waited)
            break;
        if (!spun && cr_spin_ns) { /* queue_spin_us = 0: no unlock and relock */
            spun = true;
            cr_unlock(sh);
            cr_spin_for(&sh->task_head, &sh->task_tail);
            cr_lock(sh, me);
            continue;
        }
        uint32_t val = __atomic_load_n(&sh->task_futex, __ATOMIC_ACQUIRE);
        ws->sleeping = 1;
        sh->task_sleepers++;
        cr_unlock(sh);
        int rc = cr_futex_wait(&sh->task_futex, val, timeout_ms);
        cr_lock(sh, me);
        ws->sleeping = 0;
        cr_task_sleeper_back_locked(sh);
        /* Woken: look once more. A timeout or a signal returns to the caller. */
        waited = rc != 0;
    }
    cr_unlock(sh);
    return CR_TIMEDOUT;
}

void cr_task_finish(cr_region_t *r, unsigned w, uint32_t d, int code, const void *out,
                    size_t len)
{
    cr_task_finish_next(r, w, d, code, out, len, NULL);
}

int cr_task_finish_next(cr_region_t *r, unsigned w, uint32_t d, int code, const void *out,
                        size_t len, uint32_t *next)
{
    cr_region_sh_t *sh = r->sh;
    cr_task_sh_t *t = &r->tasks[d];
    cr_worker_sh_t *ws = &r->workers[w];
    uint32_t me = cr_self();
    uint64_t off = CR_NONE64;
    uint8_t order = 0;

    if (t->feed_d != CR_NONE) {
        /* A Submit task: the result goes to the updates feed, then the task
         * is freed. Dying in between is settled by the master (the entry is
         * filled already, so it is not filled twice). */
        t->end_ns = cr_now_ns();
        if (r->feed)
            cr_feed_fill(r->feed, t->feed_d, cr_feed_key(r, d), t, code, t->flags, out, len);
        cr_lock(sh, me);
        ws->task = CR_NONE;
        ws->state = CR_WORKER_IDLE;
        ws->tasks_done++;
        sh->completed++;
        cr_desc_free_locked(r, d);
        bool took = next && cr_task_take_locked(r, ws, me, next);
        cr_unlock(sh);
        return took ? CR_OK : CR_TIMEDOUT;
    }

    cr_lock(sh, me);
    if (len > 0 && !(__atomic_load_n(&t->flags, __ATOMIC_ACQUIRE) & CR_TASK_CANCELLED)) {
        off = cr_arena_alloc(r, len, &order);
        if (off == CR_NONE64) {
            __atomic_or_fetch(&t->flags, CR_TASK_NO_ROOM, __ATOMIC_RELEASE);
            t->out_wanted = (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
            code = CR_STATUS_RESOURCE_EXHAUSTED;
            len = 0;
        } else {
            CR_TEST_POINT(11);
            t->result_order = order;
            t->result_off = off; /* the block now belongs to d */
        }
    }
    if (len > 4096 && off != CR_NONE64) {
        cr_unlock(sh);
        CR_TEST_POINT(12); /* outside the lock */
        memcpy(r->arena + off, out, len);
        cr_lock(sh, me);
    } else if (off != CR_NONE64) {
        memcpy(r->arena + off, out, len);
    }
    t->result_len = off != CR_NONE64 ? (uint32_t)len : 0;
    t->code = code;
    t->end_ns = cr_now_ns();
    ws->task = CR_NONE;
    ws->state = CR_WORKER_IDLE;
    ws->tasks_done++;
    bool wake = false;
    if (__atomic_load_n(&t->flags, __ATOMIC_ACQUIRE) & CR_TASK_CANCELLED)
        cr_desc_free_locked(r, d);
    else
        wake = cr_result_push_locked(r, d);
    unsigned acc = t->acceptor;
    bool took = next && cr_task_take_locked(r, ws, me, next);
    cr_unlock(sh);
    if (wake)
        cr_acceptor_wake(r, acc);
    return took ? CR_OK : CR_TIMEDOUT;
}
