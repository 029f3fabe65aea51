# test_bench.py: crunch-bench(1), the load generator, against a live crunchd:
# its counts agree with the server's own Stats counters, its JSON has every
# field, errors are counted by status, a wrong address is one clear line, and
# duration mode and SIGINT end in bounded time with a summary.
#
# No timing assertion anywhere (the machine is noisy): only counts, exit
# statuses and structure. Every subprocess has a timeout.
#
# CRUNCH_BENCH_BIN: the program (default <repo>/src/crunch-bench).

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import REPO, SCALE, WAIT, free_port, pb, wait_for

BENCH = os.environ.get("CRUNCH_BENCH_BIN") or os.path.join(REPO, "src", "crunch-bench")
RUN_TIMEOUT = 120 * SCALE  # any crunch-bench run below, start to exit

JSON_FIELDS = {
    "version": str, "target": str, "mode": str, "handler": str, "payload_bytes": int,
    "threads": int, "connections": int, "concurrency": int, "warmup_s": float,
    "timeout_ms": int, "verify": bool, "interrupted": bool, "elapsed_s": float,
    "sent": int, "completed": int, "ok": int, "errors": int, "mismatches": int,
    "cancelled": int, "unexpected_results": int, "stream_failures": int,
    "warmup_requests": int, "requests_per_s": float, "ok_per_s": float,
    "status": dict, "error_messages": dict, "latency_us": dict,
}
LATENCY_FIELDS = ("count", "min", "mean", "stdev", "p50", "p90", "p99", "p99.9", "max")


@pytest.fixture(autouse=True)
def _need_bench():
    if not os.access(BENCH, os.X_OK):
        pytest.fail("crunch-bench not built: %s (set CRUNCH_BENCH_BIN)" % BENCH)


def bench(args, timeout=RUN_TIMEOUT):
    """Run crunch-bench to completion: CompletedProcess with str output."""
    env = dict(os.environ)
    env.pop("CRUNCH_ADDR", None)
    try:
        return subprocess.run([BENCH] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=env, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("crunch-bench %s did not finish within %.0fs; stderr:\n%s"
                             % (" ".join(map(str, args)), timeout, e.stderr))


def bench_json(args, expect_rc=0, timeout=RUN_TIMEOUT):
    r = bench(list(args) + ["--json"], timeout)
    assert r.returncode == expect_rc, \
        "exit %d, not %d\nstdout:\n%s\nstderr:\n%s" % (r.returncode, expect_rc, r.stdout,
                                                       r.stderr)
    return json.loads(r.stdout)


def handler_count(d, name):
    s = d.stub().Stats(pb.StatsRequest(), timeout=WAIT)
    for h in s.handlers:
        if h.name == name:
            return h.count, h.errors
    raise AssertionError("no handler %r in Stats" % name)


def check_server_count(d, name, before, sent, errors=0):
    """The handler's Stats count grew by exactly `sent` (errors by `errors`).
    A worker counts a task as it finishes it, so wait for the count to get
    there, then check it did not go beyond."""
    want = before[0] + sent
    wait_for(lambda: handler_count(d, name)[0] >= want, WAIT,
             what="Stats %s count to reach %d" % (name, want))
    count, errs = handler_count(d, name)
    assert count == want, "server counted %d %s tasks, crunch-bench sent %d" \
        % (count - before[0], name, sent)
    assert errs - before[1] == errors


def check_structure(j):
    for k, t in JSON_FIELDS.items():
        assert k in j, "JSON lacks %r" % k
        if t is float:
            assert isinstance(j[k], (int, float)) and not isinstance(j[k], bool), k
        else:
            assert isinstance(j[k], t), "%r is %r, not %s" % (k, j[k], t.__name__)
    for k in ("streams", "duration_s", "total", "rate"):
        assert k in j, "JSON lacks %r" % k
    for k in LATENCY_FIELDS:
        assert isinstance(j["latency_us"][k], (int, float)), k
    lat = j["latency_us"]
    if lat["count"]:
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] \
            <= lat["max"]
    # Every completed request is in exactly one status bucket.
    assert sum(j["status"].values()) == j["completed"] == j["ok"] + j["errors"]
    assert j["sent"] == j["completed"] + j["cancelled"]
    assert lat["count"] == j["ok"]


def test_unary_counts_match_server(daemon):
    before = handler_count(daemon, "echo")
    j = bench_json(["-a", daemon.addr, "-N", 2000, "-c", 2, "-n", 16])
    check_structure(j)
    assert j["mode"] == "unary" and j["handler"] == "echo" and j["target"] == daemon.addr
    assert (j["connections"], j["concurrency"], j["total"]) == (2, 16, 2000)
    assert j["sent"] == j["ok"] == j["completed"] == 2000
    assert j["errors"] == j["mismatches"] == j["cancelled"] == 0
    assert j["status"] == {"OK": 2000}
    assert j["error_messages"] == {}
    assert j["latency_us"]["count"] == 2000
    assert j["interrupted"] is False and j["streams"] is None
    check_server_count(daemon, "echo", before, j["sent"])


def test_stream_counts_match_server(daemon):
    before = handler_count(daemon, "echo")
    j = bench_json(["-a", daemon.addr, "--stream", "-N", 2000, "-c", 2, "-n", 16])
    check_structure(j)
    assert j["mode"] == "stream" and j["streams"] == 2
    assert j["sent"] == j["ok"] == 2000
    assert j["errors"] == j["unexpected_results"] == j["stream_failures"] == 0
    assert j["status"] == {"OK": 2000}
    check_server_count(daemon, "echo", before, j["sent"])


def test_text_summary(daemon):
    r = bench(["-a", daemon.addr, "-N", 500, "-c", 1, "-n", 4, "-t", 1, "-H", "prime"])
    assert r.returncode == 0, r.stderr
    assert "500 requests in" in r.stdout
    assert "500 sent, 500 ok, 0 errors" in r.stdout
    assert "OK 500" in r.stdout
    for k in ("p50", "p90", "p99", "p99.9", "max", "mean"):
        assert k in r.stdout


def test_handler_errors_are_counted(daemon):
    before = handler_count(daemon, "echo")
    for mode in ([], ["--stream"]):
        j = bench_json(["-a", daemon.addr, "-N", 300, "-c", 2, "-n", 8, "-H", "no_such"] + mode,
                       expect_rc=1)
        check_structure(j)
        assert j["sent"] == j["errors"] == 300 and j["ok"] == 0
        assert "OK" not in j["status"] and sum(j["status"].values()) == 300
        (code, n), = j["status"].items()
        assert "no_such" in j["error_messages"][code]
        assert j["latency_us"]["count"] == 0
    assert handler_count(daemon, "echo") == before


def test_payload_size_and_warmup(daemon):
    before = handler_count(daemon, "echo")
    j = bench_json(["-a", daemon.addr, "--stream", "-N", 200, "-c", 1, "-n", 4,
                    "--payload-size", "64k", "--warmup", "0.2"])
    assert j["payload_bytes"] == 65536
    assert j["sent"] == j["ok"] == 200 and j["mismatches"] == 0
    # The warm-up's requests run (and are answered) but are not measured.
    check_server_count(daemon, "echo", before, j["sent"] + j["warmup_requests"])


def test_duration_mode_ends(daemon):
    before = handler_count(daemon, "echo")
    t0 = time.monotonic()
    j = bench_json(["-a", daemon.addr, "-d", 1, "-c", 2, "-n", 8], timeout=60 * SCALE)
    check_structure(j)
    assert j["duration_s"] == 1 and j["total"] is None
    assert j["sent"] > 0 and j["ok"] == j["sent"] and j["errors"] == 0
    # In-flight calls at the end are waited for, so the server saw exactly these.
    check_server_count(daemon, "echo", before, j["sent"])
    assert time.monotonic() - t0 < 60 * SCALE


def test_rate_mode(daemon):
    j = bench_json(["-a", daemon.addr, "-N", 100, "--rate", 400, "-c", 1, "-n", 4])
    assert j["sent"] == j["ok"] == 100
    assert set(j["rate"]) >= {"target", "achieved", "reached", "late", "max_lag_ms"}
    assert j["rate"]["target"] == 400


def test_unix_socket(crunchd):
    d = crunchd(listen=["unix:bench.sock"])
    j = bench_json(["-a", d.target, "-N", 100, "-c", 2, "-n", 4])
    assert j["ok"] == 100


def one_line_error(r, rc=2):
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("crunch-bench: ")
    return lines[0]


def test_wrong_address():
    port = free_port()  # nothing listens there
    line = one_line_error(bench(["-a", "127.0.0.1:%d" % port, "-N", 10, "--json"]))
    assert "cannot connect to 127.0.0.1:%d" % port in line
    assert "refused" in line.lower()
    line = one_line_error(bench(["-a", "unix:/nonexistent/crunchd.sock", "-N", 10]))
    assert "cannot connect" in line


@pytest.mark.parametrize("args", [
    ["-d", "1", "-N", "10"],
    ["-n", "1", "-c", "2"],
    ["--streams", "2"],
    ["-d", "soon"],
    ["--rate", "0"],
    ["extra-argument"],
    ["--no-such-option"],
    ["-n"],
])
def test_usage_errors(args):
    one_line_error(bench(["-a", "127.0.0.1:1"] + args))


def test_sigint_prints_summary(daemon):
    p = subprocess.Popen([BENCH, "-a", daemon.addr, "-d", "120", "-c", "2", "-n", "8",
                          "--stream", "--json", "--progress"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    try:
        # Past the header, the first progress line says the load is running.
        for _ in range(10):
            line = p.stderr.readline()
            if "req/s" in line or not line:
                break
        assert "req/s" in line, line
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60 * SCALE)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    j = json.loads(out)
    check_structure(j)
    assert j["interrupted"] is True
    assert j["ok"] > 0 and j["errors"] == 0
