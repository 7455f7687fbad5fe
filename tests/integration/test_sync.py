#!/usr/bin/python3
"""test_sync: twin synchronization over MQTT against a real Mosquitto, one case per ctest.

    /usr/bin/python3 test_sync.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

A service steers a device through its twin with nothing but MQTT: desired state and the delta
(devices/{id}/desired), requests with accepted/rejected replies (and MQTT 5 request/response),
presence (devices/{id}/status), the command queue (devices/{id}/commands, acks, expiry,
events on twins/{id}/events), and a hub killed in the middle of all of it. The harness
(harness.py) owns the processes and their cleanup.
"""

import random
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import (Broker, Checks, Hub, MqttClient, TestFailure, check, check_eq,
                     get_retained, now_ms, pack, run_case, twin_get, unpack, wait_until)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def decode(payload):
    try:
        return unpack(payload)
    except Exception as e:
        raise TestFailure(f"payload is not msgpack ({e}): {payload[:200]!r}")


class Service:
    """A service: sends requests on twins/{id}/... and waits for their replies (matched by
    token) on .../accepted or .../rejected."""

    def __init__(self, fx, broker, name="svc", protocol=mqtt.MQTTv311):
        self.c = MqttClient(fx, broker, name, protocol=protocol,
                            subscribe=["twins/+/+/accepted", "twins/+/+/rejected",
                                       "twins/+/+/+/accepted", "twins/+/+/+/rejected"])
        self.n = 0

    def token(self):
        self.n += 1
        return f"{self.c.client_id}-{self.n}"

    def request(self, twin_id, what, body=None, raw=None, timeout=15):
        """Sends twins/{id}/{what} with body (a dict, packed; a token is added unless it has
        one) or raw bytes; returns (outcome, reply) where outcome is 'accepted' or
        'rejected'. With raw bytes the reply is matched as the next one on that topic."""
        topic = f"twins/{twin_id}/{what}"
        start = self.c.count()
        tok = None
        if raw is None:
            body = dict(body or {})
            body.setdefault("token", self.token())
            tok = body["token"]
            raw = pack(body)
        self.c.publish(topic, raw)

        def mine(m):
            if m.topic not in (topic + "/accepted", topic + "/rejected"):
                return False
            return tok is None or decode(m.payload).get("token") == tok
        m = self.c.wait_for(mine, timeout, f"the reply to {topic} (token {tok})", start)
        return m.topic.rsplit("/", 1)[1], decode(m.payload)

    def accepted(self, twin_id, what, body=None, **kw):
        outcome, reply = self.request(twin_id, what, body, **kw)
        check(outcome == "accepted", f"{what} for {twin_id}: rejected {reply!r}")
        return reply

    def rejected(self, twin_id, what, body=None, code=None, **kw):
        outcome, reply = self.request(twin_id, what, body, **kw)
        check(outcome == "rejected", f"{what} for {twin_id} {body!r}: accepted {reply!r}")
        for k in ("code", "message", "token"):
            check(k in reply, f"rejected reply without '{k}': {reply!r}")
        if code is not None:
            check_eq(reply["code"], code, f"code of the rejection of {what} {body!r} "
                                          f"({reply.get('message')!r})")
        return reply


class Device:
    """A device: subscribes to its desired state and commands, publishes status, telemetry and
    acks. Its MQTT connection is separate from its online/offline status, as a device's is
    when it sleeps: `online()`/`offline()` publish the retained status, `reconnect()` starts a
    fresh clean session (a reboot)."""

    def __init__(self, fx, broker, twin_id):
        self.fx, self.b, self.id = fx, broker, twin_id
        self.c = None
        self.seq = 0
        self.reconnect()

    def reconnect(self):
        if self.c is not None:
            self.c.close()
        self.c = MqttClient(self.fx, self.b, f"dev-{self.id}",
                            subscribe=[f"devices/{self.id}/desired",
                                       f"devices/{self.id}/commands"])

    def online(self):
        self.c.publish(f"devices/{self.id}/status", b"online", retain=True)

    def offline(self):
        self.c.publish(f"devices/{self.id}/status", pack("offline"), retain=True)

    def report(self, fields):
        self.seq += 1
        self.c.publish(f"devices/{self.id}/telemetry", pack(dict(fields, seq=self.seq)))

    def ack(self, cmd_id, status, result=None):
        body = {"id": cmd_id, "status": status}
        if result is not None:
            body["result"] = result
        self.c.publish(f"devices/{self.id}/commands/ack", pack(body))

    def commands(self, start=0):
        return [decode(m.payload) for m in self.c.messages(f"devices/{self.id}/commands", start)]

    def desired(self, start=0):
        return [(m.payload, m.retain) for m in self.c.messages(f"devices/{self.id}/desired",
                                                               start)]


def events(w, twin_id, start=0, kind=None):
    evs = [decode(m.payload) for m in w.messages(f"twins/{twin_id}/events", start)]
    return [e for e in evs if kind is None or e.get("type") == kind]


def wait_event(w, twin_id, pred, what, timeout=15, start=0):
    m = w.wait_for(lambda m: m.topic == f"twins/{twin_id}/events" and pred(decode(m.payload)),
                   timeout, f"event on twins/{twin_id}/events: {what}", start)
    return decode(m.payload)


def retained_desired(fx, b, twin_id):
    """The retained devices/{id}/desired: None (nothing retained) or the decoded map."""
    p = get_retained(fx, b, f"devices/{twin_id}/desired")
    return None if p is None else decode(p)


def wait_retained_desired(fx, b, twin_id, pred, what, timeout=15):
    last = []

    def ok():
        v = retained_desired(fx, b, twin_id)
        last[:] = [v]
        return pred(v)
    try:
        wait_until(ok, timeout, what, 0.1)
    except TestFailure:
        raise TestFailure(f"{what}: retained devices/{twin_id}/desired is {last[0]!r}")
    return last[0]


def wait_doc(hub, twin_id, pred, what, timeout=15):
    last = []

    def ok():
        d = twin_get(hub.db, twin_id)
        last[:] = [d]
        return d is not None and pred(d)
    try:
        wait_until(ok, timeout, what, 0.1)
    except TestFailure:
        raise TestFailure(f"{what}: twinctl get {twin_id} is {last[0]!r}")
    return last[0]


# ---------------------------------------------------------------------------------------------
# 1. set -> accepted -> delta at the device -> device reports -> delta empties
# ---------------------------------------------------------------------------------------------

def case_delta(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/state", "devices/+/desired"])
    svc = Service(fx, b)
    dev = Device(fx, b, "sync-d1")
    dev.online()
    c = Checks()

    r = svc.accepted(dev.id, "desired/set",
                     {"desired": {"sample_hz": 250, "alarm": {"hr_high": 120, "hr_low": 40}},
                      "token": "tok-1"})
    c.eq(r.get("token"), "tok-1", "token echoed in accepted")
    c.eq(r.get("desired"), {"sample_hz": 250, "alarm": {"hr_high": 120, "hr_low": 40}},
         "accepted.desired")
    v1 = r.get("version")
    doc = twin_get(hub.db, dev.id)
    c.eq(doc.get("version"), v1, "accepted.version is the committed version")
    c.eq(doc.get("delta"), {"sample_hz": 250, "alarm": {"hr_high": 120, "hr_low": 40}},
         "twin delta")
    c.check(doc["meta"]["desired"]["alarm"]["hr_high"] > 0, "meta.desired has a timestamp "
                                                            "per leaf")

    # The delta reaches the device, retained.
    m = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/desired" and m.payload, 10,
                       "the delta at the device")
    c.eq(decode(m.payload), {"version": v1, "delta": {"sample_hz": 250,
                                                      "alarm": {"hr_high": 120, "hr_low": 40}}},
         "devices/{id}/desired")
    ret = wait_retained_desired(fx, b, dev.id, lambda v: v is not None, "a retained desired")
    c.eq(ret.get("delta"), {"sample_hz": 250, "alarm": {"hr_high": 120, "hr_low": 40}},
         "retained delta")

    # A JSON request (merge patch: nil deletes) works the same.
    r2 = svc.accepted(dev.id, "desired/set",
                      raw=b'{"desired": {"alarm": {"hr_low": null}}, "token": "json-1"}')
    c.eq(r2.get("desired"), {"sample_hz": 250, "alarm": {"hr_high": 120}},
         "desired after a JSON patch that deletes a leaf")

    # The device reports part of it: the delta shrinks.
    mark = dev.c.count()
    dev.report({"sample_hz": 250})
    m = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/desired" and m.payload and
                       decode(m.payload).get("delta") == {"alarm": {"hr_high": 120}}, 10,
                       "the smaller delta", mark)
    # Telemetry that does not change the delta publishes no desired.
    mark = dev.c.count()
    dev.report({"heart_rate": 70})
    wait_doc(hub, dev.id, lambda d: d["reported"].get("heart_rate") == 70, "heart_rate applied")
    time.sleep(0.3)
    c.eq(dev.desired(mark), [], "desired published for telemetry that left the delta alone")

    # Everything reported: an empty retained desired, no delta in the document.
    dev.report({"alarm": {"hr_high": 120}})
    dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/desired" and m.payload == b"", 10,
                   "the empty desired (in sync)", mark)
    doc = wait_doc(hub, dev.id, lambda d: d["reported"].get("alarm") == {"hr_high": 120},
                   "the report applied")
    c.check("delta" not in doc, f"delta left in the document: {doc.get('delta')!r}")
    c.eq(doc.get("desired"), {"sample_hz": 250, "alarm": {"hr_high": 120}},
         "desired is not cleared when reported catches up")
    wait_retained_desired(fx, b, dev.id, lambda v: v is None, "no retained desired once in sync")
    st = w.wait_for(lambda m: m.topic == f"twins/{dev.id}/state" and
                    decode(m.payload).get("version") == doc["version"], 10, "the last state")
    c.eq(decode(st.payload), doc, "twins/{id}/state vs twinctl get")

    # Desired set to what is reported: accepted, version bumped, delta stays empty, nothing
    # published to the device.
    mark = dev.c.count()
    r3 = svc.accepted(dev.id, "desired/set", {"desired": {"sample_hz": 250}})
    c.eq(r3.get("version"), doc["version"] + 1, "version after a no-op patch")
    time.sleep(0.3)
    c.eq(dev.desired(mark), [], "desired published for a patch that left the delta empty")
    c.done("delta checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 2. 409 on a stale version, bad requests: nothing changes
# ---------------------------------------------------------------------------------------------

MAX_PAYLOAD = 4096


def case_conflict(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"limits.max_payload": MAX_PAYLOAD, "errors.rate": 1000,
                           "errors.burst": 1000})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/state", "devices/+/desired",
                                              "hub/errors"])
    svc = Service(fx, b)
    tid = "sync-c1"
    c = Checks()

    # version 0: only when the twin does not exist
    r = svc.accepted(tid, "desired/set", {"desired": {"a": 1}, "version": 0})
    c.eq(r["version"], 1, "create with version 0")
    svc.rejected(tid, "desired/set", {"desired": {"a": 2}, "version": 0}, code=409)
    r = svc.accepted(tid, "desired/set", {"desired": {"b": 1}, "version": 1})
    c.eq(r["version"], 2, "conditional write at the current version")
    before = twin_get(hub.db, tid)
    ret_state = get_retained(fx, b, f"twins/{tid}/state")
    wait_retained_desired(fx, b, tid, lambda v: v and v.get("version") == 2, "desired v2")
    ret_desired = get_retained(fx, b, f"devices/{tid}/desired")
    mark = w.count()

    rej = svc.rejected(tid, "desired/set", {"desired": {"a": 99}, "version": 1,
                                            "token": "stale"}, code=409)
    c.eq(rej["token"], "stale", "token echoed in a rejection")
    c.check("version" in rej["message"], f"409 message names the version: {rej['message']!r}")
    svc.rejected(tid, "delete", {"version": 7}, code=409)

    bad = [
        ("not a map", pack([1, 2]), 400),
        ("not msgpack", b"\xc1\xc1", 400),
        ("no desired", pack({"token": "x"}), 400),
        ("desired not a map", pack({"desired": 5}), 400),
        ("unknown key", pack({"desired": {"a": 3}, "versoin": 1}), 400),
        ("bad version", pack({"desired": {"a": 3}, "version": -1}), 400),
        ("bad token", pack({"desired": {"a": 3}, "token": "t" * 65}), 400),
        ("token not a string", pack({"desired": {"a": 3}, "token": 5}), 400),
        ("bad key", pack({"desired": {"a.b": 3}}), 400),
        ("too large", pack({"desired": {"blob": "x" * MAX_PAYLOAD}}), 413),
        ("empty", b"", 400),
    ]
    for label, raw, code in bad:
        outcome, reply = svc.request(tid, "desired/set", raw=raw)
        c.eq((outcome, reply.get("code")), ("rejected", code), f"{label}: outcome and code")
    for label, body, code in [("cmd missing", {"args": {}}, 400),
                              ("cmd not a string", {"cmd": 5}, 400),
                              ("expires_in_ms 0", {"cmd": "x", "expires_in_ms": 0}, 400),
                              ("unknown key", {"cmd": "x", "when": 5}, 400),
                              ("cmd too long", {"cmd": "c" * 65}, 400),
                              ("no twin", {"cmd": "x"}, 404)]:
        twin = tid if code != 404 else "sync-nobody"
        rej = svc.rejected(twin, "commands/send", body, code=code)
        c.check(rej["token"] is not None, f"{label}: token not echoed: {rej!r}")
    svc.rejected("sync-nobody", "get", {}, code=404)
    svc.rejected("sync-nobody", "delete", {}, code=404)

    # Nothing changed and nothing was published for the twin.
    svc.accepted(tid, "get", {})  # in order after everything above
    time.sleep(0.3)
    c.eq(twin_get(hub.db, tid), before, "twin after rejected requests")
    c.eq(twin_get(hub.db, "sync-nobody"), None, "no twin made by rejected requests")
    c.eq([m.topic for m in w.messages("twins/+/state", mark)], [],
         "state published after rejected requests")
    c.eq([m.topic for m in w.messages("devices/+/desired", mark)], [],
         "desired published after rejected requests")
    c.eq(get_retained(fx, b, f"twins/{tid}/state"), ret_state, "retained state")
    c.eq(get_retained(fx, b, f"devices/{tid}/desired"), ret_desired, "retained desired")
    # Bad requests are reported like bad telemetry (409/404 are answers, not bad input).
    reports = [decode(m.payload) for m in w.messages("hub/errors", mark)]
    n_bad = len(bad) + 5
    c.eq(len(reports), n_bad, f"reports on hub/errors for {n_bad} bad requests "
                              f"({[r.get('reason') for r in reports]})")
    hub.check_alive("after bad requests")
    c.done("conflict checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 3. get and delete; the version continues after the twin is created again
# ---------------------------------------------------------------------------------------------

def case_get_delete(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    svc = Service(fx, b)
    dev = Device(fx, b, "sync-g1")
    dev.online()
    c = Checks()
    svc.accepted(dev.id, "desired/set", {"desired": {"rate": 5}})
    dev.report({"rate": 4, "temp": 36.6})
    doc = wait_doc(hub, dev.id, lambda d: d["reported"].get("temp") == 36.6, "telemetry")

    got = svc.accepted(dev.id, "get", {"token": "g-1"})
    c.eq(got.pop("token", None), "g-1", "get: token added to the document")
    c.eq(got, doc, "get: the whole document (vs twinctl get)")
    c.eq(got.get("delta"), {"rate": 5}, "get: delta in the document")
    c.eq(got.get("connected"), True, "get: connected")
    # get without a payload
    start = svc.c.count()
    svc.c.publish(f"twins/{dev.id}/get", b"")
    m = svc.c.wait_for(lambda m: m.topic == f"twins/{dev.id}/get/accepted", 10,
                       "the reply to an empty get", start)
    c.eq(decode(m.payload), doc, "get with an empty payload")

    # delete: a stale version is refused, the right one deletes
    svc.rejected(dev.id, "delete", {"version": doc["version"] - 1}, code=409)
    r = svc.accepted(dev.id, "delete", {"version": doc["version"], "token": "del-1"})
    c.eq(r, {"version": doc["version"], "token": "del-1"}, "delete: accepted")
    c.eq(twin_get(hub.db, dev.id), None, "twinctl get after delete")
    svc.rejected(dev.id, "get", {}, code=404)
    svc.rejected(dev.id, "delete", {}, code=404)
    wait_until(lambda: get_retained(fx, b, f"twins/{dev.id}/state") is None, 10,
               "the retained state cleared")
    wait_until(lambda: get_retained(fx, b, f"devices/{dev.id}/desired") is None, 10,
               "the retained desired cleared")
    # The device's own retained "online" does not bring the twin back; an "offline" neither.
    dev.offline()
    time.sleep(0.3)
    c.eq(twin_get(hub.db, dev.id), None, "twin after 'offline' for a deleted twin")

    # Created again: the version continues, so nobody mistakes it for the old one.
    r = svc.accepted(dev.id, "desired/set", {"desired": {"rate": 1}})
    c.eq(r["version"], doc["version"] + 1, "version of the twin created again")
    new = twin_get(hub.db, dev.id)
    c.eq(new.get("reported"), {}, "reported of the twin created again")
    c.eq(new.get("connected"), False, "connected of the twin created again")
    dev.report({"x": 1})
    d2 = wait_doc(hub, dev.id, lambda d: d["reported"].get("x") == 1, "telemetry after re-create")
    c.eq(d2["version"], doc["version"] + 2, "version after telemetry")
    # Telemetry creates it too, continuing the count.
    svc.accepted(dev.id, "delete", {})
    dev.report({"y": 2})
    d3 = wait_doc(hub, dev.id, lambda d: d["reported"].get("y") == 2, "telemetry after delete")
    c.eq(d3["version"], doc["version"] + 3, "version of a twin created again by telemetry")
    c.done("get/delete checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 4. MQTT 5 request/response with correlation data
# ---------------------------------------------------------------------------------------------

class V5Client(MqttClient):
    """An MQTT 5 client that keeps each message's correlation data."""

    def __init__(self, fx, broker, name, subscribe=()):
        self.props = []  # (topic, payload, correlation data or None)
        super().__init__(fx, broker, name, protocol=mqtt.MQTTv5, subscribe=subscribe)

    def _on_message(self, client, userdata, m):
        corr = getattr(m.properties, "CorrelationData", None) if m.properties else None
        with self.lock:
            self.props.append((m.topic, m.payload, corr))
        super()._on_message(client, userdata, m)

    def ask(self, topic, body, response_topic, corr):
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = response_topic
        p.CorrelationData = corr
        self.publish(topic, pack(body), properties=p)

    def wait_reply(self, topic, corr, what, timeout=10):
        def find():
            with self.lock:
                for t, payload, cd in self.props:
                    if t == topic and cd == corr:
                        return (t, payload, cd)
            return None
        t, payload, cd = wait_until(find, timeout, what)
        return decode(payload)


def case_mqtt5(fx):
    b = Broker(fx)
    hub = Hub(fx, b)  # MQTT 5 by default
    tid = "sync-m5"
    rt = "svc/replies/it-m5"
    svc = V5Client(fx, b, "svc5", subscribe=[rt, "twins/+/+/accepted", "twins/+/+/rejected",
                                             "twins/+/+/+/accepted", "twins/+/+/+/rejected"])
    other = MqttClient(fx, b, "all", subscribe=["#"])
    c = Checks()

    svc.ask(f"twins/{tid}/desired/set", {"desired": {"mode": "eco"}, "token": "t5"}, rt,
            b"\x00corr-1\xff")
    r = svc.wait_reply(rt, b"\x00corr-1\xff", "the reply on the response topic")
    c.eq(r, {"version": 1, "token": "t5", "desired": {"mode": "eco"}},
         "accepted on the response topic")
    svc.ask(f"twins/{tid}/desired/set", {"desired": {"mode": "x"}, "version": 9}, rt, b"corr-2")
    r = svc.wait_reply(rt, b"corr-2", "the rejection on the response topic")
    c.eq((r.get("code"), r.get("token")), (409, None), "rejected on the response topic")
    svc.ask(f"twins/{tid}/get", {}, rt, b"corr-3")
    r = svc.wait_reply(rt, b"corr-3", "get on the response topic")
    c.eq(r.get("desired"), {"mode": "eco"}, "get on the response topic")
    svc.ask(f"twins/{tid}/commands/send", {"cmd": "ping"}, rt, b"corr-4")
    r = svc.wait_reply(rt, b"corr-4", "commands/send on the response topic")
    c.check(isinstance(r.get("id"), str) and len(r["id"]) == 16, f"command id: {r!r}")
    time.sleep(0.2)
    c.eq([t for t, p, cd in svc.props if t.startswith("twins/")], [],
         "replies on the default topics when a response topic was given")

    # A response topic in the hub's own scheme is refused on the default topic; nothing moves.
    for n, bad_rt in enumerate([f"devices/{tid}/commands", f"twins/{tid}/desired/set",
                                "hub/status", f"twins/{tid}/state"]):
        corr = f"bad-{n}".encode()
        mark = other.count()
        svc.ask(f"twins/{tid}/desired/set", {"desired": {"mode": "evil"}}, bad_rt, corr)
        r = svc.wait_reply(f"twins/{tid}/desired/set/rejected", corr,
                           f"the rejection of response topic {bad_rt}")
        c.eq(r.get("code"), 400, f"response topic {bad_rt}: code")
        time.sleep(0.1)
        own = 1 if bad_rt == f"twins/{tid}/desired/set" else 0  # the request itself
        c.eq(len([m for m in other.messages(start=mark) if m.topic == bad_rt]), own,
             f"messages on {bad_rt} (the hub must not publish there)")
    c.eq((twin_get(hub.db, tid) or {}).get("desired"), {"mode": "eco"},
         "desired after refused response topics")

    # Correlation data without a response topic: the default topic, correlation echoed.
    p = Properties(PacketTypes.PUBLISH)
    p.CorrelationData = b"corr-only"
    svc.publish(f"twins/{tid}/get", pack({}), properties=p)
    r = svc.wait_reply(f"twins/{tid}/get/accepted", b"corr-only", "get/accepted with correlation")
    c.eq(r.get("id"), tid, "get/accepted with correlation data only")

    # An MQTT 3.1.1 service still gets its replies on the default topics.
    s3 = Service(fx, b, "svc311")
    c.eq(s3.accepted(tid, "get", {}).get("id"), tid, "MQTT 3.1.1 get")
    c.done("MQTT 5 checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 5. offline while desired changes and commands queue: both arrive on online, once per id
# ---------------------------------------------------------------------------------------------

def case_offline(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    svc = Service(fx, b)
    dev = Device(fx, b, "sync-o1")
    c = Checks()

    dev.online()
    ev = wait_event(w, dev.id, lambda e: e.get("type") == "presence", "online")
    c.eq({k: ev.get(k) for k in ("type", "connected")}, {"type": "presence", "connected": True},
         "presence event (online)")
    c.check(abs(ev.get("ts", 0) - now_ms()) < 60000, f"presence ts: {ev!r}")

    # While connected a command goes at once.
    r = svc.accepted(dev.id, "commands/send", {"cmd": "beep", "args": {"n": 2}})
    m = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/commands", 10, "the command")
    cmd = decode(m.payload)
    c.eq({k: cmd.get(k) for k in ("id", "cmd", "args", "expires")},
         {"id": r["id"], "cmd": "beep", "args": {"n": 2}, "expires": None}, "command message")
    c.check(isinstance(cmd.get("ts"), int), f"command ts: {cmd!r}")
    dev.ack(r["id"], "delivered")
    dev.ack(r["id"], "succeeded", {"ok": True})
    wait_event(w, dev.id, lambda e: e.get("id") == r["id"] and e.get("state") == "succeeded",
               "succeeded")
    states = [e["state"] for e in events(w, dev.id, kind="command") if e["id"] == r["id"]]
    c.eq(states, ["queued", "sent", "delivered", "succeeded"], "command events")
    # A late duplicate ack changes nothing and is reported, not applied.
    dev.ack(r["id"], "delivered")

    # The device goes away (its will): desired changes and commands wait.
    dev.offline()
    wait_event(w, dev.id, lambda e: e.get("type") == "presence" and e["connected"] is False,
               "offline")
    dev.c.close()
    ids = [svc.accepted(dev.id, "commands/send", {"cmd": f"c{i}", "args": [i]})["id"]
           for i in range(3)]
    svc.accepted(dev.id, "desired/set", {"desired": {"sample_hz": 100}})
    v = svc.accepted(dev.id, "desired/set", {"desired": {"alarm_hr_high": 130}})["version"]
    time.sleep(0.3)
    queued = [e for e in events(w, dev.id, kind="command") if e["id"] in ids]
    c.eq(sorted((e["id"], e["state"]) for e in queued), sorted((i, "queued") for i in ids),
         "commands only queued while the device is offline")

    # Back: a fresh session, subscribed before it says online.
    dev.reconnect()
    # (the retained delta of the last change is there at subscribe time already)
    mark = dev.c.count()
    dev.online()
    wait_until(lambda: len([x for x in dev.commands(mark) if x["id"] in ids]) >= 3, 10,
               "the three queued commands at the device")
    dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/desired" and m.payload and
                   decode(m.payload)["version"] > v, 10, "the delta re-sent on online", mark)
    time.sleep(1.0)  # anything sent twice would be here by now
    got = [x["id"] for x in dev.commands(mark)]
    c.eq(got, ids, "commands received after coming online (each once, in order)")
    c.eq([x["cmd"] for x in dev.commands(mark)], ["c0", "c1", "c2"], "their names")
    d = [decode(p) for p, r in dev.desired(mark) if p]
    c.check(d and d[-1]["delta"] == {"sample_hz": 100, "alarm_hr_high": 130},
            f"the delta after coming online: {d!r}")
    for i in ids:
        dev.ack(i, "succeeded")
    wait_until(lambda: all(any(e["id"] == i and e["state"] == "succeeded"
                               for e in events(w, dev.id, kind="command")) for i in ids), 10,
               "succeeded events of the three")
    # Online again (a reconnect): nothing pending, nothing re-sent.
    mark = dev.c.count()
    dev.online()
    time.sleep(0.5)
    c.eq(dev.commands(mark), [], "commands re-sent to a device with nothing pending")
    c.done("offline checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 6. commands expire, with an event
# ---------------------------------------------------------------------------------------------

def case_expire(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"commands.max_per_device": 3})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    svc = Service(fx, b)
    dev = Device(fx, b, "sync-e1")
    dev.online()
    wait_event(w, dev.id, lambda e: e.get("type") == "presence", "online")
    c = Checks()

    # Sent but never acknowledged: expires from `sent`.
    t0 = now_ms()
    r1 = svc.accepted(dev.id, "commands/send", {"cmd": "short", "expires_in_ms": 400})
    m = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/commands", 10, "the command")
    c.check(decode(m.payload).get("expires", 0) >= t0 + 400, f"expires: {decode(m.payload)!r}")
    ev = wait_event(w, dev.id, lambda e: e.get("id") == r1["id"] and e["state"] == "expired",
                    "expired (sent, never acked)", timeout=10)
    c.check(ev["ts"] >= t0 + 400, f"expired before its deadline: {ev!r} (sent at {t0})")
    c.check(ev["ts"] <= t0 + 400 + 3000, f"expired late: {ev!r} (sent at {t0})")
    c.eq(ev.get("cmd"), "short", "expired event names the command")
    # A late ack cannot revive it.
    dev.ack(r1["id"], "succeeded")

    # Queued for an offline device: expires there too, and is never sent.
    dev.offline()
    wait_event(w, dev.id, lambda e: e.get("type") == "presence" and not e["connected"],
               "offline")
    r2 = svc.accepted(dev.id, "commands/send", {"cmd": "short2", "expires_in_ms": 300})
    r3 = svc.accepted(dev.id, "commands/send", {"cmd": "long", "expires_in_ms": 600000})
    wait_event(w, dev.id, lambda e: e.get("id") == r2["id"] and e["state"] == "expired",
               "expired (queued)", timeout=10)
    # The per-device cap (3 here): the oldest pending one is pushed out, expired, with an event.
    r4 = svc.accepted(dev.id, "commands/send", {"cmd": "c4"})
    r5 = svc.accepted(dev.id, "commands/send", {"cmd": "c5"})
    r6 = svc.accepted(dev.id, "commands/send", {"cmd": "c6"})
    wait_event(w, dev.id, lambda e: e.get("id") == r3["id"] and e["state"] == "expired",
               "the oldest pending command pushed out by the cap")
    mark = dev.c.count()
    dev.online()
    wait_until(lambda: len(dev.commands(mark)) >= 3, 10, "the pending commands")
    time.sleep(0.5)
    c.eq([x["id"] for x in dev.commands(mark)], [r4["id"], r5["id"], r6["id"]],
         "commands sent on online: the live ones only")
    states = {}
    for e in events(w, dev.id, kind="command"):
        states.setdefault(e["id"], []).append(e["state"])
    c.eq(states.get(r1["id"]), ["queued", "sent", "expired"], "events of the sent one")
    c.eq(states.get(r2["id"]), ["queued", "expired"], "events of the queued one")
    c.eq(states.get(r3["id"]), ["queued", "expired"], "events of the pushed-out one")
    c.done("expiry checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# 7. SIGKILL in the middle: no command and no desired change lost
# ---------------------------------------------------------------------------------------------

def case_restart(fx):
    seed = int(time.time())
    rnd = random.Random(seed)
    print(f"  seed {seed}")
    b = Broker(fx)
    hub = Hub(fx, b)
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    svc = Service(fx, b)
    off = Device(fx, b, "sync-r-off")
    on = Device(fx, b, "sync-r-on")
    c = Checks()
    for d in (off, on):
        d.online()
        wait_event(w, d.id, lambda e: e.get("type") == "presence" and e["connected"], "online")

    # Part 1: an offline device's queue and desired changes, committed, then kill -9 before
    # anything else happens (the outbox still holds the publications).
    off.offline()
    wait_event(w, off.id, lambda e: e.get("type") == "presence" and not e["connected"],
               "offline")
    off.c.close()
    ids = [svc.accepted(off.id, "commands/send", {"cmd": f"q{i}"})["id"] for i in range(4)]
    for i in range(4):
        svc.accepted(off.id, "desired/set", {"desired": {f"k{i}": i}})
    hub.kill9()
    hub.start()
    off.reconnect()
    mark = off.c.count()
    off.online()
    wait_until(lambda: {x["id"] for x in off.commands(mark)} >= set(ids), 15,
               "the queued commands after the restart")
    r = wait_retained_desired(fx, b, off.id,
                              lambda v: v and v["delta"] == {f"k{i}": i for i in range(4)},
                              "every desired change in the retained delta")
    time.sleep(0.5)
    c.eq([x["id"] for x in off.commands(mark)], ids,
         "queued commands after a restart: each once, in order")

    # Part 2: a stream of requests for a connected device, the hub killed at a random moment
    # while it works through them, then restarted. The broker keeps what the hub had not
    # acknowledged (its session persists), so every request is applied (a redelivered one
    # possibly twice), and every command reaches the device at least once.
    n, pause = 40, 0.01
    mark = on.c.count()
    rmark = svc.c.count()

    def stream():
        for i in range(n):
            svc.c.publish_nowait(f"twins/{on.id}/commands/send",
                                 pack({"cmd": f"s{i}", "token": f"s{i}"}))
            svc.c.publish_nowait(f"twins/{on.id}/desired/set",
                                 pack({"desired": {f"p{i}": i}, "token": f"p{i}"}))
            time.sleep(pause)
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    time.sleep(rnd.uniform(0.1, n * pause * 0.8))  # the random moment itself
    hub.kill9()
    accepted_before = len(svc.c.messages("twins/+/+/+/accepted", rmark))
    print(f"  killed after {accepted_before} of {2 * n} replies")
    hub.start()
    t.join(30)
    check(not t.is_alive(), "the request stream is stuck")

    want = {f"p{i}": i for i in range(n)}
    wait_doc(hub, on.id, lambda d: all(d["desired"].get(k) == v for k, v in want.items()),
             "every desired change applied after the restart", timeout=30)
    wait_until(lambda: {x["cmd"] for x in on.commands(mark)} >= {f"s{i}" for i in range(n)},
               30, "every command at the device")
    replied = [decode(m.payload)["id"] for m in svc.c.messages("twins/+/+/+/accepted", rmark)
               if m.topic.endswith("commands/send/accepted")]
    time.sleep(1.0)  # a command committed last may still be on its way
    got = {x["id"] for x in on.commands(mark)}
    c.eq(sorted(set(replied) - got), [], "accepted command ids that never reached the device")
    c.check(len(replied) >= 1, "no command reply at all")
    wait_retained_desired(fx, b, on.id,
                          lambda v: v and all(v["delta"].get(k) == x for k, x in want.items()),
                          "every desired change in the device's retained delta")
    # Once the device acknowledges everything, nothing is left pending after another restart.
    for cid in got:
        on.ack(cid, "succeeded")
    wait_until(lambda: all(any(e.get("id") == cid and e.get("state") == "succeeded"
                               for e in events(w, on.id, kind="command")) for cid in got),
               20, "every command succeeded")
    hub.stop()
    mark = on.c.count()
    hub.start()
    time.sleep(1.0)
    c.eq(on.commands(mark), [], "commands re-sent after a clean restart with none pending")
    c.done("restart checks")
    hub.stop()


CASES = {
    "delta": case_delta,
    "conflict": case_conflict,
    "get_delete": case_get_delete,
    "mqtt5": case_mqtt5,
    "offline": case_offline,
    "expire": case_expire,
    "restart": case_restart,
}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
