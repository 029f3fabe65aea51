#!/usr/bin/python3
"""client.py: submit a batch of tasks to crunchd and follow their results.

The pattern of crunchd's Submit / Updates pair: send every task on one Submit
call (fire and forget), then read the Updates feed until a result has come
back for every id that was accepted, and print them, in id order:

    ID CODE OUTPUT-or-ERROR

Usage (see README.md beside this file):

    client.py [-a ADDR] [--stubs DIR] [--timeout S] [--first-id N]
              [HANDLER PAYLOAD...]

With no HANDLER the batch is the seed's: five numbers for `prime` and four
pairs for `gcd`. A PAYLOAD of `-` reads one payload per line from standard
input. The exit status is 0 when every task came back with code 0, 1 when
some task failed, 2 on a call error (its gRPC status is printed).

Needs Debian's python3-grpcio and python3-protobuf, and stubs generated from
proto/crunch/v1/crunch.proto: from `make python-stubs` (t/gen in the build
tree, given with --stubs or on PYTHONPATH), or generated here at run time
with protoc and grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc)
when the .proto is found (--proto, or ../../proto from this file).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

SEED_BATCH = [
    ("prime", b"112272535095293"),
    ("prime", b"112582705942171"),
    ("prime", b"115280095190773"),
    ("prime", b"115797848077099"),
    ("prime", b"1099726899285419"),
    ("gcd", b"1963309 2265973"),
    ("gcd", b"2030677 3814172"),
    ("gcd", b"1551645 2229620"),
    ("gcd", b"2039045 2020802"),
]


def load_stubs(stubs_dir, proto_dir):
    """Import crunch_pb2 and crunch_pb2_grpc: from stubs_dir or sys.path, else
    generated into a temporary directory from proto_dir."""
    if stubs_dir:
        sys.path.insert(0, stubs_dir)
    try:
        from crunch.v1 import crunch_pb2, crunch_pb2_grpc
        return crunch_pb2, crunch_pb2_grpc
    except ImportError:
        if stubs_dir:
            raise SystemExit("client.py: no crunch/v1/crunch_pb2_grpc.py under %s "
                             "(run `make python-stubs`)" % stubs_dir)
    proto = os.path.join(proto_dir, "crunch", "v1", "crunch.proto")
    if not os.path.exists(proto):
        raise SystemExit("client.py: no stubs on sys.path and no %s: give --stubs DIR "
                         "(`make python-stubs` writes t/gen) or --proto DIR" % proto)
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    gen = tempfile.mkdtemp(prefix="crunch-stubs-")
    cmd = ["protoc", "--proto_path=" + proto_dir, "--python_out=" + gen,
           "--grpc_python_out=" + gen, "--plugin=protoc-gen-grpc_python=" + plugin,
           "crunch/v1/crunch.proto"]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        raise SystemExit("client.py: cannot run protoc (%s): install protobuf-compiler "
                         "and protobuf-compiler-grpc, or give --stubs DIR" % e)
    if r.returncode != 0:
        raise SystemExit("client.py: %s failed:\n%s" % (" ".join(cmd),
                                                        r.stdout.decode(errors="replace")))
    for d in ("crunch", os.path.join("crunch", "v1")):
        open(os.path.join(gen, d, "__init__.py"), "a").close()
    sys.path.insert(0, gen)
    from crunch.v1 import crunch_pb2, crunch_pb2_grpc
    shutil.rmtree(gen, ignore_errors=True)  # imported: the files are no longer needed
    return crunch_pb2, crunch_pb2_grpc


def main():
    ap = argparse.ArgumentParser(description="Submit a batch to crunchd, follow Updates.")
    ap.add_argument("-a", "--address", default=os.environ.get("CRUNCH_ADDR", "127.0.0.1:50051"),
                    help="host:port or unix:/path (default: $CRUNCH_ADDR or 127.0.0.1:50051)")
    ap.add_argument("--stubs", help="directory holding crunch/v1/crunch_pb2*.py")
    ap.add_argument("--proto", default=os.path.join(HERE, "..", "..", "proto"),
                    help="directory holding crunch/v1/crunch.proto (to generate stubs)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="deadline of each call, in seconds (default 60)")
    ap.add_argument("--first-id", type=int, default=1, help="id of the first task (default 1)")
    ap.add_argument("handler", nargs="?", help="handler of every task (default: the seed batch)")
    ap.add_argument("payloads", nargs="*", help="one task per payload; - reads lines from stdin")
    args = ap.parse_args()

    pb, pb_grpc = load_stubs(args.stubs, os.path.abspath(args.proto))
    import grpc

    if args.handler is None:
        batch = SEED_BATCH
    else:
        batch = []
        for p in args.payloads or ["-"]:
            if p == "-":
                batch += [(args.handler, line.rstrip("\n").encode()) for line in sys.stdin]
            else:
                batch.append((args.handler, p.encode()))
    tasks = {args.first_id + i: t for i, t in enumerate(batch)}

    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.CrunchStub(channel)
        try:
            reply = stub.Submit(iter([pb.Task(id=i, handler=h, payload=p)
                                      for i, (h, p) in tasks.items()]),
                                timeout=args.timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            print("Submit: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
            return 2
        print("submitted %d tasks: %d accepted, %d rejected"
              % (len(tasks), reply.accepted, reply.rejected), file=sys.stderr)

        # Results of every submitted task on this server go to exactly one
        # Updates subscriber, so results of other clients' tasks may come too:
        # keep ours. A result may come twice (a subscriber that went away with
        # a write in flight): keep the first. Rejected tasks never come back,
        # and Submit says how many, not which: stop at `accepted` results.
        results = {}
        call = stub.Updates(pb.UpdatesRequest(max_results=0), timeout=args.timeout)
        try:
            if reply.accepted:
                for r in call:
                    if r.id in tasks and r.id not in results:
                        results[r.id] = r
                        if len(results) == reply.accepted:
                            break
        except grpc.RpcError as e:
            print("Updates: %s: %s (%d of %d results)"
                  % (e.code().name, e.details(), len(results), reply.accepted),
                  file=sys.stderr)
            return 2
        finally:
            call.cancel()

    failed = 0
    for i in sorted(results):
        r = results[i]
        if r.code == 0:
            print("%d %d %s" % (r.id, r.code, r.output.decode(errors="replace")))
        else:
            failed += 1
            print("%d %d %s" % (r.id, r.code, r.error))
    print("%d results, %d failed, %d rejected" % (len(results), failed, reply.rejected),
          file=sys.stderr)
    return 1 if failed or reply.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
