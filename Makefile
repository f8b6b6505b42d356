# hark developer entry points. CI runs .ci/run, which runs `make lint` then `make test`.
.DEFAULT_GOAL := test
.PHONY: venv test bench fmt lint corpus corpus-check

CARGO ?= cargo
VENV_PYTHON := $(CURDIR)/.venv/bin/python

# Python test peers (pyzmq, python-signedjson, fedmsg, fedmsg-relay) in .venv; idempotent.
venv:
	bash scripts/setup-venv.sh

# Unit, integration (interop with the Python peers included) and bench-smoke tests.
# cargo prints one `test result:` line per test binary; --no-fail-fast runs them all even
# after a failure (the exit status is still non-zero).
test: venv corpus-check
	HARK_TEST_PYTHON=$(VENV_PYTHON) $(CARGO) test --all-targets --no-fail-fast

bench:
	$(CARGO) bench

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
