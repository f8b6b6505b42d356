#!/usr/bin/env python3
"""Submit Laniakea events the way a Laniakea module does.

The event is built exactly like `laniakea.msgstream.event_msg.create_event_message`
(tag, uuid1, format "1.0", naive `datetime.now().isoformat()`, data), signed with
python-signedjson, and sent as one frame from a pyzmq DEALER (`create_submit_socket`), the JSON
serialized with Laniakea's `json_compact_dump`.

Laniakea never reads a reply; hark's relay sends an ack frame, which `--ack` waits for and prints.

Slow-joiner handshake: with `--go-file`, warm-up events (tag `--warmup-tag`) are sent every
`--warmup-interval` seconds until that file exists, then the real events are sent.

stdout: one line per real event, {"sent": <event>, "frame": "<the JSON text sent>"}, then with
--ack one {"ack": <ack object>} line per real event.
Exit status: 0 done, 2 timeout, 3 unexpected ack.
"""

import argparse
import datetime
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

import signedjson.key  # noqa: E402
import signedjson.sign  # noqa: E402
import zmq  # noqa: E402


def create_event_message(sender, tag, data, key):
    msg = {
        "tag": tag,
        "uuid": str(uuid.uuid1()),
        "format": "1.0",
        "time": datetime.datetime.now().isoformat(),
        "data": data,
    }
    return signedjson.sign.sign_json(msg, sender, key)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", required=True, help="relay submit endpoint (ROUTER)")
    p.add_argument("--keyfile", help="Laniakea secret keyfile (metadata.id, ed.signing-key)")
    p.add_argument("--seed", default=peerlib.MATRIX_SEED, help="base64 Ed25519 seed (without --keyfile)")
    p.add_argument("--signer", default="test-signer", help="signer name (without --keyfile)")
    p.add_argument("--tag", required=True)
    p.add_argument("--data", default="{}", help="event data, JSON")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--ack", action="store_true", help="wait for and print the relay's ack of each event")
    p.add_argument("--expect-status", help="with --ack: exit 3 unless every ack has this status")
    p.add_argument("--go-file", help="send warm-up events until this file exists")
    p.add_argument("--warmup-tag", default="_lk.warmup.ping")
    p.add_argument("--warmup-interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=20.0, help="overall bound in seconds")
    args = p.parse_args()

    signer, seed = args.signer, args.seed
    if args.keyfile:
        signer, _verify, seed = peerlib.read_laniakea_keyfile(args.keyfile)
        if not signer or not seed:
            peerlib.fail(1, "%s: no metadata.id or ed.signing-key" % args.keyfile)
    key = signedjson.key.decode_signing_key_base64("ed25519", "0", seed)
    data = json.loads(args.data)
    deadline = peerlib.Deadline(args.timeout)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(args.connect)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    def drain_acks():
        while poller.poll(0):
            sock.recv_multipart()

    if args.go_file:
        n = 0
        while not os.path.exists(args.go_file):
            if deadline.expired():
                peerlib.fail(peerlib.EXIT_TIMEOUT, "no go file %s after %d warm-up events" % (args.go_file, n))
            n += 1
            warm = create_event_message(signer, args.warmup_tag, {"n": n}, key)
            sock.send_string(peerlib.json_compact_dump(warm))
            drain_acks()
            time.sleep(args.warmup_interval)
        peerlib.note("warm-up done after", n, "events")
        drain_acks()

    sent = []
    for i in range(args.count):
        event = create_event_message(signer, args.tag, data, key)
        frame = peerlib.json_compact_dump(event)
        sock.send_string(frame)
        sent.append(event["uuid"])
        peerlib.emit({"sent": event, "frame": frame})

    status = 0
    if args.ack:
        waiting = set(sent)
        while waiting:
            if not poller.poll(deadline.left_ms()):
                peerlib.fail(peerlib.EXIT_TIMEOUT, "no ack for %s" % sorted(waiting))
            frames = sock.recv_multipart()
            try:
                ack = json.loads(frames[-1])
            except ValueError:
                peerlib.fail(peerlib.EXIT_ASSERT, "ack is not JSON: %r" % frames)
            if ack.get("uuid") not in waiting:
                continue  # a late ack of a warm-up event
            waiting.discard(ack["uuid"])
            peerlib.emit({"ack": ack, "nframes": len(frames)})
            if args.expect_status and ack.get("status") != args.expect_status:
                status = peerlib.EXIT_ASSERT
    sock.close()
    ctx.term()
    sys.exit(status)


if __name__ == "__main__":
    main()
