/* crunchctl_out.c: what crunchctl prints: error lines, result lines, JSON (a
 * small hand-written writer) and the stats table. Status names: client.c. */
#include "crunchctl.h"

/* Write s to f on one line: control characters (newlines in a server's
 * message, say) become spaces. */
static void put_one_line(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s, f);
}

void cctl_error(const cctl_opts_t *o, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    fflush(stdout);
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) == -1)
        s = NULL;
    va_end(ap);
    fputs("crunchctl: ", stderr);
    if (o != NULL && o->cmd != NULL)
        fprintf(stderr, "%s: ", o->cmd);
    put_one_line(stderr, s != NULL ? s : fmt);
    fputc('\n', stderr);
    fflush(stderr);
    free(s);
}

/* s (NULL as "") on one line, then spaces up to width columns. */
static void put_padded(FILE *f, const char *s, size_t width)
{
    size_t n;

    if (s == NULL)
        s = "";
    put_one_line(f, s);
    for (n = strlen(s); n < width; n++)
        fputc(' ', f);
}

/* --- result lines ----------------------------------------------------------------- */

/* Output bytes on one line: backslash, tab, CR, LF and the other control
 * bytes as C escapes; everything else (UTF-8 included) as is. */
static void put_escaped(FILE *f, const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        switch (p[i]) {
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (p[i] < 0x20 || p[i] == 0x7f)
                fprintf(f, "\\x%02x", p[i]);
            else
                fputc(p[i], f);
        }
    }
}

void cctl_print_result(const cctl_opts_t *o, const Crunch__V1__Result *r)
{
    if (o->json) {
        cctl_print_result_json(r);
    } else if (r->code == 0) {
        printf("%" PRIu64 "\t", r->id);
        put_escaped(stdout, r->output.data, r->output.len);
        putchar('\n');
    } else {
        /* stdout first: a reader of both sees the lines in order. */
        fflush(stdout);
        fprintf(stderr, "%" PRIu64 "\terror: %s: ", r->id, cr_client_code_name(r->code));
        put_one_line(stderr, r->error != NULL ? r->error : "");
        fputc('\n', stderr);
        fflush(stderr);
    }
    fflush(stdout);
}

/* --- JSON ------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint32_t c;
    size_t len, i;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        c = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        c = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        c = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff)) ||
        (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return len;
}

bool cctl_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0, k;

    while (i < len) {
        k = utf8_len(s + i, len - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

void cctl_json_string(FILE *f, const uint8_t *s, size_t len)
{
    size_t i = 0, k;

    fputc('"', f);
    while (i < len) {
        uint8_t c = s[i];

        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c == '\n') {
            fputs("\\n", f);
        } else if (c == '\r') {
            fputs("\\r", f);
        } else if (c == '\t') {
            fputs("\\t", f);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
        } else if (c >= 0x80) {
            k = utf8_len(s + i, len - i);
            if (k == 0) {
                fputs("\\ufffd", f); /* keep the document valid */
                i++;
                continue;
            }
            fwrite(s + i, 1, k, f);
            i += k;
            continue;
        } else {
            fputc(c, f);
        }
        i++;
    }
    fputc('"', f);
}

static void json_cstr(FILE *f, const char *s)
{
    if (s == NULL)
        s = "";
    cctl_json_string(f, (const uint8_t *)s, strlen(s));
}

static void put_base64(FILE *f, const uint8_t *p, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i;
    uint32_t v;

    fputc('"', f);
    for (i = 0; i + 2 < n; i += 3) {
        v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        fputc(tab[v >> 18], f);
        fputc(tab[(v >> 12) & 63], f);
        fputc(tab[(v >> 6) & 63], f);
        fputc(tab[v & 63], f);
    }
    if (n - i == 1) {
        v = (uint32_t)p[i] << 16;
        fprintf(f, "%c%c==", tab[v >> 18], tab[(v >> 12) & 63]);
    } else if (n - i == 2) {
        v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        fprintf(f, "%c%c%c=", tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63]);
    }
    fputc('"', f);
}

void cctl_print_result_json(const Crunch__V1__Result *r)
{
    FILE *f = stdout;

    fprintf(f, "{\"id\":%" PRIu64 ",\"code\":%d,\"status\":", r->id, (int)r->code);
    json_cstr(f, cr_client_code_name(r->code));
    /* Output that is not UTF-8 text cannot be a JSON string without loss. */
    if (cctl_utf8_valid(r->output.data, r->output.len)) {
        fputs(",\"output\":", f);
        cctl_json_string(f, r->output.data, r->output.len);
    } else {
        fputs(",\"output_base64\":", f);
        put_base64(f, r->output.data, r->output.len);
    }
    fputs(",\"error\":", f);
    json_cstr(f, r->error);
    fprintf(f,
            ",\"worker\":%" PRIu32 ",\"queued_us\":%" PRIu64 ",\"run_us\":%" PRIu64 "}\n",
            r->worker, r->queued_us, r->run_us);
}

/* A pretty-printing JSON writer: two-space indent, one member a line. */
typedef struct {
    FILE *f;
    int depth;
    bool first; /* nothing written yet at this depth */
} json_t;

static void j_key(json_t *j, const char *key)
{
    if (!j->first)
        fputc(',', j->f);
    fprintf(j->f, "\n%*s", j->depth * 2, "");
    j->first = false;
    if (key != NULL) {
        json_cstr(j->f, key);
        fputs(": ", j->f);
    }
}

static void j_open(json_t *j, const char *key, char c)
{
    if (j->depth > 0)
        j_key(j, key);
    fputc(c, j->f);
    j->depth++;
    j->first = true;
}

static void j_close(json_t *j, char c)
{
    j->depth--;
    if (!j->first)
        fprintf(j->f, "\n%*s", j->depth * 2, "");
    fputc(c, j->f);
    j->first = false;
}

static void j_u64(json_t *j, const char *key, uint64_t v)
{
    j_key(j, key);
    fprintf(j->f, "%" PRIu64, v);
}

static void j_i64(json_t *j, const char *key, int64_t v)
{
    j_key(j, key);
    fprintf(j->f, "%" PRId64, v);
}

static void j_bool(json_t *j, const char *key, bool v)
{
    j_key(j, key);
    fputs(v ? "true" : "false", j->f);
}

static void j_str(json_t *j, const char *key, const char *s)
{
    j_key(j, key);
    json_cstr(j->f, s);
}

static void j_null(json_t *j, const char *key)
{
    j_key(j, key);
    fputs("null", j->f);
}

/* Field names are the .proto's, so that the JSON reads like the contract. */
static void stats_json(const Crunch__V1__StatsReply *r)
{
    json_t j = {stdout, 0, true};
    const Crunch__V1__StatsReply__Queue *q = r->queue;
    size_t i;

    j_open(&j, NULL, '{');
    j_u64(&j, "generation", r->generation);
    j_u64(&j, "start_time_unix_us", r->start_time_unix_us);
    if (r->last_reload != NULL) {
        j_open(&j, "last_reload", '{');
        j_u64(&j, "time_unix_us", r->last_reload->time_unix_us);
        j_bool(&j, "ok", r->last_reload->ok);
        j_str(&j, "message", r->last_reload->message);
        j_close(&j, '}');
    } else {
        j_null(&j, "last_reload");
    }
    j_u64(&j, "reloads_ok", r->reloads_ok);
    j_u64(&j, "reloads_failed", r->reloads_failed);
    j_open(&j, "processes", '[');
    for (i = 0; i < r->n_processes; i++) {
        const Crunch__V1__StatsReply__Process *p = r->processes[i];

        j_open(&j, NULL, '{');
        j_str(&j, "role", p->role);
        j_u64(&j, "slot", p->slot);
        j_u64(&j, "generation", p->generation);
        j_i64(&j, "pid", p->pid);
        j_str(&j, "state", p->state);
        j_u64(&j, "tasks_done", p->tasks_done);
        j_u64(&j, "current_task_id", p->current_task_id);
        j_str(&j, "current_handler", p->current_handler);
        j_u64(&j, "running_us", p->running_us);
        j_u64(&j, "start_time_unix_us", p->start_time_unix_us);
        j_u64(&j, "connections", p->connections);
        j_u64(&j, "waiting_for_room", p->waiting_for_room);
        j_u64(&j, "refused_queue_full", p->refused_queue_full);
        j_close(&j, '}');
    }
    j_close(&j, ']');
    if (q != NULL) {
        j_open(&j, "queue", '{');
        j_u64(&j, "generation", q->generation);
        j_u64(&j, "depth", q->depth);
        j_u64(&j, "capacity", q->capacity);
        j_u64(&j, "running", q->running);
        j_u64(&j, "tasks_free", q->tasks_free);
        j_u64(&j, "arena_size", q->arena_size);
        j_u64(&j, "arena_used", q->arena_used);
        j_u64(&j, "arena_free", q->arena_free);
        j_u64(&j, "submitted", q->submitted);
        j_u64(&j, "completed", q->completed);
        j_close(&j, '}');
    } else {
        j_null(&j, "queue");
    }
    j_u64(&j, "updates_depth", r->updates_depth);
    j_u64(&j, "updates_capacity", r->updates_capacity);
    j_open(&j, "handlers", '[');
    for (i = 0; i < r->n_handlers; i++) {
        const Crunch__V1__StatsReply__HandlerStats *h = r->handlers[i];

        j_open(&j, NULL, '{');
        j_str(&j, "name", h->name);
        j_u64(&j, "count", h->count);
        j_u64(&j, "errors", h->errors);
        j_u64(&j, "queue_p50_us", h->queue_p50_us);
        j_u64(&j, "queue_p99_us", h->queue_p99_us);
        j_u64(&j, "queue_max_us", h->queue_max_us);
        j_u64(&j, "run_p50_us", h->run_p50_us);
        j_u64(&j, "run_p99_us", h->run_p99_us);
        j_u64(&j, "run_max_us", h->run_max_us);
        j_close(&j, '}');
    }
    j_close(&j, ']');
    j_u64(&j, "acceptor_slot", r->acceptor_slot);
    j_i64(&j, "acceptor_pid", r->acceptor_pid);
    j_close(&j, '}');
    fputc('\n', stdout);
}

/* --- the stats table -------------------------------------------------------------- */

/* A duration for people: 850us, 12.3ms, 4.56s, 3m05s, 2h07m. */
static const char *fmt_us(char *buf, size_t len, uint64_t us)
{
    if (us < 1000)
        snprintf(buf, len, "%" PRIu64 "us", us);
    else if (us < 1000000)
        snprintf(buf, len, "%.1fms", (double)us / 1e3);
    else if (us < 60000000)
        snprintf(buf, len, "%.2fs", (double)us / 1e6);
    else if (us < UINT64_C(3600000000))
        snprintf(buf, len, "%" PRIu64 "m%02" PRIu64 "s", us / 60000000,
                 us / 1000000 % 60);
    else
        snprintf(buf, len, "%" PRIu64 "h%02" PRIu64 "m", us / UINT64_C(3600000000),
                 us / 60000000 % 60);
    return buf;
}

/* A size for people: 512 B, 1.5 KiB, 64.0 MiB. */
static const char *fmt_bytes(char *buf, size_t len, uint64_t b)
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    size_t u = 0;

    if (b < 1024) {
        snprintf(buf, len, "%" PRIu64 " B", b);
        return buf;
    }
    v /= 1024;
    while (v >= 1024 && u + 1 < cr_nelem(unit)) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

/* A wall-clock time, local, and how long ago: "2024-05-01 12:00:00 (3m05s ago)". */
static const char *fmt_when(char *buf, size_t len, uint64_t unix_us, const char *ago)
{
    struct timespec now;
    struct tm tm;
    time_t t = (time_t)(unix_us / 1000000);
    uint64_t now_us;
    char d[32], rel[32];

    if (unix_us == 0) {
        snprintf(buf, len, "-");
        return buf;
    }
    clock_gettime(CLOCK_REALTIME, &now);
    now_us = (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000;
    if (localtime_r(&t, &tm) == NULL ||
        strftime(d, sizeof(d), "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(d, sizeof(d), "@%" PRIu64, unix_us / 1000000);
    if (now_us >= unix_us)
        snprintf(buf, len, "%s (%s %s)", d, ago,
                 fmt_us(rel, sizeof(rel), now_us - unix_us));
    else
        snprintf(buf, len, "%s", d);
    return buf;
}

static void stats_table(const Crunch__V1__StatsReply *r)
{
    const Crunch__V1__StatsReply__Queue *q = r->queue;
    char a[64], b[64], c[64], d[64], e[64], f[64], w[96];
    size_t hw = 7; /* width of the handler column: "HANDLER" */
    size_t i;

    printf("generation    %" PRIu32 " (reloads: %" PRIu32 " ok, %" PRIu32 " failed)\n",
           r->generation, r->reloads_ok, r->reloads_failed);
    printf("started       %s\n", fmt_when(w, sizeof(w), r->start_time_unix_us, "up"));
    if (r->last_reload != NULL) {
        printf("last reload   %s, %s: ",
               fmt_when(w, sizeof(w), r->last_reload->time_unix_us, "ago"),
               r->last_reload->ok ? "ok" : "refused");
        put_one_line(stdout, r->last_reload->message ? r->last_reload->message : "");
        putchar('\n');
    } else {
        printf("last reload   none\n");
    }
    printf("answered by   acceptor %" PRIu32 ", pid %" PRId32 "\n", r->acceptor_slot,
           r->acceptor_pid);
    if (q != NULL) {
        printf("queue         %" PRIu32 " waiting of %" PRIu32 ", %" PRIu32
               " running, %" PRIu32 " free (generation %" PRIu32 ")\n",
               q->depth, q->capacity, q->running, q->tasks_free, q->generation);
        printf("tasks         %" PRIu64 " submitted, %" PRIu64 " completed\n",
               q->submitted, q->completed);
        printf("arena         %s used, %s free, of %s\n",
               fmt_bytes(a, sizeof(a), q->arena_used),
               fmt_bytes(b, sizeof(b), q->arena_free),
               fmt_bytes(c, sizeof(c), q->arena_size));
    } else {
        printf("queue         -\n");
    }
    printf("updates       %" PRIu64 " waiting of %" PRIu64 "\n", r->updates_depth,
           r->updates_capacity);

    printf("\n%-8s %4s %4s %8s  %-8s %10s  %s\n", "ROLE", "SLOT", "GEN", "PID", "STATE",
           "TASKS", "CURRENT");
    for (i = 0; i < r->n_processes; i++) {
        const Crunch__V1__StatsReply__Process *p = r->processes[i];

        printf("%-8s %4" PRIu32 " %4" PRIu32 " %8" PRId32 "  ", p->role ? p->role : "",
               p->slot, p->generation, p->pid);
        put_padded(stdout, p->state, 8);
        printf(" %10" PRIu64 "  ", p->tasks_done);
        if (p->current_handler != NULL && p->current_handler[0] != '\0') {
            printf("task %" PRIu64 " ", p->current_task_id);
            put_one_line(stdout, p->current_handler);
            printf(" for %s\n", fmt_us(a, sizeof(a), p->running_us));
        } else if (p->role != NULL && strcmp(p->role, "acceptor") == 0) {
            printf("%" PRIu32 " connections, %" PRIu32 " waiting for room, %" PRIu64
                   " refused (queue full)\n",
                   p->connections, p->waiting_for_room, p->refused_queue_full);
        } else {
            printf("-\n");
        }
    }

    for (i = 0; i < r->n_handlers; i++) {
        size_t n = r->handlers[i]->name ? strlen(r->handlers[i]->name) : 0;

        if (n > hw)
            hw = n;
    }
    printf("\n");
    put_padded(stdout, "HANDLER", hw);
    printf(" %10s %8s %9s %9s %9s %9s %9s %9s\n", "COUNT", "ERRORS", "QUEUE_P50",
           "QUEUE_P99", "QUEUE_MAX", "RUN_P50", "RUN_P99", "RUN_MAX");
    for (i = 0; i < r->n_handlers; i++) {
        const Crunch__V1__StatsReply__HandlerStats *h = r->handlers[i];
        put_padded(stdout, h->name, hw);
        printf(" %10" PRIu64 " %8" PRIu64, h->count, h->errors);
        if (h->count == 0) {
            /* No figures yet, rather than a row of zeros that look measured. */
            printf(" %9s %9s %9s %9s %9s %9s\n", "-", "-", "-", "-", "-", "-");
            continue;
        }
        printf(" %9s %9s %9s %9s %9s %9s\n", fmt_us(a, sizeof(a), h->queue_p50_us),
               fmt_us(b, sizeof(b), h->queue_p99_us),
               fmt_us(c, sizeof(c), h->queue_max_us), fmt_us(d, sizeof(d), h->run_p50_us),
               fmt_us(e, sizeof(e), h->run_p99_us), fmt_us(f, sizeof(f), h->run_max_us));
    }
}

void cctl_print_stats(const cctl_opts_t *o, const Crunch__V1__StatsReply *r)
{
    if (o->json)
        stats_json(r);
    else
        stats_table(r);
}
