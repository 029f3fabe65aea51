#!/bin/sh
# autogen.sh: make ./configure from a git checkout (installs build-aux/ and m4/ files).
set -e
cd "$(dirname "$0")"
autoreconf -fi
