/* slowinit.c: test module: init sleeps. config "MARKER:MS": the first worker
 * to create the file MARKER sleeps MS milliseconds in init, the others do not
 * (so a test sees one slow worker beside fast ones); "fail" makes init fail.
 * Handler "slowinit" answers "ready". */
#include <crunchd/module.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int init(const char *config, void **state)
{
    char path[512];
    const char *colon = strrchr(config, ':');
    (void)state;
    if (strcmp(config, "fail") == 0)
        return 7;
    if (colon == NULL || (size_t)(colon - config) >= sizeof(path))
        return 0;
    memcpy(path, config, (size_t)(colon - config));
    path[colon - config] = '\0';
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd != -1) {
        long ms = atol(colon + 1);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        close(fd);
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int ready(void *state, const unsigned char *in, size_t len, crunchd_out_t *out)
{
    (void)state, (void)in, (void)len;
    return out->write(out, "ready", 5) == 0 ? CRUNCHD_OK : CRUNCHD_INTERNAL;
}

static const crunchd_handler_t handlers[] = {{"slowinit", ready}, {NULL, NULL}};
const crunchd_module_t crunchd_module = {
    .abi = CRUNCHD_MODULE_ABI, .name = "slowinit", .handlers = handlers, .init = init};
