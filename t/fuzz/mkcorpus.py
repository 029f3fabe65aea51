#!/usr/bin/python3
"""mkcorpus.py: write the seed corpus of the fuzz targets (t/fuzz/corpus/).

Run once from anywhere; the outputs are committed (they are test data):

    /usr/bin/python3 t/fuzz/mkcorpus.py

- corpus/conf: the shipped conf/crunchd.conf, every broken file of
  t/test_badconf.py (BROKEN, built the way t/test_config.py's _broken_file did), a file
  setting everything, and a few written here (includes, syntax traps).
- corpus/task: a settings byte (see fuzz-task.c) and a protobuf message: a
  valid Task for every handler, malformed ones, and the other requests an
  acceptor decodes. Encoded by hand here, so no generated stubs are needed.
- corpus/shm: operation scripts for fuzz-shm.c (opcodes below).

Existing files of a directory are replaced; t/fuzz/regress/ is never touched.
"""
import ast
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def reset(name):
    d = os.path.join(HERE, "corpus", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def put(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- conf --------------------------------------------------------------------

def broken_cases():
    """BROKEN of t/test_badconf.py (earlier t/test_config.py), read without
    importing it (it needs the test fixture): the list is evaluated with P
    bound as there."""
    for name in ("test_badconf.py", "test_config.py"):
        path = os.path.join(TOP, "t", name)
        if not os.path.exists(path):
            continue
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BROKEN":
                return eval(compile(ast.Expression(node.value), name, "eval"),
                            {"P": "{port}", "os": os, "MODULES": "/nonexistent/modules"})
    raise SystemExit("BROKEN not found in t/test_badconf.py or t/test_config.py")


def broken_text(lines, port=50051):
    # as _broken_file in t/test_config.py did
    has_listen = any(l.startswith("listen") for l in lines)
    head = ["# crunchd test config: one mistake, on a known line", ""]
    if not has_listen:
        head.append('listen = [ "127.0.0.1:%d" ];' % port)
    head += ["# the line after the next comment is wrong", "acceptors = 1;"
             if not any(l.startswith("acceptors") for l in lines) else "# (acceptors below)", ""]
    body = [l.replace("{port}", str(port)) for l in lines]
    tail = ["", "# valid settings after the mistake", 'log_level = "info";'
            if not any(l.startswith("log_level") for l in lines) else "# -"]
    return "\n".join(head + body + tail) + "\n"


EVERYTHING = """\
listen = (
  "127.0.0.1:50051",
  "[::1]:50052",
  { address = "127.0.0.1:50053";
    tls = { cert = "/etc/passwd"; key = "/etc/passwd"; client_ca = "/etc/passwd"; verify_client = true; }; },
  { address = "unix:crunchd.sock"; mode = "0660"; group = "root"; }
);
acceptors = 2;
workers = "auto";
queue_capacity = 4096;
shm_size = "128m";
max_payload = "1m";
queue_wait_ms = 250;
pid_file = "run/crunchd.pid";
error_log = "stderr";
log_level = "debug";
access_log = "access.log";
task_timeout_ms = 0;
task_retries = 2;
worker_max_tasks = 4294967295;
respawn_burst = 9;
respawn_window_ms = 500;
worker_rlimit_nofile = 4096;
worker_rlimit_core = "unlimited";
worker_cpu_affinity = "auto";
modules = ( { path = "modules/sha256.so"; config = "rounds=2"; } );
max_receive_message = "8m";
max_concurrent_streams = 50;
keepalive_time_ms = 60000;
keepalive_timeout_ms = 5000;
max_connection_idle_ms = 120000;
max_connection_age_ms = 2000;
max_connection_age_grace_ms = 0;
stream_max_pending = 7;
updates_capacity = 100;
shutdown_timeout_ms = 5000;
max_draining_generations = 2;
daemon = false;
user = "root";
group = "root";
"""

CONF_EXTRA = {
    "minimal.conf": 'listen = [ "127.0.0.1:50051" ];\n',
    "include.conf": '@include "inc.conf"\nlisten = [ "127.0.0.1:50051" ];\n',
    "include-nested.conf": '@include "nested.conf"\nlisten = [ "unix:x.sock" ];\n',
    "include-missing.conf": '@include "no-such.conf"\nlisten = [ "127.0.0.1:1" ];\n',
    "include-self.conf": '@include "/dev/null"\nlisten = [ "127.0.0.1:1" ];\n',
    "open-string.conf": 'listen = [ "127.0.0.1:50051" ];\nlog_level = "info;\nworkers = 2;\n',
    "open-comment.conf": 'listen = [ "127.0.0.1:50051" ];\n/* workers = 2;\n',
    "escapes.conf": 'listen = [ "127.0.0.1:50051" ];\npid_file = "a\\"b\\\\c\\td\\x41.pid";\n',
    "sizes.conf": 'listen = [ "127.0.0.1:1" ];\nshm_size = 65536;\nmax_payload = "32k";\n'
                  'max_receive_message = "36k";\n',
    "int64.conf": 'listen = [ "127.0.0.1:1" ];\nworker_max_tasks = 4294967295L;\n'
                  'queue_capacity = 0x400;\n',
    "v6.conf": 'listen = [ "[::]:50051", "[fe80::1%lo]:7", "0.0.0.0:0" ];\n',
}


def conf():
    d = reset("conf")
    shutil.copy(os.path.join(TOP, "conf", "crunchd.conf"), os.path.join(d, "shipped.conf"))
    for case in broken_cases():
        put(d, "broken-%s.conf" % case[0], broken_text(case[1]))
    put(d, "everything.conf", EVERYTHING)
    for name, text in CONF_EXTRA.items():
        put(d, name, text)


# --- task --------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, value):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return key + varint(len(value)) + value


def task(id=0, handler=None, payload=None, timeout_ms=0):
    b = b""
    if id:
        b += field(1, 0, id)
    if handler is not None:
        b += field(2, 2, handler)
    if payload is not None:
        b += field(3, 2, payload)
    if timeout_ms:
        b += field(4, 0, timeout_ms)
    return b


# settings byte of fuzz-task.c: bits 0-1 max_payload (0, 16, 4096, 4m),
# bit 2 call deadline, bit 3 passed, bit 4 module handlers published
M4K, M4M, DL, PASSED, MODS = 2, 3, 4, 8, 16

TASKS = {
    "echo": (M4M | DL, task(7, "echo", b"hi")),
    "echo-empty": (M4M, task(1, "echo", b"")),
    "echo-too-big": (1, task(2, "echo", b"x" * 17)),
    "echo-binary": (M4K, task(3, "echo", bytes(range(256)))),
    "prime": (M4M | DL, task(8, "prime", b"112272535095293")),
    "prime-small": (M4K, task(9, "prime", b" 97\n", 1000)),
    "prime-max": (M4K, task(10, "prime", b"18446744073709551615")),
    "prime-overflow": (M4K, task(11, "prime", b"18446744073709551616")),
    "prime-junk": (M4K, task(12, "prime", b"abc")),
    "prime-sign": (M4K, task(13, "prime", b"-7")),
    "gcd": (M4M, task(14, "gcd", b"1963309 2265973")),
    "gcd-small": (M4K | DL, task(15, "gcd", b"12\t18", 5)),
    "gcd-one": (M4K, task(16, "gcd", b"12")),
    "gcd-newline": (M4K, task(17, "gcd", b"12\n18")),
    "sleep-0": (M4K, task(18, "sleep", b"0")),
    "sleep-10": (M4K, task(19, "sleep", b"10")),
    "sleep-too-long": (M4K, task(20, "sleep", b"3600001")),
    "unknown": (M4K, task(21, "nope", b"1")),
    "unknown-binary": (M4K, task(22, "\x01\x7f\xc3\xa9" * 30, b"")),
    "no-handler": (M4K, task(23)),
    "module": (M4K | MODS, task(24, "sha256", b"abc")),
    "module-unpublished": (M4K, task(25, "sha256", b"abc")),
    "deadline-passed": (M4K | DL | PASSED, task(26, "echo", b"x", 10)),
    "timeout-max": (M4K | DL, task(2**64 - 1, "echo", b"x", 2**32 - 1)),
    "small-limit-error": (1, task(27, "prime", b"not a number at all")),
    "unknown-fields": (M4K, task(28, "echo", b"y") + field(9, 2, b"zz") + field(10, 0, 5)),
    "repeated-handler": (M4K, task(29, "nope", b"1") + field(2, 2, "echo")),
    "truncated-varint": (M4K, b"\x08\xff\xff"),
    "truncated-length": (M4K, b"\x12\x10echo"),
    "wrong-wire-type": (M4K, b"\x10\x05"),
    "bad-utf8-handler": (M4K, field(2, 2, b"\xff\xfe")),
    "updates": (0, field(1, 0, 100)),
    "health": (0, field(1, 2, "crunch.v1.Crunch")),
    "reflection-list": (0, field(7, 2, "")),
    "reflection-symbol": (0, field(1, 2, "localhost") + field(4, 2, "crunch.v1.Crunch")),
    "reflection-file": (0, field(3, 2, "crunch/v1/crunch.proto")),
}


def tasks():
    d = reset("task")
    for name, (flags, body) in TASKS.items():
        put(d, name, bytes([flags]) + body)


# --- shm ---------------------------------------------------------------------
# fuzz-shm.c: header (capacity, acceptors, arena/max block, retries/feed), then
# opcodes (byte % 11): 0/1 submit(acc, len16), 2 submit to the feed(acc,
# len16), 3 take(worker), 4 finish(pick, how, len16), 5 result_take(acc, n),
# 6 release(pick), 7 cancel(pick), 8 subscribe(acc, how), 9 reap worker(w,
# timed_out), 10 reap acceptor(acc)

def submit(acc, n):
    return struct.pack("<BBH", 0, acc, n)


def feed_submit(acc, n):
    return struct.pack("<BBH", 2, acc, n)


def take(w):
    return bytes([3, w])


def finish(pick, how, n):
    return struct.pack("<BBBH", 4, pick, how, n)


def results(acc, n):
    return bytes([5, acc, n])


def release(pick):
    return bytes([6, pick])


def cancel(pick):
    return bytes([7, pick])


def subscribe(acc, how):
    return bytes([8, acc, how])


def reap_worker(w, timed_out):
    return bytes([9, w, timed_out])


def reap_acceptor(acc):
    return bytes([10, acc])


def cycle(acc, n, out):
    return submit(acc, n) + take(0) + finish(0, 0, out) + results(acc, 3) + release(0)


SHM = {
    "basic": bytes([7, 0, 2, 0]) + cycle(0, 10, 20) + cycle(0, 0, 0),
    "large": bytes([3, 1, 4, 0]) + submit(0, 5000) + submit(1, 6000) + take(0) + take(1)
    + finish(0, 0, 8000) + finish(0, 1, 100) + results(0, 3) + results(1, 3)
    + release(0) + release(0),
    "full": bytes([1, 0, 0, 0]) + submit(0, 10) + submit(0, 10) + take(0) + finish(0, 0, 2000)
    + results(0, 1) + release(0) + submit(0, 2000),
    "cancel": bytes([4, 0, 2, 0]) + submit(0, 1) + submit(0, 2) + submit(0, 3) + cancel(0)
    + take(0) + cancel(0) + finish(0, 0, 5) + take(1) + finish(0, 0, 6) + cancel(0)
    + results(0, 3) + release(0),
    "reap-worker-retry": bytes([4, 0, 2, 2]) + submit(0, 100) + take(1) + reap_worker(1, 0)
    + take(2) + reap_worker(2, 0) + take(0) + reap_worker(0, 0) + results(0, 2) + release(0),
    "reap-worker-timeout": bytes([4, 1, 2, 1]) + submit(1, 100) + take(0) + reap_worker(0, 1)
    + results(1, 2) + release(0),
    "reap-acceptor": bytes([8, 2, 2, 0]) + submit(0, 10) + submit(1, 10) + submit(0, 20)
    + take(0) + take(1) + finish(0, 0, 30) + results(0, 1) + reap_acceptor(0) + take(2)
    + finish(0, 0, 7) + finish(0, 0, 7) + results(1, 4) + release(0),
    "feed": bytes([8, 0, 2, 0x31]) + feed_submit(0, 10) + feed_submit(0, 20) + take(0)
    + finish(0, 0, 40) + subscribe(0, 0) + subscribe(0, 1) + subscribe(0, 0)
    + subscribe(0, 0) + take(1) + finish(0, 0, 5000) + subscribe(0, 0) + subscribe(0, 0),
    "feed-reap": bytes([8, 1, 2, 0x72]) + feed_submit(0, 10) + feed_submit(1, 10) + take(0)
    + reap_acceptor(0) + finish(0, 0, 3) + take(1) + reap_worker(1, 0) + subscribe(1, 0)
    + reap_acceptor(1) + subscribe(0, 0) + subscribe(0, 0),
    "mixed": bytes([16, 2, 3, 0x11]) + b"".join(
        submit(i % 3, 37 * i) + feed_submit(i % 3, 11 * i) + take(i % 3)
        + finish(i, i, 91 * i) + results(i % 3, 2) + release(i) + cancel(i)
        + subscribe(i % 3, i) for i in range(12)),
}


def shm():
    d = reset("shm")
    for name, script in SHM.items():
        put(d, name, script)


if __name__ == "__main__":
    conf()
    tasks()
    shm()
