# crunch_handlers.py: crunchd's built-in handlers and task checks in Python,
# for the baseline servers of bench/run. Same semantics as src/handlers.c and
# rpc_task_check() in src/rpc.c: the same outputs, status codes and error
# texts, byte for byte (bench/run checks this against crunchd itself).
#
# The CPU work is the same plain trial division and count-down gcd as
# crunchd's, written the way a Python team would make it fast (the loops run
# inside C iterators: map/range), never a cleverer algorithm: the point of the
# benchmark is the same work done by different servers.

import math
import time

OK = 0
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
INVALID_ARGUMENT = 3

UINT64_MAX = (1 << 64) - 1
MAX_PAYLOAD = 4 << 20            # crunchd's default max_payload ("4m")
MAX_RECEIVE = MAX_PAYLOAD + 4096  # its default max_receive_message
QUOTE_MAX = 32
SLEEP_MAX_MS = 3600000
HANDLERS = ("echo", "prime", "gcd", "sleep")
_SPACE = b" \t\n\r\v\f"
_DIGITS = b"0123456789"


def _parse_u64(b, pos):
    """One unsigned decimal at b[pos:]; returns (value, end) or None."""
    end = pos
    n = len(b)
    while end < n and b[end] in _DIGITS:
        end += 1
    if end == pos:
        return None
    digits = b[pos:end].lstrip(b"0") or b"0"
    if len(digits) > 20:  # more than UINT64_MAX has (and int() limits long strings)
        return None
    v = int(digits)
    if v > UINT64_MAX:
        return None
    return v, end


def _skip_space(b, pos):
    n = len(b)
    while pos < n and b[pos] in _SPACE:
        pos += 1
    return pos


def _parse_one(b):
    pos = _skip_space(b, 0)
    r = _parse_u64(b, pos)
    if r is None:
        return None
    v, pos = r
    return v if _skip_space(b, pos) == len(b) else None


def _parse_two(b):
    pos = _skip_space(b, 0)
    r = _parse_u64(b, pos)
    if r is None:
        return None
    a, pos = r
    sep = pos
    while pos < len(b) and b[pos] in b" \t":
        pos += 1
    if pos == sep:
        return None
    r = _parse_u64(b, pos)
    if r is None:
        return None
    c, pos = r
    return (a, c) if _skip_space(b, pos) == len(b) else None


def _quote(b):
    """handler_error()'s `, got "..."` suffix."""
    q = b[:QUOTE_MAX]
    out = []
    for c in q:
        if c in (0x22, 0x5C):
            out.append("\\" + chr(c))
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    s = ', got "' + "".join(out)
    if len(q) < len(b):
        return s + '" (first %d of %d bytes)' % (QUOTE_MAX, len(b))
    return s + '"'


def is_prime(n):
    """Trial division by every odd i with i <= n / i, as crunchd's is_prime()."""
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    # i <= n // i  <=>  i <= isqrt(n); 0 in map(...) stops at the first divisor.
    return 0 not in map(n.__mod__, range(3, math.isqrt(n) + 1, 2))


def slow_gcd(a, b):
    if a == 0:
        return b
    if b == 0:
        return a
    for i in range(min(a, b), 1, -1):
        if a % i == 0 and b % i == 0:
            return i
    return 1


def h_echo(p):
    return OK, bytes(p)


def h_prime(p):
    n = _parse_one(p)
    if n is None:
        return INVALID_ARGUMENT, ("prime: payload must be a decimal integer from 0 to %d"
                                  % UINT64_MAX + _quote(p)).encode()
    return OK, (b"true" if is_prime(n) else b"false")


def h_gcd(p):
    ab = _parse_two(p)
    if ab is None:
        return INVALID_ARGUMENT, ('gcd: payload must be two decimal integers from 0 to %d'
                                  ' separated by spaces, like "12 18"' % UINT64_MAX
                                  + _quote(p)).encode()
    return OK, str(slow_gcd(*ab)).encode()


def h_sleep(p):
    ms = _parse_one(p)
    if ms is None or ms > SLEEP_MAX_MS:
        return INVALID_ARGUMENT, ("sleep: payload must be a number of milliseconds from 0 to %d"
                                  % SLEEP_MAX_MS + _quote(p)).encode()
    time.sleep(ms / 1000.0)
    return OK, b""


TABLE = {"echo": h_echo, "prime": h_prime, "gcd": h_gcd, "sleep": h_sleep}


def _printable(name, size=72):
    """rpc_printable(): non-printable bytes as '?', cut with '...'."""
    b = name.encode("utf-8", "surrogateescape")
    mx = size - 4
    s = "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in b[:mx])
    return s + "..." if len(b) > mx else s


def check(handler, payload_len):
    """rpc_task_check(): None when the task may run, else (code, message)."""
    if handler not in TABLE:
        return NOT_FOUND, 'unknown handler "%s"; known handlers: %s' % (
            _printable(handler), ", ".join(HANDLERS))
    if payload_len > MAX_PAYLOAD:
        return INVALID_ARGUMENT, ("payload is %d bytes; max_payload is %d bytes (raise "
                                  "max_payload in crunchd.conf or send less)"
                                  % (payload_len, MAX_PAYLOAD))
    return None


def run(handler, payload):
    """Run a checked task: (code, output bytes, or error text bytes)."""
    return TABLE[handler](payload)


def expired_text(task_id, handler, waited_ms):
    return ("task %d (handler %s) waited %d ms in the queue and its deadline passed; it "
            "was not run (add workers or raise the deadline)" % (task_id, handler, waited_ms))
