/* process.c: process titles (ps shows "crunchd: worker 3 gen 1") and signal names. */
#include "cr_core.h"
#include "process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

extern char **environ;

static char *cr_title_start, *cr_title_end;
/* The moved environment, kept reachable for the life of the process: glibc's
 * exit-time cleanup (valgrind runs it) sets environ to NULL, and leak checkers
 * would then call the copy lost. volatile: a static that is only written is
 * otherwise optimized away, store and all. */
static char **volatile cr_environ_copy;

/* The kernel shows argv's memory as the command line; to write a longer title
 * than argv held, nginx moves the environment (which follows argv) elsewhere
 * and uses both areas. We do the same. */
void cr_proctitle_init(int argc, char **argv)
{
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t nenv = 0;
    for (char **e = environ; *e; e++, nenv++)
        if (*e == end)
            end = *e + strlen(*e) + 1;
    char **env = malloc((nenv + 1) * sizeof(char *));
    if (env == NULL)
        return;
    for (size_t i = 0; i < nenv; i++) {
        env[i] = strdup(environ[i]);
        if (env[i] == NULL)
            return;
    }
    env[nenv] = NULL;
    cr_environ_copy = env;
    environ = env;
    /* Keep argv[0] valid for code that still reads it: copy it. */
    cr_title_start = argv[0];
    cr_title_end = end;
    for (int i = 1; i < argc; i++)
        argv[i] = NULL;
}

void cr_proctitle_set(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (cr_title_start) {
        size_t room = (size_t)(cr_title_end - cr_title_start);
        size_t n = strlen(buf);
        if (n >= room)
            n = room - 1;
        memcpy(cr_title_start, buf, n);
        memset(cr_title_start + n, 0, room - n);
    }
    /* comm: "crunchd: worker 3" is too long; keep the role words. */
    const char *comm = strncmp(buf, "crunchd: ", 9) == 0 ? buf + 9 : buf;
    char c[16] = "crunchd-";
    size_t k = strlen(c);
    for (; k < sizeof(c) - 1 && *comm; k++)
        c[k] = *comm++;
    c[k] = '\0';
    for (char *p = c; *p; p++)
        if (*p == ' ')
            *p = '-';
    prctl(PR_SET_NAME, c, 0, 0, 0);
}

const char *cr_signal_name(int sig)
{
    static const struct {
        int sig;
        const char *name;
    } names[] = {
        {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
        {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
        {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
        {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGCHLD, "SIGCHLD"},
        {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"}, {SIGTTIN, "SIGTTIN"},
        {SIGTTOU, "SIGTTOU"}, {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
        {SIGWINCH, "SIGWINCH"},
    };
    for (size_t i = 0; i < cr_nelem(names); i++)
        if (names[i].sig == sig)
            return names[i].name;
    return NULL;
}

void cr_wait_status_text(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status)) {
        const char *n = cr_signal_name(WTERMSIG(status));
        char num[16];
        if (n == NULL) {
            snprintf(num, sizeof(num), "signal %d", WTERMSIG(status));
            n = num;
        }
        snprintf(buf, len, "killed by %s%s", n, WCOREDUMP(status) ? " (core dumped)" : "");
    } else if (WIFEXITED(status)) {
        snprintf(buf, len, "exited with code %d", WEXITSTATUS(status));
    } else {
        snprintf(buf, len, "changed state (status 0x%x)", status);
    }
}
