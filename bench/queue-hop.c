/* queue-hop.c: micro-benchmark of the shared-memory task path, without gRPC.
 *
 * One process plays the acceptor (a submitting thread that keeps K tasks in
 * flight, and a result thread, as src/rpc.c has), W forked processes play the
 * workers (take, echo the payload, finish: src/worker.c's loop without a
 * handler). It uses the real region code (src/shm.c) and reports:
 *   - tasks per second through the whole loop;
 *   - the queue hop: enqueue (cr_task_submit) to dequeue (cr_task_take), p50
 *     and p99, from the descriptor's enqueue_ns and start_ns;
 *   - futex wake system calls per task, for workers and for the result thread
 *     (the region counts them).
 * Two settings answer two questions: with -k equal to -w (each worker has a
 * task to take as soon as the acceptor hands one over) the hop is the cost of
 * the handover itself; with many tasks in flight and a handler cost (-r) that
 * makes the workers the bottleneck, the wakes per task show whether a busy
 * queue runs without system calls.
 * Build in a configured tree with `make bench/queue-hop` (never built by
 * `make`, never run by `make check`); bench/run calls it. One JSON line on
 * stdout with --json.
 *
 * Usage: bench/queue-hop [-w WORKERS] [-k IN_FLIGHT] [-d SECONDS] [-s BYTES] [-r NS] [-S US]
 *                        [--json] */
#define _GNU_SOURCE
#include "cr_core.h"
#include "shm.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define QH_MAX_SAMPLES (16u << 20)

static cr_region_t *qh_region;
static unsigned qh_inflight_max;
static size_t qh_payload_len;
static uint64_t qh_work_ns; /* a handler's cost, spent spinning in the worker */
static volatile uint32_t *qh_stop; /* shared with the workers */

static pthread_mutex_t qh_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qh_cv = PTHREAD_COND_INITIALIZER;
static unsigned qh_inflight;
static bool qh_measuring, qh_done;
static uint64_t qh_results;
static uint32_t *qh_hops; /* ns, measured window only */
static size_t qh_nhops;

static void qh_worker(unsigned w)
{
    uint32_t d;
    bool have = false;
    cr_worker_attach(qh_region, w, w);
    while (have || !__atomic_load_n(qh_stop, __ATOMIC_ACQUIRE)) {
        /* src/worker.c's loop: the next task comes with the previous result */
        if (!have && cr_task_take(qh_region, w, &d, 100) != CR_OK)
            continue;
        if (qh_work_ns) {
            uint64_t end = cr_now_ns() + qh_work_ns;
            while (cr_now_ns() < end) {
            }
        }
        have = cr_task_finish_next(qh_region, w, d, 0, cr_task_payload(qh_region, d),
                                   cr_task(qh_region, d)->payload_len, &d) == CR_OK;
    }
    _exit(0);
}

static void *qh_result_thread(void *arg)
{
    uint32_t batch[64];
    (void)arg;
    for (;;) {
        int n = cr_result_take(qh_region, 0, batch, 64, 100);
        pthread_mutex_lock(&qh_mu);
        bool measuring = qh_measuring, done = qh_done;
        pthread_mutex_unlock(&qh_mu);
        for (int i = 0; i < n; i++) {
            cr_task_sh_t *t = cr_task(qh_region, batch[i]);
            if (measuring && qh_nhops < QH_MAX_SAMPLES)
                qh_hops[qh_nhops++] = (uint32_t)(t->start_ns - t->enqueue_ns);
            cr_task_release(qh_region, batch[i]);
        }
        pthread_mutex_lock(&qh_mu);
        qh_inflight -= (unsigned)n;
        if (measuring)
            qh_results += (uint64_t)n;
        pthread_cond_signal(&qh_cv);
        pthread_mutex_unlock(&qh_mu);
        if (done && n == 0)
            return NULL;
    }
}

static void *qh_submit_thread(void *arg)
{
    static uint8_t payload[1 << 20];
    uint64_t id = 0;
    (void)arg;
    memset(payload, 'x', sizeof(payload));
    for (;;) {
        pthread_mutex_lock(&qh_mu);
        while (qh_inflight >= qh_inflight_max && !qh_done)
            pthread_cond_wait(&qh_cv, &qh_mu);
        bool done = qh_done;
        unsigned room = qh_inflight_max - qh_inflight;
        qh_inflight = qh_inflight_max;
        pthread_mutex_unlock(&qh_mu);
        if (done)
            return NULL;
        for (unsigned i = 0; i < room; i++) {
            cr_submit_t s = {.id = ++id, .handler = 0, .acceptor = 0, .feed_d = CR_NONE,
                             .payload = payload, .len = qh_payload_len};
            uint32_t d;
            while (cr_task_submit(qh_region, &s, &d) != CR_OK)
                sched_yield();
        }
    }
}

static int qh_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void qh_usage(FILE *f)
{
    fprintf(f, "usage: queue-hop [-w WORKERS] [-k IN_FLIGHT] [-d SECONDS] [-s BYTES] [-r NS] [-S US] [--json]\n"
               "  -w  worker processes (default 2)\n"
               "  -k  tasks in flight (default 64)\n"
               "  -d  measured seconds after a 0.5 s warm-up (default 3)\n"
               "  -s  payload bytes, echoed back (default 16)\n"
               "  -r  nanoseconds of work per task in the worker (default 0)\n"
               "  -S  queue_spin_us: polling before sleeping (default 10, as crunchd)\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    unsigned workers = 2;
    double seconds = 3;
    bool json = false;
    int c;

    qh_inflight_max = 64;
    qh_payload_len = 16;
    while ((c = getopt_long(argc, argv, "w:k:d:s:r:S:h", lo, NULL)) != -1) {
        switch (c) {
        case 'w': workers = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'k': qh_inflight_max = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': seconds = strtod(optarg, NULL); break;
        case 's': qh_payload_len = strtoul(optarg, NULL, 10); break;
        case 'r': qh_work_ns = strtoull(optarg, NULL, 10); break;
        case 'S': cr_shm_set_spin((unsigned)strtoul(optarg, NULL, 10)); break;
        case 'j': json = true; break;
        case 'h': qh_usage(stdout); return 0;
        default: qh_usage(stderr); return 2;
        }
    }
    if (workers < 1 || workers > 64 || qh_inflight_max < 1 || qh_inflight_max > 65536 ||
        seconds <= 0 || qh_payload_len > (1u << 20)) {
        qh_usage(stderr);
        return 2;
    }

    unsigned cap = qh_inflight_max * 2 < 1024 ? 1024 : qh_inflight_max * 2;
    cr_region_conf_t rc = {.generation = 1, .queue_capacity = cap, .acceptors = 1,
                           .arena_size = 64u << 20, .max_block = 1u << 20};
    qh_region = cr_region_create(&rc);
    qh_stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    qh_hops = malloc(QH_MAX_SAMPLES * sizeof(*qh_hops));
    if (!qh_region || qh_stop == MAP_FAILED || !qh_hops) {
        fprintf(stderr, "queue-hop: cannot set up the region: %s\n", strerror(errno));
        return 1;
    }

    pid_t pids[64];
    for (unsigned w = 0; w < workers; w++) {
        pids[w] = fork();
        if (pids[w] == 0)
            qh_worker(w);
        if (pids[w] < 0) {
            perror("queue-hop: fork");
            return 1;
        }
    }
    /* The acceptor's part is registered like src/acceptor.c does. */
    qh_region->acceptors[0].pid = getpid();

    pthread_t rt, st;
    pthread_create(&rt, NULL, qh_result_thread, NULL);
    pthread_create(&st, NULL, qh_submit_thread, NULL);

    struct timespec warm = {0, 500000000L};
    nanosleep(&warm, NULL);
    cr_region_stats_t s0, s1;
    pthread_mutex_lock(&qh_mu);
    cr_region_stats(qh_region, &s0);
    uint64_t t0 = cr_now_ns();
    qh_measuring = true;
    pthread_mutex_unlock(&qh_mu);

    struct timespec run = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&run, NULL);

    pthread_mutex_lock(&qh_mu);
    qh_measuring = false;
    uint64_t t1 = cr_now_ns();
    uint64_t results = qh_results;
    cr_region_stats(qh_region, &s1);
    qh_done = true;
    pthread_cond_broadcast(&qh_cv);
    pthread_mutex_unlock(&qh_mu);
    pthread_join(st, NULL);
    pthread_join(rt, NULL);
    __atomic_store_n(qh_stop, 1, __ATOMIC_RELEASE);
    cr_region_wake_all(qh_region);
    for (unsigned w = 0; w < workers; w++)
        waitpid(pids[w], NULL, 0);

    double secs = (double)(t1 - t0) / 1e9;
    uint64_t completed = s1.completed - s0.completed;
    double per = completed ? 1.0 / (double)completed : 0;
    double tw = (double)(s1.task_wakes - s0.task_wakes) * per;
    double rw = (double)(s1.result_wakes - s0.result_wakes) * per;
    qsort(qh_hops, qh_nhops, sizeof(*qh_hops), qh_cmp);
    uint32_t p50 = qh_nhops ? qh_hops[qh_nhops / 2] : 0;
    uint32_t p99 = qh_nhops ? qh_hops[(size_t)((double)qh_nhops * 0.99)] : 0;

    if (json)
        printf("{\"workers\":%u,\"in_flight\":%u,\"payload\":%zu,\"work_ns\":%" PRIu64 ","
               "\"seconds\":%.3f,"
               "\"tasks\":%" PRIu64 ",\"tasks_per_s\":%.0f,\"hop_p50_ns\":%u,"
               "\"hop_p99_ns\":%u,\"task_wakes_per_task\":%.4f,"
               "\"result_wakes_per_task\":%.4f,\"wakes_per_task\":%.4f}\n",
               workers, qh_inflight_max, qh_payload_len, qh_work_ns, secs, results,
               (double)results / secs, p50, p99, tw, rw, tw + rw);
    else
        printf("workers %u, in flight %u, payload %zu B, work %" PRIu64 " ns, %.2f s\n"
               "  tasks/s          %.0f\n"
               "  queue hop p50    %.2f us\n"
               "  queue hop p99    %.2f us\n"
               "  worker wakes     %.4f per task\n"
               "  result wakes     %.4f per task\n",
               workers, qh_inflight_max, qh_payload_len, qh_work_ns, secs,
               (double)results / secs,
               p50 / 1e3, p99 / 1e3, tw, rw);
    cr_region_destroy(qh_region);
    return 0;
}
