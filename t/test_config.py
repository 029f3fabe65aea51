# test_config.py: `crunchd -t` / `-T` on good files: the shipped file passes,
# -t never binds or writes, -T prints a config that is itself valid. Broken
# files (FILE:LINE at -t, at start and at reload) are in test_badconf.py.

import grp
import os
import pwd
import re
import socket

import pytest

from conftest import BIN, SRCDIR, free_port, render_value, run_crunchd


def _ok_message(path):
    return "crunchd: configuration file %s test is successful" % path


def _shipped_conf(tmp_path):
    """conf/crunchd.conf as shipped: from the source tree, else the build tree,
    else conf/crunchd.conf.in with its @dirs@ filled in."""
    builddir = os.path.dirname(os.path.dirname(os.path.abspath(BIN)))
    for d in (SRCDIR, builddir):
        p = os.path.join(d, "conf", "crunchd.conf")
        if os.path.isfile(p):
            return p
    for d in (SRCDIR, builddir):
        p = os.path.join(d, "conf", "crunchd.conf.in")
        if os.path.isfile(p):
            with open(p) as f:
                text = re.sub(r"@(\w+)@", str(tmp_path / "dirs"), f.read())
            out = tmp_path / "crunchd.conf"
            out.write_text(text)
            return str(out)
    pytest.fail("no conf/crunchd.conf (or .in) in %s or %s" % (SRCDIR, builddir))


def test_t_on_shipped_config(tmp_path):
    conf = _shipped_conf(tmp_path)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    r = run_crunchd(["-t", "-c", conf, "-p", str(prefix)])
    assert r.returncode == 0, r.stderr
    assert _ok_message(conf) in r.stderr
    assert list(prefix.iterdir()) == [], "-t wrote into the prefix: %r" % list(prefix.iterdir())


def _good_conf(tmp_path, port, name="good.conf", **settings):
    s = {"listen": ["127.0.0.1:%d" % port], "workers": 1,
         "pid_file": "crunchd.pid", "error_log": "error.log"}
    s.update(settings)
    path = tmp_path / name
    path.write_text("".join("%s = %s;\n" % (k, render_value(v)) for k, v in s.items()))
    return str(path)


def test_t_does_not_bind_a_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]
        conf = _good_conf(tmp_path, port)
        prefix = tmp_path / "prefix"
        prefix.mkdir()
        r = run_crunchd(["-t", "-c", conf, "-p", str(prefix)])
        assert r.returncode == 0, r.stderr
        assert _ok_message(conf) in r.stderr
        assert not os.path.exists(prefix / "crunchd.pid"), "-t wrote the pid file"


def test_t_while_crunchd_runs_on_the_port(crunchd):
    d = crunchd()
    before = d.all_pids()
    with open(d.pid_file) as f:
        pid_text = f.read()
    # The very same file and prefix as the running daemon.
    r = run_crunchd(["-t", "-c", d.conf_path, "-p", d.prefix])
    assert r.returncode == 0, r.stderr
    assert _ok_message(d.conf_path) in r.stderr
    with open(d.pid_file) as f:
        assert f.read() == pid_text, "-t touched the running daemon's pid file"
    assert d.all_pids() == before
    assert d.run("echo", "undisturbed").output == b"undisturbed"


def _dump_settings(text):
    """{name: raw value text} of top-level `name = value;` lines."""
    out = {}
    for m in re.finditer(r"^\s*([A-Za-z_][\w-]*)\s*[=:]\s*(.*)$", text, re.M):
        out[m.group(1)] = m.group(2).split(";")[0].strip()  # value[;  # comment]
    return out


def _size(v):
    v = v.strip().strip('"')
    m = re.fullmatch(r"(\d+)\s*([kmg]?)L?", v, re.I)
    assert m, "not a size: %r" % v
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


SETTINGS = ("listen", "acceptors", "workers", "queue_capacity", "shm_size",
            "max_payload", "queue_wait_ms", "pid_file", "error_log", "log_level")

# The settings that came with supervision, reload and the gRPC surface, and the
# value -T prints for each when the file does not set it.
NEW_DEFAULTS = {
    "task_timeout_ms": "30000", "task_retries": "0", "worker_max_tasks": "0",
    "respawn_burst": "5", "respawn_window_ms": "10000", "worker_rlimit_nofile": "0",
    "worker_rlimit_core": "-1", "worker_cpu_affinity": '"off"',
    "max_concurrent_streams": "1000", "keepalive_time_ms": "7200000",
    "keepalive_timeout_ms": "20000", "max_connection_idle_ms": "0",
    "max_connection_age_ms": "30000", "max_connection_age_grace_ms": "10000",
    "stream_max_pending": "1024", "updates_capacity": "65536",
    "shutdown_timeout_ms": "60000", "max_draining_generations": "4",
    "access_log": '"off"', "daemon": "false", "user": '""', "group": '""',
}


def test_T_prints_defaults(tmp_path):
    port = free_port()
    conf = tmp_path / "min.conf"
    conf.write_text('listen = [ "127.0.0.1:%d" ];\n' % port)
    r = run_crunchd(["-T", "-c", str(conf), "-p", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    assert _ok_message(str(conf)) in r.stderr
    s = _dump_settings(r.stdout)
    missing = [k for k in SETTINGS if k not in s]
    assert not missing, "-T does not print %s:\n%s" % (missing, r.stdout)
    assert "queue_wait_ms = 1000;" in r.stdout
    assert s["acceptors"] == "1"
    # "auto", or what it stands for (a comment may say so)
    assert s["workers"] in ('"auto"', str(os.cpu_count())), r.stdout
    assert s["queue_capacity"] == "1024"
    assert _size(s["shm_size"]) == 64 << 20
    assert _size(s["max_payload"]) == 4 << 20
    assert s["log_level"] == '"notice"'
    assert s["error_log"] == '"stderr"'
    assert '"127.0.0.1:%d"' % port in r.stdout
    assert "crunchd.pid" in s["pid_file"]
    for k, v in NEW_DEFAULTS.items():
        assert s.get(k) == v, "-T: %s should be %s, got %r:\n%s" % (k, v, s.get(k), r.stdout)
    # Unset, max_receive_message follows max_payload: shown, but commented out
    # so that a dump fed back in still follows it.
    assert "max_receive_message" not in s, r.stdout
    assert "# max_receive_message = %d;" % ((4 << 20) + 4096) in r.stdout, r.stdout


def test_T_output_is_a_valid_config(tmp_path):
    port = free_port()
    unix = str(tmp_path / "c.sock")
    conf = _good_conf(tmp_path, port, listen=["127.0.0.1:%d" % port, "[::1]:%d" % port,
                                               "unix:" + unix, "unix:rel.sock"],
                      acceptors=3, workers=5, queue_capacity=77, shm_size="8g",
                      max_payload="3m", queue_wait_ms=1234, log_level="debug")
    prefix = str(tmp_path)
    r1 = run_crunchd(["-T", "-c", conf, "-p", prefix])
    assert r1.returncode == 0, r1.stderr
    s = _dump_settings(r1.stdout)
    assert (s["acceptors"], s["workers"], s["queue_capacity"], s["queue_wait_ms"]) == \
        ("3", "5", "77", "1234"), r1.stdout
    assert _size(s["shm_size"]) == 8 << 30, r1.stdout
    assert _size(s["max_payload"]) == 3 << 20, r1.stdout
    assert s["log_level"] == '"debug"'
    for l in ("127.0.0.1:%d" % port, "[::1]:%d" % port, "unix:"):
        assert l in r1.stdout, r1.stdout
    dumped = tmp_path / "dumped.conf"
    dumped.write_text(r1.stdout)
    r2 = run_crunchd(["-t", "-c", str(dumped), "-p", prefix])
    assert r2.returncode == 0, "-T output is not a valid config:\n%s\n%s" % (r1.stdout, r2.stderr)
    assert _ok_message(str(dumped)) in r2.stderr
    r3 = run_crunchd(["-T", "-c", str(dumped), "-p", prefix])
    assert r3.returncode == 0, r3.stderr
    settings_only = lambda t: [l for l in t.splitlines() if not l.lstrip().startswith("#")]  # noqa: E731
    assert settings_only(r3.stdout) == settings_only(r1.stdout), "-T of -T's output differs"


def test_T_round_trips_every_new_setting(tmp_path):
    """Every new setting at a value other than its default, listeners with tls,
    mode and group: -T prints them, its output loads, and -T of that is the
    same. (-T starts nothing, so daemon and user are safe to set here.)"""
    port = free_port()
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN X-----\nnot checked by -t\n-----END X-----\n")
    group = grp.getgrgid(os.getgid()).gr_name
    user = pwd.getpwuid(os.getuid()).pw_name
    conf = tmp_path / "new.conf"
    conf.write_text("""\
listen = (
  "127.0.0.1:%(port)d",
  { address = "127.0.0.1:%(tls)d";
    tls = { cert = "server.pem"; key = "server.key"; client_ca = "ca.pem"; verify_client = true; }; },
  { address = "unix:crunchd.sock"; mode = 0660; group = "%(group)s"; }
);
workers = 2;
task_timeout_ms = 0;
task_retries = 2;
worker_max_tasks = 4294967295;
respawn_burst = 9;
respawn_window_ms = 500;
worker_rlimit_nofile = 4096;
worker_rlimit_core = "unlimited";
worker_cpu_affinity = "auto";
max_receive_message = "8m";
max_concurrent_streams = 50;
keepalive_time_ms = 60000;
keepalive_timeout_ms = 5000;
max_connection_idle_ms = 120000;
max_connection_age_ms = 2000;
max_connection_age_grace_ms = 0;
stream_max_pending = 7;
updates_capacity = 100;
shutdown_timeout_ms = 5000;
max_draining_generations = 2;
access_log = "access.log";
daemon = true;
user = "%(user)s";
group = "%(group)s";
""" % {"port": port, "tls": free_port(), "group": group, "user": user})
    prefix = str(tmp_path)
    r1 = run_crunchd(["-T", "-c", str(conf), "-p", prefix])
    assert r1.returncode == 0, r1.stderr
    s = _dump_settings(r1.stdout)
    want = {"task_timeout_ms": "0", "task_retries": "2", "worker_max_tasks": "4294967295",
            "respawn_burst": "9", "respawn_window_ms": "500", "worker_rlimit_nofile": "4096",
            "worker_rlimit_core": '"unlimited"', "worker_cpu_affinity": '"auto"',
            "max_receive_message": str(8 << 20), "max_concurrent_streams": "50",
            "keepalive_time_ms": "60000", "keepalive_timeout_ms": "5000",
            "max_connection_idle_ms": "120000", "max_connection_age_ms": "2000",
            "max_connection_age_grace_ms": "0", "stream_max_pending": "7",
            "updates_capacity": "100", "shutdown_timeout_ms": "5000",
            "max_draining_generations": "2", "access_log": '"%s"' % (tmp_path / "access.log"),
            "daemon": "true", "user": '"%s"' % user, "group": '"%s"' % group}
    got = {k: s.get(k) for k in want}
    assert got == want, r1.stdout
    out = r1.stdout
    assert "listen = (" in out and 'cert = "%s"' % (tmp_path / "server.pem") in out, out
    assert "verify_client = true;" in out and 'mode = "0660";' in out, out
    dumped = tmp_path / "dumped.conf"
    dumped.write_text(out)
    r2 = run_crunchd(["-T", "-c", str(dumped), "-p", prefix])
    assert r2.returncode == 0, "-T output is not a valid config:\n%s\n%s" % (out, r2.stderr)
    settings_only = lambda t: [l for l in t.splitlines() if not l.lstrip().startswith("#")]  # noqa: E731
    assert settings_only(r2.stdout) == settings_only(out), "-T of -T's output differs"
