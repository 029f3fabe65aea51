/* test_handlers.c: the built-in handlers (echo, prime, gcd, sleep), the table and cr_buf.
 */
#include "handlers.h"
#include "shm.h"
#include "tap.h"

static cr_buf_t out;

/* Run handler `name` on a C string; returns its status, output in `out`. */
static int run(const char *name, const char *in)
{
    uint32_t h = cr_handler_find(name, strlen(name));

    if (h == CR_NONE) {
        tap_diag("no handler %s", name);
        return -1;
    }
    cr_buf_reset(&out);
    return cr_handlers[h].run((const uint8_t *)in, strlen(in), &out);
}

static const char *text(void)
{
    return out.data ? (const char *)out.data : "";
}

static void run_is(const char *name, const char *in, int code, const char *want,
                   const char *what)
{
    int rc = run(name, in);

    if (!ok(rc == code && out.len == strlen(want) && strcmp(text(), want) == 0, "%s",
            what))
        tap_diag("status %d (want %d), output '%s' (want '%s')", rc, code, text(), want);
}

/* A payload as a test name: TAP names must stay on one line. */
static const char *shown(const char *in)
{
    static char buf[128];
    size_t n = 0;

    for (; *in && n < sizeof(buf) - 5; in++) {
        if (*in == '\n' || *in == '\r' || *in == '\t')
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\%c",
                                  *in == '\n'   ? 'n'
                                  : *in == '\r' ? 'r'
                                                : 't');
        else
            buf[n++] = *in;
    }
    buf[n] = '\0';
    return buf;
}

static uint64_t euclid(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void test_buf(void)
{
    cr_buf_t b = {0};
    char big[300];

    ok(cr_buf_append(&b, "abc", 3) == CR_OK && b.len == 3 &&
           memcmp(b.data, "abc", 3) == 0,
       "buf: append to a zeroed buffer (max 0 = no limit)");
    ok(b.data[b.len] == '\0', "buf: kept NUL-terminated");
    ok(cr_buf_printf(&b, "-%d-%s", 42, "x") == CR_OK &&
           strcmp((char *)b.data, "abc-42-x") == 0,
       "buf: printf appends");
    ok(cr_buf_append(&b, NULL, 0) == CR_OK && b.len == 8, "buf: append nothing");
    memset(big, 'z', sizeof(big));
    ok(cr_buf_append(&b, big, sizeof(big)) == CR_OK && b.len == 308 && b.cap > 308,
       "buf: grows");
    cr_buf_reset(&b);
    ok(b.len == 0 && b.data != NULL && b.data[0] == '\0', "buf: reset keeps the memory");
    cr_buf_free(&b);
    ok(b.data == NULL && b.len == 0 && b.cap == 0, "buf: free");
    cr_buf_free(&b);
    ok(1, "buf: free twice is harmless");

    b.max = 10;
    ok(cr_buf_append(&b, "0123456789", 10) == CR_OK && b.len == 10,
       "buf max: exactly max fits");
    ok(cr_buf_append(&b, "x", 1) == CR_ERROR, "buf max: one byte more fails");
    ok(b.len == 10 && memcmp(b.data, "0123456789", 10) == 0 && b.data[10] == '\0',
       "buf max: a failed append leaves the buffer as it was");
    ok(cr_buf_printf(&b, "%s", "y") == CR_ERROR && b.len == 10,
       "buf max: printf fails too");
    ok(cr_buf_append(&b, NULL, 0) == CR_OK, "buf max: nothing still fits");
    cr_buf_reset(&b);
    ok(cr_buf_printf(&b, "%s", "01234567890") == CR_ERROR && b.len == 0,
       "buf max: printf longer than max fails whole");
    ok(cr_buf_printf(&b, "%05d%05d", 1, 2) == CR_OK &&
           strcmp((char *)b.data, "0000100002") == 0,
       "buf max: printf of exactly max");
    ok(cr_buf_append(&b, "x", SIZE_MAX) == CR_ERROR, "buf max: a huge length fails");
    cr_buf_free(&b);
    b.max = 0;
    ok(cr_buf_append(&b, "x", SIZE_MAX) == CR_ERROR && b.len == 0,
       "buf: a length that would overflow fails without a limit too");
    cr_buf_free(&b);
}

static void test_table(void)
{
    char list[64], small[8];

    is_int(cr_nhandlers, 4, "table: four built-ins");
    is_int(cr_handler_find("echo", 4), 0, "find: echo is 0");
    is_int(cr_handler_find("prime", 5), 1, "find: prime is 1");
    is_int(cr_handler_find("gcd", 3), 2, "find: gcd is 2");
    is_int(cr_handler_find("sleep", 5), 3, "find: sleep is 3");
    is_int(cr_handler_find("primes", 5), 1, "find: uses len, not the NUL");
    is_int(cr_handler_find("prim", 4), CR_NONE, "find: prefix is not a match");
    is_int(cr_handler_find("primes", 6), CR_NONE, "find: longer name");
    is_int(cr_handler_find("", 0), CR_NONE, "find: empty name");
    is_int(cr_handler_find("ECHO", 4), CR_NONE, "find: case matters");
    cr_handler_list(list, sizeof(list));
    is_str(list, "echo, prime, gcd, sleep", "list");
    cr_handler_list(small, sizeof(small));
    is_str(small, "echo, p", "list: cut to the buffer");
    small[0] = 'X';
    cr_handler_list(small, 0);
    ok(small[0] == 'X', "list: zero length writes nothing");
}

static void test_echo(void)
{
    static const uint8_t bin[] = {'a', 0, 0xff, '\n'};
    uint32_t h = cr_handler_find("echo", 4);

    run_is("echo", "hi", CR_STATUS_OK, "hi", "echo: hi");
    run_is("echo", "", CR_STATUS_OK, "", "echo: empty");
    cr_buf_reset(&out);
    ok(cr_handlers[h].run(bin, sizeof(bin), &out) == CR_STATUS_OK && out.len == 4 &&
           memcmp(out.data, bin, 4) == 0,
       "echo: binary bytes unchanged");

    out.max = 3;
    ok(run("echo", "abcd") == CR_STATUS_RESOURCE_EXHAUSTED,
       "echo: output over max fails");
    ok(out.len <= 3, "echo: nothing over max is written");
    run_is("echo", "abc", CR_STATUS_OK, "abc", "echo: output of exactly max");
    out.max = 100;
    ok(run("echo", "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopq"
                   "rstuvwxyz"
                   "abcdefghijklmnopqrstuvwxyz") == CR_STATUS_RESOURCE_EXHAUSTED &&
           strcmp(
               text(),
               "echo: the output of 104 bytes is larger than max_payload (100 bytes)") ==
               0,
       "echo: message says why");
    out.max = 0;
}

#define PRIME_ERR                                                                        \
    "prime: payload must be a decimal integer from 0 to 18446744073709551615, got "

static void test_prime(void)
{
    static const char *primes[] = {"112272535095293", "112582705942171",
                                   "115280095190773", "115797848077099"};
    static const struct {
        const char *in;
        const char *want;
    } small[] = {
        {"0", "false"},
        {"1", "false"},
        {"2", "true"},
        {"3", "true"},
        {"4", "false"},
        {"9", "false"},
        {"25", "false"},
        {"97", "true"},
        {"7919", "true"},
        {"7921", "false"},       /* 89 * 89: the i <= n / i bound is inclusive */
        {"4294967291", "true"},  /* largest prime below 2^32 */
        {"4294967297", "false"}, /* 641 * 6700417 */
        {"18446744073709551615", "false"}, /* 2^64 - 1: no overflow in the loop bound */
        {"000013", "true"},
        {" 13", "true"},
        {"13\n", "true"},
        {"\t 13 \r\n", "true"},
    };
    char name[96];

    for (unsigned i = 0; i < cr_nelem(primes); i++) {
        snprintf(name, sizeof(name), "prime: seed %s is prime", primes[i]);
        run_is("prime", primes[i], CR_STATUS_OK, "true", name);
    }
    run_is("prime", "1099726899285419", CR_STATUS_OK, "false",
           "prime: seed 1099726899285419 is not prime");
    for (unsigned i = 0; i < cr_nelem(small); i++) {
        snprintf(name, sizeof(name), "prime: \"%s\" is %s", shown(small[i].in),
                 small[i].want);
        run_is("prime", small[i].in, CR_STATUS_OK, small[i].want, name);
    }

    run_is("prime", "abc", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"abc\"",
           "prime: letters");
    run_is("prime", "", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"\"", "prime: empty");
    run_is("prime", "  ", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"  \"",
           "prime: only spaces");
    run_is("prime", "-7", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"-7\"",
           "prime: negative");
    run_is("prime", "+7", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"+7\"",
           "prime: plus sign");
    run_is("prime", "7.0", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"7.0\"",
           "prime: decimal point");
    run_is("prime", "1 2", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"1 2\"",
           "prime: two numbers");
    run_is("prime", "0x11", CR_STATUS_INVALID_ARGUMENT, PRIME_ERR "\"0x11\"",
           "prime: hex");
    run_is("prime", "18446744073709551616", CR_STATUS_INVALID_ARGUMENT,
           PRIME_ERR "\"18446744073709551616\"", "prime: 2^64 overflows");
    run_is("prime", "99999999999999999999999", CR_STATUS_INVALID_ARGUMENT,
           PRIME_ERR "\"99999999999999999999999\"", "prime: far beyond u64");
    run_is("prime", "a\"b\\c\x01\x7f\xc3\xa9", CR_STATUS_INVALID_ARGUMENT,
           PRIME_ERR "\"a\\\"b\\\\c\\x01\\x7f\\xc3\\xa9\"",
           "prime: non-printables escaped");
    run_is("prime", "0123456789012345678901234567890123456789",
           CR_STATUS_INVALID_ARGUMENT,
           PRIME_ERR "\"01234567890123456789012345678901\" (first 32 of 40 bytes)",
           "prime: at most 32 bytes quoted");
    {
        static const uint8_t nul[] = {'1', '3', 0};
        cr_buf_reset(&out);
        ok(cr_handlers[cr_handler_find("prime", 5)].run(nul, sizeof(nul), &out) ==
                   CR_STATUS_INVALID_ARGUMENT &&
               strcmp(text(), PRIME_ERR "\"13\\x00\"") == 0,
           "prime: a NUL byte is not whitespace");
    }
    out.max = 20;
    ok(run("prime", "abc") == CR_STATUS_INVALID_ARGUMENT && out.len == 20 &&
           memcmp(out.data, PRIME_ERR, 20) == 0,
       "prime: error message cut to max");
    out.max = 4;
    ok(run("prime", "4") == CR_STATUS_RESOURCE_EXHAUSTED,
       "prime: \"false\" over a max of 4");
    out.max = 0;
}

#define GCD_ERR                                                                          \
    "gcd: payload must be two decimal integers from 0 to 18446744073709551615 "          \
    "separated by spaces, like \"12 18\", got "

static void test_gcd(void)
{
    static const char *seeds[] = {"1963309 2265973", "2030677 3814172", "1551645 2229620",
                                  "2039045 2020802"};
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"12 18", "6"},
        {"18 12", "6"},
        {"7 7", "7"},
        {"1 1", "1"},
        {"17 5", "1"},
        {"0 5", "5"},
        {"5 0", "5"},
        {"0 0", "0"},
        {"1 18446744073709551615", "1"},
        {"18446744073709551615 0", "18446744073709551615"},
        {"  12    18  ", "6"},
        {"12\t18", "6"},
        {"\n12 18\n", "6"},
    };
    char name[96], want[32];

    for (unsigned i = 0; i < cr_nelem(seeds); i++) {
        uint64_t a, b;
        sscanf(seeds[i], "%" SCNu64 " %" SCNu64, &a, &b);
        snprintf(want, sizeof(want), "%" PRIu64, euclid(a, b));
        snprintf(name, sizeof(name), "gcd: seed \"%s\" = %s (Euclid)", seeds[i], want);
        run_is("gcd", seeds[i], CR_STATUS_OK, want, name);
    }
    for (unsigned i = 0; i < cr_nelem(cases); i++) {
        snprintf(name, sizeof(name), "gcd: \"%s\" = %s", shown(cases[i].in),
                 cases[i].want);
        run_is("gcd", cases[i].in, CR_STATUS_OK, cases[i].want, name);
    }

    run_is("gcd", "12", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"12\"", "gcd: one number");
    run_is("gcd", "12 ", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"12 \"",
           "gcd: one number, space");
    run_is("gcd", "", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"\"", "gcd: empty");
    run_is("gcd", "1 2 3", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"1 2 3\"",
           "gcd: three numbers");
    run_is("gcd", "12,18", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"12,18\"", "gcd: comma");
    run_is("gcd", "12 -18", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"12 -18\"",
           "gcd: negative");
    run_is("gcd", "a b", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"a b\"", "gcd: letters");
    run_is("gcd", "12\n18", CR_STATUS_INVALID_ARGUMENT, GCD_ERR "\"12\\x0a18\"",
           "gcd: a newline does not separate");
    run_is("gcd", "18446744073709551616 2", CR_STATUS_INVALID_ARGUMENT,
           GCD_ERR "\"18446744073709551616 2\"", "gcd: first overflows");
    run_is("gcd", "2 18446744073709551616", CR_STATUS_INVALID_ARGUMENT,
           GCD_ERR "\"2 18446744073709551616\"", "gcd: second overflows");
}

#define SLEEP_ERR                                                                        \
    "sleep: payload must be a number of milliseconds from 0 to 3600000, got "

static void test_sleep(void)
{
    uint64_t t0, dt;

    t0 = cr_now_ns();
    run_is("sleep", "50", CR_STATUS_OK, "", "sleep: 50 ms");
    dt = cr_now_ns() - t0;
    ok(dt >= 50000000u && dt < 2000000000u, "sleep: took about 50 ms (%" PRIu64 " us)",
       dt / 1000);
    t0 = cr_now_ns();
    run_is("sleep", "0", CR_STATUS_OK, "", "sleep: 0 ms");
    ok(cr_now_ns() - t0 < 1000000000u, "sleep: 0 returns at once");
    run_is("sleep", " 1\n", CR_STATUS_OK, "", "sleep: whitespace around");

    run_is("sleep", "3600001", CR_STATUS_INVALID_ARGUMENT, SLEEP_ERR "\"3600001\"",
           "sleep: above an hour");
    run_is("sleep", "18446744073709551616", CR_STATUS_INVALID_ARGUMENT,
           SLEEP_ERR "\"18446744073709551616\"", "sleep: overflow");
    run_is("sleep", "-1", CR_STATUS_INVALID_ARGUMENT, SLEEP_ERR "\"-1\"",
           "sleep: negative");
    run_is("sleep", "1.5", CR_STATUS_INVALID_ARGUMENT, SLEEP_ERR "\"1.5\"",
           "sleep: fraction");
    run_is("sleep", "", CR_STATUS_INVALID_ARGUMENT, SLEEP_ERR "\"\"", "sleep: empty");
    run_is("sleep", "1s", CR_STATUS_INVALID_ARGUMENT, SLEEP_ERR "\"1s\"", "sleep: unit");
}

int main(void)
{
    test_buf();
    test_table();
    test_echo();
    test_prime();
    test_gcd();
    test_sleep();
    cr_buf_free(&out);
    return tap_done();
}
