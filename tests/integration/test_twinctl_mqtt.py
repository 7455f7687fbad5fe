#!/usr/bin/python3
"""test_twinctl_mqtt: twinctl's writes over MQTT (set-desired, send) against a real Mosquitto
and twinhub, and `commands` reading what they queued from LMDB. One case per ctest:

    /usr/bin/python3 test_twinctl_mqtt.py CASE   (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)
"""

import json
import sys
import time

from harness import Broker, Hub, MqttClient, check, check_eq, free_port, run_case, twinctl


def ctl(b, *args, timeout=30):
    """twinctl with --broker (no --db: the writes go over MQTT)."""
    return twinctl(None, *args, "--broker", b.url, "--timeout", "10s", timeout=timeout)


def reply(rc, out, err, want_rc, what):
    check(rc == want_rc, f"{what}: exit {rc}, want {want_rc}; stderr {err.strip()!r}")
    lines = out.strip().splitlines()
    check_eq(len(lines), 1, f"{what}: lines of stdout ({out!r})")
    return json.loads(lines[0])


def case_writes(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    # replies go to twinctl's private response topic, not to <request>/accepted
    w = MqttClient(fx, b, "watch", subscribe=["twins/_replies/#", "twins/+/+/+/accepted",
                                               "twins/+/+/+/rejected"])

    # set-desired creates the twin and is accepted with a version
    r = reply(*ctl(b, "set-desired", "pump-7", '{"sample_hz": 5}'), 0, "set-desired")
    check(isinstance(r.get("version"), int) and r["version"] >= 1, f"no version in {r}")
    check_eq(r.get("desired"), {"sample_hz": 5}, "desired in the accepted reply")
    check("code" not in r, f"accepted reply with a code: {r}")
    v = r["version"]

    # the right version is accepted, a stale one is a 409 and exit 1
    r = reply(*ctl(b, "set-desired", "pump-7", '{"alarm_hr_high": 120}', "--version", str(v)),
              0, "set-desired --version current")
    check(r["version"] > v, f"version did not move: {r}")
    r = reply(*ctl(b, "set-desired", "pump-7", '{"sample_hz": 1}', "--version", str(v)),
              1, "set-desired --version stale")
    check_eq(r.get("code"), 409, "code of a stale version")

    # send: accepted with an id; commands lists it (oldest first)
    r = reply(*ctl(b, "send", "pump-7", "reboot", '{"delay_s": 3}', "--expires", "30s"), 0,
              "send")
    cmd_id = r.get("id")
    check(isinstance(cmd_id, str) and len(cmd_id) == 16, f"no command id in {r}")
    r2 = reply(*ctl(b, "send", "pump-7", "ping"), 0, "send without args")
    rc, out, err = twinctl(hub.db, "commands", "pump-7")
    check(rc == 0, f"commands: exit {rc}, stderr {err.strip()!r}")
    cmds = [json.loads(line) for line in out.strip().splitlines()]
    check_eq([c["id"] for c in cmds], [cmd_id, r2["id"]], "command ids, oldest first")
    check_eq(cmds[0]["cmd"], "reboot", "cmd")
    check_eq(cmds[0]["args"], {"delay_s": 3}, "args")
    check(cmds[0]["expires"] > cmds[0]["created"], f"no deadline: {cmds[0]}")
    rc, out, err = twinctl(hub.db, "--table", "commands", "pump-7")
    check(rc == 0 and cmd_id in out and "reboot" in out, f"commands --table: {rc} {out!r}")

    # send to a twin that does not exist: rejected (404), exit 1
    r = reply(*ctl(b, "send", "nobody-1", "reboot"), 1, "send to a missing twin")
    check_eq(r.get("code"), 404, "code for a missing twin")

    w.sync()
    topics = [m.topic for m in w.messages()]
    check(len(topics) == 6 and all(t.startswith("twins/_replies/twinctl-") for t in topics),
          f"reply topics: {topics}")


def case_errors(fx):
    b = Broker(fx)
    Hub(fx, b)
    # bad JSON: exit 2 with one line, nothing on stdout
    for args in (("set-desired", "pump-7", '{"a":'), ("set-desired", "pump-7", "[1]"),
                 ("send", "pump-7", "reboot", "not json")):
        rc, out, err = ctl(b, *args)
        check_eq(rc, 2, f"exit of {args}")
        check_eq(out, "", f"stdout of {args}")
        check_eq(len(err.strip().splitlines()), 1, f"stderr lines of {args} ({err!r})")

    # no broker: exit 2 within the timeout
    port = free_port()
    t = time.monotonic()
    rc, out, err = twinctl(None, "set-desired", "pump-7", "{}", "--broker",
                           f"tcp://127.0.0.1:{port}", "--timeout", "2s", timeout=30)
    took = time.monotonic() - t
    check_eq(rc, 2, f"exit with no broker (stderr {err!r})")
    check(took < 6, f"no broker: took {took:.1f}s with --timeout 2s")
    check(err.startswith("twinctl: ") and len(err.strip().splitlines()) == 1,
          f"stderr with no broker: {err!r}")


CASES = {"writes": case_writes, "errors": case_errors}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
