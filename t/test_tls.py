# test_tls.py: TLS listeners (bound by gRPC inside each acceptor, with
# SO_REUSEPORT: DESIGN section 2) and mutual TLS (verify_client). Certificates
# are made with openssl at test time.

import os
import shutil
import socket
import subprocess

import grpc
import pytest

from conftest import RPC_TIMEOUT, SCALE, call_status, free_port, pb, pb_grpc, wait_for

# The certificates are made with the openssl command (Debian: openssl). A
# missing tool fails these tests rather than skipping them: a skip would pass.
if shutil.which("openssl") is None:
    raise RuntimeError("t/test_tls.py needs the openssl command: apt-get install openssl")


def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, "openssl %s:\n%s" % (" ".join(args), r.stdout.decode())


def _ca(dir_, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
             "-subj", "/CN=crunchd test %s" % name, cwd=dir_)


def _leaf(dir_, name, ca, ext):
    with open(os.path.join(dir_, name + ".ext"), "w") as f:
        f.write(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name,
             cwd=dir_)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
             "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext",
             cwd=dir_)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA, a server certificate for 127.0.0.1/localhost, a client certificate
    from the same CA, and one from a CA the server does not trust."""
    d = str(tmp_path_factory.mktemp("pki"))
    _ca(d, "ca")
    _ca(d, "rogue")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                             "extendedKeyUsage=serverAuth\n")
    _leaf(d, "client1", "ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "intruder", "rogue", "extendedKeyUsage=clientAuth\n")

    def read(name):
        with open(os.path.join(d, name), "rb") as f:
            return f.read()
    files = {n: os.path.join(d, n) for n in os.listdir(d)}
    files["read"] = read
    return files


def tls_daemon(crunchd, pki, verify_client=False, **settings):
    """A crunchd with a plain listener and a TLS one; returns (d, tls_target)."""
    tls_port = free_port()
    tls = 'cert = "%s"; key = "%s";' % (pki["server.pem"], pki["server.key"])
    if verify_client:
        tls += ' client_ca = "%s"; verify_client = true;' % pki["ca.pem"]
    d = crunchd(start=False, listen=None, **settings)
    d.extra = ('listen = ( "127.0.0.1:%d", { address = "127.0.0.1:%d"; tls = { %s }; } );'
               % (d.port, tls_port, tls))
    d.start()
    # gRPC binds a TLS listener inside the acceptor (not in the master), a
    # moment after the acceptor's title is set: wait until it answers.
    def tls_listening():
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", tls_port)) == 0
    wait_for(tls_listening, what="the TLS listener bound by the acceptor")
    return d, "127.0.0.1:%d" % tls_port


def secure_stub(d, target, pki, client=None, ca="ca.pem"):
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["read"](ca),
        private_key=pki["read"](client + ".key") if client else None,
        certificate_chain=pki["read"](client + ".pem") if client else None)
    ch = grpc.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1),
                                                      ("grpc.enable_http_proxy", 0)])
    d._channels.append(ch)
    return pb_grpc.CrunchStub(ch)


def run(stub, payload=b"tls", timeout=RPC_TIMEOUT):
    return stub.Run(pb.Task(id=1, handler="echo", payload=payload), timeout=timeout)


def test_tls_listener_serves_and_plain_one_too(crunchd, pki):
    d, target = tls_daemon(crunchd, pki)
    assert run(secure_stub(d, target, pki)).output == b"tls"
    # The plain listener next to it is unaffected.
    plain = pb_grpc.CrunchStub(d.channel("127.0.0.1:%d" % d.port))
    assert run(plain, b"plain").output == b"plain"
    # RunStream over TLS.
    out = list(secure_stub(d, target, pki).RunStream(
        iter([pb.Task(id=i, handler="echo", payload=b"s") for i in range(10)]),
        timeout=RPC_TIMEOUT))
    assert sorted(r.id for r in out) == list(range(10))
    # A client that does not speak TLS, or does not trust our CA, gets nowhere.
    code, _, _, _ = call_status(run, pb_grpc.CrunchStub(d.channel(target)),
                                timeout=3 * SCALE)
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), code
    code, _, _, _ = call_status(run, secure_stub(d, target, pki, ca="rogue.pem"),
                                timeout=3 * SCALE)
    assert code == grpc.StatusCode.UNAVAILABLE, code
    d.allow_log(r"grpc: .*(Handshake failed|handshake|SSL|ssl)")


def test_mtls_requires_a_valid_client_certificate(crunchd, pki):
    d, target = tls_daemon(crunchd, pki, verify_client=True)
    d.allow_log(r"grpc: .*(Handshake failed|handshake|SSL|ssl|certificate)")
    code, _, _, _ = call_status(run, secure_stub(d, target, pki), timeout=3 * SCALE)
    assert code == grpc.StatusCode.UNAVAILABLE, "no client certificate: refused"
    code, _, _, _ = call_status(run, secure_stub(d, target, pki, client="intruder"),
                                timeout=3 * SCALE)
    assert code == grpc.StatusCode.UNAVAILABLE, "a certificate from another CA: refused"
    assert run(secure_stub(d, target, pki, client="client1")).output == b"tls"


def test_tls_with_two_acceptors(crunchd, pki):
    # Every acceptor binds the TLS address (SO_REUSEPORT); both start.
    d, target = tls_daemon(crunchd, pki, acceptors=2)
    assert len(d.acceptors()) == 2
    for i in range(10):
        assert run(secure_stub(d, target, pki), b"%d" % i).output == b"%d" % i
