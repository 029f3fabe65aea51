#!/bin/sh
# pytest-wrap.sh: run one pytest file under automake's test harness (PY_LOG_COMPILER).
#
# automake judges the file by our exit status: 0 PASS, 77 SKIP, 99 ERROR, any
# other FAIL. pytest's "no tests collected" (5) becomes SKIP, which CI counts as a
# failure (build-aux/ci-summary), so an empty or wholly skipped file never passes
# unnoticed. Internal errors, usage errors and interruptions become ERROR.
# The whole file runs under a wall-clock limit so a hang fails instead of
# blocking `make check`: CRUNCHD_TEST_FILE_TIMEOUT seconds (default 600).

: "${PYTHON:=python3}"
limit=${CRUNCHD_TEST_FILE_TIMEOUT:-600}

out=${TMPDIR:-/tmp}/pytest-wrap.$$
if command -v timeout >/dev/null 2>&1; then
    timeout -k 10 "$limit" "$PYTHON" -m pytest -q -ra -p no:cacheprovider "$@" >"$out" 2>&1
else
    "$PYTHON" -m pytest -q -ra -p no:cacheprovider "$@" >"$out" 2>&1
fi
rc=$?
cat "$out"
# Under CI a skipped test is a failure: a check that did not run must not
# look like a pass (install what it needs in .ci/run instead).
if [ -n "${CI:-}" ] && [ "$rc" -eq 0 ] && grep -q '^SKIPPED' "$out"; then
    echo "pytest-wrap: tests were skipped under CI: FAIL" >&2
    rc=1
fi
rm -f "$out"

case $rc in
    0 | 1) exit $rc ;;
    5) echo "pytest-wrap: no tests collected in $*: SKIP" >&2; exit 77 ;;
    124 | 137) echo "pytest-wrap: $* ran longer than ${limit}s; killed" >&2; exit 99 ;;
    *) echo "pytest-wrap: pytest exited with status $rc" >&2; exit 99 ;;
esac
