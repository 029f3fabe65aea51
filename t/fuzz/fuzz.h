/* fuzz.h: what every fuzz target (t/fuzz/fuzz-*.c) shares: the libFuzzer entry
 * points and the check that turns a broken invariant into a crash. */
#ifndef CR_FUZZ_H
#define CR_FUZZ_H

#include "cr_core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant the code under test promises: on violation, say which and
 * abort(), which libFuzzer (and standalone.c's TAP run) report as a crash. */
#define FUZZ_CHECK(cond, ...)                                                 \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__,        \
                    __LINE__, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* A little reader over the input, for targets that take a script: every read
 * past the end gives 0, so any byte string is a valid script. */
typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in_t;

static inline uint8_t fuzz_u8(fuzz_in_t *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(fuzz_in_t *in)
{
    uint16_t v = fuzz_u8(in);
    return (uint16_t)(v | (uint16_t)fuzz_u8(in) << 8);
}

static inline uint32_t fuzz_u32(fuzz_in_t *in)
{
    uint32_t v = fuzz_u16(in);
    return v | (uint32_t)fuzz_u16(in) << 16;
}

static inline uint64_t fuzz_u64(fuzz_in_t *in)
{
    uint64_t v = fuzz_u32(in);
    return v | (uint64_t)fuzz_u32(in) << 32;
}

#endif /* CR_FUZZ_H */
