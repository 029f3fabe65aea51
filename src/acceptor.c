/* acceptor.c: the acceptor process: accepts connections on the master's
 * listening sockets, hands them to gRPC (rpc.c), handles its signals, stops.
 *
 * Threads, all with every signal blocked (the mask the master forked us with,
 * inherited by gRPC's own threads too):
 *   - main: gRPC setup, then the gRPC thread (cr_rpc_serve), then the stop;
 *   - accept: poll() on the listeners and an eventfd, accept4(), hand over;
 *   - signal: sigwaitinfo(); turns TERM/INT/QUIT into a stop request, reopens
 *     the log on USR1, and is the watchdog that ends a stop that hangs;
 *   - result (rpc.c): sends the results the workers pushed to us. */
#include "acceptor.h"

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
#define ACC_FAST_STOP_MS     5000  /* watchdog: a fast stop never takes longer */
#define ACC_GRACEFUL_STOP_MS 15000 /* drain (10 s) + cancel (2 s) + slack */

typedef struct {
    int fd;
    bool tcp;         /* TCP_NODELAY applies */
    bool dead;        /* POLLERR/POLLNVAL seen: no longer polled */
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
    uint64_t paused_until = 0;

    (void)arg;
    for (;;) {
        nfds_t n = 0;
        int timeout = -1;

        pfd[n].fd = acc.stop_fd;
        pfd[n].events = POLLIN;
        who[n++] = NULL;
        if (paused_until) {
            uint64_t now = cr_now_ns();
            if (now < paused_until)
                timeout = (int)((paused_until - now) / 1000000u) + 1;
            else
                paused_until = 0;
        }
        if (paused_until == 0) {
            for (unsigned i = 0; i < acc.nls; i++) {
                if (acc.ls[i].dead)
                    continue;
                pfd[n].fd = acc.ls[i].fd;
                pfd[n].events = POLLIN;
                who[n++] = &acc.ls[i];
            }
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
        for (nfds_t i = 1; i < n; i++) {
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
                   "acceptor %u: SIGQUIT received from pid %d, finishing "
                   "open calls then stopping",
                   acc.ctx->slot, (int)si.si_pid);
            cr_rpc_request_stop(CR_RPC_STOP_GRACEFUL);
            acc_stop_accepting();
            limit = ACC_GRACEFUL_STOP_MS;
            break;
        case SIGUSR1:
            if (cr_log_reopen() != CR_OK)
                cr_log(CR_LOG_ALERT, 0, "acceptor %u: reopening the error log failed",
                       acc.ctx->slot);
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
    if (cr_rpc_init(ctx) != CR_OK)
        _exit(2);
    err = pthread_create(&acc.accept_tid, NULL, acc_accept_main, NULL);
    if (err != 0) {
        cr_log(CR_LOG_EMERG, err, "pthread_create() of the accept thread failed");
        _exit(1);
    }
    acc.accept_started = true;
    cr_log(CR_LOG_NOTICE, 0,
           "acceptor %u (generation %u) serving on %u listening sockets", ctx->slot,
           ctx->generation, acc.nls);

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
