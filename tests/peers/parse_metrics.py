"""Parse a Prometheus text exposition (stdin) with prometheus_client's own parser, the one
Prometheus's Python ecosystem uses, and print what it understood as JSON: one object per
family with its type, help and samples. Used by tests/metrics.rs; a parse error exits
non-zero with the parser's message."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = []
    for family in text_string_to_metric_families(text):
        families.append(
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value}
                    for s in family.samples
                ],
            }
        )
    json.dump(families, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
