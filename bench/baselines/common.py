# common.py: what the Python baseline servers share: options, the generated
# crunch.v1 stubs (bench/run writes them into a scratch dir and passes it in
# --stubs), server options matching crunchd's limits, and logging.

import argparse
import os
import sys

import crunch_handlers as ch


def parse_args(desc, default_workers=None):
    ap = argparse.ArgumentParser(description=desc)
    ap.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    ap.add_argument("--workers", type=int, default=default_workers or os.cpu_count(),
                    help="worker processes (default: online CPUs)")
    ap.add_argument("--stubs", default=os.environ.get("CRUNCH_STUBS", ""),
                    help="directory holding crunch/v1/crunch_pb2*.py")
    a = ap.parse_args()
    if a.workers < 1:
        ap.error("--workers must be at least 1")
    if a.stubs:
        sys.path.insert(0, a.stubs)
    try:
        from crunch.v1 import crunch_pb2, crunch_pb2_grpc  # noqa: F401
    except ImportError as e:
        ap.error("cannot import the crunch.v1 stubs (%s): generate them with protoc "
                 "--python_out and grpc_python_plugin into a directory and pass it "
                 "with --stubs (bench/run does this)" % e)
    return a


def stubs():
    from crunch.v1 import crunch_pb2, crunch_pb2_grpc
    return crunch_pb2, crunch_pb2_grpc


# The same message limits as crunchd's defaults: room for a max_payload task,
# no limit on what is sent (a 4 MiB echo output plus the Result around it).
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", ch.MAX_RECEIVE),
    ("grpc.max_send_message_length", -1),
]


def log(name, msg):
    sys.stderr.write("%s[%d]: %s\n" % (name, os.getpid(), msg))
    sys.stderr.flush()
