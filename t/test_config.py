# test_config.py: `crunchd -t` / `-T` and configuration errors: every broken
# file names FILE:LINE, -t never binds or writes, -T prints a config that is
# itself valid, and a broken config at start leaves nothing behind.

import grp
import os
import pwd
import re
import socket

import pytest

from conftest import (BIN, SRCDIR, WAIT, free_port, render_value, run_crunchd)


def _ok_message(path):
    return "crunchd: configuration file %s test is successful" % path


def _failed_message(path):
    return "crunchd: configuration file %s test failed" % path


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


# --------------------------------------------------------------------------
# Broken files. Each case: (id, lines, bad line index (0-based), regex the
# message must also match). "{port}" is a free port; a case that has no
# listen line gets one at the top.

P = "{port}"
BROKEN = [
    ("unknown-setting", ["wrokers = 2;"], r"wrokers"),
    ("acceptors-string", ['acceptors = "two";'], r"acceptors"),
    ("queue_wait_ms-float", ["queue_wait_ms = 1.5;"], r"queue_wait_ms"),
    ("workers-list", ["workers = [ 1 ];"], r"workers"),
    ("workers-float", ["workers = 2.0;"], r"workers"),
    ("acceptors-0", ["acceptors = 0;"], r"64"),
    ("acceptors-65", ["acceptors = 65;"], r"64"),
    ("workers-0", ["workers = 0;"], r"1024"),
    ("workers-1025", ["workers = 1025;"], r"1024"),
    ("workers-bad-string", ['workers = "many";'], r"auto"),
    ("queue_capacity-0", ["queue_capacity = 0;"], r"1048576"),
    ("queue_capacity-too-big", ["queue_capacity = 1048577;"], r"1048576"),
    ("queue_capacity-int64", ["queue_capacity = 99999999999L;"], r"1048576"),
    ("shm_size-too-small", ['shm_size = "32k";'], r"64\s*k|65536"),
    ("shm_size-too-big", ['shm_size = "65g";'], r"64\s*g|68719476736"),
    ("shm_size-bad-suffix", ['shm_size = "12q";'], r"shm_size"),
    ("max_payload-0", ["max_payload = 0;"], r"max_payload"),
    ("max_payload-too-big", ['shm_size = "8g";', 'max_payload = "2g";'], r"1\s*g|1073741824"),
    ("max_payload-over-half-shm", ['shm_size = "1m";', 'max_payload = "600k";'], r"shm_size"),
    ("queue_wait_ms-too-big", ["queue_wait_ms = 600001;"], r"600000"),
    ("queue_wait_ms-negative", ["queue_wait_ms = -1;"], r"queue_wait_ms"),
    ("log_level-unknown", ['log_level = "verbose";'], r"verbose|debug"),
    ("error_log-int", ["error_log = 5;"], r"error_log"),
    ("pid_file-bool", ["pid_file = true;"], r"pid_file"),
    ("listen-no-port", ['listen = [ "127.0.0.1" ];'], r"127\.0\.0\.1"),
    ("listen-port-65536", ['listen = [ "127.0.0.1:65536" ];'], r"65536"),
    ("listen-bad-ipv4", ['listen = [ "300.1.1.1:5000" ];'], r"300\.1\.1\.1"),
    ("listen-port-not-number", ['listen = [ "127.0.0.1:abc" ];'], r"abc"),
    ("listen-ipv6-no-colon", ['listen = [ "[::1]5000" ];'], r"\[::1\]"),
    ("listen-unix-empty", ['listen = [ "unix:" ];'], r"unix"),
    ("listen-duplicate", ['listen = [ "127.0.0.1:%s", "127.0.0.1:%s" ];' % (P, P)], r"127\.0\.0\.1"),
    ("listen-int", ["listen = [ 5000 ];"], r"listen"),
    ("listen-empty", ["listen = [ ];"], r"listen"),
    ("duplicate-setting", ["workers = 2;", "workers = 3;"], r"duplicate|twice"),
    ("syntax-error", ["workers = [;"], r""),
    # supervision
    ("task_timeout_ms-too-big", ["task_timeout_ms = 86400001;"], r"task_timeout_ms.*86400000"),
    ("task_timeout-without-ms", ["task_timeout = 5;"], r"task_timeout_ms"),
    ("task_retries-6", ["task_retries = 6;"], r"task_retries.*0 to 5"),
    ("worker_max_tasks-2^32", ["worker_max_tasks = 4294967296;"], r"4294967295"),
    ("respawn_burst-0", ["respawn_burst = 0;"], r"respawn_burst.*1 to 1000"),
    ("respawn_window_ms-99", ["respawn_window_ms = 99;"], r"respawn_window_ms.*100"),
    ("worker_rlimit_nofile-too-big", ["worker_rlimit_nofile = 1048577;"], r"1048576"),
    ("worker_rlimit_core-word", ['worker_rlimit_core = "infinity";'], r"unlimited"),
    ("worker_rlimit_core-minus-2", ["worker_rlimit_core = -2;"], r"worker_rlimit_core"),
    ("worker_cpu_affinity-on", ['worker_cpu_affinity = "on";'], r'"off" or "auto"'),
    ("shutdown_timeout_ms-999", ["shutdown_timeout_ms = 999;"], r"shutdown_timeout_ms.*1000"),
    ("max_draining_generations-0", ["max_draining_generations = 0;"], r"1 to 64"),
    # gRPC channel
    ("max_receive_message-below-payload", ['max_receive_message = "1m";'],
     r"max_receive_message.*max_payload"),
    ("max_receive_message-too-big", ['max_receive_message = "2g";'], r"2147483647"),
    ("max_concurrent_streams-0", ["max_concurrent_streams = 0;"], r"max_concurrent_streams"),
    ("keepalive-timeout-not-less", ["keepalive_time_ms = 10000;", "keepalive_timeout_ms = 10000;"],
     r"keepalive_timeout_ms.*less than keepalive_time_ms"),
    ("keepalive-time-below-default-timeout", ["keepalive_time_ms = 20000;"],
     r"keepalive_time_ms"),
    ("max_connection_age_ms-0", ["max_connection_age_ms = 0;"], r"max_connection_age_ms.*1000"),
    ("max_connection_idle_ms-float", ["max_connection_idle_ms = 1.5;"], r"float"),
    ("max_connection_age_grace_ms-negative", ["max_connection_age_grace_ms = -1;"], r"-1"),
    ("stream_max_pending-0", ["stream_max_pending = 0;"], r"stream_max_pending"),
    ("updates_capacity-too-big", ["updates_capacity = 1048577;"], r"updates_capacity.*1048576"),
    # files and process
    ("access_log-bool", ["access_log = true;"], r"access_log.*off"),
    ("daemon-yes", ['daemon = "yes";'], r"daemon: expected true or false.*daemon = true"),
    ("daemon-1", ["daemon = 1;"], r"true or false"),
    ("user-unknown", ['user = "crunchd-no-such-user";'], r"no user \"crunchd-no-such-user\""),
    ("group-unknown", ['group = "crunchd-no-such-group";'], r"crunchd-no-such-group"),
    # listen groups
    ("listen-tls-missing-files",
     ['listen = ( { address = "127.0.0.1:%s"; tls = { cert = "nope.pem"; key = "nope.key"; }; } );' % P],
     r"nope\.pem: No such file"),
    ("listen-tls-verify-without-ca",
     ['listen = ( { address = "127.0.0.1:%s"; tls = { cert = "/etc/passwd"; key = "/etc/passwd"; '
      'verify_client = true; }; } );' % P], r"client_ca"),
    ("listen-tls-unknown-key",
     ['listen = ( { address = "127.0.0.1:%s"; tls = { certs = "a.pem"; }; } );' % P],
     r'did you mean "cert"'),
    ("listen-tls-on-unix",
     ['listen = ( { address = "unix:x.sock"; tls = { cert = "a"; key = "b"; }; } );'], r"TCP"),
    ("listen-mode-on-tcp", ['listen = ( { address = "127.0.0.1:%s"; mode = "0660"; } );' % P],
     r"unix"),
    ("listen-mode-decimal", ['listen = ( { address = "unix:x.sock"; mode = 660; } );'], r"octal"),
    ("listen-mode-not-octal", ['listen = ( { address = "unix:x.sock"; mode = "0980"; } );'],
     r"0980"),
    ("listen-group-unknown",
     ['listen = ( { address = "unix:x.sock"; group = "crunchd-no-such-group"; } );'],
     r"crunchd-no-such-group"),
    ("listen-unknown-key", ['listen = ( { adress = "127.0.0.1:%s"; } );' % P],
     r'did you mean "address"'),
    ("listen-no-address", ['listen = ( { mode = "0660"; } );'], r"no address"),
    ("listen-group-in-array", ['listen = [ { address = "127.0.0.1:%s"; } ];' % P], r"\( \)"),
]


def _broken_file(tmp_path, lines, port):
    has_listen = any(l.startswith("listen") for l in lines)
    head = ["# crunchd test config: one mistake, on a known line", ""]
    if not has_listen:
        head.append('listen = [ "127.0.0.1:%d" ];' % port)
    head += ["# the line after the next comment is wrong", "acceptors = 1;"
             if not any(l.startswith("acceptors") for l in lines) else "# (acceptors below)", ""]
    body = [l.replace(P, str(port)) for l in lines]
    tail = ["", "# valid settings after the mistake", 'log_level = "info";'
            if not any(l.startswith("log_level") for l in lines) else "# -"]
    text = "\n".join(head + body + tail) + "\n"
    bad_line = len(head) + len(body)  # 1-based number of the last body line
    path = tmp_path / "broken.conf"
    path.write_text(text)
    return str(path), bad_line, text


@pytest.mark.parametrize("lines,regex", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_t_on_broken_config(tmp_path, lines, regex):
    port = free_port()
    path, line, text = _broken_file(tmp_path, lines, port)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    r = run_crunchd(["-t", "-c", path, "-p", str(prefix)])
    shown = "config:\n%s\nstderr:\n%s" % (text, r.stderr)
    assert r.returncode == 1, shown
    assert "%s:%d:" % (path, line) in r.stderr, "expected %s:%d:\n%s" % (path, line, shown)
    err_line = [l for l in r.stderr.splitlines() if "%s:%d:" % (path, line) in l][0]
    assert re.search(regex, err_line), "message should match %r\n%s" % (regex, shown)
    last = [l for l in r.stderr.splitlines() if l.strip()][-1]
    assert _failed_message(path) in last, shown
    assert _ok_message(path) not in r.stderr
    assert not os.path.exists(prefix / "crunchd.pid")


def test_broken_table_is_big_enough():
    assert len(BROKEN) >= 12


def test_t_on_missing_file(tmp_path):
    path = str(tmp_path / "no-such.conf")
    r = run_crunchd(["-t", "-c", path, "-p", str(tmp_path)])
    assert r.returncode == 1, r.stderr
    assert path in r.stderr
    assert _failed_message(path) in r.stderr


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


@pytest.mark.parametrize("extra,regex", [
    ("wrokers = 2;", r"wrokers"),
    ('max_payload = "40m";', r"max_payload|shm_size"),
    ("acceptors = [;", r""),
], ids=["unknown-setting", "max_payload-over-half-shm", "syntax-error"])
def test_broken_config_at_start(crunchd, extra, regex):
    d = crunchd(start=False, extra=extra, shm_size="64m")
    lines = d.conf_text().splitlines()
    line = lines.index(extra) + 1
    d.allow_log(r"\[emerg\].*" + re.escape(d.conf_path))  # the expected refusal
    d.start(wait=False)
    rc = d.proc.wait(WAIT)
    err = d.stderr_text()
    assert rc == 1, (rc, err)
    where = "%s:%d:" % (d.conf_path, line)
    hit = [l for l in err.splitlines() if where in l]
    assert hit, "stderr should name %s\n%s" % (where, err)
    assert re.search(regex, hit[0])
    assert not os.path.exists(d.pid_file), "pid file written for a broken config"
    assert not d.leftovers(), "processes left after a failed start"
