/* test_os.c: os.c on its own: detaching, the notify socket, unix socket
 * permissions, worker limits and pinning, dropping privileges, crunchd -s. */
#define _GNU_SOURCE
#include "../../src/os.c"
#include "tap.h"

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static char tmpdir[] = "/tmp/crunchd-test-os-XXXXXX";
static int saved_argc;
static char **saved_argv;

/* --- helpers -------------------------------------------------------------------- */

/* Run fn with stderr sent to a file; return what it wrote (static buffer). */
static const char *capture_stderr(int (*fn)(void *), void *arg, int *ret)
{
    static char out[4096];
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/stderr.txt", tmpdir);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDERR_FILENO);
    *ret = fn(arg);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    ssize_t n = pread(fd, out, sizeof(out) - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    for (char *c = out; *c; c++) /* one TAP line per message */
        if (*c == '\n')
            *c = ' ';
    return out;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* Wait for a child and return its exit code, 128+signal if killed. */
static int wait_code(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) == -1 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* --- -s ------------------------------------------------------------------------- */

static cr_conf_t sconf;
static const char *saction;

static int do_signal(void *arg)
{
    (void)arg;
    return cr_os_signal_master(&sconf, saction);
}

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static void test_signal_master(void)
{
    int ret;
    const char *msg;
    char text[64];

    is_int(cr_os_signal_by_name("reload"), SIGHUP, "reload is SIGHUP");
    is_int(cr_os_signal_by_name("stop"), SIGTERM, "stop is SIGTERM");
    is_int(cr_os_signal_by_name("quit"), SIGQUIT, "quit is SIGQUIT");
    is_int(cr_os_signal_by_name("reopen"), SIGUSR1, "reopen is SIGUSR1");
    is_int(cr_os_signal_by_name("restart"), -1, "restart is unknown");
    is_int(cr_os_signal_by_name(""), -1, "empty is unknown");

    memset(&sconf, 0, sizeof(sconf));
    snprintf(sconf.file, sizeof(sconf.file), "%s/crunchd.conf", tmpdir);
    saction = "reload";
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 1, "pid_file off: exit 1");
    ok(strstr(msg, "pid_file is off in") && strstr(msg, "cannot find the master"),
       "pid_file off: says so (%s)", msg);

    snprintf(sconf.pid_file, sizeof(sconf.pid_file), "%s/crunchd.pid", tmpdir);
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 1, "missing pid file: exit 1");
    ok(strstr(msg, "crunchd: [error] cannot signal: pid file ") &&
           strstr(msg, "not found") && strstr(msg, "is crunchd running?"),
       "missing pid file: says so (%s)", msg);

    write_file(sconf.pid_file, "twelve\n");
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 1, "garbage pid file: exit 1");
    ok(strstr(msg, "holds no pid") != NULL, "garbage pid file: says so (%s)", msg);

    /* A pid that certainly ran and is gone: a reaped child of ours. */
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    wait_code(dead);
    snprintf(text, sizeof(text), "%d\n", (int)dead);
    write_file(sconf.pid_file, text);
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 1, "dead pid: exit 1");
    ok(strstr(msg, "is not a running crunchd master (stale pid file); remove it") != NULL,
       "dead pid: stale (%s)", msg);

    /* A live process that is not crunchd (this test) is never signalled. */
    snprintf(text, sizeof(text), "%d\n", (int)getpid());
    write_file(sconf.pid_file, text);
    signal(SIGHUP, SIG_IGN); /* in case it were sent anyway */
    msg = capture_stderr(do_signal, NULL, &ret);
    signal(SIGHUP, SIG_DFL);
    is_int(ret, 1, "live non-crunchd pid: exit 1");
    ok(strstr(msg, "stale pid file") != NULL, "live non-crunchd pid: refused (%s)", msg);

    /* A process titled like the master gets the signal. */
    int p[2];
    if (pipe(p) == -1)
        abort();
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    pid_t m = fork();
    if (m == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        close(p[0]);
        cr_proctitle_init(saved_argc, saved_argv);
        cr_proctitle_set("crunchd: master");
        if (write(p[1], "x", 1) != 1)
            _exit(3);
        alarm(20);
        sigset_t none;
        sigemptyset(&none);
        while (!got_usr1)
            sigsuspend(&none);
        _exit(42);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(p[1]);
    char c;
    ok(read(p[0], &c, 1) == 1, "fake master titled itself");
    close(p[0]);
    ok(cr_is_master(m), "cr_is_master sees \"crunchd: master\"");
    ok(!cr_is_master(getpid()), "cr_is_master refuses the test itself");
    snprintf(text, sizeof(text), "%d", (int)m); /* no newline: accepted too */
    write_file(sconf.pid_file, text);
    saction = "reopen";
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 0, "live master: exit 0");
    is_str(msg, "", "live master: nothing printed");
    is_int(wait_code(m), 42, "the master got SIGUSR1");

    saction = "bogus";
    msg = capture_stderr(do_signal, NULL, &ret);
    is_int(ret, 1, "unknown action: exit 1");
    ok(strstr(msg, "reload, stop, quit, reopen") != NULL,
       "unknown action: lists them (%s)", msg);
}

/* --- notify ---------------------------------------------------------------------- */

static int notify_listener(const char *name, bool abstract)
{
    struct sockaddr_un sa;
    socklen_t len;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (abstract) {
        snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "%s", name);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    } else {
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", name);
        len = sizeof(sa);
    }
    if (bind(fd, (struct sockaddr *)&sa, len) == -1) {
        perror("bind");
        abort();
    }
    return fd;
}

static const char *notify_recv(int fd)
{
    static char buf[1024];
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return n >= 0 ? buf : "(nothing)";
}

static void test_notify(void)
{
    char path[PATH_MAX], name[64], env[80];
    int fd;

    unsetenv("NOTIFY_SOCKET");
    cr_notify("READY=1"); /* no socket: nothing happens */
    ok(1, "cr_notify without NOTIFY_SOCKET is a no-op");

    snprintf(path, sizeof(path), "%s/notify", tmpdir);
    fd = notify_listener(path, false);
    setenv("NOTIFY_SOCKET", path, 1);
    cr_notify("READY=1");
    is_str(notify_recv(fd), "READY=1", "path socket: READY=1");
    uint64_t t0 = cr_os_monotonic_usec();
    cr_notify("RELOADING=1\nMONOTONIC_USEC=%" PRIu64, t0);
    char want[128];
    snprintf(want, sizeof(want), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, t0);
    is_str(notify_recv(fd), want, "path socket: a two-field message in one datagram");
    close(fd);

    snprintf(name, sizeof(name), "crunchd-test-os-%d", (int)getpid());
    fd = notify_listener(name, true);
    snprintf(env, sizeof(env), "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    cr_notify("STATUS=%s", "serving");
    is_str(notify_recv(fd), "STATUS=serving", "abstract socket: STATUS=");
    close(fd);
    unsetenv("NOTIFY_SOCKET");

    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    uint64_t m = cr_os_monotonic_usec();
    ok(m >= now && m - now < 1000000, "cr_os_monotonic_usec is CLOCK_MONOTONIC in us");
}

/* --- unix listener permissions --------------------------------------------------- */

static void test_listen_perms(void)
{
    cr_listen_conf_t l;
    struct stat st;
    struct sockaddr_un sa;

    memset(&l, 0, sizeof(l));
    l.kind = CR_LISTEN_UNIX;
    snprintf(l.path, sizeof(l.path), "%s/s.sock", tmpdir);
    snprintf(l.text, sizeof(l.text), "unix:%s", l.path);
    l.mode = -1;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l.path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    mode_t um = umask(022);
    ok(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bound a unix socket");
    umask(um);
    stat(l.path, &st);
    mode_t before = st.st_mode & 07777;
    is_int(cr_os_listen_perms(&l, CR_LOG_ERR), CR_OK, "mode -1, no group: ok");
    stat(l.path, &st);
    is_int(st.st_mode & 07777, before, "mode -1: left alone");

    l.mode = 0660;
    struct group *gr = getgrgid(getegid()); /* a group we may always chgrp to */
    snprintf(l.group, sizeof(l.group), "%s", gr ? gr->gr_name : "root");
    is_int(cr_os_listen_perms(&l, CR_LOG_ERR), CR_OK, "mode 0660 and our group: ok");
    stat(l.path, &st);
    is_int(st.st_mode & 07777, 0660, "chmod to 0660");
    is_int(st.st_gid, getegid(), "chgrp to our group");

    snprintf(l.group, sizeof(l.group), "no-such-group-crunchd");
    is_int(cr_os_listen_perms(&l, CR_LOG_ERR), CR_ERROR, "an unknown group is an error");
    close(fd);
    unlink(l.path);

    l.kind = CR_LISTEN_TCP;
    is_int(cr_os_listen_perms(&l, CR_LOG_ERR), CR_OK, "TCP listeners: nothing to do");
}

/* --- worker limits -------------------------------------------------------------- */

static void test_worker_limits(void)
{
    static cr_conf_t c;
    struct rlimit hard;
    cpu_set_t mine;

    getrlimit(RLIMIT_NOFILE, &hard);
    sched_getaffinity(0, sizeof(mine), &mine);
    int ncpu = CPU_COUNT(&mine);
    rlim_t want = hard.rlim_max < 300 ? hard.rlim_max : 300; /* allowed to anyone */

    for (unsigned w = 0; w < 3; w++) {
        memset(&c, 0, sizeof(c));
        c.worker_rlimit_nofile = want;
        c.worker_rlimit_core = 0;
        c.worker_cpu_affinity = CR_AFFINITY_AUTO;
        int p[2];
        if (pipe(p) == -1)
            abort();
        pid_t pid = fork();
        if (pid == 0) {
            struct rlimit a, b;
            cpu_set_t s;
            cr_os_worker_limits(&c, w);
            getrlimit(RLIMIT_NOFILE, &a);
            getrlimit(RLIMIT_CORE, &b);
            sched_getaffinity(0, sizeof(s), &s);
            int first = -1;
            for (int i = 0; i < CPU_SETSIZE; i++)
                if (CPU_ISSET(i, &s)) {
                    first = i;
                    break;
                }
            long out[5] = {(long)a.rlim_cur, (long)a.rlim_max, (long)b.rlim_cur,
                           CPU_COUNT(&s), first};
            if (write(p[1], out, sizeof(out)) != sizeof(out))
                _exit(1);
            _exit(0);
        }
        close(p[1]);
        long got[5] = {0};
        ok(read(p[0], got, sizeof(got)) == sizeof(got), "worker %u reported", w);
        close(p[0]);
        wait_code(pid);
        is_int(got[0], want, "RLIMIT_NOFILE soft");
        is_int(got[1], want, "RLIMIT_NOFILE hard");
        is_int(got[2], 0, "RLIMIT_CORE 0");
        is_int(got[3], 1, "pinned to one CPU");
        is_int(got[4], cr_nth_allowed_cpu(w), "worker w on the (w mod n)-th allowed CPU");
    }
    /* With every CPU allowed (the usual case) that is simply w mod ncpu. */
    int all = 1;
    for (int i = 0; i < ncpu; i++)
        all &= CPU_ISSET(i, &mine);
    if (all)
        is_int(cr_nth_allowed_cpu((unsigned)ncpu + 1), 1 % ncpu,
               "ncpu+1 wraps to 1 mod ncpu");
    else
        ok(cr_nth_allowed_cpu((unsigned)ncpu) == cr_nth_allowed_cpu(0),
           "n wraps to the first allowed CPU");

    /* "leave" leaves. */
    memset(&c, 0, sizeof(c));
    c.worker_rlimit_core = -1;
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit before, after;
        cpu_set_t s0, s1;
        getrlimit(RLIMIT_NOFILE, &before);
        sched_getaffinity(0, sizeof(s0), &s0);
        cr_os_worker_limits(&c, 5);
        getrlimit(RLIMIT_NOFILE, &after);
        sched_getaffinity(0, sizeof(s1), &s1);
        _exit(before.rlim_cur == after.rlim_cur && CPU_EQUAL(&s0, &s1) ? 0 : 1);
    }
    is_int(wait_code(pid), 0, "nothing configured: limits and affinity unchanged");
}

/* --- privileges ------------------------------------------------------------------ */

static void test_drop_privileges(void)
{
    is_int(cr_os_drop_privileges("", ""), CR_OK, "no user: nothing to do");
    if (geteuid() != 0) {
        /* Not root: a configured user is ignored (with a warning from
         * cr_os_user_init), never an error. */
        is_int(cr_os_user_init("root", ""), CR_OK, "non-root: user_init ok");
        is_int(cr_os_drop_privileges("root", ""), CR_OK, "non-root: drop is a no-op");
        ok(!cr_user.drop, "non-root: nothing to drop");
        return;
    }
    struct passwd *pw = getpwnam("nobody");
    ok(pw != NULL, "user nobody exists");
    if (pw == NULL)
        return;
    uid_t nobody = pw->pw_uid;
    is_int(cr_os_user_init("no-such-user-crunchd", ""), CR_ERROR, "unknown user: error");
    is_int(cr_os_user_init("nobody", "no-such-group-crunchd"), CR_ERROR,
           "unknown group: error");
    is_int(cr_os_user_init("nobody", ""), CR_OK, "user_init nobody");
    ok(cr_user.drop, "root: will drop");

    /* A log file the master opened becomes the user's. */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/error.log", tmpdir);
    int lfd = open(path, O_WRONLY | O_CREAT, 0644);
    is_int(cr_os_log_owner(lfd, path), CR_OK, "log_owner ok");
    struct stat st;
    fstat(lfd, &st);
    is_int(st.st_uid, nobody, "the log file now belongs to nobody");
    close(lfd);
    is_int(cr_os_log_owner(STDERR_FILENO, "stderr"), CR_OK, "stderr is never chowned");

    int p[2];
    if (pipe(p) == -1)
        abort();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        long out[6];
        out[0] = cr_os_drop_privileges("nobody", "");
        out[1] = (long)getuid();
        out[2] = (long)geteuid();
        out[3] = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        int sig = 0;
        prctl(PR_GET_PDEATHSIG, &sig);
        out[4] = sig;
        out[5] = setuid(0) == -1 ? 0 : 1;
        if (write(p[1], out, sizeof(out)) != sizeof(out))
            _exit(1);
        /* The user can reopen the log the master gave it. */
        int fd = open(path, O_WRONLY | O_APPEND);
        _exit(fd == -1 ? 2 : 0);
    }
    close(p[1]);
    long got[6] = {0};
    ok(read(p[0], got, sizeof(got)) == sizeof(got), "child reported");
    close(p[0]);
    is_int(got[0], CR_OK, "drop_privileges ok");
    is_int(got[1], nobody, "uid is nobody's");
    is_int(got[2], nobody, "euid is nobody's");
    is_int(got[3], 1, "still dumpable (core files work)");
    is_int(got[4], SIGKILL, "PR_SET_PDEATHSIG re-armed after the credential change");
    is_int(got[5], 0, "cannot become root again");
    is_int(wait_code(pid), 0, "the user can reopen the log file");
}

/* --- detaching --------------------------------------------------------------------- */

/* Fork a "launcher" that daemonizes; the daemon reports its ids on `rep` and
 * then calls cr_os_daemon_ready(code), or exits before that when code < 0.
 * Returns the launcher's exit code. */
static int daemon_run(int code, long *ids)
{
    int rep[2];
    if (pipe(rep) == -1)
        abort();
    pid_t launcher = fork();
    if (launcher == 0) {
        close(rep[0]);
        if (cr_os_daemonize(false) != CR_OK)
            _exit(99);
        char cwd[8] = "";
        long out[6] = {
            (long)getpid(), (long)getppid(), (long)getsid(0), (long)getpgrp(), 0, 0};
        out[4] = getcwd(cwd, sizeof(cwd)) && strcmp(cwd, "/") == 0;
        int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
        out[5] = tty == -1; /* no controlling terminal */
        if (write(rep[1], out, sizeof(out)) != sizeof(out))
            _exit(1);
        close(rep[1]);
        if (code >= 0)
            cr_os_daemon_ready(code);
        _exit(0);
    }
    close(rep[1]);
    int rc = wait_code(launcher);
    ids[6] = launcher;
    ok(read(rep[0], ids, 6 * sizeof(long)) == 6 * sizeof(long), "the daemon reported");
    close(rep[0]);
    return rc;
}

static void test_daemonize(void)
{
    long ids[7];
    int rc = daemon_run(0, ids);
    is_int(rc, 0, "launcher exits 0 after cr_os_daemon_ready(0)");
    ok(ids[0] != ids[6], "the daemon is another process than the launcher");
    ok(ids[2] != getsid(0), "the daemon left our session");
    ok(ids[2] != ids[0], "the daemon is not a session leader (cannot get a terminal)");
    ok(ids[4], "the daemon's cwd is /");
    ok(ids[5], "the daemon has no controlling terminal");

    rc = daemon_run(7, ids);
    is_int(rc, 7, "launcher exits with the code given to cr_os_daemon_ready");
    rc = daemon_run(-1, ids);
    is_int(rc, 1, "launcher exits 1 when the daemon dies before it is ready");
}

int main(int argc, char **argv)
{
    saved_argc = argc;
    saved_argv = argv;
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    chmod(tmpdir, 0755); /* a child that dropped to "nobody" looks inside */
    test_signal_master();
    test_notify();
    test_listen_perms();
    test_worker_limits();
    test_drop_privileges();
    test_daemonize();

    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", tmpdir);
    return tap_done();
}
