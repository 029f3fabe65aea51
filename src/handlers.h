/* handlers.h: the handler table and the built-in handlers (echo, prime, gcd, sleep). */
#ifndef CR_HANDLERS_H
#define CR_HANDLERS_H

#include "cr_core.h"

/* Output buffer a handler writes its result (or its error message) into.
 * Grows with jemalloc; the worker copies it into the shared arena. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;   /* a write beyond this fails (max_payload) */
} cr_buf_t;

/* Append bytes. Returns CR_OK, or CR_ERROR when it would exceed b->max or
 * memory ran out (the buffer is left as it was). */
int cr_buf_append(cr_buf_t *b, const void *p, size_t n);
int cr_buf_printf(cr_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cr_buf_vprintf(cr_buf_t *b, const char *fmt, va_list ap);
void cr_buf_reset(cr_buf_t *b);
void cr_buf_free(cr_buf_t *b);

/* A handler: reads `len` bytes of input, writes its output to `out` and returns
 * CR_STATUS_OK, or another CR_STATUS_* code with a message written to `out`
 * that tells the caller what was wrong with the input and what is accepted,
 * e.g. "prime: payload must be a decimal integer in [0, 2^64-1], got 'abc'". */
typedef int (*cr_handler_pt)(const uint8_t *in, size_t len, cr_buf_t *out);

typedef struct {
    const char *name;
    cr_handler_pt run;
} cr_handler_t;

/* The handler table: index = what descriptors carry. */
extern const cr_handler_t cr_handlers[];
extern const unsigned cr_nhandlers;

/* The table of handler names every process shares: built-ins first, then
 * module handlers, append-only (ctl.c points these at the control page;
 * NULL = built-ins only). Index = what task descriptors carry. */
#define CR_HANDLER_NAME_SIZE 64
extern const char (*cr_handler_names)[CR_HANDLER_NAME_SIZE];
extern const uint32_t *cr_handler_count;

/* Names in the table (built-ins and every module handler ever published). */
unsigned cr_handler_total(void);
/* The name of index h, "?" if none. */
const char *cr_handler_name(uint32_t h);

/* Look up a handler by name (len bytes, not NUL-terminated) in the shared
 * table. Returns its index or CR_NONE (0xffffffff). */
uint32_t cr_handler_find(const char *name, size_t len);

/* Write "echo, prime, gcd, sleep, ..." into buf (for NOT_FOUND messages). */
void cr_handler_list(char *buf, size_t len);

#endif /* CR_HANDLERS_H */
