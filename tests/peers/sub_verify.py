#!/usr/bin/env python3
"""Subscribe like a Laniakea consumer (mirk, mailgun) and verify signatures with python-signedjson.

A pyzmq SUB connects to a publisher, subscribes to the given tag prefixes, and receives until
`--count` messages (warm-up messages excluded) have arrived. For every message it checks what
Laniakea's tests and consumers rely on: exactly 2 frames, frame 0 == the `tag` inside frame 1,
and that frame 1 is Laniakea's compact sorted JSON of itself; and it verifies the signature of
each `--key NAME=B64VERIFYKEY` signer with `signedjson.sign.verify_signed_json`.

stderr: `subscribed` once connected and subscribed.
stdout: one JSON line per message: {"warmup", "nframes", "frames" (as text), "tag_ok",
"canonical", "verified": {name: bool}, "errors": {name: reason}, "event"}.
Exit status: 0 done, 2 timeout, 3 a check failed (with --strict: also any listed signer that did
not verify).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

import signedjson.key  # noqa: E402
import signedjson.sign  # noqa: E402
import zmq  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", required=True, action="append", help="publisher endpoint (repeatable)")
    p.add_argument("--topic", action="append", default=[], help="subscription prefix (repeatable; default all)")
    p.add_argument("--count", type=int, default=1, help="messages to receive, warm-ups not counted")
    p.add_argument("--warmup-prefix", default="_lk.warmup.", help="frame-0 prefix of warm-up messages")
    p.add_argument("--key", action="append", default=[], metavar="NAME=B64", help="verify key of a signer")
    p.add_argument("--strict", action="store_true", help="exit 3 unless every listed signer verifies")
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()

    keys = {}
    for spec in args.key:
        name, _, b64 = spec.partition("=")
        keys[name] = signedjson.key.decode_verify_key_base64("ed25519", "0", b64)

    deadline = peerlib.Deadline(args.timeout)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for ep in args.connect:
        sock.connect(ep)
    for topic in args.topic or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
    warm_prefix = args.warmup_prefix.encode("utf-8")
    if args.topic and args.warmup_prefix:
        sock.setsockopt(zmq.SUBSCRIBE, warm_prefix)
    peerlib.note("subscribed", " ".join(args.connect))

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    status = 0
    got = 0
    while got < args.count:
        if not poller.poll(deadline.left_ms()):
            peerlib.fail(peerlib.EXIT_TIMEOUT, "received %d of %d messages" % (got, args.count))
        frames = sock.recv_multipart()
        warmup = bool(warm_prefix) and frames[0].startswith(warm_prefix)
        report = {"warmup": warmup, "nframes": len(frames), "frames": [peerlib.text(f) for f in frames]}
        checks_ok = len(frames) == 2
        event = None
        if checks_ok:
            try:
                event = json.loads(frames[1].decode("utf-8"))
            except ValueError as e:
                report["parse_error"] = str(e)
                checks_ok = False
        if event is not None:
            report["event"] = event
            report["tag_ok"] = isinstance(event, dict) and frames[0] == str(event.get("tag")).encode("utf-8")
            report["canonical"] = frames[1] == peerlib.json_compact_dump(event).encode("utf-8")
            checks_ok = checks_ok and report["tag_ok"]
            verified, errors = {}, {}
            for name, vk in keys.items():
                try:
                    signedjson.sign.verify_signed_json(event, name, vk)
                    verified[name] = True
                except Exception as e:  # SignatureVerifyException, KeyError, ...
                    verified[name] = False
                    errors[name] = "%s: %s" % (type(e).__name__, e)
            report["verified"] = verified
            report["errors"] = errors
            if args.strict and not warmup and not all(verified.values()):
                status = peerlib.EXIT_ASSERT
        peerlib.emit(report)
        if not checks_ok and not warmup:
            status = peerlib.EXIT_ASSERT
        if not warmup:
            got += 1
    sock.close()
    ctx.term()
    sys.exit(status)


if __name__ == "__main__":
    main()
