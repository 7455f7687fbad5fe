#!/usr/bin/env python3
"""seeds.py: the seed inputs of the fuzz targets, in each target's input format (see the top of
each fuzz_<name>.c).

  seeds.py corpus [DIR]           (re)writes the committed seeds into DIR (tests/fuzz/corpus)
  seeds.py suite JSON OUTDIR      turns the public msgpack test suite (msgpack-test-suite on
                                  npm, dist/msgpack-test-suite.json) into seeds for the targets
                                  that read msgpack: OUTDIR/fuzz_telemetry, OUTDIR/fuzz_merge,
                                  OUTDIR/fuzz_request

Standard library only (a small msgpack encoder below), so it runs before any package is
installed.
"""
import hashlib
import json
import os
import struct
import sys

SEP = b"\xc1"  # FUZZ_SEP in fuzz.h


def pack(v):
    """msgpack of v: None, bool, int, float, str, bytes, list, dict (smallest encodings)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            for tag, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF),
                                  (0xCE, ">I", 0xFFFFFFFF), (0xCF, ">Q", 2**64 - 1)):
                if v <= top:
                    return bytes([tag]) + struct.pack(fmt, v)
        for tag, fmt, lo in ((0xD0, ">b", -2**7), (0xD1, ">h", -2**15),
                             (0xD2, ">i", -2**31), (0xD3, ">q", -2**63)):
            if v >= lo:
                return bytes([tag]) + struct.pack(fmt, v)
        raise ValueError(v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) <= 31:
            return bytes([0xA0 | len(b)]) + b
        if len(b) <= 0xFF:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) <= 15 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) <= 15 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


def f32(x):
    return b"\xca" + struct.pack(">f", x)


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def msgs(*parts, flags=0):
    """A fuzz_telemetry input: flags, then (ctrl, payload) messages separated by SEP."""
    return bytes([flags]) + SEP.join(bytes([c]) + p for c, p in parts)


# fuzz_telemetry's control byte: device in bits 0-1, clock step in bits 2-4 (2: none), what the
# message is in bits 5-7
CLOCK = 2 << 2
DESIRED, DESIRED_AT, PRESENCE, DELETE = 4 << 5, 5 << 5, 6 << 5, 7 << 5


def corpus(root):
    t = os.path.join(root, "fuzz_telemetry")
    hr = pack({"seq": 1, "ts": 1700000000000, "heart_rate": 72, "spo2": 98.5,
               "vitals": {"temp": 36.6, "lead": "II"}})
    write(t, "ecg-first", msgs((CLOCK, hr)))
    write(t, "merge-two-devices", msgs(
        (CLOCK | 0, pack({"seq": 1, "hr": 70, "nested": {"a": 1, "b": [1, 2, 3]}})),
        (CLOCK | 1, pack({"temp": 4.5})),
        (CLOCK + 4 | 0, pack({"seq": 2, "hr": 71, "nested": {"a": None, "c": "x"}})),
        (CLOCK | 0, pack({"seq": 2, "hr": 99})),  # duplicate
        (CLOCK | 0, pack({"seq": 1, "hr": 98})),  # stale
    ))
    write(t, "json-telemetry", msgs(
        (CLOCK | 2, b'{"seq": 1, "ts": 1700000000000, "hr": 72.5, "ok": true, "s": "\\u00e9"}'),
        (CLOCK | 2, b'{"hr": null, "ecg": [1, -2, 3.5e2]}')))
    write(t, "replace-and-delete", msgs(
        (CLOCK | 3, pack({"a": {"x": 1, "y": {"z": 2}}, "n": 5})),
        (CLOCK | 3, pack({"a": 7, "n": "five"})),
        (CLOCK | 3, pack({"a": None, "f": 1.5}))))
    write(t, "rejected", msgs(
        (CLOCK, pack({"seq": -1})), (CLOCK, pack({"ts": "now"})), (CLOCK, pack({"a.b": 1})),
        (CLOCK, pack({"": 1})), (CLOCK, pack([1, 2])), (CLOCK, b"\xdf\xff\xff\xff\xff"),
        (CLOCK, pack({"ts": 1800000000000, "x": 1})),
        (CLOCK, b"\x81\xa1k\xc7\x01\x05z")))  # ext value
    write(t, "four-devices-deep", msgs(
        (CLOCK | 0, pack({"a": 1})), (CLOCK | 1, pack({"a": 1})), (CLOCK | 2, pack({"a": 1})),
        (CLOCK | 3, pack({"a": 1})),  # max_twins 3: refused
        (CLOCK | 0, pack({"d": {"d": {"d": {"d": {"d": {"d": {"d": {"d": 1}}}}}}}})), flags=1))
    write(t, "desired-delta", msgs(
        (CLOCK | DESIRED | 1, pack({"sample_hz": 250, "alarm": {"hr_max": 120}})),
        (CLOCK | 1, pack({"seq": 1, "sample_hz": 50, "alarm": {"hr_max": 120}})),
        (CLOCK + 4 | 1, pack({"seq": 2, "sample_hz": 250})),
        (CLOCK | DESIRED_AT | 1, bytes([3]) + pack({"alarm": None})),
        (CLOCK | DESIRED_AT | 1, bytes([9]) + pack({"x": 1})),  # version conflict
        (CLOCK | DESIRED | 1, pack({"bad.key": 1}))))
    write(t, "presence-delete", msgs(
        (CLOCK | PRESENCE | 2, b""), (CLOCK | 2, pack({"seq": 5, "t": 36.6})),
        (CLOCK | PRESENCE | 2, b"\x00"), (CLOCK | DELETE | 2, b"\x07"),
        (CLOCK | DELETE | 2, b""), (CLOCK | PRESENCE | 2, b"\x00"),
        (CLOCK | 2, pack({"seq": 1, "t": 37.0})), (CLOCK | DELETE | 2, b"\x04")))
    write(t, "float32-and-edges", msgs((CLOCK, b"\x84\xa1f" + f32(1.5) + b"\xa1u" + pack(2**64 - 1)
                                        + b"\xa1i" + pack(-2**63) + b"\xa3nan\xcb\x7f\xf8" + bytes(6))))

    m = os.path.join(root, "fuzz_merge")
    write(m, "rfc7396-example", pack({"title": "Goodbye!", "author": {"givenName": "John",
                                                                       "familyName": "Doe"},
                                       "tags": ["example", "sample"], "content": "x"})
          + SEP + pack({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                        "author": {"familyName": None}, "tags": ["example"]}))
    write(m, "delete-missing", pack({"a": 1}) + SEP + pack({"b": None, "a": {"c": None}}))
    write(m, "leaf-patch", pack({"a": 1}) + SEP + pack([1, 2]))
    write(m, "with-meta", pack({"a": 1, "b": {"c": 2}}) + SEP + pack({"b": {"d": 3}})
          + SEP + pack({"a": 5, "b": {"c": 6}}))
    write(m, "json-both", b'{"a": {"b": 1}}' + SEP + b'{"a": {"b": null, "c": [true]}}')
    write(m, "number-keys", b"\x82\x01\xa1a\xcb\x3f\xf0" + bytes(6) + b"\xa1b" + SEP
          + b"\x81\x01\xc0")

    j = os.path.join(root, "fuzz_json")
    write(j, "telemetry", b'{"seq": 1, "ts": 1700000000000, "heart_rate": 72, "spo2": 98.5}')
    write(j, "nested", b' {"a": {"b": [1, 2, {"c": null}], "d": true, "e": false}} ')
    write(j, "strings", b'{"s": "tab\\t nl\\n quote\\" slash\\/ u\\u0041 pair\\ud83d\\ude00 nul\\u0000",'
          b' "utf8": "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}')
    write(j, "numbers", b'{"n": [0, -0, 1e5, -1.5E-3, 18446744073709551615, 18446744073709551616,'
          b' -9223372036854775808, -9223372036854775809, 0.1, 1e308]}')
    write(j, "empty", b"{}")

    c = os.path.join(root, "fuzz_config")
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                           "twinhub.yaml"), "rb") as f:
        write(c, "deploy-example", f.read())
    write(c, "every-section", b"""broker:
  url: "ssl://broker.example:8883"
  client_id: hub-1
  mqtt_version: 4
  keepalive: 1m
  session_expiry: 1h30m
  reconnect_min: 500ms
  tls:
    ca: /etc/twinhub/ca.pem
    verify: false
topics:
  devices: fleet/dev/
  twins: fleet/twin
  hub: fleet/hub/
store:
  path: /var/lib/twinhub
  sync: commit
  sync_interval_ms: 250
  map_size: 1 GiB
  max_map_size: 8GiB
  writemap: yes
limits:
  max_payload: 64KiB
  max_depth: 32
  max_keys: 65536
  max_twin_size: 1MB
  max_twins: 0
  max_clock_skew: 0
history: {max_points: 1000000}
publish: {qos: 0, max_inflight: 1, encoding: json}
errors: {rate: 0.5, burst: 1}
rules: {file: "rules \\"quoted\\".yaml"}
log: {level: debug}
""")
    write(c, "flow-and-null", b"{broker: {url: 'tcp://[::1]:1883', tls: ~}, store: {path: 'a b'},"
          b" rules: {file: }}\n")
    write(c, "lines", b"store.sync commit\nlimits.max_depth 40\nTWINHUB_STORE_SYNC=os\n250ms\n64MiB\n")
    write(c, "errors", b"broker:\n  url: tcp://x:1\nbroker:\n  url: tcp://y:1\n---\nstore: {}\n")

    request_seeds(os.path.join(root, "fuzz_request"))

    p = os.path.join(root, "fuzz_topic")
    for name, topic in (("telemetry", b"devices/ecg-0001/telemetry"),
                        ("cmd-ack", b"devices/pump.7:a_b-c/commands/ack"),
                        ("desired-set", b"twins/ecg-0001/desired/set"),
                        ("hub-status", b"hub/status"),
                        ("bad-id", b"devices/.hidden/telemetry"),
                        ("wildcard", b"devices/+/telemetry"),
                        ("utf8", b"devices/\xc3\xa9/status\xc2\x85")):
        write(p, name, topic)
    write(p, "prefixes", b"Pfleet/dev\x00fleet/twin/\x00fleet/hub\x00fleet/dev/x/telemetry")
    write(p, "bad-prefixes", b"P$SYS/\x00a//b\x00hub/\x00hub/status")


# fuzz_request's control byte: device in bits 0-1, what the message is in bits 2-4, retained
# bit 5, a response topic (length byte + topic before the payload) bit 6, correlation bit 7
SET, SEND, GET, DEL, ACK, TEL, STATUS, TIMER = (k << 2 for k in range(8))
RETAINED, RESP, CORR = 0x20, 0x40, 0x80
JSON_OUT = 8  # fuzz_request's flags: replies as JSON


def resp(topic, payload):
    t = topic.encode()
    return bytes([len(t)]) + t + payload


def cid(n):
    return "%016x" % n


def request_seeds(r):
    write(r, "lifecycle", msgs(
        (SET | 0, pack({"desired": {"rate": 250, "alarm": {"hr_max": 120}}, "token": "t1"})),
        (GET | 0, pack({"token": "g1"})),
        (SEND | 0, pack({"cmd": "reboot", "args": {"delay": 5}, "expires_in_ms": 60000,
                         "token": "c1"})),
        (STATUS | 0, b"online"),
        (ACK | 0, pack({"id": cid(1), "status": "delivered"})),
        (ACK | 0, pack({"id": cid(1), "status": "succeeded", "result": {"ok": True}})),
        (SEND | 0, pack({"cmd": "calibrate"})),  # connected: sent at once
        (GET | 0, b""),
        (DEL | 0, pack({"version": 2, "token": "d1"})),
        (GET | 0, b""),  # 404
        (SET | 0, pack({"desired": {"rate": 50}})),  # continues the deleted twin's version
    ))
    write(r, "json", msgs(
        (SET | 1, b'{"desired": {"rate": 250, "mode": "fast"}, "version": 0, "token": "j1"}'),
        (TEL | 1, b'{"seq": 1, "rate": 100, "hr": 72.5}'),
        (SEND | 1, b'{"cmd": "beep", "args": [1, 2], "expires_in_ms": null, "token": "j2"}'),
        (GET | 1, b'{"token": "j3"}'),
        (ACK | 1, b'{"id": "0000000000000001", "status": "failed", "result": "jammed"}'),
        (DEL | 1, b'{"version": null}'),
        flags=JSON_OUT))
    write(r, "json-out-msgpack-in", msgs(
        (SET | 2, pack({"desired": {"a": {"b": [1, 2.5, None, "x", b"\x00\xff"]}}})),
        (GET | 2, b""), (SEND | 2, pack({"cmd": "go", "args": None})),
        (STATUS | 2, pack("online")), (STATUS | 2, pack("offline")), flags=JSON_OUT))
    write(r, "versions", msgs(
        (SET | 0, pack({"desired": {"x": 1}, "version": 0})),  # create only
        (SET | 0, pack({"desired": {"x": 2}, "version": 0})),  # 409
        (SET | 0, pack({"desired": {"x": 3}, "version": 1})),
        (SET | 0, pack({"desired": {"x": None}, "version": 7})),  # 409
        (DEL | 0, pack({"version": 9})),  # 409
        (DEL | 0, pack({"version": 2})),
        (DEL | 0, b""),  # 404
        (SET | 0, pack({"desired": {"y": 1}, "version": 0})),
        (GET | 3, b""), (DEL | 3, b""), (SEND | 3, pack({"cmd": "x"}))))  # no twin
    write(r, "bad-requests", msgs(
        (SET | 0, pack({"desired": {"x": 1}, "versoin": 1})),
        (SET | 0, pack({"desired": {"x": 1}, "token": "t" * 65})),
        (SET | 0, pack({"desired": {"x": 1}, "token": 5})),
        (SET | 0, pack({"desired": [1]})), (SET | 0, pack({"token": "only"})),
        (SET | 0, pack({"desired": {"x": 1}, "version": -1})),
        (SET | 0, pack({"desired": {"x": 1}, "version": "1"})),
        (SET | 0, pack({"desired": {"a.b": 1}})), (SET | 0, pack({"desired": {"": 1}})),
        (SET | 0, pack([1, 2])), (SET | 0, b"\x82\xa7desired"), (SET | 0, b"{\"desired\": {"),
        (SET | 0, b""), (SET | 0, b"\xdf\xff\xff\xff\xff"),
        (SET | 0, pack({"desired": {"x": 1}})),
        (SEND | 0, pack({"args": 1})), (SEND | 0, pack({"cmd": ""})),
        (SEND | 0, pack({"cmd": "a\nb"})), (SEND | 0, pack({"cmd": "c" * 65})),
        (SEND | 0, pack({"cmd": "x", "expires_in_ms": 0})),
        (SEND | 0, pack({"cmd": "x", "expires_in_ms": 2**64 - 1})),
        (SEND | 0, pack({"cmd": 7})), (SEND | 0, pack({"cmd": "x", "version": 1})),
        (GET | 0, pack({"version": 1})), (GET | 0, pack("token")), (GET | 0, b"\xc0"),
        (DEL | 0, pack({"desired": {}})), (DEL | 0, pack({1: 2})),
        (ACK | 0, pack({"id": cid(1)})), (ACK | 0, pack({"status": "delivered"})),
        (ACK | 0, pack({"id": cid(1), "status": "queued"})), (ACK | 0, pack({"id": 1,
                                                                            "status": "failed"})),
        (ACK | 0, pack({"id": "1", "status": "failed"})), (ACK | 0, b"\x91\x01"),
        (ACK | 0, pack({"id": cid(99), "status": "failed"}))))
    write(r, "response-topics", msgs(
        (SET | 0 | RESP | CORR, resp("svc/replies/7", pack({"desired": {"x": 1}, "token": "r"}))),
        (GET | 0 | RESP | CORR, resp("svc/replies/7", b"")),
        (GET | 0 | RESP, resp("devices/ecg-0001/commands", b"")),
        (GET | 0 | RESP | CORR, resp("$SYS/x", b"")),
        (GET | 0 | RESP, resp("a/+/b", b"")),
        (GET | 0 | RESP, resp("hub/status", b"")),
        (GET | 0 | RESP, resp("twins/ecg-0001/state", b"")),
        (GET | 0 | RESP, resp("twins/ecg-0001/get/accepted", pack({"token": "z"}))),
        (SEND | 0 | CORR, pack({"cmd": "x"})),
        (DEL | 0 | RESP | CORR, resp("", b"")),
        (ACK | 0 | RESP | CORR, resp("svc/r", pack({"id": cid(1), "status": "delivered"})))))
    write(r, "command-queue", msgs(
        (TEL | 1, pack({"seq": 1, "hr": 70})),
        (SEND | 1, pack({"cmd": "a"})), (SEND | 1, pack({"cmd": "b", "args": {"k": [1]}})),
        (SEND | 1, pack({"cmd": "c", "expires_in_ms": 1})),
        (SEND | 1, pack({"cmd": "d"})), (SEND | 1, pack({"cmd": "e"})),  # over the cap of 4
        (ACK | 1, pack({"id": cid(2), "status": "failed", "result": {"err": "x"}})),
        (ACK | 1, pack({"id": cid(2), "status": "delivered"})),  # out of a final state
        (ACK | 1, pack({"id": cid(4), "status": "succeeded"})),
        (ACK | 1, pack({"id": cid(4), "status": "succeeded"})),  # repeated
        (ACK | 1 | RETAINED, pack({"id": cid(5), "status": "delivered"})),
        (SET | 1 | RETAINED, pack({"desired": {"x": 1}})),
        (TIMER, b"\x05"), (STATUS | 1, b"online"), (TIMER | RETAINED, b"\x00"),
        (ACK | 0, pack({"id": cid(5), "status": "delivered"}))))  # another device's command
    write(r, "presence-and-timer", msgs(
        (STATUS | 3, b"online"), (SEND | 3, pack({"cmd": "ping", "expires_in_ms": 1})),
        (STATUS | 3, b"offline"), (SEND | 3, pack({"cmd": "ping2", "expires_in_ms": 1000})),
        (STATUS | 3 | RETAINED, b"online"), (TIMER, b"\x03"),
        (STATUS | 3, b"\xa7offline"), (STATUS | 2, b"offline"), (TEL | 2 | RETAINED, pack({"a": 1})),
        (TIMER | RETAINED, b"\x00")))


def suite(path, out):
    """Every msgpack sample of the suite: raw, as the value of a telemetry key, and in pairs
    for the merge target. The file names are content hashes: reruns overwrite."""
    with open(path) as f:
        data = json.load(f)
    samples = []
    for group in data.values():
        for case in group:
            for hx in case.get("msgpack", []):
                samples.append(bytes.fromhex(hx.replace("-", "")))
    tel = os.path.join(out, "fuzz_telemetry")
    mer = os.path.join(out, "fuzz_merge")
    req = os.path.join(out, "fuzz_request")

    def put(d, b):
        write(d, hashlib.sha1(b).hexdigest(), b)

    for i, s in enumerate(samples):
        wrapped = b"\x81\xa1v" + s  # {"v": sample}
        put(tel, msgs((CLOCK, s)))
        put(tel, msgs((CLOCK, wrapped), (CLOCK, b"\x82\xa3seq\x01\xa1w" + s)))
        nxt = samples[(i + 1) % len(samples)]
        put(mer, s + SEP + nxt)
        put(mer, wrapped + SEP + b"\x81\xa1v" + nxt)
        put(req, msgs((SET, b"\x81\xa7desired\x81\xa1v" + s), (SEND, b"\x82\xa3cmd\xa1c\xa4args" + s),
                      (ACK, b"\x83\xa2id\xb0" + cid(1).encode() + b"\xa6status\xa6failed\xa6result" + s)))
    return len(samples)


def main(argv):
    if len(argv) >= 2 and argv[1] == "corpus":
        here = os.path.dirname(os.path.abspath(__file__))
        corpus(argv[2] if len(argv) > 2 else os.path.join(here, "corpus"))
        return 0
    if len(argv) == 4 and argv[1] == "suite":
        n = suite(argv[2], argv[3])
        print(f"msgpack-test-suite: {n} samples")
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
