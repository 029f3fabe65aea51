/* dup.c: test module with a handler named like a built-in (echo). */
#include <crunchd/module.h>

static int nop(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    (void)state, (void)in, (void)len, (void)out;
    return CRUNCHD_OK;
}

static const crunchd_handler_t handlers[] = {{"echo", nop}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "dup", .handlers = handlers};
