# hark developer entry points. CI runs .ci/run, which runs `make lint` then `make test`.
.DEFAULT_GOAL := test
.PHONY: venv debs test bench fmt lint corpus corpus-check deb package-check fuzz

CARGO ?= cargo
VENV_PYTHON := $(CURDIR)/.venv/bin/python

# Python test peers (pyzmq, python-signedjson, fedmsg, fedmsg-relay) in .venv; idempotent.
venv:
	bash scripts/setup-venv.sh

# Debian packages the tests run as real peers (the table in scripts/setup-debs.sh says which
# and why). Installs only what is missing, and only as root; idempotent.
debs:
	bash scripts/setup-debs.sh

# Unit, integration (interop with the Python peers included) and bench-smoke tests.
# cargo prints one `test result:` line per test binary; --no-fail-fast runs them all even
# after a failure (the exit status is still non-zero).
test: venv debs corpus-check
	HARK_TEST_PYTHON=$(VENV_PYTHON) $(CARGO) test --all-targets --no-fail-fast

bench:
	$(CARGO) bench

# Coverage-guided fuzzing on stable Rust (cargo-afl, AFL++): every target in fuzz/ for
# FUZZ_SECONDS each (default 60) at nice 19; crashes land in fuzz/crashes/ (docs/testing.md).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) bash fuzz/run.sh

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Regenerate / verify tests/data/canonical/corpus.jsonl (CPython canonical JSON).
corpus: venv
	$(VENV_PYTHON) tests/data/canonical/generate.py

corpus-check: venv
	$(VENV_PYTHON) tests/data/canonical/generate.py --check

# Debian package: target/debian/hark_<version>_<arch>.deb (docs/packaging.md). The C parts
# (vendored libzmq, SQLite) get Debian's hardening flags. Man pages, completions and
# hark.yaml come from the freshly built binary (hark generate-assets); SOURCE_DATE_EPOCH
# from packaging/changelog keeps dates reproducible. cargo-deb writes no md5sums; the
# last step adds them.
CARGO_DEB_VERSION := 3.8.0
# --strip: the release profile keeps line tables, which cargo-deb would otherwise ship.
# `make deb CARGO_DEB_FLAGS=--dbgsym` puts them in a hark-dbgsym .ddeb instead.
CARGO_DEB_FLAGS ?= --strip
# DEB_PROFILE=dev packages the dev-profile binary `make test` has built already, so the CI
# check needs no release build (cargo-deb 3.8 warns that it does not support dev; it
# works). The package for users is the release one.
DEB_PROFILE ?= release
DEB_BIN := target/$(if $(filter dev,$(DEB_PROFILE)),debug,$(DEB_PROFILE))/hark
deb:
	@$(CARGO) deb --version 2>/dev/null | grep -qx 'cargo-deb $(CARGO_DEB_VERSION)' \
		|| $(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked
	CFLAGS="$$(dpkg-buildflags --get CFLAGS) $$(dpkg-buildflags --get CPPFLAGS)" \
	CXXFLAGS="$$(dpkg-buildflags --get CXXFLAGS) $$(dpkg-buildflags --get CPPFLAGS)" \
		$(CARGO) build --profile $(DEB_PROFILE)
	rm -rf target/assets target/debian
	SOURCE_DATE_EPOCH=$$(dpkg-parsechangelog -l packaging/changelog -S Timestamp) \
		$(DEB_BIN) generate-assets target/assets >/dev/null
	$(CARGO) deb --no-build --profile $(DEB_PROFILE) $(CARGO_DEB_FLAGS) --output target/debian/
	SOURCE_DATE_EPOCH=$$(dpkg-parsechangelog -l packaging/changelog -S Timestamp) \
		sh packaging/add-md5sums.sh target/debian/hark_*.deb

# Build the package, lint it, install it on this machine, run both daemons from it, fire
# the shipped hello rule end to end, and purge it again. Root only; CI runs it.
package-check:
	bash packaging/ci-check.sh
