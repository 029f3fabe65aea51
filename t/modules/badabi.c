/* badabi.c: test module built for another module ABI. */
#include <crunchd/module.h>

static int nop(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    (void)state, (void)in, (void)len, (void)out;
    return CRUNCHD_OK;
}

static const crunchd_handler_t handlers[] = {{"badabi", nop}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI + 41, .name = "badabi", .handlers = handlers};
