/* exit.c: test module: handler "exit" ends the worker with the payload as its
 * exit status (default 3). */
#include <crunchd/module.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int do_exit(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    char code[16] = "3";
    (void)state, (void)out;
    if (len > 0 && len < sizeof(code)) {
        memcpy(code, in, len);
        code[len] = '\0';
    }
    _exit(atoi(code));
    return CRUNCHD_INTERNAL; /* not reached */
}

static const crunchd_handler_t handlers[] = {{"exit", do_exit}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "exit", .handlers = handlers};
