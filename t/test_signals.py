# test_signals.py: the master's QUIT (graceful stop) and USR1 (reopen logs).
# Reload (HUP) and TTIN/TTOU are not built yet; they get their tests with them.

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from conftest import WAIT, alive, start_blocker, wait_for


def test_quit_lets_running_and_queued_tasks_finish(crunchd):
    d = crunchd(workers=1, log_level="debug", max_connection_age_ms=1000)
    kids = dict(d.children())
    (wpid,) = [p for p, t in kids.items() if t.startswith("crunchd: worker")]
    stub = d.stub()
    with ThreadPoolExecutor(2) as ex:
        running = start_blocker(d, stub, ex, wpid, 1500, 42)
        queued = ex.submit(d.run, "echo", "after", 43)
        d.wait_log(r"Run: task 43 handler echo")  # queued behind the sleep
        t0 = time.monotonic()
        d.send_signal(signal.SIGQUIT)
        code, _, r, _ = running.result(timeout=WAIT)
        r2 = queued.result(timeout=WAIT)
    assert code == grpc.StatusCode.OK and r.id == 42, "the task in hand completed"
    assert r2.id == 43 and r2.output == b"after", "the queued task ran before workers left"
    assert d.proc.wait(WAIT) == 0, "graceful stop exits 0"
    assert time.monotonic() - t0 < WAIT
    wait_for(lambda: not any(alive(p) for p in kids), what="every child gone")
    assert not os.path.exists(d.pid_file), "pid file removed"
    d.wait_log(r"graceful stop \(SIGQUIT\)")


def test_usr1_reopens_the_log_in_master_and_children(crunchd):
    d = crunchd(workers=2, max_connection_age_ms=1000)
    d.run("echo", "x")
    old = d.log_path + ".1"
    os.rename(d.log_path, old)          # what logrotate does
    d.send_signal(signal.SIGUSR1)
    wait_for(lambda: os.path.exists(d.log_path), what="a new error.log")
    d.wait_log(r"reopened log files")  # the master writes to the new file
    # the children reopened too: their exit lines land in the new file
    d.send_signal(signal.SIGQUIT)
    assert d.proc.wait(WAIT) == 0
    new = d.log_text()
    assert "worker 0 of generation 1 exiting" in new, new
    assert "worker 1 of generation 1 exiting" in new, new
    with open(old) as f:
        assert "exiting" not in f.read(), "nothing is written to the rotated file"
