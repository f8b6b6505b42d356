"""The reference implementations hark's property tests compare against, in one long-lived
process (tests/prop_*.rs start it once per test binary and feed it many cases).

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout (ASCII
only, so no byte of a case can be lost in transit). Every answer is {"ok": ...} or
{"err": "..."}; a request this process cannot parse is an "err" too, never a crash.

    {"op": "canon", "text": T}
        CPython's json.dumps(json.loads(T), sort_keys=True, ensure_ascii=False,
        separators=(",", ":")), what Laniakea signs and publishes; "err" when CPython
        refuses T or would write NaN/Infinity (allow_nan=False).
    {"op": "sign", "event": T, "seed": B64, "name": N, "version": V}
        python-signedjson's sign_json over json.loads(T), answered as that canonical JSON.
    {"op": "verify", "event": T, "verify_key": B64, "name": N, "version": V}
        True when python-signedjson's verify_signed_json accepts N's signature.
    {"op": "dpkg", "pairs": [[A, B], ...]}
        dpkg --compare-versions for each pair: -1, 0 or 1 (A against B), null when
        dpkg refuses A or B.
"""

import base64
import json
import subprocess
import sys

from signedjson.key import decode_signing_key_base64, decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json


def canonical(obj):
    return json.dumps(
        obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def b64decode(text):
    return base64.b64decode(text + "=" * (-len(text) % 4))


def dpkg_compare(a, b):
    """-1, 0 or 1; None when dpkg refuses either version (exit status 2). The `--` keeps
    a version that starts with `-` from being read as an option."""

    def holds(op):
        rc = subprocess.run(
            ["dpkg", "--compare-versions", "--", a, op, b], stderr=subprocess.DEVNULL, check=False
        ).returncode
        if rc not in (0, 1):
            raise ValueError(rc)
        return rc == 0

    try:
        if holds("lt"):
            return -1
        return 0 if holds("eq") else 1
    except ValueError:
        return None


def answer(request):
    op = request["op"]
    if op == "canon":
        return canonical(json.loads(request["text"]))
    if op == "sign":
        key = decode_signing_key_base64("ed25519", request["version"], request["seed"])
        return canonical(sign_json(json.loads(request["event"]), request["name"], key))
    if op == "verify":
        key = decode_verify_key_bytes("ed25519:" + request["version"], b64decode(request["verify_key"]))
        try:
            verify_signed_json(json.loads(request["event"]), request["name"], key)
            return True
        except SignatureVerifyException:
            return False
    if op == "dpkg":
        return [dpkg_compare(a, b) for a, b in request["pairs"]]
    raise ValueError(f"unknown op {op!r}")


def main():
    # Laniakea's CPython refuses integers past 4300 digits; the reference writes any length,
    # so that the comparison is about formatting.
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    for line in sys.stdin:
        try:
            reply = {"ok": answer(json.loads(line))}
        except Exception as e:  # every refusal is an answer, the process goes on
            reply = {"err": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply, ensure_ascii=True) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
