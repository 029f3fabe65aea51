/* os.h: the operating-system edges of crunchd: detaching, privileges, worker
 * limits and CPU pinning, unix socket permissions, systemd's notify socket,
 * and `crunchd -s`. */
#ifndef CR_OS_H
#define CR_OS_H

#include "cr_core.h"
#include "conf.h"

/* --- the master, at start ------------------------------------------------------ */

/* Detach from the terminal (daemon = true): fork, setsid, fork again, so the
 * daemon is in a session of its own, has no controlling terminal and can never
 * acquire one; chdir("/"); stdin and stdout to /dev/null, and stderr too unless
 * keep_stderr (pass true when error_log is "stderr", as nginx keeps it). The
 * umask is left alone.
 *
 * Returns CR_OK in the daemon (a new pid: whatever recorded getpid() before
 * must record it again), or CR_ERROR (logged) in the original process when it
 * could not fork; the master then exits 1 as from any start-up error.
 *
 * The original process does not return: it waits until the daemon calls
 * cr_os_daemon_ready() and exits with the code given there (0), or exits 1
 * with a message on its stderr when the daemon dies before that (the reason is
 * in the error log). So `crunchd` returns once the pid file names the daemon
 * and a start-up error after detaching is still a non-zero exit, which init
 * scripts and Type=forking units rely on. Call it in the master after the
 * listeners are bound (their errors then still reach the terminal) and before
 * the pid file is written. */
int cr_os_daemonize(bool keep_stderr);

/* In a daemon made by cr_os_daemonize: tell the waiting original process to
 * exit with `code` (0 = started). Call it after the pid file is written and
 * before the first child is forked (children would otherwise inherit the pipe;
 * harmless, but a wasted descriptor). Idempotent; a no-op when not detached. */
void cr_os_daemon_ready(int code);

/* Resolve `user` and `group` (conf: "" = stay / the user's primary group) once,
 * in the master, before anything is forked, so that an unknown name is a
 * start-up error on the terminal, not a child that exits at every respawn; the
 * result (uid, gid, supplementary groups) is kept for the children, which
 * inherit it and need no NSS lookup after fork. Logs a warning (once) and
 * returns CR_OK when a user is set but the master is not root: nothing can be
 * dropped, crunchd runs as it is (nginx does the same).
 * Returns CR_OK, or CR_ERROR with the reason logged ("user \"x\" not found...").
 */
int cr_os_user_init(const char *user, const char *group);

/* When children will drop to another user: give them the file open on `fd`
 * (an error or access log the master just opened or reopened), so that they
 * can reopen `path` themselves after SIGUSR1 once logrotate renamed it (nginx's
 * ngx_reopen_files does the same). A no-op when nothing is dropped, for
 * "stderr", or for a file the user already owns. Returns CR_OK, or CR_ERROR
 * (logged at error level; the caller carries on: the children then keep
 * writing to the renamed file). */
int cr_os_log_owner(int fd, const char *path);

/* A unix listener's file, right after bind() and before listen() (so that no
 * client can connect while the mode is still the umask's): chmod to l->mode
 * when >= 0, chgrp to l->group when set. TCP listeners: nothing.
 * Returns CR_OK, or CR_ERROR with a log line at `level` naming the path and
 * the fix. */
int cr_os_listen_perms(const cr_listen_conf_t *l, int level);

/* --- children, right after fork ----------------------------------------------- */

/* Lower the process's limits and pin it (workers only, before dropping
 * privileges: root may raise a hard limit, "nobody" may not):
 * worker_rlimit_nofile (soft and hard), worker_rlimit_core, and with
 * worker_cpu_affinity = "auto" one CPU: the (worker_no mod n)-th of the n CPUs
 * the master may run on (its affinity mask: a cpuset or taskset may exclude
 * some). Failures are logged with the fix and the worker carries on unlimited
 * or unpinned: none of them is worth a worker that cannot start. */
void cr_os_worker_limits(const cr_conf_t *c, unsigned worker_no);

/* Drop to the user and group resolved by cr_os_user_init (user and group name
 * them; they are resolved here if cr_os_user_init was not called with the same
 * names). Does nothing and returns CR_OK when `user` is "" or the process is
 * not root. Otherwise: setgroups, setgid, setuid, checks that root cannot be
 * regained, then PR_SET_DUMPABLE 1 (core files and /proc stay usable) and
 * re-arms PR_SET_PDEATHSIG, which the kernel clears on a credential change.
 * Returns CR_OK, or CR_ERROR after logging what failed and what to do; the
 * child must then exit 2 (a fatal start-up error, not respawned). */
int cr_os_drop_privileges(const char *user, const char *group);

/* --- systemd -------------------------------------------------------------------- */

/* systemd's notify protocol without libsystemd (sd_notify(3)): when
 * $NOTIFY_SOCKET is set (a path, or "@name" for an abstract socket), send the
 * formatted text as one datagram. A silent no-op when it is not set. Master
 * only (NotifyAccess=main): children never call it. Not async-signal-safe:
 * call it from the main loop. A failed send is logged once, at error level.
 * The master sends READY=1, "RELOADING=1\nMONOTONIC_USEC=%llu", STATUS=...,
 * STOPPING=1. */
void cr_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC= is read in. */
uint64_t cr_os_monotonic_usec(void);

/* --- crunchd -s ---------------------------------------------------------------- */

/* The signal for an action of `crunchd -s`: reload HUP, stop TERM, quit QUIT,
 * reopen USR1; -1 for anything else. */
int cr_os_signal_by_name(const char *action);

/* The actions cr_os_signal_by_name knows, for usage text: "reload, stop, quit, reopen".
 */
#define CR_OS_SIGNAL_ACTIONS "reload, stop, quit, reopen"

/* crunchd -s ACTION: send the action's signal to the master whose pid is in
 * c->pid_file. Refuses (and sends nothing) when pid_file is off, the file is
 * missing or holds no pid, or the pid is not a live process titled
 * "crunchd: master" (a stale file, or a pid reused by another program).
 * Messages go to stderr as "crunchd: [error] ..."; nothing is printed on
 * success. Returns the process exit code: 0 sent, 1 refused or failed. */
int cr_os_signal_master(const cr_conf_t *c, const char *action);

#endif /* CR_OS_H */
