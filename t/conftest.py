# conftest.py: the shared fixture of crunchd's integration tests.
#
# Every test gets its own daemon(s) through the `crunchd` factory fixture: a
# generated config, a free loopback port, its own prefix directory, and a
# teardown that always stops (or kills) every process it started and then
# fails the test if the error log holds [alert]/[crit]/[emerg] or sanitizer
# lines the test did not declare. Waits poll conditions with generous
# timeouts, never fixed sleeps: the machine running `make check` may be busy.
#
# Environment (set by `make check`; defaults work from a built tree):
#   CRUNCHD_BIN     the daemon (default <repo>/src/crunchd)
#   CRUNCHD_SRCDIR  the source tree (default <repo>)
#   CRUNCHD_PYGEN   dir holding crunch/v1/crunch_pb2{,_grpc}.py (default
#                   <repo>/t/gen; generated into a temp dir when missing)
#   CRUNCHD_TEST_TIMEOUT_SCALE  multiply every timeout (sanitizer/valgrind runs)
#   CRUNCHD_VALGRIND  "1" (or extra valgrind options): run every crunchd a
#                   test starts under memcheck and fail the test on any error
#                   or definite leak (`make check-valgrind`; see "Under
#                   valgrind" below and t/README.md)
#   CRUNCHD_VALGRIND_LOGS  dir for the memcheck logs (default: beside each
#                   test's daemon, in pytest's tmp_path, of which pytest keeps
#                   only the last 3 sessions)

import atexit
import math
import os
import queue
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref

import pytest

T_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(T_DIR)
SRCDIR = os.environ.get("CRUNCHD_SRCDIR") or REPO
BIN = os.environ.get("CRUNCHD_BIN") or os.path.join(REPO, "src", "crunchd")
# The test handler modules (t/modules/*.so, built by make check): crash, hang,
# exit, alloc, slowinit... (the supervision tests load crash, hang and exit).
MODULES = os.environ.get("CRUNCHD_MODULES") or os.path.join(REPO, "t", "modules")

# CRUNCHD_VALGRIND: unset, "" or "0" = off; "1"/"yes" = on; anything else =
# on, with those words as extra valgrind options (e.g. "--track-origins=yes").
_VG_ENV = (os.environ.get("CRUNCHD_VALGRIND") or "").strip()
VALGRIND = _VG_ENV not in ("", "0", "no", "false")
VALGRIND_EXTRA = [] if _VG_ENV.lower() in ("", "0", "1", "yes", "no", "true", "false") \
    else shlex.split(_VG_ENV)

# Under valgrind everything runs 10-50 times slower: scale by 10 unless told.
SCALE = float(os.environ.get("CRUNCHD_TEST_TIMEOUT_SCALE") or ("10" if VALGRIND else "1"))

# Generous defaults: a 2-core machine doing other work must not fail a test.
WAIT = 30.0 * SCALE        # any condition we wait for
RPC_TIMEOUT = 20.0 * SCALE  # deadline of an ordinary call
TEST_TIME_LIMIT = 170.0 * SCALE  # a hung test fails instead of hanging make check

# Daemons started by tests must never notify a systemd that runs pytest.
os.environ.pop("NOTIFY_SOCKET", None)

# In a sanitizer build (--enable-sanitizers), let crash signals kill the
# process as they do in a normal build: the supervision tests kill workers with
# SIGSEGV and SIGABRT on purpose and expect the master to see that signal.
os.environ.setdefault("ASAN_OPTIONS", "handle_segv=0:handle_sigbus=0:handle_abort=0")

# No core files from children we kill with SIGSEGV (inherited by the daemon).
try:
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
except (ValueError, OSError):
    pass


# --------------------------------------------------------------------------
# Generated protobuf / gRPC stubs

def _load_stubs():
    gen = os.environ.get("CRUNCHD_PYGEN") or os.path.join(T_DIR, "gen")
    if not os.path.exists(os.path.join(gen, "crunch", "v1", "crunch_pb2_grpc.py")):
        gen = tempfile.mkdtemp(prefix="crunchd-pygen-")
        atexit.register(shutil.rmtree, gen, True)
        proto_dir = os.path.join(SRCDIR, "proto")
        cmd = ["protoc", "-I" + proto_dir, "--python_out=" + gen,
               "--grpc_python_out=" + gen,
               "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
               "crunch/v1/crunch.proto"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError("cannot generate Python stubs: %s\n%s"
                               % (" ".join(cmd), r.stdout.decode(errors="replace")))
        for d in ("crunch", os.path.join("crunch", "v1")):
            open(os.path.join(gen, d, "__init__.py"), "a").close()
    if gen not in sys.path:
        sys.path.insert(0, gen)
    from crunch.v1 import crunch_pb2, crunch_pb2_grpc
    return crunch_pb2, crunch_pb2_grpc


pb, pb_grpc = _load_stubs()
import grpc  # noqa: E402  (after the stubs so an import error names grpc plainly)

# The seed's values (issue 2).
PRIME_SEEDS = {
    112272535095293: True,
    112582705942171: True,
    115280095190773: True,
    115797848077099: True,
    1099726899285419: False,
}
GCD_SEEDS = [(1963309, 2265973), (2030677, 3814172), (1551645, 2229620),
             (2039045, 2020802)]
HANDLERS = ("echo", "prime", "gcd", "sleep")


def is_prime(n):
    """Deterministic Miller-Rabin for n < 3.3e24 (enough for u64)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


# --------------------------------------------------------------------------
# Waiting

class WaitTimeout(AssertionError):
    pass


def wait_for(pred, timeout=WAIT, interval=0.03, what="condition"):
    """Poll pred() until it returns a true value, which is returned. On timeout
    raise WaitTimeout naming `what`. pred may raise to abort the wait."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise WaitTimeout("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class TestTimeout(Exception):
    __test__ = False  # not a test class for pytest


@pytest.fixture(autouse=True)
def _watchdog():
    """Fail (not hang) a test that runs past TEST_TIME_LIMIT."""
    def on_alarm(signum, frame):
        raise TestTimeout("test ran longer than %.0fs" % TEST_TIME_LIMIT)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIME_LIMIT)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def disarm_watchdog():
    signal.setitimer(signal.ITIMER_REAL, 0)


# --------------------------------------------------------------------------
# /proc helpers

def proc_cmdline(pid):
    """Process title as ps shows it (NULs as spaces), or None if gone.
    Under valgrind, the title crunchd set (see _vg_title)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    title = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    if VALGRIND and os.path.basename(raw.split(b"\0")[0]).startswith(b"valgrind"):
        return _vg_title(pid, title)
    return title


def proc_stat(pid):
    """Dict with state, ppid, pgrp, sid, utime, stime; None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return {"state": rest[0], "ppid": int(rest[1]), "pgrp": int(rest[2]),
            "sid": int(rest[3]), "utime": int(rest[11]), "stime": int(rest[12])}


def alive(pid):
    """True if pid exists and is not a zombie (a zombie runs nothing)."""
    st = proc_stat(pid)
    return st is not None and st["state"] not in ("Z", "X")


def all_pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def children_of(ppid):
    return [p for p in all_pids() if (proc_stat(p) or {}).get("ppid") == ppid]


def session_members(sid):
    """Live crunchd processes of session sid (our daemons run in their own
    session; the title check keeps a recycled pid of someone else safe)."""
    return [p for p in all_pids()
            if (proc_stat(p) or {}).get("sid") == sid and alive(p)
            and "crunchd" in (proc_cmdline(p) or "")]


def thread_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def wait_signature(pid):
    """What a process is blocked in: (wchan, syscall number). Used to tell an
    idle worker (waiting on the queue) from one running a `sleep` task."""
    out = []
    for name in ("wchan", "syscall"):
        try:
            with open("/proc/%d/%s" % (pid, name)) as f:
                out.append(f.read().split(" ")[0].strip())
        except OSError:
            out.append("")
    return tuple(out)


def stable_signature(pid, timeout=WAIT):
    """Wait until two reads 50 ms apart agree and the process is blocked."""
    last = [None]

    def pred():
        sig = wait_signature(pid)
        ok = sig == last[0] and sig[1] not in ("", "running")
        last[0] = sig
        return sig if ok else None
    return wait_for(pred, timeout, 0.05, "pid %d to settle in a blocking call" % pid)


def wait_busy(pid, idle_sig, timeout=WAIT):
    """Wait until pid is blocked in something else than idle_sig (e.g. the
    sleep handler's nanosleep instead of the queue wait). Returns True, or
    False if that could not be seen within timeout."""
    last = [None]

    def pred():
        sig = wait_signature(pid)
        ok = sig == last[0] and sig != idle_sig and sig[1] not in ("", "running")
        last[0] = sig
        return ok
    try:
        wait_for(pred, timeout, 0.02, "pid %d to leave its idle wait" % pid)
        return True
    except WaitTimeout:
        return False


def start_blocker(d, stub, ex, worker_pid, ms, id_):
    """Submit a sleep task that occupies the only worker and wait until that
    worker is seen inside it (not just queued), so what follows queues behind."""
    idle = stable_signature(worker_pid)
    fut = ex.submit(call_status, d.run, "sleep", str(ms), id=id_, stub=stub, timeout=60 * SCALE)
    if not wait_busy(worker_pid, idle, timeout=3 * SCALE):
        # Could not observe it (unusual kernel): the task was sent 3 s ago to an
        # idle worker, so it is running by now on any sane machine.
        pass
    assert not fut.done(), "sleep %d ended before the test could use it: %r" % (ms, fut.result())
    return fut


# --------------------------------------------------------------------------
# Ports

def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Config rendering (libconfig syntax)

class Raw(str):
    """A value written into the config verbatim."""


def render_value(v):
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        # libconfig 1.5 silently turns an int beyond 32 bits into garbage
        # unless it carries the L suffix.
        return "%dL" % v if not -2**31 <= v < 2**31 else str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(render_value(x) for x in v) + " ]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_conf(settings, extra=""):
    lines = ["# generated by t/conftest.py"]
    for k, v in settings.items():
        if v is not None:
            lines.append("%s = %s;" % (k, render_value(v)))
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def run_crunchd(args, timeout=WAIT, cwd=None):
    """Run crunchd to completion (-t, -T, -v, -V, or a start expected to fail).
    Returns CompletedProcess with str stdout/stderr. The process runs in its
    own session; anything of it still alive after timeout is killed."""
    p = subprocess.Popen(daemon_argv([BIN] + list(args), _vg_run_logdir()),
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(p.pid)
        p.kill()
        out, err = p.communicate()
        raise AssertionError("crunchd %s did not finish within %.0fs\nstderr:\n%s"
                             % (" ".join(args), timeout, err.decode(errors="replace")))
    finally:
        _kill_session(p.pid)
    return subprocess.CompletedProcess(p.args, p.returncode,
                                       out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def _kill_session(sid):
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------
# Under valgrind (CRUNCHD_VALGRIND; `make check-valgrind`)
#
# Every crunchd a test starts (the fixture's daemons and run_crunchd) runs
# under memcheck; its children are fork()ed, so valgrind follows them without
# an exec (crunchd execs nothing; --trace-children=yes would follow it if it
# did). Each process writes <dir>/valgrind.<pid>.log; after the processes are
# gone the test fails if a log holds an error or a definite leak.
#
# jemalloc: crunchd links libjemalloc, whose malloc/free memcheck would not
# replace (by default it only replaces libc's): it would see no heap block at
# all, so no leak, no use-after-free, no overrun inside jemalloc's arenas.
# --soname-synonyms=somalloc=*jemalloc* makes memcheck replace jemalloc's
# malloc family with its own. (mallctl, used by -v, still reaches jemalloc.)
#
# What valgrind hides: /proc/PID/cmdline is valgrind's command line, since the
# argv crunchd overwrites is valgrind's copy inside the process, not the one
# the kernel shows. comm is still what crunchd sets with PR_SET_NAME
# ("crunchd-worker-"), and the master logs "started worker 3 (pid N) of
# generation 2", so proc_cmdline() rebuilds "crunchd: worker 3 gen 2" from
# those two (_vg_title).

VALGRIND_EXIT = 97   # --error-exitcode: a process with errors exits with it
VALGRIND_SUPP = os.path.join(T_DIR, "valgrind.supp")
VALGRIND_OPTS = [
    "--tool=memcheck", "--trace-children=yes", "--child-silent-after-fork=no",
    "--leak-check=full", "--show-leak-kinds=definite", "--errors-for-leak-kinds=definite",
    "--error-exitcode=%d" % VALGRIND_EXIT, "--soname-synonyms=somalloc=*jemalloc*",
    "--suppressions=" + VALGRIND_SUPP, "--num-callers=40",
]

_DAEMONS = weakref.WeakSet()   # every Crunchd made, for _vg_title
_VG_PENDING = []               # run_crunchd log dirs not yet checked
_VG_STATS = {"logs": 0, "complete": 0, "errors": 0, "definite": 0, "failed_logs": 0}
_VG_ROLES = {"crunchd-worker-": "worker", "crunchd-accepto": "acceptor"}
_VG_STARTED = re.compile(r"started (acceptor|worker) (\d+) \(pid (\d+)\) of generation (\d+)")
_VG_LINE = re.compile(r"^==(?:[\d:.]+ )?\d+== ?(.*)$")
_VG_SUMMARY = re.compile(r"ERROR SUMMARY: ([\d,]+) errors")
_VG_DEFINITE = re.compile(r"definitely lost: ([\d,]+) bytes")
_vg_session_dir = []
VALGRIND_LOGS = os.environ.get("CRUNCHD_VALGRIND_LOGS") or None


def _vg_daemon_logdir(base):
    """Where the memcheck logs of the daemon in base (tmp_path/dN) go."""
    if not VALGRIND_LOGS:
        return os.path.join(base, "valgrind")
    os.makedirs(VALGRIND_LOGS, exist_ok=True)
    name = "%s-%s-" % (os.path.basename(os.path.dirname(base)), os.path.basename(base))
    return tempfile.mkdtemp(prefix=name, dir=VALGRIND_LOGS)


def daemon_argv(argv, vg_dir):
    """argv, run under memcheck writing its logs to vg_dir when CRUNCHD_VALGRIND
    is set (argv unchanged otherwise, or when vg_dir is None)."""
    if not VALGRIND or vg_dir is None:
        return list(argv)
    os.makedirs(vg_dir, exist_ok=True)
    return (["valgrind"] + VALGRIND_OPTS
            + ["--log-file=" + os.path.join(vg_dir, "valgrind.%p.log")]
            + VALGRIND_EXTRA + list(argv))


def _vg_run_logdir():
    """A fresh log dir for one run_crunchd, checked when the test ends."""
    if not VALGRIND:
        return None
    if not _vg_session_dir:
        if VALGRIND_LOGS:
            os.makedirs(VALGRIND_LOGS, exist_ok=True)
        _vg_session_dir.append(tempfile.mkdtemp(prefix="crunchd-valgrind-", dir=VALGRIND_LOGS))
    d = tempfile.mkdtemp(prefix="run-", dir=_vg_session_dir[0])
    _VG_PENDING.append(d)
    return d


def _vg_title(pid, raw):
    """The title crunchd set on pid (a process under valgrind): the master's
    from comm; a child's from comm (its role: set by the child itself, with
    the title) and the master's "started ROLE SLOT (pid N)" log line. Until
    both are there, valgrind's command line (no title yet). When the owner
    logs above info, or is unknown, the title has no slot."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
    except OSError:
        return None
    if comm == "crunchd-master":
        return "crunchd: master"
    role = _VG_ROLES.get(comm)
    if role is None:
        return raw
    ppid = (proc_stat(pid) or {}).get("ppid")
    for d in list(_DAEMONS):
        title = d._vg_title_of(pid)
        if title is not None and title.startswith("crunchd: %s " % role):
            return title
        if d.proc is not None and d.proc.pid == ppid and \
                d.settings.get("log_level") in ("info", "debug"):
            return raw   # its master logs the line in a moment
    return "crunchd: " + role


def parse_valgrind_log(path):
    """(errors, definite_bytes, complete, first_error_text) of one memcheck
    log. complete: it reached its ERROR SUMMARY (a process SIGKILLed, as
    tests do on purpose, never does; its errors are then counted one by one:
    a message followed by a stack, other than a fatal signal's)."""
    with open(path, errors="replace") as f:
        lines = [m.group(1) if m else l
                 for l, m in ((l.rstrip("\n"), _VG_LINE.match(l)) for l in f)]
    errors = definite = 0
    complete = False
    blocks = []
    for i, body in enumerate(lines):
        m = _VG_SUMMARY.search(body)
        if m:
            complete = True
            errors = int(m.group(1).replace(",", ""))
        m = _VG_DEFINITE.search(body)
        if m:
            definite = int(m.group(1).replace(",", ""))
        if body and not body[0].isspace() and i + 1 < len(lines) and \
                re.match(r"\s+(at|by) 0x", lines[i + 1]) and \
                not body.startswith(("Process terminating", "Warning:")):
            end = i + 1
            while end < len(lines) and lines[end].strip():
                end += 1
            blocks.append("\n".join(lines[i:min(end, i + 25)]))
    if not complete:
        errors = len(blocks)
    # valgrind itself gave up (e.g. "FATAL: can't open suppressions file"):
    # nothing was checked, which must not pass for clean.
    fatal = [b for b in lines if b.startswith(("FATAL", "valgrind: "))]
    if fatal:
        errors += len(fatal)
        blocks.insert(0, "\n".join(fatal))
    first = next((b for b in blocks if "definitely lost in loss record" not in b),
                 blocks[0] if blocks else "")
    return errors, definite, complete, first


def valgrind_problems(vg_dir):
    """Problems (one string per bad log) in the memcheck logs of vg_dir."""
    problems = []
    try:
        names = sorted(n for n in os.listdir(vg_dir) if n.startswith("valgrind."))
    except OSError:
        return problems
    for n in names:
        path = os.path.join(vg_dir, n)
        errors, definite, complete, first = parse_valgrind_log(path)
        _VG_STATS["logs"] += 1
        _VG_STATS["complete"] += complete
        _VG_STATS["errors"] += errors
        _VG_STATS["definite"] += definite
        if errors or definite:
            _VG_STATS["failed_logs"] += 1
            problems.append("valgrind: %d error(s), %d bytes definitely lost: %s\n%s"
                            % (errors, definite, path, first))
    return problems


@pytest.fixture(autouse=True)
def _valgrind_runs():
    """Under valgrind, fail a test whose run_crunchd processes had errors."""
    yield
    if not VALGRIND:
        return
    dirs = _VG_PENDING[:]
    del _VG_PENDING[:]
    problems = []
    for d in dirs:
        problems.extend(valgrind_problems(d))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# Tests that cannot run under valgrind, with the reason: `make check-valgrind`
# deselects them (-m "not novalgrind"; conftest also does whenever
# CRUNCHD_VALGRIND is set). Such a test is reported as deselected, never as
# passed. New tests mark themselves: @pytest.mark.novalgrind(reason="...").
NOVALGRIND = {
    "test_stream.py::test_client_that_does_not_read_is_bounded":
        "measures the acceptor's RSS, which valgrind's shadow memory dwarfs",
    "test_stream.py::test_stream_deadline_bounds_its_tasks":
        "scales the stream's deadline (1 s x SCALE) but not the 6 s of sleeps it "
        "must cut short: at SCALE 10 the stream finishes first",
    "test_stream.py::test_100000_tasks_mixed_handlers_each_answered_once":
        "100,000 tasks on one stream outlast max_connection_age_ms + grace under "
        "valgrind; the server then ends the stream UNAVAILABLE, as documented",
    "test_modules.py::test_slow_init_delays_only_its_own_worker":
        "bounds calls by an unscaled 3 s while a worker sleeps 4 s in init",
    "test_rawbytes.py::test_message_prefix_claiming_4gib_memory_is_bounded":
        "bounds the acceptor's RSS growth, which valgrind's shadow memory inflates",
    "test_cli.py::test_s_stop_stops_a_running_daemon":
        "crunchd -s finds the master by its process title in /proc/PID/cmdline; "
        "under valgrind that is valgrind's own command line, so -s refuses the "
        "pid file as stale (as it should for a process that is not crunchd)",
    "test_cli.py::test_s_quit_is_a_graceful_stop":
        "crunchd -s finds the master by its process title in /proc/PID/cmdline; "
        "under valgrind that is valgrind's own command line, so -s refuses the "
        "pid file as stale (as it should for a process that is not crunchd)",
    "test_cli.py::test_s_reopen_reopens_the_renamed_log":
        "crunchd -s finds the master by its process title in /proc/PID/cmdline; "
        "under valgrind that is valgrind's own command line, so -s refuses the "
        "pid file as stale (as it should for a process that is not crunchd)",
    "test_cli.py::test_s_reload_sends_sighup":
        "crunchd -s finds the master by its process title in /proc/PID/cmdline; "
        "under valgrind that is valgrind's own command line, so -s refuses the "
        "pid file as stale (as it should for a process that is not crunchd)",
    "test_cli.py::test_user_children_reopen_the_log":
        "crunchd -s finds the master by its process title in /proc/PID/cmdline; "
        "under valgrind that is valgrind's own command line, so -s refuses the "
        "pid file as stale (as it should for a process that is not crunchd)",
    "test_cli.py::test_worker_rlimits_apply_to_workers_only":
        "valgrind reserves file descriptors for itself and shows the guest a lower "
        "RLIMIT_NOFILE than the one crunchd set",
    "test_reload.py::test_no_fd_or_process_leak_across_100_reloads":
        "100 reloads fork over 100 processes; under valgrind each start costs "
        "seconds of CPU and draining ones pile up (47 at once, load 50 on 2 cores)",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "novalgrind(reason): cannot run under valgrind (make check-valgrind "
        "deselects it); say why")
    if VALGRIND:
        if shutil.which("valgrind") is None:
            raise pytest.UsageError("CRUNCHD_VALGRIND is set but valgrind is not "
                                    "installed: apt-get install valgrind")
        try:
            with open(BIN, "rb") as f:
                asan = b"__asan_init" in f.read()
        except OSError:
            asan = False
        if asan:
            raise pytest.UsageError("CRUNCHD_VALGRIND: %s is a sanitizer build, which "
                                    "valgrind cannot run; use a build configured "
                                    "without --enable-sanitizers" % BIN)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for key, reason in NOVALGRIND.items():
            if item.nodeid.split("/")[-1].split("[")[0] == key:
                item.add_marker(pytest.mark.novalgrind(reason=reason))
    if not VALGRIND:
        return
    keep = [i for i in items if i.get_closest_marker("novalgrind") is None]
    gone = [i for i in items if i.get_closest_marker("novalgrind") is not None]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    if VALGRIND:
        s = _VG_STATS
        terminalreporter.write_line(
            "valgrind: %d process logs checked (%d ran to their leak check, %d were "
            "killed first); %d errors, %d bytes definitely lost, in %d logs"
            % (s["logs"], s["complete"], s["logs"] - s["complete"], s["errors"],
               s["definite"], s["failed_logs"]))
        for item in terminalreporter.stats.get("deselected", []):
            m = item.get_closest_marker("novalgrind")
            if m is not None:
                terminalreporter.write_line("valgrind: deselected %s: %s"
                                            % (item.nodeid, m.kwargs.get("reason")))


# --------------------------------------------------------------------------
# The daemon under test

BAD_LOG = re.compile(r"\[(alert|crit|emerg)\]")
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:")
LOG_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(debug|info|notice|warn|error|crit|alert|emerg)\] (\d+)#(\d+): (.*)$")
TITLE_RE = re.compile(r"^crunchd: (master|acceptor|worker)\b(?: (\d+))?")


class DaemonExited(AssertionError):
    pass


class Crunchd:
    """One crunchd under test. Build it with the `crunchd` fixture."""

    DEFAULTS = {
        "listen": ["127.0.0.1:{port}"],
        "acceptors": 1,
        "workers": 2,
        "pid_file": "crunchd.pid",   # relative: resolves against -p PREFIX
        "error_log": "error.log",
        "log_level": "info",
    }

    def __init__(self, base, settings, extra=""):
        self.base = str(base)
        self.prefix = os.path.join(self.base, "prefix")
        self.rundir = os.path.join(self.base, "run")  # cwd, != prefix on purpose
        os.makedirs(self.prefix, exist_ok=True)
        os.makedirs(self.rundir, exist_ok=True)
        self.conf_path = os.path.join(self.base, "crunchd.conf")
        self.stdout_path = os.path.join(self.rundir, "stdout.txt")
        self.stderr_path = os.path.join(self.rundir, "stderr.txt")
        self.settings = dict(self.DEFAULTS)
        self.bin = BIN
        if settings.pop("test_handlers", False):
            # handlers crash, hang and exit, from the test modules
            extra = "modules = ( %s );\n%s" % (", ".join(
                '{ path = "%s"; }' % os.path.join(MODULES, m + ".so")
                for m in ("crash", "hang", "exit")), extra)
        self.settings.update(settings)
        self.extra = extra
        self.auto_port = "port" not in settings
        self.port = settings.get("port") or free_port()
        self.settings.pop("port", None)
        self.proc = None
        self.seen = set()        # every child pid ever seen (killed at teardown)
        self.allowed = []        # regexes of log lines the test expects
        self.check_log = True
        self._channels = []
        self._stubs = {}
        self.vg_dir = _vg_daemon_logdir(self.base) if VALGRIND else None
        self._vg_titles = {}     # pid -> title, from the master's log (valgrind)
        self._vg_log_pos = 0
        _DAEMONS.add(self)

    # -- configuration ----------------------------------------------------
    def listen(self):
        return [str(x).format(port=self.port) for x in self.settings.get("listen") or []]

    def conf_text(self):
        s = dict(self.settings)
        if s.get("listen") is not None:
            s["listen"] = self.listen()
        return render_conf(s, self.extra)

    def write_conf(self):
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text())

    def _path(self, v):
        if v is None or v == "" or v == "stderr":
            return None
        return v if os.path.isabs(v) else os.path.join(self.prefix, v)

    @property
    def pid_file(self):
        return self._path(self.settings.get("pid_file"))

    @property
    def log_path(self):
        return self._path(self.settings.get("error_log"))

    @property
    def targets(self):
        """gRPC targets for every listen entry, in order."""
        out = []
        for l in self.listen():
            if l.startswith("unix:"):
                out.append("unix:" + self._path(l[5:]))
            elif l.startswith("["):
                out.append("ipv6:" + l)
            else:
                out.append(l)
        return out

    @property
    def target(self):
        return self.targets[0]

    @property
    def addr(self):
        return self.target

    @property
    def pid(self):
        return self.proc.pid

    def expected_children(self):
        w = self.settings.get("workers", "auto")
        w = os.cpu_count() if w in ("auto", None) else int(w)
        a = self.settings.get("acceptors")
        return (1 if a is None else int(a)), w

    # -- start / stop -------------------------------------------------------
    def start(self, wait=True, timeout=WAIT):
        for attempt in range(3):
            self.write_conf()
            out = open(self.stdout_path, "ab")
            err = open(self.stderr_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    daemon_argv([self.bin, "-c", self.conf_path, "-p", self.prefix],
                                self.vg_dir),
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                    cwd=self.rundir, start_new_session=True)
            finally:
                out.close()
                err.close()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except DaemonExited as e:
                # Another process grabbed our free port in the meantime: retry.
                if self.auto_port and attempt < 2 and "in use" in str(e):
                    self.port = free_port()
                    continue
                raise
        return self

    def _check_running(self):
        if self.proc.poll() is not None:
            raise DaemonExited("crunchd exited early with status %s\nstderr:\n%s\nlog:\n%s"
                               % (self.proc.returncode, self.stderr_text()[-3000:],
                                  self.log_text()[-3000:]))

    def wait_ready(self, timeout=WAIT):
        """Until: pid file names the master, every child has its title, and
        every listener completes an HTTP/2 handshake."""
        deadline = time.monotonic() + timeout
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731

        if self.pid_file:
            def pid_written():
                self._check_running()
                try:
                    with open(self.pid_file) as f:
                        return f.read().strip() == str(self.proc.pid)
                except OSError:
                    return False
            wait_for(pid_written, left(), what="pid file %s" % self.pid_file)

        na, nw = self.expected_children()

        def all_children():
            self._check_running()
            return len(self.acceptors()) == na and len(self.workers()) == nw
        wait_for(all_children, left(),
                 what="%d acceptor(s) and %d worker(s) with their titles" % (na, nw))

        for t in self.targets:
            ch = self.channel(t)
            try:
                grpc.channel_ready_future(ch).result(timeout=left())
            except grpc.FutureTimeoutError:
                self._check_running()
                raise AssertionError("listener %s never completed a gRPC handshake" % t)
        return self

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=WAIT):
        """Send sig to the master and wait for it to exit. Returns the status."""
        self.children()  # remember who to look for afterwards
        self.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("master did not exit within %.0fs of signal %d"
                                 % (timeout, sig))

    def leftovers(self):
        """Processes of this daemon still alive (children remembered, or in
        its session)."""
        pids = set(p for p in self.seen if alive(p) and "crunchd" in (proc_cmdline(p) or ""))
        if self.proc is not None:
            pids |= set(session_members(self.proc.pid))
            if self.proc.poll() is None:
                pids.add(self.proc.pid)
        return sorted(pids)

    def teardown(self):
        """Stop everything; return a list of problems (empty when clean)."""
        problems = []
        for ch in self._channels:
            try:
                ch.close()
            except Exception:
                pass
        self._channels = []
        self._stubs = {}
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            self.children()
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                if VALGRIND:
                    self._vg_hold_master()
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                problems.append("crunchd (pid %d) did not exit within %.0fs of SIGTERM"
                                % (self.proc.pid, WAIT))
            except ProcessLookupError:
                pass
        left = self.leftovers()
        if left and self.proc.poll() is not None:
            # Children may take a moment to notice (PR_SET_PDEATHSIG); the
            # strict check is in test_process.py.
            try:
                wait_for(lambda: not self.leftovers(), 5 * SCALE, what="children to exit")
            except WaitTimeout:
                pass
            left = self.leftovers()
        if left:
            if self.proc.poll() is not None:
                problems.append("processes left behind after the master exited: %s"
                                % ", ".join("%d (%s)" % (p, proc_cmdline(p)) for p in left))
            # The group still has live members here, so its id cannot have
            # been recycled: killpg reaches only what we started.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                wait_for(lambda: not self.leftovers(), 10, what="killed processes to vanish")
            except WaitTimeout as e:
                problems.append(str(e))
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        if self.check_log:
            problems.extend(self.log_problems())
        if self.vg_dir:
            problems.extend(valgrind_problems(self.vg_dir))
        return problems

    def _vg_hold_master(self):
        """Under valgrind, at teardown: the master SIGKILLs the children still
        alive 1.5 s after its SIGTERM (CR_STOP_GRACE_MS), and a child under
        valgrind often needs longer to exit and run its leak check. So once
        every child has taken its SIGTERM, stop the master (SIGSTOP) until
        the children are gone, then let it go on (SIGCONT) and reap them."""
        kids = list(self.children())

        def vg_log(p):
            try:
                with open(os.path.join(self.vg_dir, "valgrind.%d.log" % p), errors="replace") as f:
                    return f.read()
            except OSError:
                return ""

        def termed(p):
            # a worker _exit()s at once (memcheck starts its HEAP SUMMARY);
            # an acceptor says so in the log, then shuts gRPC down
            return (not alive(p) or "HEAP SUMMARY" in vg_log(p)
                    or re.search(r"\b%d#\d+: acceptor \d+: SIGTERM received" % p,
                                 self.log_text()) is not None)
        try:
            wait_for(lambda: all(termed(p) for p in kids), 3 * SCALE, 0.02,
                     "children to take their SIGTERM")
        except WaitTimeout:
            return
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not any(alive(p) for p in kids), WAIT, what="children to exit")
        except WaitTimeout:
            pass
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    # -- processes -------------------------------------------------------------
    def children(self):
        """{pid: title} of the master's current children (zombies excluded)."""
        out = {}
        for p in children_of(self.proc.pid):
            if alive(p):
                self.seen.add(p)
                out[p] = proc_cmdline(p) or ""
        return out

    def _role(self, role):
        out = {}
        for pid, title in self.children().items():
            m = TITLE_RE.match(title)
            if m and m.group(1) == role:
                slot = int(m.group(2)) if m.group(2) is not None else -1 - len(out)
                out[slot] = pid
        return out

    def acceptors(self):
        """{slot: pid} of children titled `crunchd: acceptor N ...`."""
        return self._role("acceptor")

    def workers(self):
        """{slot: pid} of children titled `crunchd: worker N ...`."""
        return self._role("worker")

    def all_pids(self):
        return [self.proc.pid] + sorted(self.children())

    def _vg_title_of(self, pid):
        """Under valgrind: "crunchd: ROLE SLOT gen G" of pid from the master's
        "started" log lines (read incrementally), or None."""
        if pid not in self._vg_titles:
            path = self.log_path or self.stderr_path
            if getattr(self, "_vg_log_file", None) != path:
                self._vg_log_file, self._vg_log_pos = path, 0
            try:
                with open(path, "rb") as f:
                    if os.fstat(f.fileno()).st_size < self._vg_log_pos:
                        self._vg_log_pos = 0   # rotated or truncated
                    f.seek(self._vg_log_pos)
                    data = f.read()
            except OSError:
                data = b""
            end = data.rfind(b"\n") + 1
            self._vg_log_pos += end
            for m in _VG_STARTED.finditer(data[:end].decode(errors="replace")):
                self._vg_titles[int(m.group(3))] = "crunchd: %s %s gen %s" % (
                    m.group(1), m.group(2), m.group(4))
        return self._vg_titles.get(pid)

    # -- logs ---------------------------------------------------------------------
    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_text(self):
        """The error log (stderr's text when error_log is "stderr")."""
        return self._read(self.log_path) if self.log_path else self.stderr_text()

    def stderr_text(self):
        return self._read(self.stderr_path)

    def allow_log(self, regex):
        """Declare log lines matching regex as expected by this test."""
        self.allowed.append(re.compile(regex))

    def wait_log(self, regex, timeout=WAIT):
        r = re.compile(regex)

        def find():
            for line in self.log_text().splitlines():
                if r.search(line):
                    return line
            return None
        return wait_for(find, timeout, 0.05, "a log line matching %r" % regex)

    def log_problems(self):
        texts = [self.log_text()]
        if self.log_path:
            texts.append(self.stderr_text())
        bad = []
        for text in texts:
            for line in text.splitlines():
                if (BAD_LOG.search(line) or SANITIZER.search(line)) and \
                        not any(a.search(line) for a in self.allowed):
                    bad.append(line)
        if not bad:
            return []
        return ["unexpected lines in the error log / stderr of crunchd %d:\n  %s"
                % (self.proc.pid, "\n  ".join(bad[:30]))]

    # -- gRPC -----------------------------------------------------------------------
    def channel(self, target=None, options=()):
        opts = [("grpc.enable_http_proxy", 0)] + list(options)
        ch = grpc.insecure_channel(target or self.target, options=opts)
        self._channels.append(ch)
        return ch

    def stub(self, target=None):
        t = target or self.target
        if t not in self._stubs:
            self._stubs[t] = pb_grpc.CrunchStub(self.channel(t))
        return self._stubs[t]

    def run(self, handler, payload=b"", id=1, timeout=RPC_TIMEOUT, timeout_ms=0,
            stub=None, **kw):
        if isinstance(payload, str):
            payload = payload.encode()
        task = pb.Task(id=id, handler=handler, payload=payload, timeout_ms=timeout_ms)
        return (stub or self.stub()).Run(task, timeout=timeout, **kw)

    def run_until_ok(self, handler="echo", payload=b"ping", timeout=WAIT, target=None):
        """Call Run until it succeeds (reconnecting as gRPC does), for use after
        a child was killed. Returns (result, number of failed attempts)."""
        deadline = time.monotonic() + timeout
        failures = []
        stub = self.stub(target)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no successful call within %.0fs; failures: %s"
                                     % (timeout, failures[-5:]))
            try:
                return self.run(handler, payload, id=len(failures) + 1,
                                timeout=min(5.0 * SCALE, left), stub=stub,
                                wait_for_ready=True), len(failures)
            except grpc.RpcError as e:
                failures.append((e.code(), e.details()))
                time.sleep(0.05)


def call_status(fn, *args, **kw):
    """Run fn; return (grpc.StatusCode, details, result_or_None, seconds)."""
    t0 = time.monotonic()
    try:
        r = fn(*args, **kw)
        return grpc.StatusCode.OK, "", r, time.monotonic() - t0
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None, time.monotonic() - t0


@pytest.fixture
def crunchd(tmp_path):
    """Factory: crunchd(start=True, extra="", port=N, **settings) -> Crunchd.

    settings override Crunchd.DEFAULTS (None removes one); "{port}" in a listen
    entry is the test's free port. Every daemon made is stopped at teardown, and
    its error log checked."""
    made = []

    def factory(start=True, extra="", **settings):
        d = Crunchd(tmp_path / ("d%d" % len(made)), settings, extra)
        made.append(d)
        if start:
            d.start()
        return d

    yield factory
    disarm_watchdog()  # teardown must run to its end
    problems = []
    for d in made:
        problems.extend(d.teardown())
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def daemon(crunchd):
    """A crunchd with the defaults (1 acceptor, 2 workers), started."""
    return crunchd()


# --------------------------------------------------------------------------
# Helpers shared by the RPC tests

def expected(handler, payload):
    """The output a built-in handler gives for payload (bytes)."""
    if handler == "echo":
        return payload
    if handler == "prime":
        return b"true" if is_prime(int(payload)) else b"false"
    if handler == "gcd":
        a, b = map(int, payload.split())
        return str(math.gcd(a, b)).encode()
    return b""


class Feeder:
    """A request iterator for a streaming call that the test feeds by hand;
    close() half-closes the stream. Counts what gRPC pulled from it."""

    def __init__(self):
        self.q = queue.Queue()
        self.pulled = 0

    def put(self, task):
        self.q.put(task)

    def close(self):
        self.q.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        t = self.q.get()
        if t is None:
            raise StopIteration
        self.pulled += 1
        return t


def stats(d, stub=None):
    """The Stats reply of d (the region of the acceptor that answers)."""
    return (stub or d.stub()).Stats(pb.StatsRequest(), timeout=RPC_TIMEOUT)


def region_idle(d, stub=None):
    """True when no descriptor and no arena byte is in use (Stats.queue)."""
    q = stats(d, stub).queue
    return (q.capacity > 0 and q.tasks_free == q.capacity and q.depth == 0
            and q.running == 0 and q.arena_free == q.arena_size)


def wait_region_idle(d, what="the region back to idle"):
    stub = d.stub()
    try:
        wait_for(lambda: region_idle(d, stub), what=what)
    except AssertionError:
        q = stats(d, stub).queue
        raise AssertionError("%s; Stats.queue is now: %s" % (what, str(q).replace("\n", ", ")))
