#!/bin/bash
# `make fuzz`: build the fuzz targets with cargo-afl (AFL++ instrumentation on the stable
# toolchain) and run each for FUZZ_SECONDS (default 60) at nice 19, one after the other;
# with FUZZ_EXECS=N a target stops after about N executions, if that comes first.
# FUZZ_TARGETS picks some ("frames topics"). Prints executions and crashes per target;
# copies each crash to fuzz/crashes/<target>/ (commit it with the fix: tests/prop_fuzz_corpus.rs
# replays it) and exits 1 if there was any. State is kept in fuzz/out/ (not committed), and
# a second run resumes from it. docs/testing.md records the totals.
set -euo pipefail
cd "$(dirname "$0")"
CARGO=${CARGO:-cargo}
SECONDS_EACH=${FUZZ_SECONDS:-60}
EXECS=()
if [ -n "${FUZZ_EXECS:-}" ]; then EXECS=(-E "$FUZZ_EXECS"); fi
TARGETS=${FUZZ_TARGETS:-frames canonical rules templates topics dpkg amqp http}
CARGO_AFL_VERSION=0.18.2

if ! $CARGO afl --version 2>/dev/null | grep -q "$CARGO_AFL_VERSION"; then
    $CARGO install cargo-afl --version "$CARGO_AFL_VERSION" --locked
fi
# Builds AFL++ and its runtime once per rustc. When they are already built, cargo-afl says
# so and exits non-zero: that alone stays quiet; any other failure shows its output and stops.
if ! config_log=$($CARGO afl config --build 2>&1); then
    if ! grep -q "was already built" <<<"$config_log"; then
        echo "building AFL++ (cargo afl config --build) failed:" >&2
        echo "$config_log" >&2
        exit 1
    fi
fi
nice -n 19 $CARGO afl build --release --bins

# afl-fuzz reads these flags by presence, not value (`get_afl_env(..) ? 1 : 0`): AFL_X=0
# switches X on. AFL_SKIP_BIN_CHECK stays unset, so afl-fuzz checks the binary and reads its
# persistent-mode signature (the script used to set it "=0", which skipped the check).
unset AFL_SKIP_BIN_CHECK
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    AFL_AUTORESUME=1 AFL_NO_AFFINITY=1
crashed=0
for t in $TARGETS; do
    mkdir -p out
    # hark's targets have coverage maps larger than afl-fuzz's default, which it refuses to
    # guess at ("AFL_MAP_SIZE is not set"): ask the target for its size.
    # The answer is not always enough: `canonical` says 6,275 and then "crashes" on every
    # seed (its edges land past the map), so never go below 256 KiB.
    map_size=$(AFL_DUMP_MAP_SIZE=1 "target/release/$t" </dev/null 2>/dev/null || true)
    if ! [[ $map_size =~ ^[0-9]+$ ]] || ((map_size < 262144)); then map_size=262144; fi
    export AFL_MAP_SIZE=$map_size
    # -t: a generous per-input limit (ms), so that a busy machine's slow first runs are not
    # taken for hangs.
    nice -n 19 $CARGO afl fuzz -i "corpus/$t" -o "out/$t" -V "$SECONDS_EACH" -t "${FUZZ_TIMEOUT_MS:-5000}" \
        "${EXECS[@]}" "target/release/$t" \
        >"out/$t.log" 2>&1 || { echo "$t: afl-fuzz failed, see fuzz/out/$t.log"; tail -20 "out/$t.log"; exit 1; }
    stats="out/$t/default/fuzzer_stats"
    execs=$(awk -F': *' '$1 ~ /^execs_done/ {print $2}' "$stats")
    crashes=$(awk -F': *' '$1 ~ /^saved_crashes/ {print $2}' "$stats")
    speed=$(awk -F': *' '$1 ~ /^execs_per_sec/ {print $2}' "$stats")
    echo "$t: $execs executions in total ($speed/s), $crashes crashes"
    if [ "${crashes:-0}" != 0 ]; then
        crashed=1
        mkdir -p "crashes/$t"
        for f in "out/$t/default/crashes/"id:*; do
            [ -f "$f" ] && cp "$f" "crashes/$t/$(sha1sum "$f" | cut -c1-16)"
        done
        echo "  copied to fuzz/crashes/$t/"
    fi
done
exit $crashed
