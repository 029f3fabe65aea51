# test_reload.py: SIGHUP reloads: worker-level (new workers, same queues and
# acceptors), acceptor-level (a new generation, the old one drains by
# connection age), a broken file (refused, the old configuration serves on),
# listeners added and removed, and 20 reloads under load with no failed call.

import os
import re
import signal
import socket
import threading

import grpc

from conftest import WAIT, alive, free_port, pb, wait_for


def titles(d):
    return d.children()  # {pid: title}


def gen_of(title):
    m = re.search(r" gen (\d+)$", title)
    return int(m.group(1)) if m else None


def reload(d, expect, **settings):
    """Rewrite the config with settings, SIGHUP, wait for a new log line
    matching expect."""
    rx = re.compile(expect)
    count = lambda: sum(1 for l in d.log_text().splitlines() if rx.search(l))  # noqa: E731
    before = count()
    d.settings.update(settings)
    d.write_conf()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: count() > before, what="a log line matching %r" % expect)


def workers_of(d, gen=None):
    return {p: t for p, t in titles(d).items()
            if t.startswith("crunchd: worker") and (gen is None or gen_of(t) == gen)}


def acceptors_of(d):
    return {p: t for p, t in titles(d).items() if t.startswith("crunchd: acceptor")}


def test_worker_level_reload_replaces_only_the_workers(crunchd):
    d = crunchd(workers=2)
    acc = set(acceptors_of(d))
    old = set(workers_of(d))
    reload(d, r"reload: generation 2: 3 new workers", workers=3)
    wait_for(lambda: len(workers_of(d, 2)) == 3 and not (set(workers_of(d)) & old),
             what="3 workers of generation 2 and none of generation 1")
    assert set(acceptors_of(d)) == acc, "the acceptor was kept"
    assert not any(alive(p) for p in old)
    assert d.run("echo", "after").output == b"after"
    assert {d.run("echo", "x", id=i).worker for i in range(30)} <= {0, 1, 2}


def test_broken_reload_is_refused_and_the_old_configuration_serves(crunchd):
    d = crunchd(workers=2)
    kids = set(titles(d))
    d.allow_log(r"\[error\].*reload refused")
    reload(d, r"reload refused: .*crunchd\.conf:\d+: workers", workers=0)
    assert set(titles(d)) == kids, "nothing was restarted"
    assert d.run("echo", "still").output == b"still"
    # fixed again: the next reload is generation 2 (the refused one counted nothing)
    reload(d, r"reload: generation 2", workers=1)
    wait_for(lambda: len(workers_of(d, 2)) == 1 and len(workers_of(d)) == 1,
             what="one worker of generation 2")


def test_acceptor_level_reload_starts_a_generation_and_drains_the_old(crunchd):
    d = crunchd(workers=1, acceptors=1, max_connection_age_ms=1000,
                max_connection_age_grace_ms=1000)
    old = set(titles(d))
    assert d.run("echo", "x").output == b"x"
    reload(d, r"reload: generation 2 started", acceptors=2)
    wait_for(lambda: sorted(t for t in acceptors_of(d).values()) ==
             ["crunchd: acceptor 0 gen 2", "crunchd: acceptor 1 gen 2"],
             what="two acceptors of generation 2 and no other")
    wait_for(lambda: not any(alive(p) for p in old), what="every process of generation 1 gone")
    d.wait_log(r"generation 1 has drained")
    for i in range(20):
        assert d.run("echo", str(i), id=i).output == str(i).encode()


def _connects(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _master_listen_inodes(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            l = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if l.startswith("socket:["):
            out.add(l)
    return out


def test_listeners_added_kept_and_removed(crunchd):
    p2, p3 = free_port(), free_port()
    d = crunchd(workers=1, max_connection_age_ms=1000, max_connection_age_grace_ms=1000,
                listen=["127.0.0.1:{port}", "127.0.0.1:%d" % p2])
    before = _master_listen_inodes(d.pid)
    assert _connects(p2)
    reload(d, r"reload: generation 2 started",
           listen=["127.0.0.1:{port}", "127.0.0.1:%d" % p3])
    stub3 = d.stub("127.0.0.1:%d" % p3)
    r = stub3.Run(pb.Task(id=3, handler="echo", payload=b"p3"), timeout=WAIT,
                  wait_for_ready=True)
    assert r.output == b"p3", "the added address serves"
    wait_for(lambda: not _connects(p2), what="the removed address to close once drained")
    after = _master_listen_inodes(d.pid)
    assert len(before & after) == 1, "the listener that stayed listed is the same socket"
    assert d.run("echo", "kept").output == b"kept"


def test_twenty_reloads_under_load_fail_no_call(crunchd):
    d = crunchd(workers=2, acceptors=1, max_connection_age_ms=1000,
                max_connection_age_grace_ms=5000)
    stop = threading.Event()
    errors, counts = [], [0] * 8

    def client(k):
        stub = d.stub()
        i = 0
        while not stop.is_set():
            i += 1
            tid = k * 10_000_000 + i
            try:
                if i % 3 == 0:
                    r = stub.Run(pb.Task(id=tid, handler="prime", payload=b"1000003"),
                                 timeout=WAIT)
                    ok = r.output == b"true"
                else:
                    payload = ("%d-%d" % (k, i)).encode()
                    r = stub.Run(pb.Task(id=tid, handler="echo", payload=payload),
                                 timeout=WAIT)
                    ok = r.output == payload
                if not ok or r.id != tid:
                    errors.append(("wrong result", tid, r))
                counts[k] += 1
            except grpc.RpcError as e:
                errors.append((tid, e.code(), e.details()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    d.allow_log(r"\[error\].*reload refused")
    plan = []
    for n in range(20):
        if n == 7:
            plan.append(("broken", dict(workers="many")))
        elif n in (4, 11, 16):
            plan.append(("acceptor", dict(acceptors=2 if n != 16 else 1,
                                          max_connection_age_ms=1000 + 100 * n)))
        else:
            plan.append(("worker", dict(workers=1 + n % 3)))
    try:
        gen, last_region_gen = 1, 1
        for kind, change in plan:
            before = sum(counts)
            if kind == "broken":
                reload(d, r"reload refused", **change)
                d.settings["workers"] = 2
            else:
                gen += 1
                reload(d, r"reload: generation %d[: ]" % gen, **change)
                if kind == "acceptor":
                    last_region_gen = gen
            # keep load flowing through every step
            wait_for(lambda: sum(counts) > before + 8, what="calls completing after a reload")
        assert gen == 20, "19 valid reloads"

        def settled():
            t = titles(d)
            ws = [gen_of(x) for x in t.values() if x.startswith("crunchd: worker")]
            ac = [gen_of(x) for x in t.values() if x.startswith("crunchd: acceptor")]
            return ws and all(g == gen for g in ws) and ac and \
                all(g == last_region_gen for g in ac)
        wait_for(settled, timeout=WAIT * 2, what="only generation %d processes" % gen)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert not errors, "failed calls during reloads: %d of %d, e.g. %r" % (
        len(errors), sum(counts) + len(errors), errors[:5])
    print("calls", sum(counts), "errors", len(errors))
    assert sum(counts) > 200


def _fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def test_no_fd_or_process_leak_across_100_reloads(crunchd):
    """100 reloads (most worker-level, every tenth acceptor-level): the master
    and the children of the final generation hold as many descriptors as
    before, and no process is left over."""
    d = crunchd(workers=1, acceptors=1, max_connection_age_ms=1000,
                max_connection_age_grace_ms=1000)
    assert d.run("echo", "x").output == b"x"
    master_before = _fds(d.pid)
    kids_before = sorted(_fds(p) for p in d.children())
    gen = 1
    for n in range(100):
        gen += 1
        if n % 10 == 9:
            reload(d, r"reload: generation %d started" % gen,
                   max_connection_age_ms=1000 + n)
        else:
            reload(d, r"reload: generation %d: " % gen, workers=1 + n % 2)
    d.settings["workers"] = 1
    reload(d, r"reload: generation %d: " % (gen + 1), workers=1)

    def settled():
        t = titles(d)
        return len(t) == 2 and sum(1 for x in t.values() if x.startswith("crunchd: worker")) == 1
    wait_for(settled, timeout=WAIT * 2, what="one acceptor and one worker left")
    assert d.run("echo", "y").output == b"y"
    assert _fds(d.pid) == master_before, "master descriptors: %d -> %d" % (
        master_before, _fds(d.pid))
    assert sorted(_fds(p) for p in d.children()) == kids_before
