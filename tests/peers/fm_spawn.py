"""A fedora-messaging consumer callback that runs a command per message, as a Fedora admin
without a trigger tool writes one: the message's body as JSON on the command's stdin, one
command at a time, the message acked once the callback returns.

benches/amqp_trigger.rs runs it as
    fedora-messaging --conf CONF consume --callback-file tests/peers/fm_spawn.py:spawn
with the command in HARK_BENCH_COMMAND (a JSON array: program and arguments).
"""

import json
import os
import subprocess

COMMAND = json.loads(os.environ["HARK_BENCH_COMMAND"])


def spawn(message):
    # Compact JSON, as hark and amqp-consume hand the body over.
    body = json.dumps(message.body, separators=(",", ":"))
    subprocess.run(COMMAND, input=body.encode(), check=False)
