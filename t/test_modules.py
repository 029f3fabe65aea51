# test_modules.py: handler modules (include/crunchd/module.h): a module's
# handlers end to end (Run, RunStream), the config string reaching init, the
# loading errors at -t, at start and at reload (refused: the old generation
# serves on), a rebuilt module taking effect on SIGHUP, a removed handler
# failing cleanly, a slow init delaying only its own worker, and the example
# module contrib/modules/sha256. The modules are built by `make check` into
# $CRUNCHD_MODULES (t/modules/*.so).

import hashlib
import os
import re
import shutil
import signal
import time

import grpc
import pytest

from conftest import (REPO, RPC_TIMEOUT, WAIT, call_status, pb, run_crunchd, wait_for)

MODS = os.environ.get("CRUNCHD_MODULES") or os.path.join(REPO, "t", "modules")

if not os.path.exists(os.path.join(MODS, "version1.so")):
    pytest.skip("test modules not built (make check builds them into %s)" % MODS,
                allow_module_level=True)


def mod(name):
    return os.path.join(MODS, name + ".so")


def modules(*entries):
    """modules = ( ... ); from (path, config) pairs or paths."""
    out = []
    for e in entries:
        path, cfg = e if isinstance(e, tuple) else (e, None)
        s = '{ path = "%s";' % path
        if cfg is not None:
            s += ' config = "%s";' % cfg
        out.append(s + " }")
    return "modules = ( %s );" % ", ".join(out)


def reload(d, expect, extra):
    rx = re.compile(expect)
    count = lambda: sum(1 for l in d.log_text().splitlines() if rx.search(l))  # noqa: E731
    before = count()
    d.extra = extra
    d.write_conf()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: count() > before, what="a log line matching %r" % expect)


def gen_workers(d, gen):
    return [p for p, t in d.children().items()
            if t.startswith("crunchd: worker") and t.endswith(" gen %d" % gen)]


# -- success ---------------------------------------------------------------------

def test_module_handler_run_and_stream_with_its_config(crunchd):
    d = crunchd(extra=modules((mod("version1"), "hello world")))
    assert d.run("version", "").output == b"v1 config=hello world"
    # built-ins still there, first in the table
    assert d.run("echo", "x").output == b"x"
    tasks = [pb.Task(id=i, handler="version" if i % 2 else "echo", payload=b"p%d" % i)
             for i in range(20)]
    res = {r.id: r for r in d.stub().RunStream(iter(tasks), timeout=RPC_TIMEOUT)}
    assert len(res) == 20
    for i, r in res.items():
        assert r.code == 0
        assert r.output == (b"v1 config=hello world" if i % 2 else b"p%d" % i)


def test_module_error_status_and_message(crunchd):
    d = crunchd(extra=modules(mod("version1")))
    code, details, _, _ = call_status(d.run, "fail_code", "9")
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    assert "fail_code: failing with 9 as asked" in details
    # a return value that is no status code is reported, not passed on
    code, details, _, _ = call_status(d.run, "fail_code", "99")
    assert code == grpc.StatusCode.UNKNOWN and "not a status code" in details, details


def test_unknown_handler_lists_module_handlers(crunchd):
    d = crunchd(extra=modules(mod("version1")))
    code, details, _, _ = call_status(d.run, "nope", "")
    assert code == grpc.StatusCode.NOT_FOUND
    assert "version" in details and "echo" in details, details


def test_stats_lists_module_handlers(crunchd):
    d = crunchd(extra=modules(mod("version1")))
    d.run("version", "")
    s = d.stub().Stats(pb.StatsRequest(), timeout=WAIT)
    names = [h.name for h in s.handlers]
    assert names[:4] == ["echo", "prime", "gcd", "sleep"] and "version" in names, names


def test_example_sha256_module(crunchd):
    d = crunchd(extra=modules(mod("sha256")))
    for data in [b"", b"abc", b"x" * 1000, bytes(range(256)) * 3]:
        assert d.run("sha256", data).output == hashlib.sha256(data).hexdigest().encode()
        assert d.run("sha256_raw", data).output == hashlib.sha256(data).digest()


def test_example_sha256_rounds_config(crunchd):
    d = crunchd(extra=modules((mod("sha256"), "rounds=3")))
    h = b"abc"
    for _ in range(3):
        h = hashlib.sha256(h).digest()
    assert d.run("sha256_raw", "abc").output == h


# -- loading errors at -t and at start ---------------------------------------------

ERRORS = [
    ("missing", r"module .*/missing\.so cannot be loaded: .*No such file.*; check "
                r"modules\[\d\]\.path"),
    ("nosym", r"module .*/nosym\.so does not export crunchd_module; see crunchd/module\.h"),
    ("badabi", r"module .*/badabi\.so was built for module ABI 42, this crunchd is ABI 1; "
               r"rebuild it"),
    ("dup", r"module .*/dup\.so: handler \"echo\" has the name of a built-in handler"),
]


def write_conf(tmp_path, extra):
    path = tmp_path / "crunchd.conf"
    path.write_text('listen = [ "127.0.0.1:1" ];\nerror_log = "stderr";\n%s\n' % extra)
    return str(path)


@pytest.mark.parametrize("name,msg", ERRORS, ids=[e[0] for e in ERRORS])
def test_load_error_at_t_and_at_start(tmp_path, name, msg):
    conf = write_conf(tmp_path, modules(mod(name)))
    r = run_crunchd(["-t", "-c", conf, "-p", str(tmp_path)])
    assert r.returncode == 1, r
    assert re.search(r"\[emerg\] .*crunchd\.conf:3: " + msg, r.stderr), r.stderr
    assert "test failed" in r.stderr
    r = run_crunchd(["-c", conf, "-p", str(tmp_path)])
    assert r.returncode == 1, r
    assert re.search(msg, r.stderr), r.stderr


def test_duplicate_across_modules_names_both(tmp_path):
    conf = write_conf(tmp_path, modules(mod("version1"), mod("version2")))
    r = run_crunchd(["-t", "-c", conf, "-p", str(tmp_path)])
    assert r.returncode == 1
    assert re.search(r"version2\.so: handler \"version\" is also defined by module "
                     r".*version1\.so \(modules\[0\]\)", r.stderr), r.stderr


def test_relative_path_resolves_against_the_prefix(tmp_path):
    shutil.copy(mod("sha256"), tmp_path / "sha.so")
    conf = write_conf(tmp_path, modules("sha.so"))
    r = run_crunchd(["-t", "-c", conf, "-p", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    r = run_crunchd(["-T", "-c", conf, "-p", str(tmp_path)])
    assert 'path = "%s"' % (tmp_path / "sha.so") in r.stdout, r.stdout


def test_config_errors_in_the_modules_block(tmp_path):
    for extra, msg in [
            ('modules = ( { config = "x"; } );', r"modules\[0\]: no path"),
            ('modules = ( { path = "a.so"; conf = "x"; } );', r"unknown key \"conf\""),
            ('modules = [ "a.so" ];', r"modules: expected a list of groups")]:
        r = run_crunchd(["-t", "-c", write_conf(tmp_path, extra), "-p", str(tmp_path)])
        assert r.returncode == 1 and re.search(msg, r.stderr), (extra, r.stderr)


# -- reload -------------------------------------------------------------------------

@pytest.mark.parametrize("name,msg", ERRORS, ids=[e[0] for e in ERRORS])
def test_load_error_at_reload_is_refused(crunchd, name, msg):
    d = crunchd(workers=1, extra=modules(mod("version1")))
    d.allow_log(r"reload refused")
    workers = set(d.workers().values())
    reload(d, r"reload refused", modules(mod("version1"), mod(name)))
    assert re.search(msg, d.log_text()), d.log_text()[-2000:]
    assert set(d.workers().values()) == workers, "the old workers serve on"
    assert d.run("version", "").output == b"v1 config="
    assert d.run("echo", "still").output == b"still"
    s = d.stub().Stats(pb.StatsRequest(), timeout=WAIT)
    assert s.generation == 1 and s.reloads_failed == 1


def test_rebuilt_module_takes_effect_on_sighup(crunchd, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    so = lib / "version.so"
    shutil.copy(mod("version1"), so)
    d = crunchd(workers=2, extra=modules((str(so), "a")))
    assert d.run("version", "").output == b"v1 config=a"
    code, _, _, _ = call_status(d.run, "version2", "")
    assert code == grpc.StatusCode.NOT_FOUND
    # replace the file (a new inode, as install does), then HUP
    shutil.copy(mod("version2"), lib / "version.so.new")
    os.rename(lib / "version.so.new", so)
    reload(d, r"reload: generation 2: ", modules((str(so), "b")))
    wait_for(lambda: len(gen_workers(d, 2)) == 2 and not gen_workers(d, 1),
             what="the workers of generation 2 only")
    # wait until every worker serves the new file
    wait_for(lambda: all(d.run("version", "", id=i).output == b"v2 config=b"
                         for i in range(6)), what="v2 everywhere")
    assert d.run("version2", "").output == b"v2 config=b"


def test_removed_handler_fails_cleanly_after_reload(crunchd):
    d = crunchd(workers=1, extra=modules(mod("version1")))
    assert d.run("version", "").output == b"v1 config="
    reload(d, r"reload: generation 2: ", modules(mod("sha256")))
    wait_for(lambda: len(gen_workers(d, 2)) == 1 and not gen_workers(d, 1),
             what="the worker of generation 2 only")
    code, details, _, _ = call_status(d.run, "version", "")
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    assert "handler version is not loaded by this configuration" in details, details
    assert d.run("sha256", "abc").output == hashlib.sha256(b"abc").hexdigest().encode()
    # and it comes back, at the same place in the table, with the module
    reload(d, r"reload: generation 3: ", modules(mod("version1"), mod("sha256")))
    wait_for(lambda: len(gen_workers(d, 3)) == 1 and not gen_workers(d, 2),
             what="the worker of generation 3 only")
    assert d.run("version", "").output == b"v1 config="
    names = [h.name for h in d.stub().Stats(pb.StatsRequest(), timeout=WAIT).handlers]
    assert names.count("version") == 1, names


# -- init -----------------------------------------------------------------------------

def test_slow_init_delays_only_its_own_worker(crunchd, tmp_path):
    marker = tmp_path / "slow-marker"
    d = crunchd(workers=2, extra=modules((mod("slowinit"), "%s:4000" % marker)))
    t0 = time.monotonic()
    # one worker sleeps 4 s in init; the other serves at once
    wait_for(marker.exists, what="a worker in init")
    workers = set()
    for i in range(6):
        r = d.run("slowinit", "", id=i)
        assert r.output == b"ready"
        workers.add(r.worker)
    assert time.monotonic() - t0 < 3.0, "calls waited for the slow init"
    assert len(workers) == 1, workers
    wait_for(lambda: d.wait_log(r"worker \d of generation 1 started") and
             d.log_text().count("of generation 1 started") >= 2, what="both workers up")


def test_init_failure_exits_2_and_is_not_respawned(crunchd):
    d = crunchd(workers=1, start=False, extra=modules((mod("slowinit"), "fail")))
    d.allow_log(r"init failed \(returned 7\)")
    d.allow_log(r"a fatal error at start .*will not be respawned")
    d.allow_log(r"no worker can start; stopping")
    d.start(wait=False)
    assert d.proc.wait(WAIT) == 1, "no worker can serve: the master stops"
    log = d.log_text()
    assert re.search(r"module .*slowinit\.so: init failed \(returned 7\) with config "
                     r"\"fail\"", log), log
    assert re.search(r"worker 0 \(pid \d+\) exited with (code|status) 2: a fatal error", log) \
        or "will not be respawned" in log, log
    assert log.count("started worker 0") == 1, "not respawned"


# -- the other test modules ----------------------------------------------------------

def test_alloc_module(crunchd):
    d = crunchd(workers=1, extra=modules(mod("alloc")))
    assert d.run("alloc", "16").output == b"allocated 16 MiB"


def test_exit_module_fails_the_task_and_the_worker_is_replaced(crunchd):
    d = crunchd(workers=1, extra=modules(mod("exit")))
    d.allow_log(r"worker 0 .*exited with (code|status) 5")
    (old,) = d.workers().values()
    code, details, _, _ = call_status(d.run, "exit", "5", id=3)
    assert code == grpc.StatusCode.ABORTED, (code, details)
    assert "5" in details, details
    wait_for(lambda: list(d.workers().values()) not in ([], [old]), what="a new worker")
    assert d.run("echo", "after").output == b"after"
