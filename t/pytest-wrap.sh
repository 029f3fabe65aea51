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

if command -v timeout >/dev/null 2>&1; then
    timeout -k 10 "$limit" "$PYTHON" -m pytest -q -ra -p no:cacheprovider "$@"
else
    "$PYTHON" -m pytest -q -ra -p no:cacheprovider "$@"
fi
rc=$?

case $rc in
    0 | 1) exit $rc ;;
    5) echo "pytest-wrap: no tests collected in $*: SKIP" >&2; exit 77 ;;
    124 | 137) echo "pytest-wrap: $* ran longer than ${limit}s; killed" >&2; exit 99 ;;
    *) echo "pytest-wrap: pytest exited with status $rc" >&2; exit 99 ;;
esac
