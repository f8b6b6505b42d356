#!/usr/bin/env python3
"""Publish with the real fedmsg library in active mode, as shell scripts and koji plugins do.

The script writes a private `fedmsg.d/` config into its working directory (a fresh temporary
directory unless `--workdir` is given), chdirs there, unsets VIRTUAL_ENV and points HOME at it,
so that only that config is read (fedmsg also merges /etc/fedmsg.d, ~/.fedmsg.d,
./fedmsg.d and $VIRTUAL_ENV/etc/fedmsg.d). The config: active=True, relay_inbound=[--relay-inbound],
a dummy `endpoints` entry, sign_messages and validate_signatures off, environment dev,
topic_prefix org.fedoraproject. Then it calls `fedmsg.publish(topic=..., modname=..., msg=...)`
`--count` times: fedmsg's PUB socket connects to the relay's inbound SUB.

`--also-connect EP` connects fedmsg's own PUB socket to more endpoints as well (for example a
`sub_raw.py --bind` capture), so every message fedmsg sends reaches those too, byte for byte,
from the same send call.

Slow-joiner handshake: with `--go-file`, warm-up messages (modname `--warmup-modname`) are
published every `--warmup-interval` seconds until that file exists.

stdout: one line per real message: {"sent": <envelope>, "frames_b64": [topic, body]} where the
frames are recomputed from the envelope with fedmsg's own encoder (what `publish` sends).
Exit status: 0 done, 2 timeout.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

CONFIG = """\
# Written by hark's tests/peers/fedmsg_active_publish.py
config = dict(
    endpoints={{"hark-test-dummy": ["tcp://127.0.0.1:9"]}},
    relay_inbound={relay_inbound!r},
    active=True,
    name="relay_inbound",
    environment="dev",
    topic_prefix="org.fedoraproject",
    sign_messages=False,
    validate_signatures=False,
    post_init_sleep={post_init_sleep!r},
    zmq_linger=5000,
    high_water_mark=0,
)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--relay-inbound", required=True, action="append", help="fedmsg relay_inbound endpoint")
    p.add_argument("--also-connect", action="append", default=[], help="extra endpoint for fedmsg's PUB socket")
    p.add_argument("--workdir", help="directory for fedmsg.d/ (default: a new temporary directory)")
    p.add_argument("--topic", default="interop.test")
    p.add_argument("--modname", default="hark")
    p.add_argument("--msg", default='{"hello": "world"}', help="message body, JSON")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--go-file", help="publish warm-up messages until this file exists")
    p.add_argument("--warmup-modname", default="harkwarmup")
    p.add_argument("--warmup-interval", type=float, default=0.1)
    p.add_argument("--post-init-sleep", type=float, default=0.0, help="fedmsg's post_init_sleep")
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()

    deadline = peerlib.Deadline(args.timeout)
    workdir = args.workdir or tempfile.mkdtemp(prefix="hark-fedmsg-")
    os.makedirs(os.path.join(workdir, "fedmsg.d"), exist_ok=True)
    with open(os.path.join(workdir, "fedmsg.d", "hark_test.py"), "w") as f:
        f.write(CONFIG.format(relay_inbound=args.relay_inbound, post_init_sleep=args.post_init_sleep))
    os.chdir(workdir)
    os.environ.pop("VIRTUAL_ENV", None)
    os.environ["HOME"] = workdir
    peerlib.hermetic_env_note()

    import fedmsg  # noqa: E402  (after the environment is set up)
    import fedmsg.encoding  # noqa: E402

    context = fedmsg.init()
    for ep in args.also_connect:
        context.publisher.connect(ep)
    peerlib.note("fedmsg publisher connected to", " ".join(args.relay_inbound + args.also_connect))

    if args.go_file:
        n = 0
        while not os.path.exists(args.go_file):
            if deadline.expired():
                peerlib.fail(peerlib.EXIT_TIMEOUT, "no go file %s after %d warm-up messages" % (args.go_file, n))
            n += 1
            fedmsg.publish(topic="ping", modname=args.warmup_modname, msg={"n": n})
            time.sleep(args.warmup_interval)
        peerlib.note("warm-up done after", n, "messages")

    body = json.loads(args.msg)
    sent = []
    for i in range(args.count):
        fedmsg.publish(topic=args.topic, modname=args.modname, msg=body, pre_fire_hook=sent.append)
    for envelope in sent:
        frames = [envelope["topic"].encode("utf-8"), fedmsg.encoding.dumps(envelope).encode("utf-8")]
        peerlib.emit({"sent": envelope, "frames_b64": [peerlib.b64(f) for f in frames]})
    # Closes the PUB socket; zmq_linger lets queued messages reach the relay first.
    fedmsg.destroy()


if __name__ == "__main__":
    main()
