#!/usr/bin/env python3
"""Generate corpus.jsonl: CPython's canonical JSON for a few thousand JSON texts.

hark's `event::canonical::to_vec` must be byte-identical to

    json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False,
               separators=(',', ':')).encode('utf-8')

for every JSON text, because that is what Laniakea signs and publishes. This script writes
one line per case:

    {"name": "...", "input": "<JSON text>", "expected_b64": "<base64 of the canonical bytes>"}

and, for about twenty objects, also the python-signedjson signature made with the Matrix
test seed (signer "test-signer", key id "ed25519:0"):

    ..., "signature": "<unpadded b64>", "signed_b64": "<base64 of the signed object, canonical>"

The corpus file is committed; this generator is only here so that it can be reproduced:

    .venv/bin/python tests/data/canonical/generate.py          # writes corpus.jsonl beside it
    .venv/bin/python tests/data/canonical/generate.py --check  # exits 1 if the file differs

Besides hand-written edge cases and a few hundred random nested values written out as varied,
non-canonical JSON text, the corpus holds "float-tie" cases: doubles whose shortest repr is an
exact tie between two digit strings (e.g. 2056678060867990.25 -> "2056678060867990.2"), which
Python breaks to the even digit and a shortest-digits formatter may break upwards.

Output is deterministic (seeded RNG, no clocks; generated with CPython 3.11). Lines are pure ASCII. Inputs are JSON as
RFC 8259 defines it: no NaN/Infinity tokens, no lone surrogates (CPython would accept them
on input, serde_json rejects them, and CPython cannot UTF-8 encode a lone surrogate anyway),
and nesting below serde_json's recursion limit of 128.
"""

import argparse
import base64
import copy
import json
import math
import os
import random
import struct
from decimal import Decimal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus.jsonl")

SEED_B64 = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SIGNER = "test-signer"
KEY_VERSION = "0"
RNG_SEED = 20240601


def canonical(obj):
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def b64(data):
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Hand-written cases
# ---------------------------------------------------------------------------------------------


def hand_cases():
    cases = []

    def add(name, text):
        cases.append((name, text))

    # Literals and empties.
    for text in ["true", "false", "null", "[]", "{}", '""', "0", "[[]]", "[{}]", '{"":{}}',
                 '{"a":[]}', "[true,false,null]", '{"t":true,"f":false,"n":null}']:
        add("literal", text)

    # Whitespace anywhere JSON allows it (space, tab, LF, CR).
    add("whitespace", ' \t\r\n{ "b" :\t[ 1 ,\n2 , { } , [ ] ] ,\r\n "a" : "x" } \n')
    add("whitespace", "\n\n  [\r\n\t1\r\n]\t")
    add("whitespace", '{  }')
    add("whitespace", '[ ]')
    add("whitespace", '  "top-level string"  ')
    add("whitespace", '\t-12.5e+3\n')

    # Every control character, raw escapes in input, short and \u forms.
    for cp in list(range(0x00, 0x20)) + [0x7F]:
        add("control/u%04x" % cp, '"\\u%04x"' % cp)
        add("control-upper/u%04X" % cp, '"\\u%04X"' % cp)
        add("control-in-key/u%04x" % cp, '{"k\\u%04xk":"v\\u%04x"}' % (cp, cp))
    add("control/all", json.dumps("".join(chr(c) for c in list(range(0x20)) + [0x7F])))
    add("control/short", r'"\b\f\n\r\t"')
    add("control/raw-del", '"\x7f"')
    add("escape/quote-backslash-slash", r'"\" \\ \/ / \\/ \"\""')
    add("escape/slash-key", r'{"a\/b":"c/d","a/b":1}')
    add("escape/backslash-u-text", r'"\\u0041 is not A"')
    add("escape/all-escaped-ascii", '"' + "".join("\\u%04x" % c for c in range(0x20, 0x7F)) + '"')

    # Line and paragraph separators, BOM, noncharacters, private use, U+FFFF, U+10FFFF.
    add("unicode/u2028-u2029-raw", '"a\u2028b\u2029c"')
    add("unicode/u2028-u2029-escaped", r'"a\u2028b\u2029c"')
    add("unicode/bom-zwj", r'"\ufeff\u200d\u200b"')
    add("unicode/specials", r'"\ufffd\ufffe\uffff\ue000\uf8ff"')
    add("unicode/max", r'"\udbff\udfff"')
    add("unicode/max-raw", '"\U0010ffff"')
    add("unicode/latin1", '"caf\u00e9 na\u00efve \u00ff \u0080 \u009f"')
    add("unicode/latin1-escaped", r'"caf\u00e9 \u0080\u009f\u00a0"')
    add("unicode/combining", '"e\u0301 \u00e9 \u1e9b\u0323"')

    # Non-BMP: raw, as surrogate-pair escapes (upper and lower case hex), in keys.
    add("nonbmp/raw-emoji", '"\U0001F600\U0001F4A9\U0001F9D1\u200d\U0001F680"')
    add("nonbmp/escaped-pair", r'"\ud83d\ude00"')
    add("nonbmp/escaped-pair-upper", r'"\uD83D\uDE00\uD83D\uDCA9"')
    add("nonbmp/escaped-in-key", r'{"\ud83d\ude00":1,"\ud83d\ude01":2,"\ud83c\udf89":3}')
    add("nonbmp/mixed", '"x\\ud83d\\ude00y\U0001F600z\U00020000\\ud840\\udc00"')
    add("nonbmp/math", '"\U0001D400\U0001D7FF \U0001F1E9\U0001F1EA"')

    # Key ordering by code point (UTF-16 order would put the emoji before U+FF21).
    add("keys/fullwidth-vs-emoji", '{"\U0001F600":1,"\uff21":2}')
    add("keys/fullwidth-vs-emoji-escaped", r'{"\ud83d\ude00":1,"\uff21":2,"\ue000":3,"\uffff":4}')
    add("keys/cjk", '{"\u672c":2,"\u65e5":1}')
    add("keys/case", '{"b":1,"B":2,"a":3,"A":4,"aB":5,"Ab":6,"ab":7,"AB":8}')
    add("keys/empty", '{"":0,"a":1," ":2,"\\u0000":3}')
    add("keys/prefix", '{"abc":1,"ab":2,"a":3,"abcd":4,"abd":5}')
    add("keys/digits", '{"10":1,"9":2,"1":3,"01":4,"-1":5,"1.0":6}')
    add("keys/mixed-script", '{"\u0416":1,"\u05d0":2,"\u0627":3,"\u3042":4,"\uac00":5,"z":6,"\u00e9":7,'
        '"e":8,"\U0001F600":9,"\U00020000":10,"\u2028":11,"\x7f":12,"~":13}')
    add("keys/controls", '{"\\u001f":1,"\\n":2,"\\t":3," ":4,"\\u0001":5}')
    add("keys/nested-sort", '{"z":{"b":[{"d":1,"c":2}],"a":null},"y":[{"y":1,"x":2}]}')

    # Duplicate keys: the last one wins, wherever it was.
    add("dup/simple", '{"a":1,"a":2}')
    add("dup/three", '{"a":1,"b":0,"a":2,"a":3}')
    add("dup/nested", '{"a":{"x":1,"x":{"y":1}},"a":{"x":2,"x":[3]}}')
    add("dup/type-change", '{"k":"s","k":[1],"k":{"z":null}}')
    add("dup/escaped-same-key", r'{"\u0061":1,"a":2}')
    add("dup/escaped-last", r'{"a":1,"\u0061":2}')
    add("dup/pair-vs-raw", '{"\U0001F600":1,"\\ud83d\\ude00":2}')

    # Deep nesting (serde_json's default recursion limit is 128 levels).
    for depth in (16, 64, 100, 126):
        add("deep/array-%d" % depth, "[" * depth + "]" * depth)
        add("deep/object-%d" % depth, '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1))
    add("deep/mixed", '{"a":[{"b":[{"c":[{"d":[{"e":[1,{"f":[2]}]}]}]}]}]}')

    # Integers: Python keeps them exact whatever their size; -0 becomes 0.
    ints = ["0", "-0", "1", "-1", "9007199254740991", "9007199254740992", "-9007199254740993",
            str(2 ** 31), str(2 ** 32), str(2 ** 53 + 1), str(2 ** 63 - 1), str(2 ** 63), str(-(2 ** 63)),
            str(-(2 ** 63) - 1), str(2 ** 64 - 1), str(2 ** 64), str(-(2 ** 64)), str(2 ** 64 + 1),
            str(10 ** 40), str(-(10 ** 40)), "123456789012345678901234567890", "-123456789012345678901234567890",
            str(2 ** 128), str(3 ** 200), "1" * 300, "-" + "9" * 1000]
    for t in ints:
        add("int/" + (t if len(t) < 40 else t[:20] + "..."), t)
        add("int-in-array", "[%s]" % t)
        add("int-in-object", '{"n":%s}' % t)

    # Floats: Python repr (shortest round trip; exponent form below 1e-4 and from 1e16 up).
    floats = ["0.0", "-0.0", "0.1", "-0.1", "0.5", "1.0", "1.5", "100.0", "1e-05", "1e-5", "1E-5", "1e-4",
              "0.0001", "0.00001", "1e-7", "1e+16", "1e16", "1E16", "1e15", "1e+15", "9999999999999998.0",
              "9999999999999999.0", "10000000000000000.0", "1234567890123456.7", "12345678901234567.0",
              "10000000000.0", "1e10", "1e21", "1e22", "1e100", "1e308", "1e-307", "5e-324",
              "4.9406564584124654e-324", "2.4703282292062328e-324", "2.4703282292062327e-324", "1e-400",
              "-1e-400", "2.2250738585072014e-308", "2.2250738585072011e-308", "1.7976931348623157e308",
              "1.7976931348623158e308", "1.7976931348623159e308", "1e400", "-1e400", "1e309", "-1e309",
              "123.456e-10", "1E5", "1e5", "1e+5", "1.0e0", "0e0", "-0e0", "0E+0", "0.0e-10", "-0.0E5",
              "0.30000000000000004", "0.1e1", "100e-2", "3.141592653589793", "2.718281828459045",
              "1.1", "2.675", "0.3", "1.0000000000000002", "0.9999999999999999", "4.35", "5e-7", "1.5e300",
              "0.1000000000000000055511151231257827021181583404541015625",
              "1.00000000000000000000000000000000000000001", "123456789012345678901234567890.0",
              "123456789012345678901234567890e0", "1" + "0" * 400 + ".0", "0." + "0" * 400 + "1",
              "-1.5e-3", "1.5e-3", "12.0e-1", "0.000123", "0.0000123", "1e-323", "9007199254740993.0",
              "1.2345678901234567e-300", "8.98846567431158e307", "1.9999999999999998", "1e23", "8.41e21",
              "5e-310", "1.0e-4", "9.999999999999999e-05", "0.00009999999999999999", "99999.99999999999",
              "1e-45", "3.4028234663852886e38", "6.103515625e-05", "65504.0", "-2.5", "1e2", "1.23e+2"]
    for t in floats:
        add("float/" + (t if len(t) < 40 else t[:20] + "..."), t)
        add("float-in-array", "[%s,-%s]" % (t, t.lstrip("-")))
        add("float-in-object", '{"f":%s,"g":[%s]}' % (t, t))

    # A Laniakea event (laniakea.md 1.4) and a fedmsg envelope.
    add("laniakea/event", json.dumps({
        "tag": "_lk.archive.package-upload-accepted", "uuid": "5b3c1a2e-8f00-11ee-b9d1-0242ac120002",
        "format": "1.0", "time": "2023-11-30T12:00:00.123456",
        "data": {"changes": "\n hello (2.10-3) unstable; urgency=medium\n .\n   * T\u00e4st \"quoted\" \\ backslash\u0001 ctrl",
                 "files": ["hello_2.10-3.dsc", "hello_2.10-3_amd64.deb"], "is_new": False, "repo": "master",
                 "source_name": "hello", "source_version": "2.10-3", "suite": "unstable",
                 "upload_name": "hello_2.10-3_amd64"}}, indent=2))
    add("fedmsg/envelope", '{"username": "root", "i": 1, "timestamp": 1393878837, '
        '"msg_id": "2014-f1c49f0b-5caf-49e6-b79a-cc54bcfac602", "topic": "org.fedoraproject.dev.logger.log", '
        '"msg": {"log": "Hello world"}}')
    add("fedmsg/float-timestamp", '{"timestamp": 1393878837.123, "msg": {"ratio": 0.9111111111112}}')
    return cases


# ---------------------------------------------------------------------------------------------
# Random cases: random values written out as varied, non-canonical JSON text
# ---------------------------------------------------------------------------------------------

CHAR_POOL = (
    [chr(c) for c in range(0x20, 0x7F)] * 3
    + [chr(c) for c in range(0x00, 0x20)] + ["\x7f", "\"", "\\", "/", "/", "\u2028", "\u2029"]
    + list("\u00e9\u00fc\u00df\u00ff\u0100\u0416\u05d0\u0627\u0915\u0e01\u3042\u65e5\u672c\uac00\uff21\ufeff\ufffd\uffff\ue000")
    + ["\U0001F600", "\U0001F4A9", "\U00020000", "\U0010FFFF", "\U0001D11E", "\U00010000"]
)


def random_char(rng):
    return rng.choice(CHAR_POOL)


def random_string(rng, max_len=12):
    n = rng.choice([0, 1, 1, 2, 3, 5, 8, max_len])
    return "".join(random_char(rng) for _ in range(n))


def random_double(rng):
    kind = rng.randrange(6)
    if kind == 0:
        while True:
            (f,) = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))
            if math.isfinite(f):
                return f
    if kind == 1:
        return rng.uniform(-1e6, 1e6)
    if kind == 2:
        return rng.random() * 10 ** rng.randint(-30, 30)
    if kind == 3:
        return float(rng.randint(-(10 ** 17), 10 ** 17))
    if kind == 4:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 6))
    return rng.choice([0.0, -0.0, 0.1, 1e16, 1e-5, 5e-324, 1.7976931348623157e308, 1e15, 1e-4])


def random_int(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randint(-10, 10)
    if kind == 1:
        return rng.randint(-(2 ** 31), 2 ** 31)
    if kind == 2:
        return rng.randint(-(2 ** 63), 2 ** 64)
    if kind == 3:
        return rng.randint(-(10 ** 40), 10 ** 40)
    return rng.choice([2 ** 63, 2 ** 64, -(2 ** 64), 2 ** 53 + 1, 0])


def random_value(rng, depth=0):
    r = rng.random()
    if depth >= 4 or r < 0.45:
        return random_scalar(rng)
    if r < 0.72:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    obj = {}
    for _ in range(rng.randint(0, 6)):
        obj[random_key(rng)] = random_value(rng, depth + 1)
    return obj


def random_key(rng):
    if rng.random() < 0.5:
        return rng.choice(["a", "b", "A", "B", "", "tag", "data", "\u65e5", "\u672c", "\uff21", "\U0001F600",
                           "aa", "a\u0000", "\u00e9", "e", "\u2028", "signatures", "unsigned", "Z", "z", "_"])
    return random_string(rng, 6)


def random_scalar(rng):
    r = rng.randrange(10)
    if r < 3:
        return random_string(rng)
    if r < 5:
        return random_int(rng)
    if r < 8:
        return random_double(rng)
    return rng.choice([True, False, None])


def write_string(rng, s):
    """A JSON string literal for s, escaping characters in randomly chosen ways."""
    out = ['"']
    for ch in s:
        cp = ord(ch)
        r = rng.random()
        if ch == '"':
            out.append('\\"' if r < 0.7 else "\\u0022")
        elif ch == "\\":
            out.append("\\\\" if r < 0.7 else "\\u005C")
        elif ch == "/" and r < 0.5:
            out.append("\\/")
        elif cp < 0x20:
            short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(cp)
            if short and r < 0.5:
                out.append(short)
            else:
                out.append(("\\u%04x" if r < 0.75 else "\\u%04X") % cp)
        elif r < 0.25:
            if cp > 0xFFFF:
                v = cp - 0x10000
                hi, lo = 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)
                fmt = "\\u%04x\\u%04x" if r < 0.15 else "\\u%04X\\u%04X"
                out.append(fmt % (hi, lo))
            else:
                out.append(("\\u%04x" if r < 0.15 else "\\u%04X") % cp)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write_float(rng, f):
    if f == 0.0 and math.copysign(1.0, f) < 0:
        return rng.choice(["-0.0", "-0e0", "-0.000E+3", "-0.0e-5"])
    r = rng.random()
    if r < 0.5:
        return repr(f)
    if r < 0.7:
        return "%.17e" % f
    if r < 0.85:
        return "%.25g" % f if "e" in ("%.25g" % f) or "." in ("%.25g" % f) else "%.25g.0" % f
    return "%.20E" % f


def write_int(rng, n):
    return str(n)


def ws(rng):
    if rng.random() < 0.75:
        return ""
    return "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(1, 3)))


def write_value(rng, v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return write_int(rng, v)
    if isinstance(v, float):
        return write_float(rng, v)
    if isinstance(v, str):
        return write_string(rng, v)
    if isinstance(v, list):
        return "[" + ws(rng) + ("," + ws(rng)).join(write_value(rng, x) + ws(rng) for x in v) + "]"
    items = list(v.items())
    rng.shuffle(items)
    # Sometimes repeat a key with a throwaway value first: the last occurrence must win.
    parts = []
    for k, x in items:
        if rng.random() < 0.1:
            parts.append(write_string(rng, k) + ws(rng) + ":" + ws(rng) + write_value(rng, random_scalar(rng)))
        parts.append(write_string(rng, k) + ws(rng) + ":" + ws(rng) + write_value(rng, x) + ws(rng))
    return "{" + ws(rng) + ("," + ws(rng)).join(parts) + "}"


def random_cases(rng, count):
    cases = []
    for i in range(count):
        v = random_value(rng)
        cases.append(("random/%d" % i, ws(rng) + write_value(rng, v) + ws(rng)))
    for i in range(count // 4):
        # Plain Python json.dumps output, in both ensure_ascii modes.
        v = random_value(rng)
        text = json.dumps(v, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1, "\t"]))
        cases.append(("random-dumps/%d" % i, text))
    for i in range(200):
        f = random_double(rng)
        cases.append(("random-float/%d" % i, write_float(rng, f)))
    return cases


def is_shortest_tie(x):
    """True when repr(x) has a same-length neighbour (last digit +-1) that also round-trips
    and lies exactly as far from x: Python breaks that tie to the even digit (David Gay's
    dtoa mode 0), while a shortest-digits formatter may round it up."""
    s = repr(x)
    mantissa, _, exp = s.partition("e")
    sign = "-" if mantissa.startswith("-") else ""
    mantissa = mantissa.lstrip("-")
    last = int(mantissa[-1])
    for d in (-1, 1):
        if not 0 <= last + d <= 9:
            continue
        alt = sign + mantissa[:-1] + str(last + d) + ("e" + exp if exp else "")
        if float(alt) == x and abs(Decimal(alt) - Decimal(x)) == abs(Decimal(s) - Decimal(x)):
            return True
    return False


def float_tie_cases(rng):
    """Doubles whose shortest repr is a tie between two digit strings."""
    cases = []
    # Structured: N + 0.25 and N + 0.75 for N in [2**50, 2**51) (ulp 0.25, 17 digits).
    for i in range(12):
        n = rng.randrange(2 ** 50, 2 ** 51)
        for frac in (0.25, 0.75):
            x = n + frac
            if is_shortest_tie(x):
                cases.append(("float-tie/structured", repr(x)))
                cases.append(("float-tie/exact", str(Decimal(x))))
    # Searched: random magnitudes, including epoch-seconds-like values.
    for lo, hi, sign, want in [(1e9, 2e9, 1, 6), (1e14, 1e16, 1, 12), (1e14, 1e16, -1, 6)]:
        found = 0
        while found < want:
            x = sign * rng.uniform(lo, hi)
            if is_shortest_tie(x):
                cases.append(("float-tie/%g..%g" % (sign * lo, sign * hi), repr(x)))
                cases.append(("float-tie-in-object", '{"t":%s,"u":[%s]}' % (repr(x), str(Decimal(x)))))
                found += 1
    found = 0
    while found < 16:
        (x,) = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))
        if math.isfinite(x) and is_shortest_tie(x):
            cases.append(("float-tie/bits", repr(x)))
            found += 1
    return cases


def random_signed_objects(rng, count):
    objs = []
    for i in range(count):
        obj = {}
        for _ in range(rng.randint(1, 6)):
            obj[random_key(rng)] = random_value(rng, 2)
        obj.pop("signatures", None)
        objs.append(("signed/random-%d" % i, json.dumps(obj, ensure_ascii=False)))
    return objs


def signed_hand_objects():
    return [
        ("signed/empty", "{}"),
        ("signed/matrix-one-two", '{"one": 1, "two": "Two"}'),
        ("signed/unsigned-excluded", '{"foo": "bar", "unsigned": {"seq": 3, "relay": "r"}}'),
        ("signed/existing-signature-kept",
         '{"tag": "_lk.test.x", "data": {}, "signatures": {"other": {"ed25519:0": "AAAA"}}}'),
        ("signed/laniakea-event", json.dumps({
            "tag": "_lk.archive.package-upload-accepted", "uuid": "5b3c1a2e-8f00-11ee-b9d1-0242ac120002",
            "format": "1.0", "time": "2023-11-30T12:00:00.123456",
            "data": {"changes": "\n hello (2.10-3) unstable; urgency=medium\n .\n   * T\u00e4st \"quoted\" \\ backslash\u0001 ctrl",
                     "files": ["hello_2.10-3.dsc", "hello_2.10-3_amd64.deb"], "is_new": False, "repo": "master",
                     "source_name": "hello", "source_version": "2.10-3", "suite": "unstable",
                     "upload_name": "hello_2.10-3_amd64"}})),
        ("signed/unicode-keys", '{"\\ud83d\\ude00": 1, "\uff21": 2, "\u672c": 3, "\u65e5": 4, "": 5, "\u2028": "\x7f"}'),
        ("signed/numbers", '{"big": 18446744073709551616, "neg": -0, "f": 1e-05, "g": 1E16, "h": 10000000000.0, '
         '"i": 123456789012345678901234567890, "j": 0.30000000000000004, "k": -0.0}'),
        ("signed/dup-keys", '{"a": 1, "a": 2, "unsigned": 1, "unsigned": {"x": 1}}'),
    ]


# ---------------------------------------------------------------------------------------------


def load_signer():
    try:
        import signedjson.key
        import signedjson.sign
    except ImportError:
        return None
    key = signedjson.key.decode_signing_key_base64("ed25519", KEY_VERSION, SEED_B64)

    def sign(obj):
        signed = signedjson.sign.sign_json(copy.deepcopy(obj), SIGNER, key)
        return signed["signatures"][SIGNER]["ed25519:" + KEY_VERSION], canonical(signed)

    return sign


def build(require_signatures):
    rng = random.Random(RNG_SEED)
    cases = hand_cases() + random_cases(rng, 400) + float_tie_cases(rng)
    signed = signed_hand_objects() + random_signed_objects(rng, 14)
    sign = load_signer()
    if sign is None:
        if require_signatures:
            sys.exit("signedjson is not importable: run with the venv python (`make venv`), or pass --no-sign")
        print("warning: signedjson not available; writing no signature cases", file=sys.stderr)

    lines = []
    seen = set()
    for name, text in cases + signed:
        if (name, text) in seen:
            continue
        seen.add((name, text))
        obj = json.loads(text)
        record = {"name": name, "input": text, "expected_b64": b64(canonical(obj))}
        if name.startswith("signed/") and sign is not None:
            signature, signed_bytes = sign(obj)
            record["signature"] = signature
            record["signed_b64"] = b64(signed_bytes)
        lines.append(json.dumps(record, ensure_ascii=True, sort_keys=True))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=CORPUS)
    parser.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    parser.add_argument("--no-sign", action="store_true", help="allow running without python-signedjson")
    args = parser.parse_args()
    text = build(require_signatures=not args.no_sign)
    if args.check:
        with open(args.out, encoding="ascii") as f:
            if f.read() != text:
                sys.exit("%s is out of date: re-run %s" % (args.out, sys.argv[0]))
        print("%s is up to date (%d cases)" % (args.out, text.count("\n")))
        return
    with open(args.out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print("wrote %d cases to %s" % (text.count("\n"), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
