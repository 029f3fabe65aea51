/* crash.c: test module: handler "crash" crashes the worker on demand.
 * Payload "segv" or "abort"; or a file path: crash the first time (creating
 * the file), succeed once it exists (a task that works on its retry). */
#include <crunchd/module.h>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int crash(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    char arg[512];
    size_t n = len < sizeof(arg) - 1 ? len : sizeof(arg) - 1;
    (void)state;
    memcpy(arg, in, n);
    arg[n] = '\0';
    if (strcmp(arg, "abort") == 0)
        abort();
    if (arg[0] == '/') {
        int fd = open(arg, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd == -1)
            return out->write(out, "survived", 8) == 0 ? CRUNCHD_OK : CRUNCHD_INTERNAL;
        close(fd);
    }
    raise(SIGSEGV);
    return CRUNCHD_INTERNAL;
}

static const crunchd_handler_t handlers[] = {{"crash", crash}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "crash", .handlers = handlers};
