# test_access_log.py: access_log: one line per RPC (time, peer, method,
# handler, status, bytes in and out, queue and run microseconds; streams add
# their task counts), off when unset, reopened on SIGUSR1.

import os
import re
import signal

import grpc

from conftest import RPC_TIMEOUT, call_status, pb, wait_for

LINE = re.compile(
    r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}) (\S+) (\S+) (\S+) (-?\d+) (\d+) (\d+) (\d+) (\d+)"
    r"(?: tasks=(\d+) ok=(\d+) failed=(\d+))?$")


def lines(path):
    try:
        with open(path) as f:
            return [l.rstrip("\n") for l in f]
    except FileNotFoundError:
        return []


def wait_line(path, pred, what):
    def find():
        for l in lines(path):
            m = LINE.match(l)
            assert m, "malformed access log line: %r" % l
            if pred(m):
                return m
        return None
    return wait_for(find, what=what)


def test_one_line_per_rpc(crunchd):
    d = crunchd(workers=2, access_log="access.log")
    log = os.path.join(d.prefix, "access.log")
    stub = d.stub()

    task = pb.Task(id=1, handler="echo", payload=b"hello")
    r = stub.Run(task, timeout=RPC_TIMEOUT)
    m = wait_line(log, lambda m: m.group(3).endswith("/Run") and m.group(4) == "echo",
                  "the Run line")
    assert m.group(2).startswith("ipv4:127.0.0.1:"), m.group(0)
    assert m.group(3) == "/crunch.v1.Crunch/Run"
    assert int(m.group(5)) == 0
    assert int(m.group(6)) == task.ByteSize()
    assert int(m.group(7)) == r.ByteSize()
    assert (int(m.group(8)), int(m.group(9))) == (r.queued_us, r.run_us)
    assert m.group(10) is None

    code, _, _, _ = call_status(d.run, "nope", "x", id=2)
    assert code == grpc.StatusCode.NOT_FOUND
    m = wait_line(log, lambda m: m.group(4) == "nope", "the NOT_FOUND line")
    assert (int(m.group(5)), m.group(7), m.group(8), m.group(9)) == (5, "0", "0", "0")

    tasks = [pb.Task(id=10, handler="echo", payload=b"a"),
             pb.Task(id=11, handler="prime", payload=b"bad"),
             pb.Task(id=12, handler="echo", payload=b"c")]
    out = list(stub.RunStream(iter(tasks), timeout=RPC_TIMEOUT))
    assert len(out) == 3
    m = wait_line(log, lambda m: m.group(3).endswith("/RunStream"), "the RunStream line")
    assert m.group(4) == "-" and int(m.group(5)) == 0
    assert (m.group(10), m.group(11), m.group(12)) == ("3", "2", "1")
    assert int(m.group(6)) == sum(t.ByteSize() for t in tasks)
    assert int(m.group(7)) == sum(x.ByteSize() for x in out)

    reply = stub.Submit(iter([pb.Task(id=20, handler="echo", payload=b"s"),
                              pb.Task(id=21, handler="nope")]), timeout=RPC_TIMEOUT)
    assert (reply.accepted, reply.rejected) == (1, 1)
    m = wait_line(log, lambda m: m.group(3).endswith("/Submit"), "the Submit line")
    assert (m.group(10), m.group(11), m.group(12)) == ("2", "1", "1")

    got = list(stub.Updates(pb.UpdatesRequest(max_results=1), timeout=RPC_TIMEOUT))
    assert [x.id for x in got] == [20]
    m = wait_line(log, lambda m: m.group(3).endswith("/Updates"), "the Updates line")
    assert (m.group(5), m.group(10), m.group(11), m.group(12)) == ("0", "1", "1", "0")

    ch = d.channel()
    code, _, _, _ = call_status(lambda: ch.unary_unary("/crunch.v1.Crunch/Nope")(
        b"", timeout=RPC_TIMEOUT))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    m = wait_line(log, lambda m: m.group(3) == "/crunch.v1.Crunch/Nope", "the UNIMPLEMENTED line")
    assert (m.group(4), m.group(5)) == ("-", "12")

    # A call cut by its deadline is logged with DEADLINE_EXCEEDED.
    code, _, _, _ = call_status(d.run, "sleep", "1000", id=30, timeout=0.2)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    m = wait_line(log, lambda m: m.group(4) == "sleep", "the deadline line")
    assert int(m.group(5)) == 4


def test_client_text_cannot_break_a_line(crunchd):
    d = crunchd(access_log="access.log")
    log = os.path.join(d.prefix, "access.log")
    code, _, _, _ = call_status(d.run, "bad name\nwith newline", "x")
    assert code == grpc.StatusCode.NOT_FOUND
    m = wait_line(log, lambda m: m.group(4).startswith("bad?name"), "the sanitized line")
    assert " " not in m.group(4)


def test_off_by_default(crunchd):
    d = crunchd()
    d.run("echo", "x")
    assert not [f for f in os.listdir(d.prefix) if "access" in f]


def test_usr1_reopens_the_access_log(crunchd):
    d = crunchd(access_log="access.log")
    log = os.path.join(d.prefix, "access.log")
    d.run("echo", "one", id=1)
    wait_line(log, lambda m: m.group(4) == "echo", "the first line")
    os.rename(log, log + ".1")  # what logrotate does
    d.send_signal(signal.SIGUSR1)
    wait_for(lambda: os.path.exists(log), what="a new access.log")
    d.run("echo", "two", id=2)
    wait_line(log, lambda m: m.group(4) == "echo", "a line in the new file")
    assert len(lines(log + ".1")) == 1, "nothing more went to the rotated file"
