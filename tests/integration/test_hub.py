#!/usr/bin/python3
"""test_hub: integration cases of twinhub against a real Mosquitto on loopback, one per ctest.

    /usr/bin/python3 test_hub.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

Each case talks to the hub like a device (devices/{id}/telemetry) or a service would
(twins/{id}/state, hub/status, hub/errors) and reads the store with twinctl. The harness
(harness.py) owns the processes and their cleanup.
"""

import json
import os
import random
import sys
import threading
import time

import subprocess

import paho.mqtt.client as mqtt

from harness import (TWINSIM_BIN, Broker, Checks, Hub, MqttClient, TestFailure, check, check_eq, get_retained,
                     now_ms, pack, parse_json_output, run_case, run_hub_once, twin_get, twinctl,
                     twinctl_json, unpack, wait_until)

STATE_SUB = "twins/+/state"


# ---------------------------------------------------------------------------------------------
# Helpers shared by the cases
# ---------------------------------------------------------------------------------------------

def telemetry_topic(twin_id):
    return f"devices/{twin_id}/telemetry"


def state_topic(twin_id):
    return f"twins/{twin_id}/state"


def decode_state(payload, json_mode=False):
    try:
        return json.loads(payload) if json_mode else unpack(payload)
    except Exception as e:
        raise TestFailure(f"state payload is not {'JSON' if json_mode else 'msgpack'} ({e}): "
                          f"{payload[:200]!r}")


def wait_state(w, twin_id, version, timeout=20, start=0, json_mode=False):
    """Waits for twins/{id}/state with this version (from message index `start`); returns the
    decoded document."""
    topic = state_topic(twin_id)
    m = w.wait_for(lambda m: m.topic == topic and
                   decode_state(m.payload, json_mode).get("version") == version,
                   timeout, f"{topic} at version {version}", start)
    return decode_state(m.payload, json_mode)


def retained_state(fx, broker, twin_id, json_mode=False):
    p = get_retained(fx, broker, state_topic(twin_id))
    return None if p is None else decode_state(p, json_mode)


def states_since(w, twin_id, start):
    return w.messages(state_topic(twin_id), start)


class Barrier:
    """Proves the hub has handled everything one client sent before: a telemetry message for a
    twin of its own (no seq, so always applied) sent by the same client, in order, whose state
    we wait for."""

    def __init__(self, client, watcher, twin_id="it-barrier"):
        self.client = client
        self.w = watcher
        self.id = twin_id
        self.n = 0

    def __call__(self, timeout=20):
        self.n += 1
        token = self.n
        self.client.publish(telemetry_topic(self.id), pack({"barrier": token}))
        topic = state_topic(self.id)
        self.w.wait_for(lambda m: m.topic == topic and
                        decode_state(m.payload).get("reported", {}).get("barrier") == token,
                        timeout, f"barrier {token} through the hub")


def check_time_near(v, lo, hi, what, slack_ms=2000):
    check(isinstance(v, int), f"{what}: expected an integer ms timestamp, got {v!r}")
    check(lo - slack_ms <= v <= hi + slack_ms,
          f"{what}: {v} is not between {lo} and {hi} (hub clock, +-{slack_ms} ms)")


def meta_like(obj, ts):
    """The meta tree a telemetry map writes: every leaf replaced by ts (maps recurse)."""
    if isinstance(obj, dict):
        return {k: meta_like(v, ts) for k, v in obj.items()}
    return ts


def history_points(obj):
    """(ts, value) pairs from twinctl history output: a list of {ts, value} objects, of
    [ts, value] pairs, or an object holding such a list."""
    if isinstance(obj, dict) and "value" in obj:
        obj = [obj]  # JSON lines, one point
    if isinstance(obj, dict):
        for k in ("points", "history", "values", "data"):
            if k in obj:
                return history_points(obj[k])
        raise TestFailure(f"twinctl history: no list of points in {obj!r}")
    check(isinstance(obj, list), f"twinctl history: expected a list, got {obj!r}")
    pts = []
    for p in obj:
        if isinstance(p, dict):
            check("value" in p, f"twinctl history: point without 'value': {p!r}")
            pts.append((p.get("ts"), p["value"]))
        elif isinstance(p, list) and len(p) == 2:
            pts.append((p[0], p[1]))
        else:
            raise TestFailure(f"twinctl history: cannot read point {p!r}")
    return pts


def contains_string(obj, s):
    if isinstance(obj, str):
        return obj == s
    if isinstance(obj, dict):
        return any(contains_string(k, s) or contains_string(v, s) for k, v in obj.items())
    if isinstance(obj, list):
        return any(contains_string(v, s) for v in obj)
    return False


def listed_ids(fx_db):
    rc, out, err = twinctl(fx_db, "list")
    check(rc == 0, f"twinctl list: exit {rc}, stderr {err.strip()!r}")
    return out


def decode_report(m, json_mode=False):
    try:
        r = json.loads(m.payload) if json_mode else unpack(m.payload)
    except Exception as e:
        raise TestFailure(f"hub/errors payload is not {'JSON' if json_mode else 'msgpack'} "
                          f"({e}): {m.payload[:200]!r}")
    check(isinstance(r, dict), f"hub/errors payload is not a map: {r!r}")
    for k in ("topic", "reason", "kind", "ts", "suppressed"):
        check(k in r, f"hub/errors report without '{k}': {r!r}")
    return r


# ---------------------------------------------------------------------------------------------
# 1. telemetry -> twin document, retained state, twinctl
# ---------------------------------------------------------------------------------------------

def case_telemetry(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors"])
    dev = MqttClient(fx, b, "ecg-0001")
    dev5 = MqttClient(fx, b, "ecg-0002", protocol=mqtt.MQTTv5)

    T = now_ms()
    t1, t2, t3 = T - 3000, T - 2000, T - 1000

    # First message creates the twin.
    m1 = {"seq": 1, "ts": t1, "heart_rate": 72, "spo2": 98, "vitals": {"temp": 36.6}}
    lo = now_ms()
    dev.publish(telemetry_topic("ecg-0001"), pack(m1))
    d1 = wait_state(w, "ecg-0001", 1)
    hi = now_ms()
    check_eq(d1.get("id"), "ecg-0001", "state.id")
    check_eq(d1.get("version"), 1, "state.version after the first message")
    rep1 = {"heart_rate": 72, "spo2": 98, "vitals": {"temp": 36.6}}
    check_eq(d1.get("reported"), rep1, "state.reported after the first message")
    check_eq((d1.get("meta") or {}).get("reported"), meta_like(rep1, t1),
             "state.meta.reported after the first message (every leaf = the message's ts)")
    check_eq(d1.get("seq"), 1, "state.seq")
    check_time_near(d1.get("last_seen"), lo, hi, "state.last_seen")
    check_time_near(d1.get("created"), lo, hi, "state.created")
    check(d1.get("desired") in (None, {}), f"state.desired of a new twin: {d1.get('desired')!r}")
    check("delta" not in d1 or d1["delta"] in (None, {}), f"state.delta: {d1.get('delta')!r}")

    r = retained_state(fx, b, "ecg-0001")
    check_eq(r, d1, "retained twins/ecg-0001/state after the first message")

    # Second message: nested maps merge, nil deletes, the rest replaces.
    m2 = {"seq": 2, "ts": t2, "heart_rate": 75, "spo2": None, "vitals": {"resp": 16}}
    dev.publish(telemetry_topic("ecg-0001"), pack(m2))
    d2 = wait_state(w, "ecg-0001", 2)
    rep2 = {"heart_rate": 75, "vitals": {"temp": 36.6, "resp": 16}}
    check_eq(d2.get("reported"), rep2, "state.reported after the merge (nil deletes spo2)")
    check_eq(d2["meta"].get("reported"),
             {"heart_rate": t2, "vitals": {"temp": t1, "resp": t2}},
             "state.meta.reported after the merge (unchanged leaves keep their ts)")
    check_eq(d2.get("seq"), 2, "state.seq after the second message")
    check_eq(d2.get("created"), d1.get("created"), "state.created must not change")
    check(d2.get("last_seen") >= d1.get("last_seen"), "state.last_seen went backwards")

    # A JSON object is accepted as well (first non-blank byte '{').
    m3 = (b' \n{"seq": 3, "ts": %d, "heart_rate": 80.5, "vitals": {"temp": 37.1},'
          b' "note": "ok"}' % t3)
    dev.publish(telemetry_topic("ecg-0001"), m3)
    d3 = wait_state(w, "ecg-0001", 3)
    rep3 = {"heart_rate": 80.5, "vitals": {"temp": 37.1, "resp": 16}, "note": "ok"}
    check_eq(d3.get("reported"), rep3, "state.reported after a JSON message")
    check_eq(d3["meta"].get("reported"),
             {"heart_rate": t3, "vitals": {"temp": t3, "resp": t2}, "note": t3},
             "state.meta.reported after a JSON message")
    check_eq(d3.get("seq"), 3, "state.seq after a JSON message")

    # A second twin, from an MQTT 5 device, JSON payload without seq or ts.
    lo = now_ms()
    dev5.publish(telemetry_topic("ecg-0002"), b'{"heart_rate": 61, "vitals": {"temp": 36.9}}')
    e1 = wait_state(w, "ecg-0002", 1)
    hi = now_ms()
    check_eq(e1.get("reported"), {"heart_rate": 61, "vitals": {"temp": 36.9}},
             "ecg-0002 reported")
    for leaf in (e1["meta"]["reported"]["heart_rate"], e1["meta"]["reported"]["vitals"]["temp"]):
        check_time_near(leaf, lo, hi, "meta ts of a message without ts (hub time)")
    check(e1.get("seq") in (None, 0), f"seq of a twin without seq: {e1.get('seq')!r}")

    # The retained state is the latest version.
    check_eq(retained_state(fx, b, "ecg-0001"), d3, "retained twins/ecg-0001/state")

    # twinctl reads the same document from LMDB while the hub runs.
    check_eq(twin_get(hub.db, "ecg-0001"), d3, "twinctl get ecg-0001 (JSON) vs the state")
    check_eq(twin_get(hub.db, "ecg-0002"), e1, "twinctl get ecg-0002 (JSON) vs the state")

    rc, out, err = twinctl(hub.db, "get", "nosuch")
    check_eq(rc, 1, f"twinctl get nosuch exit status (stdout {out!r}, stderr {err!r})")

    out = listed_ids(hub.db)
    try:
        lst = parse_json_output(out)
        check(contains_string(lst, "ecg-0001") and contains_string(lst, "ecg-0002"),
              f"twinctl list does not list both twins: {out!r}")
    except ValueError:
        raise TestFailure(f"twinctl list: stdout is not JSON: {out!r}")

    pts = history_points(twinctl_json(hub.db, "history", "ecg-0001", "reported.heart_rate"))
    check_eq([v for _, v in pts], [72, 75, 80.5], "twinctl history ecg-0001 reported.heart_rate")
    ts = [t for t, _ in pts if t is not None]
    check(ts == sorted(ts), f"history is not oldest first: {pts!r}")
    pts = history_points(twinctl_json(hub.db, "history", "ecg-0001", "reported.vitals.temp"))
    check_eq([v for _, v in pts], [36.6, 37.1], "twinctl history ecg-0001 reported.vitals.temp")

    st = twinctl_json(hub.db, "stats")
    check(isinstance(st, dict), f"twinctl stats: expected a JSON object, got {st!r}")
    if "twins" in st:
        check_eq(st["twins"], 2, "twinctl stats: twins")

    check_eq(w.messages("hub/errors"), [], "reports on hub/errors for valid input")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 2. restart: state survives, hub/status offline/online, versions continue
# ---------------------------------------------------------------------------------------------

def case_restart(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB])
    dev = MqttClient(fx, b, "dev")
    tid = "pump-7"
    dev.publish(telemetry_topic(tid), pack({"seq": 1, "rate": 5, "vol": {"ml": 10}}))
    dev.publish(telemetry_topic(tid), pack({"seq": 2, "rate": 6}))
    d2 = wait_state(w, tid, 2)
    check_eq(d2["reported"], {"rate": 6, "vol": {"ml": 10}}, "reported before the restart")

    mark = hub.status.count()
    hub.stop()
    hub.status.wait_for(lambda m: m.payload == b"offline", 10,
                        "'offline' on hub/status after SIGTERM", mark)
    check_eq(get_retained(fx, b, "hub/status"), b"offline", "retained hub/status after SIGTERM")
    check_eq(twin_get(hub.db, tid), d2, "twinctl get with the hub stopped")
    check_eq(retained_state(fx, b, tid), d2, "retained state with the hub stopped")

    # Sent while the hub is down: the broker keeps it in the hub's persistent session.
    dev.publish(telemetry_topic(tid), pack({"seq": 3, "rate": 7}))

    mark = w.count()
    hub.start()  # waits for the live 'online' and the retained 'online'
    d3 = wait_state(w, tid, 3, start=mark)
    check_eq(d3["reported"], {"rate": 7, "vol": {"ml": 10}},
             "reported after a message queued while the hub was down")
    check_eq(d3["created"], d2["created"], "created after the restart")

    # The seq survived the restart: 2 is stale now, dropped and counted in the twin.
    mark = w.count()
    dev.publish(telemetry_topic(tid), pack({"seq": 2, "rate": 99}))
    ds = wait_state(w, tid, 4, start=mark)
    check_eq((ds["reported"], ds["seq"], ds["stale"]["count"], ds["stale"]["seq"]),
             (d3["reported"], 3, 1, 2), "the twin after a stale seq after the restart")
    check_eq(twin_get(hub.db, tid), ds, "twinctl get after a stale message")

    dev.publish(telemetry_topic(tid), pack({"seq": 4, "rate": 8}))
    d4 = wait_state(w, tid, 5)

    # A second restart: the version still goes on from where it was.
    hub.stop()
    hub.start()
    check_eq(retained_state(fx, b, tid), d4, "retained state after the second restart")
    dev.publish(telemetry_topic(tid), pack({"seq": 5, "rate": 9}))
    d5 = wait_state(w, tid, 6)
    check_eq(d5["reported"]["rate"], 9, "reported.rate after the second restart")
    check_eq(twin_get(hub.db, tid), d5, "twinctl get after the second restart")
    hub.stop()
    check_eq(get_retained(fx, b, "hub/status"), b"offline", "retained hub/status at the end")


# ---------------------------------------------------------------------------------------------
# 3. seq: duplicates change nothing, stale messages are dropped and counted; no seq is always
#    applied
# ---------------------------------------------------------------------------------------------

def case_seq(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB])
    dev = MqttClient(fx, b, "dev")
    barrier = Barrier(dev, w)
    tid = "fridge-3"
    T = now_ms()

    dev.publish(telemetry_topic(tid), pack({"seq": 10, "ts": T, "temp": 4.0, "door": "closed"}))
    d1 = wait_state(w, tid, 1)
    check_eq(d1["seq"], 10, "seq after the first message")

    mark = w.count()
    dev.publish(telemetry_topic(tid), pack({"seq": 10, "ts": T + 1, "temp": 9.0, "x": 1}))
    barrier()
    time.sleep(0.2)  # a wrong publication would be queued before the barrier's anyway
    check_eq(states_since(w, tid, mark), [], "state publications after a duplicate seq")
    check_eq(twin_get(hub.db, tid), d1, "twinctl get after a duplicate seq")

    # a lower seq is dropped: reported as it was, the twin counts it, hub/errors says what to do
    errs = MqttClient(fx, b, "errors", subscribe=["hub/errors"])
    for n, (label, msg) in enumerate((("lower seq", {"seq": 5, "ts": T + 2, "temp": 8.0,
                                                     "door": "open"}),
                                      ("seq 0", {"seq": 0, "temp": 7.0})), start=1):
        mark = w.count()
        dev.publish(telemetry_topic(tid), pack(msg))
        ds = wait_state(w, tid, 1 + n, start=mark)
        check_eq((ds["reported"], ds["seq"], ds["stale"]["count"], ds["stale"]["seq"]),
                 (d1["reported"], 10, n, msg["seq"]), f"the twin after a {label}")
    m = errs.wait_for(lambda m: unpack(m.payload).get("kind") == "stale", 10, "a stale report")
    why = unpack(m.payload)["reason"]
    check("seq 5 is below 10, the last applied: dropped as stale" in why and "boot" in why,
          f"the stale report's reason: {why!r}")

    pts = history_points(twinctl_json(hub.db, "history", tid, "reported.temp"))
    check_eq([v for _, v in pts], [4.0], "history after duplicate/stale messages")

    dev.publish(telemetry_topic(tid), pack({"seq": 11, "ts": T + 3, "temp": 4.5}))
    d2 = wait_state(w, tid, 4)
    check_eq(d2["reported"], {"temp": 4.5, "door": "closed"}, "reported after seq 11")
    check_eq(d2["seq"], 11, "seq after seq 11")

    # Without seq every message is applied, and the last seq stays.
    lo = now_ms()
    dev.publish(telemetry_topic(tid), pack({"temp": 5.0}))
    d3 = wait_state(w, tid, 5)
    hi = now_ms()
    dev.publish(telemetry_topic(tid), pack({"temp": 5.0}))
    d4 = wait_state(w, tid, 6)
    check_eq(d3["reported"], {"temp": 5.0, "door": "closed"}, "reported after a message w/o seq")
    check_eq(d4["reported"], d3["reported"], "reported after the same message w/o seq again")
    check_eq(d4["seq"], 11, "seq after messages without seq")
    check_time_near(d3["meta"]["reported"]["temp"], lo, hi, "meta ts of a message without ts")

    mark = w.count()
    dev.publish(telemetry_topic(tid), pack({"seq": 11, "temp": 6.0}))
    barrier()
    check_eq(states_since(w, tid, mark), [], "state publications for seq 11 after no-seq ones")
    check_eq(twin_get(hub.db, tid)["version"], 6, "version after a duplicate seq")

    # A brand new twin whose first message is seq 0 or has a large seq is applied.
    dev.publish(telemetry_topic("fresh-1"), pack({"seq": 2**63, "v": 1}))
    f1 = wait_state(w, "fresh-1", 1)
    check_eq(f1["seq"], 2**63, "a large uint seq")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 4. malformed input: rejected, reported, nothing changes, the hub keeps serving
# ---------------------------------------------------------------------------------------------

def nest_maps(depth, leaf=1):
    """A map nested `depth` maps deep (the top-level map is depth 1)."""
    obj = leaf
    for _ in range(depth):
        obj = {"a": obj}
    return obj


def nest_json(depth):
    return b'{"a":' * depth + b"1" + b"}" * depth


def nest_arrays(depth):
    obj = 1
    for _ in range(depth - 1):
        obj = [obj]
    return {"a": obj}


MAX_KEYS = 8        # --set limits.max_keys for the malformed case
MAX_PAYLOAD = 1024  # --set limits.max_payload
MAX_DEPTH = 16      # the default limits.max_depth


def bad_inputs():
    """(label, topic id, payload, allowed kinds, words of which the reason must name one)."""
    good = pack({"x": 1})
    A = "dev-a"
    cases = [
        ("not msgpack", A, b"\xc1\xc1\xc1", {"malformed"}, ["msgpack", "malformed", "0xc1",
                                                           "invalid", "byte"]),
        ("truncated msgpack", A, pack({"x": 1, "yy": "hello"})[:-3], {"malformed"},
         ["truncat", "short", "end", "incomplete", "bytes"]),
        ("map32 header declaring 2^32-1 entries", A, b"\xdf\xff\xff\xff\xff",
         {"malformed", "size"}, ["map", "entries", "count", "bytes", "truncat", "keys"]),
        ("array16 declaring 65535 elements in 5 bytes", A, b"\xdc\xff\xff\x01\x02",
         {"malformed", "size"}, ["array", "elements", "count", "bytes", "truncat", "keys"]),
        ("array16 of 65535 inside a map", A, b"\x81\xa1a\xdc\xff\xff\x01",
         {"malformed", "size"}, ["array", "elements", "count", "bytes", "truncat", "keys"]),
        ("str32 declaring 4 GiB", A, b"\x81\xa1a\xdb\xff\xff\xff\xffxx", {"malformed", "size"},
         ["str", "length", "bytes", "truncat"]),
        ("bin32 declaring 4 GiB", A, b"\x81\xa1a\xc6\xff\xff\xff\xffxx", {"malformed", "size"},
         ["bin", "length", "bytes", "truncat"]),
        (f"msgpack nested {MAX_DEPTH + 1} deep", A, pack(nest_maps(MAX_DEPTH + 1)), {"depth"},
         ["depth", "deep", "nest"]),
        ("msgpack nested 40 deep", A, pack(nest_maps(40)), {"depth"}, ["depth", "deep", "nest"]),
        ("msgpack arrays nested 40 deep", A, pack(nest_arrays(40)), {"depth"},
         ["depth", "deep", "nest"]),
        (f"JSON nested {MAX_DEPTH + 1} deep", A, nest_json(MAX_DEPTH + 1), {"depth"},
         ["depth", "deep", "nest"]),
        ("JSON nested 100 deep", A, nest_json(100), {"depth"}, ["depth", "deep", "nest"]),
        ("trailing bytes after msgpack", A, good + b"\x00", {"malformed"},
         ["trailing", "extra", "after", "garbage"]),
        ("trailing text after JSON", A, b'{"x": 1} {"y": 2}', {"malformed"},
         ["trailing", "extra", "after", "garbage", "json"]),
        ("top-level array", A, pack([1, 2, 3]), {"invalid", "malformed"},
         ["map", "object"]),
        ("top-level int", A, pack(5), {"invalid", "malformed"}, ["map", "object"]),
        ("top-level string", A, pack("hello"), {"invalid", "malformed"}, ["map", "object"]),
        ("top-level nil", A, pack(None), {"invalid", "malformed"}, ["map", "object"]),
        ("empty payload", A, b"", {"invalid", "malformed"},
         ["empty", "map", "object", "no data", "0 bytes", "truncat"]),
        ("invalid JSON (cut)", A, b'{"x": 1,', {"malformed"}, ["json", "end of input"]),
        ("invalid JSON (bad literal)", A, b'{"x": tru}', {"malformed"}, ["json", "unexpected"]),
        ("invalid JSON (bare key)", A, b'{x: 1}', {"malformed"}, ["json", "unexpected"]),
        ("key containing '.'", A, pack({"a.b": 1}), {"invalid"}, ["a.b", "'.'", "dot", "\".\""]),
        ("nested key containing '.'", A, pack({"v": {"c.d": 1}}), {"invalid"},
         ["c.d", "'.'", "dot", "\".\""]),
        ("JSON key containing '.'", A, b'{"e.f": 2}', {"invalid"},
         ["e.f", "'.'", "dot", "\".\""]),
        ("non-string key", A, pack({1: 2}), {"invalid"}, ["key"]),
        ("empty key", A, pack({"": 1}), {"invalid"}, ["key", "empty"]),
        ("key with a control byte", A, pack({"a\x01b": 1}), {"invalid"}, ["key", "control"]),
        ("key longer than 64 bytes", A, pack({"k" * 65: 1}), {"invalid", "size"},
         ["key", "long", "64"]),
        ("seq as a string", A, pack({"seq": "5", "x": 2}), {"invalid"}, ["seq"]),
        ("seq negative", A, pack({"seq": -1, "x": 2}), {"invalid"}, ["seq"]),
        ("seq a float", A, pack({"seq": 1.5, "x": 2}), {"invalid"}, ["seq"]),
        ("ts negative", A, pack({"ts": -5, "x": 2}), {"invalid"}, ["ts"]),
        ("ts a string", A, pack({"ts": "now", "x": 2}), {"invalid"}, ["ts"]),
        (f"payload above limits.max_payload={MAX_PAYLOAD}", A, pack({"blob": "x" * 2000}),
         {"size"}, ["max_payload"]),
        ("JSON payload above limits.max_payload", A,
         b'{"blob": "' + b"y" * 1500 + b'"}', {"size"}, ["max_payload"]),
        (f"map with {MAX_KEYS + 1} keys (limits.max_keys={MAX_KEYS})", A,
         pack({f"k{i}": i for i in range(MAX_KEYS + 1)}), {"size"},
         ["keys", "entries", "max_keys"]),
        (f"array with {MAX_KEYS + 1} elements", A, pack({"arr": list(range(MAX_KEYS + 1))}),
         {"size"}, ["keys", "elements", "entries", "max_keys"]),
        # The same bad payloads for a twin that does not exist yet must not create it.
        ("trailing bytes, new twin", "dev-new", good + b"\x00", {"malformed"},
         ["trailing", "extra", "after", "garbage"]),
        ("key with '.', new twin", "dev-new", pack({"a.b": 1}), {"invalid"},
         ["a.b", "'.'", "dot", "\".\""]),
        ("seq as a string, new twin", "dev-new", pack({"seq": "1"}), {"invalid"}, ["seq"]),
        # Bad ids in the topic (still delivered: '+' matches them).
        ("id starting with '.'", ".hidden", good, {"topic"}, ["id"]),
        ("id of 129 bytes", "i" * 129, good, {"topic"}, ["id"]),
        ("id with a space", "bad id", good, {"topic"}, ["id"]),
        ("id with a non-ASCII byte", "caf\u00e9", good, {"topic"}, ["id"]),
        ("id with '*'", "bad*id", good, {"topic"}, ["id"]),
        ("empty id", "", good, {"topic"}, ["id"]),
    ]
    return cases


def case_malformed(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"limits.max_payload": MAX_PAYLOAD, "limits.max_keys": MAX_KEYS,
                           "errors.rate": 1000, "errors.burst": 1000})
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors"])
    everything = MqttClient(fx, b, "all", subscribe=["#"])
    dev = MqttClient(fx, b, "dev")

    # Two twins with state, one with a seq and one without.
    dev.publish(telemetry_topic("dev-a"), pack({"seq": 1, "x": 1, "v": {"y": 2}}))
    dev.publish(telemetry_topic("dev-b"), b'{"z": "zz", "n": [1, 2]}')
    wait_state(w, "dev-a", 1)
    wait_state(w, "dev-b", 1)
    before = {t: get_retained(fx, b, state_topic(t)) for t in ("dev-a", "dev-b")}
    before_ctl = {t: twinctl(hub.db, "get", t) for t in ("dev-a", "dev-b")}
    before_list = twinctl(hub.db, "list")

    mark_state = w.count()
    failures = []
    for label, tid, payload, kinds, words in bad_inputs():
        topic = telemetry_topic(tid)
        start = w.count()
        dev.publish(topic, payload)
        try:
            m = w.wait_for(lambda m: m.topic == "hub/errors" or
                           mqtt.topic_matches_sub(STATE_SUB, m.topic), 10,
                           f"a report on hub/errors for: {label}", start)
        except TestFailure as e:
            hub.check_alive(f"after: {label}")
            failures.append(f"{label}: {e}")
            continue
        if m.topic != "hub/errors":
            d = decode_state(m.payload)
            failures.append(f"{label}: accepted; {m.topic} version {d.get('version')}, "
                            f"reported {d.get('reported')!r}")
            continue
        r = decode_report(m)
        problems = []
        if r["topic"] != topic:
            problems.append(f"topic {r['topic']!r} != {topic!r}")
        if r["kind"] not in kinds:
            problems.append(f"kind {r['kind']!r} not in {sorted(kinds)}")
        reason = str(r["reason"])
        if not any(wd.lower() in reason.lower() for wd in words):
            problems.append(f"reason {reason!r} names none of {words}")
        if r["suppressed"] != 0:
            problems.append(f"suppressed {r['suppressed']} with a burst of 1000")
        if not (isinstance(r["ts"], int) and abs(r["ts"] - now_ms()) < 60000):
            problems.append(f"ts {r['ts']!r} is not the hub's time")
        if problems:
            failures.append(f"{label}: " + "; ".join(problems) + f" (report {r!r})")
        hub.check_alive(f"after: {label}")
        if not problems:
            print(f"  rejected as expected: {label}: kind={r['kind']} reason={reason!r}")

    # One report per bad message: none was accepted quietly, none reported twice.
    time.sleep(0.3)
    reports = w.messages("hub/errors", mark_state)
    if len(reports) != len(bad_inputs()):
        failures.append(f"{len(reports)} reports on hub/errors for {len(bad_inputs())} bad "
                        "messages")
    check(not failures, "bad input not handled as expected:\n  " + "\n  ".join(failures))

    # Nothing changed.
    check_eq(w.messages(STATE_SUB, mark_state), [], "state publications during bad input")
    for t in ("dev-a", "dev-b"):
        check_eq(get_retained(fx, b, state_topic(t)), before[t],
                 f"retained state of {t} (bytes) after bad input")
        check_eq(twinctl(hub.db, "get", t), before_ctl[t], f"twinctl get {t} after bad input")
    rc, out, err = twinctl(hub.db, "get", "dev-new")
    check_eq(rc, 1, f"twinctl get dev-new (only bad input sent): stdout {out!r}")
    check_eq(twinctl(hub.db, "list"), before_list, "twinctl list after bad input")

    # Still serving: the next valid message is applied, version +1.
    dev.publish(telemetry_topic("dev-a"), pack({"seq": 2, "x": 3}))
    a2 = wait_state(w, "dev-a", 2)
    check_eq(a2["reported"], {"x": 3, "v": {"y": 2}}, "dev-a reported after bad input")

    # The limits themselves are allowed: depth max_depth, max_keys keys, a 128-byte id, a
    # payload just under max_payload.
    ok = [
        ("depth-ok", pack(nest_maps(MAX_DEPTH))),
        ("json-depth-ok", nest_json(MAX_DEPTH)),
        ("keys-ok", pack({f"k{i}": i for i in range(MAX_KEYS)})),
        ("i" * 128, pack({"x": 1})),
        ("size-ok", pack({"blob": "x" * (MAX_PAYLOAD - 20)})),
        ("Az09._:-", pack({"x": 1})),
    ]
    for tid, payload in ok:
        check(len(payload) <= MAX_PAYLOAD, "test bug: payload too large")
        start = w.count()
        dev.publish(telemetry_topic(tid), payload)
        m = w.wait_for(lambda m: m.topic in (state_topic(tid), "hub/errors"), 10,
                       f"the state of {tid[:20]} (input at the limits)", start)
        if m.topic != state_topic(tid):
            raise TestFailure(f"input at the limits rejected for {tid[:20]}: "
                              f"{decode_report(m)!r}")
    d = retained_state(fx, b, "depth-ok")
    check_eq(d["reported"], nest_maps(MAX_DEPTH), "reported of a twin at max_depth")

    # The hub published only inside its own scheme.
    ids = {"dev-a", "dev-b", "depth-ok", "json-depth-ok", "keys-ok", "i" * 128, "size-ok",
           "Az09._:-"}
    allowed = {"hub/status", "hub/errors"} | {state_topic(t) for t in ids}
    for m in everything.messages():
        if m.topic.startswith("devices/") or m.topic.startswith("it/sync/"):
            continue
        check(m.topic in allowed, f"the hub published to {m.topic!r}")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 5. rate limit on hub/errors
# ---------------------------------------------------------------------------------------------

def case_ratelimit(fx):
    rate, burst, n_bad = 4.0, 5, 500
    b = Broker(fx)
    hub = Hub(fx, b, sets={"errors.rate": rate, "errors.burst": burst})
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors"])
    dev = MqttClient(fx, b, "flood")
    barrier = Barrier(dev, w)

    t0 = time.monotonic()
    infos = [dev.publish_nowait(telemetry_topic("victim"), b"\xc1" + bytes([i % 256]))
             for i in range(n_bad)]
    for i in infos:
        i.wait_for_publish(30)
        check(i.is_published(), "flood message not acknowledged by the broker")
    barrier(timeout=60)  # the hub has handled all 500
    time.sleep(0.5)      # reports are QoS 0 from the publisher thread; let them land
    elapsed = time.monotonic() - t0
    reports = [decode_report(m) for m in w.messages("hub/errors")]
    n = len(reports)
    bound = burst + rate * elapsed + 2
    print(f"  {n} reports for {n_bad} bad messages in {elapsed:.2f}s (bound {bound:.1f})")
    check(n >= burst, f"only {n} reports; expected at least the burst of {burst}")
    check(n <= bound, f"{n} reports on hub/errors in {elapsed:.2f}s; at most burst {burst} + "
                      f"rate {rate}/s x elapsed + 2 = {bound:.1f} allowed")
    if n > burst:
        ts = [r["ts"] for r in reports]
        span = (max(ts) - min(ts)) / 1000.0
        check(n <= burst + rate * span + 1,
              f"{n} reports within {span:.2f}s of hub time: over the rate")
    check(all(r["topic"] == telemetry_topic("victim") for r in reports), "report topics")
    check(all(r["suppressed"] == 0 for r in reports[:burst]),
          f"the first {burst} reports (the burst) claim suppressed ones: "
          f"{[r['suppressed'] for r in reports[:burst]]}")

    # After a pause a token is back; the next report says how many were held back.
    time.sleep(1.5 / rate + 0.2)
    start = w.count()
    dev.publish(telemetry_topic("victim"), b"\xc1")
    m = w.wait_for(lambda m: m.topic == "hub/errors", 10, "a report after the flood", start)
    last = decode_report(m)
    check(last["suppressed"] > 0, f"report after the flood has suppressed = "
                                  f"{last['suppressed']!r}, expected > 0")
    reports.append(last)
    total = sum(r["suppressed"] for r in reports) + len(reports)
    check_eq(total, n_bad + 1, "reports + suppressed counts vs bad messages sent")
    hub.check_alive("after the flood")
    check_eq(twin_get(hub.db, "victim"), None, "the victim twin (only bad input)")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 6. kill -9 while devices stream QoS 1 telemetry
# ---------------------------------------------------------------------------------------------

class Stream(threading.Thread):
    """One device publishing QoS 1 telemetry with increasing seq, one at a time, recording what
    the broker acknowledged."""

    def __init__(self, fx, broker, idx, stop, period):
        super().__init__(daemon=True)
        self.idx = idx
        self.id = f"dev-{idx:02d}"
        self.client = MqttClient(fx, broker, self.id)  # created on the main thread
        self.stop = stop
        self.period = period
        self.last_seq = 0
        self.last_msg = None
        self.error = None

    def run(self):
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                msg = {"seq": seq, "ts": now_ms(), "value": seq * 0.25 + self.idx,
                       "count": seq, "tag": f"{self.id}-{seq}",
                       "nested": {"a": seq % 7, "b": [seq, self.idx]}}
                self.client.publish(telemetry_topic(self.id), pack(msg), qos=1, timeout=60)
                self.last_seq, self.last_msg = seq, msg
                if self.period:
                    time.sleep(self.period)
        except BaseException as e:
            self.error = e


def case_kill9(fx):
    seed = int(os.environ.get("TWINHUB_IT_SEED") or time.time())
    rnd = random.Random(seed)
    print(f"  seed {seed} (TWINHUB_IT_SEED)")
    n_dev, duration, kills = 10, 14.0, 5
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB])
    stop = threading.Event()
    period = float(os.environ.get("TWINHUB_IT_PERIOD") or 0.002)
    streams = [Stream(fx, b, i, stop, period) for i in range(n_dev)]
    at = sorted(rnd.uniform(1.0, duration - 1.0) for _ in range(kills))

    t0 = time.monotonic()
    for s in streams:
        s.start()
    try:
        for k, t in enumerate(at):
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the random moment itself, not a wait for a condition
            mark = hub.status.count()
            hub.kill9()
            seqs = [s.last_seq for s in streams]
            print(f"  kill {k + 1} at {time.monotonic() - t0:.2f}s, acked seqs {seqs}")
            hub.status.wait_for(lambda m: m.payload == b"offline", 15,
                                "the will 'offline' after kill -9", mark)
            time.sleep(rnd.uniform(0, 0.5))
            hub.start(timeout=60)
        left = t0 + duration - time.monotonic()
        if left > 0:
            time.sleep(left)
    finally:
        stop.set()
        for s in streams:
            s.join(90)
    for s in streams:
        check(not s.is_alive(), f"{s.id}: publisher thread stuck")
        check(s.error is None, f"{s.id}: publishing failed: {s.error!r}")
    last = {s.id: (s.last_seq, s.last_msg) for s in streams}
    print(f"  stream done after {time.monotonic() - t0:.1f}s; last acked seqs "
          f"{[v[0] for v in last.values()]}")

    # Caught up: every device's last acknowledged message is the twin's state.
    docs = {}

    def caught_up():
        hub.check_alive("while catching up")
        for tid, (seq, _) in last.items():
            if tid in docs:
                continue
            d = twin_get(hub.db, tid)
            if d is None or d.get("seq") != seq:
                return False
            docs[tid] = d
        return True
    try:
        wait_until(caught_up, 180, "every twin to reach its last acknowledged seq", 0.5)
    except TestFailure:
        got = {tid: (twin_get(hub.db, tid) or {}).get("seq") for tid in last}
        raise TestFailure("not caught up: device -> (last acked seq, twinctl seq): " +
                          ", ".join(f"{t}: ({last[t][0]}, {got[t]})" for t in last))
    for tid, (seq, msg) in last.items():
        d = docs[tid]
        exp = {k: v for k, v in msg.items() if k not in ("seq", "ts")}
        check_eq(d["reported"], exp, f"{tid}: reported vs the last acknowledged message")
        check_eq(d["meta"]["reported"], meta_like(exp, msg["ts"]), f"{tid}: meta.reported")

    # The retained state is the committed one, including what was committed but not yet
    # published when the hub was killed.
    for tid in last:
        def same():
            r = retained_state(fx, b, tid)
            return r if r is not None and r.get("version") == docs[tid]["version"] else None
        try:
            r = wait_until(same, 30, f"retained {state_topic(tid)} at version "
                                     f"{docs[tid]['version']}", 0.2)
        except TestFailure:
            r = retained_state(fx, b, tid)
            raise TestFailure(f"{tid}: retained state version "
                              f"{r.get('version') if r else None} (seq "
                              f"{r.get('seq') if r else None}), twinctl version "
                              f"{docs[tid]['version']} (seq {docs[tid]['seq']})")
        check_eq(r, docs[tid], f"{tid}: retained state vs twinctl get")

    # No version was ever published with two different contents (a crash took nothing back
    # that a subscriber had seen), and nobody saw a version beyond the final one.
    seen = {}
    for m in w.messages(STATE_SUB):
        d = decode_state(m.payload)
        tid = d.get("id")
        key = (tid, d.get("version"))
        if key in seen:
            check_eq(d.get("seq"), seen[key], f"{tid}: seq published for version {key[1]}")
        seen[key] = d.get("seq")
        if tid in docs:
            check(d["version"] <= docs[tid]["version"],
                  f"{tid}: a subscriber saw version {d['version']} > final "
                  f"{docs[tid]['version']}")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 3a. reboots: a new boot, back online, or a run of stale seqs counting up start a new order
# ---------------------------------------------------------------------------------------------

def case_reboot(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"limits.seq_restart_after": 8})
    errs = MqttClient(fx, b, "errors", subscribe=["hub/errors"])

    # twinsim restarted against the same store: its devices go on (a new boot each start)
    ids = [f"ecg-{i:04d}" for i in range(1, 4)]
    for run, count in ((1, 40), (2, 5)):
        sim = subprocess.run([TWINSIM_BIN, "--broker", b.url, "--devices", "3", "--count",
                              str(count), "--rate", "0", "--quiet"], capture_output=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        check(sim.returncode == 0, f"twinsim run {run}: exit {sim.returncode}: {sim.stdout!r}")
        wait_until(lambda: all((twin_get(hub.db, t) or {}).get("seq") == count for t in ids), 20,
                   f"twinsim run {run}: every twin at seq {count}")
    for t in ids:
        d = twin_get(hub.db, t)
        check("stale" not in d and "gaps" not in d, f"{t} after twinsim restarted: {d}")
        pts = twinctl_json(hub.db, "history", t, "reported.heart_rate")
        check_eq(len(pts), 45, f"{t}: heart-rate points of both runs")

    dev = MqttClient(fx, b, "dev")

    def send(tid, seqs, **extra):
        for s in seqs:
            dev.publish(telemetry_topic(tid), pack({"seq": s, "n": s, **extra}))

    # without boot, back online: a status online that finds the twin offline
    send("pump-1", range(1, 21))
    dev.publish("devices/pump-1/status", b"offline")
    dev.publish("devices/pump-1/status", b"online")
    send("pump-1", [1, 2])
    wait_until(lambda: ((twin_get(hub.db, "pump-1") or {}).get("reported") or {}).get("n") == 2,
               10, "pump-1 at n 2")
    d = twin_get(hub.db, "pump-1")
    check("stale" not in d and "seq_restart" not in d and d["seq"] == 2, f"pump-1: {d}")

    # saying nothing: 8 stale in a row counting up, and the 8th begins the new order
    send("pump-2", range(1, 31))
    send("pump-2", range(1, 8))
    wait_until(lambda: twin_get(hub.db, "pump-2").get("stale", {}).get("count") == 7, 10,
               "pump-2: 7 stale")
    d = twin_get(hub.db, "pump-2")
    check_eq((d["seq"], d["reported"]["n"], d["stale"]["run"]), (30, 30, 7),
             "pump-2 while its stale messages are dropped")
    send("pump-2", [8, 9])
    wait_until(lambda: (twin_get(hub.db, "pump-2") or {}).get("seq") == 9, 10, "pump-2 at seq 9")
    d = twin_get(hub.db, "pump-2")
    check_eq((d["reported"]["n"], d["stale"]["count"], d["stale"]["run"]), (9, 7, 0),
             "pump-2 after the restart")
    m = errs.wait_for(lambda m: unpack(m.payload).get("kind") == "stale" and
                      unpack(m.payload).get("topic") == "devices/pump-2/telemetry", 10,
                      "a stale report for pump-2")
    why = unpack(m.payload)["reason"]
    check("seq 1 is below 30" in why and "8 in a row counting up are taken as a restart" in why,
          f"the stale report: {why!r}")

    # with boot: a new one starts over at once; the same one catches duplicates
    send("pump-3", range(1, 11), boot="a")
    send("pump-3", [1, 1, 2], boot="b")
    wait_until(lambda: (twin_get(hub.db, "pump-3") or {}).get("seq") == 2, 10, "pump-3 at seq 2")
    d = twin_get(hub.db, "pump-3")
    check_eq((d["boot"], d.get("stale"), d["version"]), ("b", None, 12),
             "pump-3 after a new boot (10 + 2 applied, the duplicate not)")
    hub.stop()
    with open(hub.log) as f:
        log = f.read()
    check(log.count('msg="device restarted: a new seq order"') >= 3 + 2 and
          "reason=online" in log and "reason=stale_run" in log and "reason=boot" in log,
          "the restarts in the hub's log")
    stats = [ln for ln in log.splitlines() if 'msg="stats"' in ln]
    check(stats and " restarts=" in stats[-1] and " stale=7 " in stats[-1],
          f"the last stats line: {stats[-1:]}")


# ---------------------------------------------------------------------------------------------
# 3b. batches: several timestamped readings in one message, msgpack or SenML
# ---------------------------------------------------------------------------------------------

def case_batch(fx):
    b = Broker(fx)
    rules = fx.path("rules.yaml")
    with open(rules, "w") as f:
        f.write("rules:\n  - name: high\n    when: reported.hr > 100\n")
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors", "twins/+/events"])
    dev = MqttClient(fx, b, "dev")
    T = now_ms() - 60_000
    tid = "buf-1"

    dev.publish(telemetry_topic(tid), pack({"seq": 1, "ts": T + 50_000, "hr": 70}))
    wait_state(w, tid, 1)
    # a device back from offline flushes what it buffered: older than its live reading
    mark = w.count()
    dev.publish(telemetry_topic(tid), pack({
        "seq": 2, "batch": [{"ts": T + 20_000, "hr": 120, "spo2": 91},
                            {"ts": T + 10_000, "hr": 110},
                            {"ts": T + 30_000, "hr": 90, "spo2": 93}]}))
    d2 = wait_state(w, tid, 2, start=mark)
    check_eq(d2["reported"], {"hr": 70, "spo2": 93}, "reported after an older flush")
    check_eq(d2["meta"]["reported"], {"hr": T + 50_000, "spo2": T + 30_000}, "meta after it")
    pts = history_points(twinctl_json(hub.db, "history", tid, "reported.hr"))
    check_eq(pts, [(T + 10_000, 110), (T + 20_000, 120), (T + 30_000, 90), (T + 50_000, 70)],
             "hr history in time order")
    check_eq(len(states_since(w, tid, mark)), 1, "state publications for one batch")
    # the rule saw the result once: hr is 70, so nothing fired for 110 or 120
    check_eq([m for m in w.messages(f"twins/{tid}/events", mark)], [],
             "events for readings older than the state")

    # SenML (RFC 8428) on devices/{id}/senml
    sid = "senml-1"
    bt = (T + 40_000) / 1000
    dev.publish(f"devices/{sid}/senml", json.dumps([
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": bt, "n": "temp", "u": "Cel", "v": 36.6},
        {"n": "temp", "t": 1, "v": 36.8}, {"n": "pump/state", "vs": "on"},
        {"n": "alarm", "vb": False}]).encode())
    wait_until(lambda: (twin_get(hub.db, sid) or {}).get("reported", {}).get("temp") == 36.8, 10,
               "the SenML pack applied")
    d = twin_get(hub.db, sid)
    check_eq(d["reported"], {"temp": 36.8, "pump": {"state": "on"}, "alarm": False},
             "reported from SenML")
    check_eq(d["meta"]["reported"]["temp"], T + 41_000, "the record's time")
    pts = history_points(twinctl_json(hub.db, "history", sid, "reported.temp"))
    check_eq(pts, [(T + 40_000, 36.6), (T + 41_000, 36.8)], "temp history from SenML")
    v = d["version"]
    mark = w.count()
    dev.publish(f"devices/{sid}/senml", b'[{"n":"temp"}]')
    m = w.wait_for(lambda m: m.topic == "hub/errors", 10, "a report of a bad SenML pack", mark)
    why = unpack(m.payload)
    check(why["kind"] == "invalid" and "record 0: no value" in why["reason"], f"report: {why}")
    check_eq(twin_get(hub.db, sid)["version"], v, "the twin after a bad SenML pack")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 3c. waveforms: twinsim's continuous ECG strip kept as a signal, the last seconds of it
# ---------------------------------------------------------------------------------------------

def case_waveform(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"history.waveforms": "ecg=250", "history.waveform_seconds": "2s"})
    sim = subprocess.run([TWINSIM_BIN, "--broker", b.url, "--devices", "2", "--rate", "4",
                          "--seconds", "4", "--quiet"], capture_output=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    check(sim.returncode == 0, f"twinsim: exit {sim.returncode}: {sim.stdout!r}")
    tid = "ecg-0001"
    wait_until(lambda: (twin_get(hub.db, tid) or {}).get("seq", 0) >= 14, 10, "the strip sent")
    chunks = twinctl_json(hub.db, "wave", tid, "reported.ecg")
    check(all(c["rate"] == 250 and len(c["samples"]) == 63 for c in chunks),
          f"chunks of 250 Hz / 4 = 63 samples: {[(c['rate'], len(c['samples'])) for c in chunks]}")
    starts = [c["ts"] for c in chunks]
    steps = [b2 - a for a, b2 in zip(starts, starts[1:])]
    check(all(150 <= s <= 350 for s in steps), f"chunk starts a period (250 ms) apart: {steps}")
    span = starts[-1] + 252 - starts[0]
    check(1800 <= span <= 2300, f"about the last 2 s kept (waveform_seconds): {span} ms")
    d = twin_get(hub.db, tid)
    check_eq(chunks[-1]["samples"], [float(x) for x in d["reported"]["ecg"]],
             "the newest chunk is the strip in reported")
    rc, out, err = twinctl(hub.db, "wave", tid, "reported.ecg", "--table")
    rows = [ln.split("\t") for ln in out.splitlines()]
    check(rc == 0 and len(rows) == 63 * len(chunks) and all(len(r) == 2 for r in rows),
          f"wave --table: exit {rc}, {len(rows)} rows")
    rc, _, err = twinctl(hub.db, "wave", tid, "reported.heart_rate")
    check(rc == 1 and "no waveform of reported.heart_rate" in err, f"not a waveform: {rc} {err}")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 6a. growth: the LMDB map grows many times under a full-speed QoS 1 stream
# ---------------------------------------------------------------------------------------------

def case_growth(fx):
    """twinsim at full speed into a hub whose map starts at 1 MiB: the map grows while the
    publisher is busy (a growth waits for every read transaction of the process, and Paho's
    receive thread, which commits, holds Paho's lock). Nothing may stall or be lost."""
    n_dev, count = 20, 1000
    b = Broker(fx)
    hub = Hub(fx, b, sets={"store.map_size": "1MiB", "history.max_points": "100000"})
    sim = subprocess.run([TWINSIM_BIN, "--broker", b.url, "--devices", str(n_dev), "--count",
                          str(count), "--rate", "0", "--qos", "1", "--quiet"],
                         capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    out = sim.stdout.decode()
    check(sim.returncode == 0, f"twinsim exit {sim.returncode}: {out} {sim.stderr.decode()}")
    check(f"acked={n_dev * count} " in out, f"twinsim did not get every PUBACK: {out}")
    ids = [f"ecg-{i:04d}" for i in range(1, n_dev + 1)]

    def caught_up():
        hub.check_alive("while catching up")
        return all((twin_get(hub.db, t) or {}).get("seq") == count for t in ids)
    wait_until(caught_up, 120, f"every twin at seq {count}", 0.5)
    stats = twinctl_json(hub.db, "stats")
    check(stats["map_size"] > 1 << 20, f"the map did not grow: {stats}")
    for t in ids:
        d = twin_get(hub.db, t)
        wait_until(lambda: (retained_state(fx, b, t) or {}).get("version") == d["version"], 30,
                   f"retained {state_topic(t)} at version {d['version']}", 0.2)
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 6b. outbox: what was committed but never published goes out after a restart
# ---------------------------------------------------------------------------------------------

ACL_OPEN = "topic readwrite #\n"
# Nobody may publish to twins/#: the hub's state publications are refused (MQTT 5 PUBACK
# "not authorized"), while telemetry still flows in and is committed.
ACL_NO_STATE = ("topic readwrite devices/#\ntopic readwrite hub/#\ntopic readwrite it/#\n"
                "topic read twins/#\n")


def state_publishing_allowed(fx, b, probe):
    """Whether the broker lets a client publish on twins/ now (a retained probe comes back)."""
    p = MqttClient(fx, b, "probe")
    try:
        token = pack({"probe": now_ms()})
        p.publish(f"twins/{probe}/state", token, retain=True)
        return get_retained(fx, b, f"twins/{probe}/state") == token
    finally:
        p.close()
        fx.clients.remove(p)


def case_outbox(fx):
    b = Broker(fx, acl=ACL_OPEN)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB])
    dev = MqttClient(fx, b, "dev")
    ids = [f"ob-{i}" for i in range(5)]
    for i, tid in enumerate(ids):
        dev.publish(telemetry_topic(tid), pack({"seq": 1, "v": i}))
    for tid in ids:
        wait_state(w, tid, 1)

    # Refuse the hub's publications, then commit more changes.
    b.write_acl(ACL_NO_STATE)
    b.reload()
    check(not state_publishing_allowed(fx, b, "it-probe-1"), "the ACL did not take effect")
    mark = w.count()
    for n in range(2, 5):
        for i, tid in enumerate(ids):
            dev.publish(telemetry_topic(tid), pack({"seq": n, "v": i * 100 + n}))
    committed = {}

    def all_committed():
        for tid in ids:
            d = twin_get(hub.db, tid)
            if not d or d["seq"] != 4:
                return False
            committed[tid] = d
        return True
    wait_until(all_committed, 20, "the changes to be committed", 0.2)
    check_eq(w.messages(STATE_SUB, mark), [], "states published while the broker refuses them")

    # Crash with the publications still pending, allow them again, restart.
    time.sleep(0.5)  # let the refused publications fail and be queued again at least once
    hub.kill9()
    b.write_acl(ACL_OPEN)
    b.reload()
    check(state_publishing_allowed(fx, b, "it-probe-2"), "the ACL was not lifted")
    hub.start()
    for tid in ids:
        def same():
            r = retained_state(fx, b, tid)
            return r if r and r.get("version") == committed[tid]["version"] else None
        try:
            r = wait_until(same, 20, f"{tid} republished after the restart", 0.2)
        except TestFailure:
            r = retained_state(fx, b, tid)
            raise TestFailure(f"{tid}: committed version {committed[tid]['version']} (seq 4) "
                              f"was never published after the restart; retained version "
                              f"{r.get('version') if r else None} (seq "
                              f"{r.get('seq') if r else None})")
        check_eq(r, committed[tid], f"{tid}: republished state vs twinctl get")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 7. SIGHUP reloads limits; a bad file keeps the old values
# ---------------------------------------------------------------------------------------------

def write_config(path, broker, db, max_payload, extra=""):
    with open(path, "w") as f:
        f.write("# written by test_hub.py sighup\n"
                "broker:\n"
                f"  url: {broker.url}\n"
                "store:\n"
                f"  path: {db}\n"
                "log:\n"
                "  level: debug\n"
                "limits:\n"
                f"  max_payload: {max_payload}\n" + extra)


def case_sighup(fx):
    b = Broker(fx)
    cfg = fx.path("twinhub.yaml")
    db = fx.path("db")
    write_config(cfg, b, db, 4096)
    hub = Hub(fx, b, config=cfg, flags=False, db=db)
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors"])
    dev = MqttClient(fx, b, "dev")
    tid = "bio-1"
    seq = [0]

    def msg_of(size):
        seq[0] += 1
        p = pack({"seq": seq[0], "blob": ""})
        p = pack({"seq": seq[0], "blob": "b" * (size - len(p) - 2)})
        check(abs(len(p) - size) <= 3, f"test bug: payload of {len(p)} for {size}")
        return p

    def answer(m):
        """The state, or a report of a rejection (not the gap a rejected seq leaves)."""
        return m.topic == state_topic(tid) or (m.topic == "hub/errors" and
                                                decode_report(m)["kind"] != "gap")

    def accepted(size, version):
        start = w.count()
        dev.publish(telemetry_topic(tid), msg_of(size))
        m = w.wait_for(answer, 10, f"the hub's answer to {size} bytes", start)
        if m.topic != state_topic(tid):
            raise TestFailure(f"a {size}-byte message was rejected: {decode_report(m)!r}")
        check_eq(decode_state(m.payload)["version"], version, f"version after {size} bytes")

    def rejected(size):
        start = w.count()
        dev.publish(telemetry_topic(tid), msg_of(size))
        m = w.wait_for(lambda m: m.topic in (state_topic(tid), "hub/errors"), 10,
                       f"the hub's answer to {size} bytes", start)
        if m.topic != "hub/errors":
            raise TestFailure(f"a {size}-byte message was accepted (version "
                              f"{decode_state(m.payload).get('version')})")
        r = decode_report(m)
        check_eq(r["kind"], "size", f"kind of the report for {size} bytes")
        check("max_payload" in r["reason"], f"reason for {size} bytes: {r['reason']!r}")

    accepted(2000, 1)

    write_config(cfg, b, db, 1024)
    off = len(hub.log_text())
    hub.sighup()
    hub.wait_log("configuration reloaded", 10, off)
    rejected(2000)
    accepted(500, 2)

    # A bad file: the hub keeps running with the old values and says why.
    for bad, why in (("limits:\n  max_payload: banana\n", "max_payload"),
                     ("limits:\n  max_payload: 4096\n  bogus_key: 1\n", "bogus_key")):
        with open(cfg, "w") as f:
            f.write(f"broker:\n  url: {b.url}\nstore:\n  path: {db}\n" + bad)
        off = len(hub.log_text())
        hub.sighup()
        hub.wait_log("reload failed", 10, off)
        text = hub.log_text()[off:]
        check(why in text, f"the reload error does not name {why!r}: {text[-500:]!r}")
        check("configuration reloaded" not in text, "a bad file was reported as reloaded")
        hub.check_alive("after SIGHUP with a bad file")
        rejected(2000)
        rejected(1100)
        accepted(900, 3 if why == "max_payload" else 4)

    # A good file again, larger limit.
    write_config(cfg, b, db, 4096)
    off = len(hub.log_text())
    hub.sighup()
    hub.wait_log("configuration reloaded", 10, off)
    accepted(2000, 5)

    # A key that needs a restart is named, and not applied.
    write_config(cfg, b, db, 4096, "publish:\n  encoding: json\n")
    off = len(hub.log_text())
    hub.sighup()
    hub.wait_log("configuration reloaded", 10, off)
    line = [ln for ln in hub.log_text()[off:].splitlines() if "configuration reloaded" in ln][0]
    check("publish.encoding" in line, f"restart-needed key not named: {line!r}")
    start = w.count()
    dev.publish(telemetry_topic(tid), msg_of(100))
    d = wait_state(w, tid, 6, start=start)  # still msgpack: encoding needs a restart
    check_eq(d["id"], tid, "state after a reload that needs a restart")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 8. command line and configuration errors
# ---------------------------------------------------------------------------------------------

def case_cli(fx):
    c = Checks()
    rc, out, err = run_hub_once(["--help"])
    c.eq(rc, 0, "twinhub --help exit status")
    c.check("usage: twinhub" in out, f"twinhub --help prints no usage on stdout: {out!r}")
    for flag in ("--broker", "--db", "--set", "--version", "--config"):
        c.check(flag in out, f"twinhub --help does not mention {flag}")
    rc, out2, _ = run_hub_once(["-h"])
    c.eq((rc, out2), (0, out), "twinhub -h vs --help")

    rc, out, err = run_hub_once(["--version"])
    c.eq(rc, 0, "twinhub --version exit status")
    c.check(out.startswith("twinhub ") and any(ch.isdigit() for ch in out),
            f"twinhub --version: {out!r}")

    for args, what in ((["--frobnicate"], "an unknown flag"),
                       (["extra"], "an unexpected argument"),
                       (["--set", "noequals"], "--set without '='"),
                       (["--set", "no.such=1"], "--set of an unknown key"),
                       (["--set", "store.sync=always"], "--set of a bad value"),
                       (["-c", fx.path("missing.yaml")], "a missing config file")):
        rc, out, err = run_hub_once(args)
        c.eq(rc, 2, f"twinhub {' '.join(args)} ({what}): exit status (stderr {err!r})")
        c.check(err.strip(), f"twinhub with {what}: nothing on stderr")

    # Errors in the file name FILE:LINE: and the key.
    db = fx.path("db")
    for body, line, words, what in (
            ("  syncc: os\n", 6, ["syncc"], "an unknown key"),
            ("  sync: always\n", 6, ["store.sync", "always"], "a bad value"),
            ("  map_size: lots\n", 6, ["store.map_size", "lots"], "a bad size"),
            ("limits:\n  max_depth: 99\n", 7, ["limits.max_depth", "99"],
             "a value out of range")):
        path = fx.path("bad.yaml")
        with open(path, "w") as f:
            f.write("# test config\n"
                    "broker:\n"
                    "  url: tcp://127.0.0.1:1\n"
                    "store:\n"
                    f"  path: {db}\n" + body)
        rc, out, err = run_hub_once(["-c", path])
        c.eq(rc, 2, f"twinhub -c FILE with {what}: exit status (stderr {err!r})")
        c.check(f"{path}:{line}:" in err, f"twinhub with {what}: no '{path}:{line}:' in {err!r}")
        for wd in words:
            c.check(wd in err, f"twinhub with {what}: {wd!r} not in {err!r}")
    c.check(not os.path.exists(db), "twinhub created its store although the config was bad")

    # Environment: TWINHUB_<KEY> with a bad value is an error too.
    rc, out, err = run_hub_once(["--print-config"], env={"TWINHUB_STORE_SYNC": "always"})
    c.eq(rc, 2, f"TWINHUB_STORE_SYNC=always: exit status (stderr {err!r})")
    c.check("store.sync" in err or "STORE_SYNC" in err, f"bad env value not named: {err!r}")

    # --print-config shows the overrides and exits without starting.
    rc, out, err = run_hub_once(["--print-config", "--set", "errors.burst=77", "--db", db])
    c.eq(rc, 0, f"--print-config --set errors.burst=77: exit status (stderr {err!r})")
    c.check("77" in out and db in out, f"--print-config misses the overrides: {out!r}")
    rc, out, err = run_hub_once(["--print-config", "--db", db])
    c.eq(rc, 0, f"--print-config: exit status (stderr {err!r})")

    # twinctl: usage errors are 2, I/O errors are 2, a missing twin is 1.
    rc, out, err = twinctl(None)
    c.eq(rc, 2, "twinctl without arguments: exit status")
    rc, out, err = twinctl(db, "frobnicate")
    c.eq(rc, 2, "twinctl with an unknown command: exit status")
    rc, out, err = twinctl(db, "get")
    c.eq(rc, 2, "twinctl get without an id: exit status")
    rc, out, err = twinctl(fx.path("no", "such", "db"), "get", "x")
    c.eq(rc, 2, f"twinctl get on a missing store: exit status (stderr {err!r})")
    c.check(not os.path.exists(fx.path("no")), "twinctl created a store (it must be read-only)")
    c.done("command-line checks")


# ---------------------------------------------------------------------------------------------
# 9. publish.encoding: json
# ---------------------------------------------------------------------------------------------

def case_json(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"publish.encoding": "json"})
    w = MqttClient(fx, b, "watch", subscribe=[STATE_SUB, "hub/errors"])
    dev = MqttClient(fx, b, "dev")
    T = now_ms()
    m = {"seq": 7, "ts": T, "hr": 70, "temp": 36.55, "label": "caf\u00e9 \"q\"\n",
         "vitals": {"a": [1, 2.5, "x", None, True], "b": {"c": False}}}
    dev.publish(telemetry_topic("j-1"), pack(m))
    d = wait_state(w, "j-1", 1, json_mode=True)
    raw = w.messages(state_topic("j-1"))[-1].payload
    check(raw.lstrip()[:1] == b"{", f"state is not a JSON object: {raw[:80]!r}")
    exp = {k: v for k, v in m.items() if k not in ("seq", "ts")}
    check_eq(d["id"], "j-1", "JSON state.id")
    check_eq(d["version"], 1, "JSON state.version")
    check_eq(d["reported"], exp, "JSON state.reported")
    check_eq(d["meta"]["reported"], meta_like(exp, T), "JSON state.meta.reported")
    check_eq(d["seq"], 7, "JSON state.seq")
    check_eq(twin_get(hub.db, "j-1"), d, "twinctl get vs the JSON state")
    r = get_retained(fx, b, state_topic("j-1"))
    check_eq(json.loads(r), d, "retained JSON state")

    # Reports are JSON too.
    dev.publish(telemetry_topic("j-1"), b"\xc1")
    rep = w.wait_for(lambda m: m.topic == "hub/errors", 10, "a JSON report on hub/errors")
    r = decode_report(rep, json_mode=True)
    check_eq(r["topic"], telemetry_topic("j-1"), "JSON report topic")
    hub.stop()


CASES = {
    "telemetry": case_telemetry,
    "restart": case_restart,
    "seq": case_seq,
    "malformed": case_malformed,
    "ratelimit": case_ratelimit,
    "kill9": case_kill9,
    "growth": case_growth,
    "outbox": case_outbox,
    "sighup": case_sighup,
    "cli": case_cli,
    "reboot": case_reboot,
    "batch": case_batch,
    "waveform": case_waveform,
    "json": case_json,
}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
