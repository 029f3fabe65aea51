/* module.c: handler modules: the probe process that checks them without
 * loading them into the master, and their loading in workers (module.h). */
#include "cr_core.h"
#include "ctl.h"
#include "log.h"
#include "module.h"
#include "os.h"
#include "process.h"
#include "shm.h"

#include "crunchd/module.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define CR_PROBE_TIMEOUT_MS 10000
#define CR_PROBE_MAX_OUT 65536

_Static_assert(CRUNCHD_NAME_MAX + 1 == CR_HANDLER_NAME_SIZE, "handler name sizes differ");

/* snprintf through a va_list: messages quoting paths are cut, on purpose. */
static void cr_mod_err(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cr_mod_err(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* Names found by the last successful cr_module_check, in config order. */
static char cr_probe_names[CR_MAX_HANDLERS][CR_HANDLER_NAME_SIZE];
static unsigned cr_probe_nnames;

static bool cr_module_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CRUNCHD_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

/* dlopen + dlsym + ABI check, shared by the probe and workers. Returns the
 * module, or NULL with err set ("FILE:LINE: module PATH: what; the fix"). */
static const crunchd_module_t *cr_module_open(const cr_conf_t *c, unsigned i, void **handle,
                                              char *err, size_t len)
{
    const cr_module_conf_t *mc = &c->modules[i];
    const crunchd_module_t *m;
    void *h;

    dlerror();
    h = dlopen(mc->path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        size_t pl = strlen(mc->path);
        /* glibc says "PATH: why"; the path is in our message already. */
        if (e != NULL && strncmp(e, mc->path, pl) == 0 && e[pl] == ':' && e[pl + 1] == ' ')
            e += pl + 2;
        cr_mod_err(err, len, "%s:%d: module %s cannot be loaded: %s; check modules[%u].path",
                 c->file, mc->line, mc->path, e ? e : "dlopen failed", i);
        return NULL;
    }
    m = dlsym(h, "crunchd_module");
    if (m == NULL) {
        cr_mod_err(err, len,
                 "%s:%d: module %s does not export crunchd_module; see crunchd/module.h",
                 c->file, mc->line, mc->path);
        dlclose(h);
        return NULL;
    }
    if (m->abi != CRUNCHD_MODULE_ABI) {
        cr_mod_err(err, len,
                 "%s:%d: module %s was built for module ABI %u, this crunchd is ABI %u; "
                 "rebuild it against this crunchd's crunchd/module.h",
                 c->file, mc->line, mc->path, m->abi, (unsigned)CRUNCHD_MODULE_ABI);
        dlclose(h);
        return NULL;
    }
    if (m->handlers == NULL) {
        cr_mod_err(err, len, "%s:%d: module %s lists no handlers (handlers is NULL); see "
                 "crunchd/module.h", c->file, mc->line, mc->path);
        dlclose(h);
        return NULL;
    }
    *handle = h;
    return m;
}

/* --- the probe ----------------------------------------------------------------- */

static int cr_probe_write(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w == -1 && errno == EINTR)
            continue;
        if (w <= 0)
            return CR_ERROR;
        s += w;
        n -= (size_t)w;
    }
    return CR_OK;
}

/* In the probe child: check every module, write "H name\n" per handler then
 * "OK\n", or "E message\n". Never returns. */
__attribute__((noreturn)) static void cr_probe_child(const cr_conf_t *c, int fd)
{
    static char names[CR_MAX_HANDLERS][CR_HANDLER_NAME_SIZE];
    static int owner[CR_MAX_HANDLERS]; /* -1 = built in, else the module index */
    char err[1536], line[128];
    unsigned n = 0;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Modules run as the workers will: under `user`, when crunchd starts as root. */
    if (c->user[0] != '\0' && geteuid() == 0 &&
        cr_os_drop_privileges(c->user, c->group) != CR_OK) {
        cr_mod_err(err, sizeof(err), "E cannot switch to user %s to check the modules\n",
                 c->user);
        cr_probe_write(fd, err);
        _exit(1);
    }
    for (unsigned i = 0; i < cr_nhandlers; i++) {
        snprintf(names[n], sizeof(names[n]), "%s", cr_handlers[i].name);
        owner[n++] = -1;
    }
    for (unsigned i = 0; i < c->nmodules; i++) {
        const char *path = c->modules[i].path;
        void *h;
        const crunchd_module_t *m = cr_module_open(c, i, &h, err + 2, sizeof(err) - 3);
        if (m == NULL)
            goto fail;
        for (const crunchd_handler_t *x = m->handlers; x->name != NULL; x++) {
            if (!cr_module_name_ok(x->name) || x->run == NULL) {
                cr_mod_err(err + 2, sizeof(err) - 3,
                         "%s:%d: module %s: handler name \"%.64s\" is invalid%s; use 1 "
                         "to %d characters of A-Z a-z 0-9 _ . -",
                         c->file, c->modules[i].line, path, x->name,
                         x->run == NULL ? " or has no function" : "", CRUNCHD_NAME_MAX);
                goto fail;
            }
            for (unsigned j = 0; j < n; j++) {
                if (strcmp(names[j], x->name) != 0)
                    continue;
                if (owner[j] < 0)
                    cr_mod_err(err + 2, sizeof(err) - 3,
                             "%s:%d: module %s: handler \"%s\" has the name of a built-in "
                             "handler; rename it in the module",
                             c->file, c->modules[i].line, path, x->name);
                else
                    cr_mod_err(err + 2, sizeof(err) - 3,
                             "%s:%d: module %s: handler \"%s\" is also defined by module "
                             "%s (modules[%d]); handler names must be unique",
                             c->file, c->modules[i].line, path, x->name,
                             c->modules[owner[j]].path, owner[j]);
                goto fail;
            }
            if (n >= CR_MAX_HANDLERS) {
                cr_mod_err(err + 2, sizeof(err) - 3,
                         "%s:%d: module %s: more than %d handlers in all; load fewer",
                         c->file, c->modules[i].line, path, CR_MAX_HANDLERS);
                goto fail;
            }
            snprintf(names[n], sizeof(names[n]), "%s", x->name);
            owner[n++] = (int)i;
            snprintf(line, sizeof(line), "H %s\n", x->name);
            if (cr_probe_write(fd, line) != CR_OK)
                _exit(1);
        }
        /* Not dlclose'd: a module may not expect it, and we exit at once. */
    }
    cr_probe_write(fd, "OK\n");
    _exit(0);

fail:
    err[0] = 'E';
    err[1] = ' ';
    strcat(err, "\n");
    cr_probe_write(fd, err);
    _exit(1);
}

int cr_module_check(const cr_conf_t *c, char *err, size_t len)
{
    static char buf[CR_PROBE_MAX_OUT];
    size_t got = 0;
    int p[2], status;
    pid_t pid;
    uint64_t deadline = cr_now_ns() + CR_PROBE_TIMEOUT_MS * 1000000ull;
    bool timed_out = false;

    cr_probe_nnames = 0;
    if (c->nmodules == 0)
        return CR_OK;
    if (pipe2(p, O_CLOEXEC) == -1) {
        cr_mod_err(err, len, "pipe() for the module probe failed: %s", strerror(errno));
        return CR_ERROR;
    }
    fflush(NULL); /* nothing buffered may be written twice */
    pid = fork();
    if (pid == -1) {
        cr_mod_err(err, len, "fork() of the module probe failed: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return CR_ERROR;
    }
    if (pid == 0) {
        close(p[0]);
        cr_probe_child(c, p[1]);
    }
    close(p[1]);
    for (;;) {
        int64_t left = (int64_t)(deadline - cr_now_ns()) / 1000000;
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        if (left <= 0 || (cr_now_ns() > deadline)) {
            timed_out = true;
            break;
        }
        int r = poll(&pfd, 1, (int)left);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == 0) {
            timed_out = true;
            break;
        }
        ssize_t n = read(p[0], buf + got, sizeof(buf) - 1 - got);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got >= sizeof(buf) - 1)
            break;
    }
    close(p[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {
    }
    buf[got] = '\0';
    if (timed_out) {
        cr_mod_err(err, len, "modules: checking them took more than %d s (does a module's "
                 "constructor hang?); fix or remove the module", CR_PROBE_TIMEOUT_MS / 1000);
        return CR_ERROR;
    }

    /* Parse: "H name" lines, then "OK", or an "E message" line. */
    unsigned nn = cr_nhandlers;
    bool ok = false;
    for (char *s = buf, *nl; *s; s = nl + 1) {
        nl = strchr(s, '\n');
        if (nl == NULL)
            break;
        *nl = '\0';
        if (s[0] == 'E' && s[1] == ' ') {
            cr_mod_err(err, len, "%s", s + 2);
            return CR_ERROR;
        }
        if (strcmp(s, "OK") == 0) {
            ok = true;
            break;
        }
        if (s[0] == 'H' && s[1] == ' ' && nn < CR_MAX_HANDLERS)
            snprintf(cr_probe_names[nn++ - cr_nhandlers], CR_HANDLER_NAME_SIZE, "%s", s + 2);
    }
    if (!ok || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[128];
        cr_wait_status_text(status, how, sizeof(how));
        cr_mod_err(err, len, "modules: the process checking them %s while loading them (a "
                 "module's constructor crashed?); fix or remove the module", how);
        return CR_ERROR;
    }
    cr_probe_nnames = nn - cr_nhandlers;
    return CR_OK;
}

int cr_module_publish(char *err, size_t len)
{
    unsigned n = cr_ctl->nhandlers, add = 0;

    for (unsigned i = 0; i < cr_probe_nnames; i++)
        add += cr_handler_find(cr_probe_names[i], strlen(cr_probe_names[i])) == CR_NONE;
    if (n + add > CR_MAX_HANDLERS) {
        cr_mod_err(err, len, "modules: the handler table would hold %u names, more than %d "
                 "(removed handlers keep their place until a restart); restart crunchd",
                 n + add, CR_MAX_HANDLERS);
        return CR_ERROR;
    }
    for (unsigned i = 0; i < cr_probe_nnames; i++) {
        if (cr_handler_find(cr_probe_names[i], strlen(cr_probe_names[i])) != CR_NONE)
            continue;
        /* The name first, then the count (release): a reader that sees the
         * count sees the name. */
        memcpy(cr_ctl->handler_names[n], cr_probe_names[i], CR_HANDLER_NAME_SIZE);
        __atomic_store_n(&cr_ctl->nhandlers, ++n, __ATOMIC_RELEASE);
    }
    return CR_OK;
}

/* --- in workers ------------------------------------------------------------------ */

typedef struct {
    void *handle;
    const crunchd_module_t *m;
    void *state;
    bool inited;
} cr_mod_t;

static cr_mod_t cr_mods[CR_MAX_MODULES];
static unsigned cr_nmods;

/* Table index -> the module handler serving it in this worker. */
static struct {
    const crunchd_handler_t *h;
    cr_mod_t *mod;
} cr_mod_fn[CR_MAX_HANDLERS];

int cr_module_worker_load(const cr_conf_t *c)
{
    char err[1536];

    for (unsigned i = 0; i < c->nmodules; i++) {
        cr_mod_t *x = &cr_mods[i];
        x->m = cr_module_open(c, i, &x->handle, err, sizeof(err));
        if (x->m == NULL) {
            /* The file changed since the master checked it. */
            cr_log(CR_LOG_ALERT, 0, "%s", err);
            return CR_ERROR;
        }
        cr_nmods = i + 1;
        if (x->m->init != NULL) {
            int rc = x->m->init(c->modules[i].config, &x->state);
            if (rc != 0) {
                cr_log(CR_LOG_ALERT, 0, "%s:%d: module %s: init failed (returned %d) with "
                       "config \"%.200s\"; the worker exits and is not respawned: fix the "
                       "module's config, then reload", c->file, c->modules[i].line,
                       c->modules[i].path, rc, c->modules[i].config);
                return CR_ERROR;
            }
        }
        x->inited = true;
        for (const crunchd_handler_t *h = x->m->handlers; h->name != NULL; h++) {
            uint32_t idx = cr_handler_find(h->name, strlen(h->name));
            if (idx == CR_NONE || idx >= CR_MAX_HANDLERS || idx < cr_nhandlers) {
                cr_log(CR_LOG_WARN, 0, "module %s: handler \"%s\" was not there when the "
                       "configuration was checked (file replaced since?); not served until "
                       "the next reload", c->modules[i].path, h->name);
                continue;
            }
            cr_mod_fn[idx].h = h;
            cr_mod_fn[idx].mod = x;
        }
    }
    return CR_OK;
}

void cr_module_worker_fini(void)
{
    for (unsigned i = cr_nmods; i-- > 0;) {
        cr_mod_t *x = &cr_mods[i];
        if (x->inited && x->m->fini != NULL)
            x->m->fini(x->state);
        x->inited = false;
    }
}

static int cr_out_write(crunchd_out_t *o, const void *p, size_t n)
{
    return cr_buf_append(o->priv, p, n) == CR_OK ? 0 : -1;
}

static int cr_out_writef(crunchd_out_t *o, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = cr_buf_vprintf(o->priv, fmt, ap);
    va_end(ap);
    return rc == CR_OK ? 0 : -1;
}

static void cr_out_reset(crunchd_out_t *o)
{
    cr_buf_reset(o->priv);
}

bool cr_module_run(uint32_t h, const uint8_t *in, size_t len, cr_buf_t *out, int *code)
{
    if (h >= CR_MAX_HANDLERS || cr_mod_fn[h].h == NULL)
        return false;
    crunchd_out_t o = {.write = cr_out_write, .writef = cr_out_writef,
                       .reset = cr_out_reset, .max = out->max, .priv = out};
    const crunchd_handler_t *x = cr_mod_fn[h].h;
    int rc = x->run(cr_mod_fn[h].mod->state, in, len, &o);
    if (rc < 0 || rc > 16) {
        cr_buf_reset(out);
        (void)cr_buf_printf(out, "%s: the handler returned %d, which is not a status code",
                            x->name, rc);
        rc = CR_STATUS_UNKNOWN;
    } else if (rc != 0 && out->len == 0) {
        (void)cr_buf_printf(out, "%s: the handler failed (status %d) without a message",
                            x->name, rc);
    }
    *code = rc;
    return true;
}
