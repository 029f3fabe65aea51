/* crunch-bench.c: crunchd's load generator, on the gRPC C core client API.
 *
 * THREADS worker threads, each with its own NEXT completion queue, its share
 * of the CONNECTIONS (one channel each, with a local subchannel pool so that
 * every channel is its own TCP connection) and its share of the CONCURRENCY
 * (requests in flight). Closed loop: each completion starts the next request
 * at once; with --rate the requests are paced instead: each thread sends
 * R / THREADS per second on its own schedule, catching up when it fell behind
 * (a send is late when every slot was busy at its time: that is reported).
 * Latency is always from the actual send to the completion (gRPC's timers
 * wake a thread up to about a millisecond late, which would otherwise be
 * counted as server latency).
 *
 * Unary mode: every in-flight slot is one crunch.v1.Crunch/Run call at a time
 * (a registered call, one batch of six ops). Stream mode (--stream): STREAMS
 * RunStream calls (default one per connection), each keeping its share of the
 * CONCURRENCY as tasks outstanding: a task is sent when a result comes back;
 * the latency of a task is from its send to its result, matched by Task.id.
 *
 * Requests are made without copying the payload: the Task is packed once per
 * thread without its id (handler, payload, timeout) into a refcounted slice,
 * and each request is a byte buffer of two slices, a tiny one holding the id
 * field and that shared one (protobuf fields may come in any order). Results
 * are read with a small protobuf wire reader (no allocation).
 *
 * Latencies go into one log-linear histogram per thread (bench_hist.h),
 * merged at the end. The main thread only waits for signals, prints the
 * progress line and the summary. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "bench_hist.h"
#include "client.h"
#include "crunch/v1/crunch.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define PROG          "crunch-bench"
#define RUN_METHOD    "/crunch.v1.Crunch/Run"
#define STREAM_METHOD "/crunch.v1.Crunch/RunStream"

#define NS_PER_US 1000ull
#define NS_PER_MS 1000000ull
#define NS_PER_S  1000000000ull
#define TICK_NS   (100 * NS_PER_MS) /* longest wait on a completion queue */
#define LATE_NS   (10 * NS_PER_MS)  /* --rate: a send this far behind schedule is late */

/* Stream task ids: (sequence << ENT_BITS) | entry index in the stream's window. */
#define ENT_BITS   20
#define ENT_MASK   ((UINT64_C(1) << ENT_BITS) - 1)
#define MAX_WINDOW (1u << ENT_BITS)

/* Exit statuses (crunch-bench(1)). */
#define EXIT_ALL_OK      0
#define EXIT_SOME_FAILED 1
#define EXIT_USAGE       2
#define EXIT_INTERRUPTED 130

/* ------------------------------------------------------------------------ */
/* Options */

static struct {
    const char *addr;
    unsigned connections, concurrency, threads, streams;
    double duration; /* seconds; 0 with -N */
    uint64_t total;  /* -N; 0 with -d */
    double rate;     /* requests (tasks) per second in all; 0: closed loop */
    bool stream;
    const char *handler;
    char *payload;
    size_t payload_len;
    double warmup;
    unsigned timeout_ms;
    bool json, progress, verify, verbose;
} opt;

/* ------------------------------------------------------------------------ */
/* Outcomes and statistics */

/* Counted per status code: the 17 gRPC codes, then these two. */
#define CODE_MISMATCH 17 /* status OK, but the output is not the payload */
#define CODE_OTHER    18 /* a code number outside 0..16 */
#define NCODES        19

/* "NOT_FOUND" for 5; "MISMATCH", "OTHER" for the two of ours. */
static const char *code_name(int c)
{
    if (c == CODE_MISMATCH)
        return "MISMATCH";
    if (c == CODE_OTHER)
        return "OTHER";
    return cr_client_code_name(c);
}

typedef struct {
    uint64_t sent;            /* measured requests started */
    uint64_t warmup;          /* requests started during the warm-up */
    uint64_t ok;              /* status OK (and the output checked, with verify) */
    uint64_t errors;          /* any other outcome but cancelled (mismatches too) */
    uint64_t mismatches;      /* of which: OK, but a wrong output */
    uint64_t cancelled;       /* cut short by SIGINT */
    uint64_t unexpected;      /* stream results with an id we did not send */
    uint64_t stream_failures; /* streams that ended with an error status */
    uint64_t codes[NCODES];
    char *first_error[NCODES]; /* the first message seen for each code */
    uint64_t last_done_ns;     /* last measured completion */
    uint64_t last_send_ns;     /* last measured send */
    uint64_t late;             /* --rate: sends more than LATE_NS behind schedule */
    uint64_t max_lag_ns;       /* --rate: the most a send was behind schedule */
    cb_hist_t hist;            /* latency of OK requests, µs */
} stats_t;

/* ------------------------------------------------------------------------ */
/* Connections, calls, workers */

typedef struct {
    grpc_channel *ch;
    void *run_h, *stream_h; /* registered methods */
} conn_t;

enum { TAG_UNARY, TAG_S_STATUS, TAG_S_RECV, TAG_S_SEND, TAG_S_CLOSE };

typedef struct {
    int kind;
    void *owner;
} tag_t;

struct worker;

typedef struct slot {
    tag_t tag;
    struct worker *w;
    conn_t *conn;
    grpc_call *call;
    grpc_byte_buffer *send, *recv;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
    const char *err_str;
    uint64_t sent_ns;
    bool measured;
    struct slot *next_free;
} slot_t;

typedef struct {
    uint64_t id; /* 0: free */
    uint64_t sent_ns;
    bool measured;
} ent_t;

typedef struct {
    tag_t t_status, t_recv, t_send, t_close;
    struct worker *w;
    conn_t *conn;
    grpc_call *call;
    unsigned window;     /* tasks kept outstanding */
    ent_t *ents;         /* [window] */
    unsigned *free_ents; /* stack of free entry indexes */
    unsigned nfree;
    unsigned outstanding; /* tasks sent, result not yet seen */
    unsigned pending;     /* our batches not yet completed */
    uint64_t seq;         /* task sequence number (never reset) */
    bool active, sending, close_sent, status_done, broken, watchdog_fired;
    bool dead; /* could not even start: never again */
    grpc_byte_buffer *send_bb, *recv_bb;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
    const char *err_str;
    uint64_t last_progress_ns;
} stream_t;

typedef struct worker {
    unsigned idx;
    pthread_t tid;
    grpc_completion_queue *cq;
    slot_t *slots;
    unsigned nslots;
    slot_t *free_slots;
    stream_t *streams;
    unsigned nstreams;
    unsigned inflight;                  /* unary calls or active streams */
    grpc_slice rest;                    /* the packed Task without its id */
    uint64_t seq;                       /* unary ids */
    uint64_t interval_ns, next_send_ns; /* --rate */
    bool over;                          /* -N: the total was reached */
    bool cancelled_all;                 /* SIGINT seen: every call cancelled */
    uint64_t next_watchdog_ns;
    stats_t st;
    /* Published for the progress line (single writer, relaxed). */
    _Atomic uint64_t p_done, p_ok, p_err, p_lat_us, p_inflight;
} worker_t;

/* ------------------------------------------------------------------------ */
/* Shared run state */

static uint64_t g_t0;             /* the load started (ns, CLOCK_MONOTONIC) */
static uint64_t g_measure_ns;     /* measured phase: requests sent from here */
static uint64_t g_end_ns;         /* -d: no request is sent from here on */
static _Atomic uint64_t g_issued; /* -N: measured requests handed out */
static atomic_int g_stop;         /* SIGINT/SIGTERM: cancel everything */
static atomic_uint g_running;     /* workers still running */
static pthread_t g_main_thread;
static bool g_verify_output; /* opt.verify and the handler is echo */

static worker_t *workers;
static unsigned nworkers;
static conn_t *conns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static gpr_timespec deadline_in_ns(uint64_t ns)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_nanos((int64_t)ns, GPR_TIMESPAN));
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_USAGE);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory");
    return p;
}

/* ------------------------------------------------------------------------ */
/* Protobuf wire helpers */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static bool get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t r = 0;
    for (unsigned sh = 0; p < end && sh < 64; sh += 7) {
        uint8_t b = *p++;
        r |= (uint64_t)(b & 0x7f) << sh;
        if (!(b & 0x80)) {
            *v = r;
            *pp = p;
            return true;
        }
    }
    return false;
}

/* A Result, read in place. */
typedef struct {
    uint64_t id;
    int32_t code;
    const uint8_t *out;
    size_t out_len;
    const char *err;
    size_t err_len;
} result_t;

static bool parse_result(const uint8_t *p, size_t n, result_t *r)
{
    const uint8_t *end = p + n;
    memset(r, 0, sizeof(*r));
    r->out = (const uint8_t *)"";
    r->err = "";
    while (p < end) {
        uint64_t key, v;
        if (!get_varint(&p, end, &key))
            return false;
        uint64_t field = key >> 3;
        switch (key & 7) {
        case 0:
            if (!get_varint(&p, end, &v))
                return false;
            if (field == 1)
                r->id = v;
            else if (field == 2)
                r->code = (int32_t)(uint32_t)v;
            break;
        case 2:
            if (!get_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return false;
            if (field == 3) {
                r->out = p;
                r->out_len = (size_t)v;
            } else if (field == 4) {
                r->err = (const char *)p;
                r->err_len = (size_t)v;
            }
            p += v;
            break;
        case 1:
            if (end - p < 8)
                return false;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return false;
            p += 4;
            break;
        default:
            return false;
        }
    }
    return true;
}

/* The bytes of a received message, contiguous: in place when it came as one
 * slice, else copied into *hold (unref it afterwards). NULL on failure. */
static const uint8_t *bb_flat(grpc_byte_buffer *bb, grpc_slice *hold, size_t *len)
{
    *hold = grpc_empty_slice();
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        grpc_slice *s = &bb->data.raw.slice_buffer.slices[0];
        *len = GRPC_SLICE_LENGTH(*s);
        return GRPC_SLICE_START_PTR(*s);
    }
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    *hold = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    *len = GRPC_SLICE_LENGTH(*hold);
    return GRPC_SLICE_START_PTR(*hold);
}

/* A request: the id field, then the shared rest of the Task (no copy). */
static grpc_byte_buffer *task_bb(worker_t *w, uint64_t id)
{
    uint8_t buf[16];
    size_t n = 0;
    buf[n++] = 0x08; /* field 1 (id), varint */
    n += put_varint(buf + n, id);
    grpc_slice s[2];
    s[0] = grpc_slice_from_copied_buffer((const char *)buf, n);
    s[1] = w->rest;
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(s, 2);
    grpc_slice_unref(s[0]);
    return bb;
}

/* ------------------------------------------------------------------------ */
/* Accounting (worker thread) */

enum { OUT_OK, OUT_ERROR, OUT_MISMATCH, OUT_CANCELLED };

/* gRPC status number -> codes[] index. */
static int code_index(int code)
{
    return code >= 0 && code <= 16 ? code : CODE_OTHER;
}

/* Keep the first message seen for a codes[] index. */
static void note_message(stats_t *st, int idx, const char *msg, size_t len)
{
    if (!st->first_error[idx] && len) {
        char *m = malloc(len + 1);
        if (m) {
            memcpy(m, msg, len);
            m[len] = '\0';
            st->first_error[idx] = m;
        }
    }
}

static void note_error(stats_t *st, int idx, const char *msg, size_t len)
{
    st->codes[idx]++;
    note_message(st, idx, msg, len);
}

static void account(worker_t *w, bool measured, uint64_t sent_ns, uint64_t now, int out,
                    int code, const char *msg, size_t len)
{
    stats_t *st = &w->st;
    uint64_t lat_us = now > sent_ns ? (now - sent_ns + NS_PER_US / 2) / NS_PER_US : 0;

    atomic_store_explicit(&w->p_done,
                          atomic_load_explicit(&w->p_done, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (!measured)
        return;
    st->last_done_ns = now;
    switch (out) {
    case OUT_OK:
        st->ok++;
        st->codes[0]++;
        cb_hist_record(&st->hist, lat_us);
        atomic_store_explicit(&w->p_ok, st->ok, memory_order_relaxed);
        atomic_store_explicit(&w->p_lat_us,
                              atomic_load_explicit(&w->p_lat_us, memory_order_relaxed) +
                                  lat_us,
                              memory_order_relaxed);
        break;
    case OUT_MISMATCH:
        st->mismatches++;
        st->errors++;
        note_error(st, CODE_MISMATCH, msg, len);
        atomic_store_explicit(&w->p_err, st->errors, memory_order_relaxed);
        break;
    case OUT_ERROR:
        st->errors++;
        note_error(st, code_index(code), msg, len);
        atomic_store_explicit(&w->p_err, st->errors, memory_order_relaxed);
        break;
    default:
        st->cancelled++;
        break;
    }
}

/* Judge a Result of status OK (unary: the message; stream: one task). */
static int judge(const result_t *r, const char **msg, size_t *len, int *code)
{
    *code = r->code;
    if (r->code != 0) {
        *msg = r->err;
        *len = r->err_len;
        return OUT_ERROR;
    }
    if (g_verify_output &&
        (r->out_len != opt.payload_len || memcmp(r->out, opt.payload, opt.payload_len))) {
        static const char m[] = "the echo output differs from the payload";
        *msg = m;
        *len = sizeof(m) - 1;
        return OUT_MISMATCH;
    }
    return OUT_OK;
}

/* ------------------------------------------------------------------------ */
/* Pacing: may this worker start one more request? */

enum { CREDIT_YES, CREDIT_LATER, CREDIT_OVER };

static bool issuing_over(worker_t *w, uint64_t now)
{
    if (w->over || atomic_load_explicit(&g_stop, memory_order_relaxed) || now >= g_end_ns)
        return true;
    if (opt.total && now >= g_measure_ns &&
        atomic_load_explicit(&g_issued, memory_order_relaxed) >= opt.total)
        return (w->over = true);
    return false;
}

static int take_credit(worker_t *w, uint64_t now, uint64_t *t_sent, bool *measured)
{
    if (issuing_over(w, now))
        return CREDIT_OVER;
    uint64_t lag = 0;
    if (w->interval_ns) {
        if (w->next_send_ns > now)
            return CREDIT_LATER;
        if (w->next_send_ns >= g_end_ns)
            return CREDIT_OVER;
        lag = now - w->next_send_ns;
    }
    bool m = now >= g_measure_ns;
    if (m && opt.total) {
        if (atomic_fetch_add_explicit(&g_issued, 1, memory_order_relaxed) >= opt.total) {
            w->over = true;
            return CREDIT_OVER;
        }
    }
    if (w->interval_ns)
        w->next_send_ns += w->interval_ns;
    *t_sent = now;
    *measured = m;
    if (m) {
        w->st.sent++;
        w->st.last_send_ns = now;
        if (lag > LATE_NS)
            w->st.late++;
        if (lag > w->st.max_lag_ns)
            w->st.max_lag_ns = lag;
    } else {
        w->st.warmup++;
    }
    return CREDIT_YES;
}

/* ------------------------------------------------------------------------ */
/* Unary calls */

static void unary_start(worker_t *w, slot_t *s, uint64_t t_sent, bool measured)
{
    s->sent_ns = t_sent;
    s->measured = measured;
    s->call = grpc_channel_create_registered_call(
        s->conn->ch, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq, s->conn->run_h,
        deadline_in_ns((uint64_t)opt.timeout_ms * NS_PER_MS), NULL);
    s->send = task_bb(w, ++w->seq | ((uint64_t)w->idx << 48));
    s->recv = NULL;
    s->details = grpc_empty_slice();
    s->err_str = NULL;
    s->status = GRPC_STATUS_UNKNOWN;
    grpc_metadata_array_init(&s->imd);
    grpc_metadata_array_init(&s->tmd);

    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->tmd;
    ops[5].data.recv_status_on_client.status = &s->status;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    ops[5].data.recv_status_on_client.error_string = &s->err_str;
    grpc_call_error rc = grpc_call_start_batch(s->call, ops, 6, &s->tag, NULL);
    w->inflight++;
    if (rc != GRPC_CALL_OK) {
        /* Never expected; account it as a failed call, like a completion. */
        char m[64];
        int n = snprintf(m, sizeof(m), "grpc_call_start_batch: error %d", (int)rc);
        grpc_byte_buffer_destroy(s->send);
        grpc_metadata_array_destroy(&s->imd);
        grpc_metadata_array_destroy(&s->tmd);
        grpc_call_unref(s->call);
        s->call = NULL;
        account(w, measured, t_sent, now_ns(), OUT_ERROR, GRPC_STATUS_INTERNAL, m,
                (size_t)n);
        w->inflight--;
        s->next_free = w->free_slots;
        w->free_slots = s;
    }
}

static void unary_done(worker_t *w, slot_t *s, uint64_t now)
{
    int out, code = (int)s->status;
    const char *msg = "";
    size_t len = 0;
    grpc_slice hold = grpc_empty_slice();

    grpc_byte_buffer_destroy(s->send);
    if (s->status == GRPC_STATUS_OK) {
        out = OUT_OK;
        if (opt.verify) {
            const uint8_t *p = NULL;
            size_t n = 0;
            result_t r;
            if (s->recv)
                p = bb_flat(s->recv, &hold, &n);
            if (!p || !parse_result(p, n, &r)) {
                static const char m[] = "no Result, or one that does not parse";
                out = OUT_MISMATCH;
                msg = m;
                len = sizeof(m) - 1;
            } else {
                out = judge(&r, &msg, &len, &code);
            }
        }
    } else if (s->status == GRPC_STATUS_CANCELLED &&
               atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        out = OUT_CANCELLED;
    } else {
        out = OUT_ERROR;
        msg = (const char *)GRPC_SLICE_START_PTR(s->details);
        len = GRPC_SLICE_LENGTH(s->details);
        if (!len && s->err_str) {
            msg = s->err_str;
            len = strlen(msg);
        }
    }
    account(w, s->measured, s->sent_ns, now, out, code, msg, len);

    grpc_slice_unref(hold);
    if (s->recv)
        grpc_byte_buffer_destroy(s->recv);
    grpc_slice_unref(s->details);
    gpr_free((void *)s->err_str);
    grpc_metadata_array_destroy(&s->imd);
    grpc_metadata_array_destroy(&s->tmd);
    grpc_call_unref(s->call);
    s->call = NULL;
    w->inflight--;
    s->next_free = w->free_slots;
    w->free_slots = s;
}

static void unary_pump(worker_t *w, uint64_t now)
{
    while (w->free_slots) {
        uint64_t t_sent;
        bool measured;
        if (take_credit(w, now, &t_sent, &measured) != CREDIT_YES)
            return;
        slot_t *s = w->free_slots;
        w->free_slots = s->next_free;
        unary_start(w, s, t_sent, measured);
    }
}

/* ------------------------------------------------------------------------ */
/* Streams */

static bool stream_batch(stream_t *s, grpc_op *ops, size_t n, tag_t *tag)
{
    if (grpc_call_start_batch(s->call, ops, n, tag, NULL) != GRPC_CALL_OK) {
        s->broken = true;
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_INTERNAL,
                                     "crunch-bench: grpc_call_start_batch failed", NULL);
        return false;
    }
    s->pending++;
    return true;
}

static void stream_begin(worker_t *w, stream_t *s, uint64_t now)
{
    /* The call lives the whole run; the watchdog (--timeout without any
     * result) and each Task.timeout_ms bound it, the deadline is a backstop. */
    s->call = grpc_channel_create_registered_call(
        s->conn->ch, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq, s->conn->stream_h,
        deadline_in_ns(24 * 3600 * NS_PER_S), NULL);
    s->active = true;
    s->sending = s->close_sent = s->status_done = s->broken = s->watchdog_fired = false;
    s->outstanding = 0;
    s->pending = 0;
    s->send_bb = s->recv_bb = NULL;
    s->details = grpc_empty_slice();
    s->err_str = NULL;
    s->status = GRPC_STATUS_UNKNOWN;
    s->last_progress_ns = now;
    grpc_metadata_array_init(&s->imd);
    grpc_metadata_array_init(&s->tmd);
    w->inflight++;

    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[1].data.recv_status_on_client.trailing_metadata = &s->tmd;
    ops[1].data.recv_status_on_client.status = &s->status;
    ops[1].data.recv_status_on_client.status_details = &s->details;
    ops[1].data.recv_status_on_client.error_string = &s->err_str;
    if (!stream_batch(s, ops, 2, &s->t_status)) {
        static const char m[] = "grpc_call_start_batch failed on a new RunStream";
        note_message(&w->st, GRPC_STATUS_INTERNAL, m, sizeof(m) - 1);
        w->st.stream_failures++;
        grpc_metadata_array_destroy(&s->imd);
        grpc_metadata_array_destroy(&s->tmd);
        grpc_call_unref(s->call);
        s->call = NULL;
        s->active = false;
        s->dead = true;
        w->inflight--;
        return;
    }
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &s->imd;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &s->recv_bb;
    stream_batch(s, ops, 2, &s->t_recv);
}

/* Send a task or the half-close, if the stream may. */
static void stream_pump(worker_t *w, stream_t *s, uint64_t now)
{
    if (s->dead)
        return;
    if (!s->active) {
        if (!issuing_over(w, now))
            stream_begin(w, s, now);
        if (!s->active)
            return;
    }
    if (s->sending || s->close_sent || s->status_done || s->broken)
        return;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    if (s->outstanding < s->window) {
        uint64_t t_sent;
        bool measured;
        switch (take_credit(w, now, &t_sent, &measured)) {
        case CREDIT_LATER:
            return;
        case CREDIT_YES: {
            unsigned i = s->free_ents[--s->nfree];
            ent_t *e = &s->ents[i];
            e->id = (++s->seq << ENT_BITS) | i;
            e->sent_ns = t_sent;
            e->measured = measured;
            if (s->outstanding++ == 0)
                s->last_progress_ns = now;
            s->send_bb = task_bb(w, e->id);
            op.op = GRPC_OP_SEND_MESSAGE;
            op.data.send_message.send_message = s->send_bb;
            /* Another send follows as soon as this one completes (the window
             * has room, and without --rate there is credit, or the half-close
             * comes, which flushes): let gRPC hold this message back and
             * write it with the next, one write for a burst of tasks instead
             * of one per task. The last send of a burst goes out at once. */
            if (!w->interval_ns && s->outstanding < s->window)
                op.flags = GRPC_WRITE_BUFFER_HINT;
            if (stream_batch(s, &op, 1, &s->t_send))
                s->sending = true;
            return;
        }
        default:
            break; /* over: half-close */
        }
    } else if (!issuing_over(w, now)) {
        return;
    }
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    if (stream_batch(s, &op, 1, &s->t_close))
        s->close_sent = true;
}

static void stream_result(worker_t *w, stream_t *s, uint64_t now)
{
    grpc_slice hold;
    size_t n = 0;
    const uint8_t *p = bb_flat(s->recv_bb, &hold, &n);
    result_t r;
    if (!p || !parse_result(p, n, &r)) {
        grpc_slice_unref(hold);
        w->st.unexpected++;
        return;
    }
    unsigned i = (unsigned)(r.id & ENT_MASK);
    if (i >= s->window || s->ents[i].id != r.id || r.id == 0) {
        grpc_slice_unref(hold);
        w->st.unexpected++;
        return;
    }
    ent_t *e = &s->ents[i];
    const char *msg = "";
    size_t len = 0;
    int code = 0;
    int out = judge(&r, &msg, &len, &code);
    account(w, e->measured, e->sent_ns, now, out, code, msg, len);
    grpc_slice_unref(hold);
    e->id = 0;
    s->free_ents[s->nfree++] = i;
    s->outstanding--;
    s->last_progress_ns = now;
}

/* Every batch of the stream is back and its status known: account the tasks
 * it never answered, release the call. */
static void stream_end(worker_t *w, stream_t *s, uint64_t now)
{
    if (s->outstanding) {
        bool cancelled = s->status == GRPC_STATUS_CANCELLED &&
                         atomic_load_explicit(&g_stop, memory_order_relaxed);
        int code = s->status == GRPC_STATUS_OK ? GRPC_STATUS_UNKNOWN : (int)s->status;
        const char *msg = (const char *)GRPC_SLICE_START_PTR(s->details);
        size_t len = GRPC_SLICE_LENGTH(s->details);
        char m[96];
        if (s->status == GRPC_STATUS_OK) {
            len = (size_t)snprintf(m, sizeof(m),
                                   "RunStream ended with status OK, %u results missing",
                                   s->outstanding);
            msg = m;
        } else if (!len && s->err_str) {
            msg = s->err_str;
            len = strlen(msg);
        }
        for (unsigned i = 0; i < s->window; i++) {
            ent_t *e = &s->ents[i];
            if (!e->id)
                continue;
            account(w, e->measured, e->sent_ns, now,
                    cancelled ? OUT_CANCELLED : OUT_ERROR, code, msg, len);
            e->id = 0;
            s->free_ents[s->nfree++] = i;
        }
        s->outstanding = 0;
    } else if (s->status != GRPC_STATUS_OK &&
               !(s->status == GRPC_STATUS_CANCELLED &&
                 atomic_load_explicit(&g_stop, memory_order_relaxed))) {
        /* Failed with no task outstanding (say, before its first task):
         * no request lost, but the message is worth a line. */
        note_message(&w->st, code_index((int)s->status),
                     (const char *)GRPC_SLICE_START_PTR(s->details),
                     GRPC_SLICE_LENGTH(s->details));
    }
    if (s->status != GRPC_STATUS_OK &&
        !(s->status == GRPC_STATUS_CANCELLED &&
          atomic_load_explicit(&g_stop, memory_order_relaxed)))
        w->st.stream_failures++;
    if (s->send_bb)
        grpc_byte_buffer_destroy(s->send_bb);
    if (s->recv_bb)
        grpc_byte_buffer_destroy(s->recv_bb);
    s->send_bb = s->recv_bb = NULL;
    grpc_slice_unref(s->details);
    gpr_free((void *)s->err_str);
    grpc_metadata_array_destroy(&s->imd);
    grpc_metadata_array_destroy(&s->tmd);
    grpc_call_unref(s->call);
    s->call = NULL;
    s->active = false;
    w->inflight--;
}

static void stream_event(worker_t *w, tag_t *t, int success, uint64_t now)
{
    stream_t *s = t->owner;
    s->pending--;
    switch (t->kind) {
    case TAG_S_STATUS:
        s->status_done = true;
        break;
    case TAG_S_SEND:
        s->sending = false;
        grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        if (!success)
            s->broken = true; /* the status tells why */
        break;
    case TAG_S_CLOSE:
        break;
    case TAG_S_RECV:
        if (success && s->recv_bb) {
            stream_result(w, s, now);
            grpc_byte_buffer_destroy(s->recv_bb);
            s->recv_bb = NULL;
            grpc_op op;
            memset(&op, 0, sizeof(op));
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &s->recv_bb;
            stream_batch(s, &op, 1, &s->t_recv);
        }
        break;
    }
    if (s->pending == 0) {
        if (!s->status_done) {
            /* Cannot happen (the status batch is pending until the end);
             * make sure the call ends anyway. */
            grpc_call_cancel(s->call, NULL);
            return;
        }
        stream_end(w, s, now);
    }
}

/* No result for twice --timeout and a second while tasks are outstanding
 * (each task carries timeout_ms = --timeout, so the server should have
 * answered them all by then): cancel the stream; its outstanding tasks count
 * as DEADLINE_EXCEEDED. */
static void stream_watchdog(worker_t *w, uint64_t now)
{
    uint64_t limit = 2 * (uint64_t)opt.timeout_ms * NS_PER_MS + NS_PER_S;
    for (unsigned i = 0; i < w->nstreams; i++) {
        stream_t *s = &w->streams[i];
        if (s->active && s->outstanding && !s->watchdog_fired &&
            now - s->last_progress_ns > limit) {
            s->watchdog_fired = true;
            grpc_call_cancel_with_status(
                s->call, GRPC_STATUS_DEADLINE_EXCEEDED,
                "crunch-bench: no result within twice --timeout + 1 s", NULL);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Worker thread */

static void pump_all(worker_t *w, uint64_t now)
{
    if (opt.stream) {
        for (unsigned i = 0; i < w->nstreams; i++)
            stream_pump(w, &w->streams[i], now);
    } else {
        unary_pump(w, now);
    }
}

static void cancel_all(worker_t *w)
{
    w->cancelled_all = true;
    for (unsigned i = 0; i < w->nslots; i++)
        if (w->slots[i].call)
            grpc_call_cancel(w->slots[i].call, NULL);
    for (unsigned i = 0; i < w->nstreams; i++)
        if (w->streams[i].active)
            grpc_call_cancel(w->streams[i].call, NULL);
}

/* Can a paced request be started as soon as its time comes? */
static bool has_room(const worker_t *w)
{
    if (!opt.stream)
        return w->free_slots != NULL;
    for (unsigned i = 0; i < w->nstreams; i++) {
        const stream_t *s = &w->streams[i];
        if (s->dead)
            continue;
        if (!s->active || (!s->sending && !s->close_sent && !s->status_done &&
                           !s->broken && s->outstanding < s->window))
            return true;
    }
    return false;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uint64_t now = now_ns();

    w->next_watchdog_ns = now + TICK_NS;
    pump_all(w, now);
    while (w->inflight || !issuing_over(w, now)) {
        uint64_t wake = now + TICK_NS;
        if (g_end_ns > now && g_end_ns < wake)
            wake = g_end_ns;
        if (w->interval_ns && w->next_send_ns < wake && !issuing_over(w, now) &&
            has_room(w))
            wake = w->next_send_ns;
        grpc_event ev = grpc_completion_queue_next(
            w->cq, deadline_in_ns(wake > now ? wake - now : 0), NULL);
        /* Unary: start the next call after each completion. Streams: first
         * take every completion already there (a read brings many results,
         * but each stream's next one only shows after its RECV_MESSAGE is
         * posted again), then send: the sends of a burst then go out in one
         * write (GRPC_WRITE_BUFFER_HINT, stream_pump), not one per task. */
        for (;;) {
            now = now_ns();
            if (ev.type != GRPC_OP_COMPLETE)
                break;
            tag_t *t = ev.tag;
            if (t->kind == TAG_UNARY) {
                unary_done(w, t->owner, now);
                break;
            }
            stream_event(w, t, ev.success, now);
            ev = grpc_completion_queue_next(w->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC),
                                            NULL);
        }
        if (atomic_load_explicit(&g_stop, memory_order_relaxed) && !w->cancelled_all)
            cancel_all(w);
        if (opt.stream && now >= w->next_watchdog_ns) {
            stream_watchdog(w, now);
            w->next_watchdog_ns = now + TICK_NS;
        }
        pump_all(w, now);
        if (opt.progress) {
            uint64_t inflight = w->inflight;
            if (opt.stream) { /* tasks, not streams */
                inflight = 0;
                for (unsigned i = 0; i < w->nstreams; i++)
                    inflight += w->streams[i].outstanding;
            }
            atomic_store_explicit(&w->p_inflight, inflight, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&w->p_inflight, 0, memory_order_relaxed);

    grpc_completion_queue_shutdown(w->cq);
    while (grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_QUEUE_SHUTDOWN)
        ;
    if (atomic_fetch_sub(&g_running, 1) == 1)
        pthread_kill(g_main_thread, SIGUSR1);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Connecting */

static void grpc_log_cb(gpr_log_func_args *args)
{
    if (opt.verbose)
        fprintf(stderr, PROG ": grpc %s: %s\n", gpr_log_severity_string(args->severity),
                args->message);
}

static grpc_channel *make_channel(void)
{
    grpc_arg args[4];
    memset(args, 0, sizeof(args));
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[0].value.integer = 1;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_ENABLE_RETRIES;
    args[1].value.integer = 0;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[2].value.integer = -1;
    args[3].type = GRPC_ARG_STRING;
    args[3].key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING;
    args[3].value.string = (char *)PROG "/" PACKAGE_VERSION;
    grpc_channel_args ca = {4, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(opt.addr, creds, &ca);
    grpc_channel_credentials_release(creds);
    return ch;
}

/* Why a plain connect to the target fails, for the error line; NULL if it
 * succeeds (or the target is not of a form we can try). */
static const char *probe_reason(char *buf, size_t size)
{
    const char *a = opt.addr;
    int fd = -1, err = 0;
    if (!strncmp(a, "unix:", 5)) {
        struct sockaddr_un sa;
        const char *path = a + 5;
        if (!strncmp(path, "//", 2))
            path += 2;
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        if (strlen(path) >= sizeof(sa.sun_path))
            return NULL;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return NULL;
        err = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) ? errno : 0;
    } else {
        char host[256], port[32];
        const char *h = a, *colon;
        if (!strncmp(h, "ipv4:", 5) || !strncmp(h, "ipv6:", 5))
            h += 5;
        else if (!strncmp(h, "dns:///", 7))
            h += 7;
        else if (strstr(h, "://") || strchr(h, ','))
            return NULL;
        if (*h == '[') {
            const char *rb = strchr(h, ']');
            if (!rb || rb[1] != ':' || (size_t)(rb - h - 1) >= sizeof(host))
                return NULL;
            memcpy(host, h + 1, (size_t)(rb - h - 1));
            host[rb - h - 1] = '\0';
            colon = rb + 1;
        } else {
            colon = strrchr(h, ':');
            if (!colon || (size_t)(colon - h) >= sizeof(host))
                return NULL;
            memcpy(host, h, (size_t)(colon - h));
            host[colon - h] = '\0';
        }
        snprintf(port, sizeof(port), "%s", colon + 1);
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(host, port, &hints, &res);
        if (rc) {
            snprintf(buf, size, "%s", gai_strerror(rc));
            return buf;
        }
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            struct timeval tv = {2, 0};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            err = connect(fd, res->ai_addr, res->ai_addrlen) ? errno : 0;
        }
        freeaddrinfo(res);
        if (fd < 0)
            return NULL;
    }
    close(fd);
    if (err) {
        snprintf(buf, size, "%s",
                 err == EINPROGRESS ? "connection timed out" : strerror(err));
        return buf;
    }
    snprintf(buf, size,
             "the TCP connection opens, but no plaintext gRPC (HTTP/2) "
             "server answers there");
    return buf;
}

static bool interrupt_pending(void)
{
    sigset_t p;
    return !sigpending(&p) && (sigismember(&p, SIGINT) || sigismember(&p, SIGTERM));
}

/* Wait until every channel is READY; a clear error line otherwise. */
static void connect_all(unsigned n)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    uint64_t end = now_ns() + (uint64_t)opt.timeout_ms * NS_PER_MS;
    const char *fail = NULL;
    char why[256];

    for (unsigned i = 0; i < n; i++)
        grpc_channel_check_connectivity_state(conns[i].ch, 1);
    for (unsigned i = 0; i < n && !fail; i++) {
        for (;;) {
            grpc_connectivity_state st =
                grpc_channel_check_connectivity_state(conns[i].ch, 1);
            if (st == GRPC_CHANNEL_READY)
                break;
            if (st == GRPC_CHANNEL_TRANSIENT_FAILURE || st == GRPC_CHANNEL_SHUTDOWN) {
                fail = probe_reason(why, sizeof(why));
                if (!fail)
                    fail = "connection failed";
                break;
            }
            uint64_t now = now_ns();
            if (now >= end) {
                snprintf(why, sizeof(why), "not connected after %u ms (--timeout)",
                         opt.timeout_ms);
                fail = why;
                break;
            }
            if (interrupt_pending()) {
                fprintf(stderr, PROG ": interrupted while connecting\n");
                exit(EXIT_INTERRUPTED);
            }
            uint64_t step = end - now < 200 * NS_PER_MS ? end - now : 200 * NS_PER_MS;
            grpc_channel_watch_connectivity_state(conns[i].ch, st, deadline_in_ns(step),
                                                  cq, NULL);
            grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        }
    }
    grpc_completion_queue_shutdown(cq);
    while (
        grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
        GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    if (fail) {
        fprintf(stderr, PROG ": cannot connect to %s: %s\n", opt.addr, fail);
        exit(EXIT_USAGE);
    }
}

/* ------------------------------------------------------------------------ */
/* Report */

typedef struct {
    stats_t st; /* merged */
    double elapsed_s;
    double rps, ok_rps;
    double achieved_rate; /* --rate: requests sent per second */
    bool rate_reached;
    bool interrupted;
} report_t;

static void merge(report_t *rep, bool interrupted)
{
    stats_t *m = &rep->st;
    memset(rep, 0, sizeof(*rep));
    cb_hist_init(&m->hist);
    for (unsigned i = 0; i < nworkers; i++) {
        stats_t *s = &workers[i].st;
        m->sent += s->sent;
        m->warmup += s->warmup;
        m->ok += s->ok;
        m->errors += s->errors;
        m->mismatches += s->mismatches;
        m->cancelled += s->cancelled;
        m->unexpected += s->unexpected;
        m->stream_failures += s->stream_failures;
        for (int c = 0; c < NCODES; c++) {
            m->codes[c] += s->codes[c];
            if (!m->first_error[c] && s->first_error[c]) {
                m->first_error[c] = s->first_error[c];
                s->first_error[c] = NULL;
            }
        }
        if (s->last_done_ns > m->last_done_ns)
            m->last_done_ns = s->last_done_ns;
        if (s->last_send_ns > m->last_send_ns)
            m->last_send_ns = s->last_send_ns;
        m->late += s->late;
        if (s->max_lag_ns > m->max_lag_ns)
            m->max_lag_ns = s->max_lag_ns;
        cb_hist_merge(&m->hist, &s->hist);
    }
    uint64_t end = m->last_done_ns > g_measure_ns ? m->last_done_ns : now_ns();
    rep->elapsed_s = end > g_measure_ns ? (double)(end - g_measure_ns) / 1e9 : 0;
    uint64_t done = m->ok + m->errors;
    rep->rps = rep->elapsed_s > 0 ? (double)done / rep->elapsed_s : 0;
    rep->ok_rps = rep->elapsed_s > 0 ? (double)m->ok / rep->elapsed_s : 0;
    if (opt.rate > 0) {
        /* The sending window: -d: the duration; -N: up to the last send. */
        double win = opt.duration > 0 ? opt.duration
                                      : (double)(m->last_send_ns - g_measure_ns) / 1e9 +
                                            1.0 / opt.rate;
        if (interrupted || win <= 0)
            win = rep->elapsed_s;
        rep->achieved_rate = win > 0 ? (double)m->sent / win : 0;
        rep->rate_reached = rep->achieved_rate >= 0.95 * opt.rate && !m->late;
    }
    rep->interrupted = interrupted;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static const double quantiles[] = {0.5, 0.9, 0.99, 0.999};
static const char *const qnames[] = {"p50", "p90", "p99", "p99.9"};

static void report_json(const report_t *rep)
{
    const stats_t *m = &rep->st;
    FILE *f = stdout;
    fprintf(f, "{\n  \"version\": ");
    json_str(f, PACKAGE_VERSION);
    fprintf(f, ",\n  \"target\": ");
    json_str(f, opt.addr);
    fprintf(f,
            ",\n  \"mode\": \"%s\",\n  \"handler\": ", opt.stream ? "stream" : "unary");
    json_str(f, opt.handler);
    fprintf(f, ",\n  \"payload_bytes\": %zu,\n", opt.payload_len);
    fprintf(f, "  \"threads\": %u,\n  \"connections\": %u,\n  \"concurrency\": %u,\n",
            nworkers, opt.connections, opt.concurrency);
    if (opt.stream)
        fprintf(f, "  \"streams\": %u,\n", opt.streams);
    else
        fprintf(f, "  \"streams\": null,\n");
    if (opt.duration > 0)
        fprintf(f, "  \"duration_s\": %.3f,\n  \"total\": null,\n", opt.duration);
    else
        fprintf(f, "  \"duration_s\": null,\n  \"total\": %" PRIu64 ",\n", opt.total);
    fprintf(f, "  \"warmup_s\": %.3f,\n  \"timeout_ms\": %u,\n  \"verify\": %s,\n",
            opt.warmup, opt.timeout_ms, opt.verify ? "true" : "false");
    if (opt.rate > 0)
        fprintf(f,
                "  \"rate\": {\"target\": %.3f, \"achieved\": %.3f, \"reached\": %s, "
                "\"late\": %" PRIu64 ", \"max_lag_ms\": %.3f},\n",
                opt.rate, rep->achieved_rate, rep->rate_reached ? "true" : "false",
                rep->st.late, (double)rep->st.max_lag_ns / 1e6);
    else
        fprintf(f, "  \"rate\": null,\n");
    fprintf(f, "  \"interrupted\": %s,\n", rep->interrupted ? "true" : "false");
    fprintf(f, "  \"elapsed_s\": %.6f,\n", rep->elapsed_s);
    fprintf(f,
            "  \"sent\": %" PRIu64 ",\n  \"completed\": %" PRIu64 ",\n  \"ok\": %" PRIu64
            ",\n  \"errors\": %" PRIu64 ",\n  \"mismatches\": %" PRIu64
            ",\n  \"cancelled\": %" PRIu64 ",\n  \"unexpected_results\": %" PRIu64
            ",\n  \"stream_failures\": %" PRIu64 ",\n  \"warmup_requests\": %" PRIu64
            ",\n",
            m->sent, m->ok + m->errors, m->ok, m->errors, m->mismatches, m->cancelled,
            m->unexpected, m->stream_failures, m->warmup);
    fprintf(f, "  \"requests_per_s\": %.3f,\n  \"ok_per_s\": %.3f,\n", rep->rps,
            rep->ok_rps);
    fprintf(f, "  \"status\": {");
    const char *sep = "";
    for (int c = 0; c < NCODES; c++) {
        if (!m->codes[c])
            continue;
        fprintf(f, "%s\"%s\": %" PRIu64, sep, code_name(c), m->codes[c]);
        sep = ", ";
    }
    fprintf(f, "},\n  \"error_messages\": {");
    sep = "";
    for (int c = 0; c < NCODES; c++) {
        if (!m->first_error[c])
            continue;
        fprintf(f, "%s\"%s\": ", sep, code_name(c));
        json_str(f, m->first_error[c]);
        sep = ", ";
    }
    fprintf(f,
            "},\n  \"latency_us\": {\"count\": %" PRIu64 ", \"min\": %" PRIu64
            ", \"mean\": %.1f, \"stdev\": %.1f",
            m->hist.count, m->hist.count ? m->hist.min : 0, cb_hist_mean(&m->hist),
            cb_hist_stdev(&m->hist));
    for (size_t i = 0; i < sizeof(quantiles) / sizeof(quantiles[0]); i++)
        fprintf(f, ", \"%s\": %" PRIu64, qnames[i],
                cb_hist_quantile(&m->hist, quantiles[i]));
    fprintf(f, ", \"max\": %" PRIu64 "}\n}\n", m->hist.max);
}

static void report_text(const report_t *rep)
{
    const stats_t *m = &rep->st;
    FILE *f = stdout;
    const char *unit = opt.stream ? "tasks" : "requests";
    fprintf(f, "%s%" PRIu64 " %s in %.3f s: %.1f %s/s",
            rep->interrupted ? "interrupted: " : "", m->ok + m->errors, unit,
            rep->elapsed_s, rep->rps, unit);
    if (m->ok != m->ok + m->errors)
        fprintf(f, " (%.1f ok/s)", rep->ok_rps);
    fputc('\n', f);
    fprintf(f,
            "  requests   %" PRIu64 " sent, %" PRIu64 " ok, %" PRIu64 " errors (%" PRIu64
            " mismatched)",
            m->sent, m->ok, m->errors, m->mismatches);
    if (m->cancelled)
        fprintf(f, ", %" PRIu64 " cancelled", m->cancelled);
    if (m->warmup)
        fprintf(f, "; %" PRIu64 " more in the warm-up", m->warmup);
    fputc('\n', f);
    if (m->unexpected)
        fprintf(f, "  results    %" PRIu64 " with an unknown id (ignored)\n",
                m->unexpected);
    if (m->stream_failures)
        fprintf(f, "  streams    %" PRIu64 " ended with an error status (restarted)\n",
                m->stream_failures);
    fprintf(f, "  status    ");
    for (int c = 0; c < NCODES; c++)
        if (m->codes[c])
            fprintf(f, " %s %" PRIu64, code_name(c), m->codes[c]);
    fputc('\n', f);
    for (int c = 1; c < NCODES; c++)
        if (m->first_error[c])
            fprintf(f, "  %-10s first: %s\n", code_name(c), m->first_error[c]);
    if (opt.rate > 0)
        fprintf(f,
                "  rate       target %.1f/s, sent %.1f/s; %" PRIu64
                " sends over 10 ms late (max lag %.1f ms)%s\n",
                opt.rate, rep->achieved_rate, m->late, (double)m->max_lag_ns / 1e6,
                rep->rate_reached ? "" : ": TARGET NOT REACHED");
    if (m->hist.count) {
        fprintf(f, "  latency    min %" PRIu64 " us, mean %.1f us, stdev %.1f us\n",
                m->hist.min, cb_hist_mean(&m->hist), cb_hist_stdev(&m->hist));
        fprintf(f, "            ");
        for (size_t i = 0; i < sizeof(quantiles) / sizeof(quantiles[0]); i++)
            fprintf(f, " %s %" PRIu64, qnames[i],
                    cb_hist_quantile(&m->hist, quantiles[i]));
        fprintf(f, " max %" PRIu64 " (us)\n", m->hist.max);
    } else {
        fprintf(f, "  latency    (no successful request)\n");
    }
}

/* ------------------------------------------------------------------------ */
/* Progress line (main thread) */

static bool progress_tty;
static int progress_len;
static uint64_t prog_last_ns, prog_last_done, prog_last_ok, prog_last_lat;

static void progress_line(uint64_t now)
{
    uint64_t done = 0, ok = 0, err = 0, lat = 0, inflight = 0;
    for (unsigned i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        done += atomic_load_explicit(&w->p_done, memory_order_relaxed);
        ok += atomic_load_explicit(&w->p_ok, memory_order_relaxed);
        err += atomic_load_explicit(&w->p_err, memory_order_relaxed);
        lat += atomic_load_explicit(&w->p_lat_us, memory_order_relaxed);
        inflight += atomic_load_explicit(&w->p_inflight, memory_order_relaxed);
    }
    double dt = (double)(now - prog_last_ns) / 1e9;
    double rps = dt > 0 ? (double)(done - prog_last_done) / dt : 0;
    uint64_t dok = ok - prog_last_ok;
    double mean = dok ? (double)(lat - prog_last_lat) / (double)dok : 0;
    char line[200];
    int n;
    if (now < g_measure_ns)
        n = snprintf(line, sizeof(line),
                     "[warm-up %5.1fs] %9.0f req/s  in flight %" PRIu64,
                     (double)(now - g_t0) / 1e9, rps, inflight);
    else
        n = snprintf(line, sizeof(line),
                     "[%6.1fs] %9.0f req/s  ok %" PRIu64 "  errors %" PRIu64
                     "  in flight %" PRIu64 "  mean %.0f us",
                     (double)(now - g_measure_ns) / 1e9, rps, ok, err, inflight, mean);
    if (progress_tty) {
        fprintf(stderr, "\r%s%*s", line, progress_len > n ? progress_len - n : 0, "");
        progress_len = n;
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
    prog_last_ns = now;
    prog_last_done = done;
    prog_last_ok = ok;
    prog_last_lat = lat;
}

/* ------------------------------------------------------------------------ */
/* Command line */

static void usage(FILE *f)
{
    fprintf(
        f,
        "Usage: " PROG " [OPTION]...\n"
        "Load generator for crunchd (crunch.v1.Crunch Run / RunStream).\n"
        "\n"
        "  -a, --address ADDR      target (default $CRUNCH_ADDR or 127.0.0.1:50051);\n"
        "                          host:port, ipv4:, ipv6:, dns:///, unix:PATH\n"
        "  -c, --connections N     TCP connections (default: the threads, or -n if "
        "less)\n"
        "  -n, --concurrency N     requests in flight in all (default 16 per "
        "connection)\n"
        "  -d, --duration TIME     run for TIME (10, 10s, 500ms, 2m; default 10s)\n"
        "  -N, --requests TOTAL    send TOTAL requests (tasks) instead\n"
        "      --rate R            pace to R requests/s in all (default: closed loop)\n"
        "      --stream            RunStream: tasks on long-lived streams\n"
        "      --streams S         with --stream: RunStream calls (default: "
        "connections)\n"
        "  -H, --handler NAME      handler (default echo)\n"
        "  -p, --payload TEXT      payload (default: 16 bytes for echo, 1000000007 for\n"
        "                          prime, \"1963309 2265973\" for gcd, 10 for sleep)\n"
        "      --payload-size B    payload of B bytes (k, m suffixes): TEXT repeated\n"
        "  -t, --threads N         threads (default: online CPUs, at most -c)\n"
        "      --warmup TIME       run for TIME before measuring (default 0)\n"
        "      --timeout MS        deadline of each call / task, and of connecting\n"
        "                          (default 10000)\n"
        "      --no-verify         do not check that echo returns the payload\n"
        "      --json              print the summary as JSON\n"
        "      --progress          a progress line each second on stderr (automatic\n"
        "                          when the duration is over 5 s); --no-progress\n"
        "  -v, --verbose           show gRPC's own log lines\n"
        "  -h, --help              this help\n"
        "  -V, --version           version\n"
        "\n"
        "Exit status: 0 every request succeeded, 1 some failed, 2 usage or connection\n"
        "error, 130 interrupted (the summary so far is printed).\n");
}

static unsigned parse_uint(const char *s, const char *what, unsigned min, unsigned max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < min || v > max)
        die("%s: expected an integer from %u to %u, not \"%s\"", what, min, max, s);
    return (unsigned)v;
}

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v == 0)
        die("%s: expected a positive integer, not \"%s\"", what, s);
    return v;
}

/* Seconds: "10", "1.5", "10s", "500ms", "2m", "1h". */
static double parse_time(const char *s, const char *what, bool allow_zero)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        goto bad;
    if (!strcmp(end, "ms"))
        v /= 1000;
    else if (!strcmp(end, "m"))
        v *= 60;
    else if (!strcmp(end, "h"))
        v *= 3600;
    else if (*end && strcmp(end, "s"))
        goto bad;
    if (v > 30 * 86400 || (!allow_zero && v <= 0))
        goto bad;
    return v;
bad:
    die("%s: expected a time such as 10, 10s, 500ms or 2m, not \"%s\"", what, s);
}

static size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        goto bad;
    if (!strcmp(end, "k") || !strcmp(end, "K"))
        v <<= 10;
    else if (!strcmp(end, "m") || !strcmp(end, "M"))
        v <<= 20;
    else if (*end)
        goto bad;
    if (v == 0 || v > (64u << 20))
        goto bad;
    return (size_t)v;
bad:
    die("--payload-size: expected 1 to 64m bytes (k and m suffixes), not \"%s\"", s);
}

static void parse_args(int argc, char **argv)
{
    enum {
        O_RATE = 256,
        O_STREAM,
        O_STREAMS,
        O_PSIZE,
        O_WARMUP,
        O_TIMEOUT,
        O_JSON,
        O_PROGRESS,
        O_NOPROGRESS,
        O_NOVERIFY
    };
    static const struct option lo[] = {
        {"address", required_argument, NULL, 'a'},
        {"connections", required_argument, NULL, 'c'},
        {"concurrency", required_argument, NULL, 'n'},
        {"duration", required_argument, NULL, 'd'},
        {"requests", required_argument, NULL, 'N'},
        {"rate", required_argument, NULL, O_RATE},
        {"stream", no_argument, NULL, O_STREAM},
        {"streams", required_argument, NULL, O_STREAMS},
        {"handler", required_argument, NULL, 'H'},
        {"payload", required_argument, NULL, 'p'},
        {"payload-size", required_argument, NULL, O_PSIZE},
        {"threads", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"json", no_argument, NULL, O_JSON},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"no-progress", no_argument, NULL, O_NOPROGRESS},
        {"no-verify", no_argument, NULL, O_NOVERIFY},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *payload = NULL;
    size_t psize = 0;
    int progress = -1;
    unsigned c = 0, n = 0, t = 0;
    int ch;

    opt.addr = cr_client_default_addr();
    opt.handler = "echo";
    opt.timeout_ms = 10000;
    opt.verify = true;
    static const char shortopts[] = ":a:c:n:d:N:H:p:t:vhV";
    opterr = 0; /* our own one-line messages */
    while ((ch = getopt_long(argc, argv, shortopts, lo, NULL)) != -1) {
        switch (ch) {
        case 'a':
            if (!*optarg)
                die("-a: empty address");
            opt.addr = optarg;
            break;
        case 'c':
            c = parse_uint(optarg, "-c", 1, 100000);
            break;
        case 'n':
            n = parse_uint(optarg, "-n", 1, 10000000);
            break;
        case 'd':
            opt.duration = parse_time(optarg, "-d", false);
            break;
        case 'N':
            opt.total = parse_u64(optarg, "-N");
            break;
        case O_RATE: {
            char *end;
            opt.rate = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(opt.rate) || opt.rate <= 0 ||
                opt.rate > 1e9)
                die("--rate: expected a positive number of requests per second, not "
                    "\"%s\"",
                    optarg);
            break;
        }
        case O_STREAM:
            opt.stream = true;
            break;
        case O_STREAMS:
            opt.streams = parse_uint(optarg, "--streams", 1, 1000000);
            break;
        case 'H':
            if (!*optarg)
                die("-H: empty handler name");
            opt.handler = optarg;
            break;
        case 'p':
            payload = optarg;
            break;
        case O_PSIZE:
            psize = parse_size(optarg);
            break;
        case 't':
            t = parse_uint(optarg, "-t", 1, 1024);
            break;
        case O_WARMUP:
            opt.warmup = parse_time(optarg, "--warmup", true);
            break;
        case O_TIMEOUT:
            opt.timeout_ms = parse_uint(optarg, "--timeout", 1, 86400000);
            break;
        case O_JSON:
            opt.json = true;
            break;
        case O_PROGRESS:
            progress = 1;
            break;
        case O_NOPROGRESS:
            progress = 0;
            break;
        case O_NOVERIFY:
            opt.verify = false;
            break;
        case 'v':
            opt.verbose = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf(PROG " " PACKAGE_VERSION " (gRPC core %s, protobuf-c %s)\n",
                   grpc_version_string(), protobuf_c_version());
            exit(0);
        case ':':
            if (optopt > 0 && optopt < 128)
                die("option -%c needs a value (try --help)", optopt);
            die("option %s needs a value (try --help)", argv[optind - 1]);
        default:
            if (optopt > 0 && optopt < 128)
                die("unknown option -%c (try --help)", optopt);
            die("unknown option, or one that takes no value: %s (try --help)",
                argv[optind - 1]);
        }
    }
    if (optind < argc)
        die("unexpected argument \"%s\" (try --help)", argv[optind]);
    if (opt.duration > 0 && opt.total)
        die("-d and -N are exclusive: run for a time or for a number of requests");
    if (!opt.duration && !opt.total)
        opt.duration = 10;
    if (opt.streams && !opt.stream)
        die("--streams needs --stream");

    /* Threads, connections, concurrency, streams. */
    if (!t) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        t = cpus > 0 ? (unsigned)cpus : 1;
    }
    if (!c) {
        c = t;
        if (n && n < c)
            c = n;
        if (opt.streams && opt.streams < c)
            c = opt.streams;
    }
    if (!opt.stream) {
        if (!n)
            n = 16 * c;
        if (n < c)
            die("-n %u is less than -c %u: every connection needs a call in flight", n,
                c);
    } else {
        if (!opt.streams)
            opt.streams = c;
        if (opt.streams < c)
            die("--streams %u is less than -c %u: every connection needs a stream",
                opt.streams, c);
        if (!n)
            n = 16 * opt.streams;
        if (n < opt.streams)
            die("-n %u is less than --streams %u: every stream needs a task in flight", n,
                opt.streams);
        if ((n + opt.streams - 1) / opt.streams > MAX_WINDOW)
            die("-n / --streams is over %u tasks in flight per stream", MAX_WINDOW);
    }
    opt.connections = c;
    opt.concurrency = n;
    opt.threads = t < c ? t : c;

    /* Payload. */
    if (!payload) {
        if (!strcmp(opt.handler, "prime"))
            payload = "1000000007";
        else if (!strcmp(opt.handler, "gcd"))
            payload = "1963309 2265973";
        else if (!strcmp(opt.handler, "sleep"))
            payload = "10";
        else
            payload = psize ? "abcdefghijklmnopqrstuvwxyz0123456789" : "0123456789abcdef";
    }
    size_t plen = strlen(payload);
    if (psize) {
        if (!plen)
            die("--payload-size needs a non-empty -p");
        opt.payload = xcalloc(1, psize);
        for (size_t i = 0; i < psize; i++)
            opt.payload[i] = payload[i % plen];
        opt.payload_len = psize;
    } else {
        opt.payload = xcalloc(1, plen + 1);
        memcpy(opt.payload, payload, plen);
        opt.payload_len = plen;
    }
    opt.progress = progress >= 0 ? progress : opt.duration > 5;
    g_verify_output = opt.verify && !strcmp(opt.handler, "echo");
}

/* ------------------------------------------------------------------------ */

/* The Task without its id, packed once. */
static uint8_t *pack_rest(size_t *len)
{
    Crunch__V1__Task t = CRUNCH__V1__TASK__INIT;
    t.handler = (char *)opt.handler;
    t.payload.data = (uint8_t *)opt.payload;
    t.payload.len = opt.payload_len;
    /* Unary: the call deadline bounds the task; a stream's lives longer. */
    t.timeout_ms = opt.stream ? opt.timeout_ms : 0;
    *len = crunch__v1__task__get_packed_size(&t);
    uint8_t *buf = xcalloc(1, *len);
    crunch__v1__task__pack(&t, buf);
    return buf;
}

static void setup_workers(const uint8_t *rest, size_t rest_len)
{
    unsigned T = opt.threads, C = opt.connections;
    nworkers = T;
    workers = xcalloc(T, sizeof(worker_t));
    for (unsigned i = 0; i < T; i++) {
        worker_t *w = &workers[i];
        w->idx = i;
        w->cq = grpc_completion_queue_create_for_next(NULL);
        w->rest = grpc_slice_from_copied_buffer((const char *)rest, rest_len);
        cb_hist_init(&w->st.hist);
        if (opt.rate > 0) {
            /* Each thread paces R / T, offset so that the threads interleave. */
            w->interval_ns = (uint64_t)((double)T * 1e9 / opt.rate);
            if (!w->interval_ns)
                w->interval_ns = 1;
            w->next_send_ns = g_t0 + w->interval_ns * i / T;
        }
    }
    /* Connection j belongs to thread j % T; slot / stream i uses connection i % C. */
    if (!opt.stream) {
        for (unsigned i = 0; i < opt.concurrency; i++)
            workers[(i % C) % T].nslots++;
        for (unsigned i = 0; i < T; i++)
            workers[i].slots = xcalloc(workers[i].nslots, sizeof(slot_t));
        unsigned *fill = xcalloc(T, sizeof(unsigned));
        for (unsigned i = 0; i < opt.concurrency; i++) {
            worker_t *w = &workers[(i % C) % T];
            slot_t *s = &w->slots[fill[w->idx]++];
            s->tag.kind = TAG_UNARY;
            s->tag.owner = s;
            s->w = w;
            s->conn = &conns[i % C];
            s->next_free = w->free_slots;
            w->free_slots = s;
        }
        free(fill);
    } else {
        unsigned S = opt.streams;
        for (unsigned i = 0; i < S; i++)
            workers[(i % C) % T].nstreams++;
        for (unsigned i = 0; i < T; i++)
            workers[i].streams = xcalloc(workers[i].nstreams, sizeof(stream_t));
        unsigned *fill = xcalloc(T, sizeof(unsigned));
        for (unsigned i = 0; i < S; i++) {
            worker_t *w = &workers[(i % C) % T];
            stream_t *s = &w->streams[fill[w->idx]++];
            s->w = w;
            s->conn = &conns[i % C];
            s->window = opt.concurrency / S + (i < opt.concurrency % S ? 1 : 0);
            s->ents = xcalloc(s->window, sizeof(ent_t));
            s->free_ents = xcalloc(s->window, sizeof(unsigned));
            for (unsigned k = 0; k < s->window; k++)
                s->free_ents[k] = s->window - 1 - k;
            s->nfree = s->window;
            s->t_status = (tag_t){TAG_S_STATUS, s};
            s->t_recv = (tag_t){TAG_S_RECV, s};
            s->t_send = (tag_t){TAG_S_SEND, s};
            s->t_close = (tag_t){TAG_S_CLOSE, s};
        }
        free(fill);
    }
}

static void print_header(void)
{
    FILE *f = opt.json ? stderr : stdout;
    if (opt.json && !opt.progress)
        return;
    fprintf(f, PROG " " PACKAGE_VERSION ": %s, %s \"%s\", %zu-byte payload\n", opt.addr,
            opt.stream ? "RunStream" : "Run", opt.handler, opt.payload_len);
    fprintf(f, "  %u thread%s, %u connection%s, %u in flight", opt.threads,
            opt.threads == 1 ? "" : "s", opt.connections, opt.connections == 1 ? "" : "s",
            opt.concurrency);
    if (opt.stream)
        fprintf(f, " on %u stream%s (%u%s per stream)", opt.streams,
                opt.streams == 1 ? "" : "s", opt.concurrency / opt.streams,
                opt.concurrency % opt.streams ? "+" : "");
    if (opt.duration > 0)
        fprintf(f, "; for %.3g s", opt.duration);
    else
        fprintf(f, "; %" PRIu64 " %s", opt.total, opt.stream ? "tasks" : "requests");
    if (opt.warmup > 0)
        fprintf(f, " after a %.3g s warm-up", opt.warmup);
    if (opt.rate > 0)
        fprintf(f, "; paced at %.6g/s", opt.rate);
    fputc('\n', f);
    fflush(f);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);

    /* Every thread (ours and gRPC's) inherits this mask; the main thread
     * takes the signals with sigtimedwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_main_thread = pthread_self();

    size_t rest_len;
    uint8_t *rest = pack_rest(&rest_len);

    gpr_set_log_function(grpc_log_cb);
    grpc_init();

    conns = xcalloc(opt.connections, sizeof(conn_t));
    for (unsigned i = 0; i < opt.connections; i++) {
        conns[i].ch = make_channel();
        conns[i].run_h = grpc_channel_register_call(conns[i].ch, RUN_METHOD, NULL, NULL);
        conns[i].stream_h =
            grpc_channel_register_call(conns[i].ch, STREAM_METHOD, NULL, NULL);
    }
    connect_all(opt.connections);

    g_t0 = now_ns();
    g_measure_ns = g_t0 + (uint64_t)(opt.warmup * 1e9);
    g_end_ns =
        opt.duration > 0 ? g_measure_ns + (uint64_t)(opt.duration * 1e9) : UINT64_MAX;
    setup_workers(rest, rest_len);
    free(rest);
    print_header();

    progress_tty = isatty(STDERR_FILENO);
    prog_last_ns = g_t0;
    atomic_store(&g_running, nworkers);
    for (unsigned i = 0; i < nworkers; i++) {
        int rc = pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]);
        if (rc)
            die("pthread_create: %s", strerror(rc));
    }

    bool interrupted = false;
    uint64_t next_tick = g_t0 + NS_PER_S;
    while (atomic_load(&g_running) > 0) {
        uint64_t now = now_ns();
        uint64_t wait = !opt.progress ? NS_PER_S : next_tick > now ? next_tick - now : 0;
        struct timespec ts = {(time_t)(wait / NS_PER_S), (long)(wait % NS_PER_S)};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            if (interrupted) {
                fprintf(stderr, "\n" PROG ": interrupted again: exiting at once\n");
                _exit(EXIT_INTERRUPTED);
            }
            interrupted = true;
            atomic_store(&g_stop, 1);
        }
        now = now_ns();
        if (opt.progress && now >= next_tick && atomic_load(&g_running) > 0) {
            progress_line(now);
            while (next_tick <= now)
                next_tick += NS_PER_S;
        }
    }
    for (unsigned i = 0; i < nworkers; i++)
        pthread_join(workers[i].tid, NULL);
    if (opt.progress && progress_tty && progress_len)
        fputc('\n', stderr);

    report_t rep;
    merge(&rep, interrupted);
    if (opt.json)
        report_json(&rep);
    else
        report_text(&rep);
    fflush(stdout);

    /* Clean up (valgrind). */
    for (int c = 0; c < NCODES; c++)
        free(rep.st.first_error[c]);
    for (unsigned i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        for (int c = 0; c < NCODES; c++)
            free(w->st.first_error[c]);
        for (unsigned k = 0; k < w->nstreams; k++) {
            free(w->streams[k].ents);
            free(w->streams[k].free_ents);
        }
        free(w->streams);
        free(w->slots);
        grpc_slice_unref(w->rest);
        grpc_completion_queue_destroy(w->cq);
    }
    free(workers);
    for (unsigned i = 0; i < opt.connections; i++)
        grpc_channel_destroy(conns[i].ch);
    free(conns);
    free(opt.payload);
    grpc_shutdown();

    if (interrupted)
        return EXIT_INTERRUPTED;
    return rep.st.errors || rep.st.unexpected ? EXIT_SOME_FAILED : EXIT_ALL_OK;
}
