/* os.c: the operating-system edges of crunchd: detaching, privileges, worker
 * limits and CPU pinning, unix socket permissions, systemd's notify socket,
 * and `crunchd -s`. */
#include "cr_core.h"
#include "log.h"
#include "os.h"
#include "process.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

/* --- detaching ----------------------------------------------------------------- */

/* Write end of the pipe the original process reads the start-up result from;
 * -1 when not detached or already told. */
static int cr_daemon_pipe = -1;

/* The original process: wait for the daemon's word, then exit with it. EOF
 * without a byte means the daemon died during start-up. */
__attribute__((noreturn)) static void cr_daemon_wait(int fd, pid_t first)
{
    unsigned char code = 1;
    sigset_t none;
    ssize_t n;

    /* The master blocked its signals before binding; the launcher must stay
     * killable (Ctrl-C) while it waits. Killing it leaves the daemon be. */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* The intermediate child exits at once; reap it so no zombie lingers while
     * we wait (it does not matter for the exit code). */
    while (waitpid(first, NULL, 0) == -1 && errno == EINTR) {
    }
    do {
        n = read(fd, &code, 1);
    } while (n == -1 && errno == EINTR);
    if (n != 1) {
        fprintf(stderr,
                "crunchd: [emerg] the daemon exited during start-up after detaching; "
                "the reason is in the error log\n");
        _exit(1);
    }
    _exit(code);
}

int cr_os_daemonize(bool keep_stderr)
{
    int null = -1, p[2] = {-1, -1};
    pid_t pid;

    /* Everything that can fail is done while the terminal still shows it. */
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null == -1) {
        cr_log(CR_LOG_EMERG, errno, "cannot open /dev/null to detach (daemon = true)");
        goto err;
    }
    if (pipe2(p, O_CLOEXEC) == -1) {
        cr_log(CR_LOG_EMERG, errno, "pipe2() failed while detaching (daemon = true)");
        goto err;
    }
    /* Unwritten stdio data would be written twice, once by each process. */
    fflush(NULL);

    pid = fork();
    if (pid == -1) {
        cr_log(CR_LOG_EMERG, errno, "fork() failed while detaching (daemon = true)");
        goto err;
    }
    if (pid > 0) {
        close(p[1]);
        cr_daemon_wait(p[0], pid);
    }

    /* First child: a new session without a terminal. It leads that session,
     * so it could still acquire a terminal by opening one; its child cannot. */
    close(p[0]);
    if (setsid() == -1) {
        cr_log(CR_LOG_EMERG, errno, "setsid() failed while detaching (daemon = true)");
        _exit(1); /* the original process sees EOF and exits 1 */
    }
    pid = fork();
    if (pid == -1) {
        cr_log(CR_LOG_EMERG, errno, "fork() failed while detaching (daemon = true)");
        _exit(1);
    }
    if (pid > 0)
        _exit(0);

    /* The daemon. "/" so that it never keeps a mount point busy. */
    if (chdir("/") == -1)
        cr_log(CR_LOG_WARN, errno,
               "chdir(\"/\") failed after detaching; staying in the "
               "current directory");
    if (dup2(null, STDIN_FILENO) == -1 || dup2(null, STDOUT_FILENO) == -1 ||
        (!keep_stderr && dup2(null, STDERR_FILENO) == -1)) {
        cr_log(CR_LOG_EMERG, errno, "dup2(/dev/null) failed after detaching");
        close(null);
        close(p[1]);
        _exit(1);
    }
    close(null);
    cr_daemon_pipe = p[1];
    return CR_OK;

err:
    if (null != -1)
        close(null);
    if (p[0] != -1) {
        close(p[0]);
        close(p[1]);
    }
    return CR_ERROR;
}

void cr_os_daemon_ready(int code)
{
    unsigned char c = (unsigned char)code;

    if (cr_daemon_pipe == -1)
        return;
    /* If the original process is gone (killed), EPIPE is fine: SIGPIPE is
     * ignored by the master, and nobody is left to tell. */
    while (write(cr_daemon_pipe, &c, 1) == -1 && errno == EINTR) {
    }
    close(cr_daemon_pipe);
    cr_daemon_pipe = -1;
}

/* --- users ------------------------------------------------------------------------ */

/* What cr_os_user_init resolved, inherited by every child through fork. */
static struct {
    bool resolved;
    bool drop; /* root, and a user to become */
    char user[64], group[64];
    uid_t uid;
    gid_t gid;
    gid_t *groups; /* supplementary groups of the user, and gid */
    int ngroups;
} cr_user;

static int cr_user_resolve(const char *user, const char *group)
{
    struct passwd *pw;
    struct group *gr;
    int n = 0;

    free(cr_user.groups);
    memset(&cr_user, 0, sizeof(cr_user));
    snprintf(cr_user.user, sizeof(cr_user.user), "%s", user);
    snprintf(cr_user.group, sizeof(cr_user.group), "%s", group);
    cr_user.resolved = true;
    if (user[0] == '\0')
        return CR_OK;

    errno = 0;
    pw = getpwnam(user);
    if (pw == NULL) {
        cr_log(CR_LOG_EMERG, errno,
               "user \"%s\" not found (getpwnam); create it or change "
               "\"user\" in the configuration",
               user);
        return CR_ERROR;
    }
    cr_user.uid = pw->pw_uid;
    cr_user.gid = pw->pw_gid;
    if (group[0] != '\0') {
        errno = 0;
        gr = getgrnam(group);
        if (gr == NULL) {
            cr_log(CR_LOG_EMERG, errno,
                   "group \"%s\" not found (getgrnam); create it or "
                   "change \"group\" in the configuration",
                   group);
            return CR_ERROR;
        }
        cr_user.gid = gr->gr_gid;
    }
    /* The supplementary groups are the user's, as login gives them
     * (initgroups); computed here so that children need no NSS lookup. */
    getgrouplist(user, cr_user.gid, NULL, &n);
    if (n < 1)
        n = 1;
    cr_user.groups = calloc((size_t)n, sizeof(gid_t));
    if (cr_user.groups == NULL) {
        cr_log(CR_LOG_EMERG, ENOMEM, "cannot list the groups of user \"%s\"", user);
        return CR_ERROR;
    }
    if (getgrouplist(user, cr_user.gid, cr_user.groups, &n) == -1) {
        cr_log(CR_LOG_EMERG, 0, "cannot list the groups of user \"%s\" (getgrouplist)",
               user);
        return CR_ERROR;
    }
    cr_user.ngroups = n;
    cr_user.drop = geteuid() == 0;
    return CR_OK;
}

int cr_os_user_init(const char *user, const char *group)
{
    if (cr_user_resolve(user, group) != CR_OK)
        return CR_ERROR;
    if (user[0] != '\0' && !cr_user.drop)
        cr_log(
            CR_LOG_WARN, 0,
            "\"user = %s\" is ignored: the master does not run as root "
            "(euid %d), so the children keep its user; start crunchd as root or remove "
            "\"user\"",
            user, (int)geteuid());
    return CR_OK;
}

int cr_os_log_owner(int fd, const char *path)
{
    struct stat st;

    if (!cr_user.drop || fd < 0 || strcmp(path, "stderr") == 0)
        return CR_OK;
    if (fstat(fd, &st) == -1) {
        cr_log(CR_LOG_ERR, errno, "fstat(%s) failed", path);
        return CR_ERROR;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid == cr_user.uid)
        return CR_OK;
    if (fchown(fd, cr_user.uid, (gid_t)-1) == -1) {
        cr_log(CR_LOG_ERR, errno,
               "cannot give %s to user \"%s\" (fchown); children will not "
               "be able to reopen it after SIGUSR1: check the file system",
               path, cr_user.user);
        return CR_ERROR;
    }
    return CR_OK;
}

int cr_os_drop_privileges(const char *user, const char *group)
{
    int pdeath = 0;

    if (user[0] == '\0' || geteuid() != 0)
        return CR_OK;
    if (!cr_user.resolved || strcmp(cr_user.user, user) != 0 ||
        strcmp(cr_user.group, group) != 0) {
        if (cr_user_resolve(user, group) != CR_OK)
            return CR_ERROR;
    }
    prctl(PR_GET_PDEATHSIG, &pdeath);

    /* Groups first: after setuid() we could no longer change them. */
    if (setgroups((size_t)cr_user.ngroups, cr_user.groups) == -1) {
        cr_log(CR_LOG_EMERG, errno,
               "setgroups() for user \"%s\" failed; the master needs "
               "CAP_SETGID (run it as root) or remove \"user\"",
               user);
        return CR_ERROR;
    }
    if (setgid(cr_user.gid) == -1) {
        cr_log(CR_LOG_EMERG, errno,
               "setgid(%d) failed; the master needs CAP_SETGID (run it "
               "as root) or change \"group\"",
               (int)cr_user.gid);
        return CR_ERROR;
    }
    if (setuid(cr_user.uid) == -1) {
        cr_log(CR_LOG_EMERG, errno,
               "setuid(%d) for user \"%s\" failed; the master needs "
               "CAP_SETUID (run it as root), or the user hit RLIMIT_NPROC",
               (int)cr_user.uid, user);
        return CR_ERROR;
    }
    /* A process that could become root again has not dropped anything. */
    if (cr_user.uid != 0 &&
        (getuid() != cr_user.uid || geteuid() != cr_user.uid || setuid(0) != -1)) {
        cr_log(CR_LOG_EMERG, 0,
               "dropping privileges to user \"%s\" did not stick (uid %d, "
               "euid %d); refusing to run",
               user, (int)getuid(), (int)geteuid());
        return CR_ERROR;
    }
    /* setuid() made the process non-dumpable: no core file, /proc/PID owned
     * by root. Our children hold nothing the user may not see. */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == -1)
        cr_log(CR_LOG_WARN, errno, "prctl(PR_SET_DUMPABLE) failed; no core files");
    /* The credential change cleared the parent-death signal (prctl(2)). */
    if (pdeath != 0)
        prctl(PR_SET_PDEATHSIG, pdeath);
    return CR_OK;
}

/* --- worker limits -------------------------------------------------------------- */

/* The `nth` (mod count) CPU this process may run on; -1 if none is known. */
static int cr_nth_allowed_cpu(unsigned nth)
{
    cpu_set_t set;
    int count;

    if (sched_getaffinity(0, sizeof(set), &set) == -1)
        return -1;
    count = CPU_COUNT(&set);
    if (count <= 0)
        return -1;
    nth %= (unsigned)count;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set) && nth-- == 0)
            return cpu;
    }
    return -1;
}

void cr_os_worker_limits(const cr_conf_t *c, unsigned worker_no)
{
    struct rlimit rl;

    if (c->worker_rlimit_nofile) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)c->worker_rlimit_nofile;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
            cr_log(
                CR_LOG_ERR, errno,
                "worker %u: setrlimit(RLIMIT_NOFILE, %" PRIu64 ") "
                "failed; raise the hard limit (LimitNOFILE= in the unit, ulimit -Hn, or "
                "fs.nr_open) or lower worker_rlimit_nofile",
                worker_no, c->worker_rlimit_nofile);
        }
    }
    if (c->worker_rlimit_core >= 0) {
        rl.rlim_cur = rl.rlim_max = c->worker_rlimit_core == INT64_MAX
                                        ? RLIM_INFINITY
                                        : (rlim_t)c->worker_rlimit_core;
        if (setrlimit(RLIMIT_CORE, &rl) == -1) {
            cr_log(CR_LOG_ERR, errno,
                   "worker %u: setrlimit(RLIMIT_CORE) failed; raise the "
                   "hard limit (LimitCORE= in the unit, ulimit -Hc) or lower "
                   "worker_rlimit_core",
                   worker_no);
        }
    }
    if (c->worker_cpu_affinity == CR_AFFINITY_AUTO) {
        int cpu = cr_nth_allowed_cpu(worker_no);
        cpu_set_t set;
        CPU_ZERO(&set);
        if (cpu >= 0)
            CPU_SET(cpu, &set);
        if (cpu < 0 || sched_setaffinity(0, sizeof(set), &set) == -1) {
            cr_log(
                CR_LOG_ERR, cpu < 0 ? 0 : errno,
                "worker %u: cannot pin to CPU %d "
                "(sched_setaffinity); it runs unpinned: check the cpuset of the service "
                "or set worker_cpu_affinity = \"off\"",
                worker_no, cpu);
        }
    }
}

/* --- unix listeners ------------------------------------------------------------- */

int cr_os_listen_perms(const cr_listen_conf_t *l, int level)
{
    if (l->kind != CR_LISTEN_UNIX)
        return CR_OK;
    /* chmod on the path: fchmod() on a socket descriptor changes nothing on
     * Linux, the permission checked by connect() is the file's. */
    if (l->mode >= 0 && chmod(l->path, (mode_t)l->mode) == -1) {
        cr_log(level, errno,
               "listen \"%s\": chmod(%s, %04o) failed; check the "
               "directory and the mode",
               l->text, l->path, (unsigned)l->mode);
        return CR_ERROR;
    }
    if (l->group[0] != '\0') {
        struct group *gr;
        errno = 0;
        gr = getgrnam(l->group);
        if (gr == NULL) {
            cr_log(level, errno,
                   "listen \"%s\": group \"%s\" not found; create it "
                   "or change the listener's group",
                   l->text, l->group);
            return CR_ERROR;
        }
        if (chown(l->path, (uid_t)-1, gr->gr_gid) == -1) {
            cr_log(level, errno,
                   "listen \"%s\": chown(%s, group %s) failed; the "
                   "master must run as root or be a member of group \"%s\"",
                   l->text, l->path, l->group, l->group);
            return CR_ERROR;
        }
    }
    return CR_OK;
}

/* --- systemd -------------------------------------------------------------------- */

uint64_t cr_os_monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void cr_notify(const char *fmt, ...)
{
    static bool warned;
    const char *env = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t salen;
    char msg[1024];
    size_t len;
    va_list ap;
    int fd, n;

    if (env == NULL || env[0] == '\0')
        return;
    len = strlen(env);
    /* A path or "@abstract"; other forms (vsock:) are not for us. */
    if ((env[0] != '/' && env[0] != '@') || len < 2 || len >= sizeof(sa.sun_path)) {
        if (!warned)
            cr_log(CR_LOG_ERR, 0,
                   "NOTIFY_SOCKET=\"%s\" is not a unix socket address; not "
                   "notifying systemd",
                   env);
        warned = true;
        return;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, env, len);
    if (env[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: the length counts, not a NUL */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                        (env[0] == '@' ? 0 : 1));

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1;

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd == -1 ||
        sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) != n) {
        if (!warned)
            cr_log(CR_LOG_ERR, errno, "cannot notify systemd on %s", env);
        warned = true;
    } else if (cr_log_level >= CR_LOG_DEBUG) {
        /* one line in the log: newlines of a multi-field message as "; " */
        for (char *p = msg; *p; p++)
            if (*p == '\n')
                *p = ' ';
        cr_log_debug("notified systemd: %s", msg);
    }
    if (fd != -1)
        close(fd);
}

/* --- crunchd -s ---------------------------------------------------------------- */

static const struct {
    const char *name;
    int sig;
} cr_actions[] = {
    {"reload", SIGHUP},
    {"stop", SIGTERM},
    {"quit", SIGQUIT},
    {"reopen", SIGUSR1},
};

int cr_os_signal_by_name(const char *action)
{
    for (size_t i = 0; i < cr_nelem(cr_actions); i++)
        if (strcmp(action, cr_actions[i].name) == 0)
            return cr_actions[i].sig;
    return -1;
}

/* Does /proc/PID/cmdline begin with the master's title? A zombie's is empty. */
static bool cr_is_master(pid_t pid)
{
    static const char title[] = "crunchd: master";
    char path[64], buf[sizeof(title)];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < (ssize_t)sizeof(title) - 1)
        return false;
    return memcmp(buf, title, sizeof(title) - 1) == 0;
}

int cr_os_signal_master(const cr_conf_t *c, const char *action)
{
    int sig = cr_os_signal_by_name(action);
    char buf[32], *end;
    ssize_t n;
    long pid;
    int fd;

    if (sig == -1) {
        fprintf(stderr, "crunchd: [error] unknown signal \"%s\" for -s; use one of %s\n",
                action, CR_OS_SIGNAL_ACTIONS);
        return 1;
    }
    if (c->pid_file[0] == '\0') {
        fprintf(stderr,
                "crunchd: [error] pid_file is off in %s; cannot find the master: "
                "set pid_file, or send the master SIG%s yourself\n",
                c->file, cr_signal_name(sig) + 3);
        return 1;
    }
    fd = open(c->pid_file, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        if (errno == ENOENT)
            fprintf(stderr,
                    "crunchd: [error] cannot signal: pid file %s not found; is "
                    "crunchd running?\n",
                    c->pid_file);
        else
            fprintf(stderr,
                    "crunchd: [error] cannot signal: cannot read pid file %s: %s\n",
                    c->pid_file, strerror(errno));
        return 1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        fprintf(stderr, "crunchd: [error] cannot signal: cannot read pid file %s: %s\n",
                c->pid_file, strerror(errno));
        return 1;
    }
    buf[n] = '\0';
    errno = 0;
    pid = strtol(buf, &end, 10);
    while (*end == '\n' || *end == ' ' || *end == '\r' || *end == '\t')
        end++;
    if (end == buf || *end != '\0' || errno != 0 || pid <= 1 || pid > INT_MAX) {
        fprintf(stderr,
                "crunchd: [error] cannot signal: pid file %s holds no pid; is another "
                "program writing it? remove it\n",
                c->pid_file);
        return 1;
    }
    if ((kill((pid_t)pid, 0) == -1 && errno == ESRCH) || !cr_is_master((pid_t)pid)) {
        fprintf(stderr,
                "crunchd: [error] pid %ld in %s is not a running crunchd master "
                "(stale pid file); remove it\n",
                pid, c->pid_file);
        return 1;
    }
    if (kill((pid_t)pid, sig) == -1) {
        int e = errno;
        fprintf(stderr, "crunchd: [error] kill(%ld, %s) failed: %s%s\n", pid,
                cr_signal_name(sig), strerror(e),
                e == EPERM ? "; run crunchd -s as the master's user (root?)" : "");
        return 1;
    }
    return 0;
}
