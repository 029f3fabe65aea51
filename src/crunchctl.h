/* crunchctl.h: what the files of crunchctl, the command-line client, share.
 *
 * crunchctl is its own program: none of its symbols link with crunchd's, and
 * it uses nothing of crunchd but cr_core.h's includes. Its global symbols take
 * the prefix cctl_ (cr_ctl is crunchd's control page). The files:
 *   crunchctl.c        options, addresses, the commands, exit statuses
 *   crunchctl_rpc.c    the gRPC core client: channel, unary and streaming
 *                      calls, the stdin reader thread, signals
 *   crunchctl_out.c    output: result lines, JSON, the stats table
 * and, shared with crunch-bench (client.h, prefix cr_client_):
 *   client.c           status-code names, the default address, gRPC targets */
#ifndef CCTL_H
#define CCTL_H

#include "cr_core.h"

#include "client.h"

#include <grpc/grpc.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "crunch/v1/crunch.pb-c.h"

/* Exit statuses besides the gRPC codes (0 OK, 1..16): UNKNOWN is 2 as well;
 * the stderr line tells a usage error from a server's UNKNOWN. */
#define CCTL_EXIT_USAGE 2

#define CCTL_DEFAULT_TIMEOUT 30.0

/* Everything the command line says. Strings point into argv or the
 * environment, except target (malloc'ed; main frees it). */
typedef struct {
    const char *addr; /* as the user gave it (for messages) */
    char *target;     /* the gRPC target made of it */
    bool tls;
    const char *ca;          /* PEM roots file; NULL: the system roots */
    const char *cert, *key;  /* client certificate and key (both or neither) */
    const char *server_name; /* grpc.ssl_target_name_override */
    double timeout_s;        /* the deadline of every call */
    bool json;
    const char *cmd; /* the command, for messages */
    /* Command options. */
    uint64_t id; /* run: the task id; stream, submit: the first one */
    uint32_t task_timeout_ms;
    uint32_t max_results; /* updates --max */
} cctl_opts_t;

/* How a call ended. details is malloc'ed (never NULL, maybe ""). */
typedef struct {
    grpc_status_code code;
    char *details;
    /* The channel never got a connection (UNAVAILABLE or DEADLINE_EXCEEDED
     * while connecting): the message says "cannot connect". */
    bool no_connection;
    /* Not the server's doing (stdin unreadable, out of memory): the message
     * goes out without a code name, and the exit status is 2. */
    bool local;
} cctl_status_t;

/* --- crunchctl.c ------------------------------------------------------------------ */

/* Where stdin lines come from: STDIN_FILENO, or /dev/null when crunchctl
 * was started without a stdin. */
extern int cctl_stdin_fd;

/* --- crunchctl_rpc.c -------------------------------------------------------------- */

/* Block SIGINT, SIGTERM and SIGHUP in every thread and start the thread that
 * takes them: it cancels the call in progress, and cctl_interrupted() then
 * names the signal. Call before grpc_init so gRPC's threads inherit the mask.
 * Returns CR_OK or CR_ERROR (message printed). */
int cctl_signals_start(void);
int cctl_interrupted(void);
/* Stop that thread; if a signal came, die of it (the shell sees 128+sig). */
void cctl_signals_finish(void);

/* grpc_init and the channel to o->target (TLS files read here). Returns
 * CR_OK, or CR_ERROR with one line printed. */
int cctl_rpc_open(const cctl_opts_t *o);
void cctl_rpc_close(void);

/* One unary call of method ("/pkg.Svc/M"): sends req, and on OK unpacks the
 * reply with reply_desc into *reply (the caller frees it with
 * protobuf_c_message_free_unpacked). Any failure, a malformed reply
 * included, is a status in *st (free st->details with cctl_status_free). */
void cctl_unary(const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *reply_desc, ProtobufCMessage **reply,
                cctl_status_t *st);

/* A streaming call. Client side: either the one message `first` then a
 * half-close (server streaming), or one message per stdin line made by
 * on_line (client streaming, bidi), then a half-close at the end of stdin.
 * Server side: on_msg gets each message as it arrives, on the calling
 * thread; returning CR_ERROR cancels the call, which then ends as INTERNAL
 * "malformed message from the server". A local failure (stdin unreadable)
 * ends it too, and is the status the caller gets, not the CANCELLED it
 * causes. */
typedef struct {
    const char *method;
    const ProtobufCMessage *first;
    /* Reader thread: pack line (len bytes, without its newline; lineno
     * counts from 0) into a new message. Returns CR_OK or CR_ERROR. */
    int (*on_line)(void *ud, const uint8_t *line, size_t len, uint64_t lineno,
                   grpc_byte_buffer **out);
    /* Calling thread: one received message (borrowed bytes). */
    int (*on_msg)(void *ud, const uint8_t *data, size_t len);
    void *ud;
} cctl_stream_t;

/* Run the call to its end; its status into *st (free st->details with
 * cctl_status_free). Returns the number of stdin lines sent. */
uint64_t cctl_stream(const cctl_stream_t *s, cctl_status_t *st);

/* Pack msg into a new byte buffer (NULL when out of memory). */
grpc_byte_buffer *cctl_pack(const ProtobufCMessage *msg);

void cctl_status_set(cctl_status_t *st, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cctl_status_free(cctl_status_t *st);

/* --- crunchctl_out.c -------------------------------------------------------------- */

/* "crunchctl: CMD: " then the message, on one line: newlines and other
 * control characters in it become spaces. */
void cctl_error(const cctl_opts_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One result of stream or updates: stdout "ID\tOUTPUT" (escaped), or stderr
 * "ID\terror: CODE_NAME: message"; with --json one object on stdout either
 * way. Flushed at once so that a pipe sees results as they come. */
void cctl_print_result(const cctl_opts_t *o, const Crunch__V1__Result *r);
/* run --json: the Result as one JSON object. */
void cctl_print_result_json(const Crunch__V1__Result *r);

/* JSON text of a string (escaped, invalid UTF-8 as U+FFFD), quotes included. */
void cctl_json_string(FILE *f, const uint8_t *s, size_t len);
/* True if s is valid UTF-8 (no overlongs, no surrogates). */
bool cctl_utf8_valid(const uint8_t *s, size_t len);

void cctl_print_stats(const cctl_opts_t *o, const Crunch__V1__StatsReply *r);

#endif /* CCTL_H */
