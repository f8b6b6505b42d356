"""Consume with fedora-messaging's own consumer (api.consume), as Fedora's services do, and
print what arrives: one JSON line per message, {topic, id, body, headers, severity}.

Usage: fm_consume.py AMQP_URL QUEUE COUNT
QUEUE is an existing durable queue (the test declares and binds it, so nothing published
before this consumer starts is missed). Exits 0 after COUNT messages.
"""

import json
import os
import sys
import tempfile


def main():
    url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(
        f'amqp_url = "{url}"\n'
        '[client_properties]\napp = "hark tests"\n'
        f'[queues."{queue}"]\ndurable = true\nauto_delete = false\nexclusive = false\n'
        "arguments = {}\n"
    )
    conf.close()
    os.environ["FEDORA_MESSAGING_CONF"] = conf.name
    # Imported after the configuration is in place: fedora_messaging reads it on import.
    from fedora_messaging import api, config, exceptions

    seen = []

    def callback(message):
        seen.append(message.id)
        line = {
            "topic": message.topic,
            "id": message.id,
            "body": message.body,
            "headers": message._headers,
            "severity": message.severity,
        }
        print(json.dumps(line, sort_keys=True), flush=True)
        if len(seen) >= count:
            raise exceptions.HaltConsumer(exit_code=0, requeue=False)

    try:
        api.consume(callback, bindings=[], queues=config.conf["queues"])
    except exceptions.HaltConsumer as e:
        os.unlink(conf.name)
        sys.exit(e.exit_code)
    os.unlink(conf.name)


if __name__ == "__main__":
    main()
