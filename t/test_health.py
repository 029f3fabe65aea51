# test_health.py: grpc.health.v1.Health, Check and Watch, including
# NOT_SERVING when the daemon drains (SIGQUIT), with stubs generated at test
# time from Debian's grpc-proto (python3-grpcio ships no grpc_health).

import atexit
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

from conftest import RPC_TIMEOUT, SCALE, WAIT, wait_for

GRPC_PROTO_DIR = os.environ.get("CRUNCHD_GRPC_PROTO_DIR") or "/usr/share/grpc-proto"
# gRPC's own .proto files the tests need stubs for. The stubs are generated
# under the package below instead of `grpc`, which is grpcio's own (an import
# of `grpc.health.v1` would look inside grpcio).
GRPC_PROTOS = ("grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto",
               "grpc/reflection/v1alpha/reflection.proto")
STUB_ROOT = "crunchd_t_grpc"
_stub_dir = []


def _generate_grpc_stubs():
    """Generate the stubs of every GRPC_PROTOS file, once per process, into a
    temp dir put on sys.path."""
    if _stub_dir:
        return
    for rel in GRPC_PROTOS:
        if not os.path.exists(os.path.join(GRPC_PROTO_DIR, rel)):
            pytest.skip("%s/%s missing: install grpc-proto" % (GRPC_PROTO_DIR, rel),
                        allow_module_level=True)
    gen = tempfile.mkdtemp(prefix="crunchd-pygen-")
    atexit.register(shutil.rmtree, gen, True)
    subs = []
    for rel in GRPC_PROTOS:
        sub = os.path.join(STUB_ROOT, rel.split("/", 1)[1])  # crunchd_t_grpc/health/v1/...
        os.makedirs(os.path.dirname(os.path.join(gen, sub)), exist_ok=True)
        shutil.copy(os.path.join(GRPC_PROTO_DIR, rel), os.path.join(gen, sub))
        subs.append(sub)
        d = gen
        for part in sub.split("/")[:-1]:
            d = os.path.join(d, part)
            open(os.path.join(d, "__init__.py"), "a").close()
    cmd = ["protoc", "-I" + gen, "--python_out=" + gen, "--grpc_python_out=" + gen,
           "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + subs
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("cannot generate Python stubs: %s\n%s"
                           % (" ".join(cmd), r.stdout.decode(errors="replace")))
    sys.path.insert(0, gen)
    _stub_dir.append(gen)


def load_grpc_stubs(rel):
    """(pb2, pb2_grpc) modules of gRPC's own rel, one of GRPC_PROTOS."""
    assert rel in GRPC_PROTOS, rel
    _generate_grpc_stubs()
    mod = STUB_ROOT + "." + rel.split("/", 1)[1][:-len(".proto")].replace("/", ".")
    return importlib.import_module(mod + "_pb2"), importlib.import_module(mod + "_pb2_grpc")


hpb, hpb_grpc = load_grpc_stubs("grpc/health/v1/health.proto")
SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = hpb.HealthCheckResponse.SERVICE_UNKNOWN


def health(d):
    return hpb_grpc.HealthStub(d.channel())


def check(stub, service):
    return stub.Check(hpb.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT).status


def test_check_known_services_serving(daemon):
    stub = health(daemon)
    assert check(stub, "") == SERVING
    assert check(stub, "crunch.v1.Crunch") == SERVING


def test_check_unknown_service_not_found(daemon):
    stub = health(daemon)
    for name in ("nope", "crunch.v1.Crunch.Run", "grpc.health.v1.Health", "x" * 5000):
        with pytest.raises(grpc.RpcError) as ei:
            check(stub, name)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND, name
    # The service stays usable after refusals.
    assert check(stub, "") == SERVING


def test_check_many_in_parallel(daemon):
    """More concurrent Checks than requests kept posted: all answered."""
    stub = health(daemon)
    futs = [stub.Check.future(hpb.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
            for _ in range(100)]
    assert all(f.result().status == SERVING for f in futs)


def test_check_malformed_request(daemon):
    call = daemon.channel().unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as ei:
        call(b"\x0a\x09ab", timeout=RPC_TIMEOUT)  # field 1 claims 9 bytes, has 2
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_sends_current_status_and_stays_open(daemon):
    stub = health(daemon)
    # A short deadline: the stream must still be open when it expires.
    w = stub.Watch(hpb.HealthCheckRequest(service="crunch.v1.Crunch"), timeout=1.5 * SCALE)
    assert next(w).status == SERVING
    with pytest.raises(grpc.RpcError) as ei:
        next(w)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_watch_unknown_service(daemon):
    stub = health(daemon)
    w = stub.Watch(hpb.HealthCheckRequest(service="no.such.Service"), timeout=1.5 * SCALE)
    assert next(w).status == SERVICE_UNKNOWN
    with pytest.raises(grpc.RpcError) as ei:
        next(w)  # no more messages, and no end: the stream stays open
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# A drain serves the open connections until they age out; these tests keep
# a connection open on purpose, so they cap the drain instead: after
# shutdown_timeout_ms the acceptor shuts down and the stop ends the watches.
DRAIN = {"shutdown_timeout_ms": 2000}


def test_watch_cancelled_by_client(crunchd):
    daemon = crunchd(**DRAIN)
    stub = health(daemon)
    ws = [stub.Watch(hpb.HealthCheckRequest(service=""), timeout=WAIT) for _ in range(10)]
    for w in ws:
        assert next(w).status == SERVING
    for w in ws:
        w.cancel()
    # Still serving, and a stop right after is prompt (nothing left open).
    assert check(stub, "") == SERVING
    assert daemon.stop(signal.SIGQUIT, timeout=WAIT) == 0


def test_watch_reports_not_serving_on_drain(crunchd):
    """SIGQUIT: every Watch gets NOT_SERVING as the drain begins and stays
    open while the acceptor drains; when it shuts down the watches end with
    UNAVAILABLE (this acceptor is going away) and do not hold its exit."""
    daemon = crunchd(**DRAIN)
    stub = health(daemon)
    watches = {name: stub.Watch(hpb.HealthCheckRequest(service=name), timeout=WAIT)
               for name in ("", "crunch.v1.Crunch", "unknown.Service")}
    for name, w in watches.items():
        assert next(w).status == (SERVICE_UNKNOWN if name == "unknown.Service" else SERVING)

    t0 = time.monotonic()
    daemon.send_signal(signal.SIGQUIT)

    for name, w in watches.items():
        got = []
        with pytest.raises(grpc.RpcError) as ei:
            for m in w:
                got.append(m.status)
        if name == "unknown.Service":
            assert got == [], name
        else:
            assert got == [NOT_SERVING], (name, got)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, (name, ei.value)
    # The watches did not hold the stop: they ended, and the master exited,
    # soon after the drain's cap (and long before the acceptor would cancel
    # the calls still open).
    assert daemon.proc.wait(WAIT) == 0
    assert time.monotonic() - t0 < 2.0 + 6.0 * SCALE


def test_check_not_serving_while_draining(crunchd):
    """While the acceptor drains, its open connections are still served:
    Check answers NOT_SERVING there, for both known services; Run still works."""
    daemon = crunchd(shutdown_timeout_ms=int(4000 * SCALE))
    stub = health(daemon)
    assert check(stub, "") == SERVING
    daemon.send_signal(signal.SIGQUIT)
    wait_for(lambda: check(stub, "") == NOT_SERVING, what="Check to say NOT_SERVING")
    assert check(stub, "crunch.v1.Crunch") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as ei:
        check(stub, "nope")
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert daemon.run("echo", "still here").output == b"still here"
    assert daemon.proc.wait(WAIT) == 0
