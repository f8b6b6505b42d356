#!/usr/bin/env bash
# Install the Debian packages the tests need that are not Python peers: promtool (package
# prometheus), which tests/metrics.rs runs on what /metrics serves.
#
# Idempotent: nothing happens when promtool is already on PATH. Without root (and without
# sudo -n) it says so and exits 0: tests/metrics.rs then prints SKIPPED for promtool, which
# is allowed on a developer's machine; CI runs as root, so there it always runs.
set -euo pipefail

log() { printf 'setup-debs: %s\n' "$*" >&2; }

if command -v promtool >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    log "no apt-get: install promtool (Prometheus) by hand to run the exposition check"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root() { sudo -n "$@"; }
else
    log "not root: promtool (package prometheus) not installed; its check will be skipped"
    exit 0
fi
log "installing prometheus (for promtool) with apt-get"
# policy-rc.d exit 101 keeps the package's own server from being started here: only the
# promtool binary is wanted. It is removed again whatever happens.
created_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null || { log "prometheus installed but no promtool on PATH"; exit 1; }
log "done ($(promtool --version 2>&1 | head -1))"
