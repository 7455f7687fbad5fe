#!/usr/bin/python3
"""test_aws: AWS IoT Device Shadow mode (issue 13, part 7) against a real Mosquitto and hub, with
the real client libraries: the AWS IoT Device SDK v2 for JavaScript (aws-iot-device-sdk-v2: its
MQTT 3.1.1 client over plain TCP and iotshadow.IotShadowClient) and the v1 SDK's thingShadow
(aws-iot-device-sdk, over mutual TLS with a PKI from certs/make-pki.sh and the broker configured
by deploy/mosquitto-conf.sh, ACL included; the v2 SDK over the same as a third device), plus bad
input from a raw paho client.

    /usr/bin/python3 test_aws.py CASE        sdk_v2 | sdk_v1_tls | bad_input | off

The Node.js clients are tests/integration/aws/*.js; their packages (package.json, exact versions,
and package-lock.json) are installed with `npm ci` into a cache directory the first time
(TWINHUB_AWS_NODE_CACHE, which ctest sets to <build>/aws-node; else tests/integration/aws/.cache),
again only when the lock file changes; concurrent cases wait for each other (flock). Each client
is a small driver: JSON commands on its stdin, one JSON line per SDK callback on its stdout, so
that this file asserts on exactly what the SDK's callbacks received, and on the twin as
`twinctl get` reads it from LMDB (the two views of one twin).

Environment: TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO, TWINHUB_REPO as for test_auth.py; TWINHUB_NODE
and TWINHUB_NPM name node and npm (default: the ones on PATH, Debian's nodejs and npm).
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import msgpack

from harness import (SETPRIV, Broker, Checks, Hub, MqttClient, TestFailure, check, check_eq,
                     run_case, tail, terminate, twin_get, twinctl, unpack, wait_until)
from test_auth import Endpoint, SecureBroker, TlsClient, make_pki

HERE = os.path.dirname(os.path.abspath(__file__))
AWS_DIR = os.path.join(HERE, "aws")
NODE = os.environ.get("TWINHUB_NODE") or shutil.which("node") or shutil.which("nodejs")
NPM = os.environ.get("TWINHUB_NPM") or shutil.which("npm")
LOCK_FILES = ("package.json", "package-lock.json")


# ---------------------------------------------------------------------------------------------
# The Node.js side: packages and drivers
# ---------------------------------------------------------------------------------------------

def node_modules():
    """Installs the locked packages into the cache directory (npm ci) unless the installed ones
    came from this very lock file; returns the node_modules path."""
    check(NODE, "node not found (Debian: apt-get install nodejs npm; deploy/deps.sh lists them)")
    cache = os.environ.get("TWINHUB_AWS_NODE_CACHE") or os.path.join(AWS_DIR, ".cache")
    os.makedirs(cache, exist_ok=True)
    h = hashlib.sha256()
    for n in LOCK_FILES:
        with open(os.path.join(AWS_DIR, n), "rb") as f:
            h.update(f.read())
    want = h.hexdigest()
    modules = os.path.join(cache, "node_modules")
    stamp = os.path.join(cache, ".installed")
    with open(os.path.join(cache, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            with open(stamp) as f:
                if f.read().strip() == want and os.path.isdir(modules):
                    return modules
        except OSError:
            pass
        check(NPM, "npm not found (Debian: apt-get install npm; deploy/deps.sh lists it)")
        for n in LOCK_FILES:
            shutil.copyfile(os.path.join(AWS_DIR, n), os.path.join(cache, n))
        t0 = time.monotonic()
        p = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=cache,
                           capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
        check(p.returncode == 0, f"npm ci in {cache} exited {p.returncode}:\n"
                                 f"{p.stdout.decode(errors='replace')[-3000:]}"
                                 f"{p.stderr.decode(errors='replace')[-3000:]}")
        with open(stamp, "w") as f:
            f.write(want + "\n")
        print(f"npm ci: {time.monotonic() - t0:.1f}s into {cache}", file=sys.stderr)
    return modules


class NodeDriver:
    """One tests/integration/aws/*.js driver: commands in (JSON lines on stdin), the SDK's
    callbacks out (JSON lines on stdout, kept in order); stderr and both directions logged."""

    def __init__(self, fx, script, args, label):
        modules = node_modules()
        self.label = label
        self.log = fx.path(f"{label}.log")
        fx.logs.append((label, self.log))
        env = dict(os.environ, NODE_PATH=modules)
        argv = [NODE, os.path.join(AWS_DIR, script)] + [str(a) for a in args]
        if SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "KILL", "--"] + argv
        self.logf = open(self.log, "ab", buffering=0)
        self.lock = threading.Condition()
        self.events = []
        self.eof = False
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.logf, cwd=fx.dir, env=env)
        fx.procs.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def __repr__(self):
        return f"{self.label}(pid={self.proc.pid})"

    def _read(self):
        for line in self.proc.stdout:
            self.logf.write(b"< " + line)
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "garbage", "line": line.decode("utf-8", "replace")}
            with self.lock:
                self.events.append(ev)
                self.lock.notify_all()
        with self.lock:
            self.eof = True
            self.lock.notify_all()

    def send(self, **cmd):
        line = (json.dumps(cmd) + "\n").encode()
        self.logf.write(b"> " + line)
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def mark(self):
        with self.lock:
            return len(self.events)

    def since(self, start, name=None):
        with self.lock:
            evs = self.events[start:]
        return [e for e in evs if name is None or e.get("ev") == name]

    def wait(self, pred, timeout, what, start=0):
        """The first event from index `start` on that satisfies pred. A fatal event, a driver
        that exited or the timeout fail the test, with the driver's log."""
        deadline = time.monotonic() + timeout
        i = start
        with self.lock:
            while True:
                while i < len(self.events):
                    e = self.events[i]
                    i += 1
                    if e.get("ev") in ("fatal", "garbage") or (e.get("ev") == "error" and
                                                                e.get("cmd")):
                        raise TestFailure(f"{self.label}: {e} (waiting for {what})")
                    if pred(e):
                        return e
                if self.eof:
                    raise TestFailure(f"{self.label} exited ({self.proc.poll()}) while waiting "
                                      f"for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestFailure(f"timed out after {timeout:g}s waiting for {what} from "
                                      f"{self.label}; its last events: {self.events[-5:]}")
                self.lock.wait(min(left, 0.5))

    def quit(self, timeout=20):
        self.send(cmd="quit")
        self.wait(lambda e: e["ev"] == "closed", timeout, "the driver to disconnect")
        rc = self.proc.wait(timeout)
        check_eq(rc, 0, f"{self.label} exit status")

    def cleanup(self):
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        terminate(self.proc, 5)
        self.reader.join(5)
        self.logf.close()


def ev(name, shadow=None, token=None):
    """A predicate: a v2 driver's event `name` of `shadow` whose payload has clientToken."""
    def pred(e):
        if e.get("ev") != name or e.get("shadow") != shadow:
            return False
        return token is None or (e.get("payload") or {}).get("clientToken") == token
    return pred


def near_now(ts, what, c, slack=60):
    """An AWS timestamp (seconds) close to this machine's clock."""
    c.check(isinstance(ts, int) and abs(ts - time.time()) < slack,
            f"{what}: {ts!r} is not a timestamp in seconds near now ({int(time.time())})")


def leaves_have_timestamps(meta, value, what, c):
    """metadata mirrors value: every leaf {"timestamp": s}, arrays element by element."""
    if isinstance(value, dict):
        c.check(isinstance(meta, dict) and set(meta) == set(value),
                f"{what}: metadata keys {sorted(meta or {})} vs state {sorted(value)}")
        for k, v in value.items():
            if isinstance(meta, dict) and k in meta:
                leaves_have_timestamps(meta[k], v, f"{what}.{k}", c)
    elif isinstance(value, list):
        c.check(isinstance(meta, list) and len(meta) == len(value), f"{what}: array metadata")
        for i, v in enumerate(value):
            if isinstance(meta, list) and i < len(meta):
                leaves_have_timestamps(meta[i], v, f"{what}[{i}]", c)
    else:
        c.check(isinstance(meta, dict) and set(meta) == {"timestamp"},
                f"{what}: leaf metadata {meta!r}")
        if isinstance(meta, dict) and "timestamp" in meta:
            near_now(meta["timestamp"], f"{what}.timestamp", c)


def twin(hub, thing):
    return twin_get(hub.db, thing)


def desired_set(svc, thing, patch, token, timeout=15):
    """twinhub's own request (a service): twins/{id}/desired/set, waits for its reply."""
    mark = svc.count()
    svc.publish(f"twins/{thing}/desired/set", json.dumps({"desired": patch, "token": token}))
    m = svc.wait_for(lambda m: m.topic.startswith(f"twins/{thing}/desired/set/") and
                     unpack(m.payload).get("token") == token, timeout,
                     f"the reply to desired/set {token}", start=mark)
    check(m.topic.endswith("/accepted"), f"desired/set {token}: {m.topic} {unpack(m.payload)}")
    return unpack(m.payload)


# ---------------------------------------------------------------------------------------------
# The SDK v2 over plain TCP
# ---------------------------------------------------------------------------------------------

def case_sdk_v2(fx):
    broker = Broker(fx)
    hub = Hub(fx, broker, sets={"aws.shadow": "true"})
    thing = "pump-0001"
    svc = MqttClient(fx, broker, "service", subscribe=[f"twins/{thing}/desired/set/+"])
    dev = NodeDriver(fx, "v2_device.js", ["--host", "127.0.0.1", "--port", broker.port,
                                          "--client-id", thing], "sdk-v2")
    con = dev.wait(lambda e: e["ev"] == "connected", 60, "the v2 SDK to connect")
    print(f"aws-iot-device-sdk-v2 {con.get('sdk')} on node {con.get('node')}", file=sys.stderr)
    c = Checks()

    def update(state, token, shadow=None, version=None):
        cmd = dict(cmd="update", thing=thing, shadow=shadow, state=state, clientToken=token)
        if version is not None:
            cmd["version"] = version
        dev.send(**cmd)

    def wait(name, token=None, shadow=None, start=0, timeout=15):
        return dev.wait(ev(name, shadow, token), timeout, f"{name} ({shadow or 'classic'}, "
                        f"clientToken {token})", start)["payload"]

    def get(token, shadow=None):
        start = dev.mark()
        dev.send(cmd="get", thing=thing, shadow=shadow, clientToken=token)
        e = dev.wait(lambda e: e["ev"] in ("get_accepted", "get_rejected") and
                     e.get("shadow") == shadow and e["payload"].get("clientToken") == token, 15,
                     f"the reply to get {token}", start)
        return e["ev"], e["payload"]

    dev.send(cmd="subscribe", thing=thing, shadow=None)
    dev.wait(lambda e: e["ev"] == "subscribed", 15, "the classic shadow's subscriptions")

    # 1. The device reports: update/accepted, update/documents, and the twin.
    rep = {"temp": 21.5, "mode": "auto", "fw": {"major": 1, "minor": 4}, "leds": [1, 0, 1]}
    update({"reported": rep}, "v2-1")
    acc = wait("update_accepted", "v2-1")
    c.eq(acc.get("state"), {"reported": rep}, "update/accepted state (as sent)")
    c.eq(acc.get("version"), 1, "update/accepted version of a new shadow")
    near_now(acc.get("timestamp"), "update/accepted timestamp", c)
    leaves_have_timestamps((acc.get("metadata") or {}).get("reported"), rep,
                           "update/accepted metadata.reported", c)
    docs = wait("documents", "v2-1")
    c.eq(docs.get("previous"), {"state": {}, "metadata": {}, "version": 0},
         "update/documents previous of a new shadow")
    c.eq((docs.get("current") or {}).get("state"), {"reported": rep},
         "update/documents current state")
    c.eq((docs.get("current") or {}).get("version"), 1, "update/documents current version")
    t = twin(hub, thing)
    c.eq((t or {}).get("reported"), rep, "twinctl get: reported = what the device reported")
    c.eq((t or {}).get("version"), 1, "twinctl get: version = the shadow's version")

    # 2. get
    kind, g = get("v2-2")
    c.eq(kind, "get_accepted", "get of the shadow")
    c.eq(g.get("state"), {"reported": rep}, "get/accepted state: reported only (no desired, "
                                            "no delta)")
    c.eq(g.get("version"), 1, "get/accepted version")
    leaves_have_timestamps((g.get("metadata") or {}).get("reported"), rep,
                           "get/accepted metadata.reported", c)

    # 3. A service changes desired through twinhub's own topic: the device sees the delta.
    mark = dev.mark()
    r = desired_set(svc, thing, {"mode": "eco", "rate": 5}, "svc-1")
    c.eq(r.get("version"), 2, "desired/set accepted version (the same counter)")
    d = wait("delta", start=mark)
    c.eq(d.get("state"), {"mode": "eco", "rate": 5}, "update/delta state: desired leaves that "
                                                     "differ from reported")
    c.eq(d.get("version"), 2, "update/delta version")
    leaves_have_timestamps(d.get("metadata"), d.get("state") or {}, "update/delta metadata", c)

    # 4. The device catches up: the delta empties, no new delta message, desired stays.
    mark = dev.mark()
    update({"reported": {"mode": "eco", "rate": 5}}, "v2-3")
    acc = wait("update_accepted", "v2-3", start=mark)
    c.eq(acc.get("version"), 3, "update/accepted version after catching up")
    time.sleep(0.3)
    kind, g = get("v2-4")
    c.eq(dev.since(mark, "delta"), [], "no update/delta once reported matches desired")
    c.check("delta" not in (g.get("state") or {}), f"get after catching up: no delta: {g}")
    c.eq((g.get("state") or {}).get("desired"), {"mode": "eco", "rate": 5},
         "desired is kept once reported caught up")
    t = twin(hub, thing)
    c.check(t is not None and "delta" not in t, f"twinctl get: no delta: {t}")
    c.eq((t or {}).get("desired"), {"mode": "eco", "rate": 5}, "twinctl get: desired")

    # 5. Optimistic locking: a stale version is refused (409) and changes nothing.
    update({"reported": {"temp": 99}}, "v2-5", version=1)
    rj = wait("update_rejected", "v2-5")
    c.eq((rj.get("code"), rj.get("message")), (409, "Version conflict"), "stale version")
    near_now(rj.get("timestamp"), "update/rejected timestamp", c)
    t = twin(hub, thing)
    c.eq(((t or {}).get("version"), (t or {}).get("reported", {}).get("temp")), (3, 21.5),
         "the twin after the refused update (version, temp)")
    update({"reported": {"temp": 22.0}}, "v2-6", version=3)
    acc = wait("update_accepted", "v2-6")
    c.eq(acc.get("version"), 4, "update with the current version")

    # 6. null deletes a leaf (and its history); a null section clears it.
    update({"reported": {"fw": None}}, "v2-7")
    acc = wait("update_accepted", "v2-7")
    c.eq(acc.get("state"), {"reported": {"fw": None}}, "update/accepted echoes the null")
    t = twin(hub, thing)
    c.check("fw" not in (t or {}).get("reported", {}), f"fw deleted: {t}")

    # 7. A named shadow: its own document, in the same twin under $shadows.
    dev.send(cmd="subscribe", thing=thing, shadow="config")
    dev.wait(lambda e: e["ev"] == "subscribed" and e.get("shadow") == "config", 15,
             "the named shadow's subscriptions")
    mark = dev.mark()
    update({"desired": {"interval_s": 10, "units": "metric"}}, "v2-n1", shadow="config")
    acc = wait("update_accepted", "v2-n1", shadow="config")
    c.eq(acc.get("state"), {"desired": {"interval_s": 10, "units": "metric"}},
         "named update/accepted state")
    nd = wait("delta", shadow="config", start=mark)
    c.eq(nd.get("state"), {"interval_s": 10, "units": "metric"}, "named shadow's update/delta")
    t = twin(hub, thing)
    c.eq((t or {}).get("desired", {}).get("$shadows"),
         {"config": {"interval_s": 10, "units": "metric"}}, "twinctl get: desired.$shadows")
    kind, g = get("v2-n2")
    c.eq(kind, "get_accepted", "classic get")
    c.check("$shadows" not in json.dumps(g), f"the classic shadow shows no named shadow: {g}")
    update({"reported": {"interval_s": 10, "units": "metric"}}, "v2-n3", shadow="config")
    wait("update_accepted", "v2-n3", shadow="config")
    kind, g = get("v2-n4", shadow="config")
    c.eq((kind, g.get("state")), ("get_accepted", {
        "desired": {"interval_s": 10, "units": "metric"},
        "reported": {"interval_s": 10, "units": "metric"}}), "named get: in sync, no delta")
    dev.send(cmd="delete", thing=thing, shadow="config", clientToken="v2-n5")
    da = wait("delete_accepted", "v2-n5", shadow="config")
    t = twin(hub, thing)
    c.eq(da.get("version"), (t or {}).get("version"), "named delete/accepted version")
    c.check("$shadows" not in json.dumps(t), f"the named shadow is gone from the twin: {t}")
    kind, g = get("v2-n6", shadow="config")
    c.eq((kind, g.get("code"), g.get("message")),
         ("get_rejected", 404, "No shadow exists with name: 'config'"), "get of a deleted "
                                                                        "named shadow")

    # 8. Delete the classic shadow: the twin goes; get is then a 404.
    before = twin(hub, thing)
    dev.send(cmd="delete", thing=thing, shadow=None, clientToken="v2-d")
    da = wait("delete_accepted", "v2-d")
    c.eq(da.get("version"), (before or {}).get("version"), "delete/accepted version")
    near_now(da.get("timestamp"), "delete/accepted timestamp", c)
    c.eq(twin(hub, thing), None, "twinctl get after delete: no twin")
    kind, g = get("v2-g")
    c.eq((kind, g.get("code"), g.get("message")),
         ("get_rejected", 404, f"No shadow exists with name: '{thing}'"), "get after delete")
    dev.send(cmd="delete", thing=thing, shadow=None, clientToken="v2-d2")
    dr = wait("delete_rejected", "v2-d2")
    c.eq(dr.get("code"), 404, "delete of a deleted shadow")

    dev.quit()
    c.check(hub.alive(), "twinhub is running")
    c.done("SDK v2 checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# The v1 SDK's thingShadow over mutual TLS, with the shipped ACL
# ---------------------------------------------------------------------------------------------

def case_sdk_v1_tls(fx):
    A, B = "ecg-0001", "ecg-0002"
    pki = make_pki(fx)
    sb = SecureBroker(fx, pki)
    admin = MqttClient(fx, sb.admin, "admin", subscribe=["$aws/#"])
    hub = Hub(fx, Endpoint(sb.admin_port, sb.tls_url), sets={
        "broker.tls.ca": os.path.join(pki, "ca.pem"),
        "broker.tls.cert": os.path.join(pki, "hub.pem"),
        "broker.tls.key": os.path.join(pki, "hub.key"),
        "broker.client_id": "twinhub",
        "aws.shadow": "true",
    })
    svc = TlsClient(fx, sb, "twinhub-service", os.path.join(pki, "service.pem"),
                    os.path.join(pki, "service.key"))
    svc.subscribe(f"twins/{A}/desired/set/+")
    c = Checks()

    def devfile(d, ext):
        return os.path.join(pki, "devices", f"{d}.{ext}")

    dev = NodeDriver(fx, "v1_device.js", [
        "--host", "localhost", "--port", sb.port, "--client-id", A, "--thing", A,
        "--ca", os.path.join(pki, "ca.pem"), "--cert", devfile(A, "pem"),
        "--key", devfile(A, "key")], "sdk-v1")
    con = dev.wait(lambda e: e["ev"] == "connected", 60, "the v1 SDK to connect over TLS")
    print(f"aws-iot-device-sdk {con.get('sdk')} on node {con.get('node')}", file=sys.stderr)
    reg = dev.wait(lambda e: e["ev"] == "registered", 30, "thingShadow.register")
    check(not reg.get("error") and not reg.get("failed"), f"register: {reg}")

    def op(cmd, **kw):
        """Sends an operation; returns (clientToken the SDK chose, the request as the broker
        routed it, the status event)."""
        start, amark = dev.mark(), admin.count()
        dev.send(cmd=cmd, **kw)
        tok = dev.wait(lambda e: e["ev"] == "token" and e.get("op") == cmd, 10,
                       f"the SDK's clientToken for {cmd}", start)["token"]
        check(tok, f"the SDK refused {cmd} (an operation still pending)")
        topic = f"$aws/things/{A}/shadow/{cmd}"
        req = admin.wait_for(lambda m: m.topic == topic and
                             json.loads(m.payload).get("clientToken") == tok, 10,
                             f"{cmd} {tok} at the broker", start=amark)
        st = dev.wait(lambda e: e["ev"] == "status" and e.get("token") == tok, 15,
                      f"the status of {cmd} {tok}", start)
        return tok, json.loads(req.payload), st

    # 1. The first report: no version known yet, accepted at version 1.
    tok, req, st = op("update", state={"reported": {"hr": 72, "spo2": 98}})
    c.check("version" not in req, f"first update carries no version: {req}")
    c.eq(st["stat"], "accepted", "first update")
    c.eq(st["state"].get("state"), {"reported": {"hr": 72, "spo2": 98}}, "accepted state")
    c.eq(st["state"].get("version"), 1, "accepted version")
    c.check("clientToken" not in st["state"], "the SDK matched and removed the clientToken")

    # 2. A service (identity twinhub-service, through the ACL) changes desired on twinhub's own
    #    topic: the device's delta event.
    mark = dev.mark()
    svc.publish(f"twins/{A}/desired/set", json.dumps({"desired": {"sample_hz": 250},
                                                      "token": "svc-1"}))
    d = dev.wait(lambda e: e["ev"] == "delta", 15, "the delta event", mark)
    c.eq(d["state"].get("state"), {"sample_hz": 250}, "delta state")
    c.eq(d["state"].get("version"), 2, "delta version")

    # 3. The device applies it and reports back: the SDK sends the version it learnt (2).
    tok, req, st = op("update", state={"reported": {"sample_hz": 250}})
    c.eq(req.get("version"), 2, "the SDK's versioning: the update carries version 2")
    c.eq((st["stat"], st["state"].get("version")), ("accepted", 3), "update with version 2")
    t = twin(hub, A)
    c.check(t is not None and "delta" not in t, f"in sync: no delta in the twin: {t}")

    # 4. Telemetry on twinhub's own topic moves the shared version without telling the device:
    #    its next update carries a stale version and is refused, changing nothing.
    admin.publish(f"devices/{A}/telemetry", msgpack.packb({"temp": 36.6}))
    wait_until(lambda: (twin(hub, A) or {}).get("version") == 4, 10, "the telemetry's commit")
    tok, req, st = op("update", state={"reported": {"hr": 75}})
    c.eq(req.get("version"), 3, "the stale version the SDK sent")
    c.eq((st["stat"], st["state"].get("code"), st["state"].get("message")),
         ("rejected", 409, "Version conflict"), "update with a stale version")
    t = twin(hub, A)
    c.eq(((t or {}).get("version"), (t or {}).get("reported", {}).get("hr")), (4, 72),
         "the twin after the refused update (version, hr)")

    # 5. get: the device resyncs, and sees twinhub's telemetry in its shadow (one twin).
    tok, req, st = op("get")
    c.eq(st["stat"], "accepted", "get")
    s = st["state"]
    c.eq(s.get("version"), 4, "get version")
    c.eq((s.get("state") or {}).get("reported"), {"hr": 72, "spo2": 98, "sample_hz": 250,
                                                  "temp": 36.6}, "get: reported")
    c.eq((s.get("state") or {}).get("desired"), {"sample_hz": 250}, "get: desired")
    c.check("delta" not in (s.get("state") or {}), f"get: no delta: {s}")
    tok, req, st = op("update", state={"reported": {"hr": 75}})
    c.eq((req.get("version"), st["stat"], st["state"].get("version")), (4, "accepted", 5),
         "update after the resync (version sent, status, new version)")

    # 6. The ACL: device B can neither change A's shadow nor read A's replies; its own work.
    b = TlsClient(fx, sb, B, devfile(B, "pem"), devfile(B, "key"), client_id=B)
    b.subscribe(f"$aws/things/{A}/shadow/#")
    b.subscribe(f"$aws/things/{B}/shadow/#")
    amark = admin.count()
    b.publish(f"$aws/things/{A}/shadow/update",
              json.dumps({"state": {"reported": {"hr": 1}}, "clientToken": "attack-1"}))
    b.publish(f"$aws/things/{A}/shadow/delete", json.dumps({"clientToken": "attack-2"}))
    b.publish(f"$aws/things/{A}/shadow/update/accepted", json.dumps({"forged": True}))
    b.publish(f"$aws/things/{B}/shadow/update",
              json.dumps({"state": {"reported": {"ok": True}}, "clientToken": "b-1"}))
    b.wait_for(lambda tp, p: tp == f"$aws/things/{B}/shadow/update/accepted" and
               json.loads(p).get("clientToken") == "b-1", 15, "B's own update/accepted")
    tok, req, st = op("update", state={"reported": {"hr": 76}})
    c.eq((st["stat"], st["state"].get("version")), ("accepted", 6), "A's update after B's tries")
    b.publish(f"$aws/things/{B}/shadow/get", json.dumps({"clientToken": "b-2"}))
    b.wait_for(lambda tp, p: tp == f"$aws/things/{B}/shadow/get/accepted" and
               json.loads(p).get("clientToken") == "b-2", 15, "B's own get/accepted")
    seen_a = [tp for tp, p, r in b.messages() if tp.startswith(f"$aws/things/{A}/")]
    c.eq(seen_a, [], f"what B received of {A}'s shadow topics")
    routed = [(m.topic, m.payload[:60]) for m in admin.messages(start=amark)
              if b"attack" in m.payload or b"forged" in m.payload]
    c.eq(routed, [], "B's publications to A's topics that the broker routed")
    t = twin(hub, A)
    c.eq(((t or {}).get("version"), (t or {}).get("reported", {}).get("hr")), (6, 76),
         f"{A}'s twin after B's attempts")
    c.eq((twin(hub, B) or {}).get("reported"), {"ok": True}, f"{B}'s own twin")

    # 7. The SDK v2 over mutual TLS too (device C, its own certificate): update and get.
    C = "ecg-0003"
    v2 = NodeDriver(fx, "v2_device.js", [
        "--host", "localhost", "--port", sb.port, "--client-id", C,
        "--ca", os.path.join(pki, "ca.pem"), "--cert", devfile(C, "pem"),
        "--key", devfile(C, "key")], "sdk-v2-tls")
    v2.wait(lambda e: e["ev"] == "connected", 60, "the v2 SDK to connect over TLS")
    v2.send(cmd="subscribe", thing=C, shadow=None)
    v2.wait(lambda e: e["ev"] == "subscribed", 15, "the v2 SDK's subscriptions")
    v2.send(cmd="update", thing=C, shadow=None, state={"reported": {"hr": 64}}, clientToken="c-1")
    acc = v2.wait(ev("update_accepted", None, "c-1"), 15, "v2 over TLS: update/accepted")
    c.eq(acc["payload"].get("version"), 1, "v2 over TLS: update/accepted version")
    v2.send(cmd="get", thing=C, shadow=None, clientToken="c-2")
    g = v2.wait(ev("get_accepted", None, "c-2"), 15, "v2 over TLS: get/accepted")
    c.eq(g["payload"].get("state"), {"reported": {"hr": 64}}, "v2 over TLS: get/accepted state")
    v2.quit()

    # 8. delete, then a new report continues from the deleted shadow's version.
    tok, req, st = op("delete")
    c.eq((st["stat"], st["state"].get("version")), ("accepted", 6), "delete")
    c.eq(twin(hub, A), None, "twinctl get after delete")
    tok, req, st = op("update", state={"reported": {"hr": 80}})
    c.eq(req.get("version"), 6, "the update after delete carries the deleted version")
    c.eq((st["stat"], st["state"].get("version")), ("accepted", 7),
         "the shadow made again continues the count")
    t = twin(hub, A)
    c.eq(((t or {}).get("version"), (t or {}).get("reported")), (7, {"hr": 80}),
         "the twin made again")
    c.eq(dev.since(0, "timeout"), [], "no operation of the SDK timed out")

    dev.quit()
    refused = [ln for ln in hub.log_text().splitlines()
               if "not authori" in ln or "reason=0x87" in ln]
    c.eq(refused, [], "the hub's publications refused by the broker")
    c.check(hub.alive(), "twinhub is running")
    c.done("v1 thingShadow checks")
    hub.stop()


# ---------------------------------------------------------------------------------------------
# Bad input from a raw client
# ---------------------------------------------------------------------------------------------

def case_bad_input(fx):
    broker = Broker(fx)
    hub = Hub(fx, broker, sets={"aws.shadow": "true", "limits.max_twin_size": "8KiB",
                                "errors.rate": "1000", "errors.burst": "1000"})
    thing = "pump-bad"
    base = f"$aws/things/{thing}/shadow"
    cl = MqttClient(fx, broker, "raw", subscribe=[f"$aws/things/+/shadow/#", "hub/errors"])
    c = Checks()

    def reply(topic, payload, token=None, timeout=10):
        mark = cl.count()
        cl.publish(topic, payload)
        m = cl.wait_for(lambda m: m.topic.startswith(topic + "/") and
                        m.topic.rsplit("/", 1)[1] in ("accepted", "rejected") and
                        (token is None or json.loads(m.payload).get("clientToken") == token),
                        timeout, f"the reply to {topic} {payload[:40]!r}", start=mark)
        return m.topic.rsplit("/", 1)[1], json.loads(m.payload)

    kind, r = reply(base + "/update", json.dumps(
        {"state": {"reported": {"hr": 70, "pad": "x" * 100}}, "clientToken": "ok-1"}), "ok-1")
    c.eq((kind, r.get("version")), ("accepted", 1), "the valid first update")
    before = twin(hub, thing)

    big = json.dumps({"state": {"reported": {"blob": "y" * 70000}}})
    deep = {"state": {"reported": {}}}
    node = deep["state"]["reported"]
    for _ in range(20):
        node["d"] = {}
        node = node["d"]
    toolong = "t" * 65
    cases = [
        # (what, topic suffix, payload, code, message)
        ("not JSON", "/update", b"nope", 400, "Invalid JSON"),
        ("msgpack (not UTF-8)", "/update", msgpack.packb({"state": {"reported": {"hr": 1}}}), 415,
         "Unsupported documented encoding; supported encoding is UTF-8"),
        ("truncated JSON", "/update", b'{"state": {"reported": {"hr": 1}}', 400, "Invalid JSON"),
        ("a JSON array", "/update", b"[1, 2]", 400, "Invalid JSON"),
        ("empty update", "/update", b"", 400, "Invalid JSON"),
        ("not UTF-8", "/update", b'{"state": {"reported": {"s": "\xff\xfe"}}}', 415,
         "Unsupported documented encoding; supported encoding is UTF-8"),
        ("no state", "/update", b'{"clientToken": "c-1"}', 400, "Missing required node: state"),
        ("state a number", "/update", b'{"state": 5}', 400, "State node must be an object"),
        ("desired an array", "/update", b'{"state": {"desired": [1]}}', 400,
         "Desired node must be an object"),
        ("reported a string", "/update", b'{"state": {"reported": "x"}}', 400,
         "Reported node must be an object"),
        ("a delta node", "/update", b'{"state": {"delta": {"a": 1}}}', 400,
         "State contains an invalid node"),
        ("a key with a dot", "/update", b'{"state": {"reported": {"a.b": 1}}}', 400,
         "State contains an invalid node"),
        ("null in an array", "/update", b'{"state": {"reported": {"a": [1, null]}}}', 400,
         "State contains an invalid node"),
        ("the named shadows' key", "/update", b'{"state": {"desired": {"$shadows": {}}}}', 400,
         "State contains an invalid node"),
        ("version a string", "/update", b'{"state": {"reported": {"hr": 1}}, "version": "1"}',
         400, "Invalid version"),
        ("version negative", "/update", b'{"state": {"reported": {"hr": 1}}, "version": -1}',
         400, "Invalid version"),
        ("version a float", "/update", b'{"state": {"reported": {"hr": 1}}, "version": 1.5}',
         400, "Invalid version"),
        ("clientToken too long", "/update",
         json.dumps({"state": {"reported": {"hr": 1}}, "clientToken": toolong}).encode(), 400,
         "Invalid clientToken"),
        ("clientToken a number", "/update", b'{"state": {"reported": {"hr": 1}}, '
         b'"clientToken": 7}', 400, "Invalid clientToken"),
        ("a misspelt version", "/update", b'{"state": {"reported": {"hr": 1}}, "versoin": 1}',
         400, None),
        ("too deep", "/update", json.dumps(deep).encode(), 400,
         "JSON contains too many levels of nesting; maximum is 16"),
        ("too large", "/update", big.encode(), 413,
         "The payload exceeds the maximum size allowed"),
        ("version conflict", "/update",
         b'{"state": {"reported": {"hr": 1}}, "version": 7, "clientToken": "c-409"}', 409,
         "Version conflict"),
        ("the twin would grow past max_twin_size", "/update",
         json.dumps({"state": {"reported": {"blob": "z" * 9000}}}).encode(), 413,
         "The payload exceeds the maximum size allowed"),
        ("get with a bad payload", "/get", b"x", 400, "Invalid JSON"),
        ("get of a named shadow that is not there", "/name/nope/get", b"", 404,
         "No shadow exists with name: 'nope'"),
        ("delete of a named shadow that is not there", "/name/nope/delete", b"{}", 404,
         "No shadow exists with name: 'nope'"),
    ]
    for what, suffix, payload, code, message in cases:
        kind, r = reply(base + suffix, payload)
        c.eq((kind, r.get("code")), ("rejected", code), f"{what}: reply")
        if message is not None:
            c.eq(r.get("message"), message, f"{what}: message")
        else:
            c.check("versoin" in (r.get("message") or ""), f"{what}: message names the node: {r}")
        near_now(r.get("timestamp"), f"{what}: timestamp", c)
        if what == "version conflict":
            c.eq(r.get("clientToken"), "c-409", f"{what}: clientToken echoed")
        elif what == "no state":
            c.eq(r.get("clientToken"), "c-1", f"{what}: clientToken echoed")
        elif what.startswith("clientToken"):
            c.check("clientToken" not in r, f"{what}: a bad clientToken is not echoed: {r}")

    kind, r = reply("$aws/things/ghost/shadow/get", b'{"clientToken": "g"}', "g")
    c.eq((kind, r.get("code"), r.get("message")),
         ("rejected", 404, "No shadow exists with name: 'ghost'"), "get of no thing")
    kind, r = reply("$aws/things/ghost/shadow/delete", b"")
    c.eq((kind, r.get("code")), ("rejected", 404), "delete of no thing")

    # Topics the hub never answers (a bad thing or shadow name): counted and reported on
    # hub/errors, nothing changes.
    mark = cl.count()
    cl.publish("$aws/things/.hidden/shadow/update", b'{"state": {"reported": {"a": 1}}}')
    cl.publish(base + "/name/bad.name/update", b'{"state": {"reported": {"a": 1}}}')
    kind, r = reply(base + "/get", b'{"clientToken": "barrier"}', "barrier")
    c.eq(kind, "accepted", "the barrier's get")
    answered = [m.topic for m in cl.messages(start=mark)
                if m.topic.endswith(("/accepted", "/rejected")) and
                b'"barrier"' not in m.payload]
    c.eq(answered, [], "replies to bad thing and shadow names")
    errs = [json.loads(m.payload) if m.payload[:1] == b"{" else unpack(m.payload)
            for m in cl.messages("hub/errors", start=mark)]
    c.check(any(e.get("topic") == "$aws/things/.hidden/shadow/update" for e in errs),
            f"hub/errors reports the bad thing name: {errs}")
    c.check(any(e.get("topic") == base + "/name/bad.name/update" for e in errs),
            f"hub/errors reports the bad shadow name: {errs}")

    after = twin(hub, thing)
    c.eq(after, before, "the twin after every rejected request (unchanged)")
    c.eq(twin(hub, "ghost"), None, "no twin made by refused or missing requests")
    c.check(hub.alive(), "twinhub is running")
    m = hub.http("/metrics")
    text = m[2].decode()
    c.check('twinhub_replies_total{code="409"} 1' in text, "the 409 is counted in /metrics")

    # A retained request is applied once, when it arrives; the broker's replay of it at the
    # hub's next subscribe (a restart) changes nothing.
    kind, r = reply(base + "/update", b'{"state": {"reported": {"hr": 2}}, "clientToken": "ret"}',
                    "ret")
    c.eq((kind, r.get("version")), ("accepted", 2), "a retained update, live")
    cl.publish(base + "/update", b'{"state": {"reported": {"hr": 3}}, "clientToken": "ret2"}',
               retain=True)
    cl.wait_for(lambda m: m.topic == base + "/update/accepted" and
                json.loads(m.payload).get("clientToken") == "ret2", 10, "the retained update")
    hub.stop()
    hub.start()
    kind, r = reply(base + "/get", b'{"clientToken": "after-restart"}', "after-restart")
    c.eq((kind, r.get("version"), r.get("state", {}).get("reported", {}).get("hr")),
         ("accepted", 3, 3), "after the broker replayed the retained request (version, hr)")
    hub.stop()
    c.check(re.search(r'msg="stats" .* retained=1 ', hub.log_text()),
            "the hub counted the replay as retained (its last stats line)")
    c.done("bad input checks")


# ---------------------------------------------------------------------------------------------
# Off by default
# ---------------------------------------------------------------------------------------------

def case_off(fx):
    """Without aws.shadow the hub does not subscribe to $aws topics: nobody answers, no twin."""
    broker = Broker(fx)
    hub = Hub(fx, broker)
    cl = MqttClient(fx, broker, "raw", subscribe=["$aws/things/+/shadow/#", "twins/+/get/+"])
    mark = cl.count()
    cl.publish("$aws/things/pump-off/shadow/update",
               b'{"state": {"reported": {"hr": 1}}, "clientToken": "x"}')
    cl.publish("twins/pump-off/get", b'{"token": "barrier"}')
    cl.wait_for(lambda m: m.topic == "twins/pump-off/get/rejected", 10, "the barrier's reply",
                start=mark)
    got = [m.topic for m in cl.messages(start=mark) if m.topic.startswith("$aws/things/")
           and not m.topic.endswith("/update")]
    check_eq(got, [], "replies on $aws topics without aws.shadow")
    check_eq(twin(hub, "pump-off"), None, "the twin without aws.shadow")
    check("AWS IoT Device Shadow mode" not in hub.log_text(), "the hub said it serves $aws")
    hub.stop()


CASES = {
    "sdk_v2": case_sdk_v2,
    "sdk_v1_tls": case_sdk_v1_tls,
    "bad_input": case_bad_input,
    "off": case_off,
}

if __name__ == "__main__":
    if len(sys.argv) == 1:
        print(" ".join(CASES))
        sys.exit(0)
    sys.exit(run_case(CASES))
