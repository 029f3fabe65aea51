/* master.c: the master: listeners, generations of shared regions and children,
 * reload, signals. Single threaded and gRPC-free: it blocks every signal it
 * handles and sleeps in sigsuspend(); handlers only set flags (nginx's
 * ngx_master_process_cycle).
 *
 * Generations (DESIGN section 5). A generation is one shared region with its
 * acceptors and workers. A worker-level reload keeps the generation and
 * replaces its workers (the old ones finish the task in hand). An
 * acceptor-level reload starts a new generation and drains the old one: its
 * acceptors stop accepting and finish their calls as connections age out; its
 * workers finish the old queue, then quit; then its region is unmapped.
 *
 * Children are kept in one table indexed by their control-page row (ctl.h),
 * which is also a worker's slot in its region. */
#include "cr_core.h"
#include "acceptor.h"
#include "ctl.h"
#include "log.h"
#include "master.h"
#include "module.h"
#include "os.h"
#include "process.h"
#include "shm.h"
#include "worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>

#define CR_MAX_GENS 66              /* current + max_draining_generations (<= 64) + 1 */
#define CR_MAX_LISTENERS (2 * CR_MAX_LISTEN)
#define CR_RESPAWN_MAX_DELAY_MS 5000
#define CR_STOP_GRACE_MS 1500       /* fast stop: TERM, then KILL */
#define CR_KILL_MARGIN_MS 5000      /* a drain past shutdown_timeout_ms + this: KILL
                                     * (the acceptor's own watchdog fires before) */
#define CR_TICK_MS 50

typedef struct cr_gen_s cr_gen_t;

typedef struct {
    bool in_use;
    cr_role_t role;
    unsigned slot;
    pid_t pid;
    cr_gen_t *gen;
    uint64_t started_ns;
    unsigned genno; /* its generation number (titles, Stats) */
    bool retired;   /* not respawned when it exits (old worker, TTOU, draining) */
    bool timed_out; /* the master killed it for task_timeout_ms */
    bool quit_sent;
} cr_child_t;

/* Respawn book-keeping of one slot of a generation. */
typedef struct {
    uint64_t window_start_ns;
    unsigned deaths;          /* in the current respawn window */
    uint64_t respawn_at_ns;   /* 0 = nothing pending */
    bool fatal;               /* exited with 2: a start-up error, not respawned */
} cr_slot_t;

struct cr_gen_s {
    unsigned id;              /* the generation that created the region */
    unsigned workers_gen;     /* the generation of its current workers: a
                               * worker-level reload makes a new generation
                               * that keeps the region and the acceptors */
    cr_conf_t *conf;          /* owned */
    cr_region_t *region;
    int lfd[CR_MAX_LISTEN];   /* listening fd per conf->listen[i]; -1 for TLS */
    unsigned nworkers;        /* target; TTIN/TTOU move it until the next reload */
    cr_slot_t acc[CR_MAX_ACCEPTORS];
    cr_slot_t wrk[CR_MAX_WORKERS];
    bool draining;
    uint64_t drain_started_ns;
    bool workers_quit;
    bool killed;
    bool ready;               /* every acceptor reported in (for READY=1) */
};

/* A socket the master bound; shared by the generations that list it. */
typedef struct {
    bool in_use;
    cr_listen_conf_t l;
    int fd;
    unsigned refs;
} cr_listener_t;

typedef struct {
    cr_conf_t *conf;          /* the current generation's */
    unsigned generation;      /* +1 on every successful reload */
    pid_t pid;
    cr_gen_t *gens[CR_MAX_GENS];
    unsigned ngens;           /* gens[ngens - 1] is the current one */
    cr_child_t children[CR_MAX_PROCS];
    cr_listener_t listeners[CR_MAX_LISTENERS];
    cr_region_t *feed;
    bool terminating;         /* TERM/INT: children get TERM, then KILL */
    bool quitting;            /* QUIT: the current generation drains, then exit */
    uint64_t stop_started_ns;
    bool killed;
    bool notified_ready;
    bool reload_pending_ready;/* READY=1 once the new generation reports in */
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

static const char *cr_role_name(cr_role_t role)
{
    return role == CR_ROLE_ACCEPTOR ? "acceptor" : "worker";
}

/* --- listeners ---------------------------------------------------------------- */

/* Bind one listener without SO_REUSEPORT, so that a second server on the same
 * address is a start-up error instead of a silent share (DESIGN section 2).
 * Errors are logged at `level`: [emerg] at start (crunchd exits), [error] at
 * a reload (refused; the running generation goes on). */
static int cr_listen_open(const char *file, const cr_listen_conf_t *l, int level)
{
    int fd, one = 1;
    const struct sockaddr *sa = (const struct sockaddr *)&l->addr;

    if (l->kind == CR_LISTEN_UNIX) {
        struct stat st;
        if (lstat(l->path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                cr_log(level, 0, "listen \"%s\": %s exists and is not a socket; "
                       "remove it or choose another path", l->text, l->path);
                return -1;
            }
            /* A live server answers on it: refuse. A stale file is removed. */
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (probe != -1 && connect(probe, sa, l->addrlen) == 0) {
                close(probe);
                cr_log(level, 0, "%s:%d: listen \"%s\": address already in use (a "
                       "server answers on %s); stop it or change listen", file, l->line,
                       l->text, l->path);
                return -1;
            }
            if (probe != -1)
                close(probe);
            if (unlink(l->path) == -1) {
                cr_log(level, errno, "listen \"%s\": cannot remove stale socket %s",
                       l->text, l->path);
                return -1;
            }
        }
    }
    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        cr_log(level, errno, "listen \"%s\": socket() failed", l->text);
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
            cr_log(level, 0, "%s:%d: listen \"%s\": address already in use; another "
                   "server (perhaps another crunchd) listens there: stop it or change listen",
                   file, l->line, l->text);
        else if (err == EACCES)
            cr_log(level, err, "listen \"%s\": bind() refused; ports below 1024 "
                   "need root or CAP_NET_BIND_SERVICE", l->text);
        else
            cr_log(level, err, "listen \"%s\": bind() failed", l->text);
        close(fd);
        return -1;
    }
    /* Between bind and listen: no client can connect before the mode is set. */
    if (cr_os_listen_perms(l, level) != CR_OK) {
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) == -1) {
        cr_log(level, errno, "listen \"%s\": listen() failed", l->text);
        close(fd);
        return -1;
    }
    return fd;
}

static bool cr_listen_same(const cr_listen_conf_t *a, const cr_listen_conf_t *b)
{
    if (a->kind != b->kind)
        return false;
    if (a->kind == CR_LISTEN_UNIX)
        return strcmp(a->path, b->path) == 0;
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

/* The master's socket for l: an existing one (kept across reloads, never
 * closed while listed) or a new one. -1 on error (logged). TLS listeners are
 * bound by gRPC in the acceptors (DESIGN section 2): no master socket. */
static int cr_listener_get(cr_master_t *m, const char *file, const cr_listen_conf_t *l,
                           int level)
{
    if (l->tls.on)
        return -1;
    for (unsigned i = 0; i < CR_MAX_LISTENERS; i++) {
        cr_listener_t *x = &m->listeners[i];
        if (x->in_use && cr_listen_same(&x->l, l)) {
            if (l->kind == CR_LISTEN_UNIX &&
                (x->l.mode != l->mode || strcmp(x->l.group, l->group) != 0)) {
                cr_os_listen_perms(l, level);
                x->l = *l;
            }
            x->refs++;
            return x->fd;
        }
    }
    for (unsigned i = 0; i < CR_MAX_LISTENERS; i++) {
        cr_listener_t *x = &m->listeners[i];
        if (x->in_use)
            continue;
        int fd = cr_listen_open(file, l, level);
        if (fd == -1)
            return -2;
        *x = (cr_listener_t){.in_use = true, .l = *l, .fd = fd, .refs = 1};
        return fd;
    }
    cr_log(level, 0, "too many listening sockets across generations");
    return -2;
}

static void cr_listener_put(cr_master_t *m, int fd)
{
    if (fd < 0)
        return;
    for (unsigned i = 0; i < CR_MAX_LISTENERS; i++) {
        cr_listener_t *x = &m->listeners[i];
        if (!x->in_use || x->fd != fd)
            continue;
        if (--x->refs == 0) {
            /* No generation lists it any more: the last user has drained. */
            cr_log(CR_LOG_INFO, 0, "closing listener \"%s\"", x->l.text);
            close(x->fd);
            if (x->l.kind == CR_LISTEN_UNIX)
                unlink(x->l.path);
            x->in_use = false;
        }
        return;
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

/* --- generations ---------------------------------------------------------------- */

static cr_gen_t *cr_cur(cr_master_t *m)
{
    return m->ngens ? m->gens[m->ngens - 1] : NULL;
}

/* A new generation: its listeners (errors logged at `level`, see
 * cr_listen_open) and its shared region. */
static cr_gen_t *cr_gen_create(cr_master_t *m, cr_conf_t *conf, unsigned id, int level)
{
    cr_gen_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        cr_log(CR_LOG_ALERT, ENOMEM, "cannot allocate generation %u", id);
        return NULL;
    }
    g->id = id;
    g->workers_gen = id;
    g->conf = conf;
    g->nworkers = conf->workers;
    unsigned i;
    for (i = 0; i < conf->nlisten; i++) {
        g->lfd[i] = cr_listener_get(m, conf->file, &conf->listen[i], level);
        if (g->lfd[i] == -2)
            goto err;
    }
    cr_region_conf_t rc = {.generation = id,
                           .queue_capacity = conf->queue_capacity,
                           .acceptors = conf->acceptors,
                           .arena_size = conf->shm_size,
                           .max_block = conf->max_payload};
    g->region = cr_region_create(&rc);
    if (g->region == NULL)
        goto err;
    g->region->feed = m->feed;
    return g;

err:
    while (i-- > 0)
        cr_listener_put(m, g->lfd[i]);
    free(g);
    return NULL;
}

static void cr_gen_destroy(cr_master_t *m, cr_gen_t *g)
{
    cr_log(CR_LOG_NOTICE, 0, "generation %u has drained; released", g->id);
    for (unsigned i = 0; i < g->conf->nlisten; i++)
        cr_listener_put(m, g->lfd[i]);
    cr_region_destroy(g->region);
    /* The current configuration outlives its generation when a stop drains
     * it: the master still needs its pid_file and timeouts. */
    if (g->conf != m->conf)
        free(g->conf);
    free(g);
}

static unsigned cr_gen_live(cr_master_t *m, cr_gen_t *g, int role)
{
    unsigned n = 0;
    for (unsigned i = 0; i < CR_MAX_PROCS; i++) {
        cr_child_t *c = &m->children[i];
        if (c->in_use && c->pid && c->gen == g && (role < 0 || (int)c->role == role))
            n++;
    }
    return n;
}

static unsigned cr_master_live(cr_master_t *m)
{
    unsigned n = 0;
    for (unsigned i = 0; i < CR_MAX_PROCS; i++)
        n += m->children[i].in_use && m->children[i].pid != 0;
    return n;
}

static void cr_gen_signal(cr_master_t *m, cr_gen_t *g, int role, int sig)
{
    for (unsigned i = 0; i < CR_MAX_PROCS; i++) {
        cr_child_t *c = &m->children[i];
        if (!c->in_use || !c->pid || (g && c->gen != g) || (role >= 0 && (int)c->role != role))
            continue;
        if (sig == SIGQUIT) {
            if (c->quit_sent)
                continue;
            c->quit_sent = true;
            c->retired = true;
        }
        kill(c->pid, sig);
    }
}

/* --- children ------------------------------------------------------------------ */

/* In the child, right after fork: everything it needs, nothing it does not. */
static void cr_child_setup(cr_master_t *m, cr_child_t *c)
{
    struct sigaction sa;
    cr_gen_t *g = c->gen;

    /* Limits first: root may raise a hard limit, the user may not. */
    if (c->role == CR_ROLE_WORKER)
        cr_os_worker_limits(g->conf, c->slot);
    if (cr_os_drop_privileges(g->conf->user, g->conf->group) != CR_OK)
        _exit(2);
    /* Die with the master, even if it is SIGKILLed (after the credential
     * change, which would clear it). */
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

    /* Keep only what this child uses: its generation's listeners (acceptors),
     * none at all (workers). A listener the master later closes must not stay
     * open in a child, or its port would keep queueing connections. */
    for (unsigned i = 0; i < CR_MAX_LISTENERS; i++) {
        cr_listener_t *x = &m->listeners[i];
        if (!x->in_use)
            continue;
        bool mine = false;
        if (c->role == CR_ROLE_ACCEPTOR)
            for (unsigned j = 0; j < g->conf->nlisten; j++)
                mine |= g->lfd[j] == x->fd;
        if (!mine)
            close(x->fd);
    }
    for (unsigned i = 0; i < m->ngens; i++)
        if (m->gens[i]->region->fd != -1) {
            close(m->gens[i]->region->fd);
            m->gens[i]->region->fd = -1;
        }
    if (m->feed->fd != -1) {
        close(m->feed->fd);
        m->feed->fd = -1;
    }
    cr_proctitle_set("crunchd: %s %u gen %u", cr_role_name(c->role), c->slot, c->genno);
}

static void cr_spawn(cr_master_t *m, cr_gen_t *g, cr_role_t role, unsigned slot)
{
    cr_slot_t *s = role == CR_ROLE_ACCEPTOR ? &g->acc[slot] : &g->wrk[slot];
    unsigned genno = role == CR_ROLE_WORKER ? g->workers_gen : g->id;
    int row = cr_ctl_row_alloc(role, slot, genno);
    if (row < 0) {
        cr_log(CR_LOG_ALERT, 0, "no free process row for %s %u (%d processes); retrying "
               "in 1 s", cr_role_name(role), slot, CR_MAX_PROCS);
        s->respawn_at_ns = cr_now_ns() + 1000000000ull;
        return;
    }
    cr_child_t *c = &m->children[row];
    *c = (cr_child_t){.in_use = true, .role = role, .slot = slot, .gen = g, .genno = genno};

    pid_t pid = fork();
    if (pid == -1) {
        cr_log(CR_LOG_ALERT, errno, "fork() of %s %u failed; retrying in 1 s",
               cr_role_name(role), slot);
        cr_ctl_row_free(row);
        c->in_use = false;
        s->respawn_at_ns = cr_now_ns() + 1000000000ull;
        return;
    }
    if (pid == 0) {
        cr_child_setup(m, c);
        if (role == CR_ROLE_ACCEPTOR) {
            cr_acceptor_ctx_t ctx = {.conf = g->conf, .region = g->region, .feed = m->feed,
                                     .slot = slot, .generation = genno, .row = row,
                                     .listen_fds = g->lfd, .nlisten = g->conf->nlisten};
            cr_acceptor_main(&ctx);
        } else {
            cr_worker_ctx_t ctx = {.conf = g->conf, .region = g->region, .feed = m->feed,
                                   .slot = slot, .row = row, .generation = genno};
            cr_worker_main(&ctx);
        }
        _exit(2); /* not reached */
    }
    c->pid = pid;
    c->started_ns = cr_now_ns();
    s->respawn_at_ns = 0;
    cr_ctl_row_set_pid(row, pid);
    cr_log(CR_LOG_INFO, 0, "started %s %u (pid %d) of generation %u", cr_role_name(role),
           slot, (int)pid, genno);
}

static void cr_gen_spawn_all(cr_master_t *m, cr_gen_t *g)
{
    for (unsigned i = 0; i < g->conf->acceptors; i++)
        cr_spawn(m, g, CR_ROLE_ACCEPTOR, i);
    for (unsigned i = 0; i < g->nworkers; i++)
        cr_spawn(m, g, CR_ROLE_WORKER, i);
}

static bool cr_crash_signal(int status)
{
    if (!WIFSIGNALED(status))
        return false;
    int s = WTERMSIG(status);
    return s == SIGSEGV || s == SIGBUS || s == SIGABRT || s == SIGFPE || s == SIGILL ||
           s == SIGSYS || s == SIGTRAP;
}

/* Decide when a dead child comes back: at once, unless its slot died more
 * than respawn_burst times within respawn_window_ms; then with exponential
 * back-off, so a crash loop can never make the master spin (DESIGN 4). */
static void cr_schedule_respawn(cr_master_t *m, cr_child_t *c, uint64_t now, bool counted)
{
    cr_gen_t *g = c->gen;
    cr_slot_t *s = c->role == CR_ROLE_ACCEPTOR ? &g->acc[c->slot] : &g->wrk[c->slot];
    uint64_t window = (uint64_t)g->conf->respawn_window_ms * 1000000ull;

    if (counted) {
        if (s->deaths == 0 || now - s->window_start_ns > window) {
            s->window_start_ns = now;
            s->deaths = 0;
        }
        s->deaths++;
    }
    if (s->deaths <= g->conf->respawn_burst) {
        cr_spawn(m, g, c->role, c->slot);
        return;
    }
    unsigned over = s->deaths - g->conf->respawn_burst - 1;
    uint64_t ms = over >= 6 ? CR_RESPAWN_MAX_DELAY_MS : 100ull << over;
    if (ms > CR_RESPAWN_MAX_DELAY_MS)
        ms = CR_RESPAWN_MAX_DELAY_MS;
    cr_log(CR_LOG_CRIT, 0, "%s %u of generation %u died %u times within %u ms "
           "(respawn_burst %u); respawning in %" PRIu64 " ms: check the log above for the "
           "cause", cr_role_name(c->role), c->slot, g->id, s->deaths,
           g->conf->respawn_window_ms, g->conf->respawn_burst, ms);
    s->respawn_at_ns = now + ms * 1000000ull;
}

static cr_region_t *cr_regions[CR_MAX_GENS];

static void cr_master_reap(cr_master_t *m)
{
    int status;
    pid_t pid;
    char how[96];

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        cr_child_t *c = NULL;
        int row;
        for (row = 0; row < CR_MAX_PROCS; row++)
            if (m->children[row].in_use && m->children[row].pid == pid) {
                c = &m->children[row];
                break;
            }
        if (c == NULL) {
            cr_log(CR_LOG_INFO, 0, "reaped unknown child %d", (int)pid);
            continue;
        }
        cr_gen_t *g = c->gen;
        uint64_t now = cr_now_ns();
        cr_wait_status_text(status, how, sizeof(how));

        unsigned touched = cr_region_reap(g->region, pid, c->role,
                                          c->role == CR_ROLE_WORKER ? (unsigned)row : c->slot,
                                          status, g->conf->task_retries, c->timed_out);
        if (c->role == CR_ROLE_ACCEPTOR) {
            for (unsigned i = 0; i < m->ngens; i++)
                cr_regions[i] = m->gens[i]->region;
            cr_feed_reap(m->feed, pid, row, cr_regions, m->ngens);
        }
        cr_ctl_row_free(row);
        c->pid = 0;
        c->in_use = false;

        bool stopping = m->terminating || (m->quitting && g == cr_cur(m));
        bool expected = stopping || c->retired || g->draining;
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        int level = expected ? (clean || WIFSIGNALED(status) ? CR_LOG_INFO : CR_LOG_WARN)
                    : cr_crash_signal(status) ? CR_LOG_ALERT
                                              : CR_LOG_WARN;
        char extra[128] = "";
        if (c->timed_out)
            snprintf(extra, sizeof(extra), "; its task failed with DEADLINE_EXCEEDED "
                     "(task_timeout_ms %u)", g->conf->task_timeout_ms);
        else if (touched && c->role == CR_ROLE_WORKER)
            snprintf(extra, sizeof(extra), "; the task it was running %s",
                     g->conf->task_retries ? "was retried or failed with ABORTED"
                                           : "failed with ABORTED");
        else if (touched)
            snprintf(extra, sizeof(extra), "; %u of its tasks were reclaimed", touched);

        if (expected || c->timed_out) {
            cr_log(c->timed_out ? CR_LOG_WARN : level, 0, "%s %u (pid %d) of generation %u "
                   "%s%s", cr_role_name(c->role), c->slot, (int)pid, c->genno, how, extra);
            if (!expected)
                cr_schedule_respawn(m, c, now, false);
            continue;
        }
        if (clean && c->role == CR_ROLE_WORKER) {
            /* worker_max_tasks: a planned exit, not a death. */
            cr_log(CR_LOG_INFO, 0, "worker %u (pid %d) of generation %u recycled; replacing it",
                   c->slot, (int)pid, c->genno);
            cr_spawn(m, g, c->role, c->slot);
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            cr_slot_t *s = c->role == CR_ROLE_ACCEPTOR ? &g->acc[c->slot] : &g->wrk[c->slot];
            s->fatal = true;
            cr_log(CR_LOG_EMERG, 0, "%s %u (pid %d) %s: a fatal error at start (see above); "
                   "it will not be respawned", cr_role_name(c->role), c->slot, (int)pid, how);
            continue;
        }
        cr_log(level, 0, "%s %u (pid %d) of generation %u %s%s; respawning",
               cr_role_name(c->role), c->slot, (int)pid, c->genno, how, extra);
        cr_schedule_respawn(m, c, now, true);
    }

    /* A current generation that cannot start any acceptor or worker cannot serve. */
    cr_gen_t *g = cr_cur(m);
    if (g && !m->terminating && !m->quitting) {
        bool acc = false, wrk = false;
        for (unsigned i = 0; i < g->conf->acceptors; i++)
            acc |= !g->acc[i].fatal;
        for (unsigned i = 0; i < g->nworkers; i++)
            wrk |= !g->wrk[i].fatal;
        if (!acc || !wrk) {
            cr_log(CR_LOG_EMERG, 0, "no %s can start; stopping", acc ? "worker" : "acceptor");
            m->exit_code = 1;
            m->terminating = true;
            m->stop_started_ns = cr_now_ns();
            cr_gen_signal(m, NULL, -1, SIGTERM);
        }
    }
}

/* Respawns whose back-off ran out. */
static void cr_master_respawn_due(cr_master_t *m, uint64_t now)
{
    cr_gen_t *g = cr_cur(m);
    if (g == NULL || g->draining)
        return;
    for (unsigned i = 0; i < g->conf->acceptors; i++)
        if (g->acc[i].respawn_at_ns && now >= g->acc[i].respawn_at_ns)
            cr_spawn(m, g, CR_ROLE_ACCEPTOR, i);
    for (unsigned i = 0; i < g->nworkers; i++)
        if (g->wrk[i].respawn_at_ns && now >= g->wrk[i].respawn_at_ns)
            cr_spawn(m, g, CR_ROLE_WORKER, i);
}

/* Kill workers whose task ran past task_timeout_ms: a C handler cannot be
 * interrupted, so the process goes (DESIGN 4); the reap fails the task. */
static void cr_master_task_timeouts(cr_master_t *m, uint64_t now)
{
    for (int row = 0; row < CR_MAX_PROCS; row++) {
        cr_child_t *c = &m->children[row];
        if (!c->in_use || !c->pid || c->role != CR_ROLE_WORKER || c->timed_out)
            continue;
        unsigned limit = c->gen->conf->task_timeout_ms;
        uint64_t start = __atomic_load_n(&cr_ctl->procs[row].task_start_ns, __ATOMIC_ACQUIRE);
        if (limit == 0 || start == 0 || now < start ||
            now - start <= (uint64_t)limit * 1000000ull)
            continue;
        cr_log(CR_LOG_WARN, 0, "worker %u (pid %d) has run task %" PRIu64 " (handler %s) "
               "for %" PRIu64 " ms, over task_timeout_ms %u; killing it", c->slot,
               (int)c->pid, cr_ctl->procs[row].task_id,
               cr_ctl->procs[row].handler < cr_ctl->nhandlers
                   ? cr_ctl->handler_names[cr_ctl->procs[row].handler]
                   : "?",
               (now - start) / 1000000u, limit);
        c->timed_out = true;
        kill(c->pid, SIGKILL);
    }
}

/* Move draining generations along: acceptors gone and queue empty -> workers
 * quit; nothing left -> release; too slow -> SIGKILL. */
static void cr_master_drains(cr_master_t *m, uint64_t now)
{
    for (unsigned i = 0; i < m->ngens;) {
        cr_gen_t *g = m->gens[i];
        if (!g->draining) {
            i++;
            continue;
        }
        if (!g->workers_quit && cr_gen_live(m, g, CR_ROLE_ACCEPTOR) == 0) {
            cr_region_stats_t st;
            cr_region_stats(g->region, &st);
            /* Submit tasks need no acceptor: the old workers finish them. */
            if (st.queued == 0) {
                g->workers_quit = true;
                cr_gen_signal(m, g, CR_ROLE_WORKER, SIGQUIT);
            }
        }
        uint64_t limit = ((uint64_t)m->conf->shutdown_timeout_ms + CR_KILL_MARGIN_MS) * 1000000ull;
        if (!g->killed && now - g->drain_started_ns > limit) {
            cr_log(CR_LOG_WARN, 0, "generation %u still has %u processes %u ms after it began "
                   "draining (shutdown_timeout_ms); killing them", g->id, cr_gen_live(m, g, -1),
                   m->conf->shutdown_timeout_ms);
            g->killed = true;
            cr_gen_signal(m, g, -1, SIGKILL);
        }
        if (cr_gen_live(m, g, -1) == 0) {
            cr_gen_destroy(m, g);
            memmove(&m->gens[i], &m->gens[i + 1], (m->ngens - i - 1) * sizeof(m->gens[0]));
            m->ngens--;
            continue;
        }
        i++;
    }
}

static void cr_gen_start_drain(cr_master_t *m, cr_gen_t *g)
{
    g->draining = true;
    g->drain_started_ns = cr_now_ns();
    for (unsigned i = 0; i < CR_MAX_PROCS; i++)
        if (m->children[i].in_use && m->children[i].gen == g)
            m->children[i].retired = true;
    /* Acceptors first: they stop accepting and finish their calls as
     * connections age out; the workers stay for the tasks those calls wait on. */
    cr_gen_signal(m, g, CR_ROLE_ACCEPTOR, SIGQUIT);

    unsigned draining = 0;
    for (unsigned i = 0; i < m->ngens; i++)
        draining += m->gens[i]->draining;
    for (unsigned i = 0; i < m->ngens && draining > m->conf->max_draining_generations; i++) {
        cr_gen_t *old = m->gens[i];
        if (!old->draining || old->killed)
            continue;
        cr_log(CR_LOG_WARN, 0, "%u generations draining, over max_draining_generations %u; "
               "killing generation %u", draining, m->conf->max_draining_generations, old->id);
        old->killed = true;
        cr_gen_signal(m, old, -1, SIGKILL);
        draining--;
    }
}

/* All acceptors of the current generation serve (their control rows left
 * STARTING): the moment systemd is told READY=1. */
static bool cr_gen_ready(cr_master_t *m, cr_gen_t *g)
{
    if (g->ready)
        return true;
    unsigned want = g->conf->acceptors, have = 0;
    for (unsigned i = 0; i < CR_MAX_PROCS; i++) {
        cr_child_t *c = &m->children[i];
        if (c->in_use && c->pid && c->gen == g && c->role == CR_ROLE_ACCEPTOR &&
            __atomic_load_n(&cr_ctl->procs[i].state, __ATOMIC_ACQUIRE) != CR_PROC_STARTING)
            have++;
    }
    g->ready = have >= want;
    return g->ready;
}

/* --- reload ---------------------------------------------------------------------- */

static void cr_master_apply(const cr_conf_t *old, const cr_conf_t *nc);

static void cr_reload_failed(const char *why)
{
    cr_log(CR_LOG_ERR, 0, "reload refused: %s; generation %u keeps serving with the previous "
           "configuration", why, cr_ctl->generation);
    cr_ctl_reload(false, "%s", why);
    cr_notify("READY=1\nSTATUS=reload refused: %s", why);
}

static void cr_master_reload(cr_master_t *m)
{
    cr_gen_t *cur = cr_cur(m);
    char err[1024], names[512];

    cr_notify("RELOADING=1\nMONOTONIC_USEC=%" PRIu64, cr_os_monotonic_usec());
    if (m->terminating || m->quitting) {
        cr_log(CR_LOG_WARN, 0, "SIGHUP while stopping: ignored");
        return;
    }
    cr_conf_t *nc = malloc(sizeof(*nc));
    if (nc == NULL) {
        cr_reload_failed("out of memory");
        return;
    }
    if (cr_conf_load_run(nc, cur->conf->file, cur->conf->prefix, err, sizeof(err)) != CR_OK) {
        free(nc);
        cr_reload_failed(err);
        return;
    }
    /* Modules are checked in a probe child, never loaded here; their handler
     * names join the shared table before new workers (and acceptors) exist. */
    if (cr_module_check(nc, err, sizeof(err)) != CR_OK ||
        cr_module_publish(err, sizeof(err)) != CR_OK) {
        free(nc);
        cr_reload_failed(err);
        return;
    }
    unsigned changes = cr_conf_diff(cur->conf, nc, names, sizeof(names));
    if (nc->updates_capacity != cur->conf->updates_capacity) {
        /* The feed outlives generations: results waiting in it must not be
         * lost, so its size only changes with a restart. */
        cr_log(CR_LOG_WARN, 0, "reload: updates_capacity %u -> %u takes effect only at a "
               "restart; the updates feed keeps %u entries", cur->conf->updates_capacity,
               nc->updates_capacity, cur->conf->updates_capacity);
    }
    if (changes & CR_CHANGE_RESTART) {
        cr_log(CR_LOG_WARN, 0, "reload: daemon, user and group take effect only at a restart; "
               "keeping the running values");
        nc->daemon = cur->conf->daemon;
        memcpy(nc->user, cur->conf->user, sizeof(nc->user));
        memcpy(nc->group, cur->conf->group, sizeof(nc->group));
    }

    if (changes & CR_CHANGE_ACCEPTOR) {
        cr_gen_t *g = cr_gen_create(m, nc, m->generation + 1, CR_LOG_ERR);
        if (g == NULL) {
            free(nc);
            cr_reload_failed("the new generation could not be set up (see the lines above)");
            return;
        }
        m->gens[m->ngens++] = g;
        cr_master_apply(m->conf, nc);
        m->conf = nc;
        m->generation = g->id;
        cr_ctl->generation = g->id;
        cr_gen_spawn_all(m, g);
        cr_gen_start_drain(m, cur);
        m->reload_pending_ready = true;
        cr_log(CR_LOG_NOTICE, 0, "reload: generation %u started with new queues and "
               "acceptors; the processes of the previous one drain (changed: %s)", g->id,
               names[0] ? names : "nothing");
        cr_ctl_reload(true, "generation %u: new queues, acceptors and workers; changed: %s",
                      g->id, names[0] ? names : "nothing");
    } else {
        /* Worker-level (every reload is at least that: new workers load what
         * changed on disk, e.g. a rebuilt module). Same region, same acceptors. */
        cr_conf_t *old = cur->conf;
        cr_gen_signal(m, cur, CR_ROLE_WORKER, SIGQUIT);
        cr_master_apply(old, nc);
        cur->conf = nc;
        m->conf = nc;
        m->generation++;
        cr_ctl->generation = m->generation;
        cur->workers_gen = m->generation;
        cur->nworkers = nc->workers;
        memset(cur->wrk, 0, sizeof(cur->wrk));
        for (unsigned i = 0; i < cur->nworkers; i++)
            cr_spawn(m, cur, CR_ROLE_WORKER, i);
        free(old);
        cr_log(CR_LOG_NOTICE, 0, "reload: generation %u: %u new workers on the queues and "
               "acceptors of generation %u (changed: %s)", m->generation, cur->nworkers,
               cur->id, names[0] ? names : "nothing");
        cr_ctl_reload(true, "generation %u: new workers; changed: %s", m->generation,
                      names[0] ? names : "nothing");
        cr_notify("READY=1\nSTATUS=serving generation %u", m->generation);
    }

}

/* Settings the master itself applies on reload: log level, error log, pid file. */
static void cr_master_apply(const cr_conf_t *old, const cr_conf_t *nc)
{
    cr_log_level = nc->log_level;
    __atomic_store_n(&cr_ctl->log_level, nc->log_level, __ATOMIC_RELEASE);
    if (strcmp(old->error_log, nc->error_log) != 0) {
        if (cr_log_open(nc->error_log) == CR_OK)
            cr_log(CR_LOG_NOTICE, 0, "error_log is now %s (children started from now on "
                   "use it too)", nc->error_log);
    }
    if (strcmp(old->pid_file, nc->pid_file) != 0) {
        if (cr_pid_file_write(nc->pid_file) == CR_OK && old->pid_file[0])
            unlink(old->pid_file);
    }
}

/* --- main loop ----------------------------------------------------------------- */

/* A tick while something is timed (stop escalation, drains, delayed respawns,
 * readiness, task timeouts); none otherwise, so an idle master never wakes
 * unless task_timeout_ms asks for a check 4 times a second. */
static void cr_master_timer(cr_master_t *m)
{
    static unsigned armed_ms;
    unsigned want = 0;
    cr_gen_t *cur = cr_cur(m);

    if (m->terminating || m->quitting || !m->notified_ready || m->reload_pending_ready)
        want = CR_TICK_MS;
    for (unsigned i = 0; i < m->ngens && !want; i++) {
        cr_gen_t *g = m->gens[i];
        if (g->draining)
            want = CR_TICK_MS;
        for (unsigned j = 0; j < g->conf->acceptors && !want; j++)
            if (g->acc[j].respawn_at_ns)
                want = CR_TICK_MS;
        for (unsigned j = 0; j < g->nworkers && !want; j++)
            if (g->wrk[j].respawn_at_ns)
                want = CR_TICK_MS;
    }
    if (!want && cur && cur->conf->task_timeout_ms)
        want = cur->conf->task_timeout_ms < 1000 ? CR_TICK_MS : 250;
    if (want == armed_ms)
        return;
    struct itimerval it = {{0, 0}, {0, 0}};
    it.it_interval.tv_sec = it.it_value.tv_sec = want / 1000;
    it.it_interval.tv_usec = it.it_value.tv_usec = (long)(want % 1000) * 1000;
    setitimer(ITIMER_REAL, &it, NULL);
    armed_ms = want;
}

static void cr_master_ttin_ttou(cr_master_t *m, int delta)
{
    cr_gen_t *g = cr_cur(m);
    if (g == NULL || m->terminating || m->quitting)
        return;
    if (delta > 0) {
        if (g->nworkers >= CR_MAX_WORKERS)
            return;
        unsigned slot = g->nworkers++;
        memset(&g->wrk[slot], 0, sizeof(g->wrk[slot]));
        cr_spawn(m, g, CR_ROLE_WORKER, slot);
        cr_log(CR_LOG_NOTICE, 0, "SIGTTIN: %u workers (until the next reload)", g->nworkers);
        return;
    }
    if (g->nworkers <= 1) {
        cr_log(CR_LOG_NOTICE, 0, "SIGTTOU: already at 1 worker; not fewer");
        return;
    }
    unsigned slot = --g->nworkers;
    g->wrk[slot].respawn_at_ns = 0;
    for (unsigned i = 0; i < CR_MAX_PROCS; i++) {
        cr_child_t *c = &m->children[i];
        if (c->in_use && c->pid && c->gen == g && c->role == CR_ROLE_WORKER &&
            c->slot == slot && !c->retired) {
            c->retired = true;
            c->quit_sent = true;
            kill(c->pid, SIGQUIT);
        }
    }
    cr_log(CR_LOG_NOTICE, 0, "SIGTTOU: %u workers (until the next reload)", g->nworkers);
}

int cr_master_run(cr_conf_t *conf)
{
    static cr_master_t master; /* big, and inherited by children */
    cr_master_t *m = &master;
    sigset_t blocked, empty;
    char addrs[1024] = "";

    cr_role = CR_ROLE_MASTER;
    m->pid = getpid();
    /* Every generation owns a heap copy of its configuration. */
    cr_conf_t *c0 = malloc(sizeof(*c0));
    if (c0 == NULL) {
        cr_log(CR_LOG_EMERG, ENOMEM, "cannot copy the configuration");
        return 1;
    }
    *c0 = *conf;
    conf = c0;
    m->conf = conf;

    if (cr_master_install_signals(&blocked) != CR_OK)
        return 1;
    if (cr_ctl_create() != CR_OK)
        return 1;
    /* Module handler names, checked by main (cr_module_check), go into the
     * shared handler table before the first fork. */
    char merr[1024];
    if (cr_module_publish(merr, sizeof(merr)) != CR_OK) {
        cr_log(CR_LOG_EMERG, 0, "%s", merr);
        return 1;
    }
    cr_region_conf_t fc = {.generation = 0,
                           .queue_capacity = conf->updates_capacity,
                           .acceptors = 1,
                           .arena_size = conf->shm_size,
                           .max_block = conf->max_payload,
                           .feed = true};
    m->feed = cr_region_create(&fc);
    if (m->feed == NULL)
        return 1;
    cr_gen_t *g = cr_gen_create(m, conf, 1, CR_LOG_EMERG);
    if (g == NULL)
        goto fail;
    m->gens[m->ngens++] = g;
    for (unsigned i = 0; i < conf->nlisten; i++) {
        size_t n = strlen(addrs);
        snprintf(addrs + n, sizeof(addrs) - n, "%s%s%s", n ? ", " : "", conf->listen[i].text,
                 conf->listen[i].tls.on ? " (tls)" : "");
    }
    if (conf->daemon) {
        /* After binding, so that a port in use is reported on the terminal. */
        if (cr_os_daemonize(strcmp(conf->error_log, "stderr") == 0) != CR_OK)
            goto fail;
        m->pid = getpid();
        cr_ctl->master_pid = (int32_t)m->pid;
    }
    m->generation = 1;
    cr_ctl->generation = 1;
    cr_proctitle_set("crunchd: master");
    if (cr_pid_file_write(conf->pid_file) != CR_OK)
        goto fail;
    cr_os_daemon_ready(0);

    cr_log(CR_LOG_NOTICE, 0, "crunchd %s starting: generation 1, %u acceptor%s, %u worker%s, "
           "listening on %s", PACKAGE_VERSION, conf->acceptors, conf->acceptors == 1 ? "" : "s",
           conf->workers, conf->workers == 1 ? "" : "s", addrs);
    cr_gen_spawn_all(m, g);

    sigemptyset(&empty);
    for (;;) {
        cr_master_timer(m);
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
                cr_notify("STOPPING=1");
                cr_gen_signal(m, NULL, -1, SIGTERM);
            }
        }
        if (cr_sig_quit) {
            cr_sig_quit = 0;
            if (!m->terminating && !m->quitting) {
                cr_log(CR_LOG_NOTICE, 0, "graceful stop (SIGQUIT): acceptors finish their "
                       "calls, then the workers exit");
                m->quitting = true;
                m->stop_started_ns = cr_now_ns();
                cr_notify("STOPPING=1");
                for (unsigned i = 0; i < m->ngens; i++)
                    if (!m->gens[i]->draining)
                        cr_gen_start_drain(m, m->gens[i]);
            }
        }
        if (cr_sig_usr1) {
            cr_sig_usr1 = 0;
            cr_log_reopen();
            cr_os_log_owner(cr_log_fd(), m->conf->error_log);
            cr_log(CR_LOG_NOTICE, 0, "reopened log files (SIGUSR1); children reopen theirs");
            cr_gen_signal(m, NULL, -1, SIGUSR1);
        }
        if (cr_sig_hup) {
            cr_sig_hup = 0;
            cr_master_reload(m);
        }
        if (cr_sig_ttin) {
            cr_sig_ttin = 0;
            cr_master_ttin_ttou(m, 1);
        }
        if (cr_sig_ttou) {
            cr_sig_ttou = 0;
            cr_master_ttin_ttou(m, -1);
        }
        if (cr_sig_alrm) {
            cr_sig_alrm = 0;
            uint64_t now = cr_now_ns();
            if (!m->terminating && !m->quitting)
                cr_master_respawn_due(m, now);
            cr_master_task_timeouts(m, now);
            if (m->terminating && !m->killed &&
                now - m->stop_started_ns > CR_STOP_GRACE_MS * 1000000ull) {
                cr_log(CR_LOG_WARN, 0, "%u children did not stop in time; sending SIGKILL",
                       cr_master_live(m));
                cr_gen_signal(m, NULL, -1, SIGKILL);
                m->killed = true;
            }
        }
        cr_master_drains(m, cr_now_ns());
        cr_gen_t *cur = cr_cur(m);
        if (cur && !m->notified_ready && cr_gen_ready(m, cur)) {
            m->notified_ready = true;
            cr_log(CR_LOG_NOTICE, 0, "ready: generation %u serving", m->generation);
            cr_notify("READY=1\nSTATUS=serving generation %u", m->generation);
        }
        if (cur && m->reload_pending_ready && cr_gen_ready(m, cur)) {
            m->reload_pending_ready = false;
            cr_notify("READY=1\nSTATUS=serving generation %u", m->generation);
        }
        if ((m->terminating || m->quitting) && cr_master_live(m) == 0)
            break;
    }

    m->quitting = m->terminating = false;
    cr_log(CR_LOG_NOTICE, 0, "exiting");
    if (m->conf->pid_file[0])
        unlink(m->conf->pid_file);
    while (m->ngens) {
        cr_gen_t *x = m->gens[--m->ngens];
        for (unsigned i = 0; i < x->conf->nlisten; i++)
            cr_listener_put(m, x->lfd[i]);
        cr_region_destroy(x->region);
        if (x->conf != m->conf)
            free(x->conf);
        free(x);
    }
    free(m->conf);
    cr_region_destroy(m->feed);
    return m->exit_code;

fail:
    cr_os_daemon_ready(1);
    while (m->ngens) {
        cr_gen_t *x = m->gens[--m->ngens];
        for (unsigned i = 0; i < x->conf->nlisten; i++)
            cr_listener_put(m, x->lfd[i]);
        cr_region_destroy(x->region);
        free(x);
    }
    if (m->ngens == 0 && conf)
        free(conf);
    cr_region_destroy(m->feed);
    return 1;
}
