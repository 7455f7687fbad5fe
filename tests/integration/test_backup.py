#!/usr/bin/python3
"""test_backup: `twinctl backup` while the hub runs under load, `twinctl restore`, and a hub
started on the restored store (issue 11, part 6).

    /usr/bin/python3 test_backup.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

  under_load  20 devices publish without pause (seq s carries n = s, v = 2s) while a rule
              queues a command and keeps a state per twin; a backup taken meanwhile restores to
              a store where every twin is whole at one seq (version, n, v, every history point
              up to it, its command and rule state), at or before what the live store held at
              the backup's end; a hub on it starts and serves every twin
  refusals    an existing FILE, a non-empty DIR, a damaged, truncated or foreign file and a
              newer schema are refused with their reason and change nothing
"""

import json
import os
import sys
import threading
import time

from harness import (Broker, Hub, MqttClient, check, check_eq, pack, run_case, twin_get,
                     twinctl, twinctl_json, wait_until)

DEVICES = 20
RULES = """rules:
  - name: counting
    when: reported.n > 0
    on_fire:
      - command: {cmd: ping}
"""


def dev_id(i):
    return f"bk-{i:02d}"


class Load:
    """Devices publishing seq 1, 2, ... round robin at QoS 1 until stopped."""

    def __init__(self, fx, b):
        self.c = MqttClient(fx, b, "load")
        self.seq = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            self.seq += 1
            infos = [self.c.publish_nowait(f"devices/{dev_id(i)}/telemetry",
                                           pack({"seq": self.seq, "n": self.seq,
                                                 "v": 2 * self.seq}))
                     for i in range(DEVICES)]
            for info in infos:
                info.wait_for_publish(30)

    def end(self):
        self.stop = True
        self.t.join(60)
        return self.seq


def ctl_json(args, what):
    rc, out, err = twinctl(None, *args)
    check(rc == 0, f"{what}: exit {rc}: {err.strip()}")
    return json.loads(out)


def case_under_load(fx):
    b = Broker(fx)
    rules = fx.path("rules.yaml")
    with open(rules, "w") as f:
        f.write(RULES)
    hub = Hub(fx, b, sets={"history.max_points": 100000, "rules.file": rules})
    load = Load(fx, b)
    wait_until(lambda: (twin_get(hub.db, dev_id(DEVICES - 1)) or {}).get("seq", 0) >= 50, 30,
               "the load to be under way")
    bfile = fx.path("store.twb")
    info = ctl_json(["--db", hub.db, "backup", bfile], "backup under load")
    live = {dev_id(i): twin_get(hub.db, dev_id(i))["seq"] for i in range(DEVICES)}
    last = load.end()
    print(f"backup of {info['bytes']} bytes while {DEVICES} devices published; live seqs at its "
          f"end {min(live.values())}..{max(live.values())}, {last} at the end of the load",
          file=sys.stderr)
    check(not os.path.exists(bfile + ".partial"), "a .partial file left behind")

    rdir = fx.path("restored")
    rinfo = ctl_json(["restore", bfile, rdir], "restore")
    check_eq(rinfo["sha256"], info["sha256"], "the restored data's checksum")
    check_eq(rinfo["twins"], DEVICES, "twins in the restored store")
    seqs = []
    for i in range(DEVICES):
        tid = dev_id(i)
        d = twin_get(rdir, tid)
        s = d["seq"]
        seqs.append(s)
        check(1 <= s <= live[tid], f"{tid}: restored seq {s}, live {live[tid]} at the backup's end")
        check_eq((d["version"], d["reported"]["n"], d["reported"]["v"]), (s, s, 2 * s),
                 f"{tid}: version, n and v at seq {s} (a twin written half)")
        pts = twinctl_json(rdir, "history", tid, "reported.n")
        check_eq([int(p["value"]) for p in pts], list(range(1, s + 1)), f"{tid}: history of n")
        rc, out_r, _ = twinctl(rdir, "commands", tid)
        rc2, out_l, _ = twinctl(hub.db, "commands", tid)
        check(rc == 0 and json.loads(out_r or "[]") == json.loads(out_l or "[]"),
              f"{tid}: commands restored {out_r!r}, live {out_l!r}")
        rc, out_r, _ = twinctl(rdir, "rules", "state", tid)
        rc2, out_l, _ = twinctl(hub.db, "rules", "state", tid)
        check(rc == 0 and out_r == out_l and "firing" in out_r,
              f"{tid}: rule state restored {out_r!r}, live {out_l!r}")
    print(f"restored seqs {min(seqs)}..{max(seqs)}", file=sys.stderr)
    hub.stop()

    # a hub on the restored store: starts, serves every twin, takes new telemetry
    b2 = Broker(fx)
    hub2 = Hub(fx, b2, db=rdir, sets={"rules.file": rules})
    dev = MqttClient(fx, b2, "after")
    tid = dev_id(0)
    nxt = seqs[0] + 1
    dev.publish(f"devices/{tid}/telemetry", pack({"seq": nxt, "n": nxt, "v": 2 * nxt}))
    wait_until(lambda: twin_get(rdir, tid)["seq"] == nxt, 10, "the restored hub applying seq")
    check_eq(twin_get(rdir, tid)["version"], nxt, "version continues on the restored store")
    hub2.stop()


def case_refusals(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    dev = MqttClient(fx, b, "dev")
    for s in range(1, 11):
        dev.publish(f"devices/{dev_id(1)}/telemetry", pack({"seq": s, "n": s}))
    wait_until(lambda: (twin_get(hub.db, dev_id(1)) or {}).get("seq") == 10, 10, "seq 10")
    bfile = fx.path("b.twb")
    ctl_json(["--db", hub.db, "backup", bfile, "--quiet"], "backup")
    size = os.path.getsize(bfile)
    hub.stop()

    def refused(args, code, needle, what):
        rc, out, err = twinctl(None, *args)
        check(rc == code and needle in err and not out.strip(),
              f"{what}: expected exit {code} and {needle!r}, got {rc}: {err.strip()!r}")

    refused(["--db", hub.db, "backup", bfile], 2, "never overwrites", "backup onto a file")
    check_eq(os.path.getsize(bfile), size, "the existing backup after a refused overwrite")
    full = fx.path("full")
    os.makedirs(full)
    with open(os.path.join(full, "x"), "w") as f:
        f.write("keep me")
    refused(["restore", bfile, full], 2, "is not empty", "restore into a non-empty dir")
    check_eq(os.listdir(full), ["x"], "the non-empty dir after a refused restore")

    def variant(name, mutate):
        with open(bfile, "rb") as f:
            data = bytearray(f.read())
        data = mutate(data)
        p = fx.path(name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def flip(data):
        data[len(data) // 2] ^= 0x40
        return data

    def newer(data):
        data[20] = 3  # the schema field
        return data
    for name, mutate, code, needle in (
            ("damaged.twb", flip, 1, "does not match its SHA-256"),
            ("truncated.twb", lambda d: d[:-4096], 1, "truncated or damaged"),
            ("newer.twb", newer, 1, "store schema 3; this build reads schema 1 to 2"),
            ("foreign.twb", lambda d: bytearray(b"SQLite format 3\0") + d[16:], 1,
             "not a twinhub backup")):
        target = fx.path(f"r-{name}")
        refused(["restore", variant(name, mutate), target], code, needle, f"restore {name}")
        check(not os.path.exists(target), f"restore of {name} left {target} behind")
    refused(["restore", fx.path("missing.twb"), fx.path("r-missing")], 2, "No such file",
            "restore of a missing file")
    # and the good one still restores
    info = ctl_json(["restore", bfile, fx.path("ok"), "--quiet"], "restore")
    check_eq(info["twins"], 1, "twins restored")
    check_eq(twin_get(fx.path("ok"), dev_id(1))["seq"], 10, "seq restored")


CASES = {"under_load": case_under_load, "refusals": case_refusals}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
