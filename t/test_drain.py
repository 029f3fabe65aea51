# test_drain.py: an acceptor's drain (SIGQUIT: graceful stop, and how a reload
# retires a generation): it stops accepting, serves every call on its open
# connections until max_connection_age_ms moves them away, ends the streams it
# owns with UNAVAILABLE "server reloading, reconnect" after their results, and
# exits once every connection is gone (or shutdown_timeout_ms passed).

import signal
import threading
import time

import grpc
import pytest

from conftest import (RPC_TIMEOUT, SCALE, WAIT, Feeder, alive, call_status, pb, pb_grpc,
                      wait_for)

RELOADING = "server reloading, reconnect"


def own_stub(d):
    ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
    return pb_grpc.CrunchStub(ch)


def test_quit_while_clients_call_fails_no_call(crunchd):
    d = crunchd(workers=2, max_connection_age_ms=1000, max_connection_age_grace_ms=1000,
                shutdown_timeout_ms=30000)
    (apid,) = d.acceptors().values()
    stop = threading.Event()
    calls = []  # (end time, code, details)
    lock = threading.Lock()

    def client(k):
        stub = own_stub(d)
        i = 0
        while not stop.is_set():
            i += 1
            payload = "c%d-%d" % (k, i)
            code, details, r, _ = call_status(d.run, "echo", payload, id=i, stub=stub,
                                              timeout=10 * SCALE)
            if code == grpc.StatusCode.OK and r.output != payload.encode():
                code, details = "WRONG", repr(r.output)
            with lock:
                calls.append((time.monotonic(), code, details))

    ths = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in ths:
        t.start()
    try:
        wait_for(lambda: len(calls) >= 200, what="200 calls before the QUIT")
        t_quit = time.monotonic()
        d.send_signal(signal.SIGQUIT)
        wait_for(lambda: not alive(apid), timeout=WAIT, what="the acceptor to finish its drain")
        t_gone = time.monotonic()
        assert d.proc.wait(WAIT) == 0
    finally:
        stop.set()
        for t in ths:
            t.join(WAIT)
    # Once the acceptor is gone nobody accepts (a QUIT starts no new
    # generation): the calls that reconnected wait in the master's accept
    # queue and fail when the master exits and closes its sockets. Those
    # never reached an acceptor ("failed to connect"), and come last.
    # Everything that reached the draining acceptor must have succeeded.
    with lock:
        done = list(calls)
    failed = [c for c in done if c[1] != grpc.StatusCode.OK]
    reached = [c for c in failed if "failed to connect to all addresses" not in c[2]]
    assert not reached, "%d calls failed on the draining acceptor: %s" % (
        len(reached), reached[:5])
    last_ok = max(c[0] for c in done if c[1] == grpc.StatusCode.OK)
    early = [c for c in failed if c[0] < last_ok]
    assert not early, "calls failed while others still succeeded: %s" % early[:5]
    assert not [c for c in failed if c[0] < t_gone - 0.5], "failures before the end"
    during = [c for c in done if t_quit < c[0] and c[1] == grpc.StatusCode.OK]
    assert len(during) > 20, "calls were served during the drain"
    d.wait_log(r"acceptor 0 draining: no new connections; open connections: \d+")
    d.wait_log(r"acceptor 0: every connection closed \d+ ms into the drain")


def test_quit_ends_an_open_stream_after_its_results(crunchd):
    d = crunchd(workers=2, log_level="debug", max_connection_age_ms=2500,
                max_connection_age_grace_ms=1000)
    feeder = Feeder()
    stub = own_stub(d)
    it = stub.RunStream(feeder, timeout=RPC_TIMEOUT)
    feeder.put(pb.Task(id=1, handler="echo", payload=b"before"))
    assert next(it).id == 1
    for i in (2, 3, 4):
        feeder.put(pb.Task(id=i, handler="sleep", payload=b"700"))
    d.wait_log(r"RunStream: task 4 handler sleep")
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"acceptor 0 draining")
    # A stream opened during the drain is told to go elsewhere at once.
    code, details, _, _ = call_status(lambda: list(stub.RunStream(
        iter([pb.Task(id=9, handler="echo", payload=b"x")]), timeout=RPC_TIMEOUT)))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, RELOADING)
    # The open one: the results of what it submitted, then UNAVAILABLE.
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for r in it:
            got.append(r)
    assert sorted(r.id for r in got) == [2, 3, 4]
    assert all(r.code == 0 for r in got)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == RELOADING
    feeder.close()
    assert d.proc.wait(WAIT) == 0


def test_quit_ends_updates_and_submit_streams(crunchd):
    d = crunchd(workers=1, log_level="debug", max_connection_age_ms=2500,
                max_connection_age_grace_ms=1000)
    stub = own_stub(d)
    updates = stub.Updates(pb.UpdatesRequest(), timeout=RPC_TIMEOUT)
    feeder = Feeder()
    sub = stub.Submit.future(feeder, timeout=RPC_TIMEOUT)
    feeder.put(pb.Task(id=1, handler="echo", payload=b"a"))
    assert next(updates).id == 1
    d.wait_log(r"Submit: task 1 handler echo")
    d.send_signal(signal.SIGQUIT)
    with pytest.raises(grpc.RpcError) as e:
        next(updates)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNAVAILABLE, RELOADING)
    with pytest.raises(grpc.RpcError) as e:
        sub.result(timeout=RPC_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith(RELOADING)
    assert "1 accepted" in e.value.details()
    feeder.close()
    assert d.proc.wait(WAIT) == 0


def test_drain_shows_in_stats_and_serves_run(crunchd):
    d = crunchd(workers=1, max_connection_age_ms=2500, max_connection_age_grace_ms=1000)
    stub = own_stub(d)
    assert d.run("echo", "x", stub=stub).output == b"x"
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"acceptor 0 draining")
    # The same connection still works, and Stats says we drain.
    assert d.run("echo", "during", stub=stub).output == b"during"
    procs = stub.Stats(pb.StatsRequest(), timeout=RPC_TIMEOUT).processes
    acc = [p for p in procs if p.role == "acceptor"]
    assert acc and acc[0].state == "draining", procs
    assert d.proc.wait(WAIT) == 0


def test_drain_is_capped_by_shutdown_timeout(crunchd):
    # Connections that would live a minute: the drain gives up after
    # shutdown_timeout_ms and the acceptor still exits cleanly.
    d = crunchd(max_connection_age_ms=60000, shutdown_timeout_ms=1500)
    stub = own_stub(d)
    assert d.run("echo", "x", stub=stub).output == b"x"
    t0 = time.monotonic()
    d.send_signal(signal.SIGQUIT)
    assert d.proc.wait(WAIT) == 0
    assert time.monotonic() - t0 < 15 * SCALE
    d.wait_log(r"acceptor 0: \d+ connections? and 0 calls still open after "
               r"shutdown_timeout_ms \(1500 ms\) of draining; closing them")


def test_term_during_a_drain_stops_at_once(crunchd):
    d = crunchd(max_connection_age_ms=60000, shutdown_timeout_ms=60000)
    stub = own_stub(d)
    assert d.run("echo", "x", stub=stub).output == b"x"
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"acceptor 0 draining")
    t0 = time.monotonic()
    d.send_signal(signal.SIGTERM)
    assert d.proc.wait(WAIT) == 0
    assert time.monotonic() - t0 < 10 * SCALE
