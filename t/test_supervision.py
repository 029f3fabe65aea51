# test_supervision.py: what happens to tasks and processes when workers crash,
# hang, exit or are recycled, when an acceptor is killed under load, when a
# slot crash-loops, and on SIGTTIN/SIGTTOU. test_handlers=True loads the test
# modules t/modules/{crash,hang,exit}.so (handlers crash, hang, exit).

import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from conftest import WAIT, alive, call_status, pb, pb_grpc, wait_for


def workers(d):
    return {p: t for p, t in d.children().items() if t.startswith("crunchd: worker")}


def test_worker_crash_mid_task_fails_it_with_aborted(crunchd):
    d = crunchd(test_handlers=True, workers=1)
    d.allow_log(r"\[alert\].*worker 0 .*killed by SIGSEGV")
    (old,) = workers(d)
    code, details, _, _ = call_status(d.run, "crash", "segv", id=42)
    assert code == grpc.StatusCode.ABORTED, (code, details)
    assert re.search(r"worker 0 \(pid %d\) killed by SIGSEGV while running task 42 "
                     r"\(handler crash\)" % old, details), details
    wait_for(lambda: len(workers(d)) == 1 and old not in workers(d), what="a new worker")
    assert d.run("echo", "next").output == b"next"


def test_task_retries_run_the_task_again_on_another_worker(crunchd, tmp_path):
    d = crunchd(test_handlers=True, workers=2, task_retries=1)
    d.allow_log(r"\[alert\].*killed by SIGSEGV")
    marker = str(tmp_path / "crashed-once")
    r = d.run("crash", marker, id=7)
    assert r.output == b"survived" and os.path.exists(marker), "the retry succeeded"
    # a task that crashes every time fails after 1 + task_retries attempts
    code, details, _, _ = call_status(d.run, "crash", "segv", id=8)
    assert code == grpc.StatusCode.ABORTED and "attempt 2 of 2" in details, details


def test_task_timeout_kills_the_worker_and_fails_the_task(crunchd):
    d = crunchd(test_handlers=True, workers=1, task_timeout_ms=300)
    (old,) = workers(d)
    code, details, _, secs = call_status(d.run, "hang", "", id=5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert "ran longer than task_timeout_ms" in details, details
    wait_for(lambda: len(workers(d)) == 1 and old not in workers(d), what="a new worker")
    assert not alive(old)
    assert d.run("echo", "after").output == b"after"
    d.wait_log(r"over task_timeout_ms 300; killing it")


def test_worker_max_tasks_recycles_without_failing_a_call(crunchd):
    d = crunchd(workers=2, worker_max_tasks=5)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda i: d.run("echo", str(i), id=i), range(60)))
    assert [r.output for r in results] == [str(i).encode() for i in range(60)]
    wait_for(lambda: d.log_text().count("recycled; replacing it") >= 8,
             what="workers recycled every 5 tasks")
    wait_for(lambda: len(workers(d)) == 2, what="two workers again")


def test_acceptor_killed_under_load_others_go_on_and_nothing_leaks(crunchd):
    d = crunchd(acceptors=2, workers=2)
    accs = {p: t for p, t in d.children().items() if t.startswith("crunchd: acceptor")}
    stop = threading.Event()
    ok, failed = [0], []

    def client(k):
        ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.CrunchStub(ch)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                stub.Run(pb.Task(id=i, handler="sleep" if i % 4 == 0 else "echo",
                                     payload=b"20" if i % 4 == 0 else b"x"),
                             timeout=WAIT, wait_for_ready=True)
                ok[0] += 1
            except grpc.RpcError as e:
                failed.append(e.code())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: ok[0] > 50, what="load")
        victim = min(accs)
        os.kill(victim, signal.SIGKILL)
        before = ok[0]
        wait_for(lambda: ok[0] > before + 100, what="calls going on after the kill")
        wait_for(lambda: len([t for t in d.children().values()
                              if t.startswith("crunchd: acceptor")]) == 2,
                 what="the acceptor replaced")
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    # only calls on the killed acceptor's connections may fail, and only so
    assert set(failed) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, failed
    d.wait_log(r"acceptor \d \(pid %d\) of generation 1 killed by SIGKILL" % victim)
    # every descriptor and arena byte back once idle
    def idle():
        s = d.stub().Stats(pb.StatsRequest(), timeout=WAIT)
        q = s.queue
        return q.tasks_free == q.capacity and q.arena_free == q.arena_size
    wait_for(idle, what="the region back to idle (Stats)")


def test_crash_loop_backs_off(crunchd):
    d = crunchd(test_handlers=True, workers=1, respawn_burst=2, respawn_window_ms=60000)
    d.allow_log(r"\[alert\].*killed by SIGSEGV")
    d.allow_log(r"\[crit\].*died \d+ times within")
    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(call_status, d.run, "crash", "segv", id=i) for i in range(8)]
        codes = [f.result()[0] for f in futs]
    assert set(codes) == {grpc.StatusCode.ABORTED}, codes
    log = d.log_text()
    delays = [int(x) for x in re.findall(r"respawning in (\d+) ms", log)]
    assert len(delays) >= 4 and delays == sorted(delays) and delays[-1] > delays[0], \
        "back-off grows: %r" % delays
    starts = log.count("started worker 0")
    assert starts <= 1 + 8, "at most one fork per death, no spinning: %d" % starts
    wait_for(lambda: len(workers(d)) == 1, what="a worker again after the back-off")
    assert d.run("echo", "ok", timeout=WAIT).output == b"ok"


def test_ttin_ttou_change_the_worker_count_until_reload(crunchd):
    d = crunchd(workers=2)
    d.send_signal(signal.SIGTTIN)
    wait_for(lambda: len(workers(d)) == 3, what="3 workers after SIGTTIN")
    for n in range(1, 5):
        # one at a time: signals of one kind do not queue
        d.send_signal(signal.SIGTTOU)
        wait_for(lambda: d.log_text().count("SIGTTOU") >= n, what="TTOU #%d acted on" % n)
    wait_for(lambda: len(workers(d)) == 1, what="down to 1 worker, never fewer")
    d.wait_log(r"already at 1 worker")
    assert d.run("echo", "one").worker == 0
