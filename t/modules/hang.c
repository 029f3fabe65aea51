/* hang.c: test module: handler "hang" never returns. */
#include <crunchd/module.h>

#include <unistd.h>

static int hang(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    (void)state, (void)in, (void)len, (void)out;
    for (;;)
        pause();
    return CRUNCHD_INTERNAL; /* not reached */
}

static const crunchd_handler_t handlers[] = {{"hang", hang}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "hang", .handlers = handlers};
