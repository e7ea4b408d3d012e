#!/usr/bin/env bash
# Installs everything meshpipe needs on a fresh machine of this kind, then builds it into .venv.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# ISA-L (the gzip codec) is built from source by the isal-sys crate: it needs nasm and autotools.
need=()
command -v nasm >/dev/null || need+=(nasm)
command -v autoreconf >/dev/null || need+=(autoconf)
command -v aclocal >/dev/null || need+=(automake)
command -v libtoolize >/dev/null || need+=(libtool)
command -v make >/dev/null || need+=(make)
# The ledger tests (and a PostgreSQL ledger) need Debian's PostgreSQL server (initdb, pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# The web view's browser tests drive Debian's Chromium headless (Playwright, system executable).
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.7,<2"
# Installs the package (building the Rust extension in release mode) and the test/bench tools.
.venv/bin/python -m pip install -q -e ".[dev]"
