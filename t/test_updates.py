# test_updates.py: Submit (fire and forget) and Updates (the shared updates
# feed): every result of a submitted task reaches exactly one subscriber, a
# full feed is a refusal counted in SubmitReply, subscribers that go away hand
# back what they held.

import threading

import grpc

from conftest import (RPC_TIMEOUT, SCALE, WAIT, call_status, pb, pb_grpc, region_idle,
                      stats, wait_for)


def wait_depth(d, n, what=None):
    """Until the updates feed holds n results (Stats.updates_depth)."""
    stub = d.stub()
    wait_for(lambda: stats(d, stub).updates_depth == n,
             what=what or "updates_depth == %d (now %d)" % (n, stats(d, stub).updates_depth))


def own_channel(d):
    # A connection of its own (channels with the same arguments share one).
    return d.channel(options=[("grpc.use_local_subchannel_pool", 1)])


def submit(stub, tasks, timeout=RPC_TIMEOUT):
    return stub.Submit(iter(tasks), timeout=timeout)


def test_submit_then_updates_delivers_each_result(crunchd):
    d = crunchd(workers=2)
    stub = d.stub()
    tasks = [pb.Task(id=i, handler="echo", payload=b"s%d" % i) for i in range(100)]
    tasks.append(pb.Task(id=1000, handler="prime", payload=b"abc"))  # fails in the worker
    reply = submit(stub, tasks)
    assert (reply.accepted, reply.rejected) == (101, 0)
    wait_depth(d, 101)
    got = list(stub.Updates(pb.UpdatesRequest(max_results=101), timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in got) == list(range(100)) + [1000]
    for r in got:
        if r.id == 1000:
            assert r.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert r.error != "" and r.output == b""
        else:
            assert (r.code, r.output, r.error) == (0, b"s%d" % r.id, "")
            assert r.worker in (0, 1)
    assert stats(d).updates_depth == 0
    wait_for(lambda: region_idle(d), what="the region back to idle")


def test_updates_waits_for_results_submitted_later(crunchd):
    d = crunchd(workers=1)
    stub = d.stub()
    out = []
    th = threading.Thread(target=lambda: out.extend(
        stub.Updates(pb.UpdatesRequest(max_results=3), timeout=RPC_TIMEOUT)))
    th.start()
    try:
        reply = submit(stub, [pb.Task(id=i, handler="sleep", payload=b"20") for i in range(3)])
        assert reply.accepted == 3
    finally:
        th.join(WAIT)
    assert sorted(r.id for r in out) == [0, 1, 2]


def test_submit_10000_two_subscribers_get_10000_distinct(crunchd):
    d = crunchd(workers=2)
    tasks = [pb.Task(id=i, handler="echo", payload=b"%d" % i) for i in range(10_000)]
    reply = submit(d.stub(), tasks, timeout=60 * SCALE)
    assert (reply.accepted, reply.rejected) == (10_000, 0)
    wait_depth(d, 10_000)

    results = [[], []]
    errors = []

    def subscribe(k):
        stub = pb_grpc.CrunchStub(own_channel(d))
        try:
            for r in stub.Updates(pb.UpdatesRequest(max_results=5000), timeout=60 * SCALE):
                results[k].append(r)
        except grpc.RpcError as e:
            errors.append(e)

    ths = [threading.Thread(target=subscribe, args=(k,)) for k in range(2)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(90 * SCALE)
    assert not errors, errors
    ids = [r.id for r in results[0]] + [r.id for r in results[1]]
    assert len(ids) == 10_000
    assert sorted(ids) == list(range(10_000)), "every result exactly once"
    assert len(results[0]) == 5000 and len(results[1]) == 5000
    for r in results[0] + results[1]:
        assert r.output == b"%d" % r.id
    assert stats(d).updates_depth == 0
    # Nothing left: a third subscriber gets nothing within its deadline.
    code, _, _, _ = call_status(lambda: list(d.stub().Updates(
        pb.UpdatesRequest(max_results=1), timeout=0.5 * SCALE)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_submit_beyond_updates_capacity_is_rejected(crunchd):
    d = crunchd(workers=2, updates_capacity=100)
    stub = d.stub()
    tasks = [pb.Task(id=i, handler="echo", payload=b"%d" % i) for i in range(150)]
    reply = submit(stub, tasks)
    assert (reply.accepted, reply.rejected) == (100, 50)
    d.wait_log(r"\[warn\].*Submit: task \d+ rejected: updates feed full "
               r"\(updates_capacity 100\); subscribe with Updates or raise updates_capacity")
    # Invalid tasks are rejected too, and said so.
    reply = submit(stub, [pb.Task(id=900, handler="nope", payload=b"x")])
    assert (reply.accepted, reply.rejected) == (0, 1)
    wait_depth(d, 100)
    got = list(stub.Updates(pb.UpdatesRequest(max_results=100), timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in got) == list(range(100))
    # Room again.
    reply = submit(stub, tasks[100:])
    assert (reply.accepted, reply.rejected) == (50, 0)
    got = list(stub.Updates(pb.UpdatesRequest(max_results=50), timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in got) == list(range(100, 150))


def test_submit_waits_when_the_queue_is_full_never_rejects(crunchd):
    # 2 descriptors: the region is full almost all the time; Submit must wait
    # (stop reading), not reject.
    d = crunchd(workers=1, queue_capacity=2, queue_wait_ms=0)
    tasks = [pb.Task(id=i, handler="sleep", payload=b"2") for i in range(100)]
    reply = submit(d.stub(), tasks, timeout=60 * SCALE)
    assert (reply.accepted, reply.rejected) == (100, 0)
    wait_depth(d, 100)


def test_cancelled_subscriber_hands_back_what_it_did_not_send(crunchd):
    # A result counts as delivered once gRPC reports its write done (there is
    # no acknowledgement in the protocol). A subscriber that cancels loses
    # what was on the wire to it already; the one write still in flight when
    # it cancelled goes back to the feed (it may have arrived all the same:
    # at least once, never lost by the server). The server's own count of
    # results sent (access log, tasks=) plus the feed depth is every result.
    # The feed holds exactly the 300, so a stranded entry (neither released
    # nor back in the feed) shows as a refusal when the feed is filled again.
    n = 300
    d = crunchd(workers=2, access_log="access.log", updates_capacity=n)
    stub = d.stub()
    tasks = [pb.Task(id=i, handler="echo", payload=b"x") for i in range(n)]
    reply = submit(stub, tasks)
    assert (reply.accepted, reply.rejected) == (n, 0)
    wait_depth(d, n)
    first = []
    it = pb_grpc.CrunchStub(own_channel(d)).Updates(pb.UpdatesRequest(), timeout=RPC_TIMEOUT)
    for r in it:
        first.append(r.id)
        if len(first) == 10:
            break
    it.cancel()
    log = d.prefix + "/access.log"

    def sent_by_server(k):
        """tasks= of the k-th Updates access line (written once every write
        of that call has completed), None until it is there."""
        with open(log) as f:
            lines = [line for line in f if " /crunch.v1.Crunch/Updates " in line]
        if len(lines) < k:
            return None
        return int(lines[k - 1].split("tasks=")[1].split()[0])
    wait_for(lambda: sent_by_server(1) is not None,
             what="the access line of the cancelled Updates call")
    sent = sent_by_server(1)
    # The client read 10; all but the write in flight at the cancel were
    # counted. Writes gRPC took before the cancel reached the server count
    # too (on a quick server: all 300, the client dropping what it had not
    # read).
    assert len(first) - 1 <= sent <= n
    wait_depth(d, n - sent)
    rest = []
    if sent < n:  # (max_results=0 would mean "unlimited")
        rest = [r.id for r in stub.Updates(pb.UpdatesRequest(max_results=n - sent),
                                           timeout=RPC_TIMEOUT)]
        wait_for(lambda: sent_by_server(2) is not None,
                 what="the access line of the second Updates call")
        assert sent_by_server(2) == n - sent
    assert len(rest) == n - sent and len(set(rest)) == len(rest)
    assert set(rest) <= set(range(n))
    assert len(set(first) & set(rest)) <= 1, "only the write in flight may come again"
    # What the first subscriber read and did not get back was counted sent.
    assert len(set(first) - set(rest)) <= sent
    assert stats(d).updates_depth == 0
    # Nothing left, nothing stranded: a subscriber gets nothing, and the feed
    # takes n results again.
    code, _, _, _ = call_status(lambda: list(stub.Updates(
        pb.UpdatesRequest(max_results=1), timeout=0.5 * SCALE)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = submit(stub, tasks)
    assert (reply.accepted, reply.rejected) == (n, 0)


def test_bad_updates_request_is_invalid_argument(daemon):
    ch = daemon.channel()
    call = ch.unary_stream("/crunch.v1.Crunch/Updates")
    code, details, _, _ = call_status(lambda: list(call(b"\xff\xff", timeout=RPC_TIMEOUT)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


def test_malformed_submit_message_is_invalid_argument(daemon):
    ch = daemon.channel()
    call = ch.stream_unary("/crunch.v1.Crunch/Submit")
    good = pb.Task(id=1, handler="echo", payload=b"ok").SerializeToString()
    code, details, _, _ = call_status(lambda: call(iter([good, b"\xff\xff\xff"]),
                                                   timeout=RPC_TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    # The good one was accepted before the bad one ended the call.
    got = list(daemon.stub().Updates(pb.UpdatesRequest(max_results=1), timeout=RPC_TIMEOUT))
    assert [r.id for r in got] == [1]
