# test_crunchctl.py: crunchctl, the command-line client (issue 5): every
# command against a live crunchd, its output formats and its exit statuses
# (0 OK, else the gRPC status code; 2 for usage errors), addresses (TCP,
# unix:, [::1], CRUNCH_ADDR), deadlines, TLS, signals, and valgrind.
#
# Environment: CRUNCHCTL_BIN, the client (default: crunchctl beside
# CRUNCHD_BIN, so <builddir>/src/crunchctl).

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import (BIN, GCD_SEEDS, HANDLERS, PRIME_SEEDS, RPC_TIMEOUT, SCALE, WAIT,
                      free_port, have_ipv6_loopback, wait_for)

CTL = os.environ.get("CRUNCHCTL_BIN") or os.path.join(os.path.dirname(BIN), "crunchctl")
# A crunchctl run that takes longer than this has hung.
PROC_TIMEOUT = 60 * SCALE
USAGE = re.compile(r"^usage: crunchctl ")


@pytest.fixture(autouse=True)
def _have_crunchctl():
    assert os.access(CTL, os.X_OK), \
        "crunchctl not found at %s: build it (make) or set CRUNCHCTL_BIN" % CTL


def ctl_env(extra=None):
    """The environment for crunchctl: no CRUNCH_ADDR, proxy or gRPC tracing
    from whoever runs the tests, unless a test sets them."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CRUNCH_ADDR", "GRPC_VERBOSITY", "GRPC_TRACE")
           and not k.lower().endswith("_proxy")}
    env.update(extra or {})
    return env


def ctl(*args, addr=None, input=b"", env=None, timeout=PROC_TIMEOUT):
    """Run crunchctl [--timeout RPC_TIMEOUT] [-a addr] args to completion.
    stdout stays bytes; stderr is text. A later --timeout in args wins."""
    cmd = [CTL, "--timeout", "%g" % RPC_TIMEOUT]
    if addr is not None:
        cmd += ["-a", addr]
    cmd += list(args)
    if isinstance(input, str):
        input = input.encode()
    r = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=ctl_env(env), timeout=timeout)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout,
                                       r.stderr.decode(errors="replace"))


def one_error_line(r, prefix):
    """r's stderr is exactly one line, starting with prefix; returns it."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, "expected one line on stderr, got: %r" % r.stderr
    assert lines[0].startswith(prefix), "stderr %r does not start with %r" % (lines[0], prefix)
    return lines[0]


def result_lines(out):
    """{id: output bytes} of stream/updates stdout lines ID<TAB>OUTPUT."""
    got = {}
    for line in out.splitlines():
        id_, _, output = line.partition(b"\t")
        assert id_.isdigit(), "not an ID<TAB>OUTPUT line: %r" % line
        assert int(id_) not in got, "id %s twice" % id_
        got[int(id_)] = output
    return got


class LineReader:
    """Lines of a pipe, read by a thread, for waits with a timeout."""

    def __init__(self, f):
        self.q = queue.Queue()
        self.t = threading.Thread(target=self._run, args=(f,), daemon=True)
        self.t.start()

    def _run(self, f):
        for line in iter(f.readline, b""):
            self.q.put(line)
        self.q.put(None)

    def get(self, timeout=WAIT):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line from crunchctl within %.0fs" % timeout)


def popen_ctl(*args, addr):
    return subprocess.Popen([CTL, "-a", addr] + list(args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctl_env())


def finish(p, timeout=PROC_TIMEOUT):
    """Wait for p; kill it if it hangs (and fail). Returns (rc, stderr text)."""
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError("crunchctl did not finish within %.0fs" % timeout)
    err = p.stderr.read().decode(errors="replace")
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None and not f.closed:
            f.close()
    return p.returncode, err


def stats_json(d):
    r = ctl("--json", "stats", addr=d.target)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# --------------------------------------------------------------------------
# run

def test_run_prints_the_output_as_is(daemon):
    r = ctl("run", "echo", "hello world", addr=daemon.target)
    # stdout is a pipe here: no newline added.
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hello world", "")
    for n, want in PRIME_SEEDS.items():
        r = ctl("run", "prime", str(n), addr=daemon.target)
        assert (r.returncode, r.stdout) == (0, b"true" if want else b"false"), r.stderr
    a, b = GCD_SEEDS[0]
    r = ctl("run", "gcd", "%d %d" % (a, b), addr=daemon.target)
    assert r.returncode == 0 and r.stdout.isdigit(), r
    r = ctl("run", "echo", addr=daemon.target)
    assert (r.returncode, r.stdout) == (0, b"")


def test_run_dash_reads_the_payload_from_stdin(daemon):
    data = b"line one\nline two\t\\ \x00\xff end\n"
    r = ctl("run", "echo", "-", addr=daemon.target, input=data)
    assert (r.returncode, r.stdout, r.stderr) == (0, data, "")
    r = ctl("run", "prime", "-", addr=daemon.target, input=b"112272535095293\n")
    assert (r.returncode, r.stdout) == (0, b"true")
    # After --, a payload may start with a dash.
    r = ctl("run", "echo", "--", "-x-", addr=daemon.target)
    assert (r.returncode, r.stdout) == (0, b"-x-")


def test_run_unknown_handler_is_not_found_in_one_line(daemon):
    r = ctl("run", "nope", "x", addr=daemon.target)
    assert r.returncode == 5
    assert r.stdout == b""
    line = one_error_line(r, 'crunchctl: run: NOT_FOUND: unknown handler "nope"')
    assert "known handlers: " in line and "echo" in line


def test_run_handler_error_exit_status_is_its_code(daemon):
    r = ctl("run", "prime", "not a number", addr=daemon.target)
    assert r.returncode == 3
    one_error_line(r, "crunchctl: run: INVALID_ARGUMENT: prime: ")


def test_run_json_result(daemon):
    r = ctl("--json", "run", "echo", 'say "hi"\t\\ é\x01', "--id", "42", addr=daemon.target)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n") and r.stdout.count(b"\n") == 1
    j = json.loads(r.stdout)
    assert j["id"] == 42 and j["code"] == 0 and j["status"] == "OK"
    assert j["output"] == 'say "hi"\t\\ é\x01' and j["error"] == ""
    assert j["worker"] in (0, 1)
    assert isinstance(j["queued_us"], int) and isinstance(j["run_us"], int)
    # Output that is not UTF-8 comes base64-encoded, byte for byte.
    raw = b"\xff\xfe\x00ok\x80"
    r = ctl("--json", "run", "echo", "-", addr=daemon.target, input=raw)
    j = json.loads(r.stdout)
    assert "output" not in j and base64.b64decode(j["output_base64"]) == raw


# --------------------------------------------------------------------------
# stream

def test_stream_one_task_per_line_failures_on_stderr(daemon):
    r = ctl("stream", "prime", addr=daemon.target,
            input="112272535095293\n1099726899285419\nabc\n7\r\n")
    # Results come in any order; failures go to stderr; the exit status is
    # the failed task's code.
    assert r.returncode == 3, r.stderr
    assert result_lines(r.stdout) == {1: b"true", 2: b"false", 4: b"true"}
    err = r.stderr.splitlines()
    assert len(err) == 2, r.stderr
    assert err[0].startswith("3\terror: INVALID_ARGUMENT: prime: "), err
    assert err[1] == "crunchctl: stream: 1 of 4 tasks failed; the first with INVALID_ARGUMENT"


def test_stream_all_ok_and_ids_from_id(daemon):
    lines = ["%d" % i for i in range(200)]
    r = ctl("stream", "echo", "--id", "1000", addr=daemon.target,
            input="\n".join(lines))  # the last line has no newline: still a task
    assert (r.returncode, r.stderr) == (0, "")
    assert result_lines(r.stdout) == {1000 + i: s.encode() for i, s in enumerate(lines)}
    # Empty input: no task, no output, OK.
    r = ctl("stream", "echo", addr=daemon.target, input=b"")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", "")


def test_stream_escapes_output_to_keep_one_line_per_result(daemon):
    r = ctl("stream", "echo", addr=daemon.target, input=b"a\tb\\c\x01d \xc3\xa9\n\n")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [b"1\ta\\tb\\\\c\\x01d \xc3\xa9", b"2\t"]
    # --json: one object per line, failures too, on stdout.
    r = ctl("--json", "stream", "prime", addr=daemon.target, input="7\nx\n")
    assert r.returncode == 3
    objs = sorted((json.loads(l) for l in r.stdout.splitlines()), key=lambda j: j["id"])
    assert [(j["id"], j["code"], j["status"], j["output"]) for j in objs] == \
        [(1, 0, "OK", "true"), (2, 3, "INVALID_ARGUMENT", "")]
    assert objs[1]["error"].startswith("prime: ")


def test_closed_stdin_is_empty_input(daemon):
    # gRPC opens a descriptor before main; with stdin closed it would be fd 0.
    for args, out in ((["stream", "echo"], b""), (["submit", "echo"], b"accepted 0 rejected 0\n"),
                      (["run", "echo", "-"], b"")):
        r = subprocess.run([CTL, "-a", daemon.target, "--timeout", "%g" % RPC_TIMEOUT] + args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctl_env(),
                           preexec_fn=lambda: os.close(0), timeout=PROC_TIMEOUT)
        assert (r.returncode, r.stdout, r.stderr) == (0, out, b""), (args, r)


def test_stream_prints_results_while_stdin_is_still_open(daemon):
    p = popen_ctl("stream", "echo", addr=daemon.target)
    try:
        out = LineReader(p.stdout)
        p.stdin.write(b"first\n")
        p.stdin.flush()
        assert out.get() == b"1\tfirst\n"
        p.stdin.write(b"second\n")
        p.stdin.flush()
        assert out.get() == b"2\tsecond\n"
        p.stdin.close()
        assert out.get() is None
        rc, err = finish(p)
        assert (rc, err) == (0, "")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stream_deadline_bounds_the_whole_call(daemon):
    # stdin stays open: the deadline ends the call all the same.
    p = subprocess.Popen([CTL, "-a", daemon.target, "--timeout", "1", "stream", "echo"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ctl_env())
    try:
        out = LineReader(p.stdout)
        p.stdin.write(b"before the deadline\n")
        p.stdin.flush()
        assert out.get() == b"1\tbefore the deadline\n"
        t0 = time.monotonic()
        p.wait(PROC_TIMEOUT)
        assert time.monotonic() - t0 < 10 * SCALE
        rc = p.returncode
        err = p.stderr.read().decode()
        assert rc == 4, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("crunchctl: stream: DEADLINE_EXCEEDED"), err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()


# --------------------------------------------------------------------------
# submit and updates

def test_submit_then_updates_round_trip(daemon):
    r = ctl("submit", "echo", addr=daemon.target, input="u1\nu2\nu3\nu4\nu5\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"accepted 5 rejected 0\n", "")
    r = ctl("updates", "--max", "5", addr=daemon.target)
    assert (r.returncode, r.stderr) == (0, "")
    assert result_lines(r.stdout) == {i: b"u%d" % i for i in range(1, 6)}
    assert stats_json(daemon)["updates_depth"] == 0
    # --json both ways, and a failed task: updates exits with its code.
    r = ctl("--json", "submit", "prime", "--id", "7", addr=daemon.target, input="13\nxyz\n")
    assert r.returncode == 0 and json.loads(r.stdout) == {"accepted": 2, "rejected": 0}
    r = ctl("--json", "updates", "--max", "2", addr=daemon.target)
    assert r.returncode == 3, r.stderr
    objs = sorted((json.loads(l) for l in r.stdout.splitlines()), key=lambda j: j["id"])
    assert [(j["id"], j["code"], j["output"]) for j in objs] == [(7, 0, "true"), (8, 3, "")]
    assert r.stderr.splitlines() == [
        "crunchctl: updates: 1 of 2 tasks failed; the first with INVALID_ARGUMENT"]


def test_submit_rejections_exit_resource_exhausted(crunchd):
    d = crunchd(updates_capacity=3)
    r = ctl("submit", "echo", addr=d.target, input="a\nb\nc\nd\ne\n")
    assert r.returncode == 8
    assert r.stdout == b"accepted 3 rejected 2\n"
    one_error_line(r, "crunchctl: submit: 2 of 5 tasks rejected (the updates feed was full")
    r = ctl("updates", "--max", "3", addr=d.target)
    assert r.returncode == 0 and sorted(result_lines(r.stdout)) == [1, 2, 3]


def test_updates_without_max_ends_at_the_deadline(daemon):
    r = ctl("updates", "--timeout", "0.5", addr=daemon.target)
    assert (r.returncode, r.stdout) == (4, b"")
    one_error_line(r, "crunchctl: updates: DEADLINE_EXCEEDED")


def test_sigint_prints_what_came_and_dies_of_the_signal(daemon):
    r = ctl("submit", "echo", addr=daemon.target, input="s1\ns2\n")
    assert r.returncode == 0
    p = popen_ctl("updates", addr=daemon.target)
    try:
        p.stdin.close()
        out = LineReader(p.stdout)
        got = {out.get(), out.get()}
        assert got == {b"1\ts1\n", b"2\ts2\n"}
        p.send_signal(signal.SIGINT)
        rc, err = finish(p)
        assert rc == -signal.SIGINT, (rc, err)
        assert err == ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------
# stats

def test_stats_table(daemon):
    for i in range(3):
        assert ctl("run", "echo", "x", addr=daemon.target).returncode == 0
    # The worker counts a task right after its result goes out.
    wait_for(lambda: next(h for h in stats_json(daemon)["handlers"]
                          if h["name"] == "echo")["count"] >= 3, what="echo count 3")
    r = ctl("stats", addr=daemon.target)
    assert (r.returncode, r.stderr) == (0, "")
    text = r.stdout.decode()
    lines = text.splitlines()
    assert re.match(r"^generation\s+1 \(reloads: 0 ok, 0 failed\)$", lines[0]), text
    assert any(re.match(r"^last reload\s+none$", l) for l in lines), text
    assert any(re.match(r"^queue\s+\d+ waiting of \d+, \d+ running, \d+ free", l)
               for l in lines), text
    assert any(re.match(r"^arena\s+.* used, .* free, of ", l) for l in lines), text
    assert any(re.match(r"^updates\s+0 waiting of 65536$", l) for l in lines), text
    hdr = [l for l in lines if l.startswith("ROLE")]
    assert hdr and hdr[0].split() == ["ROLE", "SLOT", "GEN", "PID", "STATE", "TASKS",
                                      "CURRENT"], text
    rows = {int(l.split()[3]): l.split() for l in lines
            if l.startswith("acceptor ") or l.startswith("worker ")}
    want = set(daemon.acceptors().values()) | set(daemon.workers().values())
    assert set(rows) == want, text
    for pid, cols in rows.items():
        assert cols[4] in ("idle", "busy", "starting", "draining"), cols
    acc = [l for l in lines if l.startswith("acceptor ")]
    assert re.search(r" [1-9]\d* connections, 0 waiting for room, 0 refused \(queue full\)$",
                     acc[0]), text
    hdr = [l for l in lines if l.startswith("HANDLER")]
    assert hdr and hdr[0].split()[:3] == ["HANDLER", "COUNT", "ERRORS"], text
    hrows = {l.split()[0]: l.split() for l in lines[lines.index(hdr[0]) + 1:] if l.strip()}
    assert list(hrows) == list(HANDLERS), text
    assert int(hrows["echo"][1]) >= 3 and hrows["echo"][2] == "0"
    assert hrows["gcd"][1:] == ["0", "0", "-", "-", "-", "-", "-", "-"], text


def test_stats_json(daemon):
    assert ctl("run", "prime", "13", addr=daemon.target).returncode == 0
    assert ctl("run", "prime", "bad", addr=daemon.target).returncode == 3
    s = wait_for(lambda: (lambda s: s if next(h for h in s["handlers"]
                                             if h["name"] == "prime")["count"] >= 2
                          else None)(stats_json(daemon)), what="prime count 2")
    assert s["generation"] == 1 and s["last_reload"] is None
    assert (s["reloads_ok"], s["reloads_failed"]) == (0, 0)
    assert s["start_time_unix_us"] <= time.time() * 1e6
    assert s["acceptor_pid"] in daemon.acceptors().values()
    procs = s["processes"]
    assert sorted(p["pid"] for p in procs if p["role"] == "worker") == \
        sorted(daemon.workers().values())
    assert [p["pid"] for p in procs if p["role"] == "acceptor"] == \
        list(daemon.acceptors().values())
    for p in procs:
        assert set(p) == {"role", "slot", "generation", "pid", "state", "tasks_done",
                          "current_task_id", "current_handler", "running_us",
                          "start_time_unix_us", "connections", "waiting_for_room",
                          "refused_queue_full"}
        assert p["generation"] == 1 and isinstance(p["current_handler"], str)
    q = s["queue"]
    assert q["capacity"] > 0 and q["depth"] == 0
    assert q["arena_used"] + q["arena_free"] == q["arena_size"] > 0
    assert q["submitted"] >= 2 and q["completed"] >= 2
    assert (s["updates_depth"], s["updates_capacity"]) == (0, 65536)
    assert [h["name"] for h in s["handlers"]] == list(HANDLERS)
    prime = s["handlers"][1]
    assert prime["count"] >= 2 and prime["errors"] >= 1
    assert prime["run_p50_us"] <= prime["run_p99_us"] <= prime["run_max_us"]


def test_stats_shows_the_current_task(daemon):
    p = popen_ctl("run", "sleep", "%d" % (60000 * SCALE), "--id", "77", addr=daemon.target)
    try:
        def busy():
            for row in stats_json(daemon)["processes"]:
                if row["state"] == "busy" and row["current_task_id"] == 77:
                    return row
            return None
        row = wait_for(busy, what="a worker busy with task 77")
        assert row["current_handler"] == "sleep"
        table = ctl("stats", addr=daemon.target).stdout.decode()
        assert re.search(r"^worker .* busy +\d+  task 77 sleep for \S+$", table, re.M), table
        # No need to wait for the end: crunchctl cancels the call on SIGINT.
        p.send_signal(signal.SIGINT)
        rc, err = finish(p)
        assert (rc, err) == (-signal.SIGINT, "")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------
# health

def test_health(daemon):
    r = ctl("health", addr=daemon.target)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"SERVING\n", "")
    r = ctl("health", "crunch.v1.Crunch", addr=daemon.target)
    assert (r.returncode, r.stdout) == (0, b"SERVING\n")
    r = ctl("--json", "health", addr=daemon.target)
    assert json.loads(r.stdout) == {"service": "", "status": "SERVING"}
    r = ctl("health", "no.such.Service", addr=daemon.target)
    assert r.returncode == 5 and r.stdout == b""
    one_error_line(r, "crunchctl: health: NOT_FOUND: ")


# --------------------------------------------------------------------------
# addresses, connection errors, usage

def test_no_server_is_unavailable_with_a_clear_line():
    port = free_port()
    r = ctl("run", "echo", "x", addr="127.0.0.1:%d" % port)
    assert (r.returncode, r.stdout) == (14, b"")
    line = one_error_line(r, "crunchctl: cannot connect to 127.0.0.1:%d: " % port)
    assert line.endswith("; is crunchd running? (set -a or CRUNCH_ADDR)"), line
    r = ctl("stats", addr="unix:/nonexistent/crunchd.sock")
    assert r.returncode == 14
    one_error_line(r, "crunchctl: cannot connect to unix:/nonexistent/crunchd.sock: ")


def test_crunch_addr_is_honoured_and_a_overrides_it(daemon):
    r = ctl("run", "echo", "via env", env={"CRUNCH_ADDR": daemon.target})
    assert (r.returncode, r.stdout) == (0, b"via env"), r.stderr
    dead = "127.0.0.1:%d" % free_port()
    r = ctl("run", "echo", "via -a", addr=daemon.target, env={"CRUNCH_ADDR": dead})
    assert (r.returncode, r.stdout) == (0, b"via -a"), r.stderr
    r = ctl("health", env={"CRUNCH_ADDR": dead})
    assert r.returncode == 14
    one_error_line(r, "crunchctl: cannot connect to %s: " % dead)


def test_unix_socket_address(crunchd):
    short = tempfile.mkdtemp(prefix="cctl-")  # sun_path is 108 bytes at most
    try:
        sock = os.path.join(short, "c.sock")
        d = crunchd(listen=["unix:" + sock])
        for addr in ("unix:" + sock, sock):
            r = ctl("run", "echo", "over unix", addr=addr)
            assert (r.returncode, r.stdout) == (0, b"over unix"), (addr, r.stderr)
        r = ctl("stream", "echo", addr="unix:" + sock, input="a\nb\n")
        assert result_lines(r.stdout) == {1: b"a", 2: b"b"}
        d.stop()
    finally:
        shutil.rmtree(short, True)


def test_ipv6_address(crunchd):
    if not have_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback (::1); [v6]:port untested")
    port = free_port("::1")
    crunchd(listen=["[::1]:{port}"], port=port)
    r = ctl("run", "echo", "v6", addr="[::1]:%d" % port)
    assert (r.returncode, r.stdout) == (0, b"v6"), r.stderr


def test_timeout_shorter_than_the_task_is_deadline_exceeded(daemon):
    t0 = time.monotonic()
    r = ctl("--timeout", "0.5", "run", "sleep", "%d" % (10000 * SCALE), addr=daemon.target)
    elapsed = time.monotonic() - t0
    assert r.returncode == 4 and r.stdout == b""
    one_error_line(r, "crunchctl: run: DEADLINE_EXCEEDED")
    assert elapsed < 5 * SCALE, "crunchctl took %.1fs for a 0.5 s deadline" % elapsed


@pytest.mark.parametrize("args, why", [
    ([], "no command given"),
    (["frobnicate"], 'unknown command "frobnicate"'),
    (["run"], "run: too few arguments"),
    (["stats", "extra"], 'stats: too many arguments (from "extra" on)'),
    (["health", "a", "b"], 'health: too many arguments (from "b" on)'),
    (["--timeout", "0", "stats"], '--timeout: expected seconds'),
    (["--timeout", "soon", "stats"], '--timeout: expected seconds'),
    (["stats", "--max", "3"], "stats: --max does not apply to it"),
    (["run", "echo", "--id", "-1"], '--id: expected a number from 0 to'),
    (["run", "echo", "-5"], "unknown option -5"),
    (["updates", "--max", "many"], "--max: expected a number"),
    (["--frobnicate", "stats"], "unknown option --frobnicate"),
    (["stats", "-a"], "option -a needs a value"),
    (["--cert", "c.pem", "stats"], "--cert and --key go together"),
    (["-a", "", "stats"], 'bad address ""'),
    (["-a", "[::1", "stats"], 'bad address "[::1"'),
])
def test_usage_errors_exit_2(args, why):
    r = subprocess.run([CTL] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=ctl_env(), timeout=PROC_TIMEOUT)
    err = r.stderr.decode().splitlines()
    assert r.returncode == 2 and r.stdout == b"", (r.returncode, err)
    assert len(err) == 2, err
    assert err[0].startswith("crunchctl: " + why), err
    assert USAGE.match(err[1]), err


def test_help_and_version():
    r = subprocess.run([CTL, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=PROC_TIMEOUT)
    assert r.returncode == 0 and r.stderr == b""
    for word in (b"usage: crunchctl", b"run HANDLER", b"stream", b"submit", b"updates",
                 b"stats", b"health", b"--timeout", b"CRUNCH_ADDR"):
        assert word in r.stdout, word
    r = subprocess.run([CTL, "-V"], stdout=subprocess.PIPE, timeout=PROC_TIMEOUT)
    assert r.returncode == 0 and re.match(rb"^crunchctl \d+\.\d+\.\d+ \(gRPC core ", r.stdout)


# --------------------------------------------------------------------------
# TLS

def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, "openssl %s:\n%s" % (" ".join(args), r.stdout.decode())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for the name crunch.test only (so that
    --server-name is needed to reach 127.0.0.1), a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl (the command) is needed to make certificates")
    d = str(tmp_path_factory.mktemp("cctl-pki"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=crunchctl test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:crunch.test\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext)
        _openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=" + name, cwd=d)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", name + ".pem", "-days", "2",
                 "-extfile", name + ".ext", cwd=d)
    return {n: os.path.join(d, n) for n in os.listdir(d)}


def test_tls_and_mutual_tls(crunchd, pki):
    tls_port = free_port()
    d = crunchd(start=False, listen=None)
    d.extra = ('listen = ( "127.0.0.1:%d", { address = "127.0.0.1:%d"; tls = { '
               'cert = "%s"; key = "%s"; client_ca = "%s"; verify_client = true; }; } );'
               % (d.port, tls_port, pki["server.pem"], pki["server.key"], pki["ca.pem"]))
    d.start()
    # gRPC binds a TLS listener inside the acceptor, a moment after the
    # acceptor's title is set (t/test_tls.py): wait until it accepts.
    def tls_listening():
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", tls_port)) == 0
    wait_for(tls_listening, what="the TLS listener bound by the acceptor")
    addr = "127.0.0.1:%d" % tls_port
    plain = "127.0.0.1:%d" % d.port
    good = ["--ca", pki["ca.pem"], "--server-name", "crunch.test",
            "--cert", pki["client.pem"], "--key", pki["client.key"]]
    r = ctl(*good, "run", "echo", "over TLS", addr=addr)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"over TLS", "")
    r = ctl("--tls", *good, "stream", "prime", addr=addr, input="7\n")
    assert (r.returncode, r.stdout) == (0, b"1\ttrue\n")
    hint = "; is crunchd listening there with TLS? (check -a, --ca, --server-name"
    # The certificate names crunch.test, not 127.0.0.1.
    r = ctl(*[a for a in good if a not in ("--server-name", "crunch.test")], "health",
            addr=addr)
    assert r.returncode == 14
    assert hint in one_error_line(r, "crunchctl: cannot connect to %s: " % addr)
    # The server verifies clients: no certificate, no call.
    r = ctl("--ca", pki["ca.pem"], "--server-name", "crunch.test", "health", addr=addr)
    assert r.returncode == 14
    one_error_line(r, "crunchctl: cannot connect to %s: " % addr)
    # TLS to the plaintext listener, plaintext to the TLS one.
    r = ctl(*good, "health", addr=plain)
    assert r.returncode == 14
    one_error_line(r, "crunchctl: cannot connect to %s: " % plain)
    r = ctl("health", addr=addr)
    assert r.returncode == 14
    # Files that are not PEM are refused before any call, in one line.
    r = ctl("--ca", pki["server.ext"], "health", addr=addr)
    assert r.returncode == 2
    one_error_line(r, "crunchctl: --ca %s: no PEM data in it" % pki["server.ext"])
    r = ctl("--ca", "/nonexistent/ca.pem", "health", addr=addr)
    assert r.returncode == 2
    one_error_line(r, "crunchctl: --ca /nonexistent/ca.pem: No such file or directory")


# --------------------------------------------------------------------------
# valgrind

def _valgrind_problems(args, input=b""):
    """Run crunchctl under valgrind. Returns (rc, problems): memory errors,
    definite or indirect leaks, and possible leaks whose stack passes through
    crunchctl's own code other than grpc_init (gRPC 1.51 leaves threads and
    a few globals behind after grpc_shutdown: notes 10.11)."""
    fd, xml_path = tempfile.mkstemp(suffix=".xml")
    os.close(fd)
    try:
        r = subprocess.run(["valgrind", "--soname-synonyms=somalloc=*jemalloc*",
                            "--leak-check=full",
                            "--show-leak-kinds=definite,indirect,possible",
                            "--xml=yes", "--xml-file=" + xml_path, CTL] + args,
                           input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=ctl_env(), timeout=300 * SCALE)
        root = ET.parse(xml_path).getroot()
    finally:
        os.unlink(xml_path)
    problems = []
    for e in root.findall("error"):
        kind = e.findtext("kind")
        frames = [(f.findtext("fn") or "?", f.findtext("file") or "")
                  for f in e.iter("frame")]
        ours = [fn for fn, file in frames if file.startswith("crunchctl")]
        if kind in ("Leak_PossiblyLost", "Leak_StillReachable") and \
                (not ours or "cctl_rpc_open" in ours):
            continue
        problems.append("%s: %s" % (kind, " < ".join(fn for fn, _ in frames[:10])))
    return r.returncode, problems


def _sanitized(path):
    """True for a binary built with --enable-sanitizers (valgrind cannot run
    it; AddressSanitizer checks its memory instead)."""
    r = subprocess.run(["ldd", path], stdout=subprocess.PIPE, universal_newlines=True,
                       timeout=30)
    return "libasan" in r.stdout


def test_valgrind_clean(daemon):
    if _sanitized(CTL):
        # The sanitizer build checks memory itself: the same commands must
        # finish with their usual status and no sanitizer report.
        t = ["-a", daemon.target, "--timeout", "%g" % (120 * SCALE)]
        for args, want in ((t + ["run", "echo", "hi"], 0), (t + ["--json", "stats"], 0)):
            r = subprocess.run([CTL] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True,
                               timeout=120 * SCALE)
            assert r.returncode == want and "Sanitizer" not in r.stderr, (args, r.stderr)
        return
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    t = ["-a", daemon.target, "--timeout", "%g" % (120 * SCALE)]
    for args, inp, want in ((t + ["run", "echo", "hi"], b"", 0),
                            (t + ["stream", "prime"], b"7\nx\n8\n", 3),
                            (t + ["--json", "stats"], b"", 0),
                            (t + ["health", "nope"], b"", 5),
                            (["-a", "127.0.0.1:%d" % free_port(), "health"], b"", 14),
                            (["--timeout", "-1", "stats"], b"", 2)):
        rc, problems = _valgrind_problems(args, inp)
        assert rc == want and not problems, (args, rc, problems)
