/* fuzz-task.c: libFuzzer target for what an acceptor reads from clients and
 * what a worker then parses: protobuf bytes in.
 *
 * Input: one byte of settings, then the message bytes:
 *   bits 0-1  max_payload: 0, 16, 4096 or 4m bytes
 *   bit 2     the call has a deadline (Run, RunStream), bit 3: already passed
 *   bit 4     module handlers are published (the shared name table)
 *   bits 5-7  unused
 * The bytes are decoded as every request message an acceptor decodes
 * (cr_rpc_unpack's protobuf_c_message_unpack, the one-slice path): Task (Run,
 * RunStream and Submit messages), UpdatesRequest, StatsRequest, health's
 * HealthCheckRequest and reflection's ServerReflectionRequest. A Task then goes
 * through cr_task_check (task_check.c, what rpc_task_check runs) and, when
 * accepted, through the built-in handler's input parser the way a worker runs
 * it (handlers.c is included to reach its static parsers).
 *
 * Invariants (abort on violation):
 *   - a decoded Task's fields pack to bytes that decode to the same fields;
 *   - cr_task_check answers OK, NOT_FOUND, INVALID_ARGUMENT or
 *     DEADLINE_EXCEEDED; an error has a one-line printable message; OK gives
 *     the handler of that name and a deadline within both bounds;
 *   - prime/gcd/sleep accept exactly what a separate reference parser accepts
 *     (decimal u64s, whitespace rules of handlers.c) with the same values;
 *   - a handler's output or error message fits max_payload, and an error
 *     message is printable.
 * Work is bounded: prime runs only below 2^40 and gcd only when the smaller
 * number is below 10^6, sleep only for 0 ms (the parsers see every input). */
#include "../../src/handlers.c"

#include "fuzz.h"
#include "task_check.h"

#include "crunch/v1/crunch.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

#define PRIME_MAX (1ull << 40)
#define GCD_MAX 1000000ull

/* What the master publishes when modules add handlers (ctl.c's control page). */
static const char fuzz_names[][CR_HANDLER_NAME_SIZE] = {
    "echo", "prime", "gcd", "sleep", "sha256", "mod.reverse",
};
static const uint32_t fuzz_count = cr_nelem(fuzz_names);

/* --- reference parsers, written apart from handlers.c's ----------------------- */

static bool ref_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Digits [i, j) as a u64: false if none or it does not fit. */
static bool ref_number(const uint8_t *p, size_t i, size_t j, uint64_t *out)
{
    char buf[32];
    size_t k = i;

    if (j <= i)
        return false;
    while (k + 1 < j && p[k] == '0') /* leading zeros do not count */
        k++;
    if (j - k > 20)
        return false;
    memcpy(buf, p + k, j - k);
    buf[j - k] = '\0';
    /* 20 digits may exceed 2^64-1: compare as text with its decimal form. */
    if (j - k == 20 && strcmp(buf, "18446744073709551615") > 0)
        return false;
    *out = strtoull(buf, NULL, 10);
    return true;
}

/* Split the trimmed payload at runs of the given separators into digit
 * tokens; true if it is exactly `want` tokens of digits. */
static bool ref_parse(const uint8_t *p, size_t n, unsigned want, uint64_t *v)
{
    size_t i = 0, end = n;
    unsigned got = 0;

    while (i < end && ref_space(p[i]))
        i++;
    while (end > i && ref_space(p[end - 1]))
        end--;
    if (i == end)
        return false;
    while (i < end) {
        size_t j = i;
        while (j < end && p[j] >= '0' && p[j] <= '9')
            j++;
        if (got == want || !ref_number(p, i, j, &v[got]))
            return false;
        got++;
        if (j == end)
            break;
        /* between numbers: only spaces and tabs */
        i = j;
        while (i < end && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == j)
            return false;
    }
    return got == want;
}

/* --- checks ------------------------------------------------------------------- */

static void check_line(const char *what, const uint8_t *s, size_t n)
{
    FUZZ_CHECK(n > 0, "%s: empty message", what);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(s[i] >= 0x20 && s[i] < 0x7f, "%s: byte 0x%02x at %zu in \"%.*s\"", what,
                   s[i], i, (int)n, (const char *)s);
}

/* The fields crunchd reads survive encoding (Results echo id; a client may
 * resend a Task). Only those: protobuf-c keeps unknown fields as read, even
 * an invalid field number 0 ("\x80\x00"), and then refuses to decode its own
 * encoding of them (t/fuzz/regress/task/protobuf-c-field-0); crunchd never
 * re-encodes a Task it received. */
static void check_roundtrip(const Crunch__V1__Task *orig)
{
    Crunch__V1__Task copy = CRUNCH__V1__TASK__INIT, *t = &copy, *u;
    size_t n;
    uint8_t *buf;

    copy.id = orig->id;
    copy.handler = orig->handler;
    copy.payload = orig->payload;
    copy.timeout_ms = orig->timeout_ms;
    n = protobuf_c_message_get_packed_size(&t->base);
    buf = malloc(n + 1);
    FUZZ_CHECK(buf != NULL, "malloc");
    FUZZ_CHECK(protobuf_c_message_pack(&t->base, buf) == n, "packed size");
    u = crunch__v1__task__unpack(NULL, n, buf);
    FUZZ_CHECK(u != NULL, "a packed Task does not decode");
    FUZZ_CHECK(u->id == t->id && u->timeout_ms == t->timeout_ms, "id or timeout_ms changed");
    FUZZ_CHECK(strcmp(u->handler ? u->handler : "", t->handler ? t->handler : "") == 0,
               "handler changed");
    FUZZ_CHECK(u->payload.len == t->payload.len &&
                   (t->payload.len == 0 ||
                    memcmp(u->payload.data, t->payload.data, t->payload.len) == 0),
               "payload changed");
    crunch__v1__task__free_unpacked(u, NULL);
    free(buf);
}

/* Run handler h as a worker does (cr_worker_run: out.max = max_payload),
 * when its cost is bounded; check what it wrote. */
static void run_handler(uint32_t h, const uint8_t *in, size_t len, uint64_t max_payload)
{
    cr_buf_t out = {.max = max_payload};
    uint64_t v[2], ref[2] = {0, 0};
    bool ok, ref_ok, run = true;
    int code;

    switch (h) {
    case 1: /* prime */
        ok = parse_one_u64(in, len, &v[0]);
        ref_ok = ref_parse(in, len, 1, ref);
        FUZZ_CHECK(ok == ref_ok && (!ok || v[0] == ref[0]),
                   "prime: parser %d (%" PRIu64 "), reference %d (%" PRIu64 ")", ok, v[0],
                   ref_ok, ref[0]);
        run = !ok || v[0] < PRIME_MAX;
        break;
    case 2: /* gcd */
        ok = parse_two_u64(in, len, &v[0], &v[1]);
        ref_ok = ref_parse(in, len, 2, ref);
        FUZZ_CHECK(ok == ref_ok && (!ok || (v[0] == ref[0] && v[1] == ref[1])),
                   "gcd: parser %d (%" PRIu64 " %" PRIu64 "), reference %d", ok, v[0], v[1],
                   ref_ok);
        run = !ok || (v[0] < v[1] ? v[0] : v[1]) < GCD_MAX;
        break;
    case 3: /* sleep */
        ok = parse_one_u64(in, len, &v[0]);
        ref_ok = ref_parse(in, len, 1, ref);
        FUZZ_CHECK(ok == ref_ok && (!ok || v[0] == ref[0]), "sleep: parser %d, reference %d",
                   ok, ref_ok);
        run = !ok || v[0] == 0 || v[0] > SLEEP_MAX_MS;
        break;
    default:
        break;
    }
    if (!run)
        return;
    code = cr_handlers[h].run(in, len, &out);
    FUZZ_CHECK(code == CR_STATUS_OK || code == CR_STATUS_INVALID_ARGUMENT ||
                   code == CR_STATUS_RESOURCE_EXHAUSTED,
               "%s: status %d", cr_handlers[h].name, code);
    FUZZ_CHECK(out.data == NULL || out.data[out.len] == '\0', "%s: output not terminated",
               cr_handlers[h].name);
    if (code == CR_STATUS_OK) {
        FUZZ_CHECK(max_payload == 0 || out.len <= max_payload, "%s: output %zu > max %" PRIu64,
                   cr_handlers[h].name, out.len, max_payload);
        if (h == 0)
            FUZZ_CHECK(out.len == len && (len == 0 || memcmp(out.data, in, len) == 0),
                       "echo: output differs from the payload");
    } else if (code == CR_STATUS_INVALID_ARGUMENT) {
        FUZZ_CHECK(h != 0, "echo refused its input");
        /* cut to max_payload; a message that does not fit at all may be empty */
        FUZZ_CHECK(out.len <= max_payload || max_payload == 0, "%s: error of %zu bytes",
                   cr_handlers[h].name, out.len);
        if (max_payload >= 64)
            check_line(cr_handlers[h].name, out.data, out.len);
    }
    cr_buf_free(&out);
}

static void fuzz_task(const Crunch__V1__Task *t, uint8_t flags)
{
    static const uint64_t maxes[4] = {0, 16, 4096, 4u << 20};
    cr_task_limits_t lim = {.max_payload = maxes[flags & 3],
                            /* any instant: boot time is not zero everywhere */
                            .now_ns = t->id & 0x3fffffffffffffffull,
                            .call_deadline = (flags & 4) != 0,
                            .call_left_ns = (flags & 8) ? -1 : 2000000000};
    const char *name = t->handler ? t->handler : "";
    char msg[512];
    uint32_t h = 12345;
    uint64_t dl = 12345;
    int code;

    check_roundtrip(t);
    msg[0] = '\0';
    code = cr_task_check(&lim, name, t->payload.len, t->timeout_ms, &h, &dl, msg, sizeof(msg));
    switch (code) {
    case CR_STATUS_OK:
        FUZZ_CHECK(h < cr_handler_total() && strcmp(cr_handler_name(h), name) == 0,
                   "handler %u for \"%s\"", h, name);
        FUZZ_CHECK(t->payload.len <= lim.max_payload, "payload over max_payload accepted");
        FUZZ_CHECK(!(lim.call_deadline && lim.call_left_ns <= 0), "passed deadline accepted");
        if (!lim.call_deadline && t->timeout_ms == 0) {
            FUZZ_CHECK(dl == 0, "deadline %" PRIu64 " without a bound", dl);
        } else {
            FUZZ_CHECK(dl > lim.now_ns, "deadline %" PRIu64 " not after now", dl);
            if (t->timeout_ms)
                FUZZ_CHECK(dl <= lim.now_ns + (uint64_t)t->timeout_ms * 1000000u,
                           "deadline beyond timeout_ms");
            if (lim.call_deadline)
                FUZZ_CHECK(dl <= lim.now_ns + (uint64_t)lim.call_left_ns,
                           "deadline beyond the call's");
        }
        if (h < cr_nhandlers)
            run_handler(h, t->payload.data, t->payload.len, lim.max_payload);
        break;
    case CR_STATUS_NOT_FOUND:
        FUZZ_CHECK(cr_handler_find(name, strlen(name)) == CR_NONE, "found but NOT_FOUND");
        check_line("NOT_FOUND", (const uint8_t *)msg, strlen(msg));
        break;
    case CR_STATUS_INVALID_ARGUMENT:
        FUZZ_CHECK(t->payload.len > lim.max_payload, "INVALID_ARGUMENT: %s", msg);
        check_line("INVALID_ARGUMENT", (const uint8_t *)msg, strlen(msg));
        break;
    case CR_STATUS_DEADLINE_EXCEEDED:
        FUZZ_CHECK(lim.call_deadline && lim.call_left_ns <= 0, "DEADLINE_EXCEEDED: %s", msg);
        check_line("DEADLINE_EXCEEDED", (const uint8_t *)msg, strlen(msg));
        break;
    default:
        FUZZ_CHECK(0, "cr_task_check returned %d (%s)", code, msg);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const ProtobufCMessageDescriptor *others[] = {
        &crunch__v1__updates_request__descriptor,
        &crunch__v1__stats_request__descriptor,
        &grpc__health__v1__health_check_request__descriptor,
        &grpc__reflection__v1alpha__server_reflection_request__descriptor,
    };
    Crunch__V1__Task *t;
    uint8_t flags;

    if (size < 1)
        return 0;
    flags = data[0];
    data++;
    size--;

    if (flags & 16) {
        cr_handler_names = fuzz_names;
        cr_handler_count = &fuzz_count;
    } else {
        cr_handler_names = NULL;
        cr_handler_count = NULL;
    }

    t = crunch__v1__task__unpack(NULL, size, data);
    if (t != NULL) {
        fuzz_task(t, flags);
        crunch__v1__task__free_unpacked(t, NULL);
    }
    for (size_t i = 0; i < cr_nelem(others); i++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(others[i], NULL, size, data);
        if (m != NULL)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    return 0;
}
