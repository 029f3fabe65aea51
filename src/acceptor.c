/* acceptor.c: the acceptor process: accepts connections on the master's
 * listening sockets, hands them to gRPC (rpc.c), balances connections with its
 * siblings, handles its signals, drains and stops.
 *
 * Threads, all with every signal blocked (the mask the master forked us with,
 * inherited by gRPC's own threads too):
 *   - main: gRPC setup, then the gRPC thread (cr_rpc_serve), then the stop;
 *   - accept: poll() on the listeners and an eventfd, accept4(), hand over;
 *     pauses while this acceptor holds more than its share of connections;
 *     on a stop or drain it closes its copies of the listening sockets (the
 *     master keeps its own, so nothing is reset) and returns;
 *   - signal: sigwaitinfo(); turns TERM/INT into a fast stop and QUIT into a
 *     drain, reopens the logs on USR1, and is the watchdog that ends a stop
 *     that hangs;
 *   - result and updates (rpc.c): send what workers and the feed hand us.
 * TLS listeners are not ours: gRPC binds and accepts them itself (rpc.c). */
#include "acceptor.h"

#include "access.h"
#include "log.h"
#include "rpc.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#define ACC_ACCEPT_BATCH     16    /* connections per wakeup, then let others have some */
#define ACC_PAUSE_MS         100   /* back-off after EMFILE and friends */
#define ACC_RESCAN_MS        250   /* recount our connections at least this often */
#define ACC_BALANCE_PAUSE_MS 100   /* over our share: leave the listeners this long */
#define ACC_BALANCE_POLL_MS  10    /* ...checking this often whether we are back in it */
#define ACC_FAST_STOP_MS     5000  /* watchdog: a fast stop never takes longer */
#define ACC_DRAIN_SLACK_MS   5000  /* watchdog: drain (shutdown_timeout_ms) + shutdown
                                    * (1 s, then cancel, 2 s at most) + slack */

typedef struct {
    int fd;           /* the master's socket (our inherited copy); -1 = TLS */
    bool tcp;         /* TCP_NODELAY applies */
    bool dead;        /* POLLERR/POLLNVAL seen, or TLS: not polled */
    const char *name; /* as written in the config */
} acc_listener_t;

static struct {
    const cr_acceptor_ctx_t *ctx;
    acc_listener_t ls[CR_MAX_LISTEN];
    unsigned nls;
    int stop_fd; /* eventfd: the accept thread returns */
    pthread_t accept_tid, signal_tid;
    bool accept_started;
    uint64_t emfile_log_ns; /* rate limit of fd-exhaustion lines */
} acc = {.stop_fd = -1};

/* --- accept thread ------------------------------------------------------------- */

static void acc_stop_accepting(void)
{
    uint64_t one = 1;
    /* An eventfd write only fails when the counter would overflow: it is
     * readable then anyway. */
    if (write(acc.stop_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        cr_log(CR_LOG_ALERT, errno, "write() to the accept eventfd failed");
}

static void acc_set_nodelay(int fd)
{
    int on = 1;
    /* The peer may already be gone (EINVAL/ECONNRESET): gRPC sees that itself. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) == -1 &&
        errno != EINVAL && errno != ECONNRESET)
        cr_log(CR_LOG_WARN, errno, "setsockopt(TCP_NODELAY) failed");
}

/* Does this acceptor hold more than its share of the generation's
 * connections? Like nginx's accept_disabled: while it does, it leaves the
 * shared listeners alone so that its siblings (which poll the same sockets)
 * take the next connections. The share is ceil(total / live acceptors) + 1:
 * the +1 keeps two acceptors from handing one connection back and forth.
 * Checked before every accept, so one more at most lands here: with 2
 * acceptors and 20 connections neither holds more than 12. The siblings'
 * counts are what they last published (at most 250 ms stale). */
static bool acc_over_share(void)
{
    cr_region_t *r = acc.ctx->region;
    unsigned own = cr_rpc_connections(false), total = 0, live = 0;

    for (unsigned i = 0; i < r->nacceptors; i++) {
        if (i == acc.ctx->slot) {
            total += own;
            live++;
        } else if (__atomic_load_n(&r->acceptors[i].pid, __ATOMIC_ACQUIRE) != 0) {
            total += __atomic_load_n(&r->acceptors[i].conns, __ATOMIC_ACQUIRE);
            live++;
        }
    }
    if (live <= 1)
        return false;
    return own > (total + live - 1) / live + 1;
}

/* Accept what is ready on one listener. Returns true to pause accepting for a
 * while (out of descriptors or memory: retrying at once would spin). */
static bool acc_accept(acc_listener_t *l)
{
    for (int i = 0; i < ACC_ACCEPT_BATCH; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            if (l->tcp)
                acc_set_nodelay(fd);
            cr_rpc_add_connection(fd);
            if (acc_over_share())
                return false; /* the siblings take the rest */
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            /* Drained, or another acceptor won the race for it. */
            return false;
        case EINTR:
            continue;
        case ECONNABORTED:
        case EPROTO:
        case EPERM: /* a firewall rule refused it */
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
            /* Linux reports the pending network error of that one
             * connection: it is gone, the next one may be fine. */
            cr_log_debug("accept4() on %s: %s", l->name, strerror(errno));
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM: {
            int err = errno;
            uint64_t now = cr_now_ns();
            if (acc.emfile_log_ns == 0 || now - acc.emfile_log_ns >= 1000000000ull) {
                acc.emfile_log_ns = now;
                cr_log(CR_LOG_CRIT, err,
                       "accept4() on %s failed; not accepting for %d ms "
                       "(raise the open files limit, ulimit -n / LimitNOFILE)",
                       l->name, ACC_PAUSE_MS);
            }
            return true;
        }
        default:
            cr_log(CR_LOG_CRIT, errno, "accept4() on %s failed; not accepting for %d ms",
                   l->name, ACC_PAUSE_MS);
            return true;
        }
    }
    return false;
}

static void *acc_accept_main(void *arg)
{
    struct pollfd pfd[CR_MAX_LISTEN + 1];
    acc_listener_t *who[CR_MAX_LISTEN + 1];
    uint64_t paused_until = 0; /* EMFILE and friends: not before then */
    uint64_t over_since = 0;   /* over our share since then, 0 = not */

    (void)arg;
    for (;;) {
        nfds_t n = 0;
        /* Alone, nobody needs our count between accepts: sleep until one. */
        int timeout = acc.ctx->region->nacceptors > 1 ? ACC_RESCAN_MS : -1;
        bool listen = true;
        uint64_t now = cr_now_ns();

        /* Keep our published count fresh: gRPC closes connections itself. */
        cr_rpc_connections(true);

        if (paused_until && now < paused_until) {
            listen = false;
            timeout = (int)((paused_until - now) / 1000000u) + 1;
        } else {
            paused_until = 0;
        }
        if (listen && acc_over_share()) {
            /* Over our share: leave the listeners to the siblings for a
             * moment, looking again every few ms; after the pause take one
             * round anyway, so a sibling that stopped accepting cannot stall
             * them. */
            if (over_since == 0)
                over_since = now;
            if (now - over_since < ACC_BALANCE_PAUSE_MS * 1000000ull) {
                listen = false;
                timeout = ACC_BALANCE_POLL_MS;
            } else {
                over_since = 0;
            }
        } else if (listen) {
            over_since = 0;
        }

        pfd[n].fd = acc.stop_fd;
        pfd[n].events = POLLIN;
        who[n++] = NULL;
        for (unsigned i = 0; listen && i < acc.nls; i++) {
            if (acc.ls[i].dead)
                continue;
            pfd[n].fd = acc.ls[i].fd;
            pfd[n].events = POLLIN;
            who[n++] = &acc.ls[i];
        }

        int rc = poll(pfd, n, timeout);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            cr_log(CR_LOG_CRIT, errno, "poll() failed; not accepting for %d ms",
                   ACC_PAUSE_MS);
            paused_until = cr_now_ns() + ACC_PAUSE_MS * 1000000ull;
            continue;
        }
        if (pfd[0].revents)
            break; /* stop: the eventfd is never read, so it stays readable */
        for (nfds_t i = 1; rc > 0 && i < n; i++) {
            acc_listener_t *l = who[i];
            if (pfd[i].revents & (POLLERR | POLLNVAL)) {
                /* The master owns the socket; a broken one would spin here. */
                cr_log(CR_LOG_ALERT, 0,
                       "listening socket %s (fd %d) reports %s; no longer "
                       "accepting on it",
                       l->name, l->fd,
                       pfd[i].revents & POLLNVAL ? "POLLNVAL" : "POLLERR");
                l->dead = true;
                continue;
            }
            if ((pfd[i].revents & POLLIN) && acc_accept(l))
                paused_until = cr_now_ns() + ACC_PAUSE_MS * 1000000ull;
        }
    }
    /* Stopping or draining: never accept again. Our copies of the listening
     * sockets go; the master keeps its own, so connections waiting in their
     * accept queues stay there for the next acceptors. */
    for (unsigned i = 0; i < acc.nls; i++) {
        if (acc.ls[i].fd != -1) {
            close(acc.ls[i].fd);
            acc.ls[i].fd = -1;
        }
        acc.ls[i].dead = true;
    }
    return NULL;
}

/* Describe the inherited listeners. Returns CR_OK or CR_ERROR (logged). */
static int acc_listeners_init(const cr_acceptor_ctx_t *ctx)
{
    if (ctx->nlisten > CR_MAX_LISTEN) {
        cr_log(CR_LOG_EMERG, 0, "%u listening sockets, at most %d", ctx->nlisten,
               CR_MAX_LISTEN);
        return CR_ERROR;
    }
    for (unsigned i = 0; i < ctx->nlisten; i++) {
        acc_listener_t *l = &acc.ls[i];
        int domain = 0, fl;
        socklen_t len = sizeof(domain);

        l->fd = ctx->listen_fds[i];
        l->name = i < ctx->conf->nlisten ? ctx->conf->listen[i].text : "?";
        if (i < ctx->conf->nlisten && ctx->conf->listen[i].tls.on) {
            /* gRPC binds it (rpc.c); a socket the master bound anyway would
             * make that bind fail: say so before gRPC does. */
            if (l->fd != -1) {
                cr_log(CR_LOG_EMERG, 0,
                       "listen \"%s\" has tls, but the master passed a bound socket "
                       "(fd %d); TLS listeners are bound by each acceptor",
                       l->name, l->fd);
                return CR_ERROR;
            }
            l->dead = true;
            continue;
        }
        if (l->fd == -1) {
            cr_log(CR_LOG_EMERG, 0, "listen \"%s\": no socket from the master", l->name);
            return CR_ERROR;
        }
        if (getsockopt(l->fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == -1) {
            cr_log(CR_LOG_EMERG, errno,
                   "getsockopt(SO_DOMAIN) on listening socket %s (fd %d) "
                   "failed",
                   l->name, l->fd);
            return CR_ERROR;
        }
        l->tcp = domain == AF_INET || domain == AF_INET6;
        /* The master makes them non-blocking; a blocking one would hang this
         * thread in accept4() after another acceptor took the connection. */
        fl = fcntl(l->fd, F_GETFL);
        if (fl == -1) {
            cr_log(CR_LOG_EMERG, errno, "fcntl(F_GETFL) on listening socket %s failed",
                   l->name);
            return CR_ERROR;
        }
        if (!(fl & O_NONBLOCK)) {
            cr_log(CR_LOG_WARN, 0,
                   "listening socket %s is blocking; making it non-blocking", l->name);
            if (fcntl(l->fd, F_SETFL, fl | O_NONBLOCK) == -1) {
                cr_log(CR_LOG_EMERG, errno,
                       "fcntl(F_SETFL) on listening socket %s failed", l->name);
                return CR_ERROR;
            }
        }
    }
    acc.nls = ctx->nlisten;
    return CR_OK;
}

/* --- signal thread ------------------------------------------------------------- */

static void *acc_signal_main(void *arg)
{
    sigset_t set;
    uint64_t hard_deadline = 0;

    (void)arg;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);

    for (;;) {
        siginfo_t si;
        int sig;

        if (hard_deadline) {
            uint64_t now = cr_now_ns();
            if (now >= hard_deadline) {
                /* The master would SIGKILL us anyway; never hang a stop. */
                cr_log(CR_LOG_WARN, 0, "acceptor %u: stop takes too long; exiting now",
                       acc.ctx->slot);
                _exit(0);
            }
            uint64_t left = hard_deadline - now;
            struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u),
                                  .tv_nsec = (long)(left % 1000000000u)};
            sig = sigtimedwait(&set, &si, &ts);
        } else {
            sig = sigwaitinfo(&set, &si);
        }
        if (sig < 0) {
            if (errno != EINTR && errno != EAGAIN)
                cr_log(CR_LOG_ALERT, errno, "sigwaitinfo() failed");
            continue;
        }

        uint64_t limit = 0;
        switch (sig) {
        case SIGTERM:
        case SIGINT:
            cr_log(CR_LOG_NOTICE, 0, "acceptor %u: %s received from pid %d, stopping now",
                   acc.ctx->slot, sig == SIGTERM ? "SIGTERM" : "SIGINT", (int)si.si_pid);
            cr_rpc_request_stop(CR_RPC_STOP_FAST);
            acc_stop_accepting();
            limit = ACC_FAST_STOP_MS;
            break;
        case SIGQUIT:
            cr_log(CR_LOG_NOTICE, 0,
                   "acceptor %u: SIGQUIT received from pid %d, draining: open "
                   "connections are served until they age out, then stopping",
                   acc.ctx->slot, (int)si.si_pid);
            cr_rpc_request_stop(CR_RPC_STOP_GRACEFUL);
            acc_stop_accepting();
            limit = (uint64_t)acc.ctx->conf->shutdown_timeout_ms + ACC_DRAIN_SLACK_MS;
            break;
        case SIGUSR1:
            if (cr_log_reopen() != CR_OK)
                cr_log(CR_LOG_ALERT, 0, "acceptor %u: reopening the error log failed",
                       acc.ctx->slot);
            cr_access_reopen();
            break;
        case SIGHUP:
        default:
            /* Reload is the master's business. */
            break;
        }
        if (limit) {
            uint64_t d = cr_now_ns() + limit * 1000000ull;
            if (hard_deadline == 0 || d < hard_deadline)
                hard_deadline = d;
        }
    }
    return NULL;
}

/* --- main ---------------------------------------------------------------------- */

void cr_acceptor_main(const cr_acceptor_ctx_t *ctx)
{
    sigset_t all;
    int err;

    /* The master forks us with every signal blocked; make sure of it before
     * grpc_init, whose threads inherit the mask and must never take a signal. */
    sigfillset(&all);
    err = pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_sigmask() failed");
        _exit(2);
    }
    cr_role = CR_ROLE_ACCEPTOR;
    acc.ctx = ctx;
    __atomic_store_n(&ctx->region->acceptors[ctx->slot].pid, (int32_t)getpid(),
                     __ATOMIC_RELEASE);

    if (acc_listeners_init(ctx) != CR_OK)
        _exit(2);
    if (cr_access_open(ctx->conf->access_log) != CR_OK)
        _exit(2);
    acc.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (acc.stop_fd == -1) {
        cr_log(CR_LOG_EMERG, errno, "eventfd() failed");
        _exit(1);
    }

    /* Signals first: a SIGTERM that arrives during the gRPC set-up stays
     * pending until this thread takes it. */
    err = pthread_create(&acc.signal_tid, NULL, acc_signal_main, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_create() of the signal thread failed");
        _exit(1);
    }
    cr_shm_set_spin(ctx->conf->queue_spin_us); /* the result and updates threads */
    if (cr_rpc_init(ctx) != CR_OK)
        _exit(2);
    err = pthread_create(&acc.accept_tid, NULL, acc_accept_main, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_create() of the accept thread failed");
        _exit(1);
    }
    acc.accept_started = true;
    unsigned ntls = 0;
    for (unsigned i = 0; i < ctx->nlisten && i < ctx->conf->nlisten; i++)
        ntls += ctx->conf->listen[i].tls.on;
    cr_log(CR_LOG_NOTICE, 0,
           "acceptor %u (generation %u) serving on %u listening socket%s%s", ctx->slot,
           ctx->generation, acc.nls - ntls, acc.nls - ntls == 1 ? "" : "s",
           ntls ? " and its own TLS listener(s)" : "");

    cr_rpc_stop_t how = cr_rpc_serve();

    /* No connection may be added once the server shuts down. */
    acc_stop_accepting();
    err = pthread_join(acc.accept_tid, NULL);
    if (err != 0)
        cr_log(CR_LOG_ALERT, err, "pthread_join() of the accept thread failed");

    cr_log_debug("acceptor %u: %s stop", ctx->slot,
                 how == CR_RPC_STOP_FAST ? "fast" : "graceful");
    int rc = cr_rpc_shutdown();
    cr_log(CR_LOG_NOTICE, 0, "acceptor %u exiting%s", ctx->slot,
           rc == CR_OK ? "" : " (gRPC not cleaned up)");
    cr_access_close();
    /* The watchdog is no longer needed; joining it keeps valgrind runs of
     * the suite clean. It sits in sigwaitinfo(), a cancellation point. */
    err = pthread_cancel(acc.signal_tid);
    if (err == 0)
        err = pthread_join(acc.signal_tid, NULL);
    if (err != 0)
        cr_log(CR_LOG_ALERT, err, "stopping the signal thread failed");
    /* _exit: a forked child must not flush stdio buffers it inherited from the
     * master, nor run its atexit handlers. */
    _exit(0);
}
