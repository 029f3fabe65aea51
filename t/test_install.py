# test_install.py: `make install DESTDIR=...` from the build tree lays out
# every file where the configured directories say: crunchd in $(sbindir),
# crunchctl in $(bindir), the configuration in $(sysconfdir)/crunchd/
# (crunchd.conf.default always, crunchd.conf only when absent), the manual
# pages in $(mandir); the installed crunchd names its default configuration
# file under $(sysconfdir); a second install keeps an edited crunchd.conf and
# `make uninstall` removes only what install put there.
#
# make runs with its own MAKEFLAGS and under a timeout. Installing only copies
# files out of the build tree, so a `make check` running alongside is not
# disturbed (everything is built by the time the tests run).

import filecmp
import os
import shutil
import subprocess

import pytest

from conftest import SRCDIR, WAIT, disarm_watchdog

BUILDDIR = os.environ.get("CRUNCHD_BUILDDIR")
MAKE_TIMEOUT = 300

DIRS = ("prefix", "bindir", "sbindir", "sysconfdir", "mandir", "libdir", "includedir",
        "pkglibdir")

PRINT_DIRS = "print-crunchd-install-dirs:\n" + "".join(
    "\t@echo '%s=$(%s)'\n" % (d, d) for d in DIRS)


def make_env():
    env = dict(os.environ)
    # Not the jobserver of the `make check` that runs us, nor its DESTDIR.
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "DESTDIR"):
        env.pop(k, None)
    env["LC_ALL"] = "C"
    return env


def make(*args, extra_makefile=None):
    cmd = ["make", "-C", BUILDDIR, "--no-print-directory"]
    if extra_makefile:
        cmd += ["-f", "Makefile", "-f", extra_makefile]
    cmd += list(args)
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=MAKE_TIMEOUT, env=make_env())
    except subprocess.TimeoutExpired:
        raise AssertionError("%s took longer than %ds" % (" ".join(cmd), MAKE_TIMEOUT))
    assert r.returncode == 0, "%s failed (%d):\n%s" % (" ".join(cmd), r.returncode,
                                                       r.stdout[-5000:])
    return r.stdout


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    if not BUILDDIR or not os.path.exists(os.path.join(BUILDDIR, "Makefile")):
        pytest.skip("CRUNCHD_BUILDDIR is not a configured build tree (run through make check)")
    mk = tmp_path_factory.mktemp("mk") / "print-dirs.mk"
    mk.write_text(PRINT_DIRS)
    out = make("print-crunchd-install-dirs", extra_makefile=str(mk))
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    for d in DIRS:
        assert got.get(d, "").startswith("/"), (d, out)
    return got


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "dest"
    d.mkdir()
    yield str(d)
    shutil.rmtree(str(d), ignore_errors=True)


def under(dest, path):
    return os.path.join(dest, path.lstrip("/"))


def expected_files(dirs):
    """What install must put there."""
    conf = os.path.join(dirs["sysconfdir"], "crunchd")
    man = dirs["mandir"]
    return {
        "sbin": os.path.join(dirs["sbindir"], "crunchd"),
        "bin": os.path.join(dirs["bindir"], "crunchctl"),
        "bench": os.path.join(dirs["bindir"], "crunch-bench"),
        "header": os.path.join(dirs["includedir"], "crunchd", "module.h"),
        "pkgconfig": os.path.join(dirs["libdir"], "pkgconfig", "crunchd-module.pc"),
        "module": os.path.join(dirs["pkglibdir"], "sha256.so"),
        "man1-bench": os.path.join(man, "man1", "crunch-bench.1"),
        "conf": os.path.join(conf, "crunchd.conf"),
        "conf.default": os.path.join(conf, "crunchd.conf.default"),
        "man8": os.path.join(man, "man8", "crunchd.8"),
        "man5": os.path.join(man, "man5", "crunchd.conf.5"),
        "man1": os.path.join(man, "man1", "crunchctl.1"),
    }


def test_make_install_layout(dirs, dest):
    disarm_watchdog()  # make has its own timeout
    make("install", "DESTDIR=" + dest)
    files = expected_files(dirs)
    for what, path in files.items():
        assert os.path.isfile(under(dest, path)), "%s: %s not installed" % (what, path)
    for what in ("sbin", "bin", "bench"):
        assert os.access(under(dest, files[what]), os.X_OK), files[what]
    shipped = os.path.join(SRCDIR, "conf", "crunchd.conf")
    assert filecmp.cmp(under(dest, files["conf"]), shipped, shallow=False)
    assert filecmp.cmp(under(dest, files["conf.default"]), shipped, shallow=False)
    for what in ("man8", "man5", "man1"):
        src = os.path.join(SRCDIR, "doc", os.path.basename(files[what]))
        assert filecmp.cmp(under(dest, files[what]), src, shallow=False), what
    # Nothing lands outside DESTDIR's prefix tree.
    for top, _, names in os.walk(dest):
        for n in names:
            p = "/" + os.path.relpath(os.path.join(top, n), dest)
            assert p.startswith(dirs["prefix"] + "/") or \
                p.startswith(dirs["sysconfdir"] + "/"), p

    # The installed daemon: its default configuration file is the installed
    # one's path (without DESTDIR, as it will be used), and that file is valid.
    crunchd = under(dest, files["sbin"])
    r = subprocess.run([crunchd, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=WAIT)
    assert r.returncode == 0, r.stdout
    assert "default configuration file: %s\n" % files["conf"] in r.stdout, r.stdout
    r = subprocess.run([crunchd, "-t", "-c", under(dest, files["conf"]), "-p", dest],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=WAIT)
    assert r.returncode == 0 and "test is successful" in r.stdout, r.stdout
    r = subprocess.run([under(dest, files["bin"]), "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=WAIT)
    assert "crunchctl" in r.stdout, r.stdout

    # A second install keeps the admin's crunchd.conf, refreshes the default.
    conf = under(dest, files["conf"])
    with open(conf, "a") as f:
        f.write("# edited by the admin\nworkers = 3;\n")
    with open(under(dest, files["conf.default"]), "a") as f:
        f.write("# stale\n")
    out = make("install", "DESTDIR=" + dest)
    assert "keeping the existing" in out, out
    with open(conf) as f:
        assert "edited by the admin" in f.read()
    assert filecmp.cmp(under(dest, files["conf.default"]), shipped, shallow=False)

    # Uninstall removes what install put there, and keeps the edited file.
    make("uninstall", "DESTDIR=" + dest)
    for what, path in files.items():
        if what != "conf":
            assert not os.path.exists(under(dest, path)), "%s left by uninstall" % path
    assert os.path.isfile(conf), "uninstall removed an edited crunchd.conf"
