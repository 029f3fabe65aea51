/* fuzz-shm.c: libFuzzer target for the shared region (src/shm.h): an
 * operation script in, run in one process on a small region and its updates
 * feed. Processes are played by switching the pid shm.c believes is ours
 * (cr_self_pid: shm.c is included, as t/unit/test_shm.c does): acceptors
 * submit and take results, workers take and finish, the master reaps.
 *
 * Script: 4 header bytes (queue capacity, acceptors, arena and largest block,
 * retries and feed capacity), then operations of one opcode byte and argument
 * bytes; reads past the end give 0. At the end every queued task is run and
 * every result taken and released (the drain).
 *
 * Invariants checked after every operation (abort on violation):
 *   - structure: every descriptor in one state, the free list holds exactly
 *     the FREE ones, no arena block used twice, free lists + used blocks ==
 *     arena size, the task ring and result rings hold exactly the QUEUED and
 *     DONE descriptors; cr_region_stats agrees (nothing lost, counts add up);
 *   - a task is taken only while queued (never twice at once), with the
 *     payload it was submitted with;
 *   - a result comes back only to its own acceptor (or feed subscriber), with
 *     the output its worker wrote (or the status the death or the arena
 *     explains), at most once;
 * and after the drain: the region and the feed are idle (every descriptor and
 * arena byte free), and every task that was not cancelled and whose acceptor
 * did not die came back exactly once (a Submit task always: through the feed). */
#include "../../src/shm.c"

#include "fuzz.h"

#include <signal.h>

#define MAX_ENTS 512   /* tasks per script */
#define MAX_OPS 400    /* operations per script */
#define NWORKERS 3
#define MAX_ACC 3
#define SUB_ROW 100    /* feed worker row of acceptor a's subscriber: SUB_ROW + a */

typedef enum {
    E_QUEUED = 1, /* in the task queue (or a retry) */
    E_RUNNING,    /* taken by worker `w` */
    E_DONE,       /* in its acceptor's result ring */
    E_HELD,       /* taken by its acceptor, not yet released */
    E_FEED,       /* its result waits in the feed (entry fd) */
    E_FEED_HELD,  /* a subscriber holds its feed entry */
    E_GONE,       /* freed: released, dropped or cancelled */
} ent_state_t;

typedef struct {
    uint64_t id;
    uint32_t d, fd;       /* descriptor; feed entry (CR_NONE: a call's task) */
    unsigned acc;         /* acceptor slot */
    pid_t acc_pid;        /* its incarnation */
    unsigned w;           /* worker running it */
    unsigned holder;      /* subscriber (acceptor slot) holding the feed entry */
    ent_state_t st;
    bool cancelled, orphan; /* cancelled by the call, or its acceptor died */
    unsigned attempts;    /* retries left to the reap */
    size_t plen;          /* payload length */
    int code;             /* result expected, once finished */
    size_t olen;
    bool died;            /* its worker died: code is from the reap */
    unsigned received;    /* results taken by its acceptor / subscribers */
} ent_t;

static struct {
    cr_region_t *r, *feed;
    ent_t e[MAX_ENTS];
    unsigned n;
    pid_t acc_pid[MAX_ACC], worker_pid[NWORKERS], master_pid, next_pid;
    unsigned nacc, max_retries;
    uint8_t buf[1 << 16];
} S;

static void as(pid_t pid)
{
    cr_self_pid = (uint32_t)pid;
}

/* Payload and output bytes: a pattern of the task id, checked on arrival. */
static uint8_t pat(uint64_t id, size_t i, unsigned salt)
{
    return (uint8_t)((id * 131u + i * 7u + salt) ^ (i >> 8));
}

static void fill(uint64_t id, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i++)
        S.buf[i] = pat(id, i, salt);
}

static bool same(const uint8_t *p, uint64_t id, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(id, i, salt))
            return false;
    return true;
}

static ent_t *by_desc(cr_region_t *r, uint32_t d, bool feed)
{
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        if (x->st == E_GONE)
            continue;
        if (feed ? (x->fd == d && (x->st == E_FEED || x->st == E_FEED_HELD))
                 : (x->d == d && x->st <= E_HELD))
            return x;
    }
    (void)r;
    return NULL;
}

/* --- structure ------------------------------------------------------------------ */

static void check_region(cr_region_t *r, const char *which)
{
    cr_region_sh_t *sh = r->sh;
    size_t nmin = sh->arena_size >> CR_ARENA_MIN_ORDER;
    uint8_t *mark = calloc(nmin + 1, 1);
    uint32_t nfree = 0, walk = 0, nq = 0, nd[MAX_ACC] = {0}, queued = 0;
    uint64_t used = 0, fsum = 0;
    cr_region_stats_t st;

    FUZZ_CHECK(mark != NULL, "calloc");
    FUZZ_CHECK(sh->lock == 0, "%s: lock held (%u) between operations", which, sh->lock);
    for (uint32_t d = 0; d < r->ntasks; d++) {
        cr_task_sh_t *t = &r->tasks[d];
        FUZZ_CHECK(t->state <= CR_TASK_DELIVERED, "%s: descriptor %u state %u", which, d,
                   t->state);
        if (t->state == CR_TASK_FREE) {
            nfree++;
            continue;
        }
        queued += t->state == CR_TASK_QUEUED;
        if (t->state == CR_TASK_DONE) {
            FUZZ_CHECK(t->acceptor < r->nacceptors, "%s: DONE for acceptor %u", which,
                       t->acceptor);
            if (t->acceptor < MAX_ACC)
                nd[t->acceptor]++;
        }
        uint64_t offs[2] = {t->payload_off, t->result_off};
        uint8_t ords[2] = {t->payload_order, t->result_order};
        for (int i = 0; i < 2; i++) {
            if (offs[i] == CR_NONE64)
                continue;
            FUZZ_CHECK(cr_block_valid(r, offs[i], ords[i]), "%s: descriptor %u block %" PRIu64
                       " order %u invalid", which, d, offs[i], ords[i]);
            for (uint64_t k = 0; k < cr_blk(ords[i]) >> CR_ARENA_MIN_ORDER; k++)
                FUZZ_CHECK(mark[(offs[i] >> CR_ARENA_MIN_ORDER) + k]++ == 0,
                           "%s: block at %" PRIu64 " used twice", which, offs[i]);
            used += cr_blk(ords[i]);
        }
    }
    FUZZ_CHECK(nfree == sh->free_count, "%s: free_count %u, %u free", which, sh->free_count,
               nfree);
    for (uint32_t d = sh->free_head; d != CR_NONE; d = r->tasks[d].next) {
        FUZZ_CHECK(d < r->ntasks && r->tasks[d].state == CR_TASK_FREE && ++walk <= r->ntasks,
                   "%s: descriptor free list broken at %u", which, d);
    }
    /* descriptors never used yet ([fresh, ntasks)) are free but on no list */
    FUZZ_CHECK(sh->fresh <= r->ntasks && walk + (r->ntasks - sh->fresh) == nfree,
               "%s: free list %u + %u fresh, table %u", which, walk, r->ntasks - sh->fresh,
               nfree);
    for (unsigned o = sh->min_order; o <= sh->max_order; o++) {
        for (uint64_t off = sh->free_heads[o]; off != CR_NONE64; off = cr_fb(r, off)->next) {
            FUZZ_CHECK(cr_block_valid(r, off, o) &&
                           r->free_order[off >> CR_ARENA_MIN_ORDER] == o + 1,
                       "%s: free block %" PRIu64 " order %u", which, off, o);
            for (uint64_t k = 0; k < cr_blk(o) >> CR_ARENA_MIN_ORDER; k++)
                FUZZ_CHECK(mark[(off >> CR_ARENA_MIN_ORDER) + k]++ == 0,
                           "%s: free block %" PRIu64 " overlaps", which, off);
            fsum += cr_blk(o);
        }
    }
    FUZZ_CHECK(fsum == sh->arena_free && fsum + used == sh->arena_size,
               "%s: arena free lists %" PRIu64 ", counter %" PRIu64 ", used %" PRIu64
               ", size %" PRIu64, which, fsum, sh->arena_free, used, sh->arena_size);
    for (uint64_t p = sh->task_head; p != sh->task_tail; p++, nq++)
        FUZZ_CHECK(nq < r->ntasks &&
                       r->tasks[r->task_ring[p & r->ring_mask]].state == CR_TASK_QUEUED,
                   "%s: task ring position %" PRIu64 " holds a non-queued descriptor", which, p);
    FUZZ_CHECK(nq == queued, "%s: task ring %u, %u queued", which, nq, queued);
    for (unsigned a = 0; a < r->nacceptors && a < MAX_ACC; a++) {
        cr_acceptor_sh_t *as_ = &r->acceptors[a];
        FUZZ_CHECK(as_->tail - as_->head == nd[a], "%s: result ring %u holds %" PRIu64
                   ", %u DONE", which, a, as_->tail - as_->head, nd[a]);
        for (uint64_t p = as_->head; p != as_->tail; p++) {
            uint32_t d = cr_result_ring(r, a)[p & r->ring_mask];
            FUZZ_CHECK(r->tasks[d].state == CR_TASK_DONE && r->tasks[d].acceptor == a,
                       "%s: result ring %u holds descriptor %u", which, a, d);
        }
    }
    cr_region_stats(r, &st);
    FUZZ_CHECK(st.tasks_free + st.queued + st.running + st.done <= st.tasks_total &&
                   st.tasks_free == nfree && st.arena_free == fsum,
               "%s: stats free %u queued %u running %u done %u of %u", which, st.tasks_free,
               st.queued, st.running, st.done, st.tasks_total);
    free(mark);
}

/* The model agrees with the table. */
static void check_model(void)
{
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        uint32_t st;
        switch (x->st) {
        case E_QUEUED:
        case E_RUNNING:
        case E_DONE:
        case E_HELD:
            st = S.r->tasks[x->d].state;
            FUZZ_CHECK(S.r->tasks[x->d].id == x->id, "task %" PRIu64 ": descriptor %u holds %"
                       PRIu64, x->id, x->d, S.r->tasks[x->d].id);
            FUZZ_CHECK(st == (x->st == E_QUEUED    ? CR_TASK_QUEUED
                              : x->st == E_RUNNING ? CR_TASK_RUNNING
                              : x->st == E_DONE    ? CR_TASK_DONE
                                                   : CR_TASK_DELIVERED),
                       "task %" PRIu64 " (descriptor %u): state %u, expected %d", x->id, x->d,
                       st, x->st);
            break;
        case E_FEED:
        case E_FEED_HELD:
            st = S.feed->tasks[x->fd].state;
            FUZZ_CHECK(S.feed->tasks[x->fd].id == x->id && st == (x->st == E_FEED
                                                                       ? CR_TASK_QUEUED
                                                                       : CR_TASK_RUNNING),
                       "task %" PRIu64 ": feed entry %u state %u id %" PRIu64, x->id, x->fd,
                       st, S.feed->tasks[x->fd].id);
            break;
        default:
            break;
        }
    }
}

/* --- operations ------------------------------------------------------------------ */

static void op_submit(fuzz_in_t *in, bool submit_call)
{
    unsigned a = fuzz_u8(in) % S.nacc;
    size_t len = fuzz_u16(in) % (S.r->sh->arena_size + 128);
    ent_t *x;
    cr_submit_t s;
    uint32_t d, fd = CR_NONE;
    int rc;

    if (S.n == MAX_ENTS)
        return;
    x = &S.e[S.n];
    memset(x, 0, sizeof(*x));
    x->id = 1000 + S.n;
    as(S.acc_pid[a]);
    if (submit_call && cr_feed_reserve(S.feed, &fd) != CR_OK)
        return;
    fill(x->id, len, 1);
    s = (cr_submit_t){.id = x->id, .tag = x->id, .handler = 0, .acceptor = a,
                      .feed_d = fd, .payload = S.buf, .len = len};
    rc = cr_task_submit(S.r, &s, &d);
    if (rc != CR_OK) {
        FUZZ_CHECK(rc == CR_AGAIN, "cr_task_submit: %d", rc);
        if (fd != CR_NONE)
            cr_feed_unreserve(S.feed, fd);
        return;
    }
    FUZZ_CHECK(d < S.r->ntasks && by_desc(S.r, d, false) == NULL,
               "descriptor %u given twice", d);
    x->d = d;
    x->fd = fd;
    x->acc = a;
    x->acc_pid = S.acc_pid[a];
    x->plen = len;
    x->st = E_QUEUED;
    x->attempts = S.max_retries;
    S.n++;
}

/* Cancelled tasks a take skipped are freed on the way. */
static void sync_skipped(void)
{
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        if (x->st == E_QUEUED && x->cancelled && S.r->tasks[x->d].state == CR_TASK_FREE)
            x->st = E_GONE;
    }
}

static void op_take(fuzz_in_t *in)
{
    unsigned w = fuzz_u8(in) % NWORKERS;
    uint32_t d;
    ent_t *x;

    if (S.r->workers[w].task != CR_NONE) /* one task at a time, as a worker */
        return;
    as(S.worker_pid[w]);
    if (cr_task_take(S.r, w, &d, 0) != CR_OK) {
        sync_skipped();
        return;
    }
    sync_skipped();
    x = by_desc(S.r, d, false);
    FUZZ_CHECK(x != NULL, "took descriptor %u that nobody submitted", d);
    FUZZ_CHECK(x->st == E_QUEUED && !x->cancelled,
               "took task %" PRIu64 " in state %d (cancelled %d)", x->id, x->st, x->cancelled);
    FUZZ_CHECK(S.r->tasks[d].payload_len == x->plen &&
                   same(cr_task_payload(S.r, d), x->id, x->plen, 1),
               "task %" PRIu64 ": payload changed", x->id);
    x->st = E_RUNNING;
    x->w = w;
}

/* One byte always, so that a script reads the same whatever the state. */
static ent_t *pick(fuzz_in_t *in, bool (*want)(const ent_t *))
{
    unsigned k = 0, c = fuzz_u8(in), i;

    for (i = 0; i < S.n; i++)
        k += want(&S.e[i]);
    if (k == 0)
        return NULL;
    c %= k;
    for (i = 0; i < S.n; i++)
        if (want(&S.e[i]) && c-- == 0)
            return &S.e[i];
    return NULL;
}

static bool is_running(const ent_t *x)
{
    return x->st == E_RUNNING;
}
static bool is_held(const ent_t *x)
{
    return x->st == E_HELD;
}
static bool is_live_call(const ent_t *x)
{
    return x->fd == CR_NONE && x->st >= E_QUEUED && x->st <= E_HELD;
}

static void op_finish(fuzz_in_t *in)
{
    ent_t *x = pick(in, is_running);
    uint8_t how = fuzz_u8(in);
    size_t len = fuzz_u16(in) % (S.r->sh->arena_size + 128);
    int code = (how & 1) ? CR_STATUS_INVALID_ARGUMENT : CR_STATUS_OK;

    if (x == NULL)
        return;
    fill(x->id, len, 2);
    as(S.worker_pid[x->w]);
    cr_task_finish(S.r, x->w, x->d, code, S.buf, len);
    x->code = code;
    x->olen = len;
    if (x->fd != CR_NONE)
        x->st = E_FEED;
    else if (x->cancelled)
        x->st = E_GONE;
    else
        x->st = E_DONE;
}

/* What a result must say: the worker's output, or why it is not there. */
static void check_result(cr_region_t *r, uint32_t d, ent_t *x)
{
    cr_task_sh_t *t = &r->tasks[d];

    FUZZ_CHECK(t->id == x->id, "result of %" PRIu64 " for %" PRIu64, t->id, x->id);
    if (x->died) {
        FUZZ_CHECK(t->code == x->code && t->result_len == 0, "task %" PRIu64
                   ": a dead worker's result has code %d, %u bytes", x->id, t->code,
                   t->result_len);
        return;
    }
    if (t->flags & CR_TASK_NO_ROOM) {
        FUZZ_CHECK(t->code == CR_STATUS_RESOURCE_EXHAUSTED && t->result_len == 0 &&
                       t->out_wanted == x->olen,
                   "task %" PRIu64 ": no room, but code %d", x->id, t->code);
        return;
    }
    FUZZ_CHECK(t->code == x->code && t->result_len == x->olen &&
                   same(cr_task_result(r, d), x->id, x->olen, 2),
               "task %" PRIu64 ": result code %d len %u, expected %d len %zu", x->id, t->code,
               t->result_len, x->code, x->olen);
}

static void op_result_take(fuzz_in_t *in)
{
    unsigned a = fuzz_u8(in) % S.nacc, n = 1 + fuzz_u8(in) % 4;
    uint32_t out[4];
    int got;

    as(S.acc_pid[a]);
    got = cr_result_take(S.r, a, out, n, 0);
    FUZZ_CHECK(got >= 0 && (unsigned)got <= n, "cr_result_take: %d of %u", got, n);
    for (int i = 0; i < got; i++) {
        ent_t *x = by_desc(S.r, out[i], false);
        FUZZ_CHECK(x != NULL, "result for descriptor %u that nobody submitted", out[i]);
        FUZZ_CHECK(x->st == E_DONE && x->acc == a && x->acc_pid == S.acc_pid[a],
                   "acceptor %u got task %" PRIu64 " (state %d, acceptor %u)", a, x->id, x->st,
                   x->acc);
        check_result(S.r, out[i], x);
        x->received++;
        x->st = E_HELD;
    }
}

static void op_release(fuzz_in_t *in)
{
    ent_t *x = pick(in, is_held);

    if (x == NULL)
        return;
    as(S.acc_pid[x->acc]);
    cr_task_release(S.r, x->d);
    x->st = E_GONE;
}

static void op_cancel(fuzz_in_t *in)
{
    ent_t *x = pick(in, is_live_call);

    if (x == NULL)
        return;
    as(S.acc_pid[x->acc]);
    cr_task_cancel(S.r, x->d);
    x->cancelled = true;
}

/* A subscriber (Updates) of acceptor a takes a feed entry; sends it (release)
 * or fails to (requeue). */
static void op_subscribe(fuzz_in_t *in)
{
    unsigned a = fuzz_u8(in) % S.nacc, row = SUB_ROW + a;
    uint8_t how = fuzz_u8(in);
    uint32_t e;
    ent_t *x;

    as(S.acc_pid[a]);
    if (S.feed->workers[row].task != CR_NONE) {
        /* finish the one in hand first */
        e = S.feed->workers[row].task;
        x = by_desc(S.feed, e, true);
        FUZZ_CHECK(x != NULL && x->st == E_FEED_HELD, "feed entry %u held but unknown", e);
        S.feed->workers[row].task = CR_NONE;
        S.feed->workers[row].state = CR_WORKER_IDLE;
        if (how & 1) {
            cr_feed_requeue(S.feed, e);
            x->st = E_FEED;
        } else {
            cr_task_release(S.feed, e);
            x->st = E_GONE;
        }
        return;
    }
    if (cr_task_take(S.feed, row, &e, 0) != CR_OK)
        return;
    x = by_desc(S.feed, e, true);
    FUZZ_CHECK(x != NULL && x->st == E_FEED, "feed entry %u taken in the wrong state", e);
    check_result(S.feed, e, x);
    x->received++;
    x->st = E_FEED_HELD;
    x->holder = a;
}

static void op_reap_worker(fuzz_in_t *in)
{
    unsigned w = fuzz_u8(in) % NWORKERS;
    bool timed_out = fuzz_u8(in) & 1;
    pid_t dead = S.worker_pid[w];

    as(S.master_pid);
    cr_region_reap(S.r, dead, CR_ROLE_WORKER, w, SIGKILL, S.max_retries, timed_out);
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        if (x->st != E_RUNNING || x->w != w)
            continue;
        if (x->cancelled) {
            x->st = E_GONE;
        } else if (!timed_out && x->attempts > 0) {
            x->attempts--;
            x->st = E_QUEUED;
        } else {
            x->died = true;
            x->code = timed_out ? CR_STATUS_DEADLINE_EXCEEDED : CR_STATUS_ABORTED;
            x->st = x->fd != CR_NONE ? E_FEED : E_DONE;
        }
    }
    S.worker_pid[w] = S.next_pid++;
    as(S.worker_pid[w]);
    cr_worker_attach(S.r, w, w);
}

static void op_reap_acceptor(fuzz_in_t *in)
{
    unsigned a = fuzz_u8(in) % S.nacc;
    pid_t dead = S.acc_pid[a];
    cr_region_t *regions[1] = {S.r};

    as(S.master_pid);
    cr_region_reap(S.r, dead, CR_ROLE_ACCEPTOR, a, SIGKILL, S.max_retries, false);
    cr_feed_reap(S.feed, dead, (int)(SUB_ROW + a), regions, 1);
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        if (x->st == E_FEED_HELD && x->holder == a)
            x->st = E_FEED; /* back to the feed for another subscriber */
        if (x->acc != a || x->acc_pid != dead || x->fd != CR_NONE)
            continue; /* a Submit task does not need its acceptor */
        x->orphan = true;
        if (x->st == E_QUEUED || x->st == E_RUNNING)
            x->cancelled = true;
        else if (x->st == E_DONE || x->st == E_HELD)
            x->st = E_GONE;
    }
    S.acc_pid[a] = S.next_pid++;
    S.r->acceptors[a].pid = S.acc_pid[a]; /* acceptor.c does this at start */
    S.feed->workers[SUB_ROW + a].task = CR_NONE;
    as(S.acc_pid[a]);
    cr_worker_attach(S.feed, SUB_ROW + a, a);
}

static void check_all(void)
{
    check_region(S.r, "region");
    check_region(S.feed, "feed");
    check_model();
}

/* Run everything to the end: no task may stay behind. */
static void drain(void)
{
    for (unsigned w = 0; w < NWORKERS; w++) {
        while (S.r->workers[w].task != CR_NONE) {
            ent_t *x = by_desc(S.r, S.r->workers[w].task, false);
            FUZZ_CHECK(x != NULL && x->st == E_RUNNING, "worker %u runs an unknown task", w);
            as(S.worker_pid[w]);
            cr_task_finish(S.r, w, x->d, CR_STATUS_OK, "", 0);
            x->code = CR_STATUS_OK;
            x->olen = 0;
            x->st = x->fd != CR_NONE ? E_FEED : x->cancelled ? E_GONE : E_DONE;
        }
    }
    for (unsigned round = 0; round < MAX_ENTS * 4; round++) {
        bool busy = false;
        uint32_t d;
        as(S.worker_pid[0]);
        if (cr_task_take(S.r, 0, &d, 0) == CR_OK) {
            ent_t *x = by_desc(S.r, d, false);
            FUZZ_CHECK(x != NULL && x->st == E_QUEUED && !x->cancelled,
                       "drain: took descriptor %u wrongly", d);
            cr_task_finish(S.r, 0, d, CR_STATUS_OK, "", 0);
            x->code = CR_STATUS_OK;
            x->olen = 0;
            x->st = x->fd != CR_NONE ? E_FEED : E_DONE;
            busy = true;
        }
        sync_skipped();
        for (unsigned a = 0; a < S.nacc; a++) {
            uint8_t bytes[2] = {(uint8_t)a, 3};
            fuzz_in_t in = {bytes, 2};
            op_result_take(&in);
            for (unsigned i = 0; i < S.n; i++)
                if (S.e[i].st == E_HELD) {
                    as(S.acc_pid[S.e[i].acc]);
                    cr_task_release(S.r, S.e[i].d);
                    S.e[i].st = E_GONE;
                    busy = true;
                }
            /* subscribers: take and send (twice: finish the one in hand) */
            uint8_t sb[2] = {(uint8_t)a, 0};
            fuzz_in_t s1 = {sb, 2}, s2 = {sb, 2};
            unsigned gone = 0;
            for (unsigned i = 0; i < S.n; i++)
                gone += S.e[i].st == E_GONE;
            op_subscribe(&s1);
            op_subscribe(&s2);
            for (unsigned i = 0; i < S.n; i++)
                gone -= S.e[i].st == E_GONE;
            busy |= gone != 0;
        }
        check_all();
        if (!busy)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    uint8_t h0 = fuzz_u8(&in), h1 = fuzz_u8(&in), h2 = fuzz_u8(&in), h3 = fuzz_u8(&in);
    uint64_t arena = 1024u << (h2 % 5);
    cr_region_conf_t rc = {.generation = 7,
                           .queue_capacity = 1 + h0 % 16,
                           .acceptors = 1 + h1 % MAX_ACC,
                           .arena_size = arena,
                           .max_block = arena >> (h2 >> 4 & 3)};
    cr_region_conf_t fc = {.generation = 0,
                           .queue_capacity = 1 + (h3 >> 4) % 8,
                           .acceptors = 1,
                           .arena_size = 4096,
                           .max_block = 2048,
                           .feed = true};
    unsigned ops = 0;

    cr_log_level = CR_LOG_EMERG;
    memset(&S, 0, sizeof(S));
    S.master_pid = getpid();
    S.next_pid = 100000;
    S.nacc = rc.acceptors;
    S.max_retries = h3 % 3;
    as(S.master_pid);
    S.r = cr_region_create(&rc);
    S.feed = cr_region_create(&fc);
    FUZZ_CHECK(S.r != NULL && S.feed != NULL, "cr_region_create");
    S.r->feed = S.feed;
    for (unsigned a = 0; a < S.nacc; a++) {
        S.acc_pid[a] = S.next_pid++;
        S.r->acceptors[a].pid = S.acc_pid[a];
        as(S.acc_pid[a]);
        cr_worker_attach(S.feed, SUB_ROW + a, a);
    }
    for (unsigned w = 0; w < NWORKERS; w++) {
        S.worker_pid[w] = S.next_pid++;
        as(S.worker_pid[w]);
        cr_worker_attach(S.r, w, w);
    }
    check_all();

    while (in.n > 0 && ops++ < MAX_OPS) {
        switch (fuzz_u8(&in) % 11) {
        case 0:
        case 1: op_submit(&in, false); break;
        case 2: op_submit(&in, true); break;
        case 3: op_take(&in); break;
        case 4: op_finish(&in); break;
        case 5: op_result_take(&in); break;
        case 6: op_release(&in); break;
        case 7: op_cancel(&in); break;
        case 8: op_subscribe(&in); break;
        case 9: op_reap_worker(&in); break;
        case 10: op_reap_acceptor(&in); break;
        }
        check_all();
    }
    drain();

    {
        cr_region_stats_t st, fst;
        cr_region_stats(S.r, &st);
        cr_region_stats(S.feed, &fst);
        FUZZ_CHECK(st.tasks_free == st.tasks_total && st.arena_free == st.arena_size,
                   "after the drain: %u of %u descriptors free, %" PRIu64 " of %" PRIu64
                   " arena bytes", st.tasks_free, st.tasks_total, st.arena_free,
                   st.arena_size);
        FUZZ_CHECK(fst.tasks_free == fst.tasks_total && fst.arena_free == fst.arena_size,
                   "after the drain: feed %u of %u entries free", fst.tasks_free,
                   fst.tasks_total);
    }
    for (unsigned i = 0; i < S.n; i++) {
        ent_t *x = &S.e[i];
        FUZZ_CHECK(x->st == E_GONE, "task %" PRIu64 " left in state %d", x->id, x->st);
        if (x->fd != CR_NONE)
            FUZZ_CHECK(x->received >= 1, "Submit task %" PRIu64 ": no result in the feed",
                       x->id);
        else if (x->cancelled || x->orphan)
            FUZZ_CHECK(x->received <= 1, "task %" PRIu64 ": %u results", x->id, x->received);
        else
            FUZZ_CHECK(x->received == 1, "task %" PRIu64 ": %u results, expected 1", x->id,
                       x->received);
    }
    if (getenv("FUZZ_VERBOSE")) {
        unsigned recv = 0, canc = 0, died = 0;
        for (unsigned i = 0; i < S.n; i++) {
            recv += S.e[i].received;
            canc += S.e[i].cancelled;
            died += S.e[i].died;
        }
        fprintf(stderr, "fuzz-shm: %u ops, %u tasks, %u results, %u cancelled, %u died\n",
                ops, S.n, recv, canc, died);
    }
    as(S.master_pid);
    cr_region_destroy(S.r);
    cr_region_destroy(S.feed);
    return 0;
}
