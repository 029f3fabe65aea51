/* rawloop.c: the CPU ceiling for bench/run's CPU-heavy case: crunchd's prime
 * handler loop, run back to back with no server around it, in N processes
 * (one per core by default) for T seconds; prints the tasks per second.
 *
 * is_prime() below is copied verbatim from src/handlers.c (static there);
 * the payload is parsed once, as it costs nothing next to the loop. Build it
 * with the same flags as crunchd (bench/run uses cc -O2).
 *
 * Usage: rawloop [-j PROCS] [-d SECONDS] NUMBER
 * Output: one JSON line {"procs":..,"seconds":..,"tasks":..,"tasks_per_s":..,
 *         "ms_per_task":..,"cpu_us_per_task":..,"prime":true|false}
 * ms_per_task is wall time per task per process; cpu_us_per_task the CPU the
 * processes used per task (it does not depend on other load on the machine).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- verbatim from src/handlers.c ------------------------------------------ */
/* Plain trial division on purpose: this is the CPU benchmark workload, so it
 * must cost what it costs everywhere (no sieve, no Miller-Rabin). */
static bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    if (n == 2)
        return true;
    if (n % 2 == 0)
        return false;
    /* i <= n / i rather than i * i <= n, which overflows near 2^64. */
    for (uint64_t i = 3; i <= n / i; i += 2) {
        if (n % i == 0)
            return false;
    }
    return true;
}
/* --- end of the copy ------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Keeps the compiler from dropping calls whose result is unused. */
static volatile bool sink;

int main(int argc, char **argv)
{
    long procs = sysconf(_SC_NPROCESSORS_ONLN);
    double secs = 5.0;
    uint64_t n;
    char *end;
    int c;

    while ((c = getopt(argc, argv, "j:d:")) != -1) {
        switch (c) {
        case 'j':
            procs = strtol(optarg, &end, 10);
            if (*end || procs < 1 || procs > 1024) {
                fprintf(stderr, "rawloop: -j wants 1..1024 processes, got \"%s\"\n", optarg);
                return 2;
            }
            break;
        case 'd':
            secs = strtod(optarg, &end);
            if (*end || !(secs > 0 && secs < 86400)) {
                fprintf(stderr, "rawloop: -d wants seconds (0 < d < 86400), got \"%s\"\n",
                        optarg);
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: rawloop [-j PROCS] [-d SECONDS] NUMBER\n");
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: rawloop [-j PROCS] [-d SECONDS] NUMBER\n");
        return 2;
    }
    errno = 0;
    n = strtoull(argv[optind], &end, 10);
    if (errno || *end || end == argv[optind] || argv[optind][0] == '-') {
        fprintf(stderr, "rawloop: NUMBER must be a decimal integer from 0 to %" PRIu64
                        ", got \"%s\"\n", UINT64_MAX, argv[optind]);
        return 2;
    }

    /* One counter per process, in memory shared with the parent. */
    uint64_t *done = mmap(NULL, (size_t)procs * 64, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (done == MAP_FAILED) {
        perror("rawloop: mmap");
        return 1;
    }
    double t0 = now_s();
    for (long p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("rawloop: fork");
            return 1;
        }
        if (pid == 0) {
            uint64_t k = 0;
            /* Whole tasks only: one that starts before the end counts. */
            while (now_s() - t0 < secs) {
                sink = is_prime(n);
                k++;
            }
            done[p * 8] = k;
            _exit(0);
        }
    }
    int st, bad = 0;
    while (wait(&st) > 0)
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    double el = now_s() - t0;
    if (bad) {
        fprintf(stderr, "rawloop: a child failed\n");
        return 1;
    }
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_CHILDREN, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    uint64_t total = 0;
    for (long p = 0; p < procs; p++)
        total += done[p * 8];
    printf("{\"procs\":%ld,\"seconds\":%.3f,\"tasks\":%" PRIu64 ",\"tasks_per_s\":%.1f,"
           "\"ms_per_task\":%.3f,\"cpu_us_per_task\":%.1f,\"prime\":%s}\n",
           procs, el, total, (double)total / el,
           total ? el * 1000.0 * (double)procs / (double)total : 0.0,
           total ? cpu * 1e6 / (double)total : 0.0,
           is_prime(n) ? "true" : "false");
    return 0;
}
