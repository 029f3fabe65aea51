/* handlers.c: output buffers, the handler table and the built-in handlers. */
#include "handlers.h"
#include "shm.h"

/* How much of a bad payload an error message quotes. */
#define QUOTE_MAX    32
#define SLEEP_MAX_MS 3600000u

/* --- cr_buf_t ----------------------------------------------------------------
 * Invariant: when data != NULL, cap > len and data[len] == '\0', so output is
 * always a C string as well (handy for tests and logs); the NUL is not counted
 * in len and not limited by max. max == 0 means no limit (a zeroed buffer is
 * usable as is). */

static int buf_reserve(cr_buf_t *b, size_t n)
{
    size_t need, cap;
    uint8_t *p;

    if (b->max != 0 && (b->len > b->max || n > b->max - b->len))
        return CR_ERROR;
    if (n > SIZE_MAX - 1 - b->len)
        return CR_ERROR;
    need = b->len + n + 1;
    if (b->data != NULL && need <= b->cap)
        return CR_OK;

    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    /* Never hold much more than the limit allows to be used. */
    if (b->max != 0 && cap > b->max + 1 && need <= b->max + 1)
        cap = b->max + 1;

    p = realloc(b->data, cap);
    if (p == NULL)
        return CR_ERROR;
    if (b->data == NULL)
        p[0] = '\0';
    b->data = p;
    b->cap = cap;
    return CR_OK;
}

int cr_buf_append(cr_buf_t *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) != CR_OK)
        return CR_ERROR;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CR_OK;
}

int cr_buf_vprintf(cr_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || buf_reserve(b, (size_t)n) != CR_OK)
        return CR_ERROR;
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return CR_OK;
}

int cr_buf_printf(cr_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = cr_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void cr_buf_reset(cr_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void cr_buf_free(cr_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

/* --- input parsing ---------------------------------------------------------- */

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Parse one unsigned decimal at in[*pos] (no sign, at least one digit) and
 * advance *pos past it. Returns false on no digit or overflow of u64. */
static bool parse_u64(const uint8_t *in, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = *pos;

    if (i >= len || in[i] < '0' || in[i] > '9')
        return false;
    for (; i < len && in[i] >= '0' && in[i] <= '9'; i++) {
        unsigned d = in[i] - '0';
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *pos = i;
    *out = v;
    return true;
}

static void skip_space(const uint8_t *in, size_t len, size_t *pos)
{
    while (*pos < len && is_space(in[*pos]))
        (*pos)++;
}

/* The whole payload is one u64, optionally surrounded by whitespace. */
static bool parse_one_u64(const uint8_t *in, size_t len, uint64_t *out)
{
    size_t pos = 0;

    skip_space(in, len, &pos);
    if (!parse_u64(in, len, &pos, out))
        return false;
    skip_space(in, len, &pos);
    return pos == len;
}

/* Write a handler's error message into out (replacing any output), ending
 * with `got "<at most QUOTE_MAX bytes of the input, escaped>"`. If out->max is
 * too small for the whole message, as much as fits is kept. */
static int handler_error(cr_buf_t *out, int code, const uint8_t *in, size_t len,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int handler_error(cr_buf_t *out, int code, const uint8_t *in, size_t len,
                         const char *fmt, ...)
{
    char msg[512];
    size_t n, q = len < QUOTE_MAX ? len : QUOTE_MAX;
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    n = r < 0 ? 0 : ((size_t)r < sizeof(msg) ? (size_t)r : sizeof(msg) - 1);

    n += (size_t)snprintf(msg + n, sizeof(msg) - n, ", got \"");
    for (size_t i = 0; i < q; i++) {
        uint8_t c = in[i];
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            msg[n++] = (char)c;
        else
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\\x%02x", c);
    }
    if (q < len)
        snprintf(msg + n, sizeof(msg) - n, "\" (first %u of %zu bytes)", QUOTE_MAX, len);
    else
        snprintf(msg + n, sizeof(msg) - n, "\"");

    cr_buf_reset(out);
    n = strlen(msg);
    if (out->max != 0 && n > out->max)
        n = out->max;
    (void)cr_buf_append(out, msg, n);
    return code;
}

/* Output that does not fit max (max_payload) is refused, not cut. */
static int handler_output(cr_buf_t *out, const char *name, const void *p, size_t n)
{
    cr_buf_reset(out);
    if (cr_buf_append(out, p, n) == CR_OK)
        return CR_STATUS_OK;
    cr_buf_reset(out);
    (void)cr_buf_printf(out,
                        "%s: the output of %zu bytes is larger than max_payload "
                        "(%zu bytes)",
                        name, n, out->max);
    return CR_STATUS_RESOURCE_EXHAUSTED;
}

/* --- the handlers ----------------------------------------------------------- */

static int handler_echo(const uint8_t *in, size_t len, cr_buf_t *out)
{
    return handler_output(out, "echo", in, len);
}

/* Plain trial division on purpose: this is the CPU benchmark workload, so it
 * must cost what it costs everywhere (no sieve, no Miller-Rabin). */
static bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    if (n == 2)
        return true;
    if (n % 2 == 0)
        return false;
    /* i <= n / i rather than i * i <= n, which overflows near 2^64. */
    for (uint64_t i = 3; i <= n / i; i += 2) {
        if (n % i == 0)
            return false;
    }
    return true;
}

static int handler_prime(const uint8_t *in, size_t len, cr_buf_t *out)
{
    uint64_t n;

    if (!parse_one_u64(in, len, &n))
        return handler_error(
            out, CR_STATUS_INVALID_ARGUMENT, in, len,
            "prime: payload must be a decimal integer from 0 to %" PRIu64, UINT64_MAX);
    return is_prime(n) ? handler_output(out, "prime", "true", 4)
                       : handler_output(out, "prime", "false", 5);
}

/* The deliberately slow count-down loop (a CPU workload, like prime). */
static uint64_t slow_gcd(uint64_t a, uint64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    for (uint64_t i = a < b ? a : b; i > 1; i--) {
        if (a % i == 0 && b % i == 0)
            return i;
    }
    return 1;
}

/* "A B": two u64 separated by spaces or tabs, optionally surrounded by
 * whitespace. */
static bool parse_two_u64(const uint8_t *in, size_t len, uint64_t *a, uint64_t *b)
{
    size_t pos = 0, sep;

    skip_space(in, len, &pos);
    if (!parse_u64(in, len, &pos, a))
        return false;
    sep = pos;
    while (pos < len && (in[pos] == ' ' || in[pos] == '\t'))
        pos++;
    if (pos == sep || !parse_u64(in, len, &pos, b))
        return false;
    skip_space(in, len, &pos);
    return pos == len;
}

static int handler_gcd(const uint8_t *in, size_t len, cr_buf_t *out)
{
    char text[24];
    uint64_t a, b;
    int n;

    if (!parse_two_u64(in, len, &a, &b))
        return handler_error(
            out, CR_STATUS_INVALID_ARGUMENT, in, len,
            "gcd: payload must be two decimal integers from 0 to %" PRIu64
            " separated by spaces, like \"12 18\"",
            UINT64_MAX);
    n = snprintf(text, sizeof(text), "%" PRIu64, slow_gcd(a, b));
    return handler_output(out, "gcd", text, (size_t)n);
}

static int handler_sleep(const uint8_t *in, size_t len, cr_buf_t *out)
{
    struct timespec ts, rem;
    uint64_t ms;

    if (!parse_one_u64(in, len, &ms) || ms > SLEEP_MAX_MS)
        return handler_error(
            out, CR_STATUS_INVALID_ARGUMENT, in, len,
            "sleep: payload must be a number of milliseconds from 0 to %u", SLEEP_MAX_MS);

    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    /* A signal the worker handles (and survives) must not shorten the sleep. */
    while (nanosleep(&ts, &rem) == -1 && errno == EINTR)
        ts = rem;

    cr_buf_reset(out);
    return CR_STATUS_OK;
}

/* --- the table -------------------------------------------------------------- */

/* The index is what task descriptors carry: append, never reorder. */

const cr_handler_t cr_handlers[] = {
    {"echo", handler_echo},
    {"prime", handler_prime},
    {"gcd", handler_gcd},
    {"sleep", handler_sleep},
};

const unsigned cr_nhandlers = cr_nelem(cr_handlers);

/* The table every process shares (the control page's; ctl.c sets these
 * before the first fork). NULL in unit tests and tools: built-ins only. */
const char (*cr_handler_names)[CR_HANDLER_NAME_SIZE];
const uint32_t *cr_handler_count;

unsigned cr_handler_total(void)
{
    if (cr_handler_names == NULL)
        return cr_nhandlers;
    /* Pairs with the release store of the master appending a name. */
    return __atomic_load_n(cr_handler_count, __ATOMIC_ACQUIRE);
}

const char *cr_handler_name(uint32_t h)
{
    if (cr_handler_names == NULL)
        return h < cr_nhandlers ? cr_handlers[h].name : "?";
    return h < cr_handler_total() ? cr_handler_names[h] : "?";
}

/* A linear scan: at most CR_MAX_HANDLERS short names, compared by length
 * first; cheaper than the protobuf decoding around it. */
uint32_t cr_handler_find(const char *name, size_t len)
{
    unsigned n = cr_handler_total();

    if (cr_handler_names != NULL) {
        if (len >= CR_HANDLER_NAME_SIZE)
            return CR_NONE;
        for (unsigned i = 0; i < n; i++) {
            const char *x = cr_handler_names[i];
            if (x[len] == '\0' && memcmp(x, name, len) == 0)
                return i;
        }
        return CR_NONE;
    }
    for (unsigned i = 0; i < n; i++) {
        if (strlen(cr_handlers[i].name) == len &&
            memcmp(cr_handlers[i].name, name, len) == 0)
            return i;
    }
    return CR_NONE;
}

void cr_handler_list(char *buf, size_t len)
{
    size_t n = 0;
    unsigned total = cr_handler_total();

    if (len == 0)
        return;
    buf[0] = '\0';
    for (unsigned i = 0; i < total && n < len; i++) {
        int r = snprintf(buf + n, len - n, "%s%s", i ? ", " : "", cr_handler_name(i));
        if (r < 0)
            break;
        n += (size_t)r;
    }
}
