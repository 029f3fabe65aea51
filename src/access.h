/* access.h: the access log of an acceptor: one line per RPC, one write(2) each.
 *
 * Line format (space-separated, fixed order, no field ever empty or holding a
 * space: a missing value is "-"):
 *
 *   2026/11/22 01:50:03.127 ipv4:127.0.0.1:55328 /crunch.v1.Crunch/Run echo 0 12 17 35 4
 *
 *   DATE TIME.ms PEER METHOD HANDLER STATUS BYTES_IN BYTES_OUT QUEUE_US RUN_US
 *
 * and for a streaming call (RunStream, Submit, Updates), one line when the call
 * ends, with the task counts appended:
 *
 *   ... /crunch.v1.Crunch/RunStream - 0 1200 1850 5120 80210 tasks=100 ok=98 failed=2
 *
 *   PEER      the client as gRPC names it ("ipv4:...", "ipv6:[...]:port", "unix:...")
 *   METHOD    the full gRPC method path, as the client sent it
 *   HANDLER   the task's handler for Run, "-" for everything else
 *   STATUS    the gRPC status code the call ended with: the one sent, or 1 when
 *             the client cancelled or went away first, 4 when the call was cut
 *             at its deadline
 *   BYTES_*   protobuf message bytes received and sent (no HTTP/2 framing)
 *   QUEUE_US  time the task waited in the queue for a worker; RUN_US the time
 *             the handler ran (streams: the sums over the call's tasks;
 *             Submit: 0, its results go to the updates feed)
 *   tasks=    tasks read from the stream (RunStream, Submit) or results sent
 *             (Updates); ok= those that succeeded (Submit: accepted),
 *             failed= the others (Submit: rejected)
 *
 * Times are local time, like the error log. The file is opened O_APPEND, so
 * lines of several acceptors never interleave. Thread-safe. */
#ifndef CR_ACCESS_H
#define CR_ACCESS_H

#include "cr_core.h"

/* One finished RPC. NULL or "" strings are written as "-"; other text is cut
 * to 128 bytes and anything but printable non-space ASCII becomes '?'. */
typedef struct {
    const char *peer;    /* cr_rpc_peer() (rpc.h): the client, gRPC-style */
    const char *method;  /* "/crunch.v1.Crunch/Run" */
    const char *handler; /* Run: the task's handler; NULL otherwise */
    int status;          /* grpc_status_code the call ended with */
    uint64_t bytes_in, bytes_out;
    uint64_t queue_us, run_us;
    bool stream;         /* append tasks= ok= failed= */
    uint64_t tasks, ok, failed;
} cr_access_rec_t;

/* Open the access log at `path` (absolute; "" = off, then every other call is a
 * cheap no-op). Opened O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, mode 0644.
 * Returns CR_OK, or CR_ERROR with the reason logged. */
int cr_access_open(const char *path);

/* Reopen the same path (SIGUSR1, after logrotate renamed the file): the new
 * file takes over the old descriptor number with dup3(), so a line being
 * written meanwhile lands in one file or the other, whole. Returns CR_OK, or
 * CR_ERROR (logged; lines keep going to the old file). */
int cr_access_reopen(void);

/* True when lines are written: callers skip gathering what only the log needs
 * (the peer string) when it is off. */
bool cr_access_on(void);

/* Write one line for rec. Never fails loudly: a failed write is reported in
 * the error log at most once a minute. */
void cr_access_log(const cr_access_rec_t *rec);

/* Close the file (the acceptor exits). */
void cr_access_close(void);

#endif /* CR_ACCESS_H */
