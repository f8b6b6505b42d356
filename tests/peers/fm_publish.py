"""Publish fixture messages with fedora-messaging's own API (api.publish), as Fedora's
services do: each fixture (tests/data/amqp/*.json: {schema, topic, body}) becomes an
instance of its schema class from the installed schema packages (bodhi-messages,
koji-fedoramessaging-messages; "base.message" is fedora-messaging's own base class),
which validates the body before publishing.

Usage: fm_publish.py AMQP_URL FIXTURE.json...
Prints one line per message: "published <message id> <topic>".
"""

import json
import os
import sys
import tempfile


def main():
    url, fixtures = sys.argv[1], sys.argv[2:]
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(
        f'amqp_url = "{url}"\npublish_exchange = "amq.topic"\ntopic_prefix = ""\n'
        '[client_properties]\napp = "hark tests"\n'
    )
    conf.close()
    os.environ["FEDORA_MESSAGING_CONF"] = conf.name
    # Imported after the configuration is in place: fedora_messaging reads it on import.
    from fedora_messaging import api, message

    for path in fixtures:
        with open(path) as f:
            fixture = json.load(f)
        cls = message.get_class(fixture["schema"])
        msg = cls(topic=fixture["topic"], body=fixture["body"])
        msg.validate()
        api.publish(msg)
        print(f"published {msg.id} {msg.topic}", flush=True)
    os.unlink(conf.name)


if __name__ == "__main__":
    main()
