# test_cli.py: the command line and the operating-system edges: `crunchd -s`
# (running, stopped, stale and foreign pids), `daemon = true`, `user`,
# worker_rlimit_*, worker_cpu_affinity, unix listener mode/group, and the
# systemd notify protocol (READY=1, RELOADING=1 + MONOTONIC_USEC, STOPPING=1).

import grp
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import (BIN, WAIT, alive, free_port, proc_cmdline, run_crunchd,
                      wait_for)

SIGNAL_USAGE = re.compile(r"reload.*stop.*quit.*reopen", re.S)


def ctl(d, *args):
    """crunchd -c CONF -p PREFIX ARGS... of daemon d, to completion."""
    return run_crunchd(["-c", d.conf_path, "-p", d.prefix] + list(args))


def status_field(pid, name):
    """A line of /proc/PID/status, e.g. status_field(p, "Uid") -> "0 0 0 0"."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == name:
                return v.strip()
    raise AssertionError("no %s in /proc/%d/status" % (name, pid))


def limit(pid, name):
    """(soft, hard) of a /proc/PID/limits row, e.g. limit(p, "Max open files")."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith(name):
                soft, hard = line[len(name):].split()[:2]
                return soft, hard
    raise AssertionError("no %r in /proc/%d/limits" % (name, pid))


def cpu_list(text):
    """'0-2,5' -> {0, 1, 2, 5}"""
    out = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: crunchd only drops privileges it has")


# --------------------------------------------------------------------------
# crunchd -s

def test_s_stop_stops_a_running_daemon(crunchd):
    d = crunchd(acceptors=1, workers=2)
    kids = list(d.children())
    r = ctl(d, "-s", "stop")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == "", "-s prints nothing on success: %r" % r.stderr
    assert d.proc.wait(WAIT) == 0
    still = [(p, proc_cmdline(p)) for p in kids if alive(p)]
    assert not still, "children alive after -s stop: %r" % still
    assert not os.path.exists(d.pid_file), "pid file removed"
    d.wait_log(r"fast stop \(SIGTERM")


def test_s_quit_is_a_graceful_stop(crunchd):
    d = crunchd(workers=1, max_connection_age_ms=1000)  # QUIT drains by connection age
    kids = list(d.children())
    r = ctl(d, "-s", "quit")
    assert r.returncode == 0, r.stderr
    assert d.proc.wait(WAIT) == 0
    wait_for(lambda: not any(alive(p) for p in kids), what="every child gone")
    d.wait_log(r"graceful stop \(SIGQUIT\)")


def test_s_reopen_reopens_the_renamed_log(crunchd):
    d = crunchd(workers=1)
    d.run("echo", "x")
    old = d.log_path + ".1"
    os.rename(d.log_path, old)          # what logrotate does
    r = ctl(d, "-s", "reopen")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: os.path.exists(d.log_path), what="a new error.log")
    d.wait_log(r"reopened log files")
    assert d.proc.poll() is None, "reopen does not stop the master"
    assert d.run("echo", "after").output == b"after"


def test_s_reload_sends_sighup(crunchd):
    d = crunchd(workers=1)
    r = ctl(d, "-s", "reload")
    assert r.returncode == 0, r.stderr
    # Loose on purpose: whatever the master says about the reload names it.
    d.wait_log(r"(?i)SIGHUP|reload")
    assert d.proc.poll() is None, "reload does not stop the master"
    assert d.run_until_ok("echo", "after")[0].output == b"after"


def test_s_without_pid_file_is_a_clear_error(crunchd):
    d = crunchd(start=False)
    d.write_conf()
    r = ctl(d, "-s", "stop")
    assert r.returncode == 1
    assert "cannot signal: pid file %s not found; is crunchd running?" % d.pid_file in r.stderr, \
        r.stderr


def test_s_with_pid_file_off(crunchd):
    d = crunchd(start=False, pid_file="")
    d.write_conf()
    r = ctl(d, "-s", "reload")
    assert r.returncode == 1
    assert "pid_file is off in %s; cannot find the master" % d.conf_path in r.stderr, r.stderr


def test_s_with_a_stale_pid_file(crunchd):
    d = crunchd(start=False)
    d.write_conf()
    gone = subprocess.Popen(["true"])
    gone.wait()
    with open(d.pid_file, "w") as f:
        f.write("%d\n" % gone.pid)
    r = ctl(d, "-s", "stop")
    assert r.returncode == 1
    assert "pid %d in %s is not a running crunchd master (stale pid file); remove it" \
        % (gone.pid, d.pid_file) in r.stderr, r.stderr


def test_s_refuses_a_pid_that_is_not_a_crunchd_master(crunchd):
    d = crunchd(workers=1)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (wpid,) = d.workers().values()
        # Another program, this test itself, and a crunchd that is not the master.
        for pid, action in ((other.pid, "stop"), (os.getpid(), "reopen"), (wpid, "stop")):
            with open(d.pid_file, "w") as f:
                f.write("%d\n" % pid)
            # Were SIGUSR1 sent to us anyway, it must not end the test run.
            old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            try:
                r = ctl(d, "-s", action)
            finally:
                signal.signal(signal.SIGUSR1, old)
            assert r.returncode == 1, (pid, r.stderr)
            assert "stale pid file" in r.stderr, r.stderr
        assert other.poll() is None, "the other program was not signalled"
        assert alive(wpid) and wpid in d.workers().values(), "the worker was not signalled"
    finally:
        other.kill()
        other.wait()
        with open(d.pid_file, "w") as f:  # put it back for teardown's sake
            f.write("%d\n" % d.pid)
    assert d.run("echo", "x").output == b"x"


def test_s_unknown_action_and_bad_combinations(crunchd):
    d = crunchd(start=False)
    d.write_conf()
    r = ctl(d, "-s", "restart")
    assert r.returncode == 1
    assert "restart" in r.stderr and SIGNAL_USAGE.search(r.stderr), r.stderr
    assert "Usage:" in r.stderr, "the usage follows the error: %r" % r.stderr
    for extra in (["-t"], ["-T"]):
        r = ctl(d, "-s", "stop", *extra)
        assert r.returncode == 1, r.stderr
        assert "-s" in r.stderr, r.stderr
    r = run_crunchd(["-s"])
    assert r.returncode == 1, "-s needs an argument"
    r = run_crunchd(["-h"])
    assert r.returncode == 0 and "-s SIGNAL" in r.stdout and SIGNAL_USAGE.search(r.stdout)


# --------------------------------------------------------------------------
# daemon = true

class PidProc:
    """Enough of subprocess.Popen for the fixture's Crunchd to watch and stop
    a master that is not our child (it detached): poll/wait by /proc, kill by
    pid, checking the title so a recycled pid is never touched."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None
        self.args = ["crunchd (detached, pid %d)" % pid]

    def poll(self):
        if self.returncode is None and not (alive(self.pid) and
                                            "crunchd" in (proc_cmdline(self.pid) or "")):
            self.returncode = 0  # unknown: not our child, its status is not ours to see
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.03)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def start_detached(d):
    """Start daemon d (daemon = true) as an init script would; return
    (launcher exit code, seconds it took, launcher pid). Afterwards d.proc
    watches the detached master, so the fixture's teardown stops it."""
    d.write_conf()
    t0 = time.monotonic()
    with open(d.stdout_path, "ab") as out, open(d.stderr_path, "ab") as err:
        launcher = subprocess.Popen([BIN, "-c", d.conf_path, "-p", d.prefix],
                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    cwd=d.rundir, start_new_session=True)
    try:
        rc = launcher.wait(WAIT)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
        rc = None
    took = time.monotonic() - t0
    # Whatever happened, let teardown find the master through its pid file.
    try:
        with open(d.pid_file) as f:
            pid = int(f.read().strip())
        if pid != launcher.pid and "crunchd" in (proc_cmdline(pid) or ""):
            d.proc = PidProc(pid)
    except (OSError, ValueError):
        pass
    return rc, took, launcher.pid


def test_daemon_detaches_serves_and_stops(crunchd):
    d = crunchd(start=False, daemon=True, workers=2)
    rc, took, launcher = start_detached(d)
    assert rc == 0, "the launcher exits 0 once the daemon started (took %.1fs): %s%s" \
        % (took, d.stderr_text(), d.log_text())
    # The launcher returns only after the pid file names the daemon.
    assert os.path.exists(d.pid_file), "pid file written before the launcher returned"
    assert d.proc is not None, "the pid file names a live crunchd"
    pid = d.pid
    assert pid != launcher
    d.wait_ready()
    assert proc_cmdline(pid).startswith("crunchd: master")

    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ppid, pgrp, sid, tty_nr = (int(x) for x in fields[1:5])
    assert tty_nr == 0, "no controlling terminal"
    assert sid != pid, "not a session leader (so it can never acquire a terminal)"
    assert sid != os.getsid(0) and sid != launcher, "in a session of its own"
    assert ppid != launcher
    for fd in (0, 1, 2):
        assert os.readlink("/proc/%d/fd/%d" % (pid, fd)) == "/dev/null", \
            "fd %d of a detached master with a file error_log" % fd
    assert os.readlink("/proc/%d/cwd" % pid) == "/"

    kids = list(d.children())
    assert len(kids) == 3, d.children()
    assert d.run("echo", "detached").output == b"detached"

    r = ctl(d, "-s", "stop")
    assert r.returncode == 0, r.stderr
    d.proc.wait(WAIT)
    wait_for(lambda: not any(alive(p) for p in kids), what="every child gone")
    wait_for(lambda: not os.path.exists(d.pid_file), what="pid file removed")
    d.wait_log(r"exiting")


def test_daemon_start_failure_is_a_nonzero_exit(crunchd, tmp_path):
    # The pid file cannot be written (its directory is missing): that is found
    # after detaching, and the launcher must still say so with its exit code.
    d = crunchd(start=False, daemon=True, workers=1,
                pid_file=str(tmp_path / "missing-dir" / "crunchd.pid"))
    d.allow_log(r"\[emerg\].*pid")
    rc, took, _ = start_detached(d)
    assert rc not in (0, None), "exit %r after %.1fs" % (rc, took)
    assert not d.leftovers()


# --------------------------------------------------------------------------
# user, rlimits, affinity

def test_user_drops_privileges_in_children_only(crunchd):
    need_root()
    nobody = pwd.getpwnam("nobody")
    d = crunchd(user="nobody", acceptors=1, workers=2)
    assert status_field(d.pid, "Uid").split() == ["0"] * 4, "the master stays root"
    kids = d.children()
    assert len(kids) == 3
    for pid in kids:
        assert status_field(pid, "Uid").split() == [str(nobody.pw_uid)] * 4, proc_cmdline(pid)
        assert status_field(pid, "Gid").split() == [str(nobody.pw_gid)] * 4, proc_cmdline(pid)
        groups = status_field(pid, "Groups").split()
        assert "0" not in groups, "no supplementary group of root: %r" % groups
    for i in range(4):
        assert d.run("echo", "as nobody %d" % i, id=i + 1).output == b"as nobody %d" % i
    assert d.run("prime", "112272535095293").output == b"true"


@pytest.fixture
def open_dir():
    """A directory "nobody" may enter (pytest's tmp_path is 0700), as
    /var/log/crunchd would be."""
    path = tempfile.mkdtemp(prefix="crunchd-test-cli-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, True)


def test_user_children_reopen_the_log(crunchd, open_dir):
    need_root()
    d = crunchd(user="nobody", workers=2, error_log=os.path.join(open_dir, "error.log"),
                max_connection_age_ms=1000)
    d.run("echo", "x")
    old = d.log_path + ".1"
    os.rename(d.log_path, old)
    r = ctl(d, "-s", "reopen")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: os.path.exists(d.log_path), what="a new error.log")
    d.wait_log(r"reopened log files")
    d.send_signal(signal.SIGQUIT)
    assert d.proc.wait(WAIT) == 0
    new = d.log_text()
    # Children running as nobody could open the file the master created.
    assert "worker 0 of generation 1 exiting" in new, new
    with open(old) as f:
        assert "cannot reopen" not in new + f.read()


def test_worker_rlimits_apply_to_workers_only(crunchd):
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = 4096 if soft != 4096 else 4095
    d = crunchd(acceptors=1, workers=2, worker_rlimit_nofile=n, worker_rlimit_core="1m")
    for slot, pid in d.workers().items():
        assert limit(pid, "Max open files") == (str(n), str(n)), "worker %d" % slot
        assert limit(pid, "Max core file size") == ("1048576", "1048576"), "worker %d" % slot
    for pid in [d.pid] + list(d.acceptors().values()):
        assert limit(pid, "Max open files")[0] == str(soft), proc_cmdline(pid)
        assert limit(pid, "Max core file size")[0] != "1048576", proc_cmdline(pid)
    assert d.run("echo", "x").output == b"x"


def test_worker_cpu_affinity_auto(crunchd):
    allowed = sorted(os.sched_getaffinity(0))
    nw = len(allowed) + 1  # one more than CPUs: the last wraps around
    d = crunchd(workers=nw, worker_cpu_affinity="auto")
    workers = d.workers()
    assert sorted(workers) == list(range(nw))
    for slot, pid in workers.items():
        got = cpu_list(status_field(pid, "Cpus_allowed_list"))
        assert got == {allowed[slot % len(allowed)]}, "worker %d: %r" % (slot, got)
    for pid in [d.pid] + list(d.acceptors().values()):
        assert cpu_list(status_field(pid, "Cpus_allowed_list")) == set(allowed), \
            "only workers are pinned: %s" % proc_cmdline(pid)
    assert d.run("echo", "x").output == b"x"


def test_worker_cpu_affinity_off_by_default(crunchd):
    allowed = set(os.sched_getaffinity(0))
    d = crunchd(workers=2)
    for pid in d.workers().values():
        assert cpu_list(status_field(pid, "Cpus_allowed_list")) == allowed


def test_unix_listener_mode_and_group(crunchd):
    need_root()
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    port = free_port()
    d = crunchd(start=False, port=port, listen=None,
                extra='listen = ( "127.0.0.1:%d", { address = "unix:s.sock"; mode = "0660"; '
                      'group = "%s"; } );' % (port, group))
    d.listen = lambda: ["127.0.0.1:%d" % port, "unix:s.sock"]
    d.start()
    st = os.stat(os.path.join(d.prefix, "s.sock"))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert st.st_gid == grp.getgrnam(group).gr_gid
    stub = d.stub(d.targets[1])
    assert d.run("echo", "over unix", stub=stub).output == b"over unix"


# --------------------------------------------------------------------------
# systemd notify protocol

class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket that records each
    message with its sender's pid (SCM_CREDENTIALS, as systemd checks
    NotifyAccess=main)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []  # (pid, {field: value}, raw text)

    def close(self):
        self.sock.close()

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", cdata[:12])[0]
        text = data.decode(errors="replace")
        fields = dict(l.partition("=")[::2] for l in text.split("\n") if l)
        m = (pid, fields, text)
        self.messages.append(m)
        return m

    def wait(self, pred, what, timeout=WAIT, start=0):
        """The first message from index `start` on for which pred(fields) is
        true, waiting for more as needed. Returns (index, pid, fields)."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.messages):
                pid, fields, _ = self.messages[i]
                if pred(fields):
                    return i, pid, fields
                i += 1
            left = deadline - time.monotonic()
            if left <= 0 or self._recv(left) is None and time.monotonic() >= deadline:
                raise AssertionError("no notify message with %s within %.0fs; got %r"
                                     % (what, timeout, [m[2] for m in self.messages]))


@pytest.fixture
def notify(tmp_path, monkeypatch):
    """A NotifySocket whose path is in NOTIFY_SOCKET for daemons started
    while the test runs (crunchd inherits the environment)."""
    ns = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
    yield ns
    ns.close()


def test_notify_ready_and_stopping(crunchd, notify):
    d = crunchd(start=False, workers=2)
    d.start(wait=False)
    _, pid, fields = notify.wait(lambda f: f.get("READY") == "1", "READY=1")
    assert pid == d.pid, "READY=1 comes from the master (NotifyAccess=main)"
    # Ready means serving: the first generation is up.
    assert len(d.workers()) == 2 and len(d.acceptors()) == 1, d.children()
    d.wait_ready()
    assert d.run("echo", "x").output == b"x"
    assert all(p == d.pid for p, _, _ in notify.messages), \
        "children never notify: %r" % notify.messages
    assert d.stop(signal.SIGTERM) == 0
    i, pid, _ = notify.wait(lambda f: f.get("STOPPING") == "1", "STOPPING=1")
    assert pid == d.pid
    ready = [k for k, (_, f, _) in enumerate(notify.messages) if f.get("READY") == "1"]
    assert len(ready) == 1 and ready[0] < i, notify.messages


def _reload_cycle(d, notify, start):
    """HUP the master; return (RELOADING message fields, READY fields, the
    index after them, HUP time window in us)."""
    t0 = time.monotonic_ns() // 1000
    d.send_signal(signal.SIGHUP)
    i, pid, rel = notify.wait(lambda f: f.get("RELOADING") == "1", "RELOADING=1", start=start)
    t1 = time.monotonic_ns() // 1000
    assert pid == d.pid
    assert "MONOTONIC_USEC" in rel, \
        "MONOTONIC_USEC= must be in the RELOADING=1 message itself (systemd >= 257): %r" % rel
    usec = int(rel["MONOTONIC_USEC"])
    assert t0 <= usec <= t1, "MONOTONIC_USEC is CLOCK_MONOTONIC at the reload: %d not in " \
        "[%d, %d]" % (usec, t0, t1)
    j, pid, ready = notify.wait(lambda f: f.get("READY") == "1", "READY=1 after RELOADING=1",
                                start=i + 1)
    assert pid == d.pid
    return rel, ready, j + 1, notify.messages[i:j + 1]


def test_notify_reload(crunchd, notify):
    d = crunchd(start=False, workers=2)
    d.start()
    k, _, _ = notify.wait(lambda f: f.get("READY") == "1", "READY=1")
    d.settings["workers"] = 3
    d.write_conf()
    rel, ready, k, _ = _reload_cycle(d, notify, k + 1)
    wait_for(lambda: len(d.workers()) == 3, what="3 workers after the reload")
    assert d.run_until_ok("echo", "after reload")[0].output == b"after reload"
    # A reload with nothing changed is a reload too: systemctl reload waits for it.
    _reload_cycle(d, notify, k)
    assert d.proc.poll() is None


def test_notify_reload_refused(crunchd, notify):
    d = crunchd(start=False, workers=2)
    d.start()
    k, _, _ = notify.wait(lambda f: f.get("READY") == "1", "READY=1")
    d.allow_log(re.escape(d.conf_path))  # the refusal names FILE:LINE
    with open(d.conf_path, "a") as f:
        f.write("workers = ;\n")
    _, _, _, cycle = _reload_cycle(d, notify, k + 1)
    status = " ".join(f.get("STATUS", "") for _, f, _ in cycle)
    assert re.search(r"(?i)fail|refus|error|invalid", status), \
        "a refused reload says so in STATUS=: %r" % [m[2] for m in cycle]
    assert d.run("echo", "still serving").output == b"still serving"
