/* version.c: test module built twice (-DVERSION=1, 2: version1.so,
 * version2.so) for the reload tests. Handler "version" answers
 * "vN config=<the config string>"; version 2 adds handler "version2";
 * "fail_code" returns the payload as a status with a message. */
#include <crunchd/module.h>

#include <stdlib.h>
#include <string.h>

#ifndef VERSION
#define VERSION 1
#endif

static char *cfg;

static int init(const char *config, void **state)
{
    cfg = strdup(config);
    *state = cfg;
    return cfg == NULL;
}

static void fini(void *state)
{
    free(state);
}

static int version(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    (void)in, (void)len;
    return out->writef(out, "v%d config=%s", VERSION, (const char *)state) == 0
               ? CRUNCHD_OK
               : CRUNCHD_RESOURCE_EXHAUSTED;
}

static int fail_code(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    char num[16];
    size_t n = len < sizeof(num) - 1 ? len : sizeof(num) - 1;
    (void)state;
    memcpy(num, in, n);
    num[n] = '\0';
    out->writef(out, "fail_code: failing with %s as asked", num);
    return atoi(num);
}

static const crunchd_handler_t handlers[] = {
    {"version", version},
    {"fail_code", fail_code},
#if VERSION >= 2
    {"version2", version},
#endif
    {NULL, NULL},
};
const crunchd_module_t crunchd_module = {.abi = CRUNCHD_MODULE_ABI,
                                         .name = "version",
                                         .handlers = handlers,
                                         .init = init,
                                         .fini = fini};
