"""Helpers shared by the Python test peers in this directory.

The peers stand in for Laniakea modules, Laniakea consumers and fedmsg publishers in hark's
interop tests. They print results as JSON lines on stdout, progress on stderr, and exit non-zero
when a bounded wait runs out.
"""

import base64
import json
import os
import sys
import time

EXIT_TIMEOUT = 2
EXIT_ASSERT = 3

MATRIX_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def json_compact_dump(obj):
    """Laniakea's `laniakea.utils.json.json_compact_dump` (what it signs and publishes)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def emit(obj):
    """One JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=True, sort_keys=True) + "\n")
    sys.stdout.flush()


def note(*words):
    """A progress line on stderr (the Rust tests wait for some of these)."""
    sys.stderr.write(" ".join(str(w) for w in words) + "\n")
    sys.stderr.flush()


def fail(code, message):
    note("error:", message)
    sys.exit(code)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def text(frame):
    return frame.decode("utf-8", "replace")


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left_ms(self):
        return max(0, int((self.end - time.monotonic()) * 1000))

    def expired(self):
        return time.monotonic() >= self.end


def read_laniakea_keyfile(path):
    """Parse a Laniakea keyfile the way `laniakea.msgstream.signing.keyfile_read_*` does:
    line based, sections `metadata` and `ed`, `key = "value"` lines indented."""
    signer = verify_key = signing_key = None
    section = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            if not line.startswith(" "):
                section = line.strip()
                continue
            if section == "metadata" and line.strip().startswith("id"):
                signer = line.split("=")[1].strip().strip('"')
            elif section == "ed" and line.strip().startswith("verify-key"):
                verify_key = line.split("=")[1].strip().strip('"')
            elif section == "ed" and line.strip().startswith("signing-key"):
                signing_key = line.split("=")[1].strip().strip('"')
    return signer, verify_key, signing_key


def hermetic_env_note():
    if os.path.isdir("/etc/fedmsg.d"):
        note("warning: /etc/fedmsg.d exists and will be merged into the fedmsg config")
