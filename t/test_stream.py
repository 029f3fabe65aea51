# test_stream.py: RunStream (bidi): results of many tasks on one call, errors as
# Results, back-pressure both ways (queue full, client not reading), half-close,
# cancel and disconnect leave the shared region idle, message size limits.

import random
import threading
import time

import grpc
import pytest

from conftest import (RPC_TIMEOUT, SCALE, Feeder, call_status, expected, pb, pb_grpc,
                      stats, wait_for, wait_region_idle)


# --------------------------------------------------------------------------
# helpers

# --------------------------------------------------------------------------
# basics

def test_results_come_back_matched_by_id(daemon):
    tasks = [pb.Task(id=i, handler="echo", payload=b"p%d" % i) for i in range(1, 51)]
    results = list(daemon.stub().RunStream(iter(tasks), timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in results) == list(range(1, 51))
    for r in results:
        assert r.code == 0 and r.error == ""
        assert r.output == b"p%d" % r.id
        assert r.worker in (0, 1)


def test_empty_stream_ends_ok(daemon):
    assert list(daemon.stub().RunStream(iter([]), timeout=RPC_TIMEOUT)) == []


def test_failed_tasks_are_results_and_the_stream_goes_on(daemon):
    big = b"x" * (4 * 1024 * 1024 + 1)  # over the default max_payload (4m)
    tasks = [
        pb.Task(id=1, handler="echo", payload=b"a"),
        pb.Task(id=2, handler="nope", payload=b"b"),
        pb.Task(id=3, handler="prime", payload=b"not a number"),
        pb.Task(id=4, handler="echo", payload=big),
        pb.Task(id=5, handler="gcd", payload=b"12 18"),
    ]
    results = {r.id: r for r in daemon.stub().RunStream(iter(tasks), timeout=RPC_TIMEOUT)}
    assert sorted(results) == [1, 2, 3, 4, 5]
    assert (results[1].code, results[1].output) == (0, b"a")
    assert results[2].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "unknown handler" in results[2].error and "echo" in results[2].error
    assert results[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[3].error != ""
    assert results[4].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "max_payload" in results[4].error
    assert (results[5].code, results[5].output) == (0, b"6")
    for r in results.values():
        if r.code:
            assert r.output == b""


def test_task_timeout_ms_bounds_a_queued_task(crunchd):
    d = crunchd(workers=1)
    tasks = [pb.Task(id=1, handler="sleep", payload=b"500"),
             pb.Task(id=2, handler="echo", payload=b"late", timeout_ms=50),
             pb.Task(id=3, handler="echo", payload=b"fine")]
    results = {r.id: r for r in d.stub().RunStream(iter(tasks), timeout=RPC_TIMEOUT)}
    assert sorted(results) == [1, 2, 3]
    assert results[1].code == 0 and results[3].output == b"fine"
    assert results[2].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], results[2]
    assert "deadline" in results[2].error


def test_malformed_message_ends_the_stream_with_invalid_argument(daemon):
    ch = daemon.channel()
    call = ch.stream_stream("/crunch.v1.Crunch/RunStream")
    good = pb.Task(id=1, handler="echo", payload=b"ok").SerializeToString()
    it = call(iter([good, b"\xff\xff\xff\xff"]), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        list(it)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a crunch.v1.Task" in e.value.details()
    wait_region_idle(daemon)


def test_stream_deadline_bounds_its_tasks(crunchd):
    d = crunchd(workers=1)
    tasks = [pb.Task(id=i, handler="sleep", payload=b"300") for i in range(20)]
    t0 = time.monotonic()
    it = d.stub().RunStream(iter(tasks), timeout=1.0 * SCALE)
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for r in it:
            got.append(r)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10 * SCALE
    assert len(got) < 20
    wait_region_idle(d)


@pytest.mark.parametrize("spin", [None, 0])  # 0: no polling, futex hand-overs only
def test_100000_tasks_mixed_handlers_each_answered_once(crunchd, spin):
    d = crunchd(workers=2, queue_spin_us=spin)
    rnd = random.Random(4242)
    n = 100_000
    want = {}

    def gen():
        for i in range(n):
            k = rnd.randrange(100)
            if k < 94:
                h, p = "echo", b"%d" % i
            elif k < 97:
                h, p = "prime", b"%d" % (rnd.randrange(3, 100_000) | 1)
            else:
                h, p = "gcd", b"%d %d" % (rnd.randrange(1, 3000), rnd.randrange(1, 3000))
            want[i] = (h, p)
            yield pb.Task(id=i, handler=h, payload=p)

    t0 = time.monotonic()
    seen = set()
    for r in d.stub().RunStream(gen(), timeout=120 * SCALE):
        assert r.id not in seen, "id %d answered twice" % r.id
        seen.add(r.id)
        h, p = want[r.id]
        assert r.code == 0, (r.id, h, p, r.code, r.error)
        assert r.output == expected(h, p), (r.id, h, p, r.output)
    took = time.monotonic() - t0
    assert len(seen) == n, "%d of %d answered" % (len(seen), n)
    assert took < 60 * SCALE, "took %.1fs" % took
    wait_region_idle(d)


# --------------------------------------------------------------------------
# back-pressure

def test_queue_full_stops_reading_and_never_fails_a_task(crunchd):
    # 4 descriptors, 1 worker, 200 tasks of 5 ms: most of the time the queue
    # is full; the stream must wait (not read), never answer RESOURCE_EXHAUSTED.
    d = crunchd(workers=1, queue_capacity=4, queue_wait_ms=0)
    tasks = [pb.Task(id=i, handler="sleep", payload=b"5") for i in range(200)]
    results = list(d.stub().RunStream(iter(tasks), timeout=60 * SCALE))
    assert sorted(r.id for r in results) == list(range(200))
    assert all(r.code == 0 for r in results), [r for r in results if r.code][:3]
    wait_region_idle(d)


def test_queue_full_for_streams_does_not_starve_run(crunchd):
    d = crunchd(workers=2, queue_capacity=8, queue_wait_ms=5000)
    stub = d.stub()
    tasks = [pb.Task(id=i, handler="sleep", payload=b"2") for i in range(500)]
    res = []
    th = threading.Thread(target=lambda: res.extend(stub.RunStream(iter(tasks),
                                                                   timeout=60 * SCALE)))
    th.start()
    try:
        for i in range(20):
            r = d.run("echo", "run%d" % i, id=10_000 + i, timeout=30 * SCALE)
            assert r.output == b"run%d" % i
    finally:
        th.join(90 * SCALE)
    assert len(res) == 500 and all(r.code == 0 for r in res)


def test_streams_and_runs_waiting_for_a_tiny_queue_all_finish(crunchd):
    # Four streams and a stream of unary calls share a queue of 2: calls go on
    # and off the waiting list thousands of times while the streams read on.
    # (A stream read on before it was off that list, and the next full queue
    # listed it twice: the acceptor aborted on the broken list.)
    d = crunchd(workers=2, queue_capacity=2, queue_wait_ms=30000)
    acceptors = d.acceptors()
    n = 3000
    out = {}

    def stream(k):
        tasks = (pb.Task(id=i, handler="echo", payload=b"%d.%d" % (k, i)) for i in range(n))
        out[k] = list(d.stub().RunStream(tasks, timeout=120 * SCALE))

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    try:
        stub = d.stub()
        i = 0
        while any(th.is_alive() for th in threads) and i < 2000:
            r = d.run("echo", "run%d" % i, id=100_000 + i, stub=stub, timeout=60 * SCALE)
            assert r.output == b"run%d" % i
            i += 1
    finally:
        for th in threads:
            th.join(150 * SCALE)
    for k in range(4):
        got = out.get(k, [])
        assert sorted(r.id for r in got) == list(range(n)), "stream %d: %d results" % (k, len(got))
        assert all(r.code == 0 and r.output == b"%d.%d" % (k, r.id) for r in got)
    assert d.acceptors() == acceptors, "an acceptor was restarted"
    wait_region_idle(d)


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_client_that_does_not_read_is_bounded(crunchd):
    d = crunchd(workers=2, stream_max_pending=64)
    (apid,) = d.acceptors().values()
    d.run("echo", "warm up")
    base = proc_rss_kb(apid)
    payload = b"r" * 1000
    feeder = Feeder()
    ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
    stream = pb_grpc.CrunchStub(ch).RunStream(feeder, timeout=120 * SCALE)

    # Offer far more than can be buffered anywhere; never read a result.
    for i in range(100_000):
        feeder.put(pb.Task(id=i, handler="echo", payload=payload))

    def stalled():
        a = feeder.pulled
        time.sleep(0.3)
        return feeder.pulled == a and a > 0
    wait_for(stalled, what="the client's sends to stall (flow control)")
    pulled = feeder.pulled
    assert pulled < 100_000, "the server read everything: no back-pressure"
    # Server memory bounded: at most the pending cap and gRPC's windows.
    rss = proc_rss_kb(apid)
    assert rss - base < 64 * 1024, "acceptor RSS grew from %d to %d kB" % (base, rss)
    # Other clients are not affected.
    r = d.run("echo", "still here", id=7, stub=d.stub())
    assert r.output == b"still here"
    # Still stalled, nothing more was read while we looked.
    assert feeder.pulled - pulled < 1000
    stream.cancel()
    feeder.close()
    wait_region_idle(d)


# --------------------------------------------------------------------------
# ends: half-close, cancel, disconnect

def test_half_close_sends_every_result_then_ok(crunchd):
    d = crunchd(workers=2)
    feeder = Feeder()
    it = d.stub().RunStream(feeder, timeout=RPC_TIMEOUT)
    for i in range(6):
        feeder.put(pb.Task(id=i, handler="sleep", payload=b"200"))
    feeder.close()  # half-close while the sleeps run
    results = list(it)
    assert sorted(r.id for r in results) == list(range(6))
    assert it.code() == grpc.StatusCode.OK


def test_cancel_mid_stream_leaves_the_region_idle(crunchd):
    d = crunchd(workers=2, log_level="debug")
    feeder = Feeder()
    it = d.stub().RunStream(feeder, timeout=RPC_TIMEOUT)
    for i in range(2):
        feeder.put(pb.Task(id=i, handler="echo", payload=b"first"))
    got = [next(it), next(it)]
    assert sorted(r.id for r in got) == [0, 1]
    for i in range(10, 30):
        feeder.put(pb.Task(id=i, handler="sleep", payload=b"400"))
    wait_for(lambda: stats(d).queue.running == 2, what="two sleeps running")
    it.cancel()
    feeder.close()
    d.wait_log(r"RunStream: \d+ tasks cancelled: the call ended before their results")
    wait_region_idle(d)
    assert d.run("echo", "after").output == b"after"


def test_disconnect_mid_unary_leaves_the_region_idle(crunchd):
    d = crunchd(workers=1)
    ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.CrunchStub(ch)
    futs = [stub.Run.future(pb.Task(id=i, handler="sleep", payload=b"300"),
                            timeout=RPC_TIMEOUT) for i in range(5)]
    wait_for(lambda: stats(d).queue.running == 1, what="one sleep running")
    ch.close()  # the connection goes away with 5 calls open
    for f in futs:
        with pytest.raises(grpc.RpcError):
            f.result(timeout=RPC_TIMEOUT)
    wait_region_idle(d)


def test_disconnect_mid_stream_leaves_the_region_idle(crunchd):
    d = crunchd(workers=1)
    ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
    feeder = Feeder()
    it = pb_grpc.CrunchStub(ch).RunStream(feeder, timeout=RPC_TIMEOUT)
    for i in range(10):
        feeder.put(pb.Task(id=i, handler="sleep", payload=b"300"))
    wait_for(lambda: stats(d).queue.running == 1, what="one sleep running")
    ch.close()
    feeder.close()
    with pytest.raises(grpc.RpcError):
        list(it)
    wait_region_idle(d)


# --------------------------------------------------------------------------
# message size

def test_oversized_message_is_resource_exhausted(crunchd):
    d = crunchd(max_payload="64k", max_receive_message="128k")
    big = b"z" * (200 * 1024)
    code, details, _, _ = call_status(d.run, "echo", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    it = d.stub().RunStream(iter([pb.Task(id=1, handler="echo", payload=b"ok"),
                                  pb.Task(id=2, handler="echo", payload=big)]),
                            timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        list(it)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    # Between max_payload and max_receive_message: our own INVALID_ARGUMENT.
    code, details, _, _ = call_status(d.run, "echo", b"y" * (100 * 1024))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_payload" in details
    assert d.run("echo", "fine").output == b"fine"
    wait_region_idle(d)
