/* test_conf.c: crunchd.conf parsing: defaults, every setting good and bad, messages, -T.
 */
#include "conf.h"
#include "log.h"
#include "tap.h"
#include <sys/wait.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>

#define LISTEN1        "listen = [ \"127.0.0.1:50051\" ];\n"
#define RANGE_SIZE_SHM "use a size from 64k to 64g"
#define WANT_ELEM                                                                        \
    "expected a string like \"127.0.0.1:50051\" or a group like { address = "            \
    "\"127.0.0.1:50051\"; }, "

static char dir[PATH_MAX];       /* scratch directory, also the prefix */
static char path[PATH_MAX + 16]; /* dir/crunchd.conf */
static char err[2048];
static cr_conf_t conf;

static void write_file(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    if (f == NULL) {
        perror(p);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* Write text as dir/crunchd.conf and load it with the prefix dir. */
static int load(const char *text)
{
    write_file(path, text);
    return cr_conf_load(&conf, path, dir, err, sizeof(err));
}

/* The text must fail with exactly "PATH:LINE: want" (line 0: "PATH: want"). */
static void load_fails(const char *text, unsigned line, const char *want,
                       const char *name)
{
    char full[3 * PATH_MAX];

    if (line)
        snprintf(full, sizeof(full), "%s:%u: %s", path, line, want);
    else
        snprintf(full, sizeof(full), "%s: %s", path, want);
    if (load(text) != CR_ERROR) {
        ok(0, "%s (loaded, but should fail)", name);
        return;
    }
    is_str(err, full, name);
}

static void load_ok(const char *text, const char *name)
{
    int rc = load(text);
    if (!ok(rc == CR_OK, "%s", name))
        tap_diag("error: %s", err);
}

static unsigned online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (unsigned)n;
}

static void test_defaults(void)
{
    char cwd[PATH_MAX], want[PATH_MAX + 32], longp[PATH_MAX + 10];

    cr_conf_defaults(&conf, "/srv/crunchd/");
    is_str(conf.prefix, "/srv/crunchd", "defaults: trailing slash of the prefix dropped");
    is_int(conf.nlisten, 0, "defaults: no listeners");
    is_int(conf.acceptors, 1, "defaults: acceptors 1");
    is_int(conf.workers, online_cpus(), "defaults: workers = online CPUs");
    ok(conf.workers_auto, "defaults: workers auto");
    is_int(conf.queue_capacity, 1024, "defaults: queue_capacity 1024");
    is_int(conf.shm_size, 64 << 20, "defaults: shm_size 64m");
    is_int(conf.max_payload, 4 << 20, "defaults: max_payload 4m");
    is_int(conf.queue_wait_ms, 1000, "defaults: queue_wait_ms 1000");
    is_int(conf.queue_spin_us, 10, "defaults: queue_spin_us 10");
    is_str(conf.pid_file, "/srv/crunchd/crunchd.pid",
           "defaults: pid_file under the prefix");
    is_str(conf.error_log, "stderr", "defaults: error_log stderr");
    is_int(conf.log_level, CR_LOG_NOTICE, "defaults: log_level notice");
    is_str(conf.access_log, "", "defaults: access_log off");
    is_int(conf.task_retries, 0, "defaults: task_retries 0");
    is_int(conf.task_timeout_ms, 30000, "defaults: task_timeout_ms 30000");
    is_int(conf.worker_max_tasks, 0, "defaults: worker_max_tasks 0");
    is_int(conf.respawn_burst, 5, "defaults: respawn_burst 5");
    is_int(conf.respawn_window_ms, 10000, "defaults: respawn_window_ms 10000");
    is_int(conf.worker_rlimit_nofile, 0, "defaults: worker_rlimit_nofile 0 (leave)");
    is_int(conf.worker_rlimit_core, -1, "defaults: worker_rlimit_core -1 (leave)");
    is_int(conf.worker_cpu_affinity, CR_AFFINITY_OFF,
           "defaults: worker_cpu_affinity off");
    is_int(conf.shutdown_timeout_ms, 60000, "defaults: shutdown_timeout_ms 60000");
    is_int(conf.max_draining_generations, 4, "defaults: max_draining_generations 4");
    is_int(conf.max_receive_message, (4 << 20) + 4096,
           "defaults: max_receive_message max_payload + 4k");
    ok(!conf.max_receive_message_set, "defaults: max_receive_message not set");
    is_int(conf.max_concurrent_streams, 1000, "defaults: max_concurrent_streams 1000");
    is_int(conf.keepalive_time_ms, 7200000, "defaults: keepalive_time_ms 7200000");
    is_int(conf.keepalive_timeout_ms, 20000, "defaults: keepalive_timeout_ms 20000");
    is_int(conf.max_connection_idle_ms, 0, "defaults: max_connection_idle_ms 0 (off)");
    is_int(conf.max_connection_age_ms, 30000, "defaults: max_connection_age_ms 30000");
    is_int(conf.max_connection_age_grace_ms, 10000,
           "defaults: max_connection_age_grace_ms 10000");
    is_int(conf.stream_max_pending, 1024, "defaults: stream_max_pending 1024");
    is_int(conf.updates_capacity, 65536, "defaults: updates_capacity 65536");
    ok(!conf.daemon, "defaults: daemon false");
    is_str(conf.user, "", "defaults: user \"\"");
    is_str(conf.group, "", "defaults: group \"\"");

    cr_conf_defaults(&conf, "/");
    is_str(conf.pid_file, "/crunchd.pid", "defaults: prefix / gives /crunchd.pid");

    if (getcwd(cwd, sizeof(cwd)) == NULL)
        strcpy(cwd, "?");
    cr_conf_defaults(&conf, NULL);
    is_str(conf.prefix, cwd, "defaults: no prefix = the current directory");
    cr_conf_defaults(&conf, "run/here");
    snprintf(want, sizeof(want), "%s/run/here", cwd);
    is_str(conf.prefix, want, "defaults: a relative prefix is made absolute");

    /* A prefix too long to hold, and one that leaves no room for pid_file. */
    longp[0] = '/';
    memset(longp + 1, 'p', sizeof(longp) - 2);
    longp[sizeof(longp) - 1] = '\0';
    ok(cr_conf_load_string(&conf, LISTEN1, "x.conf", longp, err, sizeof(err)) ==
               CR_ERROR &&
           strncmp(err, "x.conf: the prefix \"/ppp", 24) == 0 &&
           strstr(err, "is too long; use a shorter path with -p") != NULL,
       "prefix: too long is an error");
    longp[PATH_MAX - 5] = '\0';
    ok(cr_conf_load_string(&conf, LISTEN1, "x.conf", longp, err, sizeof(err)) ==
               CR_ERROR &&
           strstr(
               err,
               "x.conf: pid_file: the default \"crunchd.pid\" is too long once resolved "
               "against the prefix; use a shorter prefix with -p") == err,
       "prefix: no room for the default pid_file is an error");
}

static void test_minimal(void)
{
    const struct sockaddr_in *sin = (const void *)&conf.listen[0].addr;
    char real[PATH_MAX];

    load_ok(LISTEN1, "minimal: listen only");
    ok(realpath(path, real) != NULL && strcmp(conf.file, real) == 0,
       "minimal: file is the real path");
    is_str(conf.prefix, dir, "minimal: prefix");
    is_int(conf.nlisten, 1, "minimal: one listener");
    is_int(conf.listen[0].kind, CR_LISTEN_TCP, "minimal: tcp");
    is_str(conf.listen[0].text, "127.0.0.1:50051", "minimal: text as written");
    is_int(conf.listen[0].line, 1, "minimal: line");
    is_int(conf.listen[0].addrlen, sizeof(struct sockaddr_in), "minimal: addrlen");
    is_int(sin->sin_family, AF_INET, "minimal: AF_INET");
    is_int(ntohs(sin->sin_port), 50051, "minimal: port");
    is_int(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK, "minimal: 127.0.0.1");
    is_int(conf.acceptors, 1, "minimal: default acceptors");
    is_int(conf.shm_size, 64 << 20, "minimal: default shm_size");
    ok(conf.workers_auto, "minimal: default workers auto");
    load_fails("# nothing\n", 0,
               "listen: missing; add at least one address, like "
               "listen = [ \"127.0.0.1:50051\" ];",
               "an empty file lacks listen");
}

static void test_all_settings(void)
{
    char want[PATH_MAX + 32];

    load_ok("# every setting\n"
            "listen = ( \"*:8080\", \"[::1]:8081\", \"unix:crunchd.sock\" );\n"
            "acceptors = 4;\n"
            "workers = 12;\n"
            "queue_capacity = 4096;\n"
            "shm_size = \"1G\";\n"
            "max_payload = \"512k\";\n"
            "queue_wait_ms = 0;\n"
            "pid_file = \"run/crunchd.pid\";\n"
            "error_log = \"/var/log/crunchd.log\";\n"
            "log_level = \"debug\";\n",
            "all settings: loads");
    is_int(conf.nlisten, 3, "all settings: three listeners (list form)");
    is_int(conf.acceptors, 4, "all settings: acceptors");
    is_int(conf.workers, 12, "all settings: workers");
    ok(!conf.workers_auto, "all settings: workers not auto");
    is_int(conf.queue_capacity, 4096, "all settings: queue_capacity");
    is_int(conf.shm_size, 1ll << 30, "all settings: shm_size 1G");
    is_int(conf.max_payload, 512 << 10, "all settings: max_payload 512k");
    is_int(conf.queue_wait_ms, 0, "all settings: queue_wait_ms 0");
    snprintf(want, sizeof(want), "%s/run/crunchd.pid", dir);
    is_str(conf.pid_file, want, "all settings: relative pid_file under the prefix");
    is_str(conf.error_log, "/var/log/crunchd.log",
           "all settings: absolute error_log kept");
    is_int(conf.log_level, CR_LOG_DEBUG, "all settings: log_level debug");

    load_ok(LISTEN1 "pid_file = \"\";\nerror_log = \"logs/error.log\";\n",
            "pid_file \"\" and relative error_log");
    is_str(conf.pid_file, "", "pid_file \"\" = no pid file");
    snprintf(want, sizeof(want), "%s/logs/error.log", dir);
    is_str(conf.error_log, want, "relative error_log under the prefix");
    load_ok(LISTEN1 "pid_file = \"/run/crunchd.pid\";\n", "absolute pid_file");
    is_str(conf.pid_file, "/run/crunchd.pid", "absolute pid_file kept");
}

static void test_integers(void)
{
    const char *range = "use an integer from 1 to 64";
    char want[256];

    load_ok(LISTEN1 "acceptors = 64;\n", "acceptors: 64 (max)");
    is_int(conf.acceptors, 64, "acceptors: 64 stored");
    load_ok(LISTEN1 "acceptors = 1;\n", "acceptors: 1 (min)");
    load_ok(LISTEN1 "acceptors = 2L;\n", "acceptors: int64 literal");
    is_int(conf.acceptors, 2, "acceptors: 2L stored");
    load_ok(LISTEN1 "acceptors = 0x10;\n", "acceptors: hex");
    is_int(conf.acceptors, 16, "acceptors: 0x10 stored");

    snprintf(want, sizeof(want), "acceptors: 0 is out of range; %s", range);
    load_fails(LISTEN1 "acceptors = 0;\n", 2, want, "acceptors: 0 below range");
    snprintf(want, sizeof(want), "acceptors: 65 is out of range; %s", range);
    load_fails(LISTEN1 "acceptors = 65;\n", 2, want, "acceptors: 65 above range");
    snprintf(want, sizeof(want), "acceptors: -1 is out of range; %s", range);
    load_fails(LISTEN1 "acceptors = -1;\n", 2, want, "acceptors: negative");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got a string; %s",
             range);
    load_fails(LISTEN1 "\nacceptors = \"4\";\n", 3, want,
               "acceptors: string is wrong type");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got a float; %s",
             range);
    load_fails(LISTEN1 "acceptors = 1.5;\n", 2, want, "acceptors: float is wrong type");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got a boolean; %s",
             range);
    load_fails(LISTEN1 "acceptors = true;\n", 2, want,
               "acceptors: boolean is wrong type");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got a group; %s",
             range);
    load_fails(LISTEN1 "acceptors = { n = 1; };\n", 2, want,
               "acceptors: group is wrong type");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got an array; %s",
             range);
    load_fails(LISTEN1 "acceptors = [ 1 ];\n", 2, want, "acceptors: array is wrong type");
    snprintf(want, sizeof(want), "acceptors: expected an integer, got a list; %s", range);
    load_fails(LISTEN1 "acceptors = ( 1 );\n", 2, want, "acceptors: list is wrong type");

    load_ok(LISTEN1 "queue_capacity = 1048576;\n", "queue_capacity: max");
    is_int(conf.queue_capacity, 1048576, "queue_capacity: max stored");
    load_ok(LISTEN1 "queue_capacity = 1;\n", "queue_capacity: min");
    load_fails(LISTEN1 "queue_capacity = 0;\n", 2,
               "queue_capacity: 0 is out of range; use an integer from 1 to 1048576",
               "queue_capacity: 0 below range");
    load_fails(
        LISTEN1 "queue_capacity = 1048577;\n", 2,
        "queue_capacity: 1048577 is out of range; use an integer from 1 to 1048576",
        "queue_capacity: above range");
    load_fails(
        LISTEN1 "queue_capacity = \"lots\";\n", 2,
        "queue_capacity: expected an integer, got a string; use an integer from 1 to "
        "1048576",
        "queue_capacity: wrong type");

    load_ok(LISTEN1 "queue_wait_ms = 600000;\n", "queue_wait_ms: max");
    is_int(conf.queue_wait_ms, 600000, "queue_wait_ms: max stored");
    load_fails(LISTEN1 "queue_wait_ms = -1;\n", 2,
               "queue_wait_ms: -1 is out of range; use an integer from 0 to 600000",
               "queue_wait_ms: below range");
    load_fails(LISTEN1 "queue_wait_ms = 600001;\n", 2,
               "queue_wait_ms: 600001 is out of range; use an integer from 0 to 600000",
               "queue_wait_ms: above range");
    load_ok(LISTEN1 "queue_spin_us = 0;\n", "queue_spin_us: 0 (sleep at once)");
    is_int(conf.queue_spin_us, 0, "queue_spin_us: 0 stored");
    load_fails(LISTEN1 "queue_spin_us = 10001;\n", 2,
               "queue_spin_us: 10001 is out of range; use an integer from 0 to 10000",
               "queue_spin_us: above range");
    load_fails(
        LISTEN1 "queue_wait_ms = 1.0;\n", 2,
        "queue_wait_ms: expected an integer, got a float; use an integer from 0 to "
        "600000",
        "queue_wait_ms: wrong type");
}

/* libconfig 1.5 truncates integers beyond 32 bits written without L; conf.c
 * must still see the number as written. */
static void test_big_integers(void)
{
    load_fails(
        LISTEN1 "queue_capacity = 4294967297;\n", 2,
        "queue_capacity: 4294967297 is out of range; use an integer from 1 to 1048576",
        "big int: 2^32+1 is not taken as 1");
    load_fails(
        LISTEN1 "queue_capacity = 0x100000001;\n", 2,
        "queue_capacity: 4294967297 is out of range; use an integer from 1 to 1048576",
        "big int: hex 2^32+1 is not taken as 1");
    load_fails(
        LISTEN1 "queue_wait_ms = -4294967296;\n", 2,
        "queue_wait_ms: -4294967296 is out of range; use an integer from 0 to 600000",
        "big int: -2^32 is not taken as 0");
    load_fails(
        LISTEN1 "acceptors = 99999999999999999999;\n", 2,
        "acceptors: 99999999999999999999 is out of range; use an integer from 1 to 64",
        "big int: beyond int64 is out of range");
    load_fails(
        LISTEN1 "acceptors = 99999999999999999999L;\n", 2,
        "acceptors: 99999999999999999999L is out of range; use an integer from 1 to 64",
        "big int: beyond int64 with L is out of range");
    load_fails(
        LISTEN1 "workers = 4294967298;\n", 2,
        "workers: 4294967298 is out of range; use \"auto\" or an integer from 1 to 1024",
        "big int: workers 2^32+2 is not taken as 2");
    load_ok(LISTEN1 "shm_size = 4294967296;\n",
            "big int: shm_size 4g as a plain integer");
    is_int(conf.shm_size, 4ll << 30, "big int: shm_size 4g stored");
    load_ok(LISTEN1 "shm_size =\n\n   68719476736;\n",
            "big int: value lines below the name");
    is_int(conf.shm_size, 64ll << 30, "big int: shm_size 64g stored");
    load_ok(LISTEN1 "acceptors = 2; shm_size = 8589934592;\n",
            "big int: two settings on one line");
    is_int(conf.acceptors, 2, "big int: the small one keeps its value");
    is_int(conf.shm_size, 8ll << 30, "big int: the big one gets its value");
    load_ok(LISTEN1
            "pid_file = \"99999999999\"; # 99999999999\n/* 4294967297 */ acceptors = 3;"
            " // 99999999999\n",
            "big int: digits in strings and comments are ignored");
    is_int(conf.acceptors, 3, "big int: acceptors after a comment");
    load_fails(LISTEN1 "shm_size = 1.5e10;\n", 2,
               "shm_size: expected a size, got a float; use "
               "a number of bytes or a string like \"64m\", from 64k to 64g",
               "big int: floats are not integers");
    load_ok(LISTEN1 "# .5 -.5e3 +1\nacceptors = +3;\n", "big int: signs and stray dots");
    is_int(conf.acceptors, 3, "big int: +3 stored");
}

static void test_workers(void)
{
    load_ok(LISTEN1 "workers = \"auto\";\n", "workers: auto");
    ok(conf.workers_auto && conf.workers == online_cpus(), "workers: auto = online CPUs");
    load_ok(LISTEN1 "workers = 1024;\n", "workers: 1024 (max)");
    is_int(conf.workers, 1024, "workers: 1024 stored");
    load_ok(LISTEN1 "workers = 1;\n", "workers: 1 (min)");
    load_fails(LISTEN1 "\n\n\nworkers = 0;\n", 5,
               "workers: 0 is out of range; use \"auto\" or an integer from 1 to 1024",
               "workers: 0 below range, right line");
    load_fails(LISTEN1 "workers = 1025;\n", 2,
               "workers: 1025 is out of range; use \"auto\" or an integer from 1 to 1024",
               "workers: above range");
    load_fails(LISTEN1 "workers = -3;\n", 2,
               "workers: -3 is out of range; use \"auto\" or an integer from 1 to 1024",
               "workers: negative");
    load_fails(
        LISTEN1 "workers = \"many\";\n", 2,
        "workers: \"many\" is not valid; use \"auto\" or an integer from 1 to 1024",
        "workers: unknown string");
    load_fails(
        LISTEN1 "workers = 2.0;\n", 2,
        "workers: expected \"auto\" or an integer, got a float; use \"auto\" or an "
        "integer from 1 to 1024",
        "workers: wrong type");
}

static void test_sizes(void)
{
    uint64_t v = 0;

    ok(cr_conf_parse_size("0", &v) == CR_OK && v == 0, "parse_size: 0");
    ok(cr_conf_parse_size("1", &v) == CR_OK && v == 1, "parse_size: 1");
    ok(cr_conf_parse_size("64k", &v) == CR_OK && v == 65536, "parse_size: 64k");
    ok(cr_conf_parse_size("64K", &v) == CR_OK && v == 65536, "parse_size: 64K");
    ok(cr_conf_parse_size("3m", &v) == CR_OK && v == 3 << 20, "parse_size: 3m");
    ok(cr_conf_parse_size("3M", &v) == CR_OK && v == 3 << 20, "parse_size: 3M");
    ok(cr_conf_parse_size("2g", &v) == CR_OK && v == 2ull << 30, "parse_size: 2g");
    ok(cr_conf_parse_size("2G", &v) == CR_OK && v == 2ull << 30, "parse_size: 2G");
    ok(cr_conf_parse_size("18446744073709551615", &v) == CR_OK && v == UINT64_MAX,
       "parse_size: u64 max");
    ok(cr_conf_parse_size("18446744073709551616", &v) == CR_ERROR,
       "parse_size: overflow");
    ok(cr_conf_parse_size("17179869184g", &v) == CR_ERROR,
       "parse_size: overflow by suffix");
    ok(cr_conf_parse_size("", &v) == CR_ERROR, "parse_size: empty");
    ok(cr_conf_parse_size("k", &v) == CR_ERROR, "parse_size: suffix only");
    ok(cr_conf_parse_size("1kb", &v) == CR_ERROR, "parse_size: 1kb");
    ok(cr_conf_parse_size("1t", &v) == CR_ERROR, "parse_size: unknown suffix");
    ok(cr_conf_parse_size(" 1k", &v) == CR_ERROR, "parse_size: leading space");
    ok(cr_conf_parse_size("1k ", &v) == CR_ERROR, "parse_size: trailing space");
    ok(cr_conf_parse_size("-1", &v) == CR_ERROR, "parse_size: negative");
    ok(cr_conf_parse_size("+1", &v) == CR_ERROR, "parse_size: plus sign");
    ok(cr_conf_parse_size("1.5m", &v) == CR_ERROR, "parse_size: fraction");

    load_ok(LISTEN1 "shm_size = \"64k\";\nmax_payload = \"32k\";\n",
            "shm_size: 64k (min)");
    is_int(conf.shm_size, 65536, "shm_size: 64k stored");
    load_ok(LISTEN1 "shm_size = 65536;\nmax_payload = 32768;\n", "shm_size: 65536 bytes");
    is_int(conf.max_payload, 32768, "max_payload: bytes stored");
    load_ok(LISTEN1 "shm_size = \"64g\";\n", "shm_size: 64g (max) as a string");
    is_int(conf.shm_size, 64ll << 30, "shm_size: 64g stored");
    load_ok(LISTEN1 "shm_size = 68719476736L;\n", "shm_size: 64g as an int64 literal");
    is_int(conf.shm_size, 64ll << 30, "shm_size: 64g (L) stored");

    load_fails(LISTEN1 "shm_size = \"63k\";\n", 2,
               "shm_size: 63k is out of range; " RANGE_SIZE_SHM,
               "shm_size: 63k below range");
    load_fails(LISTEN1 "shm_size = 65535;\n", 2,
               "shm_size: 65535 is out of range; " RANGE_SIZE_SHM,
               "shm_size: 65535 below range");
    load_fails(LISTEN1 "shm_size = \"65g\";\n", 2,
               "shm_size: 65g is out of range; " RANGE_SIZE_SHM,
               "shm_size: 65g above range");
    load_fails(LISTEN1 "shm_size = 68719476737;\n", 2,
               "shm_size: 68719476737 is out of "
               "range; " RANGE_SIZE_SHM,
               "shm_size: 64g+1 above range");
    load_fails(LISTEN1 "shm_size = -1;\n", 2,
               "shm_size: -1 is out of range; " RANGE_SIZE_SHM, "shm_size: negative");
    load_fails(LISTEN1 "shm_size = 99999999999999999999;\n", 2,
               "shm_size: 99999999999999999999 is out of range; " RANGE_SIZE_SHM,
               "shm_size: beyond int64");
    load_fails(
        LISTEN1 "shm_size = \"64x\";\n", 2,
        "shm_size: \"64x\" is not a size; use a "
        "number of bytes or a number with a k, m or g suffix like \"64m\", from 64k "
        "to 64g",
        "shm_size: bad suffix");
    load_fails(
        LISTEN1 "shm_size = \"\";\n", 2,
        "shm_size: \"\" is not a size; use a "
        "number of bytes or a number with a k, m or g suffix like \"64m\", from 64k "
        "to 64g",
        "shm_size: empty string");
    load_fails(LISTEN1 "shm_size = 1.5;\n", 2,
               "shm_size: expected a size, got a float; use "
               "a number of bytes or a string like \"64m\", from 64k to 64g",
               "shm_size: wrong type");

    load_ok(LISTEN1 "shm_size = \"2g\";\nmax_payload = \"1g\";\n",
            "max_payload: 1g (max)");
    is_int(conf.max_payload, 1ll << 30, "max_payload: 1g stored");
    load_ok(LISTEN1 "max_payload = 1;\n", "max_payload: 1 (min)");
    load_fails(LISTEN1 "max_payload = 0;\n", 2,
               "max_payload: 0 is out of range; use a size "
               "from 1 to 1g",
               "max_payload: 0 below range");
    load_fails(LISTEN1 "shm_size = \"4g\";\nmax_payload = \"2g\";\n", 3,
               "max_payload: 2g is out of range; use a size from 1 to 1g",
               "max_payload: above range");
    load_fails(
        LISTEN1 "max_payload = \"40m\";\n", 2,
        "max_payload: 40m is more than half of shm_size (64m); raise shm_size to at "
        "least 80m or lower max_payload to at most 32m",
        "max_payload: more than shm_size/2, at its line");
    load_fails(
        LISTEN1 "max_payload = \"33m\";\nshm_size = \"64m\";\n", 2,
        "max_payload: 33m is more than half of shm_size (64m); raise shm_size to at "
        "least 66m or lower max_payload to at most 32m",
        "max_payload: checked after every setting was read");
    load_fails(LISTEN1 "\nshm_size = \"4m\";\n", 3,
               "max_payload: 4m is more than half of shm_size (4m); raise shm_size to at "
               "least 8m or lower max_payload to at most 2m",
               "max_payload: default too large for shm_size, at shm_size's line");
    load_ok(LISTEN1 "max_payload = \"32m\";\n", "max_payload: exactly shm_size/2");
}

static void test_strings(void)
{
    char longpath[PATH_MAX + 16], text[PATH_MAX + 64], want[PATH_MAX + 256];
    static const char *levels[] = {"debug", "info", "notice", "warn",
                                   "error", "crit", "alert",  "emerg"};
    static const int values[] = {CR_LOG_DEBUG, CR_LOG_INFO, CR_LOG_NOTICE, CR_LOG_WARN,
                                 CR_LOG_ERR,   CR_LOG_CRIT, CR_LOG_ALERT,  CR_LOG_EMERG};

    for (unsigned i = 0; i < 8; i++) {
        char t[128], name[64];
        snprintf(t, sizeof(t), LISTEN1 "log_level = \"%s\";\n", levels[i]);
        snprintf(name, sizeof(name), "log_level: %s", levels[i]);
        load_ok(t, name);
        is_int(conf.log_level, values[i], name);
        is_str(cr_log_level_name(values[i]), levels[i], "cr_log_level_name round-trips");
    }
    is_int(cr_log_level_parse("warning"), -1, "cr_log_level_parse: unknown name");
    is_str(cr_log_level_name(99), "unknown", "cr_log_level_name: out of range");
    load_fails(LISTEN1 "log_level = \"verbose\";\n", 2,
               "log_level: \"verbose\" is not a log "
               "level; use one of debug, info, notice, warn, error, crit, alert, emerg",
               "log_level: unknown name");
    load_fails(LISTEN1 "log_level = 3;\n", 2,
               "log_level: expected a string, got an integer; "
               "use one of debug, info, notice, warn, error, crit, alert, emerg",
               "log_level: wrong type");

    load_fails(LISTEN1 "pid_file = 1;\n", 2,
               "pid_file: expected a string, got an integer; "
               "use a file path, or \"\" for no pid file",
               "pid_file: wrong type");
    load_fails(LISTEN1 "error_log = false;\n", 2,
               "error_log: expected a string, got a "
               "boolean; use \"stderr\" or a file path",
               "error_log: wrong type");
    load_fails(LISTEN1 "error_log = \"\";\n", 2,
               "error_log: the path is empty; use "
               "\"stderr\" or a file path",
               "error_log: empty");

    memset(longpath, 'a', PATH_MAX);
    longpath[PATH_MAX] = '\0';
    snprintf(text, sizeof(text), LISTEN1 "pid_file = \"%s\";\n", longpath);
    snprintf(want, sizeof(want),
             "pid_file: the path is too long once resolved against the "
             "prefix %s (the limit is %d bytes); use a shorter path",
             dir, PATH_MAX - 1);
    load_fails(text, 2, want, "pid_file: too long");
}

static void test_unknown(void)
{
    load_fails(LISTEN1 "wrokers = 2;\n", 2,
               "unknown setting \"wrokers\"; did you mean "
               "\"workers\"? (see conf/crunchd.conf for every setting)",
               "unknown: transposition suggests workers");
    load_fails(LISTEN1 "\nWorkers = 2;\n", 3,
               "unknown setting \"Workers\"; did you mean "
               "\"workers\"? (see conf/crunchd.conf for every setting)",
               "unknown: case suggests workers");
    load_fails(LISTEN1 "max_paylod = 2;\n", 2,
               "unknown setting \"max_paylod\"; did you mean "
               "\"max_payload\"? (see conf/crunchd.conf for every setting)",
               "unknown: missing letter suggests max_payload");
    load_fails(LISTEN1 "listens = [ \"*:1\" ];\n", 2,
               "unknown setting \"listens\"; did you "
               "mean \"listen\"? (see conf/crunchd.conf for every setting)",
               "unknown: suggests listen");
    load_fails(LISTEN1 "frobnicate = 1;\n", 2,
               "unknown setting \"frobnicate\"; see "
               "conf/crunchd.conf for every setting",
               "unknown: no suggestion when far");
    load_fails(LISTEN1 "tls = {\n  cert = \"x\";\n};\n", 2,
               "unknown setting \"tls\"; TLS is set per listener: listen = ( { address = "
               "\"127.0.0.1:50051\"; tls = { cert = \"server.pem\"; key = "
               "\"server.key\"; }; } );",
               "unknown: tls at the top level points at listen");
    load_fails(LISTEN1 "limits = {\n  n = 1;\n};\n", 2,
               "unknown setting \"limits\"; see "
               "conf/crunchd.conf for every setting",
               "unknown: a group is unknown too");
    load_fails(LISTEN1 "task_timeout = 5;\n", 2,
               "unknown setting \"task_timeout\"; did you mean \"task_timeout_ms\"? (see "
               "conf/crunchd.conf for every setting)",
               "unknown: a new setting without _ms is suggested");
    load_fails(LISTEN1 "deamon = true;\n", 2,
               "unknown setting \"deamon\"; did you mean \"daemon\"? (see "
               "conf/crunchd.conf for every setting)",
               "unknown: deamon suggests daemon");
    load_fails(
        LISTEN1 "a_very_long_setting_name_beyond_anything_we_know = 1;\n", 2,
        "unknown setting \"a_very_long_setting_name_beyond_anything_we_know\"; see "
        "conf/crunchd.conf for every setting",
        "unknown: long names");
    load_fails(LISTEN1 "workers = 0;\nfoo = 1;\n", 2,
               "workers: 0 is out of range; use \"auto\" "
               "or an integer from 1 to 1024",
               "errors are reported in file order");
}

static void test_listen(void)
{
    const struct sockaddr_in6 *sin6 = (const void *)&conf.listen[1].addr;
    const struct sockaddr_in *sin = (const void *)&conf.listen[0].addr;
    const struct sockaddr_un *sun = (const void *)&conf.listen[2].addr;
    char want[3 * PATH_MAX], text[2 * PATH_MAX], sock[PATH_MAX + 32];
    struct in6_addr lo6 = IN6ADDR_LOOPBACK_INIT;

    load_ok("listen = [\n  \"*:80\",\n  \"[::1]:443\",\n  \"unix:sub/crunchd.sock\",\n"
            "  \"localhost:8080\",\n  \"[::]:80\",\n  \"unix:/tmp/abs.sock\",\n"
            "  \"10.1.2.3:65535\"\n];\n",
            "listen: every form (array)");
    is_int(conf.nlisten, 7, "listen: seven");
    is_int(sin->sin_family, AF_INET, "listen: * is AF_INET");
    is_int(sin->sin_addr.s_addr, htonl(INADDR_ANY), "listen: * is 0.0.0.0");
    is_int(ntohs(sin->sin_port), 80, "listen: *:80 port");
    is_int(conf.listen[0].line, 2, "listen: element line");
    is_int(conf.listen[1].line, 3, "listen: second element line");
    is_int(sin6->sin6_family, AF_INET6, "listen: [::1] is AF_INET6");
    ok(memcmp(&sin6->sin6_addr, &lo6, sizeof(lo6)) == 0, "listen: [::1] address");
    is_int(ntohs(sin6->sin6_port), 443, "listen: [::1]:443 port");
    is_int(conf.listen[1].addrlen, sizeof(struct sockaddr_in6), "listen: v6 addrlen");
    is_int(conf.listen[2].kind, CR_LISTEN_UNIX, "listen: unix kind");
    snprintf(sock, sizeof(sock), "%s/sub/crunchd.sock", dir);
    is_str(conf.listen[2].path, sock, "listen: relative unix path under the prefix");
    is_str(sun->sun_path, sock, "listen: sun_path");
    is_int(sun->sun_family, AF_UNIX, "listen: AF_UNIX");
    is_int(conf.listen[2].addrlen,
           offsetof(struct sockaddr_un, sun_path) + strlen(sock) + 1,
           "listen: unix addrlen");
    is_str(conf.listen[2].text, "unix:sub/crunchd.sock", "listen: unix text as written");
    sin = (const void *)&conf.listen[3].addr;
    is_int(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK,
           "listen: localhost is 127.0.0.1");
    is_str(conf.listen[5].path, "/tmp/abs.sock", "listen: absolute unix path kept");
    sin = (const void *)&conf.listen[6].addr;
    is_int(ntohs(sin->sin_port), 65535, "listen: port 65535");
    is_int(ntohl(sin->sin_addr.s_addr), 0x0a010203, "listen: 10.1.2.3");
    load_ok("listen = ( \"127.0.0.1:1\" );\n", "listen: list form, port 1");

    load_fails("acceptors = 1;\n", 0,
               "listen: missing; add at least one address, like "
               "listen = [ \"127.0.0.1:50051\" ];",
               "listen: missing");
    load_fails("listen = [];\n", 1,
               "listen: the list is empty; give at least one address, "
               "like listen = [ \"127.0.0.1:50051\" ];",
               "listen: empty array");
    load_fails("listen = ();\n", 1,
               "listen: the list is empty; give at least one address, "
               "like listen = [ \"127.0.0.1:50051\" ];",
               "listen: empty list");
    load_fails("listen = \"127.0.0.1:50051\";\n", 1,
               "listen: expected a list of addresses, "
               "got a string; write listen = [ \"127.0.0.1:50051\" ];",
               "listen: a bare string");
    load_fails("listen = ( \"*:1\",\n 2 );\n", 2, "listen: " WANT_ELEM "got an integer",
               "listen: an element of wrong type");

    strcpy(text, "listen = [ ");
    for (int i = 1; i <= 17; i++)
        snprintf(text + strlen(text), sizeof(text) - strlen(text), "%s\"*:%d\"",
                 i > 1 ? ", " : "", i);
    strcat(text, " ];\n");
    load_fails(text, 1, "listen: 17 addresses; at most 16 are allowed",
               "listen: 17 entries");
    strcpy(strstr(text, ", \"*:17\""), " ];\n");
    load_ok(text, "listen: 16 entries");
    is_int(conf.nlisten, 16, "listen: 16 stored");

#define BAD(str, msg, name)                                                              \
    load_fails("listen = [\n \"*:1\",\n \"" str "\" ];\n", 3,                            \
               "listen: \"" str "\": " msg, name)
    BAD("127.0.0.1", "the port is missing; write \"host:port\", like \"127.0.0.1:50051\"",
        "listen: no port");
    BAD("127.0.0.1:",
        "the port is missing; use \"host:port\" with a numeric IPv4 address, "
        "\"*\" or \"localhost\", \"[v6]:port\" or \"unix:/path\"",
        "listen: empty port");
    BAD("127.0.0.1:0", "the port 0 is out of range; use a port from 1 to 65535",
        "listen: port 0");
    BAD("127.0.0.1:65536", "the port 65536 is out of range; use a port from 1 to 65535",
        "listen: port 65536");
    BAD("127.0.0.1:99999999999999999999",
        "the port 99999999999999999999 is out of range; "
        "use a port from 1 to 65535",
        "listen: huge port");
    BAD("127.0.0.1:http", "the port \"http\" is not a number; use a port from 1 to 65535",
        "listen: named port");
    BAD("127.0.0.1:-1", "the port \"-1\" is not a number; use a port from 1 to 65535",
        "listen: negative port");
    BAD("example.com:80",
        "\"example.com\" is not a numeric IPv4 address; use digits like "
        "\"127.0.0.1\", \"*\" or \"localhost\" (crunchd does no DNS lookups)",
        "listen: DNS name");
    BAD("1.2.3:80",
        "\"1.2.3\" is not a numeric IPv4 address; use digits like \"127.0.0.1\", "
        "\"*\" or \"localhost\" (crunchd does no DNS lookups)",
        "listen: short IPv4");
    BAD("256.1.1.1:80",
        "\"256.1.1.1\" is not a numeric IPv4 address; use digits like "
        "\"127.0.0.1\", \"*\" or \"localhost\" (crunchd does no DNS lookups)",
        "listen: bad IPv4 octet");
    BAD(":80",
        "the host is missing; use \"*:80\" for every address or \"127.0.0.1:80\" for "
        "this host only",
        "listen: no host");
    BAD("::1:80", "an IPv6 address needs brackets, like \"[::1]:50051\"",
        "listen: IPv6 without brackets");
    BAD("[::1", "the ']' after the IPv6 address is missing; write \"[::1]:50051\"",
        "listen: no closing bracket");
    BAD("[::1]", "the port is missing; write \"[::1]:50051\"", "listen: v6 without port");
    BAD("[::1]80", "the port is missing; write \"[::1]:50051\"",
        "listen: v6 without colon");
    BAD("[::1]:0", "the port 0 is out of range; use a port from 1 to 65535",
        "listen: v6 port 0");
    BAD("[fe80::zz]:80",
        "\"fe80::zz\" is not a numeric IPv6 address; use one like "
        "\"[::1]:50051\" or \"[::]:50051\" (no DNS lookups)",
        "listen: bad IPv6");
    BAD("[localhost]:80",
        "\"localhost\" is not a numeric IPv6 address; use one like "
        "\"[::1]:50051\" or \"[::]:50051\" (no DNS lookups)",
        "listen: name in brackets");
    BAD("unix:", "the path is missing; write \"unix:/path/to/crunchd.sock\"",
        "listen: unix without path");
#undef BAD

    memset(sock, 's', 120);
    sock[120] = '\0';
    snprintf(text, sizeof(text), "listen = [ \"unix:/%s\" ];\n", sock);
    snprintf(want, sizeof(want),
             "listen: \"unix:/%s\": the socket path /%s is too long (at "
             "most 107 bytes); use a shorter path or a shorter prefix (-p)",
             sock, sock);
    load_fails(text, 1, want, "listen: unix path longer than sun_path");
    sock[106] = '\0';
    snprintf(text, sizeof(text), "listen = [ \"unix:/%s\" ];\n", sock);
    load_ok(text, "listen: unix path of 107 bytes");
    memset(sock, 'x', 600);
    sock[600] = '\0';
    snprintf(text, sizeof(text), "listen = [ \"%s:1\" ];\n", sock);
    load_fails(text, 1,
               "listen: the address \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\" is too "
               "long (at most 511 bytes)",
               "listen: text longer than 511 bytes");

    load_fails(
        "listen = [\n  \"*:80\",\n  \"127.0.0.1:81\",\n  \"0.0.0.0:80\"\n];\n", 4,
        "listen: \"0.0.0.0:80\" is the same address as \"*:80\" on line 2; remove one "
        "of them",
        "listen: duplicate names both lines");
    load_fails(
        "listen = [ \"localhost:9\", \"127.0.0.1:9\" ];\n", 1,
        "listen: \"127.0.0.1:9\" is the same address as \"localhost:9\" on line 1; "
        "remove one of them",
        "listen: localhost duplicate");
    load_fails(
        "listen = [ \"[::]:9\",\n \"[0::0]:9\" ];\n", 2,
        "listen: \"[0::0]:9\" is the same address as \"[::]:9\" on line 1; remove one "
        "of them",
        "listen: IPv6 duplicate");
    snprintf(text, sizeof(text), "listen = [ \"unix:a.sock\",\n\"unix:%s/a.sock\" ];\n",
             dir);
    snprintf(want, sizeof(want),
             "listen: \"unix:%s/a.sock\" is the same address as "
             "\"unix:a.sock\" on line 1; remove one of them",
             dir);
    load_fails(text, 2, want, "listen: unix duplicate after resolving");
    load_fails("listen = [\n  \"*:1\",\n  \"*:x\"\n\n];\n", 3,
               "listen: \"*:x\": the port \"x\" "
               "is not a number; use a port from 1 to 65535",
               "listen: the last element's own line, not the ']' line");
    load_fails(
        "listen = [ \"*:1\",\n  \"*:\"\n  \"x\",\n  \"*:3\" ];\n", 2,
        "listen: \"*:x\": the port \"x\" is not a number; use a port from 1 to 65535",
        "listen: adjacent strings join; the line is where the first starts");
    load_fails("listen = (\n  \"*:1\",\n  true\n);\n", 3,
               "listen: " WANT_ELEM "got a boolean", "listen: a boolean element's line");
    load_fails("listen = (\n  \"*:1\",\n  [ \"*:2\" ]\n);\n", 3,
               "listen: " WANT_ELEM "got an array", "listen: a nested array's line");
    load_ok("listen = [ \"*:9\", \"*:10\", \"[::]:9\", \"127.0.0.1:10\", \"unix:9\" ];\n",
            "listen: same port, different addresses or families");
}

static void test_syntax_and_files(void)
{
    char want[PATH_MAX + 256], sub[PATH_MAX + 32], cwd[PATH_MAX];

    load_fails(LISTEN1 "workers = ;\n", 2,
               "syntax error; check the quotes, '=' "
               "and brackets on this line and the one before",
               "syntax error with its line");
    load_fails(LISTEN1 "pid_file = \"x\n\n", 2,
               "syntax error: this string is never closed; "
               "add the closing '\"'",
               "unterminated string: the line it starts on");
    load_fails(LISTEN1 "/* off\n  workers = 2;\n", 2,
               "syntax error: this comment is never "
               "closed; add the closing */",
               "unterminated comment: not silently ignored");
    load_fails(LISTEN1 "workers = /* off\n", 2,
               "syntax error: this comment is never "
               "closed; add the closing */",
               "unterminated comment inside a setting");
    load_ok(LISTEN1 "/* a\n * b */ acceptors = 2; # \"quote\n// /* not open\n",
            "closed comments of every kind");
    is_int(conf.acceptors, 2, "setting after a comment on the same line");
    load_fails(LISTEN1 "workers = 1;\nworkers = 2;\n", 3,
               "duplicate setting "
               "name; a setting appears twice: keep one of them",
               "duplicate setting");
    snprintf(want, sizeof(want),
             "@include \"missing.conf\": cannot open %s/missing.conf: No such file or "
             "directory; check the @include path (relative paths start in the directory "
             "of the main file)",
             dir);
    load_fails(LISTEN1 "@include \"missing.conf\"\n", 2, want,
               "missing include: the file and the reason");

    /* Includes resolve against the directory of the main file; messages name
     * the included file and its own line. */
    snprintf(sub, sizeof(sub), "%s/extra.conf", dir);
    write_file(sub, "# extra\nworkers = 3;\nshm_size = 4294967296;\n");
    load_ok(LISTEN1 "@include \"extra.conf\"\nacceptors = 2;\n", "include: loads");
    is_int(conf.workers, 3, "include: setting from the included file");
    is_int(conf.shm_size, 4ll << 30, "include: big integer in the included file");
    is_int(conf.acceptors, 2, "include: setting after the include");
    write_file(sub, "# extra\n\nacceptors = 100;\n");
    snprintf(want, sizeof(want),
             "%s:3: acceptors: 100 is out of range; use an integer from 1 "
             "to 64",
             sub);
    ok(load(LISTEN1 "@include \"extra.conf\"\n") == CR_ERROR, "include: bad value fails");
    is_str(err, want, "include: message names the included file and line");
    write_file(sub, "a = 1;\nb = ;\n");
    snprintf(want, sizeof(want),
             "%s:2: syntax error; check the quotes, '=' and "
             "brackets on this line and the one before",
             sub);
    ok(load(LISTEN1 "@include \"extra.conf\"\n") == CR_ERROR,
       "include: syntax error fails");
    is_str(err, want, "include: syntax error names the included file and line");
    unlink(sub);

    snprintf(want, sizeof(want),
             "%s/nope.conf: cannot open: No such file or directory; check "
             "the path given with -c",
             dir);
    snprintf(sub, sizeof(sub), "%s/nope.conf", dir);
    ok(cr_conf_load(&conf, sub, dir, err, sizeof(err)) == CR_ERROR, "missing file fails");
    is_str(err, want, "missing file: message");
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        strcpy(cwd, "?");
    snprintf(want, sizeof(want),
             "%s/no/such.conf: cannot open: No such file or directory; "
             "check the path given with -c",
             cwd);
    ok(cr_conf_load(&conf, "no/such.conf", dir, err, sizeof(err)) == CR_ERROR,
       "missing relative file fails");
    is_str(err, want, "missing relative file: shown as an absolute path");
    snprintf(want, sizeof(want),
             "%s: cannot open: Is a directory; check the path given with "
             "-c",
             dir);
    ok(cr_conf_load(&conf, dir, dir, err, sizeof(err)) == CR_ERROR, "a directory fails");
    is_str(err, want, "a directory: message");
    ok(cr_conf_load(&conf, "/dev/null", dir, err, sizeof(err)) == CR_ERROR,
       "a device fails");
    is_str(err,
           "/dev/null: cannot open: not a regular file; check the path given with -c",
           "a device: message");

    /* An unreadable file. As root nothing is unreadable, so the check runs in a
     * child that has dropped to an unprivileged uid first. */
    {
        int fds[2];
        write_file(path, LISTEN1);
        chmod(path, 0);
        snprintf(want, sizeof(want),
                 "%s: cannot open: Permission denied; check the path given "
                 "with -c",
                 path);
        ok(pipe(fds) == 0, "pipe for the unprivileged check");
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
                _exit(3);
            int rc = cr_conf_load(&conf, path, dir, err, sizeof(err));
            if (write(fds[1], err, strlen(err)) < 0)
                _exit(4);
            _exit(rc == CR_ERROR ? 0 : 1);
        }
        close(fds[1]);
        char got[1024] = "";
        ssize_t n = read(fds[0], got, sizeof(got) - 1);
        got[n > 0 ? n : 0] = '\0';
        close(fds[0]);
        int st = -1;
        waitpid(pid, &st, 0);
        ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "unreadable file fails");
        is_str(got, want, "unreadable file: message");
        chmod(path, 0644);
    }

    {
        int fd = open(path, O_WRONLY | O_TRUNC);
        ok(fd != -1 && ftruncate(fd, (16 << 20) + 1) == 0, "a 16 MiB + 1 file");
        if (fd != -1)
            close(fd);
        snprintf(want, sizeof(want),
                 "%s: the file is %d bytes, more than a config file can be "
                 "(%d); check the path given with -c",
                 path, (16 << 20) + 1, 16 << 20);
        ok(cr_conf_load(&conf, path, dir, err, sizeof(err)) == CR_ERROR,
           "a huge file fails");
        is_str(err, want, "a huge file: message");
    }

    /* load_string: the name is FILE, includes resolve against the prefix. */
    ok(cr_conf_load_string(&conf, LISTEN1 "\nacceptors = 0;\n", "inline", dir, err,
                           sizeof(err)) == CR_ERROR,
       "load_string: error");
    is_str(err, "inline:3: acceptors: 0 is out of range; use an integer from 1 to 64",
           "load_string: name and line in the message");
    snprintf(sub, sizeof(sub), "%s/inc.conf", dir);
    write_file(sub, "workers = 7;\n");
    ok(cr_conf_load_string(&conf, LISTEN1 "@include \"inc.conf\"\n", "inline", dir, err,
                           sizeof(err)) == CR_OK &&
           conf.workers == 7,
       "load_string: include under the prefix");
    unlink(sub);
    is_str(conf.file, "inline", "load_string: file is the name");

    /* A short error buffer is cut, never overrun. */
    {
        char small[16];
        memset(small, 'X', sizeof(small));
        ok(cr_conf_load_string(&conf, "acceptors = 0;", "inline", dir, small, 8) ==
                   CR_ERROR &&
               strcmp(small, "inline:") == 0 && small[8] == 'X',
           "short error buffer is cut");
        ok(cr_conf_load_string(&conf, "acceptors = 0;", "inline", dir, NULL, 0) ==
               CR_ERROR,
           "no error buffer at all");
    }
}

/* --- supervision, gRPC channel, process settings ---------------------------- */

/* Integer settings: the edges of each range, one past them, a wrong type, and
 * the line in every message. */
static void test_new_integers(void)
{
    static const struct {
        const char *name;
        unsigned long long min, max, def;
    } ints[] = {
        {"task_timeout_ms", 0, 86400000, 30000},
        {"task_retries", 0, 5, 0},
        {"worker_max_tasks", 0, 4294967295ull, 0},
        {"respawn_burst", 1, 1000, 5},
        {"respawn_window_ms", 100, 3600000, 10000},
        {"worker_rlimit_nofile", 0, 1048576, 0},
        {"max_concurrent_streams", 1, 1000000, 1000},
        {"max_connection_idle_ms", 0, 86400000, 0},
        {"max_connection_age_ms", 1000, 86400000, 30000},
        {"max_connection_age_grace_ms", 0, 3600000, 10000},
        {"stream_max_pending", 1, 1000000, 1024},
        {"updates_capacity", 1, 1048576, 65536},
        {"shutdown_timeout_ms", 1000, 3600000, 60000},
        {"max_draining_generations", 1, 64, 4},
    };
    char text[256], want[512], name[128], range[128];
    char *dump = NULL;
    size_t len = 0;
    FILE *out;

    for (unsigned i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        const char *n = ints[i].name;

        snprintf(range, sizeof(range), "use an integer from %llu to %llu", ints[i].min,
                 ints[i].max);

        snprintf(text, sizeof(text), LISTEN1 "%s = %llu;\n", n, ints[i].min);
        snprintf(name, sizeof(name), "%s: %llu (min)", n, ints[i].min);
        load_ok(text, name);
        out = open_memstream(&dump, &len);
        cr_conf_dump(&conf, out);
        fclose(out);
        snprintf(want, sizeof(want), "\n%s = %llu;\n", n, ints[i].min);
        snprintf(name, sizeof(name), "%s: min stored and dumped", n);
        ok(strstr(dump, want) != NULL, "%s", name);
        free(dump);
        dump = NULL;

        /* Written the way render_value in t/conftest.py writes big ones. */
        snprintf(text, sizeof(text), LISTEN1 "\n%s = %llu%s;\n", n, ints[i].max,
                 ints[i].max > INT32_MAX ? "L" : "");
        snprintf(name, sizeof(name), "%s: %llu (max)", n, ints[i].max);
        load_ok(text, name);
        snprintf(text, sizeof(text), LISTEN1 "\n%s = %llu;\n", n, ints[i].max);
        snprintf(name, sizeof(name), "%s: max without L", n);
        load_ok(text, name);
        out = open_memstream(&dump, &len);
        cr_conf_dump(&conf, out);
        fclose(out);
        snprintf(want, sizeof(want), "\n%s = %llu;\n", n, ints[i].max);
        snprintf(name, sizeof(name), "%s: max stored and dumped", n);
        ok(strstr(dump, want) != NULL, "%s", name);
        free(dump);
        dump = NULL;

        snprintf(text, sizeof(text), LISTEN1 "\n%s = %llu;\n", n, ints[i].max + 1);
        snprintf(want, sizeof(want), "%s: %llu is out of range; %s", n, ints[i].max + 1,
                 range);
        snprintf(name, sizeof(name), "%s: max + 1", n);
        load_fails(text, 3, want, name);

        snprintf(text, sizeof(text), LISTEN1 "%s = %lld;\n", n,
                 (long long)ints[i].min - 1);
        snprintf(want, sizeof(want), "%s: %lld is out of range; %s", n,
                 (long long)ints[i].min - 1, range);
        snprintf(name, sizeof(name), "%s: min - 1", n);
        load_fails(text, 2, want, name);

        snprintf(text, sizeof(text), LISTEN1 "%s = \"%llu\";\n", n, ints[i].def);
        snprintf(want, sizeof(want), "%s: expected an integer, got a string; %s", n,
                 range);
        snprintf(name, sizeof(name), "%s: a string is the wrong type", n);
        load_fails(text, 2, want, name);
    }
    load_fails(LISTEN1 "worker_max_tasks = 8589934593;\n", 2,
               "worker_max_tasks: 8589934593 is out of range; use an integer from 0 to "
               "4294967295",
               "worker_max_tasks: 2^33+1 is not taken as 1");
    load_ok(LISTEN1 "task_timeout_ms = 0;\n", "task_timeout_ms: 0 = off");
    is_int(conf.task_timeout_ms, 0, "task_timeout_ms: 0 stored");
    load_ok(LISTEN1 "worker_rlimit_nofile = 65536;\n", "worker_rlimit_nofile: 65536");
    is_int(conf.worker_rlimit_nofile, 65536, "worker_rlimit_nofile: stored as uint64");
    load_fails(LISTEN1 "task_timeout_ms = 1.5;\n", 2,
               "task_timeout_ms: expected an integer, got a float; use an integer from 0 "
               "to 86400000",
               "task_timeout_ms: a float is the wrong type");
}

static void test_bool(void)
{
    load_ok(LISTEN1 "daemon = true;\n", "daemon: true");
    ok(conf.daemon, "daemon: true stored");
    load_ok(LISTEN1 "daemon = false;\n", "daemon: false");
    ok(!conf.daemon, "daemon: false stored");
    load_ok(LISTEN1 "daemon = TRUE;\n", "daemon: TRUE (libconfig is case-blind here)");
    ok(conf.daemon, "daemon: TRUE stored");
    load_fails(LISTEN1 "\ndaemon = \"yes\";\n", 3,
               "daemon: expected true or false, got a string; write daemon = true; or "
               "daemon = false; (no quotes)",
               "daemon: \"yes\" is a type error with the fix");
    load_fails(LISTEN1 "daemon = 1;\n", 2,
               "daemon: expected true or false, got an integer; write daemon = true; or "
               "daemon = false; (no quotes)",
               "daemon: 1 is a type error");
    load_fails(LISTEN1 "daemon = \"true\";\n", 2,
               "daemon: expected true or false, got a string; write daemon = true; or "
               "daemon = false; (no quotes)",
               "daemon: \"true\" in quotes is a type error");
}

static void test_accounts(void)
{
    char longname[128], text[256], want[512];

    load_ok(LISTEN1 "user = \"root\";\ngroup = \"root\";\n", "user and group: root");
    is_str(conf.user, "root", "user: stored");
    is_str(conf.group, "root", "group: stored");
    load_ok(LISTEN1 "user = \"\";\ngroup = \"\";\n", "user and group: \"\"");
    is_str(conf.user, "", "user: \"\" stored");
    load_ok(LISTEN1 "group = \"root\";\n", "group without user");
    load_fails(
        LISTEN1 "\nuser = \"crunchd-no-such-user\";\n", 3,
        "user: there is no user \"crunchd-no-such-user\" on this system; create it "
        "(useradd) or name an existing one",
        "user: unknown user, named");
    load_fails(
        LISTEN1 "group = \"crunchd-no-such-group\";\n", 2,
        "group: there is no group \"crunchd-no-such-group\" on this system; create "
        "it (groupadd) or name an existing one",
        "group: unknown group, named");
    load_fails(LISTEN1 "user = 0;\n", 2,
               "user: expected a string, got an integer; name an existing user, or \"\" "
               "to keep the user crunchd starts as",
               "user: a uid is the wrong type");
    load_fails(LISTEN1 "group = true;\n", 2,
               "group: expected a string, got a boolean; name an existing group, or \"\" "
               "for the user's primary group",
               "group: wrong type");
    memset(longname, 'u', 64);
    longname[64] = '\0';
    snprintf(text, sizeof(text), LISTEN1 "user = \"%s\";\n", longname);
    snprintf(want, sizeof(want), "user: \"%.32s...\" is too long (at most 63 bytes)",
             longname);
    load_fails(text, 2, want, "user: 64 bytes is too long");
}

static void test_access_log(void)
{
    char want[PATH_MAX + 32];
    char *dump = NULL;
    size_t len = 0;
    FILE *out;

    load_ok(LISTEN1, "access_log: default");
    is_str(conf.access_log, "", "access_log: off by default");
    load_ok(LISTEN1 "access_log = \"off\";\n", "access_log: \"off\"");
    is_str(conf.access_log, "", "access_log: \"off\" is off");
    load_ok(LISTEN1 "access_log = \"\";\n", "access_log: \"\"");
    is_str(conf.access_log, "", "access_log: \"\" is off");
    load_ok(LISTEN1 "access_log = \"logs/access.log\";\n", "access_log: relative");
    snprintf(want, sizeof(want), "%s/logs/access.log", dir);
    is_str(conf.access_log, want, "access_log: under the prefix");
    load_ok(LISTEN1 "access_log = \"./off\";\n", "access_log: a file named off");
    snprintf(want, sizeof(want), "%s/./off", dir);
    is_str(conf.access_log, want, "access_log: ./off is a file");
    load_ok(LISTEN1 "access_log = \"/var/log/crunchd/access.log\";\n",
            "access_log: absolute");
    is_str(conf.access_log, "/var/log/crunchd/access.log", "access_log: absolute kept");
    load_fails(
        LISTEN1 "access_log = false;\n", 2,
        "access_log: expected a string, got a boolean; use a file path, or \"off\"",
        "access_log: wrong type");

    load_ok(LISTEN1, "access_log: dump loads");
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    ok(strstr(dump, "\naccess_log = \"off\";\n") != NULL,
       "access_log: off dumps as \"off\"");
    free(dump);
}

static void test_rlimit_core(void)
{
#define RL_RANGE "use \"unlimited\", -1 (leave as is) or a size from 0 to 1024g"
    load_ok(LISTEN1, "worker_rlimit_core: default");
    is_int(conf.worker_rlimit_core, -1, "worker_rlimit_core: -1 (leave) by default");
    load_ok(LISTEN1 "worker_rlimit_core = \"unlimited\";\n",
            "worker_rlimit_core: unlimited");
    ok(conf.worker_rlimit_core == INT64_MAX,
       "worker_rlimit_core: unlimited is INT64_MAX");
    load_ok(LISTEN1 "worker_rlimit_core = \"1g\";\n", "worker_rlimit_core: 1g");
    is_int(conf.worker_rlimit_core, 1ll << 30, "worker_rlimit_core: 1g stored");
    load_ok(LISTEN1 "worker_rlimit_core = 0;\n", "worker_rlimit_core: 0 (no cores)");
    is_int(conf.worker_rlimit_core, 0, "worker_rlimit_core: 0 stored");
    load_ok(LISTEN1 "worker_rlimit_core = -1;\n", "worker_rlimit_core: -1");
    is_int(conf.worker_rlimit_core, -1, "worker_rlimit_core: -1 stored");
    load_ok(LISTEN1 "worker_rlimit_core = 5368709120;\n",
            "worker_rlimit_core: 5g as a plain integer");
    is_int(conf.worker_rlimit_core, 5ll << 30, "worker_rlimit_core: 5g stored");
    load_ok(LISTEN1 "worker_rlimit_core = \"1024g\";\n",
            "worker_rlimit_core: 1024g (max)");
    load_fails(LISTEN1 "worker_rlimit_core = \"1025g\";\n", 2,
               "worker_rlimit_core: 1025g is out of range; " RL_RANGE,
               "worker_rlimit_core: above range");
    load_fails(LISTEN1 "worker_rlimit_core = -2;\n", 2,
               "worker_rlimit_core: -2 is out of range; " RL_RANGE,
               "worker_rlimit_core: -2");
    load_fails(LISTEN1 "worker_rlimit_core = 99999999999999999999;\n", 2,
               "worker_rlimit_core: 99999999999999999999 is out of range; " RL_RANGE,
               "worker_rlimit_core: beyond int64");
    load_fails(LISTEN1 "\nworker_rlimit_core = \"infinity\";\n", 3,
               "worker_rlimit_core: \"infinity\" is not a size; use \"unlimited\", -1 "
               "(leave as is) or a size like \"1g\", from 0 to 1024g",
               "worker_rlimit_core: unknown word");
    load_fails(LISTEN1 "worker_rlimit_core = 1.5;\n", 2,
               "worker_rlimit_core: expected a size, got a float; use \"unlimited\", -1 "
               "(leave as is) or a size like \"1g\", from 0 to 1024g",
               "worker_rlimit_core: wrong type");
#undef RL_RANGE
}

static void test_affinity(void)
{
    load_ok(LISTEN1, "worker_cpu_affinity: default");
    is_int(conf.worker_cpu_affinity, CR_AFFINITY_OFF,
           "worker_cpu_affinity: off by default");
    load_ok(LISTEN1 "worker_cpu_affinity = \"auto\";\n", "worker_cpu_affinity: auto");
    is_int(conf.worker_cpu_affinity, CR_AFFINITY_AUTO,
           "worker_cpu_affinity: auto stored");
    load_ok(LISTEN1 "worker_cpu_affinity = \"off\";\n", "worker_cpu_affinity: off");
    is_int(conf.worker_cpu_affinity, CR_AFFINITY_OFF, "worker_cpu_affinity: off stored");
    load_fails(LISTEN1 "worker_cpu_affinity = \"on\";\n", 2,
               "worker_cpu_affinity: \"on\" is not valid; use \"off\" or \"auto\"",
               "worker_cpu_affinity: unknown word");
    load_fails(LISTEN1 "worker_cpu_affinity = true;\n", 2,
               "worker_cpu_affinity: expected a string, got a boolean; use \"off\" or "
               "\"auto\"",
               "worker_cpu_affinity: wrong type");
}

static void test_modules(void)
{
    char want[PATH_MAX + 64];

    load_ok(LISTEN1, "modules: default");
    is_int(conf.nmodules, 0, "modules: none by default");
    load_ok(LISTEN1 "modules = ( { path = \"lib/a.so\"; config = \"x=1\"; },\n"
                    "            { path = \"/abs/b.so\"; } );\n",
            "modules: two");
    is_int(conf.nmodules, 2, "modules: two stored");
    snprintf(want, sizeof(want), "%s/lib/a.so", conf.prefix);
    is_str(conf.modules[0].path, want, "modules: relative path under the prefix");
    is_str(conf.modules[0].config, "x=1", "modules: config stored");
    is_int(conf.modules[0].line, 2, "modules: line of the path");
    is_str(conf.modules[1].path, "/abs/b.so", "modules: absolute path kept");
    is_str(conf.modules[1].config, "", "modules: config empty when absent");
    load_fails(LISTEN1 "modules = ( { config = \"x\"; } );\n", 2,
               "modules[0]: no path; add path = \"modules/x.so\"; (relative to the "
               "prefix)",
               "modules: no path");
    load_fails(LISTEN1 "modules = ( { path = \"a.so\"; conf = \"x\"; } );\n", 2,
               "modules[0]: unknown key \"conf\"; a module takes path and config",
               "modules: unknown key");
    load_fails(LISTEN1 "modules = ( { path = \"a.so\"; config = 3; } );\n", 2,
               "modules[0].config: expected a string, got an integer",
               "modules: config not a string");
    load_fails(LISTEN1 "modules = ( { path = \"/a.so\"; }, { path = \"/a.so\"; } );\n", 2,
               "modules[1]: /a.so is already modules[0] (line 2); list a module once",
               "modules: listed twice");
}

static void test_channel(void)
{
    load_ok(LISTEN1, "max_receive_message: default");
    is_int(conf.max_receive_message, (4 << 20) + 4096,
           "max_receive_message: max_payload + 4k by default");
    ok(!conf.max_receive_message_set, "max_receive_message: not set");
    load_ok(LISTEN1 "max_payload = \"1m\";\n",
            "max_receive_message: follows max_payload");
    is_int(conf.max_receive_message, (1 << 20) + 4096,
           "max_receive_message: 1m + 4k when max_payload is 1m");
    load_ok(LISTEN1 "max_receive_message = \"16m\";\n", "max_receive_message: set");
    is_int(conf.max_receive_message, 16 << 20, "max_receive_message: 16m stored");
    ok(conf.max_receive_message_set, "max_receive_message: set flag");
    load_ok(LISTEN1 "max_receive_message = 4194368;\n",
            "max_receive_message: max_payload + 64 (the least)");
    load_fails(LISTEN1 "\nmax_receive_message = 4194367;\n", 3,
               "max_receive_message: 4194367 is less than max_payload (4m) + 64 bytes; "
               "raise max_receive_message to at least 4194368, or remove it (it defaults "
               "to max_payload + 4k)",
               "max_receive_message: below max_payload + 64 names both");
    load_fails(LISTEN1 "max_receive_message = \"1m\";\nmax_payload = \"2m\";\n", 2,
               "max_receive_message: 1m is less than max_payload (2m) + 64 bytes; raise "
               "max_receive_message to at least 2097216, or remove it (it defaults to "
               "max_payload + 4k)",
               "max_receive_message: checked after max_payload was read");
    load_ok(LISTEN1 "max_receive_message = 2147483647;\n",
            "max_receive_message: 2g-1 (max)");
    load_fails(
        LISTEN1 "max_receive_message = \"2g\";\n", 2,
        "max_receive_message: 2g is out of range; use a size from 1k to 2147483647",
        "max_receive_message: 2g above range");
    load_fails(LISTEN1 "max_receive_message = 1023;\n", 2,
               "max_receive_message: 1023 is out of range; use a size from 1k to "
               "2147483647",
               "max_receive_message: below 1k");
    load_fails(LISTEN1 "max_receive_message = true;\n", 2,
               "max_receive_message: expected a size, got a boolean; use a number of "
               "bytes or a string like \"64m\", from 1k to 2147483647",
               "max_receive_message: wrong type");

    load_ok(LISTEN1, "keepalive: defaults");
    is_int(conf.keepalive_time_ms, 7200000, "keepalive_time_ms: 2 h by default");
    is_int(conf.keepalive_timeout_ms, 20000, "keepalive_timeout_ms: 20 s by default");
    load_ok(LISTEN1 "keepalive_time_ms = 20001;\n", "keepalive: time just above timeout");
    load_fails(
        LISTEN1 "\nkeepalive_time_ms = 20000;\n", 3,
        "keepalive_timeout_ms (20000) must be less than keepalive_time_ms (20000); "
        "lower keepalive_timeout_ms or raise keepalive_time_ms",
        "keepalive: default timeout = time, at keepalive_time_ms's line");
    load_fails(
        LISTEN1 "keepalive_time_ms = 10000;\nkeepalive_timeout_ms = 30000;\n", 3,
        "keepalive_timeout_ms (30000) must be less than keepalive_time_ms (10000); "
        "lower keepalive_timeout_ms or raise keepalive_time_ms",
        "keepalive: timeout above time, at keepalive_timeout_ms's line");
    load_ok(LISTEN1 "keepalive_time_ms = 10000;\nkeepalive_timeout_ms = 5000;\n",
            "keepalive: both set, timeout below time");
    is_int(conf.keepalive_timeout_ms, 5000, "keepalive_timeout_ms: stored");
    load_ok(LISTEN1 "max_connection_age_grace_ms = 0;\nmax_connection_age_ms = 1000;\n",
            "max_connection_age_grace_ms: 0 with the least age");
}

/* TLS files for listen groups: readable PEM-ish files in the prefix. */
static void make_tls_files(void)
{
    char p[PATH_MAX + 32];

    snprintf(p, sizeof(p), "%s/server.pem", dir);
    write_file(p,
               "-----BEGIN CERTIFICATE-----\nnot checked\n-----END CERTIFICATE-----\n");
    snprintf(p, sizeof(p), "%s/server.key", dir);
    write_file(p,
               "-----BEGIN PRIVATE KEY-----\nnot checked\n-----END PRIVATE KEY-----\n");
    snprintf(p, sizeof(p), "%s/ca.pem", dir);
    write_file(p,
               "-----BEGIN CERTIFICATE-----\nnot checked\n-----END CERTIFICATE-----\n");
    snprintf(p, sizeof(p), "%s/tls.d", dir);
    mkdir(p, 0755);
}

static void remove_tls_files(void)
{
    char p[PATH_MAX + 32];

    snprintf(p, sizeof(p), "%s/server.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/server.key", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/ca.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/tls.d", dir);
    rmdir(p);
}

/* Load text in a child that runs as an unprivileged user (as root nothing is
 * unreadable), with load_string so that the config file itself need not be
 * readable; the child's message comes back through a pipe. */
static int load_unprivileged(const char *text, char *got, size_t len)
{
    int fds[2], st = -1;
    ssize_t n;
    pid_t pid;

    got[0] = '\0';
    if (pipe(fds) != 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(3);
        int rc = cr_conf_load_string(&conf, text, "inline", dir, err, sizeof(err));
        if (write(fds[1], err, strlen(err)) < 0)
            _exit(4);
        _exit(rc == CR_OK ? 0 : 1);
    }
    close(fds[1]);
    n = read(fds[0], got, len - 1);
    got[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_listen_groups(void)
{
    char want[3 * PATH_MAX], text[2 * PATH_MAX], got[2048], p[PATH_MAX + 32];
    const cr_listen_conf_t *l;

    make_tls_files();

    load_ok("listen = (\n"
            "  \"127.0.0.1:50051\",\n"
            "  {\n"
            "    address = \"127.0.0.1:50443\";\n"
            "    tls = {\n"
            "      cert = \"server.pem\";\n"
            "      key = \"server.key\";\n"
            "      client_ca = \"ca.pem\";\n"
            "      verify_client = true;\n"
            "    };\n"
            "  },\n"
            "  { address = \"unix:crunchd.sock\"; mode = \"0660\"; group = \"root\"; },\n"
            "  { address = \"[::1]:50444\"; tls = { cert = \"server.pem\"; key = "
            "\"server.key\"; }; }\n"
            ");\n",
            "listen groups: strings and groups mixed");
    is_int(conf.nlisten, 4, "listen groups: four listeners");
    l = &conf.listen[0];
    ok(!l->tls.on && l->mode == -1 && l->group[0] == '\0',
       "listen groups: a string has no tls, mode or group");
    l = &conf.listen[1];
    is_str(l->text, "127.0.0.1:50443", "listen groups: address as text");
    is_int(l->kind, CR_LISTEN_TCP, "listen groups: tcp kind");
    is_int(l->line, 4, "listen groups: the line is the address's");
    ok(l->tls.on, "listen groups: tls on");
    snprintf(p, sizeof(p), "%s/server.pem", dir);
    is_str(l->tls.cert, p, "listen groups: cert under the prefix");
    snprintf(p, sizeof(p), "%s/server.key", dir);
    is_str(l->tls.key, p, "listen groups: key under the prefix");
    snprintf(p, sizeof(p), "%s/ca.pem", dir);
    is_str(l->tls.client_ca, p, "listen groups: client_ca under the prefix");
    ok(l->tls.verify_client, "listen groups: verify_client");
    is_int(l->mode, -1, "listen groups: tcp has no mode");
    l = &conf.listen[2];
    is_int(l->kind, CR_LISTEN_UNIX, "listen groups: unix kind");
    is_int(l->mode, 0660, "listen groups: mode \"0660\"");
    is_str(l->group, "root", "listen groups: group");
    ok(!l->tls.on, "listen groups: unix has no tls");
    is_int(l->line, 12, "listen groups: one-line group's line");
    l = &conf.listen[3];
    ok(l->tls.on && !l->tls.verify_client && l->tls.client_ca[0] == '\0',
       "listen groups: tls without client_ca, verify_client false by default");
    is_int(l->addr.ss_family, AF_INET6, "listen groups: v6 address parsed");

    /* mode: every way to write it */
    static const struct {
        const char *v;
        int mode;
    } modes[] = {{"\"0660\"", 0660}, {"\"660\"", 0660},  {"\"0\"", 0},
                 {"0660", 0660},     {"0600", 0600},     {"00", 0},
                 {"0", 0},           {"0x1b0", 0660},    {"\"07777\"", 07777},
                 {"07777", 07777},   {"\"1777\"", 01777}};
    for (unsigned i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        char name[96];
        snprintf(text, sizeof(text),
                 "listen = ( { address = \"unix:m.sock\"; mode = %s; } );\n", modes[i].v);
        snprintf(name, sizeof(name), "listen mode: %s", modes[i].v);
        load_ok(text, name);
        is_int(conf.listen[0].mode, modes[i].mode, name);
    }
    load_ok("listen = ( { address = \"unix:a\"; mode = 0600; }, { address = \"unix:b\"; "
            "mode = 0640; } );\n",
            "listen mode: two octal modes on one line");
    ok(conf.listen[0].mode == 0600 && conf.listen[1].mode == 0640,
       "listen mode: each takes its own");
    load_ok("listen = ( { address = \"unix:a\"; group = \"root\"; } );\n",
            "listen: group without mode");
    is_int(conf.listen[0].mode, -1, "listen: mode -1 = leave");

#define MODE_FIX "write it in octal, like \"0660\" (owner and group read and write)"
#define LG(body)                                                                         \
    "listen = (\n  \"*:1\",\n  {\n    address = \"unix:x\";\n    " body "\n  }\n);\n"
    load_fails(
        LG("mode = 660;"), 5,
        "listen: \"unix:x\": mode 660 is a decimal number; write the mode in octal "
        "with a leading zero, like 0660, or as a string, like \"0660\"",
        "listen mode: decimal is refused");
    load_fails(LG("mode = 0680;"), 5,
               "listen: \"unix:x\": mode 0680 is not an octal number; " MODE_FIX,
               "listen mode: 0680 is not octal");
    load_fails(LG("mode = \"0689\";"), 5,
               "listen: \"unix:x\": mode \"0689\" is not an octal number; " MODE_FIX,
               "listen mode: \"0689\" is not octal");
    load_fails(LG("mode = \"rw-rw----\";"), 5,
               "listen: \"unix:x\": mode \"rw-rw----\" is not an octal number; " MODE_FIX,
               "listen mode: symbolic is not octal");
    load_fails(LG("mode = \"\";"), 5, "listen: \"unix:x\": mode \"\" is empty; " MODE_FIX,
               "listen mode: empty");
    load_fails(LG("mode = \"10000\";"), 5,
               "listen: \"unix:x\": mode \"10000\" is out of range; use a mode from 0 to "
               "07777, like \"0660\"",
               "listen mode: \"10000\" out of range");
    load_fails(LG("mode = 010000;"), 5,
               "listen: \"unix:x\": mode 010000 is out of range; use a mode from 0 to "
               "07777, like \"0660\"",
               "listen mode: 010000 out of range");
    load_fails(LG("mode = -0660;"), 5,
               "listen: \"unix:x\": mode -0660 is out of range; use a mode from 0 to "
               "07777, like \"0660\"",
               "listen mode: negative");
    load_fails(LG("mode = 0x1000;"), 5,
               "listen: \"unix:x\": mode 0x1000 is out of range; use a mode from 0 to "
               "07777, like \"0660\"",
               "listen mode: hex out of range");
    load_fails(LG("mode = true;"), 5,
               "listen: \"unix:x\": mode: expected a string, got a boolean; " MODE_FIX,
               "listen mode: wrong type");
    load_fails(
        LG("group = \"crunchd-no-such-group\";"), 5,
        "listen: \"unix:x\": group: there is no group \"crunchd-no-such-group\" on "
        "this system; create it (groupadd) or name an existing one",
        "listen group: unknown group named");
    load_fails(LG("group = 0;"), 5,
               "listen: \"unix:x\": group: expected a string (a group name), got an "
               "integer",
               "listen group: wrong type");
    load_fails(
        LG("group = \"\";"), 5,
        "listen: \"unix:x\": group: the name is empty; name a group, or remove group",
        "listen group: empty");
    load_fails(
        LG("tls = { cert = \"server.pem\"; key = \"server.key\"; };"), 5,
        "listen: \"unix:x\": tls is for TCP addresses only; remove it (limit who may "
        "connect to a unix socket with mode and group)",
        "listen: tls on unix");
    load_fails(
        LG("adress = \"unix:y\";"), 5,
        "listen: unknown key \"adress\"; did you mean \"address\"? (a listener takes "
        "address, tls, mode, group)",
        "listen: unknown key suggests address");
    load_fails(
        LG("perms = \"0660\";"), 5,
        "listen: unknown key \"perms\"; a listener takes address, tls, mode, group",
        "listen: unknown key, no suggestion");
    load_fails(LG("modes = \"0660\";"), 5,
               "listen: unknown key \"modes\"; did you mean \"mode\"? (a listener takes "
               "address, tls, mode, group)",
               "listen: modes suggests mode");
#undef LG
#define LG(body)                                                                         \
    "listen = (\n  \"*:1\",\n  {\n    address = \"127.0.0.1:2\";\n    " body "\n  "      \
                                                                             "}\n);\n"
    load_fails(LG("mode = \"0660\";"), 5,
               "listen: \"127.0.0.1:2\": mode is for unix: sockets only; remove it",
               "listen: mode on tcp");
    load_fails(LG("group = \"root\";"), 5,
               "listen: \"127.0.0.1:2\": group is for unix: sockets only; remove it",
               "listen: group on tcp");
    load_fails(
        LG("tls = \"on\";"), 5,
        "listen: \"127.0.0.1:2\": tls: expected a group, got a string; write tls = "
        "{ cert = \"server.pem\"; key = \"server.key\"; };",
        "listen tls: wrong type");
    load_fails(
        LG("tls = {\n      cert = \"server.pem\";\n    };"), 5,
        "listen: \"127.0.0.1:2\": tls: key is missing; add key = \"server.key\"; (the "
        "PEM private key)",
        "listen tls: key missing, at tls's line");
    load_fails(
        LG("tls = {\n      key = \"server.key\";\n    };"), 5,
        "listen: \"127.0.0.1:2\": tls: cert is missing; add cert = \"server.pem\"; "
        "(the PEM certificate chain)",
        "listen tls: cert missing");
    load_fails(
        LG("tls = { };"), 5,
        "listen: \"127.0.0.1:2\": tls: cert is missing; add cert = \"server.pem\"; "
        "(the PEM certificate chain)",
        "listen tls: empty group");
    load_fails(
        LG("tls = {\n      cert = \"server.pem\";\n      key = \"server.key\";\n"
           "      verify_client = true;\n    };"),
        8,
        "listen: \"127.0.0.1:2\": tls: verify_client = true needs client_ca, the CA "
        "bundle that signs client certificates; add client_ca = \"ca.pem\";",
        "listen tls: verify_client needs client_ca, at verify_client's line");
    load_fails(
        LG("tls = {\n      cert = \"server.pem\";\n      key = \"server.key\";\n"
           "      verify_client = \"yes\";\n    };"),
        8,
        "listen: \"127.0.0.1:2\": tls: verify_client: expected true or false, got a "
        "string; write verify_client = true; (no quotes)",
        "listen tls: verify_client \"yes\"");
    load_fails(
        LG("tls = {\n      certs = \"server.pem\";\n    };"), 6,
        "listen: \"127.0.0.1:2\": tls: unknown key \"certs\"; did you mean \"cert\"? "
        "(tls takes cert, key, client_ca, verify_client)",
        "listen tls: unknown key suggests cert");
    load_fails(LG("tls = {\n      ca = \"ca.pem\";\n    };"), 6,
               "listen: \"127.0.0.1:2\": tls: unknown key \"ca\"; tls takes cert, key, "
               "client_ca, verify_client",
               "listen tls: unknown key");
    load_fails(
        LG("tls = {\n      cert = 1;\n    };"), 6,
        "listen: \"127.0.0.1:2\": tls: cert: expected a string (a file path), got an "
        "integer",
        "listen tls: cert wrong type");
    load_fails(LG("tls = {\n      cert = \"\";\n    };"), 6,
               "listen: \"127.0.0.1:2\": tls: cert: the path is empty; give the PEM "
               "certificate chain file",
               "listen tls: cert empty");
    load_fails(
        LG("tls = {\n      cert = \"server.pem\";\n      key = \"\";\n    };"), 7,
        "listen: \"127.0.0.1:2\": tls: key: the path is empty; give the PEM private "
        "key file",
        "listen tls: key empty");
    load_ok(
        LG("tls = { cert = \"server.pem\"; key = \"server.key\"; client_ca = \"\"; };"),
        "listen tls: client_ca \"\" = none");
    ok(conf.listen[1].tls.on && conf.listen[1].tls.client_ca[0] == '\0',
       "listen tls: client_ca empty stored");
    load_ok(
        LG("tls = { cert = \"server.pem\"; key = \"server.key\"; client_ca = \"ca.pem\"; "
           "verify_client = false; };"),
        "listen tls: client_ca without verify_client");
    snprintf(want, sizeof(want),
             "listen: \"127.0.0.1:2\": tls: cert %s/missing.pem: No such file or "
             "directory; check the path (a relative path is under the prefix)",
             dir);
    load_fails(
        LG("tls = {\n      cert = \"missing.pem\";\n      key = \"server.key\";\n    };"),
        6, want, "listen tls: missing cert names the path and strerror");
    load_fails(
        LG("tls = {\n      cert = \"server.pem\";\n      key = \"/nonexistent/k\";\n"
           "    };"),
        7,
        "listen: \"127.0.0.1:2\": tls: key /nonexistent/k: No such file or "
        "directory; check the path",
        "listen tls: missing absolute key");
    snprintf(want, sizeof(want),
             "listen: \"127.0.0.1:2\": tls: client_ca %s/tls.d: not a regular file; give "
             "the PEM file itself",
             dir);
    load_fails(LG("tls = {\n      cert = \"server.pem\";\n      key = \"server.key\";\n"
                  "      client_ca = \"tls.d\";\n    };"),
               8, want, "listen tls: a directory is not a PEM file");
#undef LG

    /* Unreadable: the key has mode 0; the cert stays readable, so the message
     * is about the key alone. The prefix must be searchable for the child. */
    chmod(dir, 0755);
    snprintf(p, sizeof(p), "%s/server.key", dir);
    chmod(p, 0);
    snprintf(
        text, sizeof(text),
        "listen = (\n  {\n    address = \"127.0.0.1:2\";\n    tls = {\n"
        "      cert = \"server.pem\";\n      key = \"server.key\";\n    };\n  }\n);\n");
    snprintf(want, sizeof(want),
             "inline:6: listen: \"127.0.0.1:2\": tls: key %s/server.key: Permission "
             "denied; make it readable by the user crunchd runs as",
             dir);
    is_int(load_unprivileged(text, got, sizeof(got)), 1,
           "listen tls: an unreadable key fails (unprivileged)");
    is_str(got, want, "listen tls: unreadable key: path, strerror and the fix");
    chmod(p, 0644);
    is_int(load_unprivileged(text, got, sizeof(got)), 0,
           "listen tls: the same files readable load (unprivileged)");
    chmod(dir, 0700);

    load_fails(
        "listen = (\n  { tls = { cert = \"server.pem\"; key = \"server.key\"; }; }\n);\n",
        2,
        "listen: this listener has no address; add address = \"127.0.0.1:50051\"; "
        "(or \"unix:/path\")",
        "listen: a group without address, at the group's line");
    load_fails(
        "listen = (\n  \"*:1\",\n  {\n    address = 50051;\n  }\n);\n", 4,
        "listen: address: expected a string like \"127.0.0.1:50051\", got an integer",
        "listen: address wrong type");
    load_fails("listen = (\n  \"*:1\",\n  {\n    address = \"127.0.0.1\";\n  }\n);\n", 4,
               "listen: \"127.0.0.1\": the port is missing; write \"host:port\", like "
               "\"127.0.0.1:50051\"",
               "listen: a group's address is checked like a string");
    load_fails(
        "listen = (\n  \"*:9\",\n  {\n    address = \"0.0.0.0:9\";\n"
        "    tls = { cert = \"server.pem\"; key = \"server.key\"; };\n  }\n);\n",
        4,
        "listen: \"0.0.0.0:9\" is the same address as \"*:9\" on line 2; remove one "
        "of them",
        "listen: a duplicate across a string and a group");
    load_fails(
        "listen = (\n  { address = \"unix:d.sock\"; mode = \"0600\"; },\n"
        "  \"unix:d.sock\"\n);\n",
        3,
        "listen: \"unix:d.sock\" is the same address as \"unix:d.sock\" on line 2; "
        "remove one of them",
        "listen: a duplicate after a group");
    load_fails(
        LISTEN1 "\nlisten2 = 1;\nx = [\n  { address = \"*:1\"; }\n];\n", 5,
        "syntax error: a group { } cannot be an element of an array [ ]; use a list "
        "( ) instead, like listen = ( { address = \"127.0.0.1:50051\"; } );",
        "listen: a group in an array [ ] says to use ( )");
    load_fails(
        "listen = [ \"*:1\", { address = \"*:2\"; } ];\n", 1,
        "syntax error: a group { } cannot be an element of an array [ ]; use a list "
        "( ) instead, like listen = ( { address = \"127.0.0.1:50051\"; } );",
        "listen: a group in an array on one line");
    remove_tls_files();
#undef MODE_FIX
}

/* --- cr_conf_diff ------------------------------------------------------------ */

static cr_conf_t old_conf;

/* Load `before` then `after`; the class of what changed, names into names. */
static unsigned diff_of(const char *before, const char *after, char *names, size_t len)
{
    if (load(before) != CR_OK) {
        tap_diag("before: %s", err);
        return 0xdead;
    }
    old_conf = conf;
    if (load(after) != CR_OK) {
        tap_diag("after: %s", err);
        return 0xdead;
    }
    return cr_conf_diff(&old_conf, &conf, names, len);
}

static void test_diff_classes(void)
{
    char names[256];

    is_int(diff_of(LISTEN1, LISTEN1 "# a comment\n", names, sizeof(names)), 0,
           "diff: the same file is no change");
    is_str(names, "", "diff: no change names nothing");
    is_int(diff_of(LISTEN1, LISTEN1 "task_timeout_ms = 30000;\n", names, sizeof(names)),
           0, "diff: writing out a default is no change");

    is_int(diff_of(LISTEN1, LISTEN1 "task_retries = 2;\n", names, sizeof(names)),
           CR_CHANGE_WORKER, "diff: task_retries is worker-level");
    is_str(names, "task_retries", "diff: worker-level names it");
    is_int(
        diff_of(LISTEN1, LISTEN1 "max_connection_age_ms = 5000;\n", names, sizeof(names)),
        CR_CHANGE_ACCEPTOR, "diff: max_connection_age_ms is acceptor-level");
    is_int(diff_of(LISTEN1, LISTEN1 "log_level = \"debug\";\n", names, sizeof(names)),
           CR_CHANGE_MASTER, "diff: log_level is master-level");
    is_int(diff_of(LISTEN1, LISTEN1 "daemon = true;\n", names, sizeof(names)),
           CR_CHANGE_RESTART, "diff: daemon needs a restart");
    is_int(diff_of(LISTEN1 "workers = 1;\n", LISTEN1 "workers = 2;\nacceptors = 2;\n",
                   names, sizeof(names)),
           CR_CHANGE_WORKER | CR_CHANGE_ACCEPTOR, "diff: two classes at once");
    is_str(names, "workers, acceptors", "diff: names in table order");
    is_int(diff_of(LISTEN1 "workers = 1;\nlog_level = \"info\";\nuser = \"root\";\n",
                   LISTEN1 "workers = 3;\nlog_level = \"warn\";\nmax_payload = \"1m\";\n",
                   names, sizeof(names)),
           CR_CHANGE_WORKER | CR_CHANGE_ACCEPTOR | CR_CHANGE_MASTER | CR_CHANGE_RESTART,
           "diff: every class at once");
    is_str(names, "workers, max_receive_message, max_payload, log_level, user",
           "diff: max_receive_message follows max_payload");
    is_int(diff_of(LISTEN1 "max_receive_message = \"8m\";\n",
                   LISTEN1 "max_receive_message = \"8m\";\nmax_payload = \"1m\";\n",
                   names, sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff: a set max_receive_message stays");
    is_str(names, "max_payload", "diff: ... and is not named");

    /* "auto" and the same number are the same workers. */
    {
        char text[128];
        snprintf(text, sizeof(text), LISTEN1 "workers = %u;\n", online_cpus());
        is_int(diff_of(LISTEN1 "workers = \"auto\";\n", text, names, sizeof(names)), 0,
               "diff: workers auto = the same number");
    }

    /* names: cut safely */
    diff_of(LISTEN1 "workers = 1;\n", LISTEN1 "workers = 2;\nacceptors = 2;\n", NULL, 0);
    ok(cr_conf_diff(&old_conf, &conf, NULL, 0) == (CR_CHANGE_WORKER | CR_CHANGE_ACCEPTOR),
       "diff: names NULL");
    memset(names, 'X', sizeof(names));
    cr_conf_diff(&old_conf, &conf, names, 0);
    ok(names[0] == 'X', "diff: len 0 writes nothing");
    cr_conf_diff(&old_conf, &conf, names, 1);
    ok(names[0] == '\0' && names[1] == 'X', "diff: len 1 is \"\"");
    memset(names, 'X', sizeof(names));
    cr_conf_diff(&old_conf, &conf, names, 8);
    ok(strcmp(names, "workers") == 0 && names[8] == 'X', "diff: len 8 holds one name");
    memset(names, 'X', sizeof(names));
    cr_conf_diff(&old_conf, &conf, names, 15);
    ok(strcmp(names, "workers, ...") == 0 && names[15] == 'X',
       "diff: a name that does not fit becomes ...");
    memset(names, 'X', sizeof(names));
    cr_conf_diff(&old_conf, &conf, names, 11);
    ok(strcmp(names, "workers, .") == 0 && names[11] == 'X', "diff: ... cut to fit");
    cr_conf_diff(&old_conf, &conf, names, 19);
    is_str(names, "workers, acceptors", "diff: exactly enough room");
}

/* Each setting changed alone needs the class DESIGN section 5 gives it; every
 * setting -T prints is in this table. */
static void test_diff_table(void)
{
    static const struct {
        const char *name, *line, *names;
        unsigned change;
    } rows[] = {
        {"listen", "", "listen", CR_CHANGE_ACCEPTOR},
        {"workers", "", "workers", CR_CHANGE_WORKER},
        {"task_timeout_ms", "task_timeout_ms = 0;", NULL, CR_CHANGE_WORKER},
        {"task_retries", "task_retries = 1;", NULL, CR_CHANGE_WORKER},
        {"worker_max_tasks", "worker_max_tasks = 100;", NULL, CR_CHANGE_WORKER},
        {"respawn_burst", "respawn_burst = 50;", NULL, CR_CHANGE_WORKER},
        {"respawn_window_ms", "respawn_window_ms = 1000;", NULL, CR_CHANGE_WORKER},
        {"worker_rlimit_nofile", "worker_rlimit_nofile = 4096;", NULL, CR_CHANGE_WORKER},
        {"worker_rlimit_core", "worker_rlimit_core = 0;", NULL, CR_CHANGE_WORKER},
        {"worker_cpu_affinity", "worker_cpu_affinity = \"auto\";", NULL,
         CR_CHANGE_WORKER},
        {"modules", "modules = ( { path = \"m.so\"; } );", NULL, CR_CHANGE_WORKER},
        {"acceptors", "acceptors = 2;", NULL, CR_CHANGE_ACCEPTOR},
        {"max_receive_message", "max_receive_message = \"16m\";", NULL,
         CR_CHANGE_ACCEPTOR},
        {"max_concurrent_streams", "max_concurrent_streams = 10;", NULL,
         CR_CHANGE_ACCEPTOR},
        {"keepalive_time_ms", "keepalive_time_ms = 60000;", NULL, CR_CHANGE_ACCEPTOR},
        {"keepalive_timeout_ms", "keepalive_timeout_ms = 5000;", NULL,
         CR_CHANGE_ACCEPTOR},
        {"max_connection_idle_ms", "max_connection_idle_ms = 60000;", NULL,
         CR_CHANGE_ACCEPTOR},
        {"max_connection_age_ms", "max_connection_age_ms = 60000;", NULL,
         CR_CHANGE_ACCEPTOR},
        {"max_connection_age_grace_ms", "max_connection_age_grace_ms = 0;", NULL,
         CR_CHANGE_ACCEPTOR},
        {"stream_max_pending", "stream_max_pending = 16;", NULL, CR_CHANGE_ACCEPTOR},
        {"queue_capacity", "queue_capacity = 16;", NULL, CR_CHANGE_ACCEPTOR},
        {"queue_wait_ms", "queue_wait_ms = 0;", NULL, CR_CHANGE_ACCEPTOR},
        {"queue_spin_us", "queue_spin_us = 0;", NULL, CR_CHANGE_ACCEPTOR},
        {"shm_size", "shm_size = \"128m\";", NULL, CR_CHANGE_ACCEPTOR},
        {"max_payload", "max_payload = \"1m\";", "max_receive_message, max_payload",
         CR_CHANGE_ACCEPTOR},
        {"updates_capacity", "updates_capacity = 10;", NULL, CR_CHANGE_MASTER},
        {"shutdown_timeout_ms", "shutdown_timeout_ms = 1000;", NULL, CR_CHANGE_MASTER},
        {"max_draining_generations", "max_draining_generations = 1;", NULL,
         CR_CHANGE_MASTER},
        {"pid_file", "pid_file = \"other.pid\";", NULL, CR_CHANGE_MASTER},
        {"error_log", "error_log = \"error.log\";", NULL, CR_CHANGE_MASTER},
        {"log_level", "log_level = \"error\";", NULL, CR_CHANGE_MASTER},
        {"access_log", "access_log = \"access.log\";", NULL, CR_CHANGE_ACCEPTOR},
        {"daemon", "daemon = true;", NULL, CR_CHANGE_RESTART},
        {"user", "user = \"root\";", NULL, CR_CHANGE_RESTART},
        {"group", "group = \"root\";", NULL, CR_CHANGE_RESTART},
    };
    char text[512], names[512], name[128], *dump = NULL, *p;
    size_t len = 0;
    unsigned n = sizeof(rows) / sizeof(rows[0]), found = 0;
    FILE *out;

    for (unsigned i = 0; i < n; i++) {
        if (strcmp(rows[i].name, "listen") == 0)
            snprintf(text, sizeof(text), "listen = [ \"127.0.0.1:50052\" ];\n");
        else if (strcmp(rows[i].name, "workers") == 0)
            snprintf(text, sizeof(text), LISTEN1 "workers = %u;\n",
                     online_cpus() == 1 ? 2 : 1);
        else
            snprintf(text, sizeof(text), LISTEN1 "%s\n", rows[i].line);
        snprintf(name, sizeof(name), "diff table: %s alone", rows[i].name);
        is_int(diff_of(LISTEN1, text, names, sizeof(names)), rows[i].change, name);
        snprintf(name, sizeof(name), "diff table: %s named", rows[i].name);
        is_str(names, rows[i].names ? rows[i].names : rows[i].name, name);
        snprintf(name, sizeof(name), "diff table: %s back is the same class",
                 rows[i].name);
        is_int(cr_conf_diff(&conf, &old_conf, NULL, 0), rows[i].change, name);
    }

    /* Every setting in the dump has a row above. */
    load_ok(LISTEN1 "max_receive_message = \"8m\";\n",
            "diff table: a dump of every setting");
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    for (p = dump; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        char setting[64];
        unsigned i;

        if (sscanf(p, "%63[a-z_] = ", setting) != 1)
            continue;
        for (i = 0; i < n && strcmp(rows[i].name, setting) != 0; i++)
            ;
        if (!ok(i < n, "diff table: %s has a row", setting))
            continue;
        found++;
    }
    is_int(found, n, "diff table: one row per setting, none left over");
    free(dump);
}

static void test_diff_listen(void)
{
    char names[128];

#define TLS_A "tls = { cert = \"server.pem\"; key = \"server.key\"; }"
#define TLS_B                                                                            \
    "tls = { cert = \"server.pem\"; key = \"server.key\"; client_ca = \"ca.pem\"; }"
    make_tls_files();
    is_int(diff_of("listen = [ \"*:1\", \"unix:a\" ];\n",
                   "listen = [\n  \"unix:a\",\n  \"*:1\"\n];\n", names, sizeof(names)),
           0, "diff listen: the same set in another order");
    is_int(diff_of("listen = [ \"*:1\" ];\n", "listen = [ \"*:1\", \"*:2\" ];\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: one added");
    is_str(names, "listen", "diff listen: named");
    is_int(diff_of("listen = [ \"*:1\", \"*:2\" ];\n", "listen = [ \"*:2\" ];\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: one removed");
    is_int(diff_of("listen = [ \"*:1\" ];\n", "listen = ( { address = \"*:1\"; } );\n",
                   names, sizeof(names)),
           0, "diff listen: a bare group is the string");
    is_int(diff_of("listen = [ \"*:1\" ];\n",
                   "listen = ( { address = \"*:1\"; " TLS_A "; } );\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: tls added");
    is_int(diff_of("listen = ( { address = \"*:1\"; " TLS_A "; } );\n",
                   "listen = ( { address = \"*:1\"; " TLS_B "; } );\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: client_ca added");
    is_int(
        diff_of("listen = ( { address = \"*:1\"; " TLS_B "; } );\n",
                "listen = ( { address = \"*:1\"; tls = { cert = \"server.pem\"; key = "
                "\"server.key\"; client_ca = \"ca.pem\"; verify_client = true; }; } );\n",
                names, sizeof(names)),
        CR_CHANGE_ACCEPTOR, "diff listen: verify_client turned on");
    is_int(diff_of("listen = ( { address = \"*:1\"; " TLS_A "; } );\n",
                   "listen = ( { address = \"*:1\"; tls = { cert = \"ca.pem\"; key = "
                   "\"server.key\"; }; } );\n",
                   names, sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: another cert");
    is_int(diff_of("listen = ( { address = \"*:1\"; " TLS_A "; } );\n",
                   "listen = (\n  {\n    address = \"*:1\";\n    " TLS_A ";\n  }\n);\n",
                   names, sizeof(names)),
           0, "diff listen: the same tls written otherwise");
    is_int(diff_of("listen = ( { address = \"unix:s\"; mode = \"0660\"; } );\n",
                   "listen = ( { address = \"unix:s\"; mode = 0600; } );\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: mode changed");
    is_int(diff_of("listen = ( { address = \"unix:s\"; mode = \"0660\"; } );\n",
                   "listen = ( { address = \"unix:s\"; mode = 0660; } );\n", names,
                   sizeof(names)),
           0, "diff listen: the same mode written otherwise");
    is_int(diff_of("listen = [ \"unix:s\" ];\n",
                   "listen = ( { address = \"unix:s\"; group = \"root\"; } );\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: group added");
    is_int(diff_of("listen = [ \"*:1\" ];\n", "listen = [ \"0.0.0.0:1\" ];\n", names,
                   sizeof(names)),
           CR_CHANGE_ACCEPTOR, "diff listen: compared as written");
    remove_tls_files();
#undef TLS_A
#undef TLS_B
}

static void conf_same(const cr_conf_t *a, const cr_conf_t *b, const char *what)
{
    bool same_listen = a->nlisten == b->nlisten;

    for (unsigned i = 0; same_listen && i < a->nlisten; i++) {
        const cr_listen_conf_t *x = &a->listen[i], *y = &b->listen[i];
        same_listen = x->kind == y->kind && strcmp(x->text, y->text) == 0 &&
                      x->addrlen == y->addrlen &&
                      memcmp(&x->addr, &y->addr, x->addrlen) == 0 &&
                      strcmp(x->path, y->path) == 0;
    }
    ok(same_listen, "%s: listen", what);
    ok(a->acceptors == b->acceptors && a->workers == b->workers &&
           a->queue_capacity == b->queue_capacity && a->shm_size == b->shm_size &&
           a->max_payload == b->max_payload && a->queue_wait_ms == b->queue_wait_ms &&
           a->log_level == b->log_level,
       "%s: numbers", what);
    ok(strcmp(a->prefix, b->prefix) == 0 && strcmp(a->pid_file, b->pid_file) == 0 &&
           strcmp(a->error_log, b->error_log) == 0,
       "%s: paths", what);
    /* Every setting, through the same comparison a reload makes. */
    {
        char names[1024];
        unsigned d = cr_conf_diff(a, b, names, sizeof(names));
        if (!ok(d == 0, "%s: cr_conf_diff finds no change", what))
            tap_diag("changed: %s", names);
    }
    ok(a->workers_auto == b->workers_auto &&
           a->max_receive_message_set == b->max_receive_message_set,
       "%s: how workers and max_receive_message were given", what);
}

static void round_trip(const char *text, const char *what)
{
    cr_conf_t *again = malloc(sizeof(*again));
    char *dump = NULL, name[128];
    size_t len = 0;
    FILE *out;

    snprintf(name, sizeof(name), "%s: loads", what);
    load_ok(text, name);
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    snprintf(name, sizeof(name), "%s: the dump loads", what);
    if (!ok(cr_conf_load_string(again, dump, "dump", dir, err, sizeof(err)) == CR_OK,
            "%s", name))
        tap_diag("%s\n%s", err, dump);
    else
        conf_same(&conf, again, what);
    if (conf.workers_auto)
        ok(strstr(dump, "\nworkers = \"auto\";  # ") != NULL && again->workers_auto,
           "%s: auto workers stay \"auto\" through the dump", what);
    free(dump);
    free(again);
}

static void test_dump(void)
{
    char *dump = NULL;
    size_t len = 0;
    FILE *out;

    round_trip(LISTEN1, "dump of defaults");
    make_tls_files();
    round_trip(
        "listen = (\n"
        "  \"127.0.0.1:50051\",\n"
        "  { address = \"[::1]:50443\"; tls = { cert = \"server.pem\"; key = "
        "\"server.key\"; "
        "client_ca = \"ca.pem\"; verify_client = true; }; },\n"
        "  { address = \"*:50444\"; tls = { cert = \"server.pem\"; key = \"server.key\"; "
        "}; },\n"
        "  { address = \"unix:g \\\"q\\\".sock\"; mode = 0600; group = \"root\"; },\n"
        "  { address = \"unix:/tmp/m.sock\"; mode = \"0\"; }\n"
        ");\n"
        "workers = 3;\ntask_timeout_ms = 0;\ntask_retries = 5;\nworker_max_tasks = "
        "4294967295;\n"
        "respawn_burst = 1;\nrespawn_window_ms = 100;\nworker_rlimit_nofile = 1048576;\n"
        "worker_rlimit_core = \"unlimited\";\nworker_cpu_affinity = \"auto\";\n"
        "acceptors = 2;\nmax_receive_message = \"64m\";\nmax_concurrent_streams = 7;\n"
        "keepalive_time_ms = 60000;\nkeepalive_timeout_ms = 1000;\n"
        "max_connection_idle_ms = 86400000;\nmax_connection_age_ms = 1000;\n"
        "max_connection_age_grace_ms = 0;\nstream_max_pending = 1;\nupdates_capacity = "
        "1;\n"
        "shutdown_timeout_ms = 3600000;\nmax_draining_generations = 64;\n"
        "access_log = \"logs/access.log\";\ndaemon = true;\nuser = \"root\";\n"
        "group = \"root\";\n",
        "dump of every new setting");
    round_trip(LISTEN1 "worker_rlimit_core = \"1g\";\nmax_receive_message = 1025;\n"
                       "max_payload = 961;\nworker_rlimit_nofile = 1;\n",
               "dump of odd sizes");
    round_trip(LISTEN1 "worker_rlimit_core = 0;\n", "dump of worker_rlimit_core 0");
    round_trip(
        "listen = ( \"*:8080\", \"[::1]:8081\", \"unix:crunchd.sock\", "
        "\"unix:/tmp/x \\\"q\\\".sock\" );\n"
        "acceptors = 4;\nworkers = 12;\nqueue_capacity = 4096;\nshm_size = \"64g\";\n"
        "max_payload = 1000;\nqueue_wait_ms = 0;\npid_file = \"\";\n"
        "error_log = \"logs/e\\\\rror.log\";\nlog_level = \"emerg\";\n",
        "dump of every setting");

    load_ok("listen = [ \"unix:s.sock\" ];\nshm_size = \"1g\";\nmax_payload = 1000;\n",
            "dump text: loads");
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    ok(strstr(dump, "shm_size = 1073741824;  # 1g\n") != NULL,
       "dump text: size in bytes");
    ok(strstr(dump, "max_payload = 1000;\n") != NULL, "dump text: odd size, no comment");
    ok(strstr(dump, "\"unix:s.sock\"  # ") != NULL,
       "dump text: resolved unix path shown");
    ok(strstr(dump, "log_level = \"notice\";\n") != NULL, "dump text: default level");
    ok(strstr(dump, "queue_wait_ms = 1000;\n") != NULL,
       "dump text: default queue_wait_ms");
    ok(strstr(dump, "listen = [\n    \"unix:s.sock\"  # ") != NULL,
       "dump text: only strings, an array");
    free(dump);
    dump = NULL;

    /* Every default, one line each, in the form a user would write it. */
    load_ok(LISTEN1, "dump text: defaults load");
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    {
        static const char *const lines[] = {
            "task_timeout_ms = 30000;",
            "task_retries = 0;",
            "worker_max_tasks = 0;",
            "respawn_burst = 5;",
            "respawn_window_ms = 10000;",
            "worker_rlimit_nofile = 0;",
            "worker_rlimit_core = -1;  # leave as inherited",
            "worker_cpu_affinity = \"off\";",
            "# max_receive_message = 4198400;  # not set: max_payload + 4k",
            "max_concurrent_streams = 1000;",
            "keepalive_time_ms = 7200000;",
            "keepalive_timeout_ms = 20000;",
            "max_connection_idle_ms = 0;",
            "max_connection_age_ms = 30000;",
            "max_connection_age_grace_ms = 10000;",
            "stream_max_pending = 1024;",
            "updates_capacity = 65536;",
            "shutdown_timeout_ms = 60000;",
            "max_draining_generations = 4;",
            "access_log = \"off\";",
            "daemon = false;",
            "user = \"\";",
            "group = \"\";",
        };
        for (unsigned i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
            char want[128];
            snprintf(want, sizeof(want), "\n%s\n", lines[i]);
            ok(strstr(dump, want) != NULL, "dump text: %s", lines[i]);
        }
    }
    free(dump);
    dump = NULL;

    /* Listeners with more than an address print as groups, in a list. */
    load_ok("listen = (\n  \"127.0.0.1:1\",\n"
            "  { address = \"127.0.0.1:2\"; tls = { cert = \"server.pem\"; key = "
            "\"server.key\"; client_ca = \"ca.pem\"; verify_client = true; }; },\n"
            "  { address = \"unix:g.sock\"; mode = 0660; group = \"root\"; }\n);\n"
            "max_receive_message = \"8m\";\nworker_rlimit_core = \"unlimited\";\n",
            "dump text: groups load");
    out = open_memstream(&dump, &len);
    cr_conf_dump(&conf, out);
    fclose(out);
    {
        static char want[6 * PATH_MAX];
        snprintf(want, sizeof(want),
                 "listen = (\n"
                 "    \"127.0.0.1:1\",\n"
                 "    {\n"
                 "        address = \"127.0.0.1:2\";\n"
                 "        tls = {\n"
                 "            cert = \"%s/server.pem\";\n"
                 "            key = \"%s/server.key\";\n"
                 "            client_ca = \"%s/ca.pem\";\n"
                 "            verify_client = true;\n"
                 "        };\n"
                 "    },\n"
                 "    {\n"
                 "        address = \"unix:g.sock\";  # %s/g.sock\n"
                 "        mode = \"0660\";\n"
                 "        group = \"root\";\n"
                 "    }\n"
                 ");\n",
                 dir, dir, dir, dir);
        if (!ok(strstr(dump, want) != NULL, "dump text: the group form"))
            tap_diag("%s", dump);
    }
    ok(strstr(dump, "\nmax_receive_message = 8388608;  # 8m\n") != NULL &&
           strstr(dump, "not set: max_payload") == NULL,
       "dump text: a set max_receive_message has no note");
    ok(strstr(dump, "\nworker_rlimit_core = \"unlimited\";\n") != NULL,
       "dump text: unlimited");
    free(dump);
    remove_tls_files();
}

static void test_shipped(void)
{
    const char *srcdir = getenv("CRUNCHD_SRCDIR");
    char shipped[PATH_MAX];
    int rc;

    snprintf(shipped, sizeof(shipped), "%s/conf/crunchd.conf", srcdir ? srcdir : ".");
    rc = cr_conf_load(&conf, shipped, dir, err, sizeof(err));
    if (!ok(rc == CR_OK, "shipped conf/crunchd.conf loads"))
        tap_diag("%s", err);
    is_int(conf.nlisten, 1, "shipped: one listener");
    is_str(conf.listen[0].text, "127.0.0.1:50051", "shipped: 127.0.0.1:50051");
    ok(conf.workers_auto, "shipped: workers auto");
    is_int(conf.acceptors, 1, "shipped: acceptors 1");
    is_str(conf.error_log, "stderr", "shipped: error_log stderr");
    is_int(conf.log_level, CR_LOG_NOTICE, "shipped: log_level notice");
    ok(strlen(conf.pid_file) > strlen(dir) &&
           strncmp(conf.pid_file, dir, strlen(dir)) == 0 &&
           strcmp(conf.pid_file + strlen(dir), "/crunchd.pid") == 0,
       "shipped: pid_file in prefix");
    is_int(conf.shm_size, 64 << 20, "shipped: shm_size 64m");
    is_int(conf.max_payload, 4 << 20, "shipped: max_payload 4m");
    /* The shipped file states the defaults; it changes none of them. */
    {
        cr_conf_t *def = malloc(sizeof(*def));
        char names[1024];
        cr_conf_defaults(def, dir);
        def->listen[0] = conf.listen[0];
        def->nlisten = 1;
        if (!ok(cr_conf_diff(def, &conf, names, sizeof(names)) == 0,
                "shipped: every setting at its default"))
            tap_diag("differ: %s", names);
        free(def);
    }
    ok(!conf.daemon && conf.user[0] == '\0' && conf.access_log[0] == '\0',
       "shipped: runs in the foreground, as the invoking user, no access log");
}

int main(void)
{
    char tmpl[] = "/tmp/crunchd-test-conf.XXXXXX";

    if (mkdtemp(tmpl) == NULL || realpath(tmpl, dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/crunchd.conf", dir);

    test_defaults();
    test_minimal();
    test_all_settings();
    test_integers();
    test_big_integers();
    test_workers();
    test_sizes();
    test_strings();
    test_unknown();
    test_listen();
    test_new_integers();
    test_bool();
    test_accounts();
    test_access_log();
    test_rlimit_core();
    test_affinity();
    test_modules();
    test_channel();
    test_listen_groups();
    test_diff_classes();
    test_diff_table();
    test_diff_listen();
    test_syntax_and_files();
    test_dump();
    test_shipped();

    unlink(path);
    rmdir(dir);
    return tap_done();
}
