# test_run.py: Run end to end: every built-in handler, the Result fields,
# concurrency, and each kind of listener (TCP, unix:, IPv6).

import math
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import (GCD_SEEDS, PRIME_SEEDS, RPC_TIMEOUT, SCALE, expected, free_port,
                      have_ipv6_loopback, is_prime, pb, pb_grpc, start_blocker)


def test_seed_values_are_what_the_issue_says():
    # Guards the table itself, so a wrong expectation never blames the daemon.
    for n, want in PRIME_SEEDS.items():
        assert is_prime(n) == want, n


def test_echo(daemon):
    r = daemon.run("echo", "hi", id=7)
    assert r.id == 7
    assert r.code == 0
    assert r.output == b"hi"
    assert r.error == ""
    assert r.worker in (0, 1)


def test_echo_empty_binary_and_large_payloads(daemon):
    assert daemon.run("echo", b"", id=1).output == b""
    blob = bytes(range(256)) * 4  # NULs and high bytes must survive
    assert daemon.run("echo", blob, id=2).output == blob
    big = os.urandom(1 << 20)     # 1 MiB, under the default max_payload (4m)
    r = daemon.run("echo", big, id=3)
    assert r.id == 3 and r.output == big


def test_prime_seed_values(daemon):
    for i, (n, want) in enumerate(PRIME_SEEDS.items()):
        r = daemon.run("prime", str(n), id=100 + i, timeout=60)
        assert (r.id, r.code, r.output) == (100 + i, 0, b"true" if want else b"false"), n


def test_prime_small_values(daemon):
    for n in (3, 5, 7, 9, 15, 25, 97, 7919, 7921, 1000003, 999999999989):
        r = daemon.run("prime", str(n), id=n)
        assert r.output == (b"true" if is_prime(n) else b"false"), n


def test_gcd_seed_values(daemon):
    for i, (a, b) in enumerate(GCD_SEEDS):
        r = daemon.run("gcd", "%d %d" % (a, b), id=200 + i, timeout=60)
        assert (r.id, r.code) == (200 + i, 0)
        assert r.output == str(math.gcd(a, b)).encode(), (a, b)


def test_gcd_small_values(daemon):
    for a, b in ((12, 18), (18, 12), (7, 7), (1, 99), (17, 19), (1024, 4096)):
        assert daemon.run("gcd", "%d %d" % (a, b)).output == str(math.gcd(a, b)).encode()


def test_sleep_50ms(daemon):
    t0 = time.monotonic()
    r = daemon.run("sleep", "50", id=9)
    elapsed_us = (time.monotonic() - t0) * 1e6
    assert r.id == 9 and r.code == 0 and r.output == b""
    assert elapsed_us >= 50000
    assert r.run_us >= 45000
    # Measured inside the call, on the same clock: cannot exceed what we saw.
    assert r.queued_us + r.run_us <= elapsed_us + 2000


def test_result_fields(daemon):
    for i, id_ in enumerate((0, 1, 123456789012345, 2**64 - 1)):
        r = daemon.run("echo", "x%d" % i, id=id_)
        assert r.id == id_
        assert r.code == 0 and r.error == ""
        assert r.worker in (0, 1)
        assert r.queued_us < 10_000_000 and r.run_us < 10_000_000
    r = daemon.run("prime", "1000003")
    assert 0 < r.run_us < 10_000_000


def test_both_workers_take_tasks(crunchd):
    d = crunchd(workers=2)
    stub = d.stub()
    with ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(d.run, "sleep", "300", id=i, stub=stub) for i in range(6)]
        results = [f.result() for f in futs]
    assert sorted(r.id for r in results) == list(range(6))
    # Six 300 ms sleeps on two idle workers: both must have popped tasks.
    assert set(r.worker for r in results) == {0, 1}
    for r in results:
        assert r.run_us >= 290000


def test_queued_us_counts_the_wait(crunchd):
    d = crunchd(workers=1)
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (wpid,) = d.workers().values()
    with ThreadPoolExecutor(2) as ex:
        a = start_blocker(d, stub, ex, wpid, 2000, 1)
        t0 = time.monotonic()
        r = d.run("echo", "queued", id=2, stub=stub, timeout=30 * SCALE)
        waited_us = (time.monotonic() - t0) * 1e6
        assert a.result()[0] == grpc.StatusCode.OK
    assert (r.id, r.output, r.worker) == (2, b"queued", 0)
    # It waited behind most of a 2 s sleep, and we saw all of that wait.
    assert 300000 <= r.queued_us <= waited_us + 2000, (r.queued_us, waited_us)
    assert r.run_us < r.queued_us


# queue_spin_us = 0: every hand-over goes through the futex sleep and wake
# (with the default, polling hides that path under load); 10000: polling
# nearly always wins.
@pytest.mark.parametrize("spin", [None, 0, 10000])
def test_2000_calls_from_50_threads(crunchd, spin):
    d = crunchd(workers=2, queue_spin_us=spin)
    stubs = [pb_grpc.CrunchStub(d.channel()) for _ in range(5)]
    rnd = random.Random(1234)
    tasks = []
    for i in range(2000):
        kind = rnd.randrange(10)
        if kind < 4:
            h, p = "echo", os.urandom(rnd.randrange(0, 300))
        elif kind < 7:
            h, p = "prime", str(rnd.randrange(3, 2_000_000) | 1).encode()
        elif kind < 9:
            h, p = "gcd", ("%d %d" % (rnd.randrange(1, 20000), rnd.randrange(1, 20000))).encode()
        else:
            h, p = "sleep", str(rnd.randrange(0, 3)).encode()
        tasks.append((i + 1, h, p))
    # a few of the seed's heavy values too
    for j, n in enumerate(list(PRIME_SEEDS)[:2]):
        tasks[j * 997] = (tasks[j * 997][0], "prime", str(n).encode())

    lock = threading.Lock()
    errors = []
    workers_seen = set()
    done = [0]

    def one(i, h, p):
        try:
            r = d.run(h, p, id=i, stub=stubs[i % len(stubs)], timeout=max(RPC_TIMEOUT, 60))
        except Exception as e:  # grpc.RpcError and anything else
            with lock:
                errors.append((i, h, p[:40], repr(e)[:300]))
            return
        want = expected(h, p)
        with lock:
            done[0] += 1
            workers_seen.add(r.worker)
            if r.id != i or r.code != 0 or r.output != want or r.worker not in (0, 1):
                errors.append((i, h, p[:40], "got id=%d code=%d worker=%d output=%r"
                               % (r.id, r.code, r.worker, r.output[:40])))

    t0 = time.monotonic()
    with ThreadPoolExecutor(50) as ex:
        list(ex.map(lambda t: one(*t), tasks))
    elapsed = time.monotonic() - t0
    assert not errors, "%d of 2000 calls failed (%.1fs), first: %s" % (
        len(errors), elapsed, errors[:5])
    assert done[0] == 2000
    assert workers_seen == {0, 1}


def test_unix_listener_relative_path(crunchd):
    d = crunchd(listen=["unix:crunchd.sock"])
    path = os.path.join(d.prefix, "crunchd.sock")
    assert stat.S_ISSOCK(os.stat(path).st_mode), "relative unix: path must be under the prefix"
    assert d.target == "unix:" + path
    r = d.run("echo", "over unix", id=11)
    assert (r.id, r.output) == (11, b"over unix")
    assert d.run("prime", "112272535095293", timeout=60).output == b"true"


def test_unix_and_tcp_listeners_together(crunchd):
    short = tempfile.mkdtemp(prefix="crd-")  # sun_path is 108 bytes at most
    try:
        sock = os.path.join(short, "c.sock")
        d = crunchd(listen=["127.0.0.1:{port}", "unix:" + sock], acceptors=2)
        assert d.targets == ["127.0.0.1:%d" % d.port, "unix:" + sock]
        for n, t in enumerate(d.targets):
            stub = d.stub(t)
            for i in range(10):
                r = d.run("echo", "%s %d" % (t, i), id=n * 100 + i, stub=stub)
                assert r.output == ("%s %d" % (t, i)).encode()
    finally:
        shutil.rmtree(short, True)


def test_ipv6_listener(crunchd):
    if not have_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback (::1); IPv6 listener untested")
    port = free_port("::1")
    d = crunchd(listen=["[::1]:{port}"], port=port)
    assert d.target == "ipv6:[::1]:%d" % port
    r = d.run("echo", "v6", id=6)
    assert (r.id, r.output) == (6, b"v6")
    r = d.run("gcd", "1963309 2265973", timeout=60)
    assert r.output == str(math.gcd(1963309, 2265973)).encode()


def test_task_message_roundtrip_stub_sanity():
    # The stubs the other tests use are the contract's (field numbers).
    t = pb.Task(id=1, handler="echo", payload=b"x", timeout_ms=5)
    assert t.SerializeToString() == b"\x08\x01\x12\x04echo\x1a\x01x\x20\x05"
    r = pb.Result.FromString(b"\x08\x02\x10\x00\x1a\x01y\x28\x03\x30\x04\x38\x05")
    assert (r.id, r.output, r.worker, r.queued_us, r.run_us) == (2, b"y", 3, 4, 5)
