# test_reflection.py: server reflection, grpc.reflection.v1 and v1alpha,
# answered from the descriptor set embedded at build time; and a generic
# client that calls Run with nothing but what reflection returned.

import queue
import signal
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from conftest import RPC_TIMEOUT, SCALE, WAIT, wait_for
from test_health import hpb, hpb_grpc, load_grpc_stubs

r1, r1_grpc = load_grpc_stubs("grpc/reflection/v1/reflection.proto")
ra, ra_grpc = load_grpc_stubs("grpc/reflection/v1alpha/reflection.proto")
VERSIONS = {"v1": (r1, r1_grpc), "v1alpha": (ra, ra_grpc)}

SERVICES = {"crunch.v1.Crunch", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"}
FILES = {"crunch/v1/crunch.proto", "grpc/health/v1/health.proto",
         "grpc/reflection/v1/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"}
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]


def ask(d, version, *reqs, timeout=RPC_TIMEOUT):
    """Send reqs on one ServerReflectionInfo stream; return the responses."""
    pb, pb_grpc = VERSIONS[version]
    stub = pb_grpc.ServerReflectionStub(d.channel())
    return list(stub.ServerReflectionInfo(iter(reqs), timeout=timeout))


def req(version, **kw):
    return VERSIONS[version][0].ServerReflectionRequest(**kw)


def files_of(resp):
    assert resp.WhichOneof("message_response") == "file_descriptor_response", resp
    return [descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in resp.file_descriptor_response.file_descriptor_proto]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_list_services(daemon, version):
    q = req(version, host="example.test", list_services="*")
    (resp,) = ask(daemon, version, q)
    assert resp.valid_host == "example.test"
    assert resp.original_request == q
    names = [s.name for s in resp.list_services_response.service]
    assert set(names) == SERVICES and len(names) == len(SERVICES)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_file_containing_symbol(daemon, version):
    cases = {
        "crunch.v1.Crunch": "crunch/v1/crunch.proto",            # service
        "crunch.v1.Crunch.Run": "crunch/v1/crunch.proto",        # method
        "crunch.v1.Task": "crunch/v1/crunch.proto",              # message
        "crunch.v1.StatsReply.Process": "crunch/v1/crunch.proto",  # nested message
        "crunch.v1.Task.handler": "crunch/v1/crunch.proto",      # field
        "grpc.health.v1.Health": "grpc/health/v1/health.proto",
        "grpc.health.v1.Health.Watch": "grpc/health/v1/health.proto",
        "grpc.health.v1.HealthCheckResponse.ServingStatus": "grpc/health/v1/health.proto",
        "grpc.health.v1.HealthCheckResponse.SERVING": "grpc/health/v1/health.proto",
        "grpc.reflection.v1.ServerReflection": "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo":
            "grpc/reflection/v1alpha/reflection.proto",
        "grpc.reflection.v1alpha.ErrorResponse": "grpc/reflection/v1alpha/reflection.proto",
    }
    reqs = [req(version, file_containing_symbol=s) for s in cases]
    resps = ask(daemon, version, *reqs)
    assert len(resps) == len(reqs)
    for (sym, want), q, resp in zip(cases.items(), reqs, resps):
        assert resp.original_request == q
        files = files_of(resp)
        assert files[0].name == want, sym
        # Every dependency the file names came along (none here, but no
        # duplicates either).
        assert len(set(f.name for f in files)) == len(files)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_file_by_filename(daemon, version):
    resps = ask(daemon, version, *[req(version, file_by_filename=f) for f in sorted(FILES)])
    for name, resp in zip(sorted(FILES), resps):
        fd = files_of(resp)[0]
        assert fd.name == name
    crunch = files_of(resps[0])[0]
    assert crunch.package == "crunch.v1"
    svc = {s.name: s for s in crunch.service}["Crunch"]
    methods = {m.name: m for m in svc.method}
    assert set(methods) == {"Run", "RunStream", "Submit", "Updates", "Stats"}
    assert (methods["RunStream"].client_streaming, methods["RunStream"].server_streaming) == (True, True)
    assert (methods["Updates"].client_streaming, methods["Updates"].server_streaming) == (False, True)
    assert methods["Stats"].output_type == ".crunch.v1.StatsReply"
    # Source info is embedded: tools can show the .proto's comments.
    comments = " ".join(loc.leading_comments + loc.trailing_comments
                        for loc in crunch.source_code_info.location)
    assert "The generation now serving" in comments


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_not_found_and_unsupported(daemon, version):
    pb = VERSIONS[version][0]
    reqs = [
        req(version, file_containing_symbol="crunch.v1.NoSuchThing"),
        req(version, file_containing_symbol=".crunch.v1.Task"),  # no leading dot
        req(version, file_by_filename="crunch.proto"),
        req(version, file_containing_extension=pb.ExtensionRequest(
            containing_type="crunch.v1.Task", extension_number=100)),
        req(version, all_extension_numbers_of_type="crunch.v1.Nope"),
        req(version, all_extension_numbers_of_type="crunch.v1.Task"),
        req(version, host="h"),  # no request kind at all
        req(version, file_containing_symbol="crunch.v1.Task"),  # the stream goes on
    ]
    resps = ask(daemon, version, *reqs)
    assert len(resps) == len(reqs)
    for q, resp in zip(reqs[:5], resps[:5]):
        assert resp.original_request == q
        assert resp.WhichOneof("message_response") == "error_response", resp
        assert resp.error_response.error_code == NOT_FOUND, resp
        assert resp.error_response.error_message
    ext = resps[5]
    assert ext.WhichOneof("message_response") == "all_extension_numbers_response"
    assert ext.all_extension_numbers_response.base_type_name == "crunch.v1.Task"
    assert list(ext.all_extension_numbers_response.extension_number) == []
    other = resps[6]
    assert other.valid_host == "h"
    assert other.WhichOneof("message_response") == "error_response"
    assert other.error_response.error_code == UNIMPLEMENTED
    assert files_of(resps[7])[0].name == "crunch/v1/crunch.proto"


def test_malformed_request_ends_stream(daemon):
    call = daemon.channel().stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as ei:
        list(call(iter([b"\x1a\x09ab"]), timeout=RPC_TIMEOUT))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_long_bidi_stream(daemon):
    """Many requests on one stream: one response each, in order."""
    n = 200
    reqs = [req("v1", host=str(i), list_services="") if i % 2 else
            req("v1", host=str(i), file_containing_symbol="crunch.v1.Result")
            for i in range(n)]
    resps = ask(daemon, "v1", *reqs, timeout=WAIT)
    assert [r.valid_host for r in resps] == [str(i) for i in range(n)]


def dynamic_pool(d, version, symbol):
    """A descriptor pool filled from reflection alone: the file declaring
    symbol and its dependencies, added dependencies first."""
    (resp,) = ask(d, version, req(version, file_containing_symbol=symbol))
    todo = {f.name: f for f in files_of(resp)}
    pool = descriptor_pool.DescriptorPool()
    added = set()
    while todo:
        ready = [f for f in todo.values() if all(dep in added for dep in f.dependency)]
        assert ready, "dependencies missing from the reflection answer: %s" % list(todo)
        for f in ready:
            pool.Add(f)
            added.add(f.name)
            del todo[f.name]
    return pool


def message_class(pool, name):
    desc = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_generic_client_calls_run(daemon, version):
    """What grpcurl does: find the service through reflection, build the
    message types from the returned descriptors, call Run. No crunch stubs."""
    (listing,) = ask(daemon, version, req(version, list_services=""))
    assert "crunch.v1.Crunch" in [s.name for s in listing.list_services_response.service]

    pool = dynamic_pool(daemon, version, "crunch.v1.Crunch")
    svc = pool.FindServiceByName("crunch.v1.Crunch")
    run = svc.methods_by_name["Run"]
    Task = message_class(pool, run.input_type.full_name)
    Result = message_class(pool, run.output_type.full_name)
    assert Task.DESCRIPTOR.full_name == "crunch.v1.Task"

    call = daemon.channel().unary_unary("/%s/%s" % (svc.full_name, run.name),
                                        request_serializer=Task.SerializeToString,
                                        response_deserializer=Result.FromString)
    res = call(Task(id=4242, handler="echo", payload=b"reflected \x00\xff"),
               timeout=RPC_TIMEOUT)
    assert res.id == 4242
    assert res.code == 0
    assert res.output == b"reflected \x00\xff"

    # The same way to Stats, whose reply has nested messages.
    stats = svc.methods_by_name["Stats"]
    call = daemon.channel().unary_unary(
        "/%s/%s" % (svc.full_name, stats.name),
        request_serializer=message_class(pool, stats.input_type.full_name).SerializeToString,
        response_deserializer=message_class(pool, stats.output_type.full_name).FromString)
    reply = call(message_class(pool, stats.input_type.full_name)(), timeout=RPC_TIMEOUT)
    assert reply.queue.capacity > 0


def test_open_stream_served_while_draining(crunchd):
    """A reflection stream left open keeps being served while the acceptor
    drains, and ends (UNAVAILABLE) when it shuts down (here at the drain's
    cap, shutdown_timeout_ms), instead of holding the stop until the calls
    are cancelled."""
    daemon = crunchd(shutdown_timeout_ms=int(3000 * SCALE))
    stub = r1_grpc.ServerReflectionStub(daemon.channel())
    requests = queue.Queue()

    def feed():
        while True:
            r = requests.get()
            if r is None:
                return
            yield r

    stream = stub.ServerReflectionInfo(feed(), timeout=WAIT)
    try:
        requests.put(req("v1", list_services=""))
        assert next(stream).WhichOneof("message_response") == "list_services_response"
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGQUIT)
        hstub = hpb_grpc.HealthStub(daemon.channel())
        wait_for(lambda: hstub.Check(hpb.HealthCheckRequest(), timeout=RPC_TIMEOUT).status
                 == hpb.HealthCheckResponse.NOT_SERVING, what="the drain to begin")
        requests.put(req("v1", file_containing_symbol="crunch.v1.Task"))
        assert files_of(next(stream))[0].name == "crunch/v1/crunch.proto"
        with pytest.raises(grpc.RpcError) as ei:
            next(stream)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert daemon.proc.wait(WAIT) == 0
        assert time.monotonic() - t0 < 3.0 * SCALE + 6.0
    finally:
        requests.put(None)
