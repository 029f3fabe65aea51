# test_errors.py: every error Run can answer with, and the methods that are
# unknown (UNIMPLEMENTED, promptly, never a hang).

import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from conftest import LOG_LINE, SCALE, call_status, pb, pb_grpc, start_blocker, wait_for

OK = grpc.StatusCode.OK


def test_unknown_handler_is_not_found(daemon):
    code, details, _, _ = call_status(daemon.run, "frobnicate", "x", timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    for h in ("echo", "prime", "gcd", "sleep"):
        assert h in details, "NOT_FOUND should name the known handlers: %r" % details
    code, details, _, _ = call_status(daemon.run, "", "x", timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    assert daemon.run("echo", "still fine").output == b"still fine"


def test_payload_over_max_payload(crunchd):
    d = crunchd(max_payload=1024)
    r = d.run("echo", b"a" * 1024)
    assert r.output == b"a" * 1024, "exactly max_payload bytes is allowed"
    code, details, _, _ = call_status(d.run, "echo", b"a" * 1025, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "1024" in details, "the message should name the limit: %r" % details
    code, details, _, _ = call_status(d.run, "prime", b"7" * 5000, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert d.run("echo", "after").output == b"after"


def test_payload_at_the_default_max_payload(daemon):
    # 4m is the default: exactly 4 MiB is a valid payload (and result), so
    # crunchd must lift gRPC's own 4 MiB message limit; one byte more is ours
    # to refuse, with INVALID_ARGUMENT, not gRPC's RESOURCE_EXHAUSTED.
    big = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    stub = pb_grpc.CrunchStub(daemon.channel(options=big))
    r = daemon.run("echo", b"e" * (4 << 20), stub=stub, timeout=60 * SCALE)
    assert len(r.output) == 4 << 20
    code, details, _, _ = call_status(daemon.run, "echo", b"e" * ((4 << 20) + 1), stub=stub,
                                      timeout=60 * SCALE)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert re.search(r"4194304|4\s*m", details, re.I), details


def test_handler_bad_input_is_invalid_argument(daemon):
    cases = [("prime", "abc"), ("prime", "-5"), ("prime", "12x"),
             ("gcd", "12"), ("gcd", "a b"), ("sleep", "soon")]
    for handler, payload in cases:
        code, details, _, _ = call_status(daemon.run, handler, payload, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (handler, payload, code, details)
        assert details.strip(), "%s(%r): the handler's message is missing" % (handler, payload)
    assert daemon.run("prime", "97").output == b"true"


def test_queue_full_is_resource_exhausted(crunchd):
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=500)
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (wpid,) = d.workers().values()
    with ThreadPoolExecutor(4) as ex:
        a = start_blocker(d, stub, ex, wpid, 4000, 1)
        # One more may queue (or not, if the running task holds the only
        # descriptor); of these two, at least one has no room.
        b = ex.submit(call_status, d.run, "sleep", "10", id=2, stub=stub, timeout=60 * SCALE)
        c = ex.submit(call_status, d.run, "sleep", "10", id=3, stub=stub, timeout=60 * SCALE)
        ra, rb, rc = a.result(), b.result(), c.result()
    assert ra[0] == OK and ra[2].id == 1, ra
    refused = [r for r in (rb, rc) if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused, "queue_capacity=1 with one running and one queued: a third call " \
        "must get RESOURCE_EXHAUSTED; got %r, %r" % (rb[:2], rc[:2])
    for r in (rb, rc):
        assert r[0] in (OK, grpc.StatusCode.RESOURCE_EXHAUSTED), r[:2]
    for code, details, _, secs in refused:
        # It waited queue_wait_ms for room, then gave up while the 4 s sleep
        # still held the queue.
        assert secs >= 0.4, "refused after %.3fs, before queue_wait_ms (500)" % secs
        assert secs < 3.5 * SCALE, "refused only after %.3fs (queue_wait_ms is 500)" % secs
    # Nothing leaked: the queue has room again.
    for i in range(5):
        assert d.run("echo", "after %d" % i, id=100 + i, stub=stub).output == b"after %d" % i


def _expire_while_queued(crunchd, task_id, **call):
    """Occupy the only worker with a 3 s sleep, queue a `sleep 5000` behind it
    whose deadline (call= timeout_ms or the call's timeout) passes while it
    waits, and check it failed with DEADLINE_EXCEEDED without running."""
    d = crunchd(workers=1, log_level="debug")
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (wpid,) = d.workers().values()
    with ThreadPoolExecutor(4) as ex:
        a = start_blocker(d, stub, ex, wpid, 3000, 1)
        b = ex.submit(call_status, d.run, "sleep", "5000", id=task_id, stub=stub, **call)
        ra, rb = a.result(), b.result()
    assert ra[0] == OK, ra
    assert rb[0] == grpc.StatusCode.DEADLINE_EXCEEDED, rb[:2]
    # The handler never ran: the worker serves the next call at once, not
    # after 5 s of sleeping for a caller that has gone.
    t0 = time.monotonic()
    r = d.run("echo", "prompt", id=42, stub=stub, timeout=30 * SCALE)
    took = time.monotonic() - t0
    assert r.output == b"prompt"
    assert took < 3.0 * SCALE, "follow-up call took %.1fs: did an expired task run?" % took
    return d, rb


def test_deadline_passed_while_queued_task_timeout(crunchd):
    # Task.timeout_ms (300) runs out while queued; the call deadline is far
    # away, so DEADLINE_EXCEEDED must come from crunchd, not from the client.
    d, rb = _expire_while_queued(crunchd, 9001, timeout_ms=300, timeout=30 * SCALE)
    assert rb[3] < 25 * SCALE, "crunchd held the expired call %.1fs" % rb[3]
    # The worker that popped it says it did not run it.
    (wpid,) = d.workers().values()
    line = d.wait_log(r"expired.*\b9001\b|\b9001\b.*expired", timeout=10 * SCALE)
    assert LOG_LINE.match(line) and int(LOG_LINE.match(line).group(3)) == wpid, line


def test_deadline_passed_while_queued_call_deadline(crunchd):
    # The call's own deadline (grpc-timeout, 1 s) runs out while queued.
    d, rb = _expire_while_queued(crunchd, 9002, timeout=1.0)
    # The worker says it skipped that task (log_level debug).
    d.wait_log(r"(expired|cancel).*\b9002\b|\b9002\b.*(expired|cancel)", timeout=10 * SCALE)


def _raw_run(d):
    # No serializer: the request goes out as the bytes we give.
    return d.channel().unary_unary("/crunch.v1.Crunch/Run")


def test_malformed_protobuf_is_invalid_argument(daemon):
    run = _raw_run(daemon)
    good = pb.Task(id=5, handler="echo", payload=b"raw").SerializeToString()
    r = pb.Result.FromString(run(good, timeout=10))
    assert (r.id, r.output) == (5, b"raw")
    garbage = {
        "unterminated varint": b"\xff" * 11,
        "bad wire type": b"\x0f\x01",
        "truncated bytes": b"\x1a\x64abc",
        "handler as varint": b"\x10\x05",
        "random": b"\x8f\x9a\xe1\x00\xffgarbage\x00\x01",
    }
    for name, body in garbage.items():
        code, details, _, secs = call_status(run, body, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
    assert daemon.run("echo", "fine").output == b"fine"


def test_unknown_methods_are_unimplemented(daemon):
    ch = daemon.channel()
    calls = {
        "unknown method": lambda: ch.unary_unary("/crunch.v1.Crunch/Nope")(b"", timeout=10),
        "unknown service": lambda: ch.unary_unary("/no.such.Service/Run")(b"", timeout=10),
        "unknown streaming": lambda: list(ch.stream_stream("/crunch.v1.Crunch/Nope2")(
            iter([b"", b""]), timeout=10)),
    }
    for name, fn in calls.items():
        code, details, _, secs = call_status(fn)
        assert code == grpc.StatusCode.UNIMPLEMENTED, (name, code, details, "%.1fs" % secs)
    assert daemon.run("echo", "fine").output == b"fine"


def test_errors_do_not_leak_queue_space(crunchd):
    # Small queue: if refused or failed calls leaked descriptors or arena
    # space, later calls would find the queue full.
    d = crunchd(queue_capacity=4, shm_size="256k", max_payload="16k", queue_wait_ms=200)
    for i in range(50):
        code, details, _, _ = call_status(d.run, "prime", "abc", id=i, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (i, code, details)
        code, details, _, _ = call_status(d.run, "nope", "x", id=i, timeout=10)
        assert code == grpc.StatusCode.NOT_FOUND, (i, code, details)
        code, details, _, _ = call_status(d.run, "echo", b"z" * 16385, id=i, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (i, code, details)
        r = d.run("echo", b"y" * 16384, id=i)
        assert r.output == b"y" * 16384
    assert d.run("prime", "7").output == b"true"


def test_cancelled_calls_do_not_leak(crunchd):
    # Clients that give up (deadline while queued or while running) must not
    # keep descriptors or arena space: with room for 2 tasks, 2 calls at once
    # still work afterwards.
    d = crunchd(workers=1, queue_capacity=2, queue_wait_ms=5000)
    stub = d.stub()
    for i in range(6):
        code, details, _, _ = call_status(d.run, "sleep", "300", id=i, stub=stub, timeout=0.1)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)

    def two_at_once():
        with ThreadPoolExecutor(2) as ex:
            rs = list(ex.map(lambda i: call_status(d.run, "sleep", "50", id=100 + i,
                                                    stub=stub, timeout=10 * SCALE), range(2)))
        return all(r[0] == OK for r in rs)
    # The worker may still be sleeping for the abandoned calls: give it time.
    wait_for(two_at_once, 30 * SCALE, 0.2, "both queue slots to be free again")
