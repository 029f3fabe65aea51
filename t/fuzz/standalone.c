/* standalone.c: a main for the fuzz targets when libFuzzer is not linked: it
 * feeds every file of the seed corpus and of the regression directory to
 * LLVMFuzzerTestOneInput, one TAP line per file, so that `make check` replays
 * every saved input in every build (gcc, sanitizers, valgrind).
 *
 *   t/fuzz/fuzz-conf                 replays corpus/conf and regress/conf
 *   t/fuzz/fuzz-conf FILE|DIR...     replays those instead (a crash reproducer)
 *
 * A target reports a broken invariant by abort(), so a failure is the process
 * dying (the TAP driver then says which file was running: it is printed
 * before the call). */
#include "fuzz.h"

#include <dirent.h>
#include <sys/stat.h>

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET (conf, task or shm) must be defined"
#endif
#ifndef FUZZ_SRCDIR
#define FUZZ_SRCDIR "."
#endif

/* A target may define it (libFuzzer calls it once, before any input). */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

typedef struct {
    char **v;
    size_t n, cap;
} paths_t;

static int path_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void paths_add(paths_t *p, const char *path)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->v = realloc(p->v, p->cap * sizeof(*p->v));
        if (p->v == NULL)
            abort();
    }
    p->v[p->n] = strdup(path);
    if (p->v[p->n] == NULL)
        abort();
    p->n++;
}

/* Regular files of dir (not recursive, dot files skipped), or the path itself.
 * Returns -1 if it does not exist. */
static int paths_collect(paths_t *p, const char *path)
{
    struct stat st;
    struct dirent *e;
    DIR *d;
    char buf[PATH_MAX];
    size_t first = p->n;

    if (stat(path, &st) == -1)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        paths_add(p, path);
        return 0;
    }
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(buf, sizeof(buf), "%s/%s", path, e->d_name);
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode))
            paths_add(p, buf);
    }
    closedir(d);
    qsort(p->v + first, p->n - first, sizeof(*p->v), path_cmp);
    return 0;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0, r;

    if (f == NULL)
        return NULL;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    paths_t p = {0};
    int failed = 0;

    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            if (paths_collect(&p, argv[i]) == -1) {
                fprintf(stderr, "%s: %s: %s\n", argv[0], argv[i], strerror(errno));
                return 2;
            }
        }
    } else {
        /* The corpus must be there: an empty run would pass having tested
         * nothing. The regression directory may be empty (or absent). */
        if (paths_collect(&p, FUZZ_SRCDIR "/t/fuzz/corpus/" FUZZ_TARGET) == -1 || p.n == 0) {
            printf("Bail out! %s/t/fuzz/corpus/%s is missing or empty\n", FUZZ_SRCDIR,
                   FUZZ_TARGET);
            return 1;
        }
        (void)paths_collect(&p, FUZZ_SRCDIR "/t/fuzz/regress/" FUZZ_TARGET);
    }

    printf("1..%zu\n", p.n);
    fflush(stdout);
    for (size_t i = 0; i < p.n; i++) {
        size_t len = 0;
        uint8_t *data = read_all(p.v[i], &len);

        if (data == NULL) {
            printf("not ok %zu - %s: %s\n", i + 1, p.v[i], strerror(errno));
            failed++;
            free(p.v[i]);
            continue;
        }
        /* Said first: if the input kills the process, the log names it. */
        printf("# %s (%zu bytes)\n", p.v[i], len);
        fflush(stdout);
        LLVMFuzzerTestOneInput(data, len);
        printf("ok %zu - %s\n", i + 1, p.v[i]);
        fflush(stdout);
        free(data);
        free(p.v[i]);
    }
    free(p.v);
    return failed ? 1 : 0;
}
