/* task_check.c: the gRPC-free checks of a Task read from a client (see task_check.h). */
#include "task_check.h"
#include "handlers.h"
#include "shm.h"

#define NS_PER_MS 1000000ull

void cr_task_printable(char *buf, size_t len, const char *s, size_t n)
{
    size_t i, max = len > 4 ? len - 4 : 0;

    for (i = 0; i < n && i < max; i++)
        buf[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (i < n && len >= 4) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[len ? (i < len ? i : len - 1) : 0] = '\0';
}

static uint64_t task_add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

int cr_task_check(const cr_task_limits_t *lim, const char *name, size_t payload_len,
                  uint32_t timeout_ms, uint32_t *handler, uint64_t *deadline_ns,
                  char *msg, size_t len)
{
    size_t nlen = strlen(name);
    uint64_t dl = 0;
    char list[256], shown[72];

    *handler = cr_handler_find(name, nlen);
    if (*handler == CR_NONE) {
        cr_task_printable(shown, sizeof(shown), name, nlen);
        cr_handler_list(list, sizeof(list));
        snprintf(msg, len, "unknown handler \"%s\"; known handlers: %s", shown, list);
        return CR_STATUS_NOT_FOUND;
    }
    if (payload_len > lim->max_payload) {
        snprintf(msg, len,
                 "payload is %zu bytes; max_payload is %" PRIu64
                 " bytes (raise max_payload in crunchd.conf or send less)",
                 payload_len, lim->max_payload);
        return CR_STATUS_INVALID_ARGUMENT;
    }
    /* Workers compare deadlines with cr_now_ns(): both bounds become times on
     * that clock. */
    if (lim->call_deadline) {
        if (lim->call_left_ns <= 0) {
            snprintf(msg, len, "the call's deadline passed before the task was queued");
            return CR_STATUS_DEADLINE_EXCEEDED;
        }
        dl = task_add_sat(lim->now_ns, (uint64_t)lim->call_left_ns);
    }
    if (timeout_ms > 0) {
        uint64_t t = task_add_sat(lim->now_ns, (uint64_t)timeout_ms * NS_PER_MS);
        if (dl == 0 || t < dl)
            dl = t;
    }
    *deadline_ns = dl;
    return CR_STATUS_OK;
}
