#!/usr/bin/python3
"""test_events: no committed event is ever lost, against a real Mosquitto.

    /usr/bin/python3 test_events.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

A rule that changes state on every message makes one event per message ({rule, state, values:
{reported.n}}: n says which message). The publisher's queue is tiny (publish.max_queued_events),
so most events are left in the store and published from there (the spill):
- overflow: 20 devices x 40 messages as fast as the broker takes them: every event reaches a
  QoS 1 subscriber, each device's in the order it was committed, none dropped (/metrics), the
  spill used, and nothing left in the store afterwards;
- kill9: the same burst, and the hub killed (SIGKILL) while most events still wait in the store:
  after the restart every event arrives (at least once), from the store;
- refuse: publish.max_stored_events of 5: past it events are not stored, and are counted.
"""

import re
import sys

from harness import Broker, Checks, Hub, MqttClient, pack, run_case, unpack, wait_until

RULES = """
rules:
  - name: flip
    match: "dev-*"
    when: reported.n >= 0 and reported.v > 0
"""

DEVICES, MESSAGES = 20, 40


def setup(fx, sets=None):
    b = Broker(fx)
    path = fx.path("rules.yaml")
    with open(path, "w") as f:
        f.write(RULES)
    sets = {"rules.file": path, "publish.max_queued_events": 4, **(sets or {})}
    hub = Hub(fx, b, sets=sets)
    w = MqttClient(fx, b, "events-watch", subscribe=["twins/+/events"])
    return b, hub, w


def burst(fx, b):
    """Every device sends MESSAGES messages, v flipping sign: one transition each."""
    devs = [MqttClient(fx, b, f"dev-{i}") for i in range(DEVICES)]
    for n in range(MESSAGES):
        for i, d in enumerate(devs):
            d.publish_nowait(f"devices/dev-{i}/telemetry",
                             pack({"seq": n + 1, "n": n, "v": 1 if n % 2 == 0 else -1}))
    for d in devs:
        d.sync(30)
    return devs


def seen(w):
    """{device: [n of each rule event, in arrival order]}"""
    out = {}
    for m in w.messages():
        if not m.topic.startswith("twins/") or not m.topic.endswith("/events"):
            continue
        e = unpack(m.payload)
        if e.get("type") != "rule":
            continue
        dev = m.topic.split("/")[1]
        out.setdefault(dev, []).append(e["values"]["reported.n"])
    return out


def complete(w):
    s = seen(w)
    return all(set(s.get(f"dev-{i}", [])) >= set(range(MESSAGES)) for i in range(DEVICES))


def metric(hub, name):
    st, _, body = hub.http("/metrics")
    m = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else None


def case_overflow(fx):
    b, hub, w = setup(fx)
    c = Checks()
    burst(fx, b)
    wait_until(lambda: complete(w), 60, "every event at the subscriber")
    s = seen(w)
    for dev, ns in s.items():
        c.eq(ns, sorted(ns), f"{dev}'s events in commit order")
        c.eq(len(ns), len(set(ns)), f"{dev}: each event once (no restart, no reconnect)")
    c.check(metric(hub, "twinhub_events_spilled_total") > 0, "the queue was full: spilled")
    c.check(metric(hub, "twinhub_events_from_store_total") > 0, "published from the store")
    c.eq(metric(hub, 'twinhub_messages_dropped_total{class="reply"}') or 0, 0,
         "no event dropped")
    wait_until(lambda: metric(hub, "twinhub_events_stored") == 0, 10,
               "the store's event messages trimmed once acknowledged")
    c.done()


def case_kill9(fx):
    b, hub, w = setup(fx)
    c = Checks()
    burst(fx, b)
    hub.kill9()
    before = sum(len(v) for v in seen(w).values())
    c.check(before < DEVICES * MESSAGES, f"all {before} events out before the kill: no test")
    hub.start()
    wait_until(lambda: complete(w), 60, "every event at the subscriber after the restart")
    c.check(metric(hub, "twinhub_events_from_store_total") > 0, "re-published from the store")
    c.check("event messages to publish again" in hub.log_text(), "the restart says so")
    wait_until(lambda: metric(hub, "twinhub_events_stored") == 0, 10, "trimmed")
    c.done()


def case_refuse(fx):
    b, hub, w = setup(fx, {"publish.max_stored_events": 5})
    c = Checks()
    burst(fx, b)
    wait_until(lambda: (metric(hub, "twinhub_events_refused_total") or 0) > 0, 20,
               "events refused past publish.max_stored_events")
    c.check("event not stored" in hub.log_text(), "logged")
    c.done()


CASES = {"overflow": case_overflow, "kill9": case_kill9, "refuse": case_refuse}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
