#!/usr/bin/env python3
"""A relay that behaves like Laniakea's Lighthouse on the wire.

Lighthouse's EventsReceiver binds a ROUTER, reads msg[1] of each submission and never replies;
its EventsPublisher sends [tag, json] on a PUB (src/lighthouse/events_receiver.py,
events_publisher.py; reference/laniakea.md §4). It does not dedupe. This stand-in does the same
without the PostgreSQL that the real server needs, and prints one JSON line per submission
received: {"received": <uuid>}, so a test can count copies.

stderr: "lighthouse ready" once both sockets are bound.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

import zmq  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--submit", required=True, help="ROUTER endpoint to bind")
    p.add_argument("--publish", required=True, help="PUB endpoint to bind")
    p.add_argument("--timeout", type=float, default=60.0, help="exit after this many seconds")
    args = p.parse_args()

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(args.submit)
    pub = ctx.socket(zmq.PUB)
    pub.bind(args.publish)
    peerlib.note("lighthouse ready")
    deadline = peerlib.Deadline(args.timeout)
    while not deadline.expired():
        if not router.poll(min(deadline.left_ms(), 200)):
            continue
        msg = router.recv_multipart()
        if len(msg) < 2:
            continue
        text = str(msg[1], "utf-8", "replace")
        try:
            event = json.loads(text)
        except ValueError:
            continue
        peerlib.emit({"received": event.get("uuid")})
        pub.send_multipart([event.get("tag", "").encode(), text.encode()])
    sys.exit(0)


if __name__ == "__main__":
    main()
