#!/usr/bin/python3
"""test_dispatch: the rules file's dispatch: in a running hub, over MQTT against a real Mosquitto.

    /usr/bin/python3 test_dispatch.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

Monitors (demands: their tachycardia rule fires) and nurses (resources: they report a position,
skills and whether they are on shift) are Python devices here, so that every step is the test's:
- assign: a demand gets the nearest free nurse in the commit that opened it: the command at the
  nurse with the bed's position, the nurse's desired.task, events on both twins, the record in
  `twinctl dispatch`; the nurse's ack succeeded frees her (desired.task cleared, event done) and
  the demand ends when the alarm does;
- choose: one nurse frees up while three demands wait: she goes to the one the cost prefers
  (the nearest), not the oldest; priority beats distance; skills and shifts are never violated;
  a nurse with capacity 2 takes two;
- handback: a nurse that goes offline or declines (ack failed) hands her demand back, and it
  goes to another nurse (not to her again); a demand that ends while its nurse walks releases
  her (cancel command, desired.task cleared);
- restart: kill -9 of the hub between the alarms and the acks: afterwards every demand was
  assigned exactly once, no nurse holds more than her capacity, and the store agrees with
  what the nurses were told.
"""

import json
import sys
import time

from harness import (Broker, Checks, Hub, MqttClient, check, check_eq, pack, run_case,
                     twin_get, twinctl, unpack, wait_until)

RULES = """
rules:
  - name: tachycardia
    match: "ecg-*"
    when: reported.heart_rate > 120

dispatch:
  - name: nurse_call
    demand:
      rule: tachycardia
      priority: reported.acuity
      requires: reported.needs
    resource:
      match: "nurse-*"
      when: reported.on_shift == true
      capacity: reported.capacity
      skills: reported.skills
    cost: hypot(demand.reported.pos.x - resource.reported.pos.x, demand.reported.pos.y - resource.reported.pos.y)
    on_assign:
      command: {cmd: attend, args: {level: high}, expires: 60s}
      with: {x: demand.reported.pos.x, y: demand.reported.pos.y}
      desired: task
      event: {severity: high}
    on_release:
      command: {cmd: cancel}
"""


class Dev:
    def __init__(self, fx, broker, dev_id):
        self.id = dev_id
        self.seq = 0
        self.c = MqttClient(fx, broker, dev_id, subscribe=[f"devices/{dev_id}/commands"])

    def send(self, **fields):
        self.seq += 1
        body = {"seq": self.seq}
        body.update(fields)
        self.c.publish(f"devices/{self.id}/telemetry", pack(body))

    def status(self, online):
        self.c.publish(f"devices/{self.id}/status", b"online" if online else b"offline",
                       retain=True)

    def commands(self, cmd=None):
        out = [unpack(m.payload) for m in self.c.messages(f"devices/{self.id}/commands")]
        return [c for c in out if cmd is None or c["cmd"] == cmd]

    def ack(self, command, status):
        self.c.publish(f"devices/{self.id}/commands/ack",
                       pack({"id": command["id"], "status": status}))


def nurse(fx, b, n, x, y, skills=("ward", "cardiac"), capacity=None, on_shift=True):
    d = Dev(fx, b, f"nurse-{n}")
    d.status(True)
    fields = {"pos": {"x": float(x), "y": float(y)}, "skills": list(skills), "on_shift": on_shift}
    if capacity is not None:
        fields["capacity"] = capacity
    d.send(**fields)
    return d


def monitor(fx, b, n, x, y, acuity=1, needs=None):
    d = Dev(fx, b, f"ecg-{n}")
    d.status(True)
    fields = {"pos": {"x": float(x), "y": float(y)}, "heart_rate": 80, "acuity": acuity}
    if needs is not None:
        fields["needs"] = needs
    d.send(**fields)
    return d


def records(db):
    rc, out, err = twinctl(db, "dispatch")
    check_eq(rc, 0, f"twinctl dispatch (stderr {err.strip()!r})")
    return {r["demand"]: r for r in (json.loads(line) for line in out.splitlines() if line)}


def dispatch_events(watch, twin, state=None):
    out = []
    for m in watch.messages(f"twins/{twin}/events"):
        e = unpack(m.payload)
        if e.get("type") == "dispatch" and (state is None or e["state"] == state):
            out.append(e)
    return out


def wait_attend(n, count=1, timeout=10):
    return wait_until(lambda: len(n.commands("attend")) >= count and n.commands("attend"),
                      timeout, f"{count} attend command(s) at {n.id}")[count - 1]


def setup(fx, hub_sets=None):
    b = Broker(fx)
    rules = fx.path("rules.yaml")
    with open(rules, "w") as f:
        f.write(RULES)
    hub = Hub(fx, b, sets={"rules.file": rules, **(hub_sets or {})})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    return b, hub, w


def settle(hub, ids):
    """Waits until the hub applied the first message of every device."""
    for i in ids:
        wait_until(lambda: (twin_get(hub.db, i) or {}).get("seq", 0) >= 1, 10,
                   f"{i}'s first telemetry in the store")


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def case_assign(fx):
    b, hub, w = setup(fx)
    c = Checks()
    n1 = nurse(fx, b, 1, 0, 4)
    n2 = nurse(fx, b, 2, 30, 4)
    m = monitor(fx, b, 1, 27, 0)
    settle(hub, [n1.id, n2.id, m.id])
    m.send(heart_rate=130)
    cmd = wait_attend(n2)
    c.eq(cmd["args"].get("demand"), m.id, "the attend command names the demand")
    c.eq(cmd["args"].get("dispatch"), "nurse_call", "... and the dispatch")
    c.eq((cmd["args"].get("x"), cmd["args"].get("y")), (27, 0), "with: the bed's position")
    c.eq(cmd["args"].get("level"), "high", "the static args")
    c.check(abs(cmd["args"]["cost"] - 5.0) < 1e-9, f"cost 5 m: {cmd['args']['cost']}")
    c.eq(n1.commands("attend"), [], "the far nurse is not sent")
    ev = wait_until(lambda: dispatch_events(w, m.id, "assigned"), 5, "assigned on the demand")[0]
    c.eq((ev["resource"], ev["severity"]), (n2.id, "high"), "assigned event on the demand")
    wait_until(lambda: dispatch_events(w, n2.id, "assigned"), 5, "assigned on the nurse")
    ev_open = dispatch_events(w, m.id, "open")
    c.check(ev_open and ev_open[0]["ts"] == ev["ts"], "opened and assigned in one commit")
    doc = twin_get(hub.db, n2.id)
    c.eq(doc["desired"]["task"]["demand"], m.id, "the nurse's desired.task")
    rec = records(hub.db)[m.id]
    c.eq((rec["state"], rec["resource"], rec["command"]), ("assigned", n2.id, cmd["id"]),
         "the record")
    # the nurse is done: freed; the demand is served until its alarm ends
    n2.ack(cmd, "delivered")
    n2.ack(cmd, "succeeded")
    wait_until(lambda: dispatch_events(w, n2.id, "done"), 5, "done on the nurse")
    wait_until(lambda: "task" not in (twin_get(hub.db, n2.id)["desired"] or {}), 5,
               "desired.task cleared")
    c.eq(records(hub.db)[m.id]["state"], "served", "served while the alarm lasts")
    m.send(heart_rate=131)  # still the same episode: no new demand
    time.sleep(0.5)
    c.eq(len(n2.commands("attend")) + len(n1.commands("attend")), 1, "served: not sent again")
    m.send(heart_rate=80)
    wait_until(lambda: m.id not in records(hub.db), 5, "the record gone with the alarm")
    m.send(heart_rate=140)  # a new episode: a new demand
    wait_attend(n2, 2)
    st, _, body = hub.http("/metrics")
    text = body.decode()
    for series in ("twinhub_dispatch_assigned_total", "twinhub_dispatch_completed_total",
                   "twinhub_dispatch_wait_seconds_count"):
        c.check(f'{series}{{dispatch="nurse_call"}}' in text or series in text,
                f"{series} in /metrics")
    c.done()


def case_choose(fx):
    b, hub, w = setup(fx)
    c = Checks()
    n1 = nurse(fx, b, 1, 0, 4)
    far = monitor(fx, b, 1, 40, 0)
    near = monitor(fx, b, 2, 4, 0)
    mid = monitor(fx, b, 3, 20, 0)
    settle(hub, [n1.id, far.id, near.id, mid.id])
    # the nurse is busy with the far bed; two more alarms wait
    far.send(heart_rate=130)
    first = wait_attend(n1)
    c.eq(first["args"]["demand"], far.id, "the only demand")
    mid.send(heart_rate=130)
    time.sleep(0.3)
    near.send(heart_rate=130)
    wait_until(lambda: records(hub.db).get(near.id, {}).get("state") == "open", 5,
               "the near demand waits")
    c.eq(records(hub.db)[mid.id]["state"], "open", "the middle one waits too")
    n1.ack(first, "succeeded")
    # she is back at the station (0, 4): the near bed costs 4, the middle one (older) 20.4
    second = wait_attend(n1, 2)
    c.eq(second["args"]["demand"], near.id, "the least cost, not the oldest")
    # priority beats distance: a high-acuity alarm far away goes before the middle one
    vip = monitor(fx, b, 4, 60, 0, acuity=5)
    settle(hub, [vip.id])
    vip.send(heart_rate=150)
    wait_until(lambda: records(hub.db).get(vip.id, {}).get("state") == "open", 5, "vip waits")
    n1.ack(second, "succeeded")
    third = wait_attend(n1, 3)
    c.eq(third["args"]["demand"], vip.id, "priority 5 before priority 1")
    # skills: a demand that needs a skill only nurse 3 has; capacity 2 for nurse 4
    vent = monitor(fx, b, 5, 2, 0, acuity=2, needs=["ventilator"])
    settle(hub, [vent.id])
    vent.send(heart_rate=130)
    wait_until(lambda: records(hub.db).get(vent.id, {}).get("state") == "open", 5,
               "no nurse with the skill yet: it waits")
    n3 = nurse(fx, b, 3, 100, 4, skills=["ward", "ventilator"])
    cmd = wait_attend(n3)
    c.eq(cmd["args"]["demand"], vent.id, "the skilled nurse, however far")
    n4 = nurse(fx, b, 4, 50, 4, capacity=2)
    settle(hub, [n4.id])
    wait_until(lambda: len(n4.commands("attend")) >= 1, 10, "n4 takes the middle demand")
    extra = monitor(fx, b, 6, 52, 0)
    settle(hub, [extra.id])
    extra.send(heart_rate=130)
    wait_until(lambda: len(n4.commands("attend")) >= 2, 10, "capacity 2: a second one")
    # off shift: no new demand
    off = nurse(fx, b, 5, 3, 4, on_shift=False)
    settle(hub, [off.id])
    late = monitor(fx, b, 7, 3, 0)
    settle(hub, [late.id])
    late.send(heart_rate=130)
    wait_until(lambda: records(hub.db).get(late.id, {}).get("state") == "open", 5,
               "no free nurse on shift: it waits")
    time.sleep(0.5)
    c.eq(off.commands("attend"), [], "an off-shift nurse gets nothing")
    # what the store holds never breaks capacity or skills
    recs = records(hub.db)
    load = {}
    for r in recs.values():
        if r["state"] == "assigned":
            load[r["resource"]] = load.get(r["resource"], 0) + 1
    caps = {n1.id: 1, n3.id: 1, n4.id: 2}
    for res, k in load.items():
        c.check(k <= caps.get(res, 1), f"{res} holds {k} > its capacity")
    c.eq(recs[vent.id]["resource"], n3.id, "skills kept")
    st, _, body = hub.http("/metrics")
    text = body.decode()
    c.check("twinhub_dispatch_decisions_total" in text, "decisions counted")
    c.done()


def case_handback(fx):
    b, hub, w = setup(fx)
    c = Checks()
    n1 = nurse(fx, b, 1, 0, 4)
    n2 = nurse(fx, b, 2, 30, 4)
    m = monitor(fx, b, 1, 2, 0)
    settle(hub, [n1.id, n2.id, m.id])
    m.send(heart_rate=130)
    cmd = wait_attend(n1)
    # she goes offline: the demand goes to nurse 2
    n1.status(False)
    cmd2 = wait_attend(n2)
    c.eq(cmd2["args"]["demand"], m.id, "handed back to nurse 2")
    c.check(dispatch_events(w, m.id, "returned"), "returned event")
    c.eq(json.loads(twinctl(hub.db, "commands", n1.id)[1].splitlines()[0])["state"], "failed",
         "the offline nurse's command is not sent again")
    n1.status(True)
    n1.send(on_shift=True)
    # nurse 2 declines: it goes back, but not to nurse 2 again
    n2.ack(cmd2, "failed")
    cmd3 = wait_attend(n1, 2)
    c.eq(cmd3["args"]["demand"], m.id, "to nurse 1 again after nurse 2 declined")
    # the alarm ends while she walks: released, cancel at the nurse, desired.task cleared
    m.send(heart_rate=80)
    cancel = wait_until(lambda: n1.commands("cancel"), 5, "cancel at the nurse")[0]
    c.eq(cancel["args"]["demand"], m.id, "cancel names the demand")
    wait_until(lambda: "task" not in (twin_get(hub.db, n1.id)["desired"] or {}), 5,
               "desired.task cleared")
    wait_until(lambda: dispatch_events(w, n1.id, "released"), 5, "released on the nurse")
    c.eq(records(hub.db), {}, "no record left")
    # a demand deleted while its nurse walks: she is released in the deletion's transaction
    gone = monitor(fx, b, 2, 40, 0)
    settle(hub, [gone.id])
    gone.send(heart_rate=130)
    wait_until(lambda: records(hub.db).get(gone.id, {}).get("state") == "assigned", 5,
               "the second demand assigned")
    res = records(hub.db)[gone.id]["resource"]
    w.publish(f"twins/{gone.id}/delete", pack({}))
    wait_until(lambda: twin_get(hub.db, gone.id) is None, 5, "the demand's twin deleted")
    c.check(gone.id not in records(hub.db), "the deleted demand's record gone with it")
    c.check("task" not in (twin_get(hub.db, res)["desired"] or {}),
            "its nurse's desired.task cleared with it")
    wait_until(lambda: [e for e in dispatch_events(w, res, "released") if e["demand"] == gone.id],
               5, "released on the deleted demand's nurse")
    c.done()


def case_lifecycle(fx):
    """capacity 2: desired.task shows the latest assignment and then the one left; a command
    dropped from a full queue (commands.max_per_device) returns its demand, which may go to the
    same nurse again; a deleted nurse returns what she held."""
    b, hub, w = setup(fx, {"commands.max_per_device": "3"})
    c = Checks()
    n1 = nurse(fx, b, 1, 0, 4, capacity=2)
    m1, m2 = monitor(fx, b, 1, 2, 0), monitor(fx, b, 2, 4, 0)
    settle(hub, [n1.id, m1.id, m2.id])
    m1.send(heart_rate=130)
    first = wait_attend(n1)
    m2.send(heart_rate=131)
    second = wait_attend(n1, 2)
    c.eq([first["args"]["demand"], second["args"]["demand"]], [m1.id, m2.id], "both to nurse 1")
    c.eq(twin_get(hub.db, n1.id)["desired"]["task"]["demand"], m2.id,
         "desired.task shows the latest assignment")
    n1.ack(second, "succeeded")
    wait_until(lambda: (twin_get(hub.db, n1.id)["desired"] or {}).get("task", {}).get("demand")
               == m1.id, 5, "desired.task shows the assignment left")
    # the queue of 3 fills with other commands: the attend for m1, the oldest pending, is dropped
    for i in range(3):
        w.publish(f"twins/{n1.id}/commands/send", pack({"cmd": "beep", "args": {"n": i}}))
    wait_until(lambda: len(n1.commands("beep")) >= 3, 10, "3 other commands at nurse 1")
    n1.send(on_shift=True)  # a change: the hub decides again and sees the attend gone
    third = wait_attend(n1, 3)
    c.eq(third["args"]["demand"], m1.id, "the dropped command's demand to nurse 1 again")
    c.check(dispatch_events(w, m1.id, "returned"), "returned event on the demand")
    c.check(dispatch_events(w, n1.id, "returned"), "returned event on the nurse")
    # the nurse is deleted: m1 goes back to open, with nobody left to take it
    w.publish(f"twins/{n1.id}/delete", pack({}))
    wait_until(lambda: records(hub.db).get(m1.id, {}).get("state") == "open", 5,
               "the deleted nurse's demand open again")
    c.done()


def case_restart(fx):
    b, hub, w = setup(fx)
    c = Checks()
    nurses = [nurse(fx, b, i, 10 * i, 4) for i in range(1, 4)]
    mons = [monitor(fx, b, i, 5 * i, 0) for i in range(1, 7)]
    settle(hub, [d.id for d in nurses + mons])
    for m in mons[:3]:
        m.send(heart_rate=130)
    wait_until(lambda: sum(len(n.commands("attend")) for n in nurses) >= 3, 10, "3 assigned")
    for m in mons[3:]:
        m.send(heart_rate=130)
    hub.kill9()
    hub.start()
    # the nurses finish what they were given, as often as they are given something
    done = set()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        for n in nurses:
            for cmd in n.commands("attend"):
                if cmd["id"] not in done:
                    done.add(cmd["id"])
                    n.ack(cmd, "succeeded")
        if len(done) >= 6:
            break
        # the nurses report every second, as badges do: each report is a change to decide on
        for n in nurses:
            n.send(on_shift=True)
        time.sleep(0.5)
    per_demand = {}
    for n in nurses:
        for cmd in n.commands("attend"):
            per_demand.setdefault(cmd["args"]["demand"], set()).add(cmd["id"])
    c.eq(sorted(per_demand), sorted(m.id for m in mons), "every demand was assigned")
    for d, ids in per_demand.items():
        c.eq(len(ids), 1, f"{d} assigned exactly once")
    recs = records(hub.db)
    c.eq(sorted(recs), sorted(m.id for m in mons), "a record per demand")
    c.check(all(r["state"] == "served" for r in recs.values()),
            f"every demand served: {[r['state'] for r in recs.values()]}")
    c.done()


CASES = {"assign": case_assign, "choose": case_choose, "handback": case_handback,
         "restart": case_restart, "lifecycle": case_lifecycle}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
