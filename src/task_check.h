/* task_check.h: the checks an acceptor makes on a Task read from a client
 * (handler, payload size, deadline), free of gRPC so that t/fuzz can call them. */
#ifndef CR_TASK_CHECK_H
#define CR_TASK_CHECK_H

#include "cr_core.h"

typedef struct {
    uint64_t max_payload;    /* bytes (the max_payload setting) */
    uint64_t now_ns;         /* cr_now_ns() when the task was read */
    bool call_deadline;      /* the call has a deadline, and then: */
    int64_t call_left_ns;    /* the time left until it (<= 0: it passed) */
} cr_task_limits_t;

/* Check a task: `name` (NUL-terminated) must be in the handler table
 * (cr_handler_find), payload_len at most lim->max_payload, and the call's
 * deadline not passed. Returns CR_STATUS_OK with *handler and *deadline_ns
 * set (0 = no deadline, else the earlier of now + call_left_ns and now +
 * timeout_ms; saturates instead of wrapping), or CR_STATUS_NOT_FOUND /
 * INVALID_ARGUMENT / DEADLINE_EXCEEDED with one line in msg saying what to
 * send instead. */
int cr_task_check(const cr_task_limits_t *lim, const char *name, size_t payload_len,
                  uint32_t timeout_ms, uint32_t *handler, uint64_t *deadline_ns,
                  char *msg, size_t len);

/* At most len - 1 bytes of s (n bytes) into buf, non-printable bytes as '?'
 * and "..." when cut: for a client's bytes in a status message or the log. */
void cr_task_printable(char *buf, size_t len, const char *s, size_t n);

#endif /* CR_TASK_CHECK_H */
