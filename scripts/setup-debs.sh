#!/usr/bin/env bash
# Install the Debian packages the tests run as real peers and servers (not Python peers:
# those are scripts/setup-venv.sh). Each line of NEEDED below is "command package why":
# the package is installed when the command is not on PATH.
#
# Idempotent: nothing happens when every command is already there. Without root (and
# without sudo -n) it says which packages are missing and exits 0: the tests that need them
# print SKIPPED, which is allowed on a developer's machine; CI runs as root, so there they
# always run.
set -euo pipefail

log() { printf 'setup-debs: %s\n' "$*" >&2; }

# command            package           used by
NEEDED=(
    "promtool         prometheus        tests/metrics.rs checks what /metrics serves"
    "gpg              gpg               tests/openpgp.rs makes throw-away OpenPGP keys"
    "gpg-agent        gpg-agent         tests/openpgp.rs signs through gpg's agent"
    "rabbitmq-server  rabbitmq-server   tests/amqp.rs runs a throw-away broker (/usr/lib/rabbitmq/bin/rabbitmq-server)"
    "amqp-consume     amqp-tools        benches/amqp_trigger.rs compares hark with amqp-consume"
    "openssl          openssl           tests/amqp.rs makes a throw-away CA for the TLS broker"
    "dnsmasq          dnsmasq-base      tests/discovery.rs serves SRV records on loopback"
    "chromium         chromium          tests/bus_page.rs opens the live bus page headless"
    "curl             curl              tests/http.rs, tests/webhooks.rs are the HTTP clients"
)

missing=()
for line in "${NEEDED[@]}"; do
    read -r cmd pkg _ <<<"$line"
    if ! command -v "$cmd" >/dev/null && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/lib/rabbitmq/bin/$cmd" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" = 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    log "no apt-get: install ${missing[*]} by hand to run the tests that need them"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root() { sudo -n "$@"; }
else
    log "not root: ${missing[*]} not installed; the tests that need them will be skipped"
    exit 0
fi
log "installing ${missing[*]} with apt-get"
# policy-rc.d exit 101 keeps the packages' own servers (prometheus, rabbitmq-server) from
# being started here: the tests start their own, unprivileged, on loopback. It is removed
# again whatever happens.
created_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "done"
