# test_badconf.py: a table of broken configuration files (issue 7), each
# checked three ways: `crunchd -t` refuses it naming FILE:LINE and what to do;
# starting crunchd with it fails fast with the same message and leaves no
# process and no pid file; and a running daemon whose file is replaced by it
# refuses the SIGHUP, logs the same message, and keeps serving with the same
# processes. Also: files that cannot be read, and a listen port in use (fine
# for -t, an error at start and for a new listener on reload).

import os
import re
import signal
import socket
import subprocess

import pytest

from conftest import (BIN, MODULES, WAIT, free_port, run_crunchd, session_members,
                      wait_for)

P = "{port}"

# (id, lines, regex). `lines` go into a file between valid settings; the last
# of them is the wrong one, and the message must name FILE:<its line> and
# match regex. "{port}" is the test's port; a case without a listen line gets
# one on that port at the top. An id ending in "-at-end" has nothing after
# its lines (an unterminated string would swallow them).
BROKEN = [
    # unknown settings (with "did you mean")
    ("unknown-setting", ["wrokers = 2;"], r'wrokers.*did you mean "workers"'),
    ("unknown-setting-near", ["acceptor = 2;"], r'did you mean "acceptors"'),
    ("unknown-setting-far", ["frobnicate = 1;"], r'unknown setting "frobnicate"; see'),
    ("task_timeout-without-ms", ["task_timeout = 5;"], r"task_timeout_ms"),
    ("tls-at-top-level", ["tls = { cert = \"a\"; };"], r"TLS is set per listener"),
    ("duplicate-setting", ["workers = 2;", "workers = 3;"], r"duplicate|twice"),
    # wrong types
    ("acceptors-string", ['acceptors = "two";'], r"acceptors: expected an integer, got a string"),
    ("queue_wait_ms-float", ["queue_wait_ms = 1.5;"], r"queue_wait_ms.*float"),
    ("workers-list", ["workers = [ 1 ];"], r"workers.*array"),
    ("workers-float", ["workers = 2.0;"], r"workers"),
    ("workers-bool", ["workers = true;"], r"workers.*boolean"),
    ("workers-bad-string", ['workers = "many";'], r"auto"),
    ("log_level-int", ["log_level = 3;"], r"log_level: expected a string, got an integer"),
    ("log_level-unknown", ['log_level = "verbose";'], r"verbose.*debug"),
    ("error_log-int", ["error_log = 5;"], r"error_log"),
    ("pid_file-bool", ["pid_file = true;"], r"pid_file"),
    ("user-list", ['user = [ "root" ];'], r"user: expected a string, got an array"),
    ("access_log-bool", ["access_log = true;"], r"access_log.*off"),
    ("daemon-yes", ['daemon = "yes";'], r"daemon: expected true or false.*daemon = true"),
    ("daemon-1", ["daemon = 1;"], r"true or false"),
    ("shm_size-bad-suffix", ['shm_size = "12q";'], r"shm_size.*not a size"),
    ("max_connection_idle_ms-float", ["max_connection_idle_ms = 1.5;"], r"float"),
    ("worker_rlimit_core-word", ['worker_rlimit_core = "infinity";'], r"unlimited"),
    ("worker_cpu_affinity-on", ['worker_cpu_affinity = "on";'], r'"off" or "auto"'),
    # out of range
    ("workers-0", ["workers = 0;"], r"1024"),
    ("workers-1025", ["workers = 1025;"], r"1024"),
    ("workers-100000", ["workers = 100000;"], r"100000 is out of range.*1 to 1024"),
    ("acceptors-0", ["acceptors = 0;"], r"64"),
    ("acceptors-65", ["acceptors = 65;"], r"64"),
    ("queue_capacity-0", ["queue_capacity = 0;"], r"1048576"),
    ("queue_capacity-too-big", ["queue_capacity = 1048577;"], r"1048576"),
    ("queue_capacity-int64", ["queue_capacity = 99999999999L;"], r"1048576"),
    ("shm_size-too-small", ['shm_size = "32k";'], r"64\s*k|65536"),
    ("shm_size-too-big", ['shm_size = "65g";'], r"64\s*g|68719476736"),
    ("shm_size-negative", ["shm_size = -5;"], r"shm_size: -5 is out of range"),
    ("max_payload-0", ["max_payload = 0;"], r"max_payload"),
    ("max_payload-negative", ["max_payload = -5;"], r"max_payload: -5 is out of range"),
    ("max_payload-too-big", ['shm_size = "8g";', 'max_payload = "2g";'], r"1\s*g|1073741824"),
    ("max_payload-over-half-shm", ['shm_size = "1m";', 'max_payload = "600k";'],
     r"max_payload.*shm_size"),
    ("queue_wait_ms-too-big", ["queue_wait_ms = 600001;"], r"600000"),
    ("queue_wait_ms-negative", ["queue_wait_ms = -1;"], r"queue_wait_ms"),
    ("task_timeout_ms-too-big", ["task_timeout_ms = 86400001;"], r"task_timeout_ms.*86400000"),
    ("task_retries-6", ["task_retries = 6;"], r"task_retries.*0 to 5"),
    ("worker_max_tasks-2^32", ["worker_max_tasks = 4294967296;"], r"4294967295"),
    ("respawn_burst-0", ["respawn_burst = 0;"], r"respawn_burst.*1 to 1000"),
    ("respawn_window_ms-99", ["respawn_window_ms = 99;"], r"respawn_window_ms.*100"),
    ("worker_rlimit_nofile-too-big", ["worker_rlimit_nofile = 1048577;"], r"1048576"),
    ("worker_rlimit_core-minus-2", ["worker_rlimit_core = -2;"], r"worker_rlimit_core"),
    ("shutdown_timeout_ms-999", ["shutdown_timeout_ms = 999;"], r"shutdown_timeout_ms.*1000"),
    ("max_draining_generations-0", ["max_draining_generations = 0;"], r"1 to 64"),
    ("max_receive_message-below-payload", ['max_receive_message = "1m";'],
     r"max_receive_message.*max_payload"),
    ("max_receive_message-too-big", ['max_receive_message = "2g";'], r"2147483647"),
    ("max_concurrent_streams-0", ["max_concurrent_streams = 0;"], r"max_concurrent_streams"),
    ("keepalive-timeout-not-less", ["keepalive_time_ms = 10000;", "keepalive_timeout_ms = 10000;"],
     r"keepalive_timeout_ms.*less than keepalive_time_ms"),
    ("keepalive-time-below-default-timeout", ["keepalive_time_ms = 20000;"],
     r"keepalive_time_ms"),
    ("max_connection_age_ms-0", ["max_connection_age_ms = 0;"], r"max_connection_age_ms.*1000"),
    ("max_connection_age_grace_ms-negative", ["max_connection_age_grace_ms = -1;"], r"-1"),
    ("stream_max_pending-0", ["stream_max_pending = 0;"], r"stream_max_pending"),
    ("updates_capacity-too-big", ["updates_capacity = 1048577;"], r"updates_capacity.*1048576"),
    # listeners
    ("listen-not-a-list", ['listen = "127.0.0.1:%s";' % P], r"expected a list"),
    ("listen-empty", ["listen = [ ];"], r"listen.*empty"),
    ("listen-int", ["listen = [ 5000 ];"], r"listen"),
    ("listen-no-port", ['listen = [ "127.0.0.1" ];'], r"127\.0\.0\.1.*port is missing"),
    ("listen-port-65536", ['listen = [ "127.0.0.1:65536" ];'], r"65536.*1 to 65535"),
    ("listen-port-99999", ['listen = [ "127.0.0.1:99999" ];'], r"99999.*1 to 65535"),
    ("listen-port-0", ['listen = [ "127.0.0.1:0" ];'], r"1 to 65535"),
    ("listen-bad-ipv4", ['listen = [ "300.1.1.1:5000" ];'], r"300\.1\.1\.1"),
    ("listen-hostname", ['listen = [ "example.com:5000" ];'], r"no DNS lookups"),
    ("listen-port-not-number", ['listen = [ "127.0.0.1:abc" ];'], r"abc"),
    ("listen-ipv6-no-brackets", ['listen = [ "::1:5000" ];'], r"brackets"),
    ("listen-ipv6-no-colon", ['listen = [ "[::1]5000" ];'], r"\[::1\]"),
    ("listen-unix-empty", ['listen = [ "unix:" ];'], r"unix"),
    ("listen-duplicate", ['listen = [ "127.0.0.1:%s", "127.0.0.1:%s" ];' % (P, P)],
     r"same address.*remove one"),
    ("listen-duplicate-localhost", ['listen = [ "127.0.0.1:%s", "localhost:%s" ];' % (P, P)],
     r"same address"),
    ("listen-group-in-array", ['listen = [ { address = "127.0.0.1:%s"; } ];' % P], r"\( \)"),
    ("listen-unknown-key", ['listen = ( { adress = "127.0.0.1:%s"; } );' % P],
     r'did you mean "address"'),
    ("listen-no-address", ['listen = ( { mode = "0660"; } );'], r"no address"),
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
    # syntax
    ("syntax-error", ["workers = [;"], r"syntax error.*check"),
    ("missing-equals", ["workers 2;"], r"syntax error"),
    ("stray-brace", ["}"], r"syntax error"),
    ("unterminated-string-at-end", ['error_log = "x.log;'], r'string is never closed.*closing'),
    ("unterminated-comment", ["/* a comment"], r"comment is never closed.*\*/"),
    ("include-missing", ['@include "no-such-include.conf"'], r"include"),
    # modules
    ("module-missing", ['modules = ( { path = "no-such-module.so"; } );'],
     r"no-such-module\.so cannot be loaded.*No such file.*check modules\[0\]\.path"),
    ("module-not-elf", ['modules = ( { path = "/etc/passwd"; } );'], r"cannot be loaded"),
    ("module-no-symbol", ['modules = ( { path = "%s"; } );' % os.path.join(MODULES, "nosym.so")],
     r"does not export crunchd_module"),
    ("module-bad-abi", ['modules = ( { path = "%s"; } );' % os.path.join(MODULES, "badabi.so")],
     r"ABI 42.*rebuild"),
    ("module-twice", ['modules = ( { path = "a.so"; }, { path = "a.so"; } );'], r"once"),
    ("module-no-path", ['modules = ( { config = "x"; } );'], r"no path"),
    # accounts and files crunchd writes
    ("user-unknown", ['user = "crunchd-no-such-user";'], r'no user "crunchd-no-such-user".*useradd'),
    ("group-unknown", ['group = "crunchd-no-such-group";'], r"crunchd-no-such-group.*groupadd"),
    ("pid_file-missing-dir", ['pid_file = "no-such-dir/crunchd.pid";'],
     r"pid_file: the directory .*no-such-dir does not exist.*create it or change pid_file"),
    ("error_log-missing-dir", ['error_log = "/nonexistent-crunchd/error.log";'],
     r"error_log: the directory /nonexistent-crunchd does not exist"),
    ("error_log-is-a-directory", ['error_log = "/";'], r"error_log: / is a directory"),
    ("error_log-under-a-file", ['error_log = "/etc/passwd/error.log";'],
     r"error_log: cannot use /etc/passwd/error\.log: Not a directory"),
    ("access_log-missing-dir", ['access_log = "no-such-dir/access.log";'],
     r"access_log: the directory .*no-such-dir does not exist"),
]

# Saying what to do: a verb of advice, or the right form shown ("like ...",
# a setting written out).
ADVICE = re.compile(r"[;:] .*(\b(use|write|add|remove|check|create|change|raise|lower|name|"
                    r"keep|give|fix|stop|list|rebuild|see|did you mean|like)\b|\w+ = )")


def _text(lines, port, tail=True):
    """(text, line of the mistake) of a broken file."""
    has_listen = any(l.startswith("listen") for l in lines)
    head = ["# crunchd test config: one mistake, on a known line", ""]
    if not has_listen:
        head.append('listen = [ "127.0.0.1:%d" ];' % port)
    head += ["# the line after the next comment is wrong",
             "# (acceptors below)" if any(l.startswith("acceptors") for l in lines)
             else "acceptors = 1;", ""]
    body = [l.replace(P, str(port)) for l in lines]
    tail = ["", "# valid settings after the mistake",
            "# -" if any(l.startswith("log_level") for l in lines) else 'log_level = "info";'] \
        if tail else []
    return "\n".join(head + body + tail) + "\n", len(head) + len(body)


def _check_message(text, path, line, regex, shown):
    """The line of `text` that names path:line matches regex and gives advice."""
    where = "%s:%d:" % (path, line) if line else path
    hit = [l for l in text.splitlines() if where in l]
    assert hit, "expected a message naming %s\n%s" % (where, shown)
    assert re.search(regex, hit[0]), "message should match %r\n%s" % (regex, shown)
    assert ADVICE.search(hit[0].split(where, 1)[1]), "message says nothing to do:\n%s" % shown
    return hit[0]


def _ok_message(path):
    return "crunchd: configuration file %s test is successful" % path


def _failed_message(path):
    return "crunchd: configuration file %s test failed" % path


def test_table_is_big_enough():
    assert len(BROKEN) >= 30
    assert len(set(c[0] for c in BROKEN)) == len(BROKEN), "duplicate ids"


# --------------------------------------------------------------------------
# (a) crunchd -t

@pytest.mark.parametrize("name,lines,regex", BROKEN, ids=[c[0] for c in BROKEN])
def test_t_refuses(tmp_path, name, lines, regex):
    port = free_port()
    text, line = _text(lines, port, not name.endswith("-at-end"))
    path = str(tmp_path / "broken.conf")
    with open(path, "w") as f:
        f.write(text)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    r = run_crunchd(["-t", "-c", path, "-p", str(prefix)])
    shown = "config:\n%s\nstderr:\n%s" % (text, r.stderr)
    assert r.returncode == 1, shown
    _check_message(r.stderr, path, line, regex, shown)
    last = [l for l in r.stderr.splitlines() if l.strip()][-1]
    assert _failed_message(path) in last, shown
    assert _ok_message(path) not in r.stderr
    assert list(prefix.iterdir()) == [], "-t wrote into the prefix"


# --------------------------------------------------------------------------
# (b) start

def _start_fails(args, timeout=WAIT):
    """Start crunchd in its own session: it must exit non-zero by itself within
    timeout and leave no process. Returns (rc, stderr)."""
    p = subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("crunchd %s still running after %.0fs: it should refuse "
                                 "to start" % (" ".join(args), timeout))
        try:
            wait_for(lambda: not session_members(p.pid), 5, what="no process left")
        except AssertionError:
            raise AssertionError("processes left after a failed start: %s"
                                 % session_members(p.pid))
    finally:
        for pid in session_members(p.pid):
            os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("name,lines,regex", BROKEN, ids=[c[0] for c in BROKEN])
def test_start_refuses(tmp_path, name, lines, regex):
    port = free_port()
    text, line = _text(lines, port, not name.endswith("-at-end"))
    path = str(tmp_path / "broken.conf")
    with open(path, "w") as f:
        f.write(text)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    rc, err = _start_fails(["-c", path, "-p", str(prefix)])
    shown = "config:\n%s\nstderr:\n%s" % (text, err)
    assert rc == 1, shown
    msg = _check_message(err, path, line, regex, shown)
    assert "[emerg]" in msg, shown
    assert not os.path.exists(prefix / "crunchd.pid"), "pid file written for a broken config"
    # Nothing listens on the port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------
# Files that cannot be read (at -t and at start)

def _unreadable_cases(tmp_path):
    plain = tmp_path / "plain.conf"
    plain.write_text('listen = [ "127.0.0.1:%d" ];\n' % free_port())
    cases = [("missing", str(tmp_path / "no-such.conf"), r"No such file or directory"),
             ("directory", str(tmp_path), r"Is a directory"),
             ("under-a-file", str(plain) + "/x.conf", r"Not a directory")]
    if os.geteuid() != 0:  # root reads a mode-000 file; the cases above stand in
        locked = tmp_path / "locked.conf"
        locked.write_text(plain.read_text())
        locked.chmod(0)
        cases.append(("mode-000", str(locked), r"Permission denied"))
    return cases


def test_unreadable_file(tmp_path):
    for name, path, errno_text in _unreadable_cases(tmp_path):
        for how in ("-t", "start"):
            if how == "-t":
                r = run_crunchd(["-t", "-c", path, "-p", str(tmp_path)])
                rc, err = r.returncode, r.stderr
            else:
                rc, err = _start_fails(["-c", path, "-p", str(tmp_path)])
            shown = "%s (%s) at %s:\n%s" % (name, path, how, err)
            assert rc == 1, shown
            msg = [l for l in err.splitlines() if path in l and "[emerg]" in l]
            assert msg, shown
            assert re.search(errno_text, msg[0]) and "check the path given with -c" in msg[0], shown


def test_port_in_use_at_start_but_not_for_t(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        text, line = _text(['listen = [ "127.0.0.1:%d" ];' % port], port)
        path = str(tmp_path / "busy.conf")
        with open(path, "w") as f:
            f.write(text)
        r = run_crunchd(["-t", "-c", path, "-p", str(tmp_path)])
        assert r.returncode == 0 and _ok_message(path) in r.stderr, r.stderr
        rc, err = _start_fails(["-c", path, "-p", str(tmp_path)])
        assert rc == 1, err
        _check_message(err, path, line, r"127\.0\.0\.1:%d.*already in use" % port, err)
        assert not os.path.exists(tmp_path / "crunchd.pid")


# --------------------------------------------------------------------------
# (c) reload: one daemon refuses every broken file in turn

def _refusals(d):
    return [l for l in d.log_text().splitlines() if "reload refused:" in l]


def _reload_refused(d, before_pids, what):
    """SIGHUP; wait for a new refusal line; the same processes serve."""
    n = len(_refusals(d))
    d.send_signal(signal.SIGHUP)
    line = wait_for(lambda: _refusals(d)[n] if len(_refusals(d)) > n else None,
                    what="the refusal of %s" % what)
    assert d.proc.poll() is None, "the master exited on %s" % what
    assert sorted(d.children()) == before_pids, "processes changed after %s" % what
    r = d.run("echo", what, id=len(what))
    assert r.output == what.encode()
    return line


def test_reload_refuses_and_keeps_serving(crunchd):
    d = crunchd(workers=1)
    good = d.conf_text()
    pids = sorted(d.children())
    gen_lines = len([l for l in d.log_text().splitlines() if "reload: generation" in l])
    failures = []
    for name, lines, regex in BROKEN:
        text, line = _text(lines, d.port, not name.endswith("-at-end"))
        with open(d.conf_path, "w") as f:
            f.write(text)
        try:
            msg = _reload_refused(d, pids, name)
            _check_message(msg, d.conf_path, line, regex, "%s:\n%s\nlog line:\n%s"
                           % (name, text, msg))
            assert "keeps serving" in msg
        except AssertionError as e:
            failures.append("%s: %s" % (name, e))
        if d.proc.poll() is not None:
            break
    # The file itself gone, or a directory: refused too.
    os.unlink(d.conf_path)
    try:
        msg = _reload_refused(d, pids, "missing-file")
        assert re.search(r"No such file or directory.*check the path", msg), msg
        os.mkdir(d.conf_path)
        msg = _reload_refused(d, pids, "directory")
        assert re.search(r"Is a directory", msg), msg
    except AssertionError as e:
        failures.append("unreadable: %s" % e)
    finally:
        if os.path.isdir(d.conf_path):
            os.rmdir(d.conf_path)
    assert not failures, "%d of %d cases failed:\n%s" % (
        len(failures), len(BROKEN) + 1, "\n\n".join(failures))
    # Restored, the file loads again: a real reload happens.
    with open(d.conf_path, "w") as f:
        f.write(good)
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: len([l for l in d.log_text().splitlines()
                          if "reload: generation" in l]) > gen_lines,
             what="the reload of the restored file")
    assert d.run_until_ok()[0].output == b"ping"


def test_reload_with_new_listener_on_a_port_in_use(crunchd):
    d = crunchd(workers=1)
    good = d.conf_text()
    pids = sorted(d.children())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        text = good.replace('listen = [ "127.0.0.1:%d" ];' % d.port,
                            'listen = [ "127.0.0.1:%d",\n  "127.0.0.1:%d" ];' % (d.port, busy))
        assert text != good
        busy_line = text.splitlines().index('  "127.0.0.1:%d" ];' % busy) + 1
        with open(d.conf_path, "w") as f:
            f.write(text)
        msg = _reload_refused(d, pids, "port-in-use")
        assert "keeps serving" in msg
        in_use = [l for l in d.log_text().splitlines() if "already in use" in l]
        assert in_use, d.log_text()[-2000:]
        # A refused reload is an [error], not an [emerg]: nothing stops.
        assert "[error]" in in_use[-1], in_use[-1]
        _check_message(in_use[-1], d.conf_path, busy_line, r"%d.*already in use" % busy,
                       d.log_text()[-2000:])
    # The same port as the running generation is never "in use" on reload.
    with open(d.conf_path, "w") as f:
        f.write(good.replace('log_level = "info";', 'log_level = "debug";'))
    n = len([l for l in d.log_text().splitlines() if "reload: generation" in l])
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: len([l for l in d.log_text().splitlines()
                          if "reload: generation" in l]) > n, what="a reload on the same port")
    assert d.run_until_ok()[0].output == b"ping"
