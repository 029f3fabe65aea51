#!/usr/bin/python3
# soak.py: chaos soak for crunchd: mixed load from several client processes
# while a chaos loop kills, reloads and signals the daemon; checks at the end
# that no task was lost, duplicated or answered wrongly, that every failure
# was caused by a kill, that nothing is left running after a graceful stop and
# that the master's memory, shared memory and descriptors did not grow.
#
#   t/soak/soak.py [--duration 60] [--clients 3] [--seed N] [--crunchd PATH]
#                  [--json FILE] [--keep] [--verbose]
#
# It starts its own crunchd (--crunchd, else $CRUNCHD_BIN, else src/crunchd
# from the current directory) with its own configuration in a temporary
# prefix, on a free loopback port, in its own session; whatever happens (an
# exception, Ctrl-C, SIGTERM) that session and the client processes are killed
# before the script exits. Exit status: 0 when every check passed, 1 when one
# failed (each violation is printed), 2 for a usage or set-up error.
#
# Load: --clients processes (this script in --client mode), each with one gRPC
# channel (wait_for_ready calls, so only calls in flight when something dies
# can fail), 2 threads calling Run in a loop and 1 thread running RunStream
# calls of 10..300 tasks with a random window of 1..24 outstanding tasks. Tasks
# are echo (0 bytes to 200 kB), prime, gcd and sleep (0..300 ms), each with a
# unique id (client number << 40 | counter).
#
# The queue holds 16 tasks (queue_capacity), fewer than the clients keep in
# flight: Runs and streams keep waiting for room in the acceptors (a Run up
# to its deadline: queue_wait_ms = CALL_TIMEOUT), so back-pressure is part of
# the soak.
#
# Chaos, every 0.2..1.5 s (--chaos-min/--chaos-max), one of: SIGKILL a random
# worker (any generation, busy or idle), SIGKILL an acceptor (2 acceptors),
# SIGHUP with the same file, SIGHUP with another `workers` (1..5) and
# `task_retries` (0 or 1), SIGHUP with a broken file (then: wait for "reload
# refused", check the old generation still answers, restore the file),
# SIGTTIN, SIGTTOU, SIGUSR1 after moving error.log away (logrotate). Every
# step waits for its effect (a log line, the worker count of the current
# generation, the listener answering): a step that never takes effect is a
# violation.
#
# Bookkeeping, per task id (the client checks, the parent attributes):
#   sent            tasks handed to gRPC (Run request / RunStream message)
#   answered OK     a reply with code 0 whose output is the handler's
#                   expected output (t/conftest.py `expected`)
#   wrong result    a reply with code 0 and another output, or another id
#                   (must be 0)
#   answered twice  the same id answered more than once on its call (must be 0)
#   answered error  a Run with a non-OK status carrying a server message, or a
#                   RunStream Result with a non-zero code (by code)
#   unanswered      a task whose call ended (OK, or at its deadline) with no
#                   answer for it (must be 0); tasks on a call that broke and
#                   whose break is attributed to an acceptor kill are counted
#                   apart, as "lost with a killed acceptor"
#
# Attribution rule for a failure (a task answered with an error, or a call
# that broke: a Run with a non-OK status, a RunStream that ended with a non-OK
# status):
#   - caused by a worker kill: the error text names "worker N (pid P) killed
#     by SIGKILL" (src/shm.c cr_task_error_text) and P is a pid this script
#     SIGKILLed;
#   - caused by an acceptor kill: the call itself failed (not a task inside
#     it), the client process that made it held, just before the kill, a TCP
#     connection served by the killed acceptor (matched through /proc: the
#     acceptor's socket inodes give the client ports, the client's socket
#     inodes give its own ports), and the kill fell inside the call:
#     start <= kill time + 0.5 s (the client may not have seen the reset yet)
#     and end >= kill time;
#   - anything else is a violation ("failed calls not caused by a kill").
# With task_retries = 1 a task whose worker is killed is run again, and only
# fails if that attempt's worker is killed too: the summary counts the kills
# that hit a running task (from the master's log), the tasks failed by a kill
# and the difference, the tasks that were retried.
#
# Resources, measured before the load (after a warm-up) and after the last
# chaos step with the daemon idle and the workers back to the start count:
# master VmRSS (tolerance +1 MiB: the master's own heap may grow a few pages
# the first time a reload, a respawn storm or a log rotation takes a code
# path; a leak per event over thousands of events is far more; 64 MiB for an
# ASan build, whose quarantine keeps freed memory), the size of
# the master's shared mappings (the regions and the control page: must be
# equal, an old region not released shows here), the master's open fds (must
# be equal), and Stats' queue must be idle (every descriptor and arena byte
# back: none may leak).
#
# At the end: SIGQUIT, the master must exit 0 within shutdown_timeout_ms plus
# a margin, and no process of its session (or ever seen as its child) may be
# left; the error log may hold no [alert]/[crit]/[emerg] or sanitizer line.

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
T_DIR = os.path.dirname(HERE)

CALL_TIMEOUT = 60.0      # a Run; far above any task here (300 ms sleep at most)
# Fewer descriptors than the clients keep in flight (3 clients: 6 Runs and up
# to 72 stream tasks): calls keep waiting for queue space in the acceptors,
# so back-pressure is soaked too. A Run waits for space up to its deadline.
QUEUE_CAPACITY = 16
STREAM_TIMEOUT = 180.0   # a RunStream of at most 300 tasks
ID_SHIFT = 40


def sanitizer_build(path):
    """True for a crunchd built with --enable-sanitizers (ASan)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def mono():
    # CLOCK_MONOTONIC is one clock for every process of the machine: the
    # parent's kill times and the clients' call times compare directly.
    return time.monotonic()


# ---------------------------------------------------------------------------
# Client mode: one process, one channel, Run threads and a RunStream thread.

def make_task_spec(rng, conftest):
    """(handler, payload) for one task."""
    r = rng.random()
    if r < 0.35:
        x = rng.random()
        n = rng.randint(0, 100) if x < 0.8 else rng.randint(100, 4096) if x < 0.97 \
            else rng.randint(4096, 200000)
        return "echo", rng.randbytes(n)
    if r < 0.6:
        if rng.random() < 0.3:
            n = rng.choice(list(conftest.PRIME_SEEDS))
        else:
            n = rng.randint(2, 10**11)
        return "prime", str(n).encode()
    if r < 0.85:
        if rng.random() < 0.3:
            a, b = rng.choice(conftest.GCD_SEEDS)
        else:
            a, b = rng.randint(1, 10**6), rng.randint(1, 10**6)
        return "gcd", ("%d %d" % (a, b)).encode()
    return "sleep", str(rng.randint(0, 300)).encode()


class ClientState:
    def __init__(self, index, seed):
        self.index = index
        self.seed = seed
        self.lock = threading.Lock()
        self.counter = 0
        self.stop = threading.Event()
        self.c = {"sent": 0, "ok": 0, "wrong": 0, "twice": 0, "task_errors": 0,
                  "unanswered_ok_call": 0, "run_calls": 0, "stream_calls": 0}
        self.failures = []   # calls that broke, and task-level errors
        self.wrong = []      # a few examples

    def next_id(self):
        with self.lock:
            self.counter += 1
            return (self.index << ID_SHIFT) | self.counter

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def fail(self, rec):
        with self.lock:
            self.failures.append(rec)


def client_run_loop(st, stub, pb, conftest, grpc, tid):
    rng = random.Random("%s-%d-run-%d" % (st.seed, st.index, tid))
    while not st.stop.is_set():
        h, payload = make_task_spec(rng, conftest)
        tid_ = st.next_id()
        t0 = mono()
        st.add("sent")
        st.add("run_calls")
        try:
            r = stub.Run(pb.Task(id=tid_, handler=h, payload=payload), timeout=CALL_TIMEOUT,
                         wait_for_ready=True)
        except grpc.RpcError as e:
            st.fail({"kind": "run", "t0": t0, "t1": mono(), "code": e.code().name,
                     "details": e.details() or "", "ids": [tid_], "handler": h,
                     "unanswered": 1})
            continue
        if r.id == tid_ and r.code == 0 and r.output == conftest.expected(h, payload):
            st.add("ok")
        else:
            st.add("wrong")
            if len(st.wrong) < 10:
                st.wrong.append({"id": tid_, "handler": h, "got_id": r.id, "code": r.code,
                                 "payload": payload[:60].decode(errors="replace"),
                                 "output": r.output[:60].decode(errors="replace")})


def client_stream_loop(st, stub, pb, conftest, grpc):
    rng = random.Random("%s-%d-stream" % (st.seed, st.index))
    while not st.stop.is_set():
        client_one_stream(st, stub, pb, conftest, grpc, rng.randint(10, 300),
                          rng.randint(1, 24), random.Random(rng.random()))


def client_one_stream(st, stub, pb, conftest, grpc, n, window, rng):
    """One RunStream call of n tasks, at most `window` unanswered at a time.
    Its own function so that the request generator, which gRPC may still
    advance once after the call failed, can only see this call's state
    (a closure in the loop above would see the next call's `sent`)."""
    window = threading.Semaphore(window)
    sent = {}
    answers = {}
    done = threading.Event()
    slock = threading.Lock()

    def tasks():
        for _ in range(n):
            while not window.acquire(timeout=0.1):
                if done.is_set():
                    return
            if done.is_set() or st.stop.is_set():
                return
            h, payload = make_task_spec(rng, conftest)
            i = st.next_id()
            with slock:
                sent[i] = (h, payload)
            st.add("sent")
            yield pb.Task(id=i, handler=h, payload=payload)

    t0 = mono()
    st.add("stream_calls")
    call = stub.RunStream(tasks(), timeout=STREAM_TIMEOUT, wait_for_ready=True)
    err = None
    task_fail = []
    try:
        for r in call:
            window.release()
            with slock:
                spec = sent.get(r.id)
            answers[r.id] = answers.get(r.id, 0) + 1
            if answers[r.id] > 1:
                st.add("twice")
                continue
            if spec is None:
                st.add("wrong")
                if len(st.wrong) < 10:
                    st.wrong.append({"id": r.id, "why": "id never sent on this stream"})
                continue
            if r.code != 0:
                st.add("task_errors")
                task_fail.append((r.id, r.code, r.error))
            elif r.output == conftest.expected(spec[0], spec[1]):
                st.add("ok")
            else:
                st.add("wrong")
                if len(st.wrong) < 10:
                    st.wrong.append({"id": r.id, "handler": spec[0],
                                     "payload": spec[1][:60].decode(errors="replace"),
                                     "output": r.output[:60].decode(errors="replace")})
    except grpc.RpcError as e:
        err = e
    finally:
        done.set()
    t1 = mono()
    with slock:
        order = list(sent)
        missing = [i for i in order if i not in answers]
        where = [order.index(i) for i in missing[:20]]
    for (i, code, text) in task_fail:
        st.fail({"kind": "stream-task", "t0": t0, "t1": t1, "code": code,
                 "details": text, "ids": [i], "handler": sent[i][0], "unanswered": 0})
    if err is not None:
        st.fail({"kind": "stream", "t0": t0, "t1": t1, "code": err.code().name,
                 "details": err.details() or "", "ids": missing[:20],
                 "unanswered": len(missing), "answered": len(answers)})
    elif missing:
        st.add("unanswered_ok_call", len(missing))
        st.fail({"kind": "stream-missing", "t0": t0, "t1": t1, "code": "OK",
                 "details": "stream ended OK without these answers (positions %s "
                            "of %d sent, %d answered)" % (where, len(sent), len(answers)),
                 "ids": missing[:20], "unanswered": len(missing)})


def client_main(args):
    sys.path.insert(0, T_DIR)
    import conftest  # noqa: E402  (stubs; grpc is imported by it)
    pb, pb_grpc, grpc = conftest.pb, conftest.pb_grpc, conftest.grpc
    st = ClientState(args.client, args.seed)
    signal.signal(signal.SIGUSR1, lambda s, f: st.stop.set())
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(3))
    ch = grpc.insecure_channel(args.target, options=[("grpc.enable_http_proxy", 0)])
    stub = pb_grpc.CrunchStub(ch)
    grpc.channel_ready_future(ch).result(timeout=60)
    threads = [threading.Thread(target=client_run_loop, args=(st, stub, pb, conftest, grpc, k),
                                daemon=True) for k in range(2)]
    threads.append(threading.Thread(target=client_stream_loop,
                                    args=(st, stub, pb, conftest, grpc), daemon=True))
    for t in threads:
        t.start()
    # Ready: the parent waits for this line before it starts the chaos.
    print("ready", flush=True)
    while not st.stop.wait(0.5):
        pass
    for t in threads:
        t.join(STREAM_TIMEOUT + 30)
    hung = sum(t.is_alive() for t in threads)
    out = {"client": args.client, "pid": os.getpid(), "counts": st.c, "failures": st.failures,
           "wrong": st.wrong, "hung_threads": hung}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, args.out)
    ch.close()
    os._exit(0)


# ---------------------------------------------------------------------------
# /proc helpers for the parent

def read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def socket_inodes(pid):
    out = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def tcp_table():
    """[(local_port, remote_port, inode)] of TCP sockets (gRPC clients use
    IPv6 sockets with v4-mapped addresses: they are in tcp6)."""
    rows = []
    text = (read("/proc/net/tcp") or "") + (read("/proc/net/tcp6") or "")
    for line in text.splitlines():
        if line.lstrip().startswith("sl"):
            continue
        f = line.split()
        if len(f) < 10:
            continue
        rows.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), int(f[9])))
    return rows


def h2_handshake(host, port, timeout):
    """True when a new connection to host:port gets the server's HTTP/2
    SETTINGS frame: an acceptor took it and gRPC serves it. A raw socket, so
    that no gRPC client state (shared subchannels, reconnect back-off) is in
    the way."""
    import socket
    deadline = mono() + timeout
    while mono() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - mono())) as s:
                s.settimeout(max(0.1, deadline - mono()))
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0\0\0\x04\0\0\0\0\0")
                hdr = b""
                while len(hdr) < 9:
                    chunk = s.recv(9 - len(hdr))
                    if not chunk:
                        break
                    hdr += chunk
                if len(hdr) == 9 and hdr[3] == 4:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def ss_dump(port):
    try:
        return subprocess.run(["ss", "-tanp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=10).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)


def master_resources(pid):
    st = read("/proc/%d/status" % pid) or ""
    m = re.search(r"^VmRSS:\s+(\d+) kB", st, re.M)
    rss = int(m.group(1)) if m else -1
    try:
        fds = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        fds = -1
    shm_kb = 0
    shm_maps = 0
    cur_shared = False
    for line in (read("/proc/%d/smaps" % pid) or "").splitlines():
        f = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            cur_shared = len(f) > 1 and f[1].endswith("s")
            if cur_shared:
                shm_maps += 1
        elif cur_shared and f and f[0] == "Size:":
            shm_kb += int(f[1])
    return {"rss_kb": rss, "fds": fds, "shm_kb": shm_kb, "shm_mappings": shm_maps}


# ---------------------------------------------------------------------------
# The soak (parent)

class Violation(Exception):
    pass


class Soak:
    def __init__(self, args, conftest):
        self.a = args
        self.ct = conftest
        self.rng = random.Random(args.seed)
        self.clients = []        # Popen
        self.client_out = []
        self.d = None
        self.base = None
        self.violations = []
        self.kills_worker = {}   # pid -> time
        self.kills_acceptor = []  # (time, pid, set(client pids))
        self.events = {}         # action -> count
        self.generation = 1
        self.base_workers = 3
        self.workers = 3         # workers of the current generation now
        self.conf_workers = 3    # `workers` in the file (a reload undoes TTIN/TTOU)
        self.retries = 1
        self.logs = []           # rotated error logs, oldest first
        self.cleaned = False
        self.stub_ = None

    # -- logging ------------------------------------------------------------
    def say(self, msg):
        if self.a.verbose:
            print("[soak %7.1fs] %s" % (mono() - self.t_start, msg), flush=True)

    def violate(self, msg):
        self.violations.append(msg)
        print("VIOLATION: " + msg, flush=True)

    def log_text(self):
        return "".join((read(p, "rb") or b"").decode(errors="replace")
                       for p in self.logs + [self.d.log_path])

    def log_count(self, regex):
        return len(re.findall(regex, self.log_text(), re.M))

    def wait_log_more(self, regex, before, what, timeout=30):
        self.ct.wait_for(lambda: self.log_count(regex) > before, timeout, 0.05, what)

    # -- daemon -------------------------------------------------------------
    def settings(self, **over):
        # max_connection_age_grace_ms above STREAM_TIMEOUT: a connection that
        # ages out (every 30 s: that GOAWAY is part of the chaos) lets every
        # stream on it finish; with the default 10 s a long stream is cut
        # with UNAVAILABLE "enter idle", which is not what this soak checks.
        s = {"acceptors": 2, "workers": self.conf_workers, "task_retries": self.retries,
             "respawn_burst": 1000, "respawn_window_ms": 10000,
             "max_connection_age_grace_ms": int(STREAM_TIMEOUT * 1000),
             "shutdown_timeout_ms": 20000, "task_timeout_ms": 30000,
             "queue_capacity": QUEUE_CAPACITY, "queue_wait_ms": int(CALL_TIMEOUT * 1000),
             "log_level": "info"}
        s.update(over)
        return s

    def write_conf(self, broken=None):
        self.d.settings.update(self.settings())
        text = self.d.conf_text()
        if broken:
            text += broken + "\n"
        tmp = self.d.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.d.conf_path)

    def start_daemon(self):
        self.base = tempfile.mkdtemp(prefix="crunchd-soak-")
        self.d = self.ct.Crunchd(self.base, self.settings())
        self.d.bin = self.a.crunchd
        self.d.start(timeout=60)
        self.say("crunchd %d on %s, prefix %s" % (self.d.pid, self.d.target, self.d.prefix))

    def stub(self):
        if self.stub_ is None:
            self.stub_ = self.d.stub()
        return self.stub_

    def call(self, fn, *a, **kw):
        """A parent's own call (not counted), retried through acceptor kills."""
        grpc = self.ct.grpc
        deadline = mono() + 60
        while True:
            try:
                return fn(*a, timeout=20, wait_for_ready=True, **kw)
            except grpc.RpcError as e:
                if mono() > deadline:
                    raise Violation("parent call failed for 60 s: %s %s"
                                    % (e.code().name, e.details()))
                time.sleep(0.1)

    def stats(self):
        return self.call(self.stub().Stats, self.ct.pb.StatsRequest())

    def echo_ok(self, what):
        r = self.call(self.stub().Run, self.ct.pb.Task(id=1, handler="echo", payload=b"soak"))
        if r.output != b"soak":
            raise Violation("%s: echo answered %r" % (what, r.output))

    def worker_titles(self):
        """[(pid, slot, gen)] of every live worker."""
        out = []
        for pid, title in self.d.children().items():
            m = re.match(r"^crunchd: worker (\d+) gen (\d+)", title)
            if m:
                out.append((pid, int(m.group(1)), int(m.group(2))))
        return out

    def acceptor_pids(self):
        return [pid for pid, t in self.d.children().items()
                if t.startswith("crunchd: acceptor")]

    def wait_workers(self, what):
        """The current generation has exactly self.workers workers, no other
        generation's worker is left, and 2 acceptors run."""
        def ok():
            self.d._check_running()
            w = self.worker_titles()
            cur = [x for x in w if x[2] == self.generation]
            return len(cur) == self.workers and len(w) == self.workers and \
                len(self.acceptor_pids()) == 2
        try:
            self.ct.wait_for(ok, 60, 0.05, what)
        except self.ct.WaitTimeout as e:
            raise Violation("%s (workers now: %s)" % (e, self.worker_titles()))

    # -- chaos steps ----------------------------------------------------------
    def step_kill_worker(self):
        w = self.worker_titles()
        if not w:
            return
        pid, slot, gen = self.rng.choice(w)
        self.kills_worker[pid] = mono()
        os.kill(pid, signal.SIGKILL)
        self.say("SIGKILL worker %d gen %d (pid %d)" % (slot, gen, pid))
        self.wait_workers("worker %d (pid %d) replaced" % (slot, pid))

    def step_kill_acceptor(self):
        accs = self.acceptor_pids()
        if not accs:
            return
        pid = self.rng.choice(accs)
        port = self.d.port
        a_inodes = socket_inodes(pid)
        client_sets = {c.pid: socket_inodes(c.pid) for c in self.clients}
        table = tcp_table()
        cports = {rp for (lp, rp, ino) in table if ino in a_inodes and lp == port}
        hit = set()
        for cpid, inodes in client_sets.items():
            if any(ino in inodes and rp == port and lp in cports for (lp, rp, ino) in table):
                hit.add(cpid)
        t = mono()
        os.kill(pid, signal.SIGKILL)
        self.kills_acceptor.append((t, pid, hit))
        self.say("SIGKILL acceptor pid %d (clients connected: %s)" % (pid, sorted(hit)))
        self.ct.wait_for(lambda: pid not in self.acceptor_pids() and
                         len(self.acceptor_pids()) == 2, 60, 0.05,
                         "acceptor %d replaced" % pid)
        t = mono()
        if not h2_handshake("127.0.0.1", port, 30):
            raise Violation("no HTTP/2 handshake on port %d within 30 s of killing acceptor "
                            "%d; acceptors now %s; sockets:\n%s"
                            % (port, pid, self.acceptor_pids(), ss_dump(port)))
        self.say("listener answers %.3f s later" % (mono() - t))

    RELOAD_OK = r"reload: generation \d+: \d+ new workers"
    RELOAD_REFUSED = r"reload refused: "

    def hup(self, what):
        before = self.log_count(self.RELOAD_OK)
        os.kill(self.d.pid, signal.SIGHUP)
        self.wait_log_more(self.RELOAD_OK, before, "the reload log line (%s)" % what)
        self.generation += 1
        self.workers = self.conf_workers
        self.wait_workers("generation %d with %d workers (%s)"
                          % (self.generation, self.workers, what))

    def step_hup_same(self):
        self.hup("same file")
        self.say("SIGHUP same file: generation %d" % self.generation)

    def step_hup_workers(self):
        self.conf_workers = self.rng.choice([n for n in range(1, 6) if n != self.workers])
        self.retries = self.rng.choice([0, 1])
        self.write_conf()
        self.hup("workers %d" % self.conf_workers)
        self.say("SIGHUP workers=%d task_retries=%d: generation %d"
                 % (self.workers, self.retries, self.generation))

    BROKEN = ["workers = ;", "workers = 0;", "no_such_setting = 1;",
              'listen = [ "127.0.0.1:0", ];', "queue_capacity = \"lots\";"]

    def step_hup_broken(self):
        broken = self.rng.choice(self.BROKEN)
        self.write_conf(broken=broken)
        before = self.log_count(self.RELOAD_REFUSED)
        os.kill(self.d.pid, signal.SIGHUP)
        self.wait_log_more(self.RELOAD_REFUSED, before, "'reload refused' for %r" % broken)
        self.write_conf()
        self.echo_ok("after a refused reload")
        st = self.stats()
        if st.generation != self.generation:
            raise Violation("after a refused reload Stats says generation %d, expected %d"
                            % (st.generation, self.generation))
        self.wait_workers("the old generation %d still serving" % self.generation)
        self.say("SIGHUP broken file (%s): refused" % broken)

    def step_ttin(self):
        if self.workers >= 6:
            return self.step_ttou()
        before = self.log_count(r"SIGTTIN: \d+ workers")
        os.kill(self.d.pid, signal.SIGTTIN)
        self.wait_log_more(r"SIGTTIN: \d+ workers", before, "the SIGTTIN log line")
        self.workers += 1
        self.wait_workers("%d workers after SIGTTIN" % self.workers)
        self.say("SIGTTIN: %d workers" % self.workers)

    def step_ttou(self):
        if self.workers <= 1:
            return self.step_ttin()
        before = self.log_count(r"SIGTTOU: \d+ workers")
        os.kill(self.d.pid, signal.SIGTTOU)
        self.wait_log_more(r"SIGTTOU: \d+ workers", before, "the SIGTTOU log line")
        self.workers -= 1
        self.wait_workers("%d workers after SIGTTOU" % self.workers)
        self.say("SIGTTOU: %d workers" % self.workers)

    def step_usr1(self):
        rotated = "%s.%d" % (self.d.log_path, len(self.logs) + 1)
        os.rename(self.d.log_path, rotated)
        self.logs.append(rotated)
        os.kill(self.d.pid, signal.SIGUSR1)
        self.ct.wait_for(lambda: "reopened log files" in (read(self.d.log_path) or ""),
                         30, 0.05, "the master to reopen error.log after SIGUSR1")
        self.say("SIGUSR1: error log rotated")

    STEPS = [("kill_worker", 6), ("kill_acceptor", 1), ("hup_same", 1), ("hup_workers", 2),
             ("hup_broken", 1), ("ttin", 1), ("ttou", 1), ("usr1", 1)]

    def chaos(self, until):
        names = [n for n, _ in self.STEPS]
        weights = [w for _, w in self.STEPS]
        while mono() < until:
            time.sleep(self.rng.uniform(self.a.chaos_min, self.a.chaos_max))
            if mono() >= until:
                break
            for c in self.clients:
                if c.poll() is not None:
                    raise Violation("client %d exited early with status %s"
                                    % (c.pid, c.returncode))
            name = self.rng.choices(names, weights)[0]
            self.events[name] = self.events.get(name, 0) + 1
            try:
                getattr(self, "step_" + name)()
            except self.ct.WaitTimeout as e:
                raise Violation("chaos step %s: %s" % (name, e))

    # -- clients ----------------------------------------------------------------
    def start_clients(self):
        for i in range(self.a.clients):
            out = os.path.join(self.base, "client%d.json" % i)
            self.client_out.append(out)
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--client", str(i + 1),
                                  "--target", self.d.target, "--seed", str(self.a.seed),
                                  "--out", out], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE)
            self.clients.append(p)
        for p in self.clients:
            line = p.stdout.readline()
            if line.strip() != b"ready":
                raise Violation("client %d did not start (status %s)" % (p.pid, p.poll()))

    def stop_clients(self):
        for p in self.clients:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGUSR1)
        results = []
        for p, out in zip(self.clients, self.client_out):
            try:
                p.wait(STREAM_TIMEOUT + 60)
            except subprocess.TimeoutExpired:
                self.violate("client %d did not finish its calls in time" % p.pid)
                p.kill()
                p.wait()
            try:
                with open(out) as f:
                    results.append(json.load(f))
            except (OSError, ValueError):
                self.violate("client %d left no results (status %s)" % (p.pid, p.returncode))
        return results

    # -- attribution --------------------------------------------------------------
    WORKER_KILLED = re.compile(r"worker \d+ \(pid (\d+)\) killed by SIGKILL")

    def attribute(self, cpid, f):
        """'worker', 'acceptor' or None (a violation)."""
        m = self.WORKER_KILLED.search(f["details"])
        if m and int(m.group(1)) in self.kills_worker:
            return "worker"
        if f["kind"] in ("run", "stream"):
            for (tk, apid, hit) in self.kills_acceptor:
                if cpid in hit and f["t0"] <= tk + 0.5 and f["t1"] >= tk:
                    return "acceptor"
        return None

    # -- the run ----------------------------------------------------------------------
    def run(self):
        self.t_start = mono()
        a = self.a
        self.start_daemon()
        # Warm-up: every handler once through every acceptor, then idle.
        for i, h in enumerate(("echo", "prime", "gcd", "sleep") * 8):
            p = {"echo": b"x" * 5000, "prime": b"112272535095293", "gcd": b"1963309 2265973",
                 "sleep": b"1"}[h]
            self.call(self.stub().Run, self.ct.pb.Task(id=i + 1, handler=h, payload=p))
        self.ct.wait_region_idle(self.d)
        before = master_resources(self.d.pid)
        st0 = self.stats()
        self.say("before: %s" % before)

        self.start_clients()
        self.say("%d clients running; chaos for %ds" % (len(self.clients), a.duration))
        err = None
        try:
            self.chaos(self.t_start + a.duration)
        except Violation as e:
            err = e
            self.violate(str(e))
        # Back to the start: good file, start worker count, one more reload
        # (a step that failed above may have left anything in flight).
        if err is None:
            self.conf_workers = self.base_workers
            self.write_conf()
            self.hup("back to %d workers" % self.conf_workers)
        results = self.stop_clients()
        if err is None:
            self.ct.wait_region_idle(self.d, "the queue idle after the load")
            self.echo_ok("after the load")
            self.ct.wait_region_idle(self.d, "the queue idle after the load")
        after = master_resources(self.d.pid)
        st1 = self.stats()

        # Kills that hit a running task, from the master's log.
        busy_kills = 0
        for m in re.finditer(r"worker \d+ \(pid (\d+)\) of generation \d+ killed by SIGKILL; "
                             r"the task it was running", self.log_text()):
            if int(m.group(1)) in self.kills_worker:
                busy_kills += 1

        self.quit_and_check()
        return self.report(results, before, after, st0, st1, busy_kills)

    def quit_and_check(self):
        d = self.d
        d.children()  # remember them
        os.kill(d.pid, signal.SIGQUIT)
        try:
            rc = d.proc.wait(20 + 15)
        except subprocess.TimeoutExpired:
            self.violate("the master did not exit within 35 s of SIGQUIT")
            rc = None
        if rc not in (None, 0):
            self.violate("the master exited with status %s after SIGQUIT" % rc)
        try:
            self.ct.wait_for(lambda: not d.leftovers(), 10, 0.05, "every process to exit")
        except self.ct.WaitTimeout:
            pass
        left = d.leftovers()
        self.left = left
        if left:
            self.violate("processes left after stop: %s"
                         % ", ".join("%d (%s)" % (p, self.ct.proc_cmdline(p)) for p in left))
        bad = [l for l in self.log_text().splitlines() + d.stderr_text().splitlines()
               if self.ct.BAD_LOG.search(l) or self.ct.SANITIZER.search(l)]
        if bad:
            self.violate("error log / stderr lines: %s" % " | ".join(bad[:10]))

    def report(self, results, before, after, st0, st1, busy_kills):
        tot = {"sent": 0, "ok": 0, "wrong": 0, "twice": 0, "unanswered": 0,
               "run_calls": 0, "stream_calls": 0}
        errors_by_code = {}
        failed_by_cause = {"worker": 0, "acceptor": 0}
        lost_with_acceptor = 0
        unattributed = []
        for r in results:
            c = r["counts"]
            for k in ("sent", "ok", "wrong", "twice", "run_calls", "stream_calls"):
                tot[k] += c[k]
            tot["unanswered"] += c["unanswered_ok_call"]
            if r["hung_threads"]:
                self.violate("client %d: %d call threads never returned"
                             % (r["pid"], r["hung_threads"]))
            for w in r["wrong"]:
                self.violate("wrong answer (client %d): %s" % (r["pid"], w))
            for f in r["failures"]:
                if f["kind"] == "stream-missing":
                    self.violate("stream ended OK with %d tasks unanswered, e.g. %s: %s "
                                 "(%.2f..%.2f s)" % (f["unanswered"], f["ids"][:5], f["details"],
                                                    f["t0"] - self.t_start,
                                                    f["t1"] - self.t_start))
                    continue
                cause = self.attribute(r["pid"], f)
                server_said = f["kind"] == "stream-task" or (
                    f["code"] != "DEADLINE_EXCEEDED" or "Deadline Exceeded" != f["details"])
                if f["kind"] in ("run", "stream") and cause == "acceptor":
                    lost_with_acceptor += f["unanswered"]
                elif f["kind"] == "stream" or not server_said:
                    # a broken stream's unanswered tasks; a Run that hit its
                    # own deadline without a word from the server
                    tot["unanswered"] += f["unanswered"]
                else:
                    code = f["code"] if isinstance(f["code"], str) else self.code_name(f["code"])
                    errors_by_code[code] = errors_by_code.get(code, 0) + 1
                if cause:
                    failed_by_cause[cause] += 1
                else:
                    unattributed.append(f)
        for f in unattributed[:20]:
            self.violate("failure not caused by a kill: %s %s %r (ids %s, %.2f..%.2f s)"
                         % (f["kind"], f["code"], f["details"][:200], f["ids"][:3],
                            f["t0"] - self.t_start, f["t1"] - self.t_start))
        if len(unattributed) > 20:
            self.violate("... and %d more failures not caused by a kill" % (len(unattributed) - 20))
        answered_err = sum(errors_by_code.values())
        if tot["unanswered"]:
            self.violate("%d tasks unanswered" % tot["unanswered"])
        if tot["twice"]:
            self.violate("%d answers twice" % tot["twice"])
        if tot["wrong"]:
            self.violate("%d wrong results" % tot["wrong"])
        tol_kb = 1024
        if sanitizer_build(os.environ.get("CRUNCHD_BIN", "")):
            # ASan's allocator holds freed memory in its quarantine (256 MiB
            # by default) and per-thread caches: RSS grows with use, leak or
            # not. That build's leaks are LeakSanitizer's to report (at exit,
            # into the error log this script checks).
            tol_kb = 64 * 1024
        if after["rss_kb"] > before["rss_kb"] + tol_kb:
            self.violate("master RSS grew from %d to %d kB (tolerance %d kB)"
                         % (before["rss_kb"], after["rss_kb"], tol_kb))
        if after["fds"] != before["fds"]:
            self.violate("master open fds went from %d to %d" % (before["fds"], after["fds"]))
        if (after["shm_kb"], after["shm_mappings"]) != (before["shm_kb"], before["shm_mappings"]):
            self.violate("master shared mappings went from %d kB in %d to %d kB in %d"
                         % (before["shm_kb"], before["shm_mappings"], after["shm_kb"],
                            after["shm_mappings"]))
        tasks_failed_by_worker_kill = sum(
            1 for r in results for f in r["failures"]
            if self.attribute(r["pid"], f) == "worker")
        elapsed = mono() - self.t_start
        summary = {
            "duration_s": round(elapsed, 1), "clients": self.a.clients, "seed": self.a.seed,
            "tasks_sent": tot["sent"], "answered_ok": tot["ok"],
            "answered_error": answered_err, "errors_by_code": errors_by_code,
            "unanswered": tot["unanswered"], "answered_twice": tot["twice"],
            "wrong_results": tot["wrong"], "lost_with_killed_acceptor": lost_with_acceptor,
            "run_calls": tot["run_calls"], "stream_calls": tot["stream_calls"],
            "tasks_per_s": round(tot["sent"] / max(1.0, self.a.duration), 1),
            "failed_by_worker_kill": failed_by_cause["worker"],
            "failed_by_acceptor_kill": failed_by_cause["acceptor"],
            "failed_not_caused_by_kill": len(unattributed),
            "worker_kills": len(self.kills_worker), "worker_kills_busy": busy_kills,
            "tasks_retried": max(0, busy_kills - tasks_failed_by_worker_kill),
            "acceptor_kills": len(self.kills_acceptor), "chaos_steps": self.events,
            "generation_end": st1.generation, "reloads_ok": st1.reloads_ok,
            "reloads_failed": st1.reloads_failed,
            "master_rss_kb": [before["rss_kb"], after["rss_kb"]],
            "master_fds": [before["fds"], after["fds"]],
            "master_shm_kb": [before["shm_kb"], after["shm_kb"]],
            "arena_used_end": st1.queue.arena_used,
            "tasks_free_end": [st1.queue.tasks_free, st1.queue.capacity],
            "processes_left": len(getattr(self, "left", [])),
            "violations": len(self.violations),
        }
        self.print_table(summary)
        line = json.dumps(summary, sort_keys=True)
        print("SOAK-JSON " + line, flush=True)
        if self.a.json:
            with open(self.a.json, "w") as f:
                f.write(line + "\n")
        return summary

    def code_name(self, n):
        for c in self.ct.grpc.StatusCode:
            if c.value[0] == n:
                return c.name
        return str(n)

    def print_table(self, s):
        rows = [
            ("duration (s)", s["duration_s"]), ("client processes", s["clients"]),
            ("seed", s["seed"]),
            ("tasks sent", s["tasks_sent"]), ("tasks per second", s["tasks_per_s"]),
            ("Run calls / RunStream calls", "%d / %d" % (s["run_calls"], s["stream_calls"])),
            ("answered OK", s["answered_ok"]),
            ("answered with an error", "%d %s" % (s["answered_error"],
                                                  json.dumps(s["errors_by_code"]))),
            ("lost with a killed acceptor", s["lost_with_killed_acceptor"]),
            ("unanswered (must be 0)", s["unanswered"]),
            ("answered twice (must be 0)", s["answered_twice"]),
            ("wrong results (must be 0)", s["wrong_results"]),
            ("failures caused by a worker kill", s["failed_by_worker_kill"]),
            ("failures caused by an acceptor kill", s["failed_by_acceptor_kill"]),
            ("failures not caused by a kill (must be 0)", s["failed_not_caused_by_kill"]),
            ("workers killed (busy) / tasks retried",
             "%d (%d) / %d" % (s["worker_kills"], s["worker_kills_busy"], s["tasks_retried"])),
            ("acceptors killed", s["acceptor_kills"]),
            ("chaos steps", " ".join("%s=%d" % kv for kv in sorted(s["chaos_steps"].items()))),
            ("reloads ok / refused; last generation",
             "%d / %d; %d" % (s["reloads_ok"], s["reloads_failed"], s["generation_end"])),
            ("master RSS kB before -> after", "%d -> %d" % tuple(s["master_rss_kb"])),
            ("master fds before -> after", "%d -> %d" % tuple(s["master_fds"])),
            ("master shared mappings kB before -> after", "%d -> %d" % tuple(s["master_shm_kb"])),
            ("queue at the end: arena used, free/capacity",
             "%d, %d/%d" % (s["arena_used_end"], s["tasks_free_end"][0], s["tasks_free_end"][1])),
            ("processes left after stop (must be 0)", s["processes_left"]),
            ("violations", s["violations"]),
        ]
        w = max(len(r[0]) for r in rows)
        print("crunchd soak summary")
        for k, v in rows:
            print("  %-*s  %s" % (w, k, v))
        print("RESULT: %s" % ("PASS" if not self.violations else "FAIL"), flush=True)

    def cleanup(self):
        """Kill everything this run started; runs at exit and on signals."""
        if self.cleaned:
            return
        self.cleaned = True
        for p in self.clients:
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        d = self.d
        if d is not None and d.proc is not None:
            left = d.leftovers()
            if d.proc.poll() is None or left:
                try:
                    os.killpg(d.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.base and not self.a.keep:
            shutil.rmtree(self.base, ignore_errors=True)
        elif self.base:
            print("soak: prefix kept in %s" % self.base, flush=True)


def main():
    ap = argparse.ArgumentParser(description="chaos soak for crunchd")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load and chaos")
    ap.add_argument("--clients", type=int, default=3, help="client processes")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--crunchd", default=None, help="the daemon ($CRUNCHD_BIN, src/crunchd)")
    ap.add_argument("--json", default=None, help="also write the summary JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the prefix for inspection")
    ap.add_argument("--verbose", action="store_true", help="print every chaos step")
    ap.add_argument("--chaos-min", type=float, default=0.2, help=argparse.SUPPRESS)
    ap.add_argument("--chaos-max", type=float, default=1.5, help=argparse.SUPPRESS)
    ap.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return client_main(args)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**9)
    if args.clients < 1 or args.duration < 5:
        ap.error("--clients must be at least 1 and --duration at least 5")
    args.crunchd = os.path.abspath(args.crunchd or os.environ.get("CRUNCHD_BIN")
                                   or os.path.join("src", "crunchd"))
    if not os.access(args.crunchd, os.X_OK):
        ap.error("no crunchd at %s: give --crunchd PATH or set CRUNCHD_BIN" % args.crunchd)
    os.environ["CRUNCHD_BIN"] = args.crunchd
    sys.path.insert(0, T_DIR)
    import conftest  # noqa: E402

    soak = Soak(args, conftest)
    import atexit
    atexit.register(soak.cleanup)

    def on_signal(signum, frame):
        soak.cleanup()
        os._exit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    print("soak: crunchd %s, %d clients, %.0f s, seed %d"
          % (args.crunchd, args.clients, args.duration, args.seed), flush=True)
    try:
        soak.run()
    except (Violation, AssertionError) as e:
        soak.violate(str(e))
        print("RESULT: FAIL", flush=True)
    soak.cleanup()
    return 1 if soak.violations else 0


if __name__ == "__main__":
    sys.exit(main())
