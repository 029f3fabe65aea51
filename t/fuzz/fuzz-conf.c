/* fuzz-conf.c: libFuzzer target for the configuration: file bytes in, through
 * what `crunchd -t` and `crunchd -T` do (cr_conf_load_string: parse and
 * validate in full; cr_conf_dump), and what a reload does (cr_conf_diff).
 * Module files are not loaded: -t checks them in a probe child (dlopen). The
 * fuzzer never binds a socket: the loader resolves addresses numerically.
 *
 * Invariants (abort on violation):
 *   - an error is one non-empty line naming FILE:LINE (the error contract of
 *     cr_conf_load in conf.h);
 *   - a configuration that loads can be dumped (-T), the dump loads again, and
 *     the two are the same configuration (cr_conf_diff == 0) with the same
 *     dump: what -T prints is what crunchd runs with.
 * ASan's leak check covers libconfig's and the loader's memory. */
#include "conf.h"
#include "fuzz.h"
#include "log.h"

#include <sys/stat.h>

/* libconfig 1.5 (Debian 12) leaks the buffer of a string token that is the
 * syntax error ('"abc";' or '"";' at the top level): its parser drops the
 * token without freeing it. Not crunchd's to fix (each reload with such a
 * file leaks up to a few dozen bytes in the master);
 * t/fuzz/regress/conf/libconfig-* replays it. Only the scanner's token
 * allocations are excused (strbuf_append, and the calloc of an empty string
 * in yylex): a missing config_destroy() would still show through
 * config_setting_create. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:strbuf_append\nleak:libconfig_yylex\n";
}

/* Relative paths and @include resolve against this directory: it holds two
 * small files so that includes (one nested) are reachable from the corpus. */
static char fuzz_prefix[] = "/tmp/crunchd-fuzz-conf.XXXXXX";
static char fuzz_inc[sizeof(fuzz_prefix) + 16], fuzz_nested[sizeof(fuzz_prefix) + 16];

static void fuzz_cleanup(void)
{
    unlink(fuzz_inc);
    unlink(fuzz_nested);
    rmdir(fuzz_prefix);
}

static void fuzz_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(text, f) == EOF || fclose(f) != 0) {
        fprintf(stderr, "fuzz-conf: cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cr_role = CR_ROLE_TOOL;
    cr_log_level = CR_LOG_EMERG; /* the loader does not log; keep it that way */
    if (mkdtemp(fuzz_prefix) == NULL) {
        fprintf(stderr, "fuzz-conf: mkdtemp(%s): %s\n", fuzz_prefix, strerror(errno));
        exit(2);
    }
    snprintf(fuzz_inc, sizeof(fuzz_inc), "%s/inc.conf", fuzz_prefix);
    snprintf(fuzz_nested, sizeof(fuzz_nested), "%s/nested.conf", fuzz_prefix);
    atexit(fuzz_cleanup);
    fuzz_write(fuzz_inc, "workers = 3;\nqueue_capacity = 64;\n");
    fuzz_write(fuzz_nested, "@include \"inc.conf\"\nlog_level = \"warn\";\n");
    return 0;
}

/* cr_conf_t is large (paths, 16 listeners with TLS paths): not on the stack. */
static cr_conf_t conf_a, conf_b;

static void check_error(const char *err)
{
    FUZZ_CHECK(err[0] != '\0', "load failed with an empty message");
    FUZZ_CHECK(strchr(err, '\n') == NULL, "the message is more than one line: %s", err);
    /* the main file's name as given, or an included file's absolute path */
    FUZZ_CHECK(strncmp(err, "fuzz.conf", 9) == 0 || err[0] == '/',
               "the message does not start with the file: %s", err);
}

/* Dump c into a malloc'd string (crunchd -T). */
static char *dump(const cr_conf_t *c, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);

    FUZZ_CHECK(f != NULL, "open_memstream: %s", strerror(errno));
    cr_conf_dump(c, f);
    FUZZ_CHECK(fclose(f) == 0, "fclose");
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024], err2[1024], names[512];
    char *text, *d1, *d2;
    size_t n1, n2;
    unsigned diff;

    if (size > 64 * 1024) /* a config file, not a data set */
        return 0;

    text = malloc(size + 1);
    FUZZ_CHECK(text != NULL, "malloc");
    memcpy(text, data, size);
    text[size] = '\0';

    if (cr_conf_load_string(&conf_a, text, "fuzz.conf", fuzz_prefix, err, sizeof(err)) !=
        CR_OK) {
        check_error(err);
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz-conf: %s\n", err);
        free(text);
        return 0;
    }
    FUZZ_CHECK(conf_a.workers >= 1 && conf_a.workers <= CR_MAX_WORKERS, "workers %u",
               conf_a.workers);
    FUZZ_CHECK(conf_a.acceptors >= 1 && conf_a.acceptors <= CR_MAX_ACCEPTORS,
               "acceptors %u", conf_a.acceptors);
    FUZZ_CHECK(conf_a.nlisten <= CR_MAX_LISTEN, "nlisten %u", conf_a.nlisten);
    FUZZ_CHECK(conf_a.nmodules <= CR_MAX_MODULES, "nmodules %u", conf_a.nmodules);
    FUZZ_CHECK(conf_a.max_payload <= conf_a.shm_size / 2,
               "max_payload %" PRIu64 " > shm_size %" PRIu64 " / 2", conf_a.max_payload,
               conf_a.shm_size);

    /* -T, and loading what it printed: the same configuration. */
    d1 = dump(&conf_a, &n1);
    if (cr_conf_load_string(&conf_b, d1, "fuzz.conf", fuzz_prefix, err2, sizeof(err2)) !=
        CR_OK)
        FUZZ_CHECK(0, "the dump of a valid configuration does not load: %s\n"
                      "--- input:\n%s\n--- dump:\n%s", err2, text, d1);
    diff = cr_conf_diff(&conf_a, &conf_b, names, sizeof(names));
    FUZZ_CHECK(diff == 0, "the dump loads as a different configuration (%s)\n"
                          "--- input:\n%s\n--- dump:\n%s", names, text, d1);
    d2 = dump(&conf_b, &n2);
    FUZZ_CHECK(n1 == n2 && memcmp(d1, d2, n1) == 0,
               "dumping the dump gives another text\n--- first:\n%s\n--- second:\n%s", d1,
               d2);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz-conf: loads, dump of %zu bytes loads the same\n", n1);
    free(d1);
    free(d2);
    free(text);
    return 0;
}
