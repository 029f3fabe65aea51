/* crunchd.c: main: the command line (-c -p -t -T -v -V), then the master. */
#include "cr_core.h"
#include "conf.h"
#include "log.h"
#include "master.h"
#include "process.h"

#include <getopt.h>
#include <jemalloc/jemalloc.h>

#ifndef CRUNCHD_CONF_PATH
#define CRUNCHD_CONF_PATH "/etc/crunchd/crunchd.conf"
#endif

static void cr_usage(FILE *out)
{
    fprintf(out,
            "Usage: crunchd [-c FILE] [-p PREFIX] [-t | -T] [-v | -V] [-h]\n"
            "\n"
            "  -c FILE    configuration file (default: %s)\n"
            "  -p PREFIX  directory that relative paths in the configuration are\n"
            "             relative to (default: the current directory)\n"
            "  -t         test the configuration and exit\n"
            "  -T         test the configuration, print it with defaults filled in, exit\n"
            "  -v         print the version and exit\n"
            "  -V         print the version, libraries and build options and exit\n"
            "  -h         this help\n"
            "\n"
            "Signals to the master: TERM or INT stop at once, QUIT stops after the\n"
            "tasks in hand, USR1 reopens the log files.\n",
            CRUNCHD_CONF_PATH);
}

/* The allocator is asked, not assumed: mallctl only answers when jemalloc is
 * really the malloc of this process (linked, not preloaded). */
static void cr_print_build(void)
{
    const char *jv = NULL;
    size_t sz = sizeof(jv);
    printf("crunchd version %s\n", PACKAGE_VERSION);
    if (mallctl("version", &jv, &sz, NULL, 0) == 0 && jv)
        printf("malloc: jemalloc %s\n", jv);
    else
        printf("malloc: not jemalloc (mallctl(\"version\") failed)\n");
    printf("gRPC core: %s (libgrpc, used by acceptor processes only)\n", GRPC_CORE_VERSION);
    printf("protobuf-c: %s\n", PROTOBUF_C_VERSION);
    printf("libconfig: %s\n", LIBCONFIG_VERSION);
    printf("default configuration file: %s\n", CRUNCHD_CONF_PATH);
    printf("configure arguments:%s\n", CRUNCHD_CONFIGURE_ARGS);
}

int main(int argc, char **argv)
{
    const char *file = CRUNCHD_CONF_PATH, *prefix = NULL;
    bool test = false, dump = false;
    char pbuf[PATH_MAX], err[1024];
    int opt;
    static cr_conf_t conf;

    cr_role = CR_ROLE_TOOL;
    while ((opt = getopt(argc, argv, "c:p:tTvVh")) != -1) {
        switch (opt) {
        case 'c': file = optarg; break;
        case 'p': prefix = optarg; break;
        case 't': test = true; break;
        case 'T': test = dump = true; break;
        case 'v': printf("crunchd version %s\n", PACKAGE_VERSION); return 0;
        case 'V': cr_print_build(); return 0;
        case 'h': cr_usage(stdout); return 0;
        default: cr_usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "crunchd: unexpected argument \"%s\"; see crunchd -h\n", argv[optind]);
        return 1;
    }
    if (prefix) {
        if (realpath(prefix, pbuf) == NULL) {
            fprintf(stderr, "crunchd: [emerg] prefix %s: %s; give an existing directory "
                    "with -p\n", prefix, strerror(errno));
            return 1;
        }
        prefix = pbuf;
    }

    if (cr_conf_load(&conf, file, prefix, err, sizeof(err)) != CR_OK) {
        fprintf(stderr, "crunchd: [emerg] %s\n", err);
        if (test)
            fprintf(stderr, "crunchd: configuration file %s test failed\n", file);
        return 1;
    }
    if (test) {
        if (dump) {
            printf("# configuration file %s, with defaults filled in:\n", conf.file);
            cr_conf_dump(&conf, stdout);
            fflush(stdout);
        }
        fprintf(stderr, "crunchd: the configuration file %s syntax is ok\n", conf.file);
        fprintf(stderr, "crunchd: configuration file %s test is successful\n", conf.file);
        return 0;
    }

    cr_proctitle_init(argc, argv);
    cr_log_level = conf.log_level;
    if (cr_log_open(conf.error_log) != CR_OK)
        return 1;
    return cr_master_run(&conf);
}
