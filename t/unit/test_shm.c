/* test_shm.c: the shared region: queue and arena behaviour, a multi-process
 * stress of 1,000,000 tasks, and SIGKILL inside critical sections in a loop. */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

/* Crash points: a child with a countdown kills itself at the n-th point it
 * passes, most of them inside the lock (see CR_TEST_POINT in shm.c). */
static long tp_countdown;
static unsigned long tp_hits[16];
static void tp_hit(int n)
{
    tp_hits[n & 15]++;
    if (tp_countdown > 0 && --tp_countdown == 0)
        raise(SIGKILL);
}
#define CR_TEST_POINT(n) tp_hit(n)

#include "../../src/shm.c"
#include "tap.h"

static void cr_feed_entries_pid(cr_region_t *feed, uint32_t fd, pid_t pid)
{
    feed->tasks[fd].acceptor_pid = (int32_t)pid;
}

static cr_region_t *mk(unsigned cap, unsigned acc, uint64_t arena, uint64_t maxb)
{
    cr_region_conf_t rc = {.generation = 1, .queue_capacity = cap, .acceptors = acc,
                           .arena_size = arena, .max_block = maxb};
    return cr_region_create(&rc);
}

/* Structural check with no other process running. Returns a description of
 * the first broken invariant, or NULL. */
static const char *check(cr_region_t *r)
{
    static char why[256];
    cr_region_sh_t *sh = r->sh;
    uint32_t nfree = 0;
    uint64_t used = 0;
    size_t nmin = sh->arena_size >> CR_ARENA_MIN_ORDER;
    uint8_t *mark = calloc(nmin, 1);

    for (uint32_t d = 0; d < r->ntasks; d++) {
        cr_task_sh_t *t = &r->tasks[d];
        if (t->state == CR_TASK_FREE) {
            nfree++;
            continue;
        }
        uint64_t offs[2] = {t->payload_off, t->result_off};
        uint8_t ords[2] = {t->payload_order, t->result_order};
        for (int i = 0; i < 2; i++) {
            if (offs[i] == CR_NONE64)
                continue;
            for (uint64_t k = 0; k < cr_blk(ords[i]) >> CR_ARENA_MIN_ORDER; k++) {
                if (mark[(offs[i] >> CR_ARENA_MIN_ORDER) + k]++) {
                    snprintf(why, sizeof(why), "block at %" PRIu64 " used twice", offs[i]);
                    goto fail;
                }
            }
            used += cr_blk(ords[i]);
        }
    }
    if (nfree != sh->free_count) {
        snprintf(why, sizeof(why), "free_count %u but %u descriptors free", sh->free_count,
                 nfree);
        goto fail;
    }
    uint32_t walk = 0;
    for (uint32_t d = sh->free_head; d != CR_NONE; d = r->tasks[d].next) {
        if (r->tasks[d].state != CR_TASK_FREE || ++walk > r->ntasks) {
            snprintf(why, sizeof(why), "descriptor free list broken at %u", d);
            goto fail;
        }
    }
    if (sh->fresh > r->ntasks || walk + (r->ntasks - sh->fresh) != nfree) {
        snprintf(why, sizeof(why), "free list has %u + %u fresh, table %u", walk,
                 r->ntasks - sh->fresh, nfree);
        goto fail;
    }
    uint64_t fsum = 0;
    for (unsigned o = sh->min_order; o <= sh->max_order; o++) {
        for (uint64_t off = sh->free_heads[o]; off != CR_NONE64; off = cr_fb(r, off)->next) {
            if (r->free_order[off >> CR_ARENA_MIN_ORDER] != o + 1) {
                snprintf(why, sizeof(why), "free block %" PRIu64 " order mark wrong", off);
                goto fail;
            }
            for (uint64_t k = 0; k < cr_blk(o) >> CR_ARENA_MIN_ORDER; k++) {
                if (mark[(off >> CR_ARENA_MIN_ORDER) + k]++) {
                    snprintf(why, sizeof(why), "free block %" PRIu64 " overlaps", off);
                    goto fail;
                }
            }
            fsum += cr_blk(o);
        }
    }
    if (fsum != sh->arena_free || fsum + used != sh->arena_size) {
        snprintf(why, sizeof(why), "arena: free lists %" PRIu64 ", counter %" PRIu64
                 ", used %" PRIu64 ", size %" PRIu64, fsum, sh->arena_free, used,
                 sh->arena_size);
        goto fail;
    }
    uint64_t nq = 0;
    for (uint64_t p = sh->task_head; p != sh->task_tail; p++, nq++)
        if (r->tasks[r->task_ring[p & r->ring_mask]].state != CR_TASK_QUEUED) {
            snprintf(why, sizeof(why), "task ring holds a non-queued descriptor");
            goto fail;
        }
    uint64_t queued = 0;
    for (uint32_t d = 0; d < r->ntasks; d++)
        queued += r->tasks[d].state == CR_TASK_QUEUED;
    if (nq != queued) {
        snprintf(why, sizeof(why), "task ring holds %" PRIu64 ", %" PRIu64 " queued", nq,
                 queued);
        goto fail;
    }
    free(mark);
    return NULL;
fail:
    free(mark);
    return why;
}

/* The output workers compute: the payload, each byte xor 0x5a. */
static void transform(const uint8_t *in, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] ^ 0x5a;
}

static size_t make_payload(uint64_t id, uint8_t *buf)
{
    size_t n = 8 + (size_t)(id % 61) * 3;
    memcpy(buf, &id, 8);
    for (size_t i = 8; i < n; i++)
        buf[i] = (uint8_t)(id * 31 + i);
    return n;
}

static void worker_loop(cr_region_t *r, unsigned w, volatile int *stop)
{
    uint8_t out[256];
    cr_worker_attach(r, w, w);
    while (!*stop) {
        uint32_t d;
        if (cr_task_take(r, w, &d, 50) != CR_OK)
            continue;
        cr_task_sh_t *t = cr_task(r, d);
        transform(cr_task_payload(r, d), t->payload_len, out);
        cr_task_finish(r, w, d, CR_STATUS_OK, out, t->payload_len);
    }
    _exit(0);
}

/* Shared scoreboard for producers. */
typedef struct {
    uint64_t sent[8], received[8], sum_sent[8], sum_received[8], errors, aborted;
    int stop;
} board_t;

/* Producer: submits ids [base, base+n), checks every result once. With n == 0
 * it runs until killed (crash test). */
static void producer_loop(cr_region_t *r, unsigned a, uint64_t base, uint64_t n, board_t *b)
{
    uint8_t pay[256], want[256];
    uint32_t got[64];
    uint64_t *outstanding = calloc(r->ntasks, sizeof(uint64_t));
    uint64_t next = base, done = 0, inflight = 0;
    r->acceptors[a].pid = (int32_t)getpid();
    while (n == 0 || done < n) {
        while ((n == 0 || next < base + n)) {
            size_t len = make_payload(next, pay);
            cr_submit_t s = {.id = next, .tag = next, .handler = 0, .acceptor = a, .feed_d = CR_NONE,
                             .payload = pay, .len = len};
            uint32_t d;
            if (cr_task_submit(r, &s, &d) != CR_OK)
                break;
            if (outstanding[d] != 0)
                __atomic_add_fetch(&b->errors, 1, __ATOMIC_RELAXED);
            outstanding[d] = next + 1;
            b->sent[a]++;
            b->sum_sent[a] += next;
            next++;
            inflight++;
        }
        int k = cr_result_take(r, a, got, 64, 100);
        for (int i = 0; i < k; i++) {
            uint32_t d = got[i];
            cr_task_sh_t *t = cr_task(r, d);
            if (outstanding[d] != t->id + 1)
                __atomic_add_fetch(&b->errors, 1, __ATOMIC_RELAXED); /* duplicate or misrouted */
            outstanding[d] = 0;
            if (t->code == CR_STATUS_ABORTED && (t->flags & CR_TASK_WORKER_DIED)) {
                __atomic_add_fetch(&b->aborted, 1, __ATOMIC_RELAXED);
            } else {
                size_t len = make_payload(t->id, pay);
                transform(pay, len, want);
                if (t->code != 0 || t->result_len != len ||
                    memcmp(cr_task_result(r, d), want, len) != 0)
                    __atomic_add_fetch(&b->errors, 1, __ATOMIC_RELAXED);
            }
            b->received[a]++;
            b->sum_received[a] += t->id;
            cr_task_release(r, d);
            done++;
            inflight--;
        }
    }
    free(outstanding);
    _exit(0);
}

static void test_basic(void)
{
    cr_region_t *r = mk(4, 1, 64 * 1024, 16 * 1024);
    ok(r != NULL, "region created");
    r->acceptors[0].pid = (int32_t)getpid();
    cr_worker_attach(r, 0, 0);
    uint32_t d, d2;
    ok(cr_task_take(r, 0, &d, 0) == CR_TIMEDOUT, "empty queue: take without waiting times out");
    uint64_t t0 = cr_now_ns();
    ok(cr_task_take(r, 0, &d, 30) == CR_TIMEDOUT, "empty queue: take with 30 ms times out");
    ok(cr_now_ns() - t0 >= 20 * 1000000ull, "and it did wait");

    cr_submit_t s = {.id = 7, .tag = 99, .handler = 2, .acceptor = 0, .feed_d = CR_NONE,
                     .payload = "hi", .len = 2};
    ok(cr_task_submit(r, &s, &d) == CR_OK, "submit");
    is_int(cr_task(r, d)->state, CR_TASK_QUEUED, "queued");
    ok(cr_task_take(r, 0, &d2, 0) == CR_OK && d2 == d, "worker takes it");
    is_int(cr_task(r, d)->state, CR_TASK_RUNNING, "running");
    is_int(r->workers[0].task, d, "worker slot records the task");
    uint32_t got[4];
    /* A wake that comes before the result thread waits is not lost (it was:
     * the thread slept its whole timeout, and a call waiting for queue space
     * waited 100 ms for its retry instead of 5). */
    cr_result_wake(r, 0);
    t0 = cr_now_ns();
    is_int(cr_result_take(r, 0, got, 4, 30000), 0, "an earlier wake: take returns nothing");
    ok(cr_now_ns() - t0 < 10ull * 1000000000ull, "...at once, not after its 30 s timeout");
    t0 = cr_now_ns();
    is_int(cr_result_take(r, 0, got, 4, 30), 0, "the wake is used up: the next take...");
    ok(cr_now_ns() - t0 >= 20 * 1000000ull, "...waits its timeout");
    cr_task_finish(r, 0, d, CR_STATUS_OK, "HI", 2);
    is_int(cr_result_take(r, 0, got, 4, 0), 1, "one result");
    ok(got[0] == d && cr_task(r, d)->id == 7 && cr_task(r, d)->tag == 99, "id and tag kept");
    ok(memcmp(cr_task_result(r, d), "HI", 2) == 0 && cr_task(r, d)->result_len == 2,
       "output in the arena");
    cr_task_release(r, d);
    ok(check(r) == NULL, "invariants hold");

    /* full */
    uint32_t ds[4];
    for (int i = 0; i < 4; i++)
        ok(cr_task_submit(r, &s, &ds[i]) == CR_OK, "fill %d", i);
    ok(cr_task_submit(r, &s, &d) == CR_AGAIN, "a full queue refuses with CR_AGAIN");
    /* cancellation: queued ones are freed by the taker */
    cr_task_cancel(r, ds[0]);
    cr_task_cancel(r, ds[1]);
    ok(cr_task_take(r, 0, &d, 0) == CR_OK && d == ds[2], "cancelled tasks are skipped");
    cr_task_cancel(r, d); /* cancelled while running: finish frees it */
    cr_task_finish(r, 0, d, CR_STATUS_OK, "x", 1);
    ok(cr_task_take(r, 0, &d, 0) == CR_OK && d == ds[3], "next task");
    cr_task_finish(r, 0, d, CR_STATUS_INVALID_ARGUMENT, "bad input", 9);
    is_int(cr_result_take(r, 0, got, 4, 0), 1, "only the uncancelled result arrives");
    char msg[256];
    cr_task_error_text(r, got[0], "prime", msg, sizeof(msg));
    is_str(msg, "bad input", "handler message is the error text");
    cr_task_release(r, got[0]);
    is_int(r->sh->free_count, 4, "all descriptors free again");
    is_int(r->sh->arena_free, r->sh->arena_size, "all arena bytes free again");
    ok(check(r) == NULL, "invariants hold");
    cr_region_destroy(r);
}

static void test_arena(void)
{
    cr_region_t *r = mk(64, 1, 64 * 1024, 16 * 1024);
    r->acceptors[0].pid = (int32_t)getpid();
    static uint8_t big[16 * 1024];
    uint32_t ds[64];
    int n = 0;
    cr_submit_t s = {.id = 1, .acceptor = 0, .feed_d = CR_NONE, .payload = big, .len = sizeof(big)};
    while (n < 64 && cr_task_submit(r, &s, &ds[n]) == CR_OK)
        n++;
    is_int(n, 4, "64 KiB arena holds four 16 KiB payloads");
    is_int(r->sh->arena_free, 0, "arena exhausted");
    s.len = 1;
    uint32_t d;
    ok(cr_task_submit(r, &s, &d) == CR_AGAIN, "even a 1-byte payload is refused when full");
    s.len = 0;
    ok(cr_task_submit(r, &s, &d) == CR_OK, "an empty payload needs no arena");
    cr_task_cancel(r, d);
    cr_worker_attach(r, 0, 0);
    for (int i = 0; i < n; i++) {
        uint32_t x;
        ok(cr_task_take(r, 0, &x, 0) == CR_OK && x == ds[i], "take %d", i);
        cr_task_cancel(r, x);
        cr_task_finish(r, 0, x, 0, NULL, 0);
    }
    uint32_t x;
    ok(cr_task_take(r, 0, &x, 0) == CR_TIMEDOUT, "queue drained");
    is_int(r->sh->arena_free, r->sh->arena_size, "arena back to full size after reuse");

    /* fragmentation: many small, free every other, then all; a max block fits again */
    s.len = 100;
    for (n = 0; n < 64 && cr_task_submit(r, &s, &ds[n]) == CR_OK; n++)
        ;
    is_int(n, 64, "64 small payloads fit");
    for (int i = 0; i < n; i++) {
        ok(cr_task_take(r, 0, &x, 0) == CR_OK, "take small %d", i);
        cr_task_finish(r, 0, x, 0, "0123456789", (i % 3) * 5);
    }
    uint32_t got[64];
    int k = cr_result_take(r, 0, got, 64, 0);
    is_int(k, 64, "64 results");
    for (int i = 0; i < k; i += 2)
        cr_task_release(r, got[i]);
    ok(check(r) == NULL, "invariants hold when fragmented");
    for (int i = 1; i < k; i += 2)
        cr_task_release(r, got[i]);
    is_int(r->sh->arena_free, r->sh->arena_size, "fragments coalesce back");
    s.len = sizeof(big);
    ok(cr_task_submit(r, &s, &d) == CR_OK, "a max-size payload fits after coalescing");
    cr_task_release(r, d);
    /* output that does not fit */
    s.len = 8 * 1024;
    uint32_t a1, a2, a3, a4;
    cr_task_submit(r, &s, &a1);
    cr_task_submit(r, &s, &a2);
    cr_task_submit(r, &s, &a3);
    cr_task_submit(r, &s, &a4);
    s.len = 16 * 1024;
    cr_task_submit(r, &s, &d);
    cr_task_submit(r, &s, &d);
    ok(cr_task_take(r, 0, &x, 0) == CR_OK, "take");
    cr_task_finish(r, 0, x, 0, big, sizeof(big));
    ok(cr_result_take(r, 0, got, 1, 0) == 1 && cr_task(r, got[0])->code == CR_STATUS_RESOURCE_EXHAUSTED,
       "output that does not fit becomes RESOURCE_EXHAUSTED");
    char msg[256];
    cr_task_error_text(r, got[0], "echo", msg, sizeof(msg));
    ok(strstr(msg, "raise shm_size") != NULL, "and says what to do: %s", msg);
    cr_region_destroy(r);
}

/* One million tasks through 2 producers and 2 workers, in 4 processes. */
static void test_stress(void)
{
    const uint64_t per = 500000;
    cr_region_t *r = mk(256, 2, 1 << 20, 4096);
    board_t *b = mmap(NULL, sizeof(board_t), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(b, 0, sizeof(*b));
    pid_t pw[2], pp[2];
    for (unsigned w = 0; w < 2; w++)
        if ((pw[w] = fork()) == 0)
            worker_loop(r, w, &b->stop);
    for (unsigned a = 0; a < 2; a++)
        if ((pp[a] = fork()) == 0)
            producer_loop(r, a, 1 + a * per, per, b);
    int st, okp = 1;
    for (int a = 0; a < 2; a++)
        okp &= waitpid(pp[a], &st, 0) == pp[a] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    b->stop = 1;
    cr_region_wake_all(r);
    for (int w = 0; w < 2; w++)
        waitpid(pw[w], &st, 0);
    ok(okp, "producers finished");
    uint64_t want_sum = 0;
    for (uint64_t i = 1; i <= 2 * per; i++)
        want_sum += i;
    is_int(b->received[0] + b->received[1], 2 * per, "1,000,000 results received");
    is_int(b->sum_received[0] + b->sum_received[1], want_sum, "checksum of ids matches");
    is_int(b->errors, 0, "no result lost, duplicated, misrouted or wrong");
    is_int(r->sh->free_count, r->ntasks, "every descriptor free at the end");
    is_int(r->sh->arena_free, r->sh->arena_size, "every arena byte free at the end");
    ok(check(r) == NULL, "invariants hold");
    munmap(b, sizeof(*b));
    cr_region_destroy(r);
}

/* SIGKILL in a loop: children die at random crash points (most inside the
 * lock) and by random kills from outside; the parent plays the master. */
static void test_kill_loop(void)
{
    enum { NACC = 2, NW = 2, DEATHS = 400 };
    cr_region_t *r = mk(64, NACC, 256 * 1024, 4096);
    board_t *b = mmap(NULL, sizeof(board_t), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(b, 0, sizeof(*b));
    pid_t pid[NACC + NW];
    srandom(12345);
    for (int i = 0; i < NACC + NW; i++) {
        long cd = 1 + random() % 3000;
        if ((pid[i] = fork()) == 0) {
            tp_countdown = cd;
            if (i < NACC)
                producer_loop(r, (unsigned)i, (uint64_t)i << 40, 0, b);
            worker_loop(r, (unsigned)(i - NACC), &b->stop);
        }
    }
    int deaths = 0, bad_reap = 0;
    uint64_t t_end = cr_now_ns() + 120ull * 1000000000ull;
    while (deaths < DEATHS && cr_now_ns() < t_end) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p == 0) {
            usleep(200 + random() % 800);
            if (random() % 4 == 0)
                kill(pid[random() % (NACC + NW)], SIGKILL);
            continue;
        }
        if (p < 0)
            break;
        int i;
        for (i = 0; i < NACC + NW && pid[i] != p; i++)
            ;
        if (i == NACC + NW) {
            bad_reap++;
            continue;
        }
        deaths++;
        if (i < NACC)
            cr_region_reap(r, p, CR_ROLE_ACCEPTOR, (unsigned)i, st, 0, false);
        else
            cr_region_reap(r, p, CR_ROLE_WORKER, (unsigned)(i - NACC), st, (unsigned)(random() % 2), false);
        long cd = 1 + random() % 3000;
        if ((pid[i] = fork()) == 0) {
            tp_countdown = cd;
            if (i < NACC)
                producer_loop(r, (unsigned)i, ((uint64_t)i << 40) + ((uint64_t)deaths << 24), 0, b);
            worker_loop(r, (unsigned)(i - NACC), &b->stop);
        }
    }
    is_int(deaths, DEATHS, "400 children died and were reaped");
    is_int(bad_reap, 0, "only our children");
    for (int i = 0; i < NACC + NW; i++) {
        int st;
        kill(pid[i], SIGKILL);
        waitpid(pid[i], &st, 0);
        cr_region_reap(r, pid[i], i < NACC ? CR_ROLE_ACCEPTOR : CR_ROLE_WORKER,
                       (unsigned)(i < NACC ? i : i - NACC), st, 0, false);
    }
    tap_diag("rebuilds after a death inside the lock: %" PRIu64 ", results seen %" PRIu64
             ", aborted %" PRIu64, r->sh->rebuilds, b->received[0] + b->received[1], b->aborted);
    ok(r->sh->rebuilds > 0, "some children died holding the lock, and the region was rebuilt");
    is_int(b->errors, 0, "no result duplicated, misrouted or wrong across 400 deaths");
    const char *why = check(r);
    ok(why == NULL, "invariants hold after the kills%s%s", why ? ": " : "", why ? why : "");
    /* every acceptor is dead, so what is left is cancelled: a taker frees it */
    cr_worker_attach(r, 0, 0);
    uint32_t d;
    int leftover = 0;
    while (cr_task_take(r, 0, &d, 0) == CR_OK)
        leftover++;
    is_int(leftover, 0, "no live task is left behind by dead acceptors");
    is_int(r->sh->free_count, r->ntasks, "no descriptor leaked");
    is_int(r->sh->arena_free, r->sh->arena_size, "no arena byte leaked");
    r->workers[0].pid = 0;

    /* and the queue still works */
    memset(b, 0, sizeof(*b));
    pid_t w = fork();
    if (w == 0)
        worker_loop(r, 1, &b->stop);
    pid_t p = fork();
    if (p == 0)
        producer_loop(r, 0, 1, 20000, b);
    int st;
    ok(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "a fresh producer finished 20,000 tasks");
    b->stop = 1;
    cr_region_wake_all(r);
    waitpid(w, &st, 0);
    is_int(b->received[0], 20000, "all 20,000 answered after the kill loop");
    is_int(b->errors, 0, "all correct");
    ok(check(r) == NULL, "invariants hold");
    munmap(b, sizeof(*b));
    cr_region_destroy(r);
}

/* The updates feed: reservations, fill, subscribers, deaths. */
static void test_feed(void)
{
    cr_region_t *r = mk(8, 1, 64 * 1024, 4096);
    cr_region_conf_t fc = {.generation = 0, .queue_capacity = 3, .acceptors = 1,
                           .arena_size = 64 * 1024, .max_block = 4096, .feed = true};
    cr_region_t *feed = cr_region_create(&fc);
    r->feed = feed;
    r->acceptors[0].pid = (int32_t)getpid();
    cr_worker_attach(r, 0, 5);
    cr_worker_attach(feed, 1, 1);

    uint32_t f[4], d, x;
    for (int i = 0; i < 3; i++)
        ok(cr_feed_reserve(feed, &f[i]) == CR_OK, "reserve feed entry %d", i);
    ok(cr_feed_reserve(feed, &f[3]) == CR_AGAIN, "a full feed refuses the reservation");
    cr_feed_unreserve(feed, f[2]);
    ok(cr_feed_reserve(feed, &f[2]) == CR_OK, "an unreserved entry can be reserved again");

    cr_submit_t s = {.id = 11, .handler = 1, .acceptor = 0, .feed_d = f[0], .payload = "ab",
                     .len = 2};
    ok(cr_task_submit(r, &s, &d) == CR_OK, "submit a detached task");
    ok(cr_task_take(r, 0, &x, 0) == CR_OK && x == d, "a worker takes it");
    cr_task_finish(r, 0, d, CR_STATUS_OK, "AB", 2);
    uint32_t got[4];
    is_int(cr_result_take(r, 0, got, 4, 0), 0, "its result does not go to the acceptor");
    is_int(cr_task(r, d)->state, CR_TASK_FREE, "the task is freed once the feed has it");
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && x == f[0], "a subscriber takes the entry");
    cr_task_sh_t *e = cr_task(feed, x);
    ok(e->id == 11 && e->code == 0 && e->worker == 5 && e->result_len == 2 &&
           memcmp(cr_task_result(feed, x), "AB", 2) == 0,
       "the entry carries id, worker number and output");
    /* the subscriber's stream ended before sending: back for another one */
    cr_feed_requeue(feed, x);
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && x == f[0], "a requeued entry is taken again");
    cr_task_release(feed, x);

    /* a worker dies running a detached task: ABORTED goes to the feed, once */
    s.id = 12;
    s.feed_d = f[1];
    ok(cr_task_submit(r, &s, &d) == CR_OK, "submit another");
    ok(cr_task_take(r, 0, &x, 0) == CR_OK, "taken");
    pid_t me = getpid();
    cr_task(r, d)->worker_pid = 4242; /* pretend a worker that is gone */
    cr_region_reap(r, 4242, CR_ROLE_WORKER, 0, SIGKILL, 0, false);
    (void)me;
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && x == f[1], "the feed has the entry");
    e = cr_task(feed, x);
    ok(e->id == 12 && e->code == CR_STATUS_ABORTED && (e->flags & CR_TASK_WORKER_DIED),
       "it reports ABORTED");
    char msg[256];
    cr_task_error_text(feed, x, "echo", msg, sizeof(msg));
    ok(strstr(msg, "pid 4242") && strstr(msg, "SIGKILL") && strstr(msg, "task 12"),
       "the message names the worker, the signal and the task: %s", msg);
    cr_task_release(feed, x);

    /* filled already, then the worker died before freeing the task: no second result */
    s.id = 13;
    s.feed_d = f[2];
    ok(cr_task_submit(r, &s, &d) == CR_OK && cr_task_take(r, 0, &x, 0) == CR_OK, "a third");
    ok(cr_feed_fill(feed, f[2], cr_feed_key(r, d), cr_task(r, d), 0, 0, "z", 1),
       "the worker fills the entry");
    cr_task(r, d)->worker_pid = 4243;
    cr_region_reap(r, 4243, CR_ROLE_WORKER, 0, SIGKILL, 0, false);
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && cr_task(feed, x)->code == 0, "one OK entry");
    cr_task_release(feed, x);
    ok(cr_task_take(feed, 1, &x, 0) == CR_TIMEDOUT, "and no ABORTED duplicate");
    is_int(r->sh->free_count, r->ntasks, "region: every descriptor free");

    /* an acceptor dies: its unused reservation is freed, one a task owns is kept */
    uint32_t a1, a2;
    ok(cr_feed_reserve(feed, &a1) == CR_OK && cr_feed_reserve(feed, &a2) == CR_OK,
       "two reservations");
    s.id = 14;
    s.feed_d = a2;
    ok(cr_task_submit(r, &s, &d) == CR_OK, "one used by a task");
    cr_region_t *regs[1] = {r};
    cr_feed_entries_pid(feed, a1, 4244);
    cr_feed_entries_pid(feed, a2, 4244);
    cr_task(r, d)->acceptor_pid = 4244;
    cr_region_reap(r, 4244, CR_ROLE_ACCEPTOR, 0, 0, 0, false);
    cr_feed_reap(feed, 4244, 1, regs, 1);
    is_int(cr_task(feed, a1)->state, CR_TASK_FREE, "the unused reservation is freed");
    is_int(cr_task(feed, a2)->state, CR_TASK_FILLING, "the task's reservation is kept");
    ok(cr_task_take(r, 0, &x, 0) == CR_OK && x == d, "the task still runs without its acceptor");
    cr_task_finish(r, 0, d, 0, "q", 1);
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && cr_task(feed, x)->id == 14, "and reports");
    /* a subscriber dies holding it: back to the feed */
    cr_task(feed, x)->acceptor_pid = 4245;
    cr_feed_reap(feed, 4245, 1, regs, 1);
    ok(cr_task_take(feed, 1, &x, 0) == CR_OK && cr_task(feed, x)->id == 14,
       "an entry held by a dead subscriber is delivered again");
    cr_task_release(feed, x);
    is_int(feed->sh->free_count, feed->ntasks, "feed: every entry free");
    is_int(feed->sh->arena_free, feed->sh->arena_size, "feed: every arena byte free");
    ok(check(feed) == NULL && check(r) == NULL, "invariants hold");
    cr_region_destroy(feed);
    cr_region_destroy(r);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    cr_log_level = CR_LOG_ERR; /* the rebuild warnings are expected here */
    test_basic();
    test_arena();
    test_feed();
    test_stress();
    test_kill_loop();
    return tap_done();
}
