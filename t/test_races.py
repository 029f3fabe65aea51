# test_races.py: the acceptor's call life-cycle under races. The acceptor's
# three threads (completion queue, results, updates) share each call; these
# tests end calls at random moments (cancel, disconnect, deadline, connection
# age, reload, QUIT, a worker killed) while they wait for queue space, while
# their tasks run and while their results are written, on a queue of 2 or 3.
# A wrong reference count, a broken waiting list or a batch on a dead call
# aborts the acceptor (the fixture fails the test on [alert] lines and on
# sanitizer reports); a stranded descriptor or feed place shows as a region
# or feed that never comes back whole; a leaked call context keeps gRPC's
# shutdown waiting ("exiting without cleanup" at the closing QUIT). Against
# the code before commit 851781e the chaos tests abort the acceptor within
# seconds (`assertion "*pp == c" failed (rpc_pend_remove)`); with one list
# reference leaked on purpose, 10 of the 12 tests then present failed.
#
# Then, one call at a time: calls that end while they wait for room, and
# which status a wait that runs past a deadline ends with; a message cut off
# by the client's half-close.
#
# For a longer hunt: RACES_N (calls, default 600), RACES_RELOADS (6),
# RACES_KILLS (6), RACES_AGE / RACES_GRACE (connection age and grace of the
# reload test, ms).

import os
import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from conftest import (RPC_TIMEOUT, SCALE, WAIT, Feeder, alive, call_status, pb, pb_grpc,
                      stats, wait_for, wait_region_idle)

OK = grpc.StatusCode.OK


def own_channel(d):
    # A connection of its own (channels with the same arguments share one).
    return d.channel(options=[("grpc.use_local_subchannel_pool", 1)])


class Chaos:
    """Client threads doing random calls that end at random moments. Every
    call that ends OK must carry exactly the right results; the others may
    only end the ways the client made them end."""

    # How a call may end other than OK: cancelled by the client, cut by its
    # deadline or by a closed connection. Only a Run may be refused for a
    # full queue (queue_wait_ms); streams wait, they are never refused.
    ALLOWED = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.UNAVAILABLE}
    ALLOWED_RUN = {grpc.StatusCode.RESOURCE_EXHAUSTED}
    task_failures = ()  # Result.code a stream's task may fail with

    def __init__(self, d, seed, kinds=("run", "stream", "stall", "submit", "updates")):
        self.d = d
        self.kinds = kinds
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.counts = {}
        self.threads = []

    def note(self, what, code):
        with self.lock:
            key = (what, code.name if hasattr(code, "name") else str(code))
            self.counts[key] = self.counts.get(key, 0) + 1

    def bad(self, *what):
        with self.lock:
            self.errors.append(what)

    def run_one(self, rnd, stub, tid):
        payload = b"r%d" % tid
        timeout = rnd.choice([0.005, 0.02, 0.05, 5 * SCALE])
        handler, arg = rnd.choice([("echo", payload), ("sleep", b"2"), ("sleep", b"10")])
        f = stub.Run.future(pb.Task(id=tid, handler=handler, payload=arg), timeout=timeout)
        if rnd.random() < 0.3:
            time.sleep(rnd.random() * 0.01)
            f.cancel()
        try:
            r = f.result(timeout=10 * SCALE)
            self.note("run", OK)
            if r.id != tid or (handler == "echo" and r.output != payload):
                self.bad("run: wrong result", tid, r)
        except grpc.FutureCancelledError:
            self.note("run", grpc.StatusCode.CANCELLED)
        except grpc.RpcError as e:
            self.note("run", e.code())
            if e.code() not in self.ALLOWED | self.ALLOWED_RUN:
                self.bad("run", tid, e.code(), e.details())

    def stream_one(self, rnd, stub, tid):
        n = rnd.randint(1, 40)
        tasks = [pb.Task(id=tid + i, handler="echo", payload=b"s%d" % (tid + i))
                 for i in range(n)]
        cut = rnd.random() < 0.5
        timeout = rnd.choice([0.05, 10 * SCALE])
        # A task read after the call's deadline passed (the stream may still
        # end OK: the client half-closed in time) is a DEADLINE_EXCEEDED Result.
        failures = self.task_failures + ((grpc.StatusCode.DEADLINE_EXCEEDED.value[0],)
                                         if timeout < 1 else ())
        it = stub.RunStream(iter(tasks), timeout=timeout)
        got = []
        try:
            for r in it:
                got.append(r)
                if cut and rnd.random() < 0.2:
                    it.cancel()
            self.note("stream", OK)
            if sorted(r.id for r in got) != [t.id for t in tasks]:
                self.bad("stream: results", tid, n, sorted(r.id for r in got))
            for r in got:
                if r.code in failures and r.error:
                    continue
                if r.code != 0 or r.output != b"s%d" % r.id:
                    self.bad("stream: wrong result", r)
        except grpc.RpcError as e:
            self.note("stream", e.code())
            if e.code() not in self.ALLOWED:
                self.bad("stream", tid, e.code(), e.details())

    def stall_one(self, rnd, stub, tid):
        # A RunStream whose client reads nothing for a while: its results
        # pile up to stream_max_pending, the server stops reading; then the
        # client reads a few and cancels, or goes on to the end.
        tasks = [pb.Task(id=tid + i, handler="echo", payload=b"x" * 2000) for i in range(60)]
        it = stub.RunStream(iter(tasks), timeout=10 * SCALE)
        time.sleep(rnd.random() * 0.05)
        got = 0
        try:
            for _ in it:
                got += 1
                if got == 3 and rnd.random() < 0.7:
                    it.cancel()
            self.note("stall", OK)
            if got != len(tasks):
                self.bad("stall: results", tid, got)
        except grpc.RpcError as e:
            self.note("stall", e.code())
            if e.code() not in self.ALLOWED:
                self.bad("stall", tid, e.code(), e.details())

    def submit_one(self, rnd, stub, tid):
        n = rnd.randint(1, 20)
        tasks = [pb.Task(id=tid + i, handler="echo", payload=b"u") for i in range(n)]
        f = stub.Submit.future(iter(tasks), timeout=rnd.choice([0.05, 10 * SCALE]))
        if rnd.random() < 0.3:
            time.sleep(rnd.random() * 0.01)
            f.cancel()
        try:
            r = f.result(timeout=10 * SCALE)
            self.note("submit", OK)
            if r.accepted + r.rejected != n:
                self.bad("submit: counts", n, r)
        except grpc.FutureCancelledError:
            self.note("submit", grpc.StatusCode.CANCELLED)
        except grpc.RpcError as e:
            self.note("submit", e.code())
            if e.code() not in self.ALLOWED:
                self.bad("submit", tid, e.code(), e.details())

    def updates_one(self, rnd, stub, tid):
        it = stub.Updates(pb.UpdatesRequest(max_results=rnd.randint(1, 30)),
                          timeout=rnd.choice([0.02, 0.2]))
        try:
            for _ in it:
                if rnd.random() < 0.1:
                    it.cancel()
            self.note("updates", OK)
        except grpc.RpcError as e:
            self.note("updates", e.code())
            if e.code() not in self.ALLOWED:
                self.bad("updates", tid, e.code(), e.details())

    def client(self, k):
        rnd = random.Random(self.seed * 1000 + k)
        ch = own_channel(self.d)
        stub = pb_grpc.CrunchStub(ch)
        i = 0
        while not self.stop.is_set():
            i += 1
            tid = (k * 1_000_000 + i) * 100
            kind = rnd.choice(self.kinds)
            getattr(self, kind + "_one")(rnd, stub, tid)
            if rnd.random() < 0.05:
                # Disconnect with whatever is in flight on this connection.
                ch.close()
                ch = own_channel(self.d)
                stub = pb_grpc.CrunchStub(ch)
        ch.close()

    def start(self, n):
        self.threads = [threading.Thread(target=self.client, args=(k,), daemon=True)
                        for k in range(n)]
        for t in self.threads:
            t.start()

    def count(self, code_name):
        with self.lock:
            return sum(v for (_, c), v in self.counts.items() if c == code_name)

    def total(self):
        with self.lock:
            return sum(self.counts.values())

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "a client hung"
        assert not self.errors, "%d bad outcomes, e.g. %r" % (len(self.errors),
                                                             self.errors[:5])
        return self.counts


def drain_feed(d):
    """Take every result left in the updates feed (so that the region and the
    feed are idle at the end)."""
    stub = d.stub()

    def empty():
        n = stats(d, stub).updates_depth
        if n:
            list(stub.Updates(pb.UpdatesRequest(max_results=n), timeout=WAIT))
        return stats(d, stub).updates_depth == 0
    wait_for(empty, what="the updates feed drained")


UNCLEAN = re.compile(r"did not finish \d+ calls|did not drain|exiting without cleanup")


def assert_acceptors_shut_down_cleanly(d):
    """Every acceptor that exited freed every call: a reference never dropped
    (a leaked call context) keeps gRPC's shutdown waiting for it, and the
    acceptor gives up with "exiting without cleanup" (a [warn] only)."""
    bad = [l for l in d.log_text().splitlines() if UNCLEAN.search(l)]
    assert not bad, "an acceptor did not shut down cleanly:\n" + "\n".join(bad[:5])


def quit_cleanly(d):
    """Graceful stop (shutdown_timeout_ms 1000 cuts the drain of the test's
    own idle connections short); every acceptor shut down cleanly."""
    assert d.stop(signal.SIGQUIT) == 0
    d.wait_log(r"acceptor \d+ exiting")
    assert_acceptors_shut_down_cleanly(d)


FEED = 64  # updates_capacity of the chaos tests


def assert_feed_whole(d, n=FEED):
    """Nothing stranded in the feed: with the feed drained, it takes n results
    again (a reservation kept by a call that ended, or an entry a subscriber
    took and never gave back or released, shows as a rejection)."""
    drain_feed(d)
    stub = d.stub()
    tasks = [pb.Task(id=900_000_000 + i, handler="echo", payload=b"f") for i in range(n)]
    reply = stub.Submit(iter(tasks), timeout=WAIT)
    assert (reply.accepted, reply.rejected) == (n, 0), "feed places lost: %s" % reply
    got = []
    while len(got) < n:
        got += stub.Updates(pb.UpdatesRequest(max_results=n - len(got)), timeout=WAIT)
    assert sorted(r.id for r in got) == [t.id for t in tasks]


def test_calls_ending_at_random_moments_on_a_tiny_queue(crunchd):
    d = crunchd(workers=2, queue_capacity=2, queue_wait_ms=50, stream_max_pending=4,
                updates_capacity=FEED, shutdown_timeout_ms=1000)
    acceptors = d.acceptors()
    chaos = Chaos(d, seed=1)
    chaos.start(8)
    try:
        n = int(os.environ.get("RACES_N", "600"))
        wait_for(lambda: chaos.total() >= n, timeout=WAIT * 4,
                 what="%d calls through the chaos" % n)
    finally:
        counts = chaos.finish()
    print(sorted(counts.items()))
    assert d.acceptors() == acceptors, "an acceptor was restarted"
    assert_feed_whole(d)
    wait_region_idle(d)
    quit_cleanly(d)


def test_connections_aged_out_while_calls_wait_for_a_tiny_queue(crunchd):
    # max_connection_age_ms with no grace: every second gRPC closes each
    # connection with whatever calls it carries (waiting for room, running,
    # writing): call ends that come from the transport, not the client.
    d = crunchd(workers=2, queue_capacity=2, queue_wait_ms=50, stream_max_pending=4,
                updates_capacity=FEED, max_connection_age_ms=1000,
                max_connection_age_grace_ms=0, shutdown_timeout_ms=1000)
    acceptors = d.acceptors()
    chaos = Chaos(d, seed=5)
    chaos.start(8)
    try:
        n = int(os.environ.get("RACES_N", "600"))
        wait_for(lambda: chaos.total() >= n and chaos.count("UNAVAILABLE") >= 5,
                 timeout=WAIT * 4, what="%d calls, 5 of them cut by the age" % n)
    finally:
        counts = chaos.finish()
    print(sorted(counts.items()))
    assert d.acceptors() == acceptors, "an acceptor was restarted"
    assert_feed_whole(d)
    wait_region_idle(d)
    quit_cleanly(d)

def reload(d, gen, **settings):
    d.settings.update(settings)
    d.write_conf()
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload: generation %d[: ]" % gen)


def test_reloads_while_calls_wait_for_a_tiny_queue(crunchd):
    d = crunchd(workers=2, queue_capacity=2, queue_wait_ms=50, stream_max_pending=4,
                updates_capacity=FEED,
                max_connection_age_ms=int(os.environ.get("RACES_AGE", "1000")),
                max_connection_age_grace_ms=int(os.environ.get("RACES_GRACE", "300")),
                shutdown_timeout_ms=1000)
    chaos = Chaos(d, seed=2)
    chaos.start(8)
    try:
        region = 1  # the generation of the acceptors and their region
        for gen in range(2, 2 + int(os.environ.get("RACES_RELOADS", "6"))):
            before = chaos.total()
            if gen % 2:
                reload(d, gen, workers=1 + gen % 3)
            else:
                # A new region: the old acceptor drains while its calls wait
                # for queue space and for results.
                reload(d, gen, queue_capacity=2 + gen % 3)
                d.wait_log(r"generation %d has drained" % region, timeout=WAIT * 2)
                region = gen
            wait_for(lambda: chaos.total() > before + 30, what="calls after a reload")
    finally:
        counts = chaos.finish()
    print(sorted(counts.items()))
    assert_feed_whole(d)
    wait_region_idle(d)
    quit_cleanly(d)


def test_quit_while_calls_wait_for_a_tiny_queue(crunchd):
    d = crunchd(workers=2, queue_capacity=2, queue_wait_ms=50, stream_max_pending=4,
                max_connection_age_ms=1000, max_connection_age_grace_ms=300,
                shutdown_timeout_ms=1000)
    chaos = Chaos(d, seed=3)
    chaos.start(8)
    try:
        wait_for(lambda: chaos.total() >= 200, what="200 calls before the QUIT")
        d.send_signal(signal.SIGQUIT)
        assert d.proc.wait(WAIT) == 0
    finally:
        chaos.stop.set()
    # Calls after the master exited fail to connect (UNAVAILABLE).
    counts = chaos.finish()
    print(sorted(counts.items()))
    assert_acceptors_shut_down_cleanly(d)


def test_workers_killed_while_calls_end_at_random_moments(crunchd):
    d = crunchd(workers=2, acceptors=2, queue_capacity=3, queue_wait_ms=50,
                stream_max_pending=2, task_retries=1, updates_capacity=FEED,
                shutdown_timeout_ms=1000)
    d.allow_log(r"\[crit\].*died \d+ times within")  # the kills look like a crash loop
    chaos = Chaos(d, seed=4)
    # A Run whose worker was killed twice (task_retries 1) fails ABORTED.
    chaos.ALLOWED_RUN = chaos.ALLOWED_RUN | {grpc.StatusCode.ABORTED}
    chaos.task_failures = (grpc.StatusCode.ABORTED.value[0],)
    chaos.start(8)
    try:
        for k in range(int(os.environ.get("RACES_KILLS", "6"))):
            before = chaos.total()
            wait_for(lambda: chaos.total() > before + 50, what="calls between kills")
            pid = random.Random(k).choice(sorted(d.workers().values()))
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pid not in d.workers().values() and len(d.workers()) == 2,
                     what="the killed worker replaced")
    finally:
        counts = chaos.finish()
    print(sorted(counts.items()))
    assert_feed_whole(d)
    wait_region_idle(d)
    quit_cleanly(d)


# --------------------------------------------------------------------------
# A Run waiting for queue space: which of its bounds ran out


def _fill_queue(d, stub, ex, ms=3000):
    """queue_capacity 1 and one worker: a sleep of ms holds the only descriptor."""
    f = ex.submit(call_status, d.run, "sleep", str(ms), id=1, stub=stub, timeout=RPC_TIMEOUT)
    wait_for(lambda: stats(d, stub).queue.running == 1, what="the sleep running")
    return f


def test_run_whose_timeout_ms_passes_while_waiting_for_room_is_deadline_exceeded(crunchd):
    # Task.timeout_ms (200) ends long before queue_wait_ms (10 s): the task's
    # deadline passed, as for a task that expires in the queue; the queue
    # being full is not what the client must fix. (It was RESOURCE_EXHAUSTED
    # "queue full ... for 200 ms".)
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=10000)
    stub = d.stub()
    with ThreadPoolExecutor(2) as ex:
        blocker = _fill_queue(d, stub, ex)
        code, details, _, secs = call_status(d.run, "echo", "late", id=7, stub=stub,
                                             timeout_ms=200, timeout=RPC_TIMEOUT)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        assert "waited" in details and "room in the queue" in details, details
        assert "task 7 (handler echo)" in details and "not run" in details, details
        assert secs > 0.15, secs
        # Answered when its deadline passed, not once room came.
        assert not blocker.done(), "the sleep ended first: the test proves nothing"
        assert blocker.result()[0] == grpc.StatusCode.OK
    assert d.run("echo", "after").output == b"after"


def test_stream_task_whose_timeout_ms_passes_while_waiting_for_room(crunchd):
    # A RunStream task waits for room past its Task.timeout_ms: its Result
    # says DEADLINE_EXCEEDED as soon as the deadline passes (not once room
    # came and a worker looked, as "waited 0 ms in the queue"), and the
    # stream reads on.
    d = crunchd(workers=1, queue_capacity=1)
    stub = d.stub()
    with ThreadPoolExecutor(2) as ex:
        blocker = _fill_queue(d, stub, ex)
        feeder = Feeder()
        it = stub.RunStream(feeder, timeout=RPC_TIMEOUT)
        feeder.put(pb.Task(id=7, handler="echo", payload=b"late", timeout_ms=200))
        r = next(it)
        assert not blocker.done(), "the sleep ended first: the test proves nothing"
        assert r.id == 7 and r.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], r
        assert "room in the queue" in r.error and "not run" in r.error, r.error
        feeder.put(pb.Task(id=8, handler="echo", payload=b"fine"))
        feeder.close()
        rest = list(it)
        assert [(r.id, r.code, r.output) for r in rest] == [(8, 0, b"fine")]
        assert blocker.result()[0] == grpc.StatusCode.OK
    wait_region_idle(d)

def test_run_cut_by_its_call_deadline_while_waiting_is_logged_deadline_exceeded(crunchd):
    # The call deadline (0.5 s) is shorter than queue_wait_ms: the result
    # thread's expiry and gRPC's own deadline race; whichever wins, the call
    # ends DEADLINE_EXCEEDED, on the client and in the access log (the server
    # used to send RESOURCE_EXHAUSTED when it looked first).
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=10000, access_log="access.log")
    stub = d.stub()
    n = 24
    with ThreadPoolExecutor(n + 1) as ex:
        blocker = _fill_queue(d, stub, ex)
        futs = [ex.submit(call_status, d.run, "echo", "w%d" % i, id=100 + i, stub=stub,
                          timeout=0.5 * SCALE) for i in range(n)]
        for f in futs:
            code, details, _, _ = f.result()
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        assert blocker.result()[0] == grpc.StatusCode.OK
    log = os.path.join(d.prefix, "access.log")

    def run_lines():
        with open(log) as f:
            return [l.split() for l in f if " /crunch.v1.Crunch/Run echo " in l]
    wait_for(lambda: len(run_lines()) == n, what="%d access lines" % n)
    assert sorted(l[5] for l in run_lines()) == ["4"] * n, run_lines()


# --------------------------------------------------------------------------
# A message cut off by the end of the stream


def test_message_cut_off_by_half_close_is_answered_as_incomplete(crunchd):
    # A client that half-closes in the middle of its Task (the length prefix
    # promises more than comes) gets "no complete Task". gRPC 1.51 reports it
    # exactly as a call with no message at all (no message, no error), so
    # crunchd cannot single it out as INVALID_ARGUMENT: both get INTERNAL, with
    # a text that covers both.
    from test_rawbytes import DATA, END_STREAM, frame, grpc_data, grpc_headers, rpc_call
    d = crunchd(workers=1)
    task = pb.Task(id=5, handler="echo", payload=b"raw" * 10).SerializeToString()
    for body in (grpc_data(task[:10], length=len(task)),  # cut inside the message
                 frame(DATA, END_STREAM, 1, b"\x00\x00\x00"),  # inside its prefix
                 frame(DATA, END_STREAM, 1, b"")):  # no message at all
        r = rpc_call(d, grpc_headers(), body)
        assert r.status == grpc.StatusCode.INTERNAL.value[0], r
        msg = r.field("grpc-message") or ""
        assert "without sending a complete one" in msg, r
    assert d.run("echo", "after").output == b"after"


# --------------------------------------------------------------------------
# Calls that end while they wait on the waiting list (queue full)


def _access_lines(d, method):
    path = os.path.join(d.prefix, "access.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.split() for l in f if " /crunch.v1.Crunch/%s " % method in l]


def test_cancelled_run_waiting_for_room_is_never_run(crunchd):
    # The Run waits on the waiting list behind a 1 s sleep; its client
    # cancels. The waiting list lets go of it at once (its access line, written
    # when the call's last reference goes, comes before the sleep ends), and
    # its task is never submitted: the worker is free right after the sleep.
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=30000, access_log="access.log",
                log_level="debug")
    stub = d.stub()
    with ThreadPoolExecutor(2) as ex:
        blocker = _fill_queue(d, stub, ex, ms=1000)
        f = stub.Run.future(pb.Task(id=2, handler="sleep", payload=b"3000"),
                            timeout=RPC_TIMEOUT)
        d.wait_log(r"Run: task 2 handler sleep")
        f.cancel()
        wait_for(lambda: _access_lines(d, "Run"), what="the cancelled call's access line")
        (line,) = _access_lines(d, "Run")
        assert line[5] == "1", line  # CANCELLED
        assert not blocker.done(), "the sleep ended first: the test proves nothing"
        assert blocker.result()[0] == grpc.StatusCode.OK
    assert d.run("echo", "next", id=3, timeout=RPC_TIMEOUT).output == b"next"
    # One worker takes tasks in order: once the echo is counted, a sleep
    # submitted before it would be counted too.
    def counts():
        h = {x.name: x.count for x in stats(d, stub).handlers}
        return h if h["echo"] == 1 else None
    assert wait_for(counts, what="the echo counted")["sleep"] == 1, "the cancelled sleep ran"
    wait_region_idle(d)


def test_cancelled_submit_waiting_for_room_gives_back_its_feed_place(crunchd):
    # A Submit task waiting for queue space holds a place in the updates feed
    # (reserved when it was read). Its call is cancelled: the place comes
    # back, so the feed takes updates_capacity results again.
    d = crunchd(workers=1, queue_capacity=1, updates_capacity=3, access_log="access.log",
                log_level="debug")
    stub = d.stub()
    with ThreadPoolExecutor(2) as ex:
        blocker = _fill_queue(d, stub, ex, ms=1000)
        feeder = Feeder()
        f = stub.Submit.future(feeder, timeout=RPC_TIMEOUT)
        feeder.put(pb.Task(id=10, handler="echo", payload=b"held"))
        d.wait_log(r"Submit: task 10 handler echo")
        f.cancel()
        feeder.close()
        wait_for(lambda: _access_lines(d, "Submit"), what="the cancelled call's access line")
        assert not blocker.done(), "the sleep ended first: the test proves nothing"
        assert blocker.result()[0] == grpc.StatusCode.OK
    reply = stub.Submit(iter([pb.Task(id=20 + i, handler="echo", payload=b"x")
                              for i in range(3)]), timeout=RPC_TIMEOUT)
    assert (reply.accepted, reply.rejected) == (3, 0), "a feed place was not given back"
    got = list(stub.Updates(pb.UpdatesRequest(max_results=3), timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in got) == [20, 21, 22]
    wait_region_idle(d)


def test_stream_cancelled_while_its_task_waits_for_room(crunchd):
    # A RunStream holds one task on the waiting list and has others running;
    # it is cancelled: the list lets go of it, its running tasks are
    # cancelled, nothing is stranded.
    d = crunchd(workers=1, queue_capacity=2, access_log="access.log", log_level="debug")
    stub = d.stub()
    feeder = Feeder()
    it = stub.RunStream(feeder, timeout=RPC_TIMEOUT)
    for i in range(3):
        feeder.put(pb.Task(id=i, handler="sleep", payload=b"600"))
    d.wait_log(r"RunStream: task 2 handler sleep")
    wait_for(lambda: stats(d, stub).queue.tasks_free == 0, what="the queue full")
    it.cancel()
    feeder.close()
    wait_for(lambda: _access_lines(d, "RunStream"), what="the cancelled call's access line")
    (line,) = _access_lines(d, "RunStream")
    assert line[5] == "1", line
    wait_region_idle(d)
    assert d.run("echo", "after").output == b"after"


def test_quit_while_calls_wait_for_room_and_for_results(crunchd):
    # The acceptor drains (QUIT) while a Run and a RunStream wait on the
    # waiting list behind a 4 s sleep, and a Submit holds a feed place there:
    # shutdown_timeout_ms ends the drain, gRPC cancels what is open, and the
    # acceptor and the master exit cleanly (no abort, no leak report) long
    # before the sleep would have ended.
    d = crunchd(workers=1, queue_capacity=1, queue_wait_ms=30000, shutdown_timeout_ms=1000,
                log_level="debug")
    stub = d.stub()
    (apid,) = d.acceptors().values()
    with ThreadPoolExecutor(4) as ex:
        blocker = _fill_queue(d, stub, ex, ms=4000)
        run = ex.submit(call_status, d.run, "echo", "waits", id=2, stub=stub,
                        timeout=RPC_TIMEOUT)
        feeder = Feeder()
        stream = stub.RunStream(feeder, timeout=RPC_TIMEOUT)
        feeder.put(pb.Task(id=3, handler="echo", payload=b"waits too"))
        sfeeder = Feeder()
        sub = stub.Submit.future(sfeeder, timeout=RPC_TIMEOUT)
        sfeeder.put(pb.Task(id=4, handler="echo", payload=b"held"))
        for rx in (r"Run: task 2 handler", r"RunStream: task 3 handler",
                   r"Submit: task 4 handler"):
            d.wait_log(rx)
        t0 = time.monotonic()
        d.send_signal(signal.SIGQUIT)
        wait_for(lambda: not alive(apid), what="the acceptor to exit")
        took = time.monotonic() - t0
        # The worker finishes the sleep in hand (a graceful stop), then all exit.
        assert d.proc.wait(WAIT) == 0
        feeder.close()
        sfeeder.close()
        codes = [blocker.result()[0], run.result()[0]]
        try:
            list(stream)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
        try:
            sub.result(timeout=WAIT)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    # Drain (1 s) + gRPC's shutdown and cancel (1 s), not the 4 s sleep.
    assert took < 3.5 * SCALE, "the acceptor took %.1fs: it waited for the sleep" % took
    # The waiting calls were cut (never answered OK with nothing done).
    assert codes[1] != grpc.StatusCode.OK and codes[2] != grpc.StatusCode.OK, codes
    d.wait_log(r"calls and \d+ connections still open \d+ ms after the gRPC server shut "
               r"down; cancelling them")
    assert_acceptors_shut_down_cleanly(d)
