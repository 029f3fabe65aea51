#!/usr/bin/python3
# seed003.py: baseline 3 of bench/run, seed 003's advice: one grpc.aio
# process, each task sent to a concurrent.futures.ProcessPoolExecutor of N
# processes with loop.run_in_executor and awaited. The pool's processes are
# forked, and all of them started, before gRPC exists in this process.

import asyncio
import concurrent.futures
import multiprocessing as mp
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import crunch_handlers as ch  # noqa: E402

STREAM_MAX_PENDING = 1024
_index = None


def _init(counter):
    global _index
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with counter.get_lock():
        _index = counter.value
        counter.value += 1


def _started(delay):
    time.sleep(delay)
    return os.getpid()


def work(tid, handler, payload, deadline, enq):
    """In a pool process: (code, output-or-error, worker, queued_us, run_us)."""
    start = time.monotonic_ns()
    if deadline and start > deadline:
        return (ch.DEADLINE_EXCEEDED,
                ch.expired_text(tid, handler, (start - enq) // 1000000).encode(),
                _index, (start - enq) // 1000, 0)
    code, out = ch.run(handler, payload)
    return code, out, _index, (start - enq) // 1000, (time.monotonic_ns() - start) // 1000


def deadline_ns(task, context):
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
    args = common.parse_args("seed 003: grpc.aio + ProcessPoolExecutor")
    ctx = mp.get_context("fork")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=args.workers, mp_context=ctx, initializer=_init,
        initargs=(ctx.Value("i", 0),))
    # The pool forks on demand, one process per submit while none is idle:
    # submit N at once so that all N exist before gRPC starts.
    pids = {f.result() for f in [pool.submit(_started, 0.2) for _ in range(args.workers)]}
    if len(pids) != args.workers:
        common.log("seed003", "only %d of %d pool processes started" % (len(pids), args.workers))

    import grpc
    pb, pb_grpc = common.stubs()
    codes = {c.value[0]: c for c in grpc.StatusCode}

    def result(tid, r):
        if r[0] == 0:
            return pb.Result(id=tid, output=r[1], worker=r[2], queued_us=r[3], run_us=r[4])
        return pb.Result(id=tid, code=r[0], error=r[1].decode("utf-8", "replace"),
                         worker=r[2], queued_us=r[3], run_us=r[4])

    class Crunch(pb_grpc.CrunchServicer):
        async def Run(self, t, context):
            bad = ch.check(t.handler, len(t.payload))
            if bad:
                await context.abort(codes[bad[0]], bad[1])
            r = await asyncio.get_running_loop().run_in_executor(
                pool, work, t.id, t.handler, t.payload, deadline_ns(t, context),
                time.monotonic_ns())
            if r[0]:
                await context.abort(codes[r[0]], r[1].decode("utf-8", "replace"))
            return result(t.id, r)

        async def RunStream(self, tasks, context):
            loop = asyncio.get_running_loop()
            out = asyncio.Queue()
            room = asyncio.Semaphore(STREAM_MAX_PENDING)
            count = {"sent": 0}
            eof = object()

            def done(tid):
                def cb(f):
                    room.release()
                    out.put_nowait(result(tid, f.result()))
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
                        f = loop.run_in_executor(pool, work, t.id, t.handler, t.payload,
                                                 deadline_ns(t, None), time.monotonic_ns())
                        f.add_done_callback(done(t.id))
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
        pb_grpc.add_CrunchServicer_to_server(Crunch(), server)
        if not server.add_insecure_port("127.0.0.1:%d" % args.port):
            common.log("seed003", "cannot listen on 127.0.0.1:%d" % args.port)
            sys.exit(1)
        await server.start()
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        common.log("seed003", "serving on 127.0.0.1:%d, %d pool processes"
                   % (args.port, args.workers))
        await stop.wait()
        await server.stop(0)

    try:
        asyncio.run(serve())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main()
