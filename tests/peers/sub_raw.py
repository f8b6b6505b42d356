#!/usr/bin/env python3
"""Record raw ZeroMQ messages, byte for byte, as base64.

A pyzmq SUB either connects to a publisher (`--connect`, a subscriber of a relay) or binds
(`--bind`, standing where a fedmsg relay's inbound socket would, so that active fedmsg
publishers connect to it). It subscribes to everything (or `--topic` prefixes) and receives
until `--count` messages whose frame 0 does not start with `--warmup-prefix` have arrived.

stderr: `subscribed` once connected or bound.
stdout: one JSON line per message: {"warmup": bool, "topic": frame 0 as text,
"frames_b64": [base64 of every frame]}.
Exit status: 0 done, 2 timeout.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

import zmq  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", action="append", help="publisher endpoint to connect to (repeatable)")
    where.add_argument("--bind", action="append", help="endpoint to bind (repeatable)")
    p.add_argument("--topic", action="append", default=[], help="subscription prefix (repeatable; default all)")
    p.add_argument("--count", type=int, default=1, help="messages to receive, warm-ups not counted")
    p.add_argument("--warmup-prefix", default="", help="frame-0 prefix of warm-up messages (not counted)")
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()

    deadline = peerlib.Deadline(args.timeout)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for ep in args.bind or []:
        sock.bind(ep)
    for ep in args.connect or []:
        sock.connect(ep)
    for topic in args.topic or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
    warm_prefix = args.warmup_prefix.encode("utf-8")
    if args.topic and warm_prefix:
        sock.setsockopt(zmq.SUBSCRIBE, warm_prefix)
    peerlib.note("subscribed", " ".join(args.bind or args.connect))

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    got = 0
    while got < args.count:
        if not poller.poll(deadline.left_ms()):
            peerlib.fail(peerlib.EXIT_TIMEOUT, "received %d of %d messages" % (got, args.count))
        frames = sock.recv_multipart()
        warmup = bool(warm_prefix) and frames[0].startswith(warm_prefix)
        peerlib.emit({
            "warmup": warmup,
            "topic": peerlib.text(frames[0]),
            "frames_b64": [peerlib.b64(f) for f in frames],
        })
        if not warmup:
            got += 1
    sock.close()
    ctx.term()


if __name__ == "__main__":
    main()
