/* master.c: the master: listeners, shared region, children, signals. Single
 * threaded and gRPC-free: it blocks every signal it handles and sleeps in
 * sigsuspend(); handlers only set flags (nginx's ngx_master_process_cycle). */
#include "cr_core.h"
#include "acceptor.h"
#include "log.h"
#include "master.h"
#include "process.h"
#include "shm.h"
#include "worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>

#define CR_RESPAWN_QUICK_NS (1000ull * 1000000ull) /* died within 1 s of start */
#define CR_RESPAWN_FREE_TRIES 3                      /* quick deaths before back-off */
#define CR_RESPAWN_MAX_DELAY_MS 5000
#define CR_STOP_GRACE_MS 1500                        /* TERM, then KILL */

typedef struct {
    cr_role_t role;
    unsigned slot;
    pid_t pid;               /* 0 = not running */
    uint64_t started_ns;
    uint64_t respawn_at_ns;  /* 0 = no respawn pending */
    unsigned quick_deaths;   /* consecutive deaths soon after start */
    bool fatal;              /* exited with code 2: never respawned */
} cr_child_t;

typedef struct {
    cr_conf_t *conf;
    cr_region_t *region;
    unsigned generation;
    pid_t pid;
    int listen_fds[CR_MAX_LISTEN];
    cr_child_t acceptors[CR_MAX_ACCEPTORS];
    cr_child_t workers[CR_MAX_WORKERS];
    bool terminating;        /* TERM/INT: children get TERM, then KILL */
    bool quitting;           /* QUIT: acceptors finish their calls, then workers exit */
    bool workers_quit;       /* QUIT sent to the workers (after the acceptors left) */
    uint64_t stop_started_ns;
    bool killed;             /* SIGKILL already sent to the stragglers */
    int exit_code;
} cr_master_t;

static volatile sig_atomic_t cr_sig_term, cr_sig_quit, cr_sig_hup, cr_sig_usr1, cr_sig_chld,
    cr_sig_alrm, cr_sig_ttin, cr_sig_ttou;

static void cr_master_on_signal(int sig)
{
    switch (sig) {
    case SIGTERM:
    case SIGINT: cr_sig_term = 1; break;
    case SIGQUIT: cr_sig_quit = 1; break;
    case SIGHUP: cr_sig_hup = 1; break;
    case SIGUSR1: cr_sig_usr1 = 1; break;
    case SIGCHLD: cr_sig_chld = 1; break;
    case SIGALRM: cr_sig_alrm = 1; break;
    case SIGTTIN: cr_sig_ttin = 1; break;
    case SIGTTOU: cr_sig_ttou = 1; break;
    default: break;
    }
}

static const int cr_master_signals[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1,
                                        SIGCHLD, SIGALRM, SIGTTIN, SIGTTOU};

static int cr_master_install_signals(sigset_t *blocked)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(blocked);
    for (size_t i = 0; i < cr_nelem(cr_master_signals); i++)
        sigaddset(blocked, cr_master_signals[i]);
    /* Block first: a signal arriving between install and sigsuspend waits. */
    if (sigprocmask(SIG_BLOCK, blocked, NULL) == -1) {
        cr_log(CR_LOG_EMERG, errno, "sigprocmask() failed");
        return CR_ERROR;
    }
    sa.sa_handler = cr_master_on_signal;
    sa.sa_mask = *blocked;
    for (size_t i = 0; i < cr_nelem(cr_master_signals); i++) {
        if (sigaction(cr_master_signals[i], &sa, NULL) == -1) {
            cr_log(CR_LOG_EMERG, errno, "sigaction(%s) failed",
                   cr_signal_name(cr_master_signals[i]));
            return CR_ERROR;
        }
    }
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    return CR_OK;
}

/* --- listeners ---------------------------------------------------------------- */

/* Bind one listener without SO_REUSEPORT, so that a second server on the same
 * address is a start-up error instead of a silent share (DESIGN section 2). */
static int cr_listen_open(const cr_listen_conf_t *l)
{
    int fd, one = 1;
    const struct sockaddr *sa = (const struct sockaddr *)&l->addr;

    if (l->kind == CR_LISTEN_UNIX) {
        struct stat st;
        if (lstat(l->path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                cr_log(CR_LOG_EMERG, 0, "listen \"%s\": %s exists and is not a socket; "
                       "remove it or choose another path", l->text, l->path);
                return -1;
            }
            /* A live server answers on it: refuse. A stale file is removed. */
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (probe != -1 && connect(probe, sa, l->addrlen) == 0) {
                close(probe);
                cr_log(CR_LOG_EMERG, 0, "listen \"%s\": address already in use (a server "
                       "answers on %s); stop it or change listen", l->text, l->path);
                return -1;
            }
            if (probe != -1)
                close(probe);
            if (unlink(l->path) == -1) {
                cr_log(CR_LOG_EMERG, errno, "listen \"%s\": cannot remove stale socket %s",
                       l->text, l->path);
                return -1;
            }
        }
    }
    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        cr_log(CR_LOG_EMERG, errno, "listen \"%s\": socket() failed", l->text);
        return -1;
    }
    if (l->kind == CR_LISTEN_TCP) {
        /* SO_REUSEADDR only skips TIME_WAIT; it never lets two listeners share. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (sa->sa_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(fd, sa, l->addrlen) == -1) {
        int err = errno;
        if (err == EADDRINUSE)
            cr_log(CR_LOG_EMERG, 0, "listen \"%s\": address already in use; another server "
                   "(perhaps another crunchd) listens there: stop it or change listen in %s",
                   l->text, "the configuration");
        else if (err == EACCES)
            cr_log(CR_LOG_EMERG, err, "listen \"%s\": bind() refused; ports below 1024 "
                   "need root or CAP_NET_BIND_SERVICE", l->text);
        else
            cr_log(CR_LOG_EMERG, err, "listen \"%s\": bind() failed", l->text);
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) == -1) {
        cr_log(CR_LOG_EMERG, errno, "listen \"%s\": listen() failed", l->text);
        close(fd);
        return -1;
    }
    return fd;
}

static void cr_listen_close_all(cr_master_t *m)
{
    for (unsigned i = 0; i < m->conf->nlisten; i++) {
        if (m->listen_fds[i] == -1)
            continue;
        close(m->listen_fds[i]);
        m->listen_fds[i] = -1;
        if (m->conf->listen[i].kind == CR_LISTEN_UNIX)
            unlink(m->conf->listen[i].path);
    }
}

/* --- pid file ------------------------------------------------------------------ */

static int cr_pid_file_write(const char *path)
{
    char buf[32];
    if (path[0] == '\0')
        return CR_OK;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        cr_log(CR_LOG_EMERG, errno, "cannot write pid_file %s; fix the path or its "
               "directory's permissions", path);
        return CR_ERROR;
    }
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write(fd, buf, (size_t)n) != n) {
        cr_log(CR_LOG_EMERG, errno, "write(%s) failed", path);
        close(fd);
        return CR_ERROR;
    }
    close(fd);
    return CR_OK;
}

/* --- children ------------------------------------------------------------------ */

static const char *cr_role_name(cr_role_t role)
{
    return role == CR_ROLE_ACCEPTOR ? "acceptor" : "worker";
}

static unsigned cr_master_live(cr_master_t *m)
{
    unsigned n = 0;
    for (unsigned i = 0; i < m->conf->acceptors; i++)
        n += m->acceptors[i].pid != 0;
    for (unsigned i = 0; i < m->conf->workers; i++)
        n += m->workers[i].pid != 0;
    return n;
}

/* In the child, right after fork: everything it needs, nothing it does not. */
static void cr_child_setup(cr_master_t *m, cr_child_t *c)
{
    struct sigaction sa;

    /* Die with the master, even if it is SIGKILLed. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != m->pid)
        _exit(0);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (size_t i = 0; i < cr_nelem(cr_master_signals); i++)
        sigaction(cr_master_signals[i], &sa, NULL);
    /* Block everything: the child's main unblocks what it handles; gRPC threads
     * of an acceptor inherit a fully blocked mask. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (m->region->fd != -1) {
        close(m->region->fd);
        m->region->fd = -1;
    }
    if (c->role == CR_ROLE_WORKER) {
        for (unsigned i = 0; i < m->conf->nlisten; i++)
            if (m->listen_fds[i] != -1)
                close(m->listen_fds[i]);
    }
    cr_proctitle_set("crunchd: %s %u gen %u", cr_role_name(c->role), c->slot, m->generation);
}

static void cr_spawn(cr_master_t *m, cr_child_t *c)
{
    pid_t pid = fork();
    if (pid == -1) {
        cr_log(CR_LOG_ALERT, errno, "fork() of %s %u failed; retrying in 1 s",
               cr_role_name(c->role), c->slot);
        c->respawn_at_ns = cr_now_ns() + 1000000000ull;
        return;
    }
    if (pid == 0) {
        cr_child_setup(m, c);
        if (c->role == CR_ROLE_ACCEPTOR) {
            cr_acceptor_ctx_t ctx = {.conf = m->conf, .region = m->region, .slot = c->slot,
                                     .generation = m->generation,
                                     .listen_fds = m->listen_fds, .nlisten = m->conf->nlisten};
            cr_acceptor_main(&ctx);
        } else {
            cr_worker_ctx_t ctx = {.conf = m->conf, .region = m->region, .slot = c->slot,
                                   .generation = m->generation};
            cr_worker_main(&ctx);
        }
        _exit(2); /* not reached */
    }
    c->pid = pid;
    c->started_ns = cr_now_ns();
    c->respawn_at_ns = 0;
    cr_log(CR_LOG_INFO, 0, "started %s %u (pid %d) of generation %u", cr_role_name(c->role),
           c->slot, (int)pid, m->generation);
}

static void cr_signal_children(cr_master_t *m, int sig)
{
    for (unsigned i = 0; i < m->conf->acceptors; i++)
        if (m->acceptors[i].pid)
            kill(m->acceptors[i].pid, sig);
    for (unsigned i = 0; i < m->conf->workers; i++)
        if (m->workers[i].pid)
            kill(m->workers[i].pid, sig);
}

static cr_child_t *cr_child_by_pid(cr_master_t *m, pid_t pid)
{
    for (unsigned i = 0; i < m->conf->acceptors; i++)
        if (m->acceptors[i].pid == pid)
            return &m->acceptors[i];
    for (unsigned i = 0; i < m->conf->workers; i++)
        if (m->workers[i].pid == pid)
            return &m->workers[i];
    return NULL;
}

static bool cr_crash_signal(int status)
{
    if (!WIFSIGNALED(status))
        return false;
    int s = WTERMSIG(status);
    return s == SIGSEGV || s == SIGBUS || s == SIGABRT || s == SIGFPE || s == SIGILL ||
           s == SIGSYS || s == SIGTRAP;
}

/* Decide when a dead child comes back: at once, unless its slot keeps dying
 * right after start, then with exponential back-off so a crash loop can never
 * make the master spin (DESIGN section 4). */
static void cr_schedule_respawn(cr_master_t *m, cr_child_t *c, uint64_t now)
{
    if (now - c->started_ns < CR_RESPAWN_QUICK_NS)
        c->quick_deaths++;
    else
        c->quick_deaths = 0;
    if (c->quick_deaths <= CR_RESPAWN_FREE_TRIES) {
        cr_spawn(m, c);
        return;
    }
    unsigned shift = c->quick_deaths - CR_RESPAWN_FREE_TRIES - 1;
    uint64_t ms = shift >= 6 ? CR_RESPAWN_MAX_DELAY_MS : 100ull << shift;
    if (ms > CR_RESPAWN_MAX_DELAY_MS)
        ms = CR_RESPAWN_MAX_DELAY_MS;
    cr_log(CR_LOG_CRIT, 0, "%s %u died %u times in a row within 1 s of starting; "
           "respawning in %" PRIu64 " ms (check the log above for the cause)",
           cr_role_name(c->role), c->slot, c->quick_deaths, ms);
    c->respawn_at_ns = now + ms * 1000000ull;
}

static void cr_master_reap(cr_master_t *m)
{
    int status;
    pid_t pid;
    char how[96];

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        cr_child_t *c = cr_child_by_pid(m, pid);
        if (c == NULL) {
            cr_log(CR_LOG_INFO, 0, "reaped unknown child %d", (int)pid);
            continue;
        }
        uint64_t now = cr_now_ns();
        cr_wait_status_text(status, how, sizeof(how));
        unsigned touched = cr_region_reap(m->region, pid, c->role, c->slot, status, false);
        c->pid = 0;

        bool stopping = m->terminating || m->quitting;
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        int level = stopping ? (clean || WIFSIGNALED(status) ? CR_LOG_INFO : CR_LOG_WARN)
                    : cr_crash_signal(status) ? CR_LOG_ALERT
                                              : CR_LOG_WARN;
        char extra[96] = "";
        if (touched && c->role == CR_ROLE_WORKER)
            snprintf(extra, sizeof(extra), "; the task it was running failed with ABORTED");
        else if (touched)
            snprintf(extra, sizeof(extra), "; %u of its tasks were reclaimed", touched);

        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            c->fatal = true;
            cr_log(CR_LOG_EMERG, 0, "%s %u (pid %d) %s: a fatal error at start (see above); "
                   "it will not be respawned", cr_role_name(c->role), c->slot, (int)pid, how);
        } else {
            cr_log(level, 0, "%s %u (pid %d) %s%s%s", cr_role_name(c->role), c->slot,
                   (int)pid, how, extra, stopping ? "" : "; respawning");
        }
        if (!stopping && !c->fatal)
            cr_schedule_respawn(m, c, now);
    }
    if (!m->terminating && !m->quitting) {
        bool any = false;
        for (unsigned i = 0; i < m->conf->acceptors; i++)
            any |= !m->acceptors[i].fatal;
        bool anyw = false;
        for (unsigned i = 0; i < m->conf->workers; i++)
            anyw |= !m->workers[i].fatal;
        if (!any || !anyw) {
            cr_log(CR_LOG_EMERG, 0, "no %s can start; stopping", any ? "worker" : "acceptor");
            m->exit_code = 1;
            m->terminating = true;
            m->stop_started_ns = cr_now_ns();
            cr_signal_children(m, SIGTERM);
        }
    }
}

static void cr_master_respawn_due(cr_master_t *m, uint64_t now)
{
    cr_child_t *sets[2] = {m->acceptors, m->workers};
    unsigned counts[2] = {m->conf->acceptors, m->conf->workers};
    for (int s = 0; s < 2; s++)
        for (unsigned i = 0; i < counts[s]; i++) {
            cr_child_t *c = &sets[s][i];
            if (c->pid == 0 && c->respawn_at_ns && now >= c->respawn_at_ns)
                cr_spawn(m, c);
        }
}

static bool cr_master_timer_needed(cr_master_t *m)
{
    if (m->terminating || m->quitting)
        return true;
    for (unsigned i = 0; i < m->conf->acceptors; i++)
        if (m->acceptors[i].respawn_at_ns)
            return true;
    for (unsigned i = 0; i < m->conf->workers; i++)
        if (m->workers[i].respawn_at_ns)
            return true;
    return false;
}

/* A 50 ms tick while something is timed (stop escalation, delayed respawns);
 * nothing at all otherwise, so an idle master never wakes. */
static void cr_master_timer(bool on)
{
    static bool armed;
    if (on == armed)
        return;
    struct itimerval it = {{0, 0}, {0, 0}};
    if (on)
        it.it_interval.tv_usec = it.it_value.tv_usec = 50000;
    setitimer(ITIMER_REAL, &it, NULL);
    armed = on;
}

/* --- main loop ----------------------------------------------------------------- */

int cr_master_run(cr_conf_t *conf)
{
    static cr_master_t master; /* big (slots), and inherited by children */
    cr_master_t *m = &master;
    sigset_t blocked, empty;
    char addrs[1024] = "";

    cr_role = CR_ROLE_MASTER;
    m->conf = conf;
    m->generation = 1;
    m->pid = getpid();
    for (unsigned i = 0; i < CR_MAX_LISTEN; i++)
        m->listen_fds[i] = -1;
    for (unsigned i = 0; i < conf->acceptors; i++)
        m->acceptors[i] = (cr_child_t){.role = CR_ROLE_ACCEPTOR, .slot = i};
    for (unsigned i = 0; i < conf->workers; i++)
        m->workers[i] = (cr_child_t){.role = CR_ROLE_WORKER, .slot = i};

    if (cr_master_install_signals(&blocked) != CR_OK)
        return 1;
    for (unsigned i = 0; i < conf->nlisten; i++) {
        m->listen_fds[i] = cr_listen_open(&conf->listen[i]);
        if (m->listen_fds[i] == -1)
            goto fail;
        size_t n = strlen(addrs);
        snprintf(addrs + n, sizeof(addrs) - n, "%s%s", n ? ", " : "", conf->listen[i].text);
    }
    cr_region_conf_t rc = {.generation = m->generation,
                           .queue_capacity = conf->queue_capacity,
                           .acceptors = conf->acceptors,
                           .arena_size = conf->shm_size,
                           .max_block = conf->max_payload};
    m->region = cr_region_create(&rc);
    if (m->region == NULL)
        goto fail;
    if (cr_pid_file_write(conf->pid_file) != CR_OK)
        goto fail;

    cr_proctitle_set("crunchd: master");
    cr_log(CR_LOG_NOTICE, 0, "crunchd %s starting: generation %u, %u acceptor%s, %u worker%s, "
           "listening on %s", PACKAGE_VERSION, m->generation, conf->acceptors,
           conf->acceptors == 1 ? "" : "s", conf->workers, conf->workers == 1 ? "" : "s", addrs);

    for (unsigned i = 0; i < conf->acceptors; i++)
        cr_spawn(m, &m->acceptors[i]);
    for (unsigned i = 0; i < conf->workers; i++)
        cr_spawn(m, &m->workers[i]);

    sigemptyset(&empty);
    for (;;) {
        cr_master_timer(cr_master_timer_needed(m));
        if (!(cr_sig_term | cr_sig_quit | cr_sig_hup | cr_sig_usr1 | cr_sig_chld |
              cr_sig_alrm | cr_sig_ttin | cr_sig_ttou))
            sigsuspend(&empty);

        if (cr_sig_chld) {
            cr_sig_chld = 0;
            cr_master_reap(m);
        }
        if (cr_sig_term) {
            cr_sig_term = 0;
            if (!m->terminating) {
                cr_log(CR_LOG_NOTICE, 0, "fast stop (SIGTERM/SIGINT): stopping %u children",
                       cr_master_live(m));
                m->terminating = true;
                m->stop_started_ns = cr_now_ns();
                cr_signal_children(m, SIGTERM);
            }
        }
        if (cr_sig_quit) {
            cr_sig_quit = 0;
            if (!m->terminating && !m->quitting) {
                cr_log(CR_LOG_NOTICE, 0, "graceful stop (SIGQUIT): acceptors finish their "
                       "calls, then the workers exit");
                m->quitting = true;
                m->stop_started_ns = cr_now_ns();
                /* Workers keep running until the acceptors are gone, so that
                 * tasks still queued for open calls are done, not stranded. */
                for (unsigned i = 0; i < conf->acceptors; i++)
                    if (m->acceptors[i].pid)
                        kill(m->acceptors[i].pid, SIGQUIT);
            }
        }
        if (cr_sig_usr1) {
            cr_sig_usr1 = 0;
            cr_log_reopen();
            cr_log(CR_LOG_NOTICE, 0, "reopened log files (SIGUSR1); children reopen theirs");
            cr_signal_children(m, SIGUSR1);
        }
        if (cr_sig_hup) {
            cr_sig_hup = 0;
            cr_log(CR_LOG_WARN, 0, "SIGHUP: reloading is not supported by this version; "
                   "restart crunchd to apply a new configuration");
        }
        if (cr_sig_ttin | cr_sig_ttou) {
            cr_sig_ttin = cr_sig_ttou = 0;
            cr_log(CR_LOG_WARN, 0, "SIGTTIN/SIGTTOU: resizing is not supported by this "
                   "version; change workers and restart");
        }
        if (cr_sig_alrm) {
            cr_sig_alrm = 0;
            uint64_t now = cr_now_ns();
            if (!m->terminating && !m->quitting)
                cr_master_respawn_due(m, now);
            uint64_t grace = (m->quitting ? 30000ull : CR_STOP_GRACE_MS) * 1000000ull;
            if ((m->terminating || m->quitting) && !m->killed &&
                now - m->stop_started_ns > grace) {
                cr_log(CR_LOG_WARN, 0, "%u children did not stop in time; sending SIGKILL",
                       cr_master_live(m));
                cr_signal_children(m, SIGKILL);
                m->killed = true;
            }
        }
        if (m->quitting && !m->workers_quit && !m->terminating) {
            unsigned live_acceptors = 0;
            for (unsigned i = 0; i < conf->acceptors; i++)
                live_acceptors += m->acceptors[i].pid != 0;
            if (live_acceptors == 0) {
                m->workers_quit = true;
                for (unsigned i = 0; i < conf->workers; i++)
                    if (m->workers[i].pid)
                        kill(m->workers[i].pid, SIGQUIT);
            }
        }
        if ((m->terminating || m->quitting) && cr_master_live(m) == 0)
            break;
    }

    cr_master_timer(false);
    cr_log(CR_LOG_NOTICE, 0, "exiting");
    if (conf->pid_file[0])
        unlink(conf->pid_file);
    cr_listen_close_all(m);
    cr_region_destroy(m->region);
    return m->exit_code;

fail:
    cr_listen_close_all(m);
    if (m->region)
        cr_region_destroy(m->region);
    return 1;
}
