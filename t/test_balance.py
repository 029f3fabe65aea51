# test_balance.py: connections. Several acceptors share the master's listening
# sockets fairly (DESIGN section 2): an acceptor holding more than its share of
# the connections leaves the next ones to its siblings. The channel settings of
# the configuration reach gRPC (max_concurrent_streams, max_connection_idle_ms,
# max_connection_age_ms).

import os
import queue

import grpc

from conftest import RPC_TIMEOUT, SCALE, call_status, pb, pb_grpc, wait_for


def established_by_pid(pids, port):
    """{pid: number of ESTABLISHED TCP sockets whose local port is `port`}."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            pass
    counts = {pid: 0 for pid in pids}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port \
                            and inode in inodes:
                        counts[inodes[inode]] += 1
        except OSError:
            pass
    return counts


def test_two_acceptors_share_20_connections(crunchd):
    d = crunchd(acceptors=2, workers=2)
    accs = d.acceptors()
    assert len(accs) == 2
    pids = list(accs.values())
    # The fixture's readiness probe holds a connection too; count from here.
    base = established_by_pid(pids, d.port)

    # A connection per channel: channels with the same arguments would share
    # one (gRPC's global subchannel pool). All 20 connect at once: a burst is
    # what one acceptor would otherwise swallow in a single accept round.
    chans = [d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(20)]
    ready = [grpc.channel_ready_future(ch) for ch in chans]
    for f in ready:
        f.result(timeout=RPC_TIMEOUT)
    for i, ch in enumerate(chans):
        r = pb_grpc.CrunchStub(ch).Run(pb.Task(id=i, handler="echo", payload=b"b"),
                                       timeout=RPC_TIMEOUT)
        assert r.output == b"b"

    def settled():
        c = established_by_pid(pids, d.port)
        return c if sum(c.values()) - sum(base.values()) == 20 else None
    counts = wait_for(settled, what="20 new connections held by the acceptors")
    new = {p: counts[p] - base[p] for p in pids}
    assert max(new.values()) <= 15, "unbalanced: %s" % new
    assert min(new.values()) >= 5, "unbalanced: %s" % new


def test_max_concurrent_streams_limits_a_connection(crunchd):
    d = crunchd(max_concurrent_streams=1)
    ch = d.channel(options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.CrunchStub(ch)
    q = queue.Queue()

    def gen():
        while True:
            t = q.get()
            if t is None:
                return
            yield t
    it = stub.RunStream(gen(), timeout=RPC_TIMEOUT)
    q.put(pb.Task(id=1, handler="echo", payload=b"x"))
    assert next(it).id == 1  # the one stream of this connection is open
    # A second call on the same connection must wait for a stream slot.
    code, _, _, _ = call_status(stub.Run, pb.Task(id=2, handler="echo", payload=b"y"),
                                timeout=1.0 * SCALE)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # Another connection is not limited by it.
    assert d.run("echo", "other", stub=d.stub()).output == b"other"
    q.put(None)
    assert list(it) == []
    assert stub.Run(pb.Task(id=3, handler="echo", payload=b"z"),
                    timeout=RPC_TIMEOUT).output == b"z"


def test_idle_and_old_connections_are_closed(crunchd):
    d = crunchd(max_connection_idle_ms=1000, max_connection_age_ms=60000)
    (apid,) = d.acceptors().values()
    stub = pb_grpc.CrunchStub(d.channel(options=[("grpc.use_local_subchannel_pool", 1)]))
    assert stub.Run(pb.Task(id=1, handler="echo", payload=b"x"),
                    timeout=RPC_TIMEOUT).output == b"x"
    # Every connection (this one and the fixture's readiness probe) goes
    # idle and is closed by the server after max_connection_idle_ms.
    wait_for(lambda: established_by_pid([apid], d.port)[apid] == 0,
             what="the idle connections to be closed")
    # The client reconnects by itself.
    assert stub.Run(pb.Task(id=2, handler="echo", payload=b"y"),
                    timeout=RPC_TIMEOUT).output == b"y"

    d2 = crunchd(max_connection_age_ms=1000, max_connection_age_grace_ms=0)
    (apid2,) = d2.acceptors().values()
    stub2 = pb_grpc.CrunchStub(d2.channel(options=[("grpc.use_local_subchannel_pool", 1)]))
    assert stub2.Run(pb.Task(id=1, handler="echo", payload=b"x"),
                     timeout=RPC_TIMEOUT).output == b"x"
    wait_for(lambda: established_by_pid([apid2], d2.port)[apid2] == 0,
             what="connections to be closed at max_connection_age_ms")
