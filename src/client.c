/* client.c: status-code names and address handling shared by crunchctl and
 * crunch-bench (client.h). */
#include "cr_core.h"

#include "client.h"

static const char *const code_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *cr_client_code_name(int code)
{
    static __thread char buf[24];

    if (code >= 0 && (size_t)code < cr_nelem(code_names))
        return code_names[code];
    snprintf(buf, sizeof(buf), "CODE_%d", code);
    return buf;
}

const char *cr_client_default_addr(void)
{
    const char *a = getenv("CRUNCH_ADDR");

    return a != NULL && a[0] != '\0' ? a : CR_CLIENT_DEFAULT_ADDR;
}

char *cr_client_target(const char *a)
{
    static const char *const schemes[] = {
        "unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:"};
    const char *close;
    char *t = NULL;
    size_t i, colons = 0;

    if (a[0] == '\0')
        return NULL;
    if (a[0] == '/')
        return asprintf(&t, "unix:%s", a) == -1 ? NULL : t;
    for (i = 0; i < cr_nelem(schemes); i++)
        if (strncmp(a, schemes[i], strlen(schemes[i])) == 0)
            return a[strlen(schemes[i])] != '\0' ? strdup(a) : NULL;
    if (a[0] == '[') {
        close = strchr(a, ']');
        if (close == NULL || close == a + 1)
            return NULL;
        if (close[1] == '\0')
            return asprintf(&t, "%s:%s", a, CR_CLIENT_DEFAULT_PORT) == -1 ? NULL : t;
        return close[1] == ':' && close[2] != '\0' ? strdup(a) : NULL;
    }
    for (i = 0; a[i]; i++)
        colons += a[i] == ':';
    if (colons == 0)
        return asprintf(&t, "%s:%s", a, CR_CLIENT_DEFAULT_PORT) == -1 ? NULL : t;
    if (colons > 1)
        return asprintf(&t, "[%s]:%s", a, CR_CLIENT_DEFAULT_PORT) == -1 ? NULL : t;
    return a[0] != ':' && a[strlen(a) - 1] != ':' ? strdup(a) : NULL;
}
