#!/usr/bin/python3
"""test_twinsim_obeys: twinsim's simulated devices obey their twins (issue 3, item 6).

    /usr/bin/python3 test_twinsim_obeys.py CASE   (TWINHUB_BIN, TWINCTL_BIN, TWINSIM_BIN,
                                                   MOSQUITTO in the env)

A real Mosquitto and twinhub, twinsim with one connection per device, and a service that
speaks nothing but MQTT: desired/set reaches the device, which applies it and reports it back
(the delta empties); commands/send is acknowledged (delivered, then succeeded); go_offline
takes the device away and brings it back (presence events).
"""

import os
import time
import signal
import sys

from harness import (TWINSIM_BIN, Broker, Hub, MqttClient, TestFailure, check, check_eq,
                     child_env, pack, run_case, spawn, twin_get, unpack, wait_until)

DEV = "ecg-0001"


class Sim:
    """A twinsim process, stopped with SIGINT at cleanup."""

    def __init__(self, fx, broker, *args):
        self.log = fx.path("twinsim.log")
        fx.logs.append(("twinsim", self.log))
        argv = [TWINSIM_BIN, "--broker", broker.url, "--seed", "1"] + list(args)
        self.proc = spawn(argv, self.log, fx.dir, child_env())
        fx.procs.append(self)

    def __repr__(self):
        return f"twinsim(pid={self.proc.pid})"

    def check_alive(self):
        if self.proc.poll() is not None:
            with open(self.log, errors="replace") as f:
                raise TestFailure(f"twinsim exited {self.proc.returncode}: {f.read()[-2000:]}")

    def stop(self):
        """SIGINT; expects exit 0 (no failed publish, no sanitizer report)."""
        self.check_alive()
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(30)
        with open(self.log, errors="replace") as f:
            text = f.read()
        check(rc == 0 and "twinsim: devices=2 " in text, f"twinsim exit {rc}: {text[-3000:]}")
        return text

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


class Service:
    def __init__(self, fx, broker):
        self.c = MqttClient(fx, broker, "svc",
                            subscribe=["twins/+/+/accepted", "twins/+/+/rejected",
                                       "twins/+/+/+/accepted", "twins/+/+/+/rejected",
                                       "twins/+/events"])
        self.n = 0

    def request(self, twin_id, what, body):
        self.n += 1
        tok = f"{self.c.client_id}-{self.n}"
        body = dict(body, token=tok)
        topic = f"twins/{twin_id}/{what}"
        start = self.c.count()
        self.c.publish(topic, pack(body))
        m = self.c.wait_for(
            lambda m: m.topic in (topic + "/accepted", topic + "/rejected")
            and unpack(m.payload).get("token") == tok, 15, f"reply to {topic}", start)
        reply = unpack(m.payload)
        check(m.topic.endswith("/accepted"), f"{what} rejected: {reply!r}")
        return reply

    def wait_event(self, pred, what, start=0, timeout=20):
        m = self.c.wait_for(lambda m: m.topic == f"twins/{DEV}/events" and pred(unpack(m.payload)),
                            timeout, f"event: {what}", start)
        return unpack(m.payload)


def setup(fx, *sim_args):
    b = Broker(fx)
    hub = Hub(fx, b)
    svc = Service(fx, b)
    sim = Sim(fx, b, "--devices", "2", "--rate", "1", *sim_args)
    wait_until(lambda: (sim.check_alive() or True) and twin_get(hub.db, DEV) is not None
               and twin_get(hub.db, DEV).get("connected") is True, 30, "the twin of ecg-0001")
    return b, hub, svc, sim


def case_desired(fx):
    b, hub, svc, sim = setup(fx)
    svc.request(DEV, "desired/set", {"desired": {"sample_hz": 5, "alarm_hr_high": 130}})
    last = {}

    def synced():
        sim.check_alive()
        t = twin_get(hub.db, DEV) or {}
        last["t"] = t
        rep = t.get("reported", {})
        return (rep.get("sample_hz") == 5 and rep.get("alarm_hr_high") == 130
                and not t.get("delta"))
    try:
        wait_until(synced, 15, "reported sample_hz 5, alarm_hr_high 130 and no delta")
    except TestFailure:
        raise TestFailure(f"twin: {last.get('t')!r}")
    # the rate follows: ~5 messages a second now
    s0 = twin_get(hub.db, DEV)["seq"]
    time.sleep(2.0)
    s1 = twin_get(hub.db, DEV)["seq"]
    check(s1 - s0 >= 6, f"seq advanced {s1 - s0} in 2 s at sample_hz 5")
    sim.stop()


def case_ping(fx):
    b, hub, svc, sim = setup(fx)
    start = svc.c.count()
    r = svc.request(DEV, "commands/send", {"cmd": "ping"})
    cid = r["id"]
    svc.wait_event(lambda e: e.get("type") == "command" and e.get("id") == cid
                   and e.get("state") == "delivered", "ping delivered", start)
    svc.wait_event(lambda e: e.get("type") == "command" and e.get("id") == cid
                   and e.get("state") == "succeeded", "ping succeeded", start)
    start = svc.c.count()
    r = svc.request(DEV, "commands/send", {"cmd": "no_such_command"})
    cid = r["id"]
    svc.wait_event(lambda e: e.get("type") == "command" and e.get("id") == cid
                   and e.get("state") == "failed", "unknown command failed", start)

    # set_rate: succeeded, and the applied rate is reported as sample_hz
    start = svc.c.count()
    cid = svc.request(DEV, "commands/send", {"cmd": "set_rate", "args": {"hz": 4}})["id"]
    svc.wait_event(lambda e: e.get("type") == "command" and e.get("id") == cid
                   and e.get("state") == "succeeded", "set_rate succeeded", start)
    wait_until(lambda: twin_get(hub.db, DEV).get("reported", {}).get("sample_hz") == 4, 10,
               "reported sample_hz 4 after set_rate")

    # a command seen twice (at least once delivery) is acknowledged twice, run once
    acks = MqttClient(fx, b, "acks", subscribe=[f"devices/{DEV}/commands/ack"])
    cmd = pack({"id": "dup-1", "cmd": "ping", "args": {}, "ts": 0, "expires": 0})
    acks.publish(f"devices/{DEV}/commands", cmd)
    acks.publish(f"devices/{DEV}/commands", cmd)

    def statuses():
        return [unpack(m.payload).get("status") for m in acks.messages()
                if m.topic.endswith("/commands/ack") and unpack(m.payload).get("id") == "dup-1"]
    wait_until(lambda: len(statuses()) >= 4, 10, "four acks of the repeated command")
    check_eq(statuses(), ["delivered", "succeeded", "delivered", "succeeded"],
             "acks of a command delivered twice")
    sim.stop()


def case_offline(fx):
    b, hub, svc, sim = setup(fx)
    start = svc.c.count()
    svc.request(DEV, "commands/send", {"cmd": "go_offline", "args": {"seconds": 2}})
    svc.wait_event(lambda e: e.get("type") == "presence" and e.get("connected") is False,
                   "ecg-0001 offline", start)
    svc.wait_event(lambda e: e.get("type") == "presence" and e.get("connected") is True,
                   "ecg-0001 back online", start)
    wait_until(lambda: twin_get(hub.db, DEV).get("connected") is True, 10, "connected again")

    def log_has(needle):
        with open(sim.log, errors="replace") as f:
            return needle in f.read()
    check(log_has("device offline"), "twinsim did not log 'device offline'")
    wait_until(lambda: log_has("device back online"), 10, "twinsim: 'device back online'")
    # telemetry resumes
    s0 = twin_get(hub.db, DEV)["seq"]
    wait_until(lambda: twin_get(hub.db, DEV)["seq"] > s0, 10, "telemetry after coming back")
    sim.stop()


CASES = {"desired": case_desired, "ping": case_ping, "offline": case_offline}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
