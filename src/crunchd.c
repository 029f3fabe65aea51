/* crunchd.c: main: the command line (-c -p -t -T -s -v -V), then the master. */
#include "cr_core.h"
#include "conf.h"
#include "log.h"
#include "master.h"
#include "module.h"
#include "os.h"
#include "process.h"

#include <getopt.h>
#include <jemalloc/jemalloc.h>

#ifndef CRUNCHD_CONF_PATH
#define CRUNCHD_CONF_PATH "/etc/crunchd/crunchd.conf"
#endif

static void cr_usage(FILE *out)
{
    fprintf(out,
            "Usage: crunchd [-c FILE] [-p PREFIX] [-t | -T | -s SIGNAL] [-v | -V] [-h]\n"
            "\n"
            "  -c FILE    configuration file (default: %s)\n"
            "  -p PREFIX  directory that relative paths in the configuration are\n"
            "             relative to (default: the current directory)\n"
            "  -t         test the configuration and exit\n"
            "  -T         test the configuration, print it with defaults filled in, exit\n"
            "  -s SIGNAL  send SIGNAL to the master named by pid_file, then exit:\n"
            "               reload  re-read the configuration (SIGHUP)\n"
            "               stop    stop at once (SIGTERM)\n"
            "               quit    stop after the calls and tasks in hand (SIGQUIT)\n"
            "               reopen  reopen the log files, after logrotate (SIGUSR1)\n"
            "  -v         print the version and exit\n"
            "  -V         print the version, libraries and build options and exit\n"
            "  -h         this help\n"
            "\n"
            "Signals to the master: HUP reloads, TERM or INT stop at once, QUIT stops\n"
            "after the tasks in hand, USR1 reopens the log files, TTIN and TTOU add and\n"
            "remove a worker.\n",
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
    const char *file = CRUNCHD_CONF_PATH, *prefix = NULL, *action = NULL;
    bool test = false, dump = false;
    char pbuf[PATH_MAX], err[1024];
    int opt;
    static cr_conf_t conf;

    cr_role = CR_ROLE_TOOL;
    while ((opt = getopt(argc, argv, "c:p:tTs:vVh")) != -1) {
        switch (opt) {
        case 'c': file = optarg; break;
        case 'p': prefix = optarg; break;
        case 't': test = true; break;
        case 'T': test = dump = true; break;
        case 's': action = optarg; break;
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
    if (action && cr_os_signal_by_name(action) == -1) {
        fprintf(stderr, "crunchd: invalid option: \"-s %s\"; SIGNAL is one of %s\n\n",
                action, CR_OS_SIGNAL_ACTIONS);
        cr_usage(stderr);
        return 1;
    }
    if (action && test) {
        fprintf(stderr, "crunchd: -s cannot be combined with -t or -T; see crunchd -h\n");
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

    /* -s only needs pid_file; the others will write files: check them too. */
    if ((action ? cr_conf_load : cr_conf_load_run)(&conf, file, prefix, err, sizeof(err)) !=
        CR_OK) {
        fprintf(stderr, "crunchd: [emerg] %s\n", err);
        if (test)
            fprintf(stderr, "crunchd: configuration file %s test failed\n", file);
        return 1;
    }
    if (action)
        return cr_os_signal_master(&conf, action);
    /* Modules: checked in a probe child, at -t and at start alike. */
    if (cr_module_check(&conf, err, sizeof(err)) != CR_OK) {
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
    /* Before the log is opened, so that an unknown user is shown on the
     * terminal like any other configuration error. */
    if (cr_os_user_init(conf.user, conf.group) != CR_OK)
        return 1;
    if (cr_log_open(conf.error_log) != CR_OK)
        return 1;
    /* Children that drop to `user` must be able to reopen the log on SIGUSR1. */
    cr_os_log_owner(cr_log_fd(), conf.error_log);
    if (conf.daemon && getenv("NOTIFY_SOCKET"))
        cr_log(CR_LOG_WARN, 0, "daemon = true under systemd (NOTIFY_SOCKET is set): the "
               "master detaches, so systemd cannot take it for the main process; set "
               "daemon = false in %s for Type=notify or Type=notify-reload", conf.file);
    return cr_master_run(&conf);
}
