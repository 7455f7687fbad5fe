#!/usr/bin/python3
"""test_durability: what the broker keeps for the hub while the hub is down (issue 18).

    /usr/bin/python3 test_durability.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

Devices publish at QoS 1 while the hub is stopped, for longer than Mosquitto's default queue
(1000 messages per client) holds; every message carries its device's seq and a value `n` equal
to it, so the history of reported.n says which messages reached the twin.

  shipped        the broker with the project's queue and persistence
                 (deploy/mosquitto-durable.conf); the hub is killed, and the broker itself
                 restarts (a clean stop, then a start on the same port) in the middle of the
                 outage. After the hub is back, every message the broker acknowledged to a
                 device is in its twin, and no gap is reported.
                 TWINHUB_IT_OUTAGE=N: N messages per device instead of 600.
  default_queue  the same against Mosquitto's own defaults: the broker drops what is past its
                 queue, and the hub reports the loss as gaps (twin field, hub/errors, the stats
                 line), which add up, device by device, to what never arrived.
"""

import os
import re
import sys
import time

from harness import (Broker, Hub, MqttClient, check, check_eq, pack, run_case, twin_get,
                     twinctl_json, unpack, wait_until)

DEVICES = 10
# messages per device in the outage: 6000 in all, six times Mosquitto's default queue
# (TWINHUB_IT_OUTAGE=N runs a longer outage by hand)
PER_DEVICE = int(os.environ.get("TWINHUB_IT_OUTAGE", "600"))
MOSQUITTO_DEFAULT_QUEUE = 1000
HUB_SETS = {"history.max_points": PER_DEVICE + 100}


def dev_id(i):
    return f"mon-{i:02d}"


def publish_range(dev, first, last):
    """Every device publishes seq first..last (n = seq) at QoS 1, round robin; returns once
    the broker acknowledged each one (paho keeps up to 200 in flight, 1000 waiting here)."""
    infos, n = [], 0

    def acked(info):
        info.wait_for_publish(30)
        check(info.is_published(), "a device's message was not acknowledged by the broker")
    for seq in range(first, last + 1):
        for i in range(DEVICES):
            infos.append(dev.publish_nowait(f"devices/{dev_id(i)}/telemetry",
                                            pack({"seq": seq, "n": seq}), qos=1))
            n += 1
            if len(infos) >= 1000:
                acked(infos.pop(0))
    for info in infos:
        acked(info)
    return n


def history_n(hub, tid):
    pts = twinctl_json(hub.db, "history", tid, "reported.n")
    pts = pts if isinstance(pts, list) else [pts]
    return [int(p["value"]) for p in pts]


def start_fleet(fx, b, hub):
    """Each device's twin exists (seq 1) before the outage, so every later loss is a gap."""
    dev = MqttClient(fx, b, "devices")
    publish_range(dev, 1, 1)
    wait_until(lambda: all((twin_get(hub.db, dev_id(i)) or {}).get("seq") == 1
                           for i in range(DEVICES)), 20, "every twin at seq 1")
    return dev


def wait_caught_up(hub, seq, timeout=30):
    wait_until(lambda: all((twin_get(hub.db, dev_id(i)) or {}).get("seq") == seq
                           for i in range(DEVICES)), timeout, f"every twin at seq {seq}")


def last_stats(hub):
    """The counters of the hub's last stats line (it logs one as it stops)."""
    lines = [ln for ln in hub.log_text().splitlines() if 'msg="stats"' in ln]
    check(lines, "no stats line in the hub's log")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def case_shipped(fx):
    b = Broker(fx)  # the shipped queue and persistence
    hub = Hub(fx, b, sets=HUB_SETS)
    dev = start_fleet(fx, b, hub)

    hub.kill9()  # the hub is down (crashed); its session and subscriptions stay at the broker
    half = PER_DEVICE // 2
    sent = publish_range(dev, 2, half)
    dev.close()
    b.restart()  # mid-outage: the queue must come back from mosquitto.db
    dev = MqttClient(fx, b, "devices-after-restart")
    sent += publish_range(dev, half + 1, PER_DEVICE)
    check(sent > MOSQUITTO_DEFAULT_QUEUE * 5, f"only {sent} messages in the outage")
    print(f"{sent} messages acknowledged by the broker while the hub was down", file=sys.stderr)

    hub.status = MqttClient(fx, b, "status-after-restart", subscribe=["hub/status"])
    t0 = time.monotonic()
    hub.start()
    wait_caught_up(hub, PER_DEVICE, timeout=30 + sent / 2000)
    print(f"caught up {time.monotonic() - t0:.1f}s after the hub's start", file=sys.stderr)
    for i in range(DEVICES):
        tid = dev_id(i)
        check_eq(history_n(hub, tid), list(range(1, PER_DEVICE + 1)),
                 f"the messages of {tid} in its twin")
        check("gaps" not in twin_get(hub.db, tid), f"a gap reported for {tid}")
    hub.stop()
    st = last_stats(hub)
    check_eq((st["gaps"], st["missed"]), (0, 0), "gaps and missed in the stats line")
    with open(b.log, "rb") as f:
        blog = f.read()
    check(b"Outgoing messages are being dropped" not in blog, "the broker dropped messages")
    check(b"Saving in-memory database" in blog, "the broker did not save its database")


def case_default_queue(fx):
    b = Broker(fx, durable=False)  # Mosquitto's defaults: 1000 queued, no persistence
    hub = Hub(fx, b, sets=HUB_SETS)
    errors = MqttClient(fx, b, "errors", subscribe=["hub/errors"])
    dev = start_fleet(fx, b, hub)

    hub.kill9()
    sent = publish_range(dev, 2, PER_DEVICE)
    hub.start()
    # what the broker kept arrives first; then each device's next message shows the gap
    wait_until(lambda: "dropped" in open(b.log, "rb").read().decode(errors="replace"), 10,
               "the broker's log to say it dropped messages")
    publish_range(dev, PER_DEVICE + 1, PER_DEVICE + 1)
    wait_caught_up(hub, PER_DEVICE + 1)

    arrived = missed = 0
    for i in range(DEVICES):
        tid = dev_id(i)
        got = [n for n in history_n(hub, tid) if 2 <= n <= PER_DEVICE]
        lost = (PER_DEVICE - 1) - len(got)
        doc = twin_get(hub.db, tid)
        gaps = doc.get("gaps", {"count": 0, "missed": 0})
        check_eq(gaps["missed"], lost, f"gaps.missed of {tid} (it received {len(got)})")
        if lost:
            check_eq(gaps["to"], PER_DEVICE, f"the last gap of {tid} ends before seq 601")
            check(gaps["count"] >= 1 and gaps["from"] <= gaps["to"], f"gaps of {tid}: {gaps}")
        arrived += len(got)
        missed += lost
    check_eq(arrived + missed, sent, "what arrived and what the gaps say was lost")
    check(missed >= sent - MOSQUITTO_DEFAULT_QUEUE - 100,
          f"only {missed} of {sent} lost: was Mosquitto's default queue in effect?")
    print(f"{sent} sent while the hub was down, {arrived} arrived, {missed} reported lost",
          file=sys.stderr)

    # hub/errors: one report per device that lost something (10 fit in the default burst)
    def gap_reports():
        rs = [unpack(m.payload) for m in errors.messages("hub/errors")]
        return [r for r in rs if r.get("kind") == "gap"]
    reports = wait_until(lambda: len(gap_reports()) >= DEVICES and gap_reports(), 10,
                         "a gap report per device on hub/errors")
    total = 0
    for r in reports:
        m = re.search(r"seq gap: (\d+) messages never arrived \(seq (\d+)\.\.(\d+)\)", r["reason"])
        check(m and r["topic"].startswith("devices/mon-"), f"gap report: {r!r}")
        check_eq(int(m.group(1)), int(m.group(3)) - int(m.group(2)) + 1, f"report {r!r}")
        total += int(m.group(1))
    check_eq(total, missed, "the seq numbers named by the gap reports")

    hub.stop()
    st = last_stats(hub)
    check_eq((st["gaps"], st["missed"]), (len(reports), missed), "gaps and missed in stats")


CASES = {"shipped": case_shipped, "default_queue": case_default_queue}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
