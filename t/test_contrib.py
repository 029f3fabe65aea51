# test_contrib.py: the examples in contrib/ work: contrib/python/client.py
# (Submit a batch, follow Updates) against a live crunchd, with the stubs of
# `make python-stubs` and with stubs it generates itself; contrib/crunchd.logrotate
# reopens through `crunchd -s reopen` with the unit's pid file.

import math
import os
import subprocess
import sys

from conftest import GCD_SEEDS, PRIME_SEEDS, SRCDIR, WAIT

CLIENT = os.path.join(SRCDIR, "contrib", "python", "client.py")
PYGEN = os.environ.get("CRUNCHD_PYGEN") or os.path.join(SRCDIR, "t", "gen")


def run_client(args, env=None, stdin=None):
    """Run client.py to completion under a timeout (subprocess.run kills it
    when the timeout expires)."""
    return subprocess.run([sys.executable, CLIENT] + list(args), input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=WAIT * 2, env=env)


def seed_expected():
    want = {}
    i = 1
    for n, is_p in PRIME_SEEDS.items():
        want[i] = "true" if is_p else "false"
        i += 1
    for a, b in GCD_SEEDS:
        want[i] = str(math.gcd(a, b))
        i += 1
    return want


def parse(out):
    got = {}
    for line in out.splitlines():
        id_, code, text = line.split(" ", 2)
        assert code == "0", line
        assert int(id_) not in got, "id %s printed twice" % id_
        got[int(id_)] = text
    return got


def test_python_client_submits_the_seed_batch_and_follows_updates(daemon):
    r = run_client(["-a", daemon.target, "--stubs", PYGEN])
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout) == seed_expected()
    assert "9 accepted, 0 rejected" in r.stderr
    # ids in order, as documented
    assert [int(l.split()[0]) for l in r.stdout.splitlines()] == list(range(1, 10))


def test_python_client_generates_its_stubs_and_reads_stdin(daemon):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # no t/gen: client.py runs protoc itself
    lines = "".join("line %d\n" % i for i in range(50))
    r = run_client(["-a", daemon.target, "--first-id", "1000", "echo", "-"],
                   env=env, stdin=lines)
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout) == {1000 + i: "line %d" % i for i in range(50)}


def test_python_client_reports_failed_tasks(daemon):
    r = run_client(["-a", daemon.target, "--stubs", PYGEN, "prime", "12", "not-a-number"])
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0] == "1 0 false"
    assert lines[1].startswith("2 3 "), lines  # INVALID_ARGUMENT


def test_logrotate_postrotate_uses_crunchd_s_reopen():
    with open(os.path.join(SRCDIR, "contrib", "crunchd.logrotate")) as f:
        text = f.read()
    with open(os.path.join(SRCDIR, "contrib", "crunchd.service")) as f:
        unit = f.read()
    assert "/usr/sbin/crunchd -c /etc/crunchd/crunchd.conf -s reopen" in text
    assert "/run/crunchd/crunchd.pid" in text and "/run/crunchd/crunchd.pid" in unit
    assert "ExecStart=/usr/sbin/crunchd -c /etc/crunchd/crunchd.conf" in unit
    # the script parses as sh (logrotate runs it with /bin/sh -c)
    body = text.split("postrotate", 1)[1].split("endscript", 1)[0]
    r = subprocess.run(["sh", "-n", "-c", body], stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr
