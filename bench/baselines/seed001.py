#!/usr/bin/python3
# seed001.py: baseline 1 of bench/run, seed 001's design: one grpc.aio process
# takes every call and hands each task to N worker processes through a
# multiprocessing queue; a dispatch thread reads the results queue and routes
# each result back, by a sequence number, to the asyncio future (Run) or
# stream (RunStream) waiting for it.
#
# Done the way a competent team would: workers forked before gRPC starts,
# tasks as plain tuples (cheap to pickle), results handed to the event loop in
# batches (one call_soon_threadsafe per batch drained from the queue, not one
# per result), RunStream reading and writing concurrently with a bounded
# number of tasks outstanding.

import asyncio
import ctypes
import itertools
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import crunch_handlers as ch  # noqa: E402

STREAM_MAX_PENDING = 1024  # tasks of one RunStream in the workers at once


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(idx, task_q, result_q):
    """A worker: run tasks until None. A task is (seq, id, handler, payload,
    deadline_ns, enqueued_ns); a result (seq, code, output-or-error, worker,
    queued_us, run_us)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    get, put, now = task_q.get, result_q.put, time.monotonic_ns
    while True:
        t = get()
        if t is None:
            return
        seq, tid, handler, payload, deadline, enq = t
        start = now()
        if deadline and start > deadline:
            code, out = ch.DEADLINE_EXCEEDED, ch.expired_text(
                tid, handler, (start - enq) // 1000000).encode()
        else:
            code, out = ch.run(handler, payload)
        end = now()
        put((seq, code, out, idx, (start - enq) // 1000, (end - start) // 1000))


class Dispatcher:
    """Results queue -> callbacks on the event loop, by sequence number."""

    def __init__(self, loop, result_q):
        self.loop = loop
        self.result_q = result_q
        self.pending = {}
        self.seq = itertools.count(1)
        threading.Thread(target=self._thread, name="results", daemon=True).start()

    def _thread(self):
        get, get_nowait = self.result_q.get, self.result_q.get_nowait
        while True:
            batch = [get()]
            try:
                while len(batch) < 256:
                    batch.append(get_nowait())
            except queue.Empty:
                pass
            self.loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch):
        pop = self.pending.pop
        for r in batch:
            cb = pop(r[0], None)
            if cb is not None:
                cb(r)

    def register(self, cb):
        s = next(self.seq)
        self.pending[s] = cb
        return s


def deadline_ns(task, context):
    """The earlier of the call deadline and Task.timeout_ms, as monotonic ns."""
    now = time.monotonic_ns()
    dl = 0
    left = context.time_remaining() if context is not None else None
    if left is not None:
        dl = now + int(left * 1e9)
    if task.timeout_ms:
        t = now + task.timeout_ms * 1000000
        if dl == 0 or t < dl:
            dl = t
    return dl


def main():
    args = common.parse_args("seed 001: grpc.aio + multiprocessing queues")
    ctx = mp.get_context("fork")
    task_q, result_q = ctx.Queue(), ctx.Queue()
    # Fork the workers before gRPC exists in this process.
    procs = [ctx.Process(target=worker_main, args=(i, task_q, result_q), daemon=True)
             for i in range(args.workers)]
    for p in procs:
        p.start()

    import grpc
    pb, pb_grpc = common.stubs()
    codes = {c.value[0]: c for c in grpc.StatusCode}

    class Crunch(pb_grpc.CrunchServicer):
        def __init__(self, disp):
            self.d = disp

        async def Run(self, task, context):
            bad = ch.check(task.handler, len(task.payload))
            if bad:
                await context.abort(codes[bad[0]], bad[1])
            fut = asyncio.get_running_loop().create_future()

            def done(r):
                if not fut.done():
                    fut.set_result(r)
            seq = self.d.register(done)
            task_q.put((seq, task.id, task.handler, task.payload,
                        deadline_ns(task, context), time.monotonic_ns()))
            r = await fut
            if r[1] != 0:
                await context.abort(codes[r[1]], r[2].decode("utf-8", "replace"))
            return pb.Result(id=task.id, output=r[2], worker=r[3], queued_us=r[4],
                             run_us=r[5])

        async def RunStream(self, tasks, context):
            out = asyncio.Queue()
            room = asyncio.Semaphore(STREAM_MAX_PENDING)
            count = {"sent": 0}
            eof = object()

            def result_cb(tid):
                def cb(r):
                    room.release()
                    if r[1] == 0:
                        out.put_nowait(pb.Result(id=tid, output=r[2], worker=r[3],
                                                 queued_us=r[4], run_us=r[5]))
                    else:
                        out.put_nowait(pb.Result(id=tid, code=r[1],
                                                 error=r[2].decode("utf-8", "replace"),
                                                 worker=r[3], queued_us=r[4], run_us=r[5]))
                return cb

            async def reader():
                try:
                    async for t in tasks:
                        count["sent"] += 1
                        bad = ch.check(t.handler, len(t.payload))
                        if bad:
                            out.put_nowait(pb.Result(id=t.id, code=bad[0], error=bad[1]))
                            continue
                        await room.acquire()
                        seq = self.d.register(result_cb(t.id))
                        task_q.put((seq, t.id, t.handler, t.payload, deadline_ns(t, None),
                                    time.monotonic_ns()))
                finally:
                    out.put_nowait(eof)

            rt = asyncio.ensure_future(reader())
            written, reading = 0, True
            try:
                while reading or written < count["sent"]:
                    r = await out.get()
                    if r is eof:
                        reading = False
                        continue
                    yield r
                    written += 1
                await rt
            finally:
                rt.cancel()

    async def serve():
        loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=common.SERVER_OPTIONS)
        pb_grpc.add_CrunchServicer_to_server(Crunch(Dispatcher(loop, result_q)), server)
        if not server.add_insecure_port("127.0.0.1:%d" % args.port):
            common.log("seed001", "cannot listen on 127.0.0.1:%d" % args.port)
            sys.exit(1)
        await server.start()
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        common.log("seed001", "serving on 127.0.0.1:%d, %d workers" % (args.port, args.workers))
        await stop.wait()
        await server.stop(0)

    try:
        asyncio.run(serve())
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join(5)


if __name__ == "__main__":
    main()
