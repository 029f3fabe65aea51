# test_manpages.py: every manual page in doc/ renders without a warning
# (groff -ww -man -z from groff-base, and `man --warnings -l` with
# MANWIDTH=80 when man-db is installed), is installed by `make install`
# (listed in dist_man_MANS), and says what the program and the configuration
# file really have: every crunchd option, every setting of conf/crunchd.conf.

import glob
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN, SRCDIR, WAIT

PAGES = sorted(glob.glob(os.path.join(SRCDIR, "doc", "*.[158]")))


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def test_there_are_pages():
    names = [os.path.basename(p) for p in PAGES]
    for want in ("crunchd.8", "crunchd.conf.5", "crunchctl.1"):
        assert want in names, names


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_groff_renders_without_warnings(page):
    groff = shutil.which("groff")
    assert groff, "groff is missing: apt-get install groff-base"
    r = subprocess.run([groff, "-ww", "-man", "-z", page], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=WAIT)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_man_renders_without_warnings(page):
    man = shutil.which("man")
    if man is None:
        pytest.skip("man-db is not installed (groff's check above still ran)")
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    r = subprocess.run([man, "--warnings", "-l", page], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=WAIT,
                       env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout) > 500


def test_every_page_is_installed():
    am = read(os.path.join(SRCDIR, "Makefile.am"))
    listed = set()
    for m in re.finditer(r"^dist_man_MANS\s*\+?=((?:.*\\\n)*.*)$", am, re.M):
        listed |= set(m.group(1).replace("\\\n", " ").split())
    for p in PAGES:
        assert "doc/" + os.path.basename(p) in listed, \
            "%s is not in dist_man_MANS" % os.path.basename(p)


def test_crunchd_8_names_every_option_and_signal():
    text = read(os.path.join(SRCDIR, "doc", "crunchd.8"))
    r = subprocess.run([BIN, "-h"], stdout=subprocess.PIPE, universal_newlines=True,
                       timeout=WAIT)
    opts = set(re.findall(r"^  -(\w)\b", r.stdout, re.M))
    assert opts >= set("cptTsvVh"), opts
    for o in opts:
        assert re.search(r"^\.BI? \\-%s\b" % o, text, re.M), "option -%s undocumented" % o
    for sig in ("SIGHUP", "SIGQUIT", "SIGTERM", "SIGINT", "SIGUSR1", "SIGTTIN",
                "SIGTTOU", "SIGCHLD", "NOTIFY_SOCKET"):
        assert sig in text, sig
    for action in ("reload", "stop", "quit", "reopen"):
        assert re.search(r"^\.B %s$" % action, text, re.M), action


def test_crunchd_conf_5_documents_every_setting():
    conf = read(os.path.join(SRCDIR, "conf", "crunchd.conf"))
    page = read(os.path.join(SRCDIR, "doc", "crunchd.conf.5"))
    settings = set(re.findall(r"^(?:# )?([a-z_]+) = ", conf, re.M))
    assert {"listen", "workers", "max_payload", "user"} <= settings, settings
    missing = [s for s in sorted(settings)
               if not re.search(r"^\.BR? %s( |$)" % re.escape(s), page, re.M)]
    assert not missing, "settings of conf/crunchd.conf missing from crunchd.conf.5: %s" \
        % ", ".join(missing)
