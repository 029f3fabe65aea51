/* alloc.c: test module: handler "alloc" allocates and touches N MiB (the
 * payload), then frees them; ENOMEM is a RESOURCE_EXHAUSTED error. */
#include <crunchd/module.h>

#include <stdlib.h>
#include <string.h>

static int alloc(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    char num[24];
    size_t n = len < sizeof(num) - 1 ? len : sizeof(num) - 1;
    unsigned long mib;
    char *p;
    (void)state;
    memcpy(num, in, n);
    num[n] = '\0';
    mib = strtoul(num, NULL, 10);
    p = malloc(mib << 20);
    if (p == NULL) {
        out->writef(out, "alloc: cannot allocate %lu MiB", mib);
        return CRUNCHD_RESOURCE_EXHAUSTED;
    }
    memset(p, 1, mib << 20);
    free(p);
    return out->writef(out, "allocated %lu MiB", mib) == 0 ? CRUNCHD_OK : CRUNCHD_INTERNAL;
}

static const crunchd_handler_t handlers[] = {{"alloc", alloc}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "alloc", .handlers = handlers};
