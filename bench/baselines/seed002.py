#!/usr/bin/python3
# seed002.py: baseline 2 of bench/run, seed 002's design: N Python processes
# forked before gRPC starts, each its own grpc.aio server on the same port
# (grpc.so_reuseport: the kernel spreads connections over them), each task
# run inline on the process's event loop. The parent only supervises: it
# forwards SIGTERM/SIGINT to the children and waits for them.

import asyncio
import ctypes
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import crunch_handlers as ch  # noqa: E402


def child(idx, port):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    import grpc
    pb, pb_grpc = common.stubs()
    codes = {c.value[0]: c for c in grpc.StatusCode}
    now = time.monotonic_ns

    def run(t):
        bad = ch.check(t.handler, len(t.payload))
        if bad:
            return pb.Result(id=t.id, code=bad[0], error=bad[1])
        start = now()
        code, out = ch.run(t.handler, t.payload)
        us = (now() - start) // 1000
        if code:
            return pb.Result(id=t.id, code=code, error=out.decode("utf-8", "replace"),
                             worker=idx, run_us=us)
        return pb.Result(id=t.id, output=out, worker=idx, run_us=us)

    class Crunch(pb_grpc.CrunchServicer):
        async def Run(self, task, context):
            r = run(task)
            if r.code:
                await context.abort(codes[r.code], r.error)
            return r

        async def RunStream(self, tasks, context):
            async for t in tasks:
                yield run(t)

    async def serve():
        loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=common.SERVER_OPTIONS + [("grpc.so_reuseport", 1)])
        pb_grpc.add_CrunchServicer_to_server(Crunch(), server)
        if not server.add_insecure_port("127.0.0.1:%d" % port):
            common.log("seed002", "cannot listen on 127.0.0.1:%d" % port)
            os._exit(1)
        await server.start()
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())
    os._exit(0)


def main():
    args = common.parse_args("seed 002: N grpc.aio processes on one SO_REUSEPORT port")
    kids = []
    for i in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                child(i, args.port)
            finally:
                os._exit(1)
        kids.append(pid)

    def forward(sig, _frame):
        for k in kids:
            try:
                os.kill(k, sig)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    common.log("seed002", "serving on 127.0.0.1:%d, %d processes" % (args.port, args.workers))
    status = 0
    for _ in kids:
        _, st = os.wait()
        if os.waitstatus_to_exitcode(st) not in (0, -signal.SIGTERM):
            status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
