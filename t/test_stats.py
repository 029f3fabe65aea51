# test_stats.py: crunch.v1.Crunch/Stats: the structured snapshot (DESIGN 7)
# at idle, under load, and its per-handler counts and percentiles.

import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from conftest import RPC_TIMEOUT, SCALE, call_status, pb, wait_for

HANDLERS = ("echo", "prime", "gcd", "sleep")


def stats(d, timeout=RPC_TIMEOUT):
    return d.stub().Stats(pb.StatsRequest(), timeout=timeout)


def rows(s, role):
    return [p for p in s.processes if p.role == role]


def handler(s, name):
    for h in s.handlers:
        if h.name == name:
            return h
    raise AssertionError("no handler %r in Stats: %s" % (name, [h.name for h in s.handlers]))


def rows_match_children(d):
    """Stats, once its process rows are exactly the daemon's children (the
    master writes a row's pid right after fork, so wait for it)."""
    want_acc = set(d.acceptors().values())
    want_wrk = set(d.workers().values())
    s = stats(d)
    got_acc = set(p.pid for p in rows(s, "acceptor"))
    got_wrk = set(p.pid for p in rows(s, "worker"))
    if got_acc == want_acc and got_wrk == want_wrk and \
            all(p.state != "starting" for p in s.processes):
        return s
    return None


def test_stats_at_idle(crunchd):
    t_before = int(time.time() * 1e6)
    d = crunchd(workers=2)
    s = wait_for(lambda: rows_match_children(d), what="Stats rows to match the children")

    assert s.generation == 1
    # The master started before we asked, and not long before this test did.
    assert 0 < s.start_time_unix_us <= int(time.time() * 1e6)
    assert s.start_time_unix_us >= t_before - 5 * 1e6
    assert not s.HasField("last_reload")
    assert s.reloads_ok == 0 and s.reloads_failed == 0

    acc = rows(s, "acceptor")
    wrk = rows(s, "worker")
    assert len(acc) == 1 and len(wrk) == 2 and len(s.processes) == 3
    assert sorted(p.pid for p in acc) == sorted(d.acceptors().values())
    assert {p.slot: p.pid for p in wrk} == d.workers()
    assert s.acceptor_pid == acc[0].pid and s.acceptor_slot == acc[0].slot == 0
    for p in s.processes:
        assert p.generation == 1
        assert p.state in ("idle", "busy"), p  # acceptors report idle while serving
        assert p.current_task_id == 0 and p.current_handler == "" and p.running_us == 0
        assert 0 < p.start_time_unix_us <= int(time.time() * 1e6)
    for p in wrk:
        assert p.state == "idle" and p.tasks_done == 0

    q = s.queue
    assert q.generation == 1
    assert q.depth == 0 and q.running == 0
    assert q.capacity > 0 and q.tasks_free == q.capacity
    assert q.arena_size > 0 and q.arena_free == q.arena_size and q.arena_used == 0
    assert s.updates_depth == 0 and s.updates_capacity > 0

    names = [h.name for h in s.handlers]
    for name in HANDLERS:
        assert name in names
    for h in s.handlers:
        assert (h.count, h.errors, h.queue_p50_us, h.queue_p99_us, h.queue_max_us,
                h.run_p50_us, h.run_p99_us, h.run_max_us) == (0,) * 8, h


def test_stats_configured_sizes(crunchd):
    d = crunchd(workers=3, queue_capacity=64, shm_size="16m")
    s = wait_for(lambda: rows_match_children(d), what="Stats rows to match the children")
    assert len(rows(s, "worker")) == 3
    assert s.queue.capacity == 64 and s.queue.tasks_free == 64
    assert s.queue.arena_size == 16 << 20 and s.queue.arena_free == 16 << 20


def test_stats_under_load(crunchd):
    """4 threads run `sleep 200` on 2 workers: 2 run, 2 wait in the queue."""
    d = crunchd(workers=2)
    wait_for(lambda: rows_match_children(d), what="Stats rows to match the children")
    stub = d.stub()
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(call_status, d.run, "sleep", "200", id=100 + i, stub=stub,
                          timeout=60 * SCALE) for i in range(4)]

        def loaded():
            s = stats(d)
            busy = [p for p in rows(s, "worker")
                    if p.state == "busy" and p.current_handler == "sleep" and p.running_us > 0]
            if busy and (s.queue.depth > 0 or s.queue.running == 2):
                return s, busy
            return None
        s, busy = wait_for(loaded, what="Stats to show the sleep tasks running or queued")
        for p in busy:
            assert 100 <= p.current_task_id <= 103
            assert p.running_us < 60 * 1e6
        assert s.queue.tasks_free < s.queue.capacity
        assert s.queue.arena_used == s.queue.arena_size - s.queue.arena_free
        for f in futs:
            code, details, r, _ = f.result()
            assert code == grpc.StatusCode.OK, details

    # Everything back to idle once the calls are answered.
    def idle():
        s = stats(d)
        q = s.queue
        ok = (q.depth == 0 and q.running == 0 and q.tasks_free == q.capacity and
              q.arena_free == q.arena_size and
              all(p.state == "idle" for p in rows(s, "worker")) and
              sum(p.tasks_done for p in rows(s, "worker")) == 4 and
              handler(s, "sleep").count == 4)
        return s if ok else None
    wait_for(idle, what="Stats to show an idle queue and 4 sleep tasks done")


def test_stats_acceptor_connections_waiting_and_refused(crunchd):
    """An operator who sees RESOURCE_EXHAUSTED can see why in Stats: calls
    waiting for room in a full queue now, and Runs refused for it."""
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=60000)
    wait_for(lambda: rows_match_children(d), what="Stats rows to match the children")
    s = stats(d)
    (acc,) = rows(s, "acceptor")
    assert acc.connections >= 1  # ours, at least
    assert acc.waiting_for_room == 0 and acc.refused_queue_full == 0
    for p in rows(s, "worker"):
        assert (p.connections, p.waiting_for_room, p.refused_queue_full) == (0, 0, 0)

    stub = d.stub()
    with ThreadPoolExecutor(3) as ex:
        # One sleep holds the only descriptor; two more Runs wait for it.
        first = ex.submit(call_status, d.run, "sleep", "400", id=1, stub=stub,
                          timeout=60 * SCALE)
        wait_for(lambda: stats(d).queue.running == 1, what="the first sleep running")
        later = [ex.submit(call_status, d.run, "echo", "w%d" % i, id=10 + i, stub=stub,
                           timeout=60 * SCALE) for i in range(2)]

        def waiting():
            (a,) = rows(stats(d), "acceptor")
            return a if a.waiting_for_room == 2 else None
        wait_for(waiting, what="Stats to show 2 calls waiting for room")
        for f in [first] + later:
            code, details, _, _ = f.result()
            assert code == grpc.StatusCode.OK, details
    wait_for(lambda: rows(stats(d), "acceptor")[0].waiting_for_room == 0,
             what="no call waiting once they are answered")

    # queue_wait_ms 0 refuses at once while the queue is full: counted.
    d2 = crunchd(workers=1, queue_capacity=1, queue_wait_ms=0)
    with ThreadPoolExecutor(1) as ex:
        first = ex.submit(call_status, d2.run, "sleep", "300", id=1, timeout=60 * SCALE)
        wait_for(lambda: stats(d2).queue.running == 1, what="the sleep running")
        code, details, _, _ = call_status(d2.run, "echo", "x", id=2)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        (a,) = rows(stats(d2), "acceptor")
        assert a.refused_queue_full == 1, a
        assert first.result()[0] == grpc.StatusCode.OK


def test_stats_handler_counts_and_percentiles(crunchd):
    d = crunchd(workers=2)
    stub = d.stub()
    n_echo, n_sleep, sleep_ms = 20, 6, 50
    for i in range(n_echo):
        assert d.run("echo", "x%d" % i, id=i, stub=stub).output == b"x%d" % i
    for i in range(n_sleep):
        d.run("sleep", str(sleep_ms), id=1000 + i, stub=stub)
    # Handler errors are counted too (a bad number for prime).
    code, _, _, _ = call_status(d.run, "prime", "not-a-number", id=7, stub=stub)
    assert code != grpc.StatusCode.OK

    # A worker answers first and updates the shared figures right after, one
    # field at a time (count, errors, histograms, max): wait for all of them.
    def counted():
        s = stats(d)
        echo, sleep, prime = handler(s, "echo"), handler(s, "sleep"), handler(s, "prime")
        if (echo.count, sleep.count, prime.count, prime.errors) == (n_echo, n_sleep, 1, 1) \
                and sleep.run_max_us > 0 and echo.run_max_us > 0 \
                and sum(p.tasks_done for p in rows(s, "worker")) == n_echo + n_sleep + 1:
            return s
        return None
    s = wait_for(counted, what="Stats handler figures to reach the calls made")

    echo, sleep, prime = handler(s, "echo"), handler(s, "sleep"), handler(s, "prime")
    assert echo.errors == 0 and sleep.errors == 0
    assert prime.errors == 1
    assert handler(s, "gcd").count == 0
    assert sleep.run_p50_us >= sleep_ms * 1000
    assert sleep.run_p50_us <= sleep.run_p99_us <= sleep.run_max_us
    # A sleep of 50 ms does not take seconds, even on a busy machine.
    assert sleep.run_max_us < 5 * 1e6 * SCALE
    # p50 is the upper end of a bucket at most 25% wide (crunch.proto).
    assert sleep.run_p50_us <= sleep.run_max_us
    for h in (echo, sleep, prime):
        assert h.queue_p50_us <= h.queue_p99_us <= h.queue_max_us
        assert h.run_p50_us <= h.run_p99_us <= h.run_max_us
    assert echo.run_p50_us < sleep_ms * 1000
    assert sum(p.tasks_done for p in rows(s, "worker")) == n_echo + n_sleep + 1


def test_stats_refuses_garbage(daemon):
    call = daemon.channel().unary_unary("/crunch.v1.Crunch/Stats",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
    # Field 1, wire type 2, length 5 with only 1 byte: not a StatsRequest.
    try:
        call(b"\x0a\x05x", timeout=RPC_TIMEOUT)
        raise AssertionError("a malformed StatsRequest was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    # Unknown fields are fine (forward compatibility): a proper reply.
    raw = call(b"\x08\x01", timeout=RPC_TIMEOUT)
    assert pb.StatsReply.FromString(raw).generation == 1


def test_stats_many_calls_in_parallel(daemon):
    """Stats answers concurrent callers; every call gets a whole reply."""
    stub = daemon.stub()
    with ThreadPoolExecutor(8) as ex:
        replies = list(ex.map(lambda _: stub.Stats(pb.StatsRequest(), timeout=RPC_TIMEOUT),
                              range(64)))
    pids = set(r.acceptor_pid for r in replies)
    assert pids == set(daemon.acceptors().values())
    assert all(r.queue.capacity > 0 for r in replies)
