#!/usr/bin/env bash
# packaging/ci-check.sh: build the Debian package, lint it, install it on this machine, run
# both daemons from it as they run under systemd, fire the shipped hello rule end to end,
# and purge it again. Called by .ci/run after `make test` (also `make package-check`).
#
# Needs root on a Debian (bookworm or later) machine; systemd need not be running. It
# installs what it lacks (lintian, systemd's tools, cargo-deb at a pinned version), is
# idempotent, and cleans up after itself, also when a step fails: the package is purged,
# the daemons it started are stopped, the test key and temporary files are removed. The
# system user `hark` stays, as Debian leaves system users in place (docs/packaging.md).
#
# HARK_CI_ONLY=units runs only what the transient-unit checks need (build, install, the
# container, its run.unit and job-cgroup phases, purge), for working on them.
#
# It refuses to run when hark is already installed and it did not install it itself, so
# that it cannot purge a real installation; set HARK_CI_REPLACE_INSTALLED=1 to allow that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PKG=hark
MARKER=/var/lib/hark-ci-check.marker        # "this run (or an aborted one) installed hark"
TEST_SIGNER=ci-publisher
TEST_KEY_FILE=/etc/hark/keys/trusted/$TEST_SIGNER.key
TEST_GRANT="$TEST_SIGNER=_hark.example.**"
UNITS=/usr/lib/systemd/system
WAIT=30                                      # seconds, for every bounded wait
# The cargo profile of the package: release (what users get), or dev, which reuses the
# build `make test` has just made (.ci/run: the release build of every dependency is the
# slowest step of the check, and the checks do not depend on optimization).
DEB_PROFILE="${HARK_CI_PROFILE:-release}"
bin_dir="target/$DEB_PROFILE"
if [[ $DEB_PROFILE == dev ]]; then bin_dir=target/debug; fi

tmp="$(mktemp -d /tmp/hark-ci-check.XXXXXX)"
chmod 0755 "$tmp"
# systemd-analyze and systemd-nspawn leave these behind when systemd is not running (here
# /run may be an ordinary directory); remove the ones this run creates.
declare -a run_leftovers=()
for f in /run/systemd/systemd-units-load /run/systemd/nspawn; do
    [[ -e $f ]] || run_leftovers+=("$f")
done
declare -a started_pids=()   # runuser and listener processes this script started
declare -A phase_secs=()
declare -a phase_order=()
t_all=$SECONDS
t_phase=$SECONDS
phase_name=""

log() { printf '\n==> %s\n' "$*"; }
only_units() { [[ ${HARK_CI_ONLY:-} == units ]]; }
fail() {
    printf '\nFAIL: %s\n' "$*" >&2
    exit 1
}
phase() {
    if [[ -n $phase_name ]]; then
        phase_secs[$phase_name]=$((SECONDS - t_phase))
        phase_order+=("$phase_name")
    fi
    phase_name="$1"
    t_phase=$SECONDS
    log "$1"
}
print_timings() {
    if [[ -n $phase_name ]]; then
        phase_secs[$phase_name]=$((SECONDS - t_phase))
        phase_order+=("$phase_name")
        phase_name=""
    fi
    printf '\npackaging check timings:\n'
    for p in "${phase_order[@]}"; do
        printf '  %5ss  %s\n' "${phase_secs[$p]}" "$p"
    done
    printf '  %5ss  total\n' "$((SECONDS - t_all))"
}

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null || true)" == *" installed" ]] ||
        [[ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null || true)" == *"config-files" ]]
}

cleanup() {
    local status=$?
    set +e
    # Stop what this script started, by pid: TERM, a bounded wait, then KILL.
    for pid in "${started_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${started_pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n ${nspawn_pid:-} ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        [[ -n ${ct_leader:-} ]] && nsenter -t "$ct_leader" -a systemctl poweroff 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$nspawn_pid" 2>/dev/null
        wait "$nspawn_pid" 2>/dev/null
    fi
    if [[ -d $tmp/root ]] && mountpoint -q "$tmp/root"; then
        umount "$tmp/root" || umount -l "$tmp/root"
    fi
    if [[ $status -ne 0 && -d $tmp ]]; then
        for f in "$tmp"/*.log; do
            [[ -f $f ]] || continue
            printf '\n--- %s (last 40 lines) ---\n' "$f"
            tail -n 40 "$f"
        done
    fi
    if [[ -e $MARKER ]]; then
        if is_installed; then
            echo "cleanup: purging $PKG"
            dpkg --purge "$PKG" >/dev/null
        fi
        rm -f "$TEST_KEY_FILE"
        for d in /etc/hark/keys/trusted /etc/hark/keys /etc/hark/rules.d /etc/hark; do
            [[ -d $d ]] && rmdir --ignore-fail-on-non-empty "$d"
        done
        rm -f "$MARKER"
    fi
    # $tmp/root is a bind mount of / while the container runs: never delete through it.
    if [[ -d $tmp/root ]] && mountpoint -q "$tmp/root"; then
        echo "cleanup: $tmp/root is still mounted; leaving $tmp in place" >&2
    else
        rm -rf --one-file-system "$tmp"
    fi
    for f in "${run_leftovers[@]}"; do
        [[ -e $f ]] && rm -rf --one-file-system "$f"
    done
    print_timings
    if [[ $status -eq 0 ]]; then
        echo "packaging check: OK"
    else
        echo "packaging check: FAILED" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
# Killed: exit with the signal's status, so that cleanup reports the run as failed.
trap 'exit 143' TERM
trap 'exit 130' INT

# Wait up to $WAIT seconds for a command to succeed.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + WAIT))
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out after ${WAIT}s waiting for $what"
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------
phase "preconditions and tools"
[[ $(id -u) -eq 0 ]] || fail "run as root (it installs and purges the package)"
command -v dpkg >/dev/null || fail "not a Debian system"
if is_installed; then
    if [[ -e $MARKER || ${HARK_CI_REPLACE_INSTALLED:-} == 1 ]]; then
        echo "purging $PKG left by an earlier run"
        touch "$MARKER"
        dpkg --purge "$PKG" >/dev/null
    else
        fail "$PKG is already installed here and this check did not install it; refusing to purge it (HARK_CI_REPLACE_INSTALLED=1 overrides)"
    fi
fi
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v systemd-sysusers >/dev/null || missing+=(systemd)
command -v dpkg-parsechangelog >/dev/null || missing+=(dpkg-dev)
command -v python3 >/dev/null || missing+=(python3)
command -v runuser >/dev/null || missing+=(util-linux)
command -v man >/dev/null || missing+=(man-db)
if [[ ${HARK_CI_NSPAWN:-1} == 1 ]]; then
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
fi
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------
if [[ -n ${HARK_CI_DEB:-} ]]; then
    # For working on the later checks: a package built earlier (make deb), not rebuilt.
    phase "the package given in HARK_CI_DEB"
    [[ -f $HARK_CI_DEB ]] || fail "HARK_CI_DEB=$HARK_CI_DEB is not a file"
    deb="$HARK_CI_DEB"
else
    phase "make deb (profile $DEB_PROFILE)"
    make deb DEB_PROFILE="$DEB_PROFILE" </dev/null
    debs=(target/debian/"${PKG}"_*.deb)
    [[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || fail "expected one target/debian/${PKG}_*.deb, got: ${debs[*]}"
    deb="${debs[0]}"
fi
version="$(dpkg-deb -f "$deb" Version)"
arch="$(dpkg-deb -f "$deb" Architecture)"
[[ -n ${HARK_CI_DEB:-} || $(basename "$deb") == "${PKG}_${version}_${arch}.deb" ]] || fail "unexpected file name $deb"
echo "built $deb ($(du -h "$deb" | cut -f1))"

# ---------------------------------------------------------------------------------------
if ! only_units; then
phase "static checks"
changelog_version="$(dpkg-parsechangelog -l packaging/changelog -S Version)"
[[ $changelog_version == "$version" ]] ||
    fail "packaging/changelog is at $changelog_version but the package is $version: add a changelog entry (dch -c packaging/changelog -v $version)"
cmp -s packaging/hark.yaml target/assets/hark.yaml ||
    fail "packaging/hark.yaml differs from the built-in defaults; run: cp target/assets/hark.yaml packaging/hark.yaml ($(diff packaging/hark.yaml target/assets/hark.yaml | head -20))"
ctl="$tmp/control"
dpkg-deb -e "$deb" "$ctl"
for script in postinst postrm prerm; do
    [[ -f $ctl/$script ]] || fail "no $script in the package"
    sh -n "$ctl/$script" || fail "$script: shell syntax"
    if grep -q '#DEBHELPER#' "$ctl/$script"; then fail "$script: #DEBHELPER# was not replaced"; fi
done
grep -q 'systemd-sysusers' "$ctl/postinst" || fail "postinst does not create the user"
grep -q 'deb-systemd-helper' "$ctl/postrm" || fail "postrm lacks the systemd purge section"
[[ -f $ctl/md5sums ]] || fail "no md5sums"
if command -v shellcheck >/dev/null; then
    shellcheck -s sh packaging/debian/postinst packaging/debian/postrm packaging/add-md5sums.sh
    shellcheck packaging/ci-check.sh
fi
diff <(sort "$ctl/conffiles") <(printf '/etc/hark/hark.yaml\n/etc/hark/rules.d/README\n') ||
    fail "conffiles differ from the expected list"
dpkg-deb -c "$deb" >"$tmp/contents"
expect_in_deb() { # MODE PATH
    grep -qE "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \./${2#/}\$" "$tmp/contents" ||
        fail "package lacks $2 with mode $1"
}
expect_in_deb -rwxr-xr-x /usr/bin/hark
expect_in_deb -rw-r--r-- /etc/hark/hark.yaml
expect_in_deb -rw-r--r-- /etc/hark/rules.d/README
expect_in_deb -rw-r--r-- /usr/share/hark/rules.d/10-hello.yaml
expect_in_deb -rwxr-xr-x /usr/share/hark/scripts/matrix-notify
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-relay.service
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-trigger.service
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-spool-flush.service
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-spool-flush.timer
expect_in_deb -rw-r--r-- /usr/lib/sysusers.d/hark.conf
expect_in_deb -rw-r--r-- /usr/share/man/man1/hark.1.gz
expect_in_deb -rw-r--r-- /usr/share/man/man1/hark-relay.1.gz
expect_in_deb -rw-r--r-- /usr/share/man/man1/hark-trigger.1.gz
expect_in_deb -rw-r--r-- /usr/share/man/man5/hark.yaml.5.gz
expect_in_deb -rw-r--r-- /usr/share/bash-completion/completions/hark
expect_in_deb -rw-r--r-- /usr/share/zsh/vendor-completions/_hark
expect_in_deb -rw-r--r-- /usr/share/fish/vendor_completions.d/hark.fish
expect_in_deb -rw-r--r-- /usr/share/doc/hark/copyright
expect_in_deb -rw-r--r-- /usr/share/doc/hark/changelog.Debian.gz
expect_in_deb -rw-r--r-- /usr/share/doc/hark/README.md
expect_in_deb -rw-r--r-- /usr/share/doc/hark/packaging.md
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-unit-starter.socket
expect_in_deb -rw-r--r-- /usr/lib/systemd/system/hark-unit-starter@.service
if grep -q "polkit" "$tmp/contents"; then fail "the package ships a polkit rule (run.unit goes through hark-unit-starter.socket)"; fi
for rule in rules.d/*.yaml; do expect_in_deb -rw-r--r-- "/usr/share/hark/rules.d/$(basename "$rule")"; done
for sub in $("$bin_dir/hark" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p' | grep -vx help); do
    expect_in_deb -rw-r--r-- "/usr/share/man/man1/hark-$sub.1.gz"
done
if grep -q 'generate-assets' "$tmp/contents"; then fail "the hidden generate-assets has a man page"; fi

# ---------------------------------------------------------------------------------------
phase "lintian"
# Errors and warnings fail (accepted ones are overridden in packaging/lintian-overrides,
# each with its reason); info and pedantic tags and the overrides are shown for the log.
# (--fail-on would count the overridden tags that --show-overrides lists, so the output
# is judged here instead.)
lintian --fail-on none --display-info --pedantic --show-overrides "$deb" >"$tmp/lintian.raw" 2>&1 ||
    fail "lintian did not run: $(tail -5 "$tmp/lintian.raw")"
grep -v '^running with root privileges' "$tmp/lintian.raw" | tee "$tmp/lintian.out"
if grep -qE '^(E|W):' "$tmp/lintian.out"; then
    fail "lintian reports errors or warnings (fix them, or override them with a reason in packaging/lintian-overrides and docs/packaging.md)"
fi
echo "lintian: $(grep -c '^E:' "$tmp/lintian.out" || true) error(s), $(grep -c '^W:' "$tmp/lintian.out" || true) warning(s), $(grep -c '^[IP]:' "$tmp/lintian.out" || true) info/pedantic, $(grep -c '^O:' "$tmp/lintian.out" || true) overridden"
fi # only_units

# ---------------------------------------------------------------------------------------
phase "install"
snapshot() { # what a package may leave behind: every path under these trees
    find /etc /usr /var/lib /var/spool /srv /opt -xdev \
        -path /var/lib/dpkg -prune -o -path /var/lib/apt -prune -o -path /var/cache -prune \
        -o -path /var/lib/systemd/deb-systemd-helper-enabled -prune \
        -o -path "$MARKER" -prune -o -print 2>/dev/null | LC_ALL=C sort
}
snapshot >"$tmp/before"
touch "$MARKER"
dpkg -i "$deb" 2>&1 | tee "$tmp/dpkg-install.out"
is_installed || fail "dpkg -i did not install $PKG"

# ---------------------------------------------------------------------------------------
phase "installed files, user and permissions"
check_stat() { # PATH OWNER:GROUP MODE
    [[ -e $1 ]] || fail "$1 is missing"
    local got
    got="$(stat -c '%U:%G %a' "$1")"
    [[ $got == "$2 $3" ]] || fail "$1 is $got, expected $2 $3"
}
getent passwd hark >/dev/null || fail "no user hark"
getent group hark >/dev/null || fail "no group hark"
uid="$(id -u hark)"
((uid < 1000)) || fail "hark is not a system user (uid $uid)"
shell="$(getent passwd hark | cut -d: -f7)"
[[ $shell == */nologin ]] || fail "hark has a login shell: $shell"
check_stat /usr/bin/hark root:root 755
check_stat /etc/hark root:root 755
check_stat /etc/hark/hark.yaml root:root 644
check_stat /etc/hark/rules.d root:root 755
check_stat /etc/hark/keys root:root 755
check_stat /etc/hark/keys/trusted root:root 755
check_stat /etc/hark/keys/secret root:hark 750
check_stat /etc/hark/keys/secret/relay.key_secret root:hark 640
check_stat /etc/hark/keys/secret/relay.key root:root 644
check_stat /var/lib/hark hark:hark 750
check_stat /var/lib/hark/piuparts root:root 755
check_stat /var/spool/hark root:hark 2770
check_stat /usr/share/hark/scripts/matrix-notify root:root 755
relay_signer="$(sed -n 's/^ *id = "\(.*\)"$/\1/p' /etc/hark/keys/secret/relay.key | head -1)"
[[ $relay_signer == "$(uname -n | cut -d. -f1)-relay" ]] || fail "relay key id is '$relay_signer'"
check_stat "/etc/hark/keys/trusted/$relay_signer.key" root:root 644
cmp -s /etc/hark/keys/secret/relay.key "/etc/hark/keys/trusted/$relay_signer.key" ||
    fail "the trusted copy of the relay key differs"
runuser -u hark -- test -r /etc/hark/keys/secret/relay.key_secret || fail "user hark cannot read the relay key"
runuser -u nobody -- test -r /etc/hark/keys/secret/relay.key_secret && fail "user nobody can read the relay key"
dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q ' /etc/hark/hark.yaml ' || fail "hark.yaml is not a conffile"
dpkg --verify "$PKG" || fail "dpkg --verify"
# Every helper a shipped rule runs from /usr/share/hark exists and is executable.
while read -r helper; do
    [[ -x $helper ]] || fail "a shipped rule runs $helper, which is not installed"
done < <(grep -ho '/usr/share/hark/scripts/[A-Za-z0-9._-]*' /usr/share/hark/rules.d/*.yaml | sort -u)
sh -n /usr/share/hark/scripts/matrix-notify
# Man pages and completions work where they were installed.
man -w hark-relay >/dev/null || fail "man hark-relay"
MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z /usr/share/man/man1/hark.1.gz 2>&1 >/dev/null |
    (! grep .) || fail "man reports problems in hark.1"
man -w hark.yaml >/dev/null || fail "man hark.yaml"
MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z /usr/share/man/man5/hark.yaml.5.gz 2>&1 >/dev/null |
    (! grep .) || fail "man reports problems in hark.yaml.5"
bash -c 'source /usr/share/bash-completion/completions/hark && complete -p hark' >/dev/null ||
    fail "bash completion does not register"
# The installed rules load and pass their own tests (the daemons load hark.yaml below).
(cd / && runuser -u hark -- hark rules check) || fail "hark rules check on the installed rules"
# Units: systemd-analyze verify must be silent; print the sandbox exposure for the log.
verify_out="$(systemd-analyze verify "$UNITS/hark-relay.service" "$UNITS/hark-trigger.service" \
    "$UNITS/hark-spool-flush.service" "$UNITS/hark-spool-flush.timer" "$UNITS/hark-unit-starter.socket" 2>&1)" ||
    fail "systemd-analyze verify: $verify_out"
[[ -z $verify_out ]] || fail "systemd-analyze verify: $verify_out"
for unit in hark-relay hark-trigger; do
    systemd-analyze security --offline=true --no-pager "$UNITS/$unit.service" 2>/dev/null |
        tail -n 1 | sed "s/^/$unit: /"
done
[[ -L /etc/systemd/system/multi-user.target.wants/hark-relay.service ]] || fail "hark-relay.service is not enabled"
[[ -L /etc/systemd/system/multi-user.target.wants/hark-trigger.service ]] || fail "hark-trigger.service is not enabled"
[[ -L /etc/systemd/system/timers.target.wants/hark-spool-flush.timer ]] || fail "hark-spool-flush.timer is not enabled"
[[ -L /etc/systemd/system/sockets.target.wants/hark-unit-starter.socket ]] || fail "hark-unit-starter.socket is not enabled"

# ---------------------------------------------------------------------------------------
# A test signer the relay and the daemon trust, with a grant for the example topics given
# on the command line (the shipped hark.yaml stays untouched).
hark keygen --id "$TEST_SIGNER" --out "$tmp/keys" >/dev/null
# The signer the shipped piuparts rule wants (signed_by: [archive-master]); trusted only
# inside the container.
hark keygen --id archive-master --out "$tmp/keys" >/dev/null
install -m 0644 "$tmp/keys/$TEST_SIGNER.key" "$TEST_KEY_FILE"
if ! only_units; then
phase "daemons as under systemd (runuser -u hark, unit command lines, sd_notify)"
# Where systemd does run, postinst has started the services: make room for ours.
if [[ -d /run/systemd/system ]]; then
    systemctl stop hark-relay.service hark-trigger.service || true
fi
# sd_notify listeners: one datagram socket per daemon, messages logged one per line.
cat >"$tmp/notify.py" <<'EOF'
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(out, "a", buffering=1) as f:
    while True:
        f.write(s.recv(4096).decode(errors="replace").replace("\n", " ").strip() + "\n")
EOF
for d in relay trigger; do
    : >"$tmp/$d.notify"
    python3 "$tmp/notify.py" "$tmp/$d.sock" "$tmp/$d.notify" &
    started_pids+=($!)
done
wait_for "notify sockets" test -S "$tmp/relay.sock" -a -S "$tmp/trigger.sock"

exec_start() { sed -n 's/^ExecStart=//p' "$UNITS/$1.service"; }
notified() { grep -qx "$2" "$tmp/$1.notify"; }
count_notified() { grep -cx "$2" "$tmp/$1.notify" || true; }
child_of() { pgrep -P "$1" | head -1; }
has_child() { pgrep -P "$1" >/dev/null; }
declare -A daemon_pid=() runuser_pid=()
start_daemon() { # NAME (relay|trigger)
    local name="$1" argv
    read -ra argv <<<"$(exec_start "hark-$name")"
    [[ ${argv[0]} == /usr/bin/hark ]] || fail "unexpected ExecStart in hark-$name.service: ${argv[*]}"
    echo "hark-$name.service: ${argv[*]}  (+ --grant $TEST_GRANT)"
    # systemd starts services in / with NOTIFY_SOCKET set; so do we.
    (cd / && exec runuser -u hark -- env NOTIFY_SOCKET="$tmp/$name.sock" \
        "${argv[@]}" --grant "$TEST_GRANT" >"$tmp/$name.log" 2>&1) &
    runuser_pid[$name]=$!
    started_pids+=($!)
    wait_for "the $name process" has_child "${runuser_pid[$name]}"
    daemon_pid[$name]="$(child_of "${runuser_pid[$name]}")"
    [[ $(stat -c %U "/proc/${daemon_pid[$name]}") == hark ]] || fail "$name does not run as hark"
    wait_for "READY=1 from the $name (Type=notify)" notified "$name" READY=1
}
start_daemon relay
start_daemon trigger

# ---------------------------------------------------------------------------------------
phase "end to end: the shipped hello rule"
jobs_json() { runuser -u hark -- hark jobs list --state /var/lib/hark/state.db --json 2>/dev/null; }
hello_succeeded() {
    jobs_json | python3 -c '
import json, sys
jobs = [json.loads(l) for l in sys.stdin if l.strip()]
sys.exit(0 if any(j.get("rule") == "hello" and j.get("state") == "succeeded" for j in jobs) else 1)'
}
# The job ran /bin/echo with the rendered name, printed it, and its event carried both the
# test signer's and the relay's verified signatures (the generated key is trusted).
check_hello_job() {
    jobs_json | python3 -c '
import json, sys
relay = sys.argv[1]
jobs = [json.loads(l) for l in sys.stdin if l.strip()]
ok = [j for j in jobs if j.get("rule") == "hello" and j.get("state") == "succeeded"]
j = ok[0]
assert j["argv"] == ["/bin/echo", "hello, ci"], j["argv"]
assert j["exit_code"] == 0, j["exit_code"]
assert j["output_tail"] == "hello, ci\n", j["output_tail"]
signers = j["events"][0]["signers"]
assert "ci-publisher" in signers and relay in signers, signers
print("job %d: argv %s, exit 0, output %r, signers %s" % (j["id"], j["argv"], j["output_tail"], signers))
' "$relay_signer"
}
# The daemon subscribes asynchronously (ZeroMQ), so an event published right after READY
# can be missed: publish again (a new event) until the job shows up, within the bound.
deadline=$((SECONDS + WAIT))
published=0
next_publish=$SECONDS
until hello_succeeded; do
    ((SECONDS < deadline)) || fail "no succeeded hello job after ${WAIT}s ($published event(s) published)"
    if ((SECONDS >= next_publish)); then
        next_publish=$((SECONDS + 5))
        hark publish --config /etc/hark/hark.yaml --relay tcp://127.0.0.1:5571 \
            --key "$tmp/keys/$TEST_SIGNER.key_secret" --timeout 10s \
            _hark.example.hello --data '{"name": "ci"}' >>"$tmp/publish.log" 2>&1 ||
            fail "hark publish: $(tail -3 "$tmp/publish.log")"
        published=$((published + 1))
    fi
    sleep 0.5
done
echo "hello job succeeded ($published event(s) published)"
check_hello_job || fail "the hello job is not what the rule says"
# What `journalctl -u hark-trigger` shows: the command's output, logged by the daemon.
log_has_output() { grep -v 'argv=' "$tmp/trigger.log" | grep -q 'hello, ci'; }
wait_for "the job's output 'hello, ci' in the trigger's log" log_has_output
grep -v 'argv=' "$tmp/trigger.log" | grep -m1 'hello, ci'
# The packaged relay journals what it publishes, and the trigger hears its heartbeats.
[[ -s /var/lib/hark/journal.db ]] || fail "the relay wrote no journal at /var/lib/hark/journal.db"
[[ $(stat -c %U /var/lib/hark/journal.db) == hark ]] || fail "the journal is not owned by hark"
heard_heartbeat() { grep -q 'first heartbeat from relay' "$tmp/trigger.log"; }
wait_for "a relay heartbeat in the trigger's log" heard_heartbeat

# ---------------------------------------------------------------------------------------
phase "reload and stop as systemd does"
before="$(count_notified trigger READY=1)"
kill -HUP "${daemon_pid[trigger]}" # ExecReload=/bin/kill -HUP $MAINPID
wait_for "RELOADING=1 from the trigger" grep -q '^RELOADING=1 MONOTONIC_USEC=[0-9]*$' "$tmp/trigger.notify"
ready_count_above() { (($(count_notified trigger READY=1) > $1)); }
wait_for "READY=1 after the reload" ready_count_above "$before"
kill -0 "${daemon_pid[trigger]}" || fail "the trigger died on SIGHUP"
for name in trigger relay; do
    kill -TERM "${daemon_pid[$name]}" # KillMode=mixed: SIGTERM to the main process
done
for name in trigger relay; do
    wait_for "the $name to exit on SIGTERM" bash -c "! kill -0 ${daemon_pid[$name]} 2>/dev/null"
    rc=0
    wait "${runuser_pid[$name]}" || rc=$?
    [[ $rc -eq 0 ]] || fail "the $name exited with status $rc on SIGTERM"
done
notified trigger STOPPING=1 || fail "the trigger did not send STOPPING=1"
echo "notify messages: relay: $(paste -sd' ' "$tmp/relay.notify" | tr -s ' ')"
echo "notify messages: trigger: $(paste -sd' ' "$tmp/trigger.notify" | tr -s ' ')"
fi # only_units

# ---------------------------------------------------------------------------------------
# run.unit under a real systemd (used in the container below). Rules that run as root in
# transient units: a stand-in for piuparts in a narrow sandbox, a job that leaves a setsid
# grandchild ignoring SIGTERM behind and times out, and one that is cancelled.
setup_unit_rules() {
    ct mkdir -p /srv/hark-ci/out /etc/hark/ci
    ct sh -c 'cat >/etc/hark/ci/piuparts-standin && chmod 0755 /etc/hark/ci/piuparts-standin' <<'EOF'
#!/bin/sh
# Stands in for piuparts: root, and only /srv/hark-ci/out is writable.
out=/srv/hark-ci/out
id -u >"$out/uid"
cat >"$out/stdin"
if touch /etc/hark/ci/written-outside 2>/dev/null; then
    echo "wrote outside ReadWritePaths"
else
    echo "outside ReadWritePaths: refused"
fi
echo "stand-in ran as uid $(id -u)"
exit 7
EOF
    ct sh -c 'cat >/etc/hark/ci/escaper && chmod 0755 /etc/hark/ci/escaper' <<'EOF'
#!/bin/sh
# Leaves a grandchild in a session of its own that ignores SIGTERM, then hangs.
setsid sh -c 'trap "" TERM; echo $$ >/srv/hark-ci/out/escaper.pid; while :; do sleep 1; done' \
    </dev/null >/dev/null 2>&1 &
sleep 600
EOF
    # Stands in for piuparts under the shipped rule (60-piuparts.yaml, as installed).
    ct sh -c 'cat >/usr/sbin/piuparts && chmod 0755 /usr/sbin/piuparts' <<'EOF'
#!/bin/sh
# Stands in for piuparts: records who and where it ran, with which arguments.
{
    echo "uid=$(id -u)"
    echo "cwd=$(pwd)"
    for a in "$@"; do echo "arg=$a"; done
} >/var/lib/hark/piuparts/standin.out
if touch /etc/hark/ci/written-by-piuparts 2>/dev/null; then echo "wrote /etc"; else echo "/etc: read-only"; fi
if [ -e /root/hark-ci-marker ]; then echo "/root visible"; else echo "/root: hidden"; fi
echo "piuparts stand-in done"
EOF
    ct touch /root/hark-ci-marker # ProtectHome=true must hide it
    ct install -m 0644 /run/hark-ci-keys/archive-master.key /etc/hark/keys/trusted/archive-master.key
    ct sh -c 'cat >/etc/hark/rules.d/60-ci-units.yaml' <<'EOF'
rules:
  - name: ci-unit-root
    match: {topic: _hark.example.ci-unit}
    run:
      command: [/etc/hark/ci/piuparts-standin]
      timeout: 60s
      unit:
        user: root
        properties: {ProtectSystem: strict, ReadWritePaths: [/srv/hark-ci/out], PrivateTmp: true, NoNewPrivileges: true}
  - name: ci-unit-timeout
    match: {topic: _hark.example.ci-unit-timeout}
    run:
      command: [/etc/hark/ci/escaper]
      timeout: 3s
      grace: 2s
      unit: {user: root}
  - name: ci-unit-cancel
    match: {topic: _hark.example.ci-unit-cancel}
    run:
      command: [/bin/sleep, "600"]
      unit: {user: root}
EOF
    # Not in rules.d: a user hark.yaml's trigger.unit_users (default [root]) does not allow.
    ct sh -c 'cat >/etc/hark/ci/nobody.yaml' <<'EOF'
rules:
  - name: ci-unit-nobody
    match: {topic: _hark.example.ci-unit-nobody}
    run:
      command: [/bin/true]
      unit:
        user: nobody
EOF
    # A request as user hark could forge it: the unit's stdout/stderr, then the job.
    ct sh -c 'cat >/etc/hark/ci/forge-request' <<'EOF'
import array, json, os, socket, sys
rule, topic = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/hark/unit-starter.sock")
r, w = os.pipe()
s.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w, w]))])
event = json.dumps({"tag": topic, "uuid": "forged-1", "format": "1.0", "time": "2026-12-01T00:00:00Z", "data": {}})
request = {"job": 999998, "rule": rule, "attempt": 1, "reason": "event",
           "events": [{"uuid": "forged-1", "topic": topic, "signers": [], "json": event}]}
s.sendall(json.dumps(request).encode() + b"\n")
s.settimeout(30)
print(s.makefile().readline().strip())
EOF
    setup_cgroup_rules
}

# Plain jobs (no run.unit) under the packaged unit's Delegate=yes: a cgroup of their own.
setup_cgroup_rules() {
    ct install -d -o hark -g hark -m 0750 /var/lib/hark/ci-cgroup
    # A setsid grandchild that ignores SIGTERM and records its pid; then the leader hangs
    # (timeout) or exits 0 at once (linger).
    for kind in timeout linger; do
        ct sh -c "cat >/etc/hark/ci/cgroup-$kind && chmod 0755 /etc/hark/ci/cgroup-$kind" <<EOF
#!/bin/sh
out=/var/lib/hark/ci-cgroup
setsid sh -c 'trap "" TERM; echo \$\$ >'\$out'/$kind.pid.tmp; mv '\$out'/$kind.pid.tmp '\$out'/$kind.pid; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &
while [ ! -s \$out/$kind.pid ]; do sleep 0.1; done
[ $kind = linger ] && exit 0
sleep 600
EOF
    done
    ct sh -c 'cat >/etc/hark/rules.d/60-ci-cgroup.yaml' <<'EOF'
rules:
  - name: ci-cgroup-timeout
    match: {topic: _hark.example.ci-cgroup-timeout}
    run:
      command: [/etc/hark/ci/cgroup-timeout]
      timeout: 5s
      grace: 1s
  - name: ci-cgroup-linger
    match: {topic: _hark.example.ci-cgroup-linger}
    run:
      command: [/etc/hark/ci/cgroup-linger]
      timeout: 60s
      grace: 2s
EOF
}

# The newest job of RULE as JSON ("" if none), from hark jobs list --json.
ct_job() {
    ct hark jobs list --json 2>/dev/null | python3 -c '
import json, sys
jobs = [json.loads(l) for l in sys.stdin if l.strip()]
jobs = [j for j in jobs if j.get("rule") == sys.argv[1]]
print(json.dumps(max(jobs, key=lambda j: j["id"])) if jobs else "")' "$1"
}
job_field() { python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }
# Publish TOPIC (again every 5 s until RULE has a job: the subscription is asynchronous),
# then wait until that job is in STATE; prints the job's JSON.
ct_run_job() { # RULE TOPIC STATE [SIGNER DATA]
    local rule="$1" topic="$2" want="$3" job="" next=$SECONDS
    local signer="${4:-$TEST_SIGNER}" data="${5:-}"
    [[ -n $data ]] || data='{"probe": "stdin-probe-'"$rule"'"}'
    local deadline=$((SECONDS + WAIT))
    while :; do
        job="$(ct_job "$rule")"
        if [[ -z $job ]] && ((SECONDS >= next)); then
            next=$((SECONDS + 5))
            ct hark publish --key "/run/hark-ci-keys/$signer.key_secret" --timeout 10s \
                "$topic" --data "$data" >/dev/null || fail "hark publish $topic"
        fi
        [[ -n $job && $(job_field "$job" state) == "$want" ]] && break
        ((SECONDS < deadline)) || fail "rule $rule: no job in state $want after ${WAIT}s (last: ${job:-none}); $(ct journalctl -u hark-trigger --no-pager | tail -n 15)"
        sleep 0.3
    done
    printf '%s\n' "$job"
}
unit_gone() { # UNIT: not running (collected, or inactive)
    local state
    state="$(ct systemctl show -P ActiveState "$1" 2>/dev/null || true)"
    [[ $state == inactive || $state == failed || -z $state ]]
}
check_unit_jobs() {
    phase "under systemd: jobs as transient units (run.unit)"
    local job id unit show pid out
    # 0. As installed: the socket is root's, for group hark only; user hark cannot start
    #    a transient unit itself (no polkit grant), only hand a job to the starter.
    [[ $(ct stat -c '%U:%G %a %F' /run/hark/unit-starter.sock) == "root:hark 660 socket" ]] ||
        fail "/run/hark/unit-starter.sock is $(ct stat -c '%U:%G %a %F' /run/hark/unit-starter.sock), not root:hark 660 socket"
    if out="$(ct runuser -u hark -- systemd-run --no-ask-password --unit=hark-job-999999 /bin/true 2>&1)"; then
        fail "user hark started a transient unit by itself"
    fi
    echo "as installed: /run/hark/unit-starter.sock is root:hark 0660; user hark cannot start a unit itself: $out"
    # 1. root, a narrow sandbox, the event on stdin, the exit status and output tail.
    job="$(ct_run_job ci-unit-root _hark.example.ci-unit failed)"
    id="$(job_field "$job" id)"
    unit="$(job_field "$job" unit)"
    [[ $unit == "hark-job-$id.service" ]] || fail "job $id ran as unit '$unit', not hark-job-$id.service: $job"
    [[ $(job_field "$job" exit_code) == 7 ]] || fail "job $id: exit code is not 7: $job"
    [[ $(ct cat /srv/hark-ci/out/uid) == 0 ]] || fail "the stand-in did not run as root: uid $(ct cat /srv/hark-ci/out/uid)"
    ct grep -q '"stdin-probe-ci-unit-root"' /srv/hark-ci/out/stdin ||
        fail "the event was not on the unit's stdin: $(ct cat /srv/hark-ci/out/stdin)"
    ct test ! -e /etc/hark/ci/written-outside || fail "the unit wrote outside its ReadWritePaths"
    show="$(ct hark jobs show "$id")"
    for want in "  unit:     hark-job-$id.service (systemd; journalctl -u hark-job-$id.service)" "  exit:     7" \
        "    | outside ReadWritePaths: refused" "    | stand-in ran as uid 0"; do
        grep -qxF -- "$want" <<<"$show" || fail "hark jobs show $id lacks '$want':
$show"
    done
    echo "job $id ran as root in hark-job-$id.service: uid 0, the event on stdin, a write outside ReadWritePaths refused, exit 7 and the output tail in hark jobs show"
    # 2. A timeout stops the unit: systemd kills the cgroup, setsid grandchild included.
    job="$(ct_run_job ci-unit-timeout _hark.example.ci-unit-timeout timed_out)"
    id="$(job_field "$job" id)"
    pid="$(ct cat /srv/hark-ci/out/escaper.pid)" || fail "the timeout job's grandchild wrote no pid"
    if ct kill -0 "$pid" 2>/dev/null; then fail "job $id timed out but its setsid grandchild $pid still runs"; fi
    unit_gone "hark-job-$id.service" || fail "hark-job-$id.service is still active after the timeout"
    echo "job $id timed out: hark-job-$id.service stopped, its setsid grandchild (pid $pid, ignoring SIGTERM) is gone"
    # 3. Cancel stops the unit.
    job="$(ct_run_job ci-unit-cancel _hark.example.ci-unit-cancel running)"
    id="$(job_field "$job" id)"
    unit_active() { [[ $(ct systemctl show -P ActiveState "hark-job-$id.service") == active ]]; }
    wait_for "hark-job-$id.service to be active" unit_active
    ct runuser -u hark -- hark jobs cancel "$id" >/dev/null || fail "hark jobs cancel $id"
    ct_run_job ci-unit-cancel _hark.example.ci-unit-cancel cancelled >/dev/null
    unit_gone "hark-job-$id.service" || fail "hark-job-$id.service is still active after the cancel"
    echo "job $id cancelled: hark-job-$id.service stopped"
    # 4. A user hark.yaml does not allow is refused, at the user's file:line:col.
    if out="$(ct hark rules check --config /etc/hark/hark.yaml /etc/hark/ci/nobody.yaml 2>&1)"; then
        fail "hark rules check accepted run.unit.user nobody"
    fi
    grep -qF "/etc/hark/ci/nobody.yaml:7:15: error: run.unit.user nobody is not in trigger.unit_users" <<<"$out" ||
        fail "hark rules check did not refuse user nobody at its file:line:col: $out"
    echo "run.unit.user nobody refused: $(grep -m1 -F 'nobody.yaml:7:15' <<<"$out")"
    # 5. What user hark can ask of the starter: only what root's rule files give. A forged
    #    request for a rule without run.unit, or with events its rule does not match, is
    #    refused (and logged); a user outside group hark cannot connect at all.
    for forged in hello:_hark.example.hello ci-unit-root:_hark.example.not-ci-unit; do
        out="$(ct runuser -u hark -- python3 /etc/hark/ci/forge-request "${forged%%:*}" "${forged#*:}" 2>&1)" ||
            fail "a forged request for ${forged%%:*} got no answer: $out"
        grep -q '^{"refused"' <<<"$out" || fail "the unit starter did not refuse a forged request for ${forged%%:*}: $out"
        echo "forged request for rule ${forged%%:*}: $out"
    done
    # By identifier, not -u: journald may not tell which unit a process that exited at
    # once belonged to.
    wait_for "the unit starter's refusal in the journal" bash -c \
        "nsenter -t $ct_leader -a journalctl --no-pager -o cat -t hark | grep -q 'refused: rule hello (.*) has no run.unit'"
    if [[ $(ct systemctl show -P ActiveState hark-job-999998.service 2>/dev/null) == active ]]; then
        fail "a forged request started hark-job-999998.service"
    fi
    if out="$(ct runuser -u nobody -- python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect("/run/hark/unit-starter.sock")' 2>&1)"; then
        fail "user nobody could connect to the unit starter"
    fi
    echo "user nobody cannot connect: $(tail -1 <<<"$out")"
    # 6. The shipped piuparts rule as installed: root, its workdir writable, the rest not.
    local upload='{"repo": "master", "suite": "landing", "upload_name": "hello_2.10-3_amd64", "is_new": false, "files": ["hello_2.10-3.dsc", "hello_2.10-3_amd64.deb"], "source_name": "hello", "source_version": "2.10-3"}'
    job="$(ct_run_job piuparts _lk.archive.package-upload-accepted succeeded archive-master "$upload")"
    id="$(job_field "$job" id)"
    [[ $(job_field "$job" unit) == "hark-job-$id.service" ]] || fail "the piuparts job did not run as a unit: $job"
    out="$(ct cat /var/lib/hark/piuparts/standin.out)" || fail "the piuparts stand-in wrote nothing in its workdir"
    for want in uid=0 cwd=/var/lib/hark/piuparts arg=--distribution=landing \
        "arg=--mirror=https://archive.example.org/master main" \
        arg=/srv/archive/master/done/hello_2.10-3_amd64.changes; do
        grep -qxF -- "$want" <<<"$out" || fail "the piuparts stand-in lacks '$want': $out"
    done
    show="$(ct hark jobs show "$id")"
    for want in "    | /etc: read-only" "    | /root: hidden" "    | piuparts stand-in done"; do
        grep -qxF -- "$want" <<<"$show" || fail "hark jobs show $id lacks '$want':
$show"
    done
    echo "the shipped piuparts rule ran in hark-job-$id.service as root, in /var/lib/hark/piuparts, /etc read-only and /root hidden"
}

check_job_cgroups() {
    phase "under systemd: a cgroup of its own for every job (Delegate=yes)"
    local mount svc main job id pid cg started finished
    mount="$(ct findmnt -n -t cgroup2 -o TARGET | head -1)"
    [[ -n $mount ]] || fail "no cgroup v2 mount in the container"
    svc="$mount/system.slice/hark-trigger.service"
    ct journalctl -u hark-trigger --no-pager -o cat | grep -qF "jobs: own cgroup under $svc (job-<id>, stopped with cgroup.kill)" ||
        fail "hark-trigger does not log that jobs get a cgroup under $svc: $(ct journalctl -u hark-trigger --no-pager -o cat | grep 'jobs: ' | tail -3)"
    main="$(ct systemctl show -P MainPID hark-trigger)"
    ct grep -qx "0::/system.slice/hark-trigger.service/daemon" "/proc/$main/cgroup" ||
        fail "the daemon (pid $main) is not in its leaf: $(ct cat "/proc/$main/cgroup")"
    echo "hark-trigger logs: jobs: own cgroup under $svc; the daemon runs in its leaf daemon"
    # 1. While the job runs, its setsid grandchild is in job-<id>; the timeout kills it
    #    (it ignores SIGTERM) and the cgroup is gone when the job is recorded.
    job="$(ct_run_job ci-cgroup-timeout _hark.example.ci-cgroup-timeout running)"
    id="$(job_field "$job" id)"
    wait_for "the timeout job's grandchild pid" ct test -s /var/lib/hark/ci-cgroup/timeout.pid
    pid="$(ct cat /var/lib/hark/ci-cgroup/timeout.pid)"
    cg="$(ct sed -n 's/^0:://p' "/proc/$pid/cgroup")"
    [[ $cg == "/system.slice/hark-trigger.service/job-$id" ]] ||
        fail "job $id's setsid grandchild $pid runs in '$cg', not in the job's cgroup"
    ct test -d "$svc/job-$id" || fail "$svc/job-$id does not exist while job $id runs"
    ct_run_job ci-cgroup-timeout _hark.example.ci-cgroup-timeout timed_out >/dev/null
    if ct kill -0 "$pid" 2>/dev/null; then fail "job $id timed out but its setsid grandchild $pid still runs"; fi
    if ct test -e "$svc/job-$id"; then fail "$svc/job-$id outlived its job"; fi
    echo "job $id: its setsid grandchild (pid $pid) ran in $cg; on the timeout it is gone (it ignored SIGTERM), and so is the cgroup"
    # 2. The leader exits 0 at once; the grandchild ignores SIGTERM, so it lives the grace
    #    (2s) on: the job is recorded only after it is gone.
    job="$(ct_run_job ci-cgroup-linger _hark.example.ci-cgroup-linger succeeded)"
    id="$(job_field "$job" id)"
    pid="$(ct cat /var/lib/hark/ci-cgroup/linger.pid)"
    if ct kill -0 "$pid" 2>/dev/null; then fail "job $id is recorded succeeded but its setsid grandchild $pid still runs"; fi
    if ct test -e "$svc/job-$id"; then fail "$svc/job-$id outlived its job"; fi
    started="$(job_field "$job" started)"
    finished="$(job_field "$job" finished)"
    ((finished - started >= 2000)) ||
        fail "job $id was recorded $((finished - started)) ms after its start, before its grandchild's 2s grace was over"
    echo "job $id: the leader exited 0 at once, the job was recorded $((finished - started)) ms later, once its setsid grandchild (pid $pid) was killed and its cgroup removed"
}

# ---------------------------------------------------------------------------------------
# The same installation under a real systemd: boot this machine's own root in a container
# (systemd-nspawn, a copy-on-write overlay and a private network, so the host is left as it
# is), where the services start at boot with their sandbox, and Type=notify, reload, stop
# and the hello rule are checked through systemctl and journalctl. HARK_CI_NSPAWN=0 skips
# this on hosts that cannot run containers.
if [[ ${HARK_CI_NSPAWN:-1} == 1 ]]; then
    phase "under systemd: boot the installed system in a container (systemd-nspawn)"
    mkdir "$tmp/root"
    # Read-only: the container writes to an overlay in memory, never to this machine.
    mount --bind / "$tmp/root"
    mount -o remount,bind,ro "$tmp/root"
    systemd-nspawn -q -D "$tmp/root" --volatile=overlay --private-network -M hark-ci-check \
        --register=no --keep-unit --link-journal=no --console=passive \
        --bind-ro="$tmp/keys:/run/hark-ci-keys" --boot >"$tmp/nspawn.log" 2>&1 &
    nspawn_pid=$!
    # nspawn's first child is a short-lived helper; the container's PID 1 is the child
    # that runs systemd.
    ct_init() { pgrep -P "$nspawn_pid" -x systemd >/dev/null; }
    wait_for "the container to start" ct_init
    ct_leader="$(pgrep -P "$nspawn_pid" -x systemd | head -1)"
    ct() { nsenter -t "$ct_leader" -a "$@"; }
    booted() {
        local state
        state="$(ct systemctl is-system-running 2>/dev/null || true)"
        [[ $state == running || $state == degraded ]]
    }
    WAIT=90 wait_for "systemd to finish booting in the container" booted
    for unit in hark-relay hark-trigger; do
        ct systemctl is-active --quiet "$unit" ||
            fail "$unit did not start at boot: $(ct systemctl status --no-pager "$unit" 2>&1 | tail -15)"
    done
    echo "both services started at boot (Type=notify: READY=1 reached systemd)"
    ct systemd-analyze security --no-pager hark-relay.service hark-trigger.service 2>/dev/null | tail -n 3
    ct systemd-analyze security --no-pager hark-unit-starter@0.service 2>/dev/null | tail -n 1 | sed 's/^/hark-unit-starter@.service: /' || true
    # The test grant, in the container's copy of hark.yaml only.
    ct sh -c "printf 'trust:\n  grants:\n    $TEST_SIGNER: [\"_hark.example.**\"]\n    archive-master: [\"_lk.archive.**\"]\n' >>/etc/hark/hark.yaml"
    setup_unit_rules
    ct systemctl restart hark-relay hark-trigger || fail "systemctl restart"
    ct_jobs() { ct hark jobs list --json 2>/dev/null; }
    if ! only_units; then
    # (The state file the container started from already holds the "hello, ci" job.)
    ct_hello_succeeded() { ct_jobs | grep '"rule":"hello"' | grep '"state":"succeeded"' | grep -q 'hello, systemd'; }
    deadline=$((SECONDS + WAIT))
    next_publish=$SECONDS
    until ct_hello_succeeded; do
        ((SECONDS < deadline)) || fail "no succeeded hello job under systemd after ${WAIT}s"
        if ((SECONDS >= next_publish)); then
            next_publish=$((SECONDS + 5))
            ct hark publish --key "/run/hark-ci-keys/$TEST_SIGNER.key_secret" --timeout 10s \
                _hark.example.hello --data '{"name": "systemd"}' >/dev/null ||
                fail "hark publish in the container"
        fi
        sleep 0.5
    done
    wait_for "'hello, systemd' in journalctl -u hark-trigger" \
        bash -c "nsenter -t $ct_leader -a journalctl -u hark-trigger --no-pager | grep -v argv= | grep -q 'hello, systemd'"
    ct journalctl -u hark-trigger --no-pager | grep -v argv= | grep -m1 'hello, systemd'
    # The native journal protocol: the job's output carries its rule as a field, at the
    # priority of its level (info is notice, 5).
    ct journalctl -u hark-trigger --no-pager -o json HARK_RULE=hello | grep 'hello, systemd' |
        grep -q '"PRIORITY":"5"' ||
        fail "journalctl HARK_RULE=hello has no 'hello, systemd' line at priority 5"
    ct journalctl -u hark-trigger --no-pager -p warning | grep -q 'hello, systemd' &&
        fail "an info line was filed as a warning"
    ct systemctl reload hark-trigger || fail "systemctl reload hark-trigger"
    ct systemctl is-active --quiet hark-trigger || fail "hark-trigger is not active after a reload"
    ct journalctl -u hark-trigger --no-pager | grep -q 'SIGHUP: reloading rules' || fail "the reload did not reach the daemon"
    fi # only_units
    check_unit_jobs
    check_job_cgroups
    phase "under systemd: a broken hark.yaml fails the unit once, with its line"
    ct cp /etc/hark/hark.yaml /run/hark-ci-hark.yaml.good
    ct sh -c 'printf "relay:\n  no_such_key: 1\n" >/etc/hark/hark.yaml'
    ct systemctl restart hark-relay 2>/dev/null && fail "hark-relay started with a broken hark.yaml"
    # A unit that is going to be restarted sits in auto-restart at once; this one must not.
    shown="$(ct systemctl show -p ActiveState -p SubState -p ExecMainStatus -p NRestarts hark-relay)"
    grep -qx 'ActiveState=failed' <<<"$shown" && grep -qx 'SubState=failed' <<<"$shown" &&
        grep -qx 'ExecMainStatus=2' <<<"$shown" && grep -qx 'NRestarts=0' <<<"$shown" ||
        fail "a broken hark.yaml should leave hark-relay failed with status 2, not restarting: $shown"
    ct journalctl -u hark-relay --no-pager -n 20 | grep -q '/etc/hark/hark.yaml:2:3: unknown field' ||
        fail "the relay's journal does not name hark.yaml:2:3: $(ct journalctl -u hark-relay --no-pager -n 5)"
    echo "broken hark.yaml: hark-relay failed with status 2, not restarted; the journal names line 2, column 3"
    ct cp /run/hark-ci-hark.yaml.good /etc/hark/hark.yaml
    ct systemctl restart hark-relay || fail "hark-relay did not start again with the good hark.yaml"
    phase "under systemd: stop and shut down"
    ct systemctl stop hark-trigger hark-relay || fail "systemctl stop"
    for unit in hark-relay hark-trigger; do
        result="$(ct systemctl show -P Result "$unit")"
        [[ $result == success ]] || fail "$unit stopped with result $result"
    done
    echo "reload and stop under systemd: OK"
    ct systemctl poweroff || true
    wait_for "the container to shut down" bash -c "! kill -0 $nspawn_pid 2>/dev/null"
    wait "$nspawn_pid" || true
    nspawn_pid=""
    umount "$tmp/root"
fi

# ---------------------------------------------------------------------------------------
if ! only_units; then
phase "reinstall keeps conffiles and the key"
key_sum="$(sha256sum /etc/hark/keys/secret/relay.key_secret)"
echo "# edited by ci-check" >>/etc/hark/hark.yaml
dpkg -i "$deb" >/dev/null
grep -q '^# edited by ci-check$' /etc/hark/hark.yaml || fail "reinstalling replaced the edited hark.yaml"
[[ "$(sha256sum /etc/hark/keys/secret/relay.key_secret)" == "$key_sum" ]] || fail "reinstalling replaced the relay key"
for f in /etc/hark/keys/secret/* /etc/hark/keys/secret/.[!.]*; do
    [[ -e $f ]] || continue
    case "$f" in */relay.key | */relay.key_secret) ;; *) fail "stray file $f" ;; esac
done
fi # only_units

# ---------------------------------------------------------------------------------------
phase "purge"
dpkg --purge "$PKG" 2>&1 | tee "$tmp/dpkg-purge.out"
is_installed && fail "$PKG is still installed"
# A key the admin added stays; everything the package or its scripts made is gone.
[[ -f $TEST_KEY_FILE ]] || fail "purge removed the admin-added key $TEST_KEY_FILE"
rm -f "$TEST_KEY_FILE"
for d in /etc/hark/keys/trusted /etc/hark/keys /etc/hark; do
    [[ -d $d ]] && rmdir "$d"
done
snapshot >"$tmp/after"
# The user and group stay (Debian practice); the account databases' backup files may
# appear the first time an account is added.
leftovers="$(comm -13 "$tmp/before" "$tmp/after" | grep -vxE '/etc/(passwd|group|shadow|gshadow)-|/etc/\.pwd\.lock' || true)"
[[ -z $leftovers ]] || fail "left behind after purge:
$leftovers"
for unit in hark-relay hark-trigger hark-spool-flush; do
    if find /var/lib/systemd/deb-systemd-helper-enabled -name "*$unit*" 2>/dev/null | grep -q .; then
        fail "$unit is still recorded as enabled"
    fi
    [[ -e /etc/systemd/system/multi-user.target.wants/$unit.service ]] && fail "$unit is still enabled"
    [[ -e /var/lib/systemd/deb-systemd-helper-masked/$unit.service ]] && fail "$unit is still masked"
done
getent passwd hark >/dev/null && echo "user hark kept (system users are not removed on purge)"
rm -f "$MARKER"
