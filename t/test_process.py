# test_process.py: the process model: titles, the single-threaded gRPC-free
# master, jemalloc everywhere, replacement of killed children, fast stop on
# TERM/INT, PR_SET_PDEATHSIG, a port already in use, the error log's format.

import os
import re
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import (LOG_LINE, SCALE, WAIT, alive, pb_grpc, proc_cmdline, run_crunchd,
                      session_members, start_blocker, thread_count, wait_for)


def test_titles_slots_and_pid_file(crunchd):
    d = crunchd(acceptors=2, workers=3)
    assert proc_cmdline(d.pid).startswith("crunchd: master"), proc_cmdline(d.pid)
    kids = d.children()
    assert len(kids) == 5, "2 acceptors + 3 workers, and nothing else: %r" % kids
    for pid, title in kids.items():
        assert title.startswith("crunchd: acceptor") or title.startswith("crunchd: worker"), title
    assert sorted(d.acceptors()) == [0, 1], kids
    assert sorted(d.workers()) == [0, 1, 2], kids
    # pid_file is relative: it lives under -p PREFIX, not in the cwd.
    with open(os.path.join(d.prefix, "crunchd.pid")) as f:
        assert f.read().strip() == str(d.pid)
    assert not os.path.exists(os.path.join(d.rundir, "crunchd.pid"))
    assert d.run("echo", "x").worker in (0, 1, 2)


def test_workers_auto_is_online_cpus(crunchd):
    d = crunchd(workers="auto")
    assert len(d.workers()) == os.cpu_count()
    assert len(d.acceptors()) == 1


def _socket_inodes(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]$", link)
        if m:
            out.add(int(m.group(1)))
    return out


def _tcp_sockets():
    """{inode: (local port, state hex)} from /proc/net/tcp{,6}."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            f = open("/proc/net/" + name)
        except OSError:
            continue
        with f:
            next(f)
            for line in f:
                parts = line.split()
                out[int(parts[9])] = (int(parts[1].rsplit(":", 1)[1], 16), parts[3])
    return out


def test_master_single_thread_and_no_grpc_sockets(crunchd):
    d = crunchd(acceptors=2, workers=2)
    stub = d.stub()
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: d.run("echo", str(i), id=i, stub=stub), range(100)))
    assert [r.id for r in results] == list(range(100))
    assert thread_count(d.pid) == 1, "the master must stay single-threaded (no grpc_init)"
    tcp = _tcp_sockets()
    mine = {i: tcp[i] for i in _socket_inodes(d.pid) if i in tcp}
    listening = {port for port, state in mine.values() if state == "0A"}
    others = [(port, state) for port, state in mine.values() if state != "0A"]
    assert listening == {d.port}, "master's TCP listeners: %r" % mine
    assert not others, "the master holds non-listening TCP sockets (gRPC?): %r" % others
    # The acceptors run gRPC (threads); the workers never do.
    for slot, pid in d.acceptors().items():
        assert thread_count(pid) >= 1


def test_jemalloc_in_every_process(crunchd):
    d = crunchd(acceptors=1, workers=2)
    d.run("echo", "allocate something")
    pids = d.all_pids()
    assert len(pids) == 4
    for pid in pids:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
        assert "jemalloc" in maps, "%s (pid %d) does not map jemalloc" % (proc_cmdline(pid), pid)


def _jemalloc_header_version():
    try:
        with open("/usr/include/jemalloc/jemalloc.h") as f:
            text = f.read()
    except OSError:
        return None
    parts = [re.search(r"#define\s+JEMALLOC_VERSION_%s\s+(\d+)" % k, text)
             for k in ("MAJOR", "MINOR", "BUGFIX")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def test_version_flags():
    r = run_crunchd(["-v"])
    assert r.returncode == 0, r
    assert "crunchd version 0.1.0" in r.stdout + r.stderr
    r = run_crunchd(["-V"])
    assert r.returncode == 0, r
    out = r.stdout + r.stderr
    assert "crunchd version 0.1.0" in out
    m = re.search(r"^.*jemalloc\D*(\d+\.\d+\.\d+)\S*.*$", out, re.M)
    assert m, "-V must report the jemalloc version (mallctl \"version\"):\n" + out
    want = _jemalloc_header_version()
    if want:
        assert m.group(1) == want, (m.group(0), want)


def _replaced(d, role, slot, old_pid):
    def pred():
        cur = getattr(d, role)()
        pid = cur.get(slot)
        return pid if pid is not None and pid != old_pid else None
    return wait_for(pred, WAIT, what="a new %s %d to replace pid %d" % (role[:-1], slot, old_pid))


def test_sigkill_worker_is_replaced(crunchd):
    d = crunchd(workers=2)
    assert d.run("echo", "before").output == b"before"
    workers, acceptors = d.workers(), d.acceptors()
    victim = workers[1]
    os.kill(victim, signal.SIGKILL)
    new = _replaced(d, "workers", 1, victim)
    assert proc_cmdline(new).startswith("crunchd: worker")
    wait_for(lambda: not alive(victim), what="the killed worker to be reaped")
    assert d.workers() == {0: workers[0], 1: new}
    assert d.acceptors() == acceptors, "an acceptor was replaced too"
    assert alive(d.pid)
    # The master noticed and said so (warn or notice; never alert for SIGKILL).
    d.wait_log(r"\b%d\b" % victim)
    for i in range(20):
        assert d.run("gcd", "12 18", id=i).output == b"6"
    # Both slots serve again.
    stub = d.stub()
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda i: d.run("sleep", "300", id=i, stub=stub), range(6)))
    assert {r.worker for r in rs} == {0, 1}


def test_sigkill_acceptor_is_replaced(crunchd):
    d = crunchd(acceptors=1, workers=2)
    stub = d.stub()
    assert d.run("echo", "before", stub=stub).output == b"before"
    workers, acceptors = d.workers(), d.acceptors()
    victim = acceptors[0]
    os.kill(victim, signal.SIGKILL)
    new = _replaced(d, "acceptors", 0, victim)
    assert proc_cmdline(new).startswith("crunchd: acceptor")
    wait_for(lambda: not alive(victim), what="the killed acceptor to be reaped")
    # The same client channel reconnects to the new acceptor (the master kept
    # the listening socket), and a new channel works too.
    r, failures = d.run_until_ok("echo", b"again")
    assert r.output == b"again"
    fresh = pb_grpc.CrunchStub(d.channel())  # a new channel
    for i in range(10):
        assert d.run("prime", "97", id=i, stub=fresh).output == b"true"
    assert d.workers() == workers, "workers must survive an acceptor's death"
    d.wait_log(r"\b%d\b" % victim)


def test_sigsegv_worker_is_alert_and_replaced(crunchd):
    d = crunchd(workers=2)
    d.allow_log(r"\[alert\]")
    d.allow_log(r"AddressSanitizer|SEGV")  # a sanitizer build reports the signal
    d.run("echo", "before")
    victim = d.workers()[0]
    with open("/proc/%d/maps" % victim) as f:
        sanitized = "libasan" in f.read()
    os.kill(victim, signal.SIGSEGV)
    _replaced(d, "workers", 0, victim)
    if sanitized:
        # ASan catches the signal itself, reports, and exits with status 1:
        # the master only sees an exit. Its obituary is all we can ask for.
        d.wait_log(r"\b%d\b" % victim)
    else:
        line = d.wait_log(r"\[alert\].*(\b%d\b|SIGSEGV|signal 11)" % victim)
        assert "[alert]" in line
    r, _ = d.run_until_ok("echo", b"after")
    assert r.output == b"after"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_fast_stop(crunchd, sig):
    d = crunchd(acceptors=2, workers=2)
    d.run("echo", "x")
    kids = list(d.children())
    assert len(kids) == 4
    assert os.path.exists(d.pid_file)
    rc = d.stop(sig)
    assert rc == 0, "exit status after %s: %r" % (signal.Signals(sig).name, rc)
    # Checked at once: the master waits for its children before it exits.
    still = [(p, proc_cmdline(p)) for p in kids if alive(p)]
    assert not still, "children alive after the master exited: %r" % still
    assert not session_members(d.pid)
    assert not os.path.exists(d.pid_file), "pid file not removed"


def test_master_death_takes_children_down(crunchd):
    # PR_SET_PDEATHSIG: no child outlives a SIGKILLed master.
    d = crunchd(acceptors=1, workers=2)
    kids = list(d.children())
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(WAIT)
    wait_for(lambda: not any(alive(p) for p in kids), what="children to die with the master")


def _start_fails(d):
    d.allow_log(r"\[emerg\].*in use")  # the expected refusal
    d.start(wait=False)
    try:
        rc = d.proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError("crunchd kept running on a port already in use")
    return rc, d.stderr_text() + d.log_text()


def test_port_in_use_by_another_socket(crunchd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        d = crunchd(start=False, port=port)
        rc, text = _start_fails(d)
    assert rc == 1, (rc, text)
    lines = [l for l in text.splitlines() if "in use" in l]
    assert lines, "no 'in use' message:\n" + text
    assert any(str(port) in l for l in lines), "message must name the address:\n" + text
    assert not os.path.exists(d.pid_file)
    assert not d.leftovers()


def test_port_in_use_by_running_crunchd(crunchd):
    first = crunchd()
    before = first.all_pids()
    second = crunchd(start=False, port=first.port)
    rc, text = _start_fails(second)
    assert rc == 1, (rc, text)
    assert re.search(r"127\.0\.0\.1:%d.*in use|in use.*127\.0\.0\.1:%d" % (first.port, first.port),
                     text), text
    assert not second.leftovers()
    assert not os.path.exists(second.pid_file)
    # The running one is undisturbed.
    assert first.all_pids() == before
    assert first.run("echo", "still here").output == b"still here"


def test_log_format_and_level(crunchd):
    d = crunchd(log_level="debug")
    for i in range(5):
        d.run("echo", "x", id=i)
    assert d.stop() == 0
    lines = d.log_text().splitlines()
    assert lines, "nothing logged at log_level debug"
    bad = [l for l in lines if not LOG_LINE.match(l)]
    assert not bad, "lines not in 'YYYY/MM/DD HH:MM:SS [level] PID#TID: message' form:\n" + \
        "\n".join(bad[:10])
    pids = {int(LOG_LINE.match(l).group(3)) for l in lines}
    assert d.pid in pids, "the master logged nothing"

    q = crunchd(log_level="warn")
    q.run("echo", "x")
    assert q.stop() == 0
    chatty = [l for l in q.log_text().splitlines()
              if re.search(r"\[(debug|info|notice)\]", l)]
    assert not chatty, "log_level warn still logs:\n" + "\n".join(chatty[:10])


# --------------------------------------------------------------------------
# Children killed while a call is in flight (DESIGN section 4, "Failures").

def test_sigkill_worker_mid_task_aborts_that_call(crunchd):
    d = crunchd(workers=1, queue_capacity=2)
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (victim,) = d.workers().values()
    with ThreadPoolExecutor(2) as ex:
        a = start_blocker(d, stub, ex, victim, 20000, 77)
        os.kill(victim, signal.SIGKILL)
        code, details, _, secs = a.result()
    assert code == grpc.StatusCode.ABORTED, (code, details)
    assert secs < 15 * SCALE, "the call learnt of its worker's death only after %.1fs" % secs
    assert str(victim) in details and "77" in details, \
        "the message should name the worker's pid and the task: %r" % details
    _replaced(d, "workers", 0, victim)
    # Nothing leaked: both descriptors are usable at once.
    with ThreadPoolExecutor(2) as ex:
        rs = list(ex.map(lambda i: d.run("sleep", "100", id=i, stub=stub), range(2)))
    assert [r.id for r in rs] == [0, 1]


def test_sigkill_acceptor_mid_call(crunchd):
    d = crunchd(workers=1, queue_capacity=1)
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (wpid,) = d.workers().values()
    (victim,) = d.acceptors().values()
    with ThreadPoolExecutor(2) as ex:
        a = start_blocker(d, stub, ex, wpid, 1500, 5)
        os.kill(victim, signal.SIGKILL)
        code, details, _, secs = a.result()
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    _replaced(d, "acceptors", 0, victim)
    # The only descriptor comes back once the worker is done with the orphan.
    r, _ = d.run_until_ok("sleep", b"10")
    assert r.code == 0
    assert d.workers() == {0: wpid}, "the worker should have survived"


def test_fast_stop_with_a_call_in_flight(crunchd):
    d = crunchd(workers=1)
    stub = d.stub()
    d.run("echo", "warm up", stub=stub)
    (wpid,) = d.workers().values()
    with ThreadPoolExecutor(2) as ex:
        a = start_blocker(d, stub, ex, wpid, 20000, 5)
        rc = d.stop(signal.SIGTERM)
        code, details, _, secs = a.result()
    assert rc == 0
    assert code != grpc.StatusCode.OK and code != grpc.StatusCode.DEADLINE_EXCEEDED, \
        "the in-flight call must end when the server stops: %r" % ((code, details),)
    assert not os.path.exists(d.pid_file)
