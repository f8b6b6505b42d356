#!/usr/bin/env bash
# Create or refresh .venv at the repository root with the Python test peers
# (tests/requirements.txt: pyzmq, python-signedjson, fedmsg, moksha.hub, prometheus_client, ...).
#
# Idempotent: when .venv/.requirements.sha256 matches the hash of tests/requirements.txt
# (and of the interpreter it was made with), nothing is installed again.
#
# Environment:
#   PYTHON=/path/to/python3   interpreter to build the venv from (default: python3 on PATH)
#   HARK_VENV=/path           venv location (default: <repo>/.venv)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HARK_VENV:-$repo/.venv}"
requirements="$repo/tests/requirements.txt"
stamp="$venv/.requirements.sha256"

log() { printf 'setup-venv: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
        log "need root to run: $*"; return 1
    fi
}

# Pick an interpreter that can make venvs with pip (the venv and ensurepip modules).
has_venv() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }

python="${PYTHON:-}"
if [ -z "$python" ]; then
    python="$(command -v python3 || true)"
    if [ -z "$python" ] || ! has_venv "$python"; then
        if [ -x /usr/bin/python3 ] && has_venv /usr/bin/python3; then
            python=/usr/bin/python3
        fi
    fi
fi
if [ -z "$python" ] || ! has_venv "$python"; then
    # Debian splits venv/ensurepip into python3-venv; install it only when it is missing.
    if command -v apt-get >/dev/null && ! dpkg -s python3-venv >/dev/null 2>&1; then
        log "installing python3-venv with apt-get"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    if [ -z "$python" ] || ! has_venv "$python"; then
        python=/usr/bin/python3
    fi
    if ! has_venv "$python"; then
        log "no Python 3 with the venv module found (set PYTHON=...)"
        exit 1
    fi
fi

want="$( (cat "$requirements"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ] \
    && "$venv/bin/python" -c 'import zmq, signedjson, fedmsg, prometheus_client' >/dev/null 2>&1; then
    log "$venv is up to date"
    exit 0
fi

if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "removing broken $venv"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    "$python" -m venv "$venv"
fi

log "installing tests/requirements.txt into $venv"
rm -f "$stamp"
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$venv/bin/python" -m pip install --quiet --requirement "$requirements"

# Smoke test: every peer import, and the fedmsg-relay entry point's imports (psutil, moksha).
# (moksha prints a harmless "Cannot find qpid python module" on import, so stderr is only
# shown when the import fails.)
if ! smoke="$("$venv/bin/python" - 2>&1 <<'PY'
import zmq, nacl.signing, signedjson.key, signedjson.sign, fedmsg, fedmsg.consumers.relay, psutil
import moksha.hub, pkg_resources, prometheus_client.parser  # noqa: F401
PY
)"; then
    printf '%s\n' "$smoke" >&2
    log "the installed peers do not import"
    exit 1
fi
printf '%s\n' "$want" >"$stamp"
log "done ($("$venv/bin/python" -c 'import zmq, fedmsg; print("pyzmq", zmq.__version__, "libzmq", zmq.zmq_version())'))"
