# test_soak.py: the short chaos soak (t/soak/soak.py, about 60 s) in make check.
#
# The soak starts its own crunchd, drives Run and RunStream load from 3 client
# processes while it kills workers and acceptors, reloads (good, changed and
# broken files), and sends TTIN/TTOU/USR1; it exits non-zero on any lost,
# duplicated or wrong answer, any failure not caused by a kill, any process
# left after a graceful stop, or growth of the master's memory or descriptors.
# Longer runs: t/soak/soak.py --duration 1800 (see the script's header).

import json
import os
import subprocess
import sys

import pytest

from conftest import BIN, SCALE, T_DIR, disarm_watchdog

SOAK = os.path.join(T_DIR, "soak", "soak.py")
DURATION = 60
# The soak itself: DURATION, plus start, the last reload, the clients
# finishing their calls and the graceful stop (about 25 s on a busy 2-core
# machine); scaled for sanitizer builds, whose daemon is slower.
HARD_LIMIT = (DURATION + 90) * SCALE


@pytest.mark.novalgrind(reason="thousands of tasks and kills in 60 s, and it bounds the "
                                "master's RSS growth, which valgrind's shadow memory inflates")
def test_soak_short(tmp_path, capsys):
    disarm_watchdog()  # the soak has its own hard limit, below
    out = tmp_path / "soak.json"
    cmd = [sys.executable, SOAK, "--duration", str(DURATION), "--clients", "3",
           "--crunchd", BIN, "--json", str(out)]
    # start_new_session: on a timeout the soak and everything it started
    # (clients, crunchd) go with one killpg.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        text, _ = p.communicate(timeout=HARD_LIMIT)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the soak's handler kills its crunchd's session too.
        os.killpg(p.pid, 15)
        try:
            text, _ = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            text, _ = p.communicate()
        raise AssertionError("soak ran longer than %.0f s; its output:\n%s"
                             % (HARD_LIMIT, text.decode(errors="replace")[-6000:]))
    text = text.decode(errors="replace")
    with capsys.disabled():  # the summary shows in t/test_soak.log even on a pass
        print("\n" + text)
    assert p.returncode == 0, "soak failed (exit %d):\n%s" % (p.returncode, text[-6000:])
    s = json.loads(out.read_text())
    # A soak that did nothing must not pass: load and chaos really happened.
    assert s["tasks_sent"] >= 500 and s["answered_ok"] >= 400, s
    assert s["worker_kills"] >= 3 and s["reloads_ok"] >= 1, s
    for k in ("unanswered", "answered_twice", "wrong_results", "failed_not_caused_by_kill",
              "processes_left", "violations"):
        assert s[k] == 0, (k, s)
