#!/usr/bin/python3
"""test_twinsim_ward: twinsim simulates a ward, monitors in beds and nurses as resources.

    /usr/bin/python3 test_twinsim_ward.py CASE   (TWINHUB_BIN, TWINCTL_BIN, TWINSIM_BIN,
                                                  MOSQUITTO in the env)

A real Mosquitto, twinsim with --devices 4 --nurses 2 (one connection per device), and a client
that speaks to the devices directly over MQTT, as the hub's dispatch will:
  ward    every monitor reports its bed (x = 2 + 4 * (k / 2), y = 0 or 8) in its first
          telemetry after each (re)connect, and a hub's twin keeps it; nurses start at the
          station (x = 2 * i, y = 4) and report pos, busy, on_shift and skills; their
          presence; --nurses with shared connections is ignored, and --help tells of it.
  attend  delivered at once, busy at once (not at the next period), the straight walk at
          --nurse-speed, succeeded {demand, walked_m} and with it the patient's tachycardia
          treated (a normal rate after the service); a second task waits its turn (FIFO,
          waited_ms).
  cancel  a task being walked to is dropped (its attend fails "cancelled", the nurse stays
          where she stopped), a cancel with nothing to drop, a task being served finishes;
          bad args, unknown and monitor-only commands fail; ping and a repeated command.
"""

import math
import signal
import subprocess
import sys
import time

from harness import (TWINSIM_BIN, Broker, Hub, MqttClient, TestFailure, check, check_eq,
                     child_env, now_ms, pack, run_case, spawn, twin_get, unpack, wait_until)

SERVICE = 2.0  # s at the bedside (--service)


def bed(k):
    return (2.0 + 4.0 * (k // 2), 0.0 if k % 2 == 0 else 8.0)


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

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGINT; expects exit 0 (no failed publish, no sanitizer report)."""
        self.check_alive()
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(30)
        text = self.log_text()
        check(rc == 0 and "twinsim: devices=4 " in text and " nurses=2\n" in text,
              f"twinsim exit {rc}: {text[-3000:]}")
        return text

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


class Ward:
    """The MQTT side: every message on devices/#, commands to the devices, their acks."""

    def __init__(self, fx, broker):
        self.c = MqttClient(fx, broker, "ward", subscribe=["devices/#"])
        self.n = 0

    def telemetry(self, dev, start=0):
        return [unpack(m.payload) for m in self.c.messages(f"devices/{dev}/telemetry", start)]

    def wait_telemetry(self, dev, pred, timeout, what, start=0):
        m = self.c.wait_for(lambda m: m.topic == f"devices/{dev}/telemetry"
                            and pred(unpack(m.payload)), timeout, what, start)
        return unpack(m.payload)

    def send(self, dev, cmd, args=None, cid=None):
        """Publishes a command as the hub would; returns its id."""
        self.n += 1
        cid = cid or f"c{self.n}"
        self.c.publish(f"devices/{dev}/commands",
                       pack({"id": cid, "cmd": cmd, "args": args or {}, "ts": now_ms(),
                             "expires": 0}))
        return cid

    def acks(self, dev, cid):
        return [unpack(m.payload) for m in self.c.messages(f"devices/{dev}/commands/ack")
                if unpack(m.payload).get("id") == cid]

    def wait_ack(self, dev, cid, status, timeout=10):
        m = self.c.wait_for(lambda m: m.topic == f"devices/{dev}/commands/ack"
                            and unpack(m.payload).get("id") == cid
                            and unpack(m.payload).get("status") == status,
                            timeout, f"{dev} ack {cid} {status}")
        return unpack(m.payload), m.t


def start(fx, *args, hub=False):
    b = Broker(fx)
    h = Hub(fx, b) if hub else None
    ward = Ward(fx, b)
    sim = Sim(fx, b, "--devices", "4", "--nurses", "2", "--rate", "2", "--nurse-period", "0.25",
              "--service", str(SERVICE), *args)
    for dev in ("ecg-0004", "nurse-02"):
        ward.wait_telemetry(dev, lambda t: True, 20, f"telemetry of {dev}")
    return b, h, ward, sim


def case_ward(fx):
    b, hub, ward, sim = start(fx, hub=True)
    # monitors: the bed in the first message, not in the next ones
    for k in range(4):
        dev = f"ecg-{k + 1:04d}"
        ward.wait_telemetry(dev, lambda t: t["seq"] >= 3, 10, f"3 messages of {dev}")
        ts = ward.telemetry(dev)
        x, y = bed(k)
        check_eq(ts[0].get("pos"), {"x": x, "y": y}, f"{dev}: pos in its first message")
        check(all("pos" not in t for t in ts[1:]), f"{dev}: pos again without a reconnect")
    # nurses: at the station, free, on shift, their skills, in every message
    for i, skills in ((0, ["ward", "cardiac"]), (1, ["ward"])):
        dev = f"nurse-{i + 1:02d}"
        ts = ward.telemetry(dev)
        check(len(ts) >= 4, f"{dev}: {len(ts)} messages at --nurse-period 0.25")
        for t in ts:
            check_eq(sorted(t), ["boot", "busy", "on_shift", "pos", "seq", "skills", "ts"],
                     f"{dev}: telemetry keys")
            check_eq((t["pos"], t["busy"], t["on_shift"], t["skills"]),
                     ({"x": 2.0 * i, "y": 4.0}, False, True, skills), f"{dev}: telemetry")
        check_eq([t["seq"] for t in ts], list(range(1, len(ts) + 1)), f"{dev}: seq")
        status = [m.payload for m in ward.c.messages(f"devices/{dev}/status")]
        check(status and status[-1] == b"online", f"{dev}: status {status!r}")
    # the hub's twins keep them
    wait_until(lambda: (twin_get(hub.db, "ecg-0003") or {}).get("reported", {}).get("pos")
               == {"x": 6.0, "y": 0.0}, 15, "ecg-0003's twin: reported.pos")
    wait_until(lambda: (twin_get(hub.db, "nurse-01") or {}).get("reported", {}).get("skills")
               == ["ward", "cardiac"], 15, "nurse-01's twin: reported.skills")
    t = twin_get(hub.db, "ecg-0003")
    check(t["reported"].get("pos") == {"x": 6.0, "y": 0.0}, f"ecg-0003 twin later: {t!r}")

    # a reconnect: the bed again, in the first message after it
    mark = ward.c.count()
    cid = ward.send("ecg-0001", "go_offline", {"seconds": 1})
    ward.wait_ack("ecg-0001", cid, "succeeded")
    online = ward.c.wait_for(lambda m: m.topic == "devices/ecg-0001/status"
                             and m.payload == b"online", 15, "ecg-0001 back online", mark)
    with ward.c.lock:
        back = ward.c.msgs.index(online)  # its birth comes before its telemetry
    again = ward.wait_telemetry("ecg-0001", lambda t: True, 10, "ecg-0001 after reconnecting",
                                back)
    check_eq(again.get("pos"), {"x": 2.0, "y": 0.0}, "ecg-0001: pos after its reconnect")
    sim.stop()

    # the load generator (shared connections) has no nurses, and says so
    out = subprocess.run([TWINSIM_BIN, "--broker", b.url, "--devices", "4", "--connections", "2",
                          "--nurses", "2", "--count", "1", "--quiet"], env=child_env(),
                         capture_output=True, timeout=60)
    err = out.stderr.decode(errors="replace")
    check(out.returncode == 0 and "--nurses is ignored with shared connections" in err,
          f"load generator with --nurses: exit {out.returncode}, stderr {err!r}")
    check(" nurses=" not in out.stdout.decode(), f"summary: {out.stdout!r}")
    helptext = subprocess.run([TWINSIM_BIN, "--help"], capture_output=True, timeout=10,
                              env=child_env()).stdout.decode()
    for opt in ("--nurses N", "--nurse-period S", "--nurse-speed V", "--service S",
                "ignored with shared connections"):
        check(opt in helptext, f"--help does not mention {opt!r}")


def case_attend(fx):
    speed = 4.0
    b, _, ward, sim = start(fx, "--nurse-speed", str(speed))
    # a monitor in tachycardia (seed 1: one starts in an episode)
    hot = {}

    def tachy():
        for k in range(4):
            dev = f"ecg-{k + 1:04d}"
            ts = ward.telemetry(dev)
            if ts and ts[-1]["heart_rate"] > 120:
                hot.update(dev=dev, k=k)
                return True
        return False
    wait_until(tachy, 20, "a monitor with heart_rate > 120")
    dev, (x, y) = hot["dev"], bed(hot["k"])
    dist = math.hypot(x - 0.0, y - 4.0)  # nurse-01 from the station

    mark = ward.c.count()
    t_sent = time.monotonic()
    cid = ward.send("nurse-01", "attend", {"demand": dev, "x": x, "y": y, "priority": 3})
    _, t_delivered = ward.wait_ack("nurse-01", cid, "delivered")
    check(t_delivered - t_sent < 1.0, f"delivered {t_delivered - t_sent:.2f}s after sending")
    busy = ward.c.wait_for(lambda m: m.topic == "devices/nurse-01/telemetry"
                           and unpack(m.payload)["busy"] is True, 5, "nurse-01 busy", mark)
    check(busy.t - t_sent < 0.2, f"busy published {busy.t - t_sent:.2f}s after the command "
                                 "(not at once)")
    res, t_done = ward.wait_ack("nurse-01", cid, "succeeded", dist / speed + SERVICE + 10)
    check_eq(sorted(res["result"]), ["demand", "walked_m"], "result keys (no wait)")
    check_eq(res["result"]["demand"], dev, "result.demand")
    check(abs(res["result"]["walked_m"] - dist) < 0.05,
          f"walked_m {res['result']['walked_m']} for a distance of {dist:.2f}")
    took = t_done - t_sent
    check(dist / speed + SERVICE - 0.3 < took < dist / speed + SERVICE + 1.0,
          f"succeeded after {took:.2f}s: walk {dist / speed:.2f}s + service {SERVICE}s")
    check_eq([a["status"] for a in ward.acks("nurse-01", cid)], ["delivered", "succeeded"],
             "acks of attend")

    # the walk: a straight line towards the bed at --nurse-speed, then there
    ts = [t for t in ward.telemetry("nurse-01", mark) if t["busy"]]
    walk = [t for t in ts if t["pos"] != {"x": x, "y": y}]
    check(len(walk) >= 3, f"{len(walk)} messages on the way at --nurse-period 0.25")
    for a, c in zip(walk[1:], walk[2:]):
        d = math.hypot(c["pos"]["x"] - a["pos"]["x"], c["pos"]["y"] - a["pos"]["y"])
        v = d / ((c["ts"] - a["ts"]) / 1000.0)
        check(abs(v - speed) < 0.25 * speed, f"walking at {v:.2f} m/s, not {speed}")
        # on the line from the station to the bed
        cross = (x - 0.0) * (c["pos"]["y"] - 4.0) - (y - 4.0) * (c["pos"]["x"] - 0.0)
        check(abs(cross) / dist < 0.01, f"off the straight line: {c['pos']}")
    check(any(t["pos"] == {"x": x, "y": y} for t in ts), "never at the bed while busy")
    free = ward.wait_telemetry("nurse-01", lambda t: t["busy"] is False, 5, "nurse-01 free",
                               mark)
    check_eq(free["pos"], {"x": x, "y": y}, "a free nurse stays where she is")

    # the treatment: a normal rate once the service is done, and no new episode after it
    time.sleep(2.0)
    done_ms = now_ms() - (time.monotonic() - t_done) * 1000
    after = [t for t in ward.telemetry(dev, mark) if done_ms + 300 <= t["ts"] <= done_ms + 1800]
    check(len(after) >= 2, f"{len(after)} messages of {dev} after the service")
    check(all(t["heart_rate"] < 100 for t in after),
          f"{dev} after treatment: {[t['heart_rate'] for t in after]}")

    # FIFO: two tasks for nurse-02; the second waits for the first (waited_ms)
    (x3, y3), (x4, y4) = bed(2), bed(3)
    c1 = ward.send("nurse-02", "attend", {"demand": "ecg-0003", "x": x3, "y": y3})
    c2 = ward.send("nurse-02", "attend", {"demand": "ecg-0004", "x": x4, "y": y4})
    r1, t1 = ward.wait_ack("nurse-02", c1, "succeeded", 15)
    r2, t2 = ward.wait_ack("nurse-02", c2, "succeeded", 15)
    check(t1 < t2, "the second task finished first")
    d1, d2 = math.hypot(x3 - 2, y3 - 4), math.hypot(x4 - x3, y4 - y3)
    check("waited_ms" not in r1["result"], f"first task waited: {r1!r}")
    check(abs(r1["result"]["walked_m"] - d1) < 0.05 and abs(r2["result"]["walked_m"] - d2) < 0.05,
          f"walked {r1['result']['walked_m']}, {r2['result']['walked_m']}; expected {d1}, {d2}")
    want = (d1 / speed + SERVICE) * 1000
    check(abs(r2["result"].get("waited_ms", 0) - want) < 300,
          f"second task waited_ms {r2['result'].get('waited_ms')}, expected ~{want:.0f}")
    text = sim.stop()
    for what in ("msg=\"nurse task\" device=nurse-01", "msg=\"nurse arrived\" device=nurse-01",
                 "msg=\"nurse finished\" device=nurse-02 demand=ecg-0004", "treats=true",
                 "msg=\"nurse sets off\" device=nurse-02 demand=ecg-0004"):
        check(what in text, f"twinsim's log has no {what!r}")


def case_cancel(fx):
    b, _, ward, sim = start(fx, "--nurse-speed", "1.0")
    # far down the ward: walking for 20 s
    mark = ward.c.count()
    c1 = ward.send("nurse-01", "attend", {"demand": "ecg-9999", "x": 20.0, "y": 4.0})
    ward.wait_ack("nurse-01", c1, "delivered")
    ward.wait_telemetry("nurse-01", lambda t: t["busy"] and t["pos"]["x"] >= 1.0, 5,
                        "nurse-01 on her way", mark)
    mark = ward.c.count()
    t_sent = time.monotonic()
    c2 = ward.send("nurse-01", "cancel", {"demand": "ecg-9999"})
    res, _ = ward.wait_ack("nurse-01", c2, "succeeded")
    check_eq(res["result"], {"cancelled": True}, "cancel's result")
    failed, _ = ward.wait_ack("nurse-01", c1, "failed")
    check_eq(failed["result"], {"error": "cancelled"}, "the cancelled attend's result")
    free = ward.c.wait_for(lambda m: m.topic == "devices/nurse-01/telemetry"
                           and unpack(m.payload)["busy"] is False, 5, "nurse-01 free", mark)
    check(free.t - t_sent < 0.2, f"free published {free.t - t_sent:.2f}s after the cancel")
    stopped = unpack(free.payload)["pos"]
    check(1.0 <= stopped["x"] < 5.0 and stopped["y"] == 4.0, f"stopped at {stopped}")
    time.sleep(0.6)
    later = ward.telemetry("nurse-01", mark)
    check(len(later) >= 3 and all(t["pos"] == stopped and not t["busy"] for t in later),
          f"after the cancel: {later!r}")
    c3 = ward.send("nurse-01", "cancel", {"demand": "ecg-9999"})
    res, _ = ward.wait_ack("nurse-01", c3, "succeeded")
    check_eq(res["result"], {"cancelled": False}, "a cancel with nothing to drop")

    # a task being served finishes: nurse-02 is at her target at once
    c4 = ward.send("nurse-02", "attend", {"demand": "ecg-0001", "x": 2.0, "y": 4.0})
    ward.wait_telemetry("nurse-02", lambda t: t["busy"], 5, "nurse-02 busy")
    c5 = ward.send("nurse-02", "cancel", {"demand": "ecg-0001"})
    res, _ = ward.wait_ack("nurse-02", c5, "succeeded")
    check_eq(res["result"], {"cancelled": False}, "cancel of a task being served")
    res, _ = ward.wait_ack("nurse-02", c4, "succeeded", SERVICE + 5)
    check_eq(res["result"], {"demand": "ecg-0001", "walked_m": 0.0}, "the served task's result")
    # ... and a repeat of it (at least once delivery) is answered again, not run again
    ward.send("nurse-02", "attend", {"demand": "ecg-0001", "x": 2.0, "y": 4.0}, cid=c4)
    wait_until(lambda: len(ward.acks("nurse-02", c4)) >= 4, 5, "the repeat's acks")
    check_eq([a["status"] for a in ward.acks("nurse-02", c4)],
             ["delivered", "succeeded", "delivered", "succeeded"], "acks of a repeated attend")

    # bad args, unknown and monitor-only commands fail with a reason; ping works
    bad = [("attend", {"x": 1, "y": 2}, "args.demand"),
           ("attend", {"demand": 7, "x": 1, "y": 2}, "args.demand"),
           ("attend", {"demand": "", "x": 1, "y": 2}, "args.demand"),
           ("attend", {"demand": "ecg-0001", "x": "near", "y": 2}, "args.x"),
           ("attend", {"demand": "ecg-0001", "x": 1}, "args.y"),
           ("attend", {"demand": "ecg-0001", "x": 1, "y": True}, "args.y"),
           ("cancel", {}, "args.demand"),
           ("frobnicate", {}, "unknown command"),
           ("set_rate", {"hz": 5}, "unknown command"),
           ("alert", {"level": "high"}, "unknown command")]
    for cmd, args, why in bad:
        cid = ward.send("nurse-02", cmd, args)
        res, _ = ward.wait_ack("nurse-02", cid, "failed")
        check(why in res.get("result", {}).get("error", ""), f"{cmd} {args!r}: {res!r}")
    cid = ward.send("nurse-02", "ping")
    res, _ = ward.wait_ack("nurse-02", cid, "succeeded")
    check_eq(res["result"], {"pong": True}, "ping's result")
    # a monitor knows neither attend nor cancel
    cid = ward.send("ecg-0001", "attend", {"demand": "ecg-0002", "x": 1, "y": 2})
    ward.wait_ack("ecg-0001", cid, "failed")
    text = sim.stop()
    check("msg=\"nurse task cancelled\" device=nurse-01 demand=ecg-9999" in text,
          "twinsim's log has no cancelled task")


CASES = {"ward": case_ward, "attend": case_attend, "cancel": case_cancel}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
