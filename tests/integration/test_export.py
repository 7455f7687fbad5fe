#!/usr/bin/python3
"""test_export: `twinctl export` and `twinctl import` on a store a real hub wrote (issue 11,
parts 7 and 8).

    /usr/bin/python3 test_export.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

  round_trip  devices publish numbers, floats that are whole, nested maps, arrays and strings
              that need escaping, one twin gets desired state over MQTT; an export --history
              taken while the hub runs imports into a new store and exports again to the same
              bytes (with and without --history, and with --prefix); importing into the running
              hub's own store is refused and changes nothing; a hub started on the imported
              store publishes every twin's state and goes on at the next version
  bad_lines   bad lines (truncated, unknown member, same id twice, bad history, not a device
              id, a twin already in the store) are reported as FILE:LINE: reason, exit 1, and
              change nothing: no store made, an existing store as it was
  migration   a store of schema 1, written by an earlier build (tests/data/store-schema1), reads
              as it did, is migrated by the first hub that opens it to the same export, and
              then keeps readings of one millisecond in the order they came
  progress    export and import draw a bar (count, rate, ETA) on a terminal; nothing on stderr
              when it is not one, or with --quiet
"""

import gzip
import json
import os
import pty
import subprocess
import sys

from harness import (REPO, TWINCTL_BIN, Broker, Hub, MqttClient, check, check_eq, child_env, pack,
                     run_case, twin_get, twinctl, unpack, wait_until)

DEVICES = 12
MESSAGES = 15


def dev_id(i):
    return f"ex-{i:02d}"


def publish_fleet(fx, b, hub):
    dev = MqttClient(fx, b, "fleet")
    for s in range(1, MESSAGES + 1):
        for i in range(DEVICES):
            dev.publish(f"devices/{dev_id(i)}/telemetry",
                        pack({"seq": s, "hr": 60 + (s + i) % 40, "t": 36.0 + s / 10,
                              "whole": float(s), "vitals": {"spo2": 97.5, "bp": {"sys": 120 + s}},
                              "ecg": [i, -s, 0.25], "note": f"caf\u00e9 \"{s}\"\n\\",
                              "ok": s % 2 == 0}), qos=1)
    last = dev_id(DEVICES - 1)
    wait_until(lambda: (twin_get(hub.db, last) or {}).get("seq") == MESSAGES, 20,
               "the fleet's last message applied")


def export(db, *args):
    rc, out, err = twinctl(db, "export", *args)
    check(rc == 0, f"export {args}: exit {rc}: {err.strip()!r}")
    check_eq(err, "", f"export {args}: stderr (not a terminal)")
    return out


def write(fx, name, text):
    p = fx.path(name)
    with open(p, "w") as f:
        f.write(text)
    return p


def case_round_trip(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    publish_fleet(fx, b, hub)
    rc, out, err = twinctl(None, "set-desired", dev_id(3), '{"rate_hz": 2, "mode": "night"}',
                           "--broker", b.url, "--timeout", "10s")
    check(rc == 0, f"set-desired: exit {rc}: {err.strip()!r}")

    full = export(hub.db, "--history")  # while the hub runs: read-only
    lines = full.splitlines()
    check_eq(len(lines), DEVICES, "lines in the export")
    first = json.loads(lines[0])
    check_eq(first["id"], dev_id(0), "the first line's twin (id order)")
    check_eq(first["reported"]["whole"], 15.0, "a whole float")
    check(lines[0].count('"whole":15.0') == 1, f"a whole float keeps its .0: {lines[0][:300]}")
    check_eq([p[1] for p in first["history"]["hr"]], [float(60 + s % 40) for s in
             range(1, MESSAGES + 1)], "the history of hr in the export")
    check_eq(sorted(first["history"]), ["hr", "t", "vitals.bp.sys", "vitals.spo2", "whole"],
             "the series exported")
    d3 = json.loads(lines[3])
    check_eq(d3["desired"], {"rate_hz": 2, "mode": "night"}, "desired state in the export")
    check("delta" in d3, "the delta in the export")
    points = sum(len(v) for ln in lines for v in json.loads(ln)["history"].values())

    # into the running hub's own store: refused, nothing changes
    src = write(fx, "full.jsonl", full)
    rc, out, err = twinctl(hub.db, "import", src)
    check(rc == 2 and "a running twinhub?" in err and not out,
          f"import into a running hub's store: exit {rc}, {err.strip()!r}")
    check_eq(export(hub.db, "--history"), full, "the hub's store after a refused import")

    # into a new store, and out again: the same bytes
    dst = fx.path("imported")
    rc, out, err = twinctl(dst, "import", src)
    check(rc == 0, f"import: exit {rc}: {err.strip()!r}")
    summary = json.loads(out)
    check_eq((summary["twins"], summary["points"]), (DEVICES, points), "the import's summary")
    again = export(dst, "--history")
    check(again == full, "export, import, export: not the same bytes\n"
          + "\n".join(f"  {a[:200]}\n  {c[:200]}" for a, c in zip(full.splitlines(),
                                                                    again.splitlines()) if a != c))
    check_eq(export(dst), export(hub.db), "the export without history")
    check_eq(export(dst, "--prefix", "ex-1"), export(hub.db, "--prefix", "ex-1"),
             "the export of a prefix")
    check_eq(len(export(dst, "--prefix", "ex-1").splitlines()), DEVICES - 10, "twins of ex-1*")
    check_eq(export(dst, "--prefix", "zz"), "", "the export of a prefix nobody has")
    hub.stop()

    # a hub on the imported store publishes every twin (they are in its outbox) and goes on
    b2 = Broker(fx)
    w = MqttClient(fx, b2, "watch", subscribe=["twins/+/state"])
    hub2 = Hub(fx, b2, db=dst)
    wait_until(lambda: len({m.topic for m in w.messages("twins/+/state")}) == DEVICES, 15,
               "every imported twin's state published")
    st = [unpack(m.payload) for m in w.messages(f"twins/{dev_id(3)}/state")][-1]
    check_eq((st["version"], st["desired"]), (d3["version"], d3["desired"]),
             "the published state of an imported twin")
    dev = MqttClient(fx, b2, "after")
    dev.publish(f"devices/{dev_id(0)}/telemetry", pack({"seq": MESSAGES + 1, "hr": 99}))
    wait_until(lambda: twin_get(dst, dev_id(0))["seq"] == MESSAGES + 1, 10, "the next seq")
    check_eq(twin_get(dst, dev_id(0))["version"], first["version"] + 1,
             "the version after the import")
    hub2.stop()


def case_bad_lines(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    publish_fleet(fx, b, hub)
    hub.stop()
    lines = export(hub.db, "--history").splitlines()
    bad = list(lines)
    bad[2] = lines[2][:-40]                                       # line 3: truncated
    bad[4] = lines[4][:-1] + ',"colour":"red"}'                   # line 5: unknown member
    bad[6] = lines[1]                                             # line 7: ex-01 again
    bad[8] = lines[8].replace('"history":{"hr":[[1', '"history":{"hr":[[-1', 1)  # line 9
    bad[9] = lines[9].replace(f'"id":"{dev_id(9)}"', '"id":"a/b"', 1)  # line 10
    src = write(fx, "bad.jsonl", "\n".join(bad) + "\n\n")
    dst = fx.path("new")
    rc, out, err = twinctl(dst, "import", src)
    check(rc == 1 and not out, f"import of bad lines: exit {rc}, stdout {out!r}")
    for line, why in ((3, "unexpected end of input"), (5, "unknown member 'colour'"),
                      (7, f"twin '{dev_id(1)}' is also on line 2"),
                      (9, "history.hr[0]: ts must be a whole number"),
                      (10, "id 'a/b' is not a device id")):
        check(f"{src}:{line}: {why}" in err, f"line {line} ({why}) not reported: {err}")
    check(f"{src}: 5 bad lines; nothing was imported" in err, f"the summary: {err}")
    check(not os.path.exists(dst), "a refused import made a store")

    # into a store that has twins already: the same twin twice is refused, the store unchanged
    part = fx.path("part")
    rc, _, err = twinctl(part, "import", write(fx, "two.jsonl", "\n".join(lines[:2]) + "\n"))
    check(rc == 0, f"import of two lines: exit {rc}: {err.strip()!r}")
    before = export(part, "--history")
    rc, out, err = twinctl(part, "import", write(fx, "all.jsonl", "\n".join(lines) + "\n"))
    check(rc == 1 and f":1: twin '{dev_id(0)}' is already in the store (version {MESSAGES})"
          in err and ":2: twin" in err and ":3:" not in err,
          f"import over existing twins: exit {rc}, {err.strip()!r}")
    check_eq(export(part, "--history"), before, "the store after a refused import")
    # a document above limits.max_twin_size is refused in the check, before any batch is written
    big = write(fx, "big.jsonl", "\n".join(lines[2:]) + "\n" +
                '{"id":"big-1","version":1,"reported":{"x":"' + "a" * 4000 + '"}}\n')
    rc, out, err = twinctl(part, "import", big, env={"TWINHUB_LIMITS_MAX_TWIN_SIZE": "3KiB"})
    check(rc == 1 and f"{big}:{len(lines) - 1}: the document is" in err and
          "above limits.max_twin_size 3072" in err, f"a document too large: exit {rc}, {err!r}")
    check_eq(export(part, "--history"), before, "the store after a document too large")
    rc, _, err = twinctl(part, "import", fx.path("missing.jsonl"))
    check(rc == 2 and "No such file" in err, f"a missing file: exit {rc}, {err.strip()!r}")


def case_migration(fx):
    data = os.path.join(REPO, "tests", "data", "store-schema1")
    with open(os.path.join(data, "export.jsonl")) as f:
        then = f.read()
    db = fx.path("old")
    os.makedirs(db)
    with gzip.open(os.path.join(data, "data.mdb.gz")) as g, open(os.path.join(db, "data.mdb"),
                                                                  "wb") as f:
        f.write(g.read())
    # read-only, before any writer: schema 1, read as it was
    rc, out, err = twinctl(db, "stats")
    check(rc == 0, f"stats of the old store: exit {rc}: {err.strip()!r}")
    st = json.loads(out)
    check_eq(st["schema"], 1, "the old store's schema")
    old_points = st["history_points"]
    check_eq(export(db, "--history"), then, "the old store, read by this build")

    # the first hub to open it migrates it; every point is still there, in the same order
    b = Broker(fx)
    hub = Hub(fx, b, db=db)
    st = json.loads(twinctl(db, "stats")[1])
    check_eq((st["schema"], st["history_points"]), (2, old_points), "schema and points after")
    check_eq(export(db, "--history"), then, "the store migrated")
    first = json.loads(then.splitlines()[0])
    last_ts = first["history"]["hr"][-1][0]
    dev = MqttClient(fx, b, "dev")
    # two readings in the millisecond of the last one: after it, in the order they came
    for s, hr in ((13, 99), (14, 61)):
        dev.publish(f"devices/{first['id']}/telemetry", pack({"seq": s, "ts": last_ts, "hr": hr}))
    wait_until(lambda: twin_get(db, first["id"])["seq"] == 14, 10, "seq 14")
    pts = json.loads(export(db, "--history").splitlines()[0])["history"]["hr"]
    check_eq(pts[-3:], [[last_ts, first["history"]["hr"][-1][1]], [last_ts, 99.0],
                        [last_ts, 61.0]], "the last points of hr")
    hub.stop()


def on_tty(args):
    """twinctl ARGS with stderr on a pseudo-terminal: (exit code, stdout, what the tty got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([TWINCTL_BIN] + args, stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env=child_env())
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        got += chunk
    out = p.stdout.read()
    p.wait(30)
    os.close(master)
    return p.returncode, out.decode(), got.decode("utf-8", "replace")


def case_progress(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    publish_fleet(fx, b, hub)
    hub.stop()
    rc, out, tty = on_tty(["--db", hub.db, "export", "--history"])
    check(rc == 0 and len(out.splitlines()) == DEVICES, f"export on a tty: exit {rc}")
    check(f"{DEVICES} / {DEVICES} twins" in tty and "twins/s" in tty and "ETA" in tty
          and "100%" in tty, f"export's bar: {tty!r}")
    src = write(fx, "x.jsonl", out)
    rc, out, tty = on_tty(["--db", fx.path("a"), "import", src])
    check(rc == 0, f"import on a tty: exit {rc}: {tty!r}")
    check("check" in tty and "MiB" in tty and f"import   [####################] 100%  "
          f"{DEVICES} / {DEVICES} twins" in tty and "ETA" in tty, f"import's bars: {tty!r}")
    for args in (["--db", hub.db, "export", "--quiet"], ["--db", fx.path("b"), "import", src,
                                                          "--quiet"]):
        rc, out, tty = on_tty(args)
        check(rc == 0 and tty == "", f"{args}: exit {rc}, on the tty {tty!r}")
    rc, out, err = twinctl(fx.path("c"), "import", src)
    check(rc == 0 and err == "", f"import, stderr not a tty: exit {rc}, stderr {err!r}")


CASES = {"round_trip": case_round_trip, "bad_lines": case_bad_lines, "migration": case_migration,
         "progress": case_progress}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
