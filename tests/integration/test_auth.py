#!/usr/bin/python3
"""test_auth: the authorization matrix (issue 6 item 5) against a real Mosquitto configured from
deploy/ with a development PKI from certs/, over MQTT 3.1.1 and 5, one ctest per case and version.

    /usr/bin/python3 test_auth.py CASE_VERSION      e.g. cross_publish_v5 (no argument: list)

Each case makes a PKI in its temp dir (certs/make-pki.sh --devices 3), renders the broker
configuration (deploy/mosquitto-conf.sh) with a mutual-TLS port and a localhost plaintext admin
port, starts mosquitto, twinhub over mutual TLS as 'twinhub', and an admin client on the admin
port subscribed to '#'. The admin listener has no ACL, so the admin sees everything the broker
routes: "the admin saw nothing on that topic" means the broker delivered nothing to anyone.

Every unauthorized attempt is followed by a barrier: an authorized message from the same
connection (or, for deliveries, from the same publisher) that the admin, the hub or the
subscriber does see. Mosquitto keeps one publisher's messages in order towards one subscriber and
the hub handles its input in order, so "nothing arrived before the barrier" is meaningful. The
twins (twinctl list + get) must then be exactly as before, except for the barrier's own change.

Environment: TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO as for test_hub.py; TWINHUB_REPO is the source
tree holding certs/make-pki.sh and deploy/ (default: two levels above this file).
"""

import json
import os
import pwd
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from harness import (MOSQUITTO, REPO, Checks, Hub, MqttClient, TestFailure, check, free_port,
                     get_retained, pack, port_accepts, run_case, spawn, tail, twin_get, twinctl,
                     unpack, wait_until)

SRC = os.environ.get("TWINHUB_REPO") or REPO
MAKE_PKI = os.path.join(SRC, "certs", "make-pki.sh")
CONF_SH = os.path.join(SRC, "deploy", "mosquitto-conf.sh")

A, B, C = "ecg-0001", "ecg-0002", "ecg-0003"
PROTOCOLS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


def tel(i):
    return f"devices/{i}/telemetry"


def state(i):
    return f"twins/{i}/state"


# ---------------------------------------------------------------------------------------------
# The PKI and the broker, made by the project's own scripts
# ---------------------------------------------------------------------------------------------

def make_pki(fx):
    """certs/make-pki.sh into the temp dir; checks that every file of the interface is there."""
    check(os.access(MAKE_PKI, os.X_OK), f"{MAKE_PKI} is missing or not executable")
    pki = fx.path("pki")
    t0 = time.monotonic()
    p = subprocess.run([MAKE_PKI, pki, "--devices", "3"], capture_output=True, timeout=180,
                       stdin=subprocess.DEVNULL, cwd=fx.dir)
    check(p.returncode == 0, f"make-pki.sh exited {p.returncode}:\n"
                             f"{p.stdout.decode(errors='replace')[-2000:]}"
                             f"{p.stderr.decode(errors='replace')[-2000:]}")
    need = ["ca.pem", "server.pem", "server.key", "hub.pem", "hub.key", "service.pem",
            "service.key", "crl.pem", "bad/expired.pem", "bad/expired.key", "bad/revoked.pem",
            "bad/revoked.key", "bad/foreign-ca.pem", "bad/foreign.pem", "bad/foreign.key"]
    need += [f"devices/{d}.{ext}" for d in (A, B, C) for ext in ("pem", "key")]
    missing = [n for n in need if not os.path.isfile(os.path.join(pki, n))]
    check(not missing, f"make-pki.sh did not make: {', '.join(missing)}")
    print(f"pki made in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return pki


def broker_readable(pki, conf_text):
    """Mosquitto started as root drops to user 'mosquitto' before it loads its certificates, CRL
    and ACL. A deployment gives the broker's key to the broker's user; do the same here (the
    temp dirs are root's and 0700)."""
    if os.geteuid() != 0 or re.search(r"^\s*user\s+root\b", conf_text, re.M):
        return
    try:
        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for d in (os.path.dirname(pki), pki):
        os.chmod(d, os.stat(d).st_mode | 0o711)
    os.chown(os.path.join(pki, "server.key"), pw.pw_uid, -1)
    for n in ("ca.pem", "server.pem", "crl.pem"):
        os.chmod(os.path.join(pki, n), 0o644)


class Endpoint:
    """What Hub and MqttClient need of a broker: a plaintext port (the admin listener) and the
    URL the hub connects to."""

    def __init__(self, port, url):
        self.port = port
        self.url = url


class SecureBroker:
    """mosquitto with the configuration rendered by deploy/mosquitto-conf.sh (mutual TLS on
    `port`, plaintext admin on `admin_port`), logging added to stderr."""

    def __init__(self, fx, pki):
        check(os.access(CONF_SH, os.X_OK), f"{CONF_SH} is missing or not executable")
        self.fx, self.pki = fx, pki
        self.proc = None
        self.conf = fx.path("mosquitto.conf")
        self.log = fx.path("mosquitto.log")
        fx.procs.append(self)
        fx.logs.append(("mosquitto", self.log))
        self.start()

    def __repr__(self):
        return f"mosquitto(tls={self.port}, admin={self.admin_port})"

    def render(self):
        p = subprocess.run([CONF_SH, "--pki", self.pki, "--port", str(self.port),
                            "--admin-port", str(self.admin_port), "--out", self.conf],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        check(p.returncode == 0, f"mosquitto-conf.sh exited {p.returncode}: "
                                 f"{p.stderr.decode(errors='replace')[-2000:]}")
        with open(self.conf) as f:
            text = f.read()
        check(not re.search(r"^[^#]*@[A-Z]+@", text, re.M),
              f"placeholder left in the rendered configuration:\n{text}")
        self.conf_text = text
        if not re.search(r"^\s*log_dest\b", text, re.M):  # logging only, and only if absent
            with open(self.conf, "a") as f:
                f.write("\n# added by test_auth.py\nlog_dest stderr\nlog_type error\n"
                        "log_type warning\nlog_type notice\nlog_type information\n"
                        "connection_messages true\n")
        broker_readable(self.pki, text)

    def start(self):
        for _ in range(5):
            self.port = free_port()
            self.admin_port = free_port()
            if self.admin_port == self.port:
                continue
            self.render()
            mark = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            self.proc = spawn([MOSQUITTO, "-c", self.conf], self.log, self.fx.dir)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_accepts(self.port) and port_accepts(self.admin_port):
                    self.admin = Endpoint(self.admin_port, f"tcp://127.0.0.1:{self.admin_port}")
                    self.tls_url = f"ssl://localhost:{self.port}"
                    return
                time.sleep(0.02)
            self.cleanup()
            with open(self.log, "rb") as f:
                f.seek(mark)
                if b"Address already in use" not in f.read():
                    break
        raise TestFailure(f"mosquitto did not start with the rendered configuration:\n"
                          f"{self.conf_text}\nlog:\n{tail(self.log)}")

    def log_text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# TLS clients: paho (what a device does) and raw bytes (what an attacker can do)
# ---------------------------------------------------------------------------------------------

class TlsClient:
    """A paho client with a certificate. connect=True: must be accepted (network loop in a
    thread, every message kept, disconnects counted). Use try_connect() for refusals."""

    def __init__(self, fx, sb, name, cert=None, key=None, client_id=None,
                 protocol=mqtt.MQTTv311, ca=None, connect=True):
        self.fx, self.sb, self.name, self.protocol = fx, sb, name, protocol
        self.client_id = name if client_id is None else client_id
        self.lock = threading.Condition()
        self.msgs = []
        self.subacks = {}
        self.connect_rc = None
        self.connected = False
        self.disconnects = 0
        self.error = None
        if protocol == mqtt.MQTTv5:
            self.c = mqtt.Client(client_id=self.client_id, protocol=protocol)
        else:
            self.c = mqtt.Client(client_id=self.client_id, clean_session=True, protocol=protocol)
        self.c.tls_set(ca_certs=ca or os.path.join(sb.pki, "ca.pem"), certfile=cert,
                       keyfile=key)
        self.c.max_queued_messages_set(0)
        # No reconnection within a test: a client that was dropped stays dropped (and counted)
        # instead of taking its client id back from whoever kicked it, in a loop.
        self.c.reconnect_delay_set(600, 600)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        fx.clients.append(self)
        if connect:
            self._connect()
            self.c.loop_start()
            with self.lock:
                ok = self.lock.wait_for(lambda: self.connect_rc is not None, 10)
            check(ok and self.connected, f"{name} (client id {self.client_id!r}) could not "
                                         f"connect over TLS: rc={self.connect_rc}")

    def __repr__(self):
        return f"TlsClient({self.name})"

    def _connect(self):
        if self.protocol == mqtt.MQTTv5:
            self.c.connect("localhost", self.sb.port, keepalive=60, clean_start=True)
        else:
            self.c.connect("localhost", self.sb.port, keepalive=60)

    def try_connect(self, timeout=5):
        """For a connection that should be refused: drives the network loop in this thread
        (no automatic reconnection) until a CONNACK, a closed connection or the timeout.
        Returns (accepted, how)."""
        try:
            self._connect()
        except (ssl.SSLError, OSError) as e:
            return False, f"refused in the TLS handshake ({e})"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rc = self.c.loop(0.1)
            except (ssl.SSLError, OSError) as e:
                return False, f"closed after the handshake ({e})"
            if self.connect_rc is not None:
                if self.connected:
                    return True, "CONNACK 0: accepted"
                return False, f"CONNACK refused rc={self.connect_rc}"
            if self.disconnects or rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                return False, f"closed before a CONNACK (paho rc={rc}: {mqtt.error_string(rc)})"
        return False, f"no CONNACK within {timeout}s"

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        with self.lock:
            code = rc.value if hasattr(rc, "value") else rc
            self.connect_rc = code
            self.connected = code == 0
            self.lock.notify_all()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        with self.lock:
            self.connected = False
            self.disconnects += 1
            self.lock.notify_all()

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.lock.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        with self.lock:
            self.subacks[mid] = [g.value if hasattr(g, "value") else g for g in granted]
            self.lock.notify_all()

    def subscribe(self, topic, qos=1, timeout=10):
        """Returns the SUBACK's codes (mosquitto grants what its ACL will then filter)."""
        rc, mid = self.c.subscribe(topic, qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe {topic}: rc={rc}")
        with self.lock:
            ok = self.lock.wait_for(lambda: mid in self.subacks, timeout)
        check(ok, f"{self.name}: no SUBACK for {topic} within {timeout}s")
        return self.subacks[mid]

    def publish(self, topic, payload, qos=1, retain=False, properties=None, timeout=10):
        """QoS 1: waits for the PUBACK (a denied 3.1.1 publish is acknowledged too; in MQTT 5
        the PUBACK carries the refusal, which paho 1.6 does not report)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS,
              f"{self.name}: publish to {topic!r} failed: rc={info.rc} "
              f"(connected={self.connected}, disconnects={self.disconnects})")
        if qos > 0:
            info.wait_for_publish(timeout)
            check(info.is_published(), f"{self.name}: no PUBACK for {topic!r} within "
                                       f"{timeout}s (disconnects={self.disconnects})")

    def messages(self):
        with self.lock:
            return list(self.msgs)

    def wait_for(self, pred, timeout, what):
        with self.lock:
            ok = self.lock.wait_for(lambda: any(pred(t, p) for t, p, r in self.msgs), timeout)
        check(ok, f"{self.name}: timed out after {timeout:g}s waiting for {what}")

    def close(self):
        if self.c is None:
            return
        try:
            self.c.disconnect()
        except Exception:
            pass
        try:
            self.c.loop_stop()
        except Exception:
            pass
        self.c = None


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varint(n):
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def _packet(first, body):
    return bytes([first]) + _varint(len(body)) + body


def raw_connect(v5, client_id):
    props = b"\x00" if v5 else b""
    return _packet(0x10, _str("MQTT") + bytes([5 if v5 else 4, 0x02]) + struct.pack("!H", 60) +
                   props + _str(client_id))


def raw_publish(v5, topic, payload, retain=False):
    props = b"\x00" if v5 else b""
    return _packet(0x30 | (1 if retain else 0), _str(topic) + props + payload)


def raw_attempt(sb, v5, cert, key, client_id, publishes, ca=None, tls=True):
    """What an attacker can do with a certificate (or none): the TLS handshake, then CONNECT
    and PUBLISHes pipelined without waiting for the CONNACK. Returns (accepted, how)."""
    s = socket.create_connection(("127.0.0.1", sb.port), timeout=5)
    try:
        if tls:
            ctx = ssl.create_default_context(cafile=ca or os.path.join(sb.pki, "ca.pem"))
            if cert:
                ctx.load_cert_chain(cert, key)
            try:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            except (ssl.SSLError, OSError) as e:
                return False, f"refused in the TLS handshake ({e})"
        data = raw_connect(v5, client_id) + b"".join(
            raw_publish(v5, t, p, r) for t, p, r in publishes)
        try:
            s.sendall(data)
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < 4 and time.monotonic() < deadline:
                chunk = s.recv(64)
                if not chunk:
                    break
                got += chunk
        except (ssl.SSLError, OSError) as e:
            return False, f"closed{' after the handshake' if tls else ''} ({e})"
        if not got:
            return False, "closed without a CONNACK"
        if got[0] != 0x20:
            return False, f"no CONNACK: first byte 0x{got[0]:02x}"
        rc = got[3] if len(got) > 3 else None
        return rc == 0, f"CONNACK rc={rc}"
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# The world of one case: PKI, broker, hub, admin; twin snapshots; barriers
# ---------------------------------------------------------------------------------------------

class World:
    def __init__(self, fx, version):
        self.fx = fx
        self.version = version
        self.protocol = PROTOCOLS[version]
        self.v5 = self.protocol == mqtt.MQTTv5
        self.pki = make_pki(fx)
        self.sb = SecureBroker(fx, self.pki)
        # The admin listener has no ACL: it sees every message the broker routes.
        self.admin = MqttClient(fx, self.sb.admin, "admin", protocol=self.protocol,
                                subscribe=["#"])
        hub_ep = Endpoint(self.sb.admin_port, self.sb.tls_url)
        self.hub = Hub(fx, hub_ep, sets={
            "broker.tls.ca": os.path.join(self.pki, "ca.pem"),
            "broker.tls.cert": os.path.join(self.pki, "hub.pem"),
            "broker.tls.key": os.path.join(self.pki, "hub.key"),
            "broker.client_id": "twinhub",
            "broker.mqtt_version": "5" if self.v5 else "4",
        })
        self.db = self.hub.db
        self.barrier_n = 0
        self.devices = []

    def dev(self, twin_id, client_id=None, cert_of=None):
        """A device with its own certificate (cert_of: someone else's device certificate)."""
        who = cert_of or twin_id
        d = TlsClient(self.fx, self.sb, twin_id if client_id is None else f"{who}-as-{client_id}",
                      os.path.join(self.pki, "devices", f"{who}.pem"),
                      os.path.join(self.pki, "devices", f"{who}.key"),
                      client_id=twin_id if client_id is None else client_id,
                      protocol=self.protocol)
        d.cn = who
        self.devices.append(d)
        return d

    def service(self):
        s = TlsClient(self.fx, self.sb, "twinhub-service", os.path.join(self.pki, "service.pem"),
                      os.path.join(self.pki, "service.key"), protocol=self.protocol)
        self.devices.append(s)
        return s

    def bad(self, name):
        return os.path.join(self.pki, "bad", f"{name}.pem"), os.path.join(self.pki, "bad",
                                                                        f"{name}.key")

    # --- the twins -----------------------------------------------------------------------

    def snapshot(self):
        """{id: twinctl get document} for every twin twinctl list knows."""
        rc, out, err = twinctl(self.db, "list")
        check(rc == 0, f"twinctl list: exit {rc}, stderr {err.strip()!r}")
        ids = []
        for ln in out.splitlines():
            ln = ln.strip()
            if not ln:
                continue
            try:
                v = json.loads(ln)
            except ValueError:
                v = ln
            ids.append(v.get("id") if isinstance(v, dict) else v)
        return {i: twin_get(self.db, i) for i in ids}

    def expect_twins(self, before, changes, what, versions=None, checks=None):
        """Every twin as in `before`, except that each twin of `changes` ({id: reported patch})
        took exactly that patch in exactly one more version (versions: {id: n} for more)."""
        versions = versions or {}
        after = self.snapshot()
        c = checks or Checks()
        c.eq(sorted(after), sorted(set(before) | set(changes)), f"{what}: twins listed")
        for i, doc in after.items():
            old = before.get(i)
            if i not in changes:
                c.eq(doc, old, f"{what}: twin {i}")
                continue
            n = versions.get(i, 1)
            c.eq(doc.get("version"), (old or {}).get("version", 0) + n,
                 f"{what}: twin {i} version ({n} authorized change(s))")
            rep = dict((old or {}).get("reported") or {})
            rep.update(changes[i])
            c.eq(doc.get("reported"), rep, f"{what}: twin {i} reported")
            for k in ("desired", "delta", "seq", "created", "predicted"):
                if old is not None:
                    c.eq(doc.get(k), old.get(k), f"{what}: twin {i} {k}")
        if checks is None:
            c.done(what)
        return after

    # --- barriers and the admin's view ---------------------------------------------------

    def telemetry(self, d, fields, timeout=15):
        """An authorized telemetry message from device d: waits until the admin saw it and the
        hub published the twin's state with it (so the hub handled everything d sent before)."""
        payload = pack(fields)
        mark = self.admin.count()
        d.publish(tel(d.cn), payload)
        self.admin.wait_for(lambda m: m.topic == tel(d.cn) and m.payload == payload, timeout,
                            f"{d.cn}'s telemetry at the admin", start=mark)

        def has(m):
            if m.topic != state(d.cn):
                return False
            rep = unpack(m.payload).get("reported") or {}
            return all(rep.get(k) == v for k, v in fields.items() if k not in ("seq", "ts"))
        self.admin.wait_for(has, timeout, f"{state(d.cn)} with {fields!r} at the admin",
                            start=mark)

    def barrier(self, d):
        self.barrier_n += 1
        n = f"{d.name}-{self.barrier_n}"
        self.telemetry(d, {"barrier": n})
        return {"barrier": n}

    def admin_mark(self):
        return self.admin.count()

    def admin_saw(self, start, topics=(), payloads=()):
        """Messages the admin got since `start` on one of `topics`, or with one of `payloads`."""
        return [(m.topic, m.payload[:60]) for m in self.admin.messages(start=start)
                if m.topic in topics or m.payload in payloads]

    def check_connected(self, c, *clients):
        for d in clients:
            c.eq((d.connected, d.disconnects), (True, 0),
                 f"{d.name} still connected, never dropped (connected, disconnects)")
        c.check(self.hub.alive(), "twinhub is running")
        c.eq(get_retained(self.fx, self.sb.admin, "hub/status"), b"online",
             "retained hub/status")


def attack(tag):
    """A payload no legitimate client sends: a telemetry map (valid, so a hub that got it would
    apply it) marked with tag."""
    return pack({"attack": tag, "hr": 666})


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def case_authorized(w):
    """A device does what it may: telemetry changes its twin, the hub (identity twinhub) publishes
    the state, the device reads its own desired and commands."""
    fx = w.fx
    a = w.dev(A)
    c = Checks()
    hub_online = [m for m in w.hub.status.messages("hub/status") if m.payload == b"online"]
    c.check(hub_online, "the hub (identity twinhub) published hub/status online")
    before = w.snapshot()
    c.eq(before, {}, "twins before any telemetry")
    w.telemetry(a, {"seq": 1, "hr": 72, "spo2": 98})
    doc = twin_get(w.db, A)
    c.check(doc is not None, f"twinctl get {A} after the authorized telemetry")
    if doc:
        c.eq(doc.get("reported"), {"hr": 72, "spo2": 98}, f"{A} reported")
        c.eq(doc.get("version"), 1, f"{A} version")
        ret = get_retained(fx, w.sb.admin, state(A))
        c.eq(unpack(ret) if ret else None, doc, f"retained {state(A)} (published by the hub)")
    # status and commands/ack are the device's too: the broker routes them.
    mark = w.admin_mark()
    a.publish(f"devices/{A}/status", b"online", retain=True)
    a.publish(f"devices/{A}/commands/ack", pack({"id": "c-1", "status": "delivered"}))
    for t in (f"devices/{A}/status", f"devices/{A}/commands/ack"):
        w.admin.wait_for(lambda m, t=t: m.topic == t, 10, f"{t} at the admin", start=mark)
    # It reads its own desired and commands: the admin's (a service's) messages arrive.
    for t in (f"devices/{A}/desired", f"devices/{A}/commands"):
        codes = a.subscribe(t)
        c.check(all(x in (0, 1) for x in codes), f"SUBACK for {t}: {codes}")
    desired = pack({"version": 1, "delta": {"rate": 2}})
    cmd = pack({"id": "c-1", "cmd": "reboot", "args": {}, "ts": 1, "expires": 0})
    w.admin.publish(f"devices/{A}/desired", desired, retain=True)
    w.admin.publish(f"devices/{A}/commands", cmd)
    a.wait_for(lambda t, p: t == f"devices/{A}/desired" and p == desired, 10,
               "its desired from the admin")
    a.wait_for(lambda t, p: t == f"devices/{A}/commands" and p == cmd, 10,
               "its command from the admin")
    # A retained desired reaches a device that subscribes later (the normal reconnect path).
    a.close()  # a reboot: the same identity and client id come back with a clean session
    a2 = w.dev(A)
    a2.subscribe(f"devices/{A}/desired")
    a2.wait_for(lambda t, p: t == f"devices/{A}/desired" and p == desired, 10,
                "its retained desired after a reconnect")
    w.telemetry(a2, {"seq": 2, "hr": 73})
    c.eq((twin_get(w.db, A) or {}).get("reported"), {"hr": 73, "spo2": 98}, f"{A} reported")
    c.done("authorized actions")


def case_cross_publish(w):
    """Device A publishes to B's device topics (telemetry, status, commands/ack, and the
    hub->device desired and commands), to an unknown device and to its own hub->device topics."""
    a, b = w.dev(A), w.dev(B)
    for t in (f"devices/{B}/desired", f"devices/{B}/commands", f"devices/{A}/desired",
              f"devices/{A}/commands"):
        (b if B in t else a).subscribe(t)
    w.telemetry(a, {"seq": 1, "hr": 70})
    w.telemetry(b, {"seq": 1, "hr": 80})
    before = w.snapshot()
    mark = w.admin_mark()
    bad = []

    def try_pub(topic, payload, qos=1, retain=False, props=None):
        bad.append((topic, payload))
        a.publish(topic, payload, qos=qos, retain=retain, properties=props)

    try_pub(tel(B), attack("B telemetry q1"))
    try_pub(tel(B), attack("B telemetry q0"), qos=0)
    try_pub(tel(B), attack("B telemetry retained"), retain=True)
    try_pub(f"devices/{B}/status", b"offline", retain=True)
    try_pub(f"devices/{B}/commands/ack", pack({"id": "x", "status": "succeeded"}))
    try_pub(f"devices/{B}/desired", pack({"version": 9, "delta": {"rate": 99}}), retain=True)
    try_pub(f"devices/{B}/commands", pack({"id": "evil", "cmd": "shutdown", "args": {}}))
    try_pub(tel(C), attack("C telemetry"))  # a device that never connected: no twin
    try_pub(f"devices/{A}/desired", pack({"version": 9, "delta": {"rate": 99}}), retain=True)
    try_pub(f"devices/{A}/commands", pack({"id": "self", "cmd": "x", "args": {}}))
    try_pub(f"devices/{A}/telemetry/extra", attack("deeper topic"))
    try_pub(f"devices/{A}", attack("shallower topic"))
    changes, versions = {A: {}}, {A: 1}
    if w.v5:
        # MQTT 5 topic aliases: map alias 1 to A's own topic, remap it to B's, then publish
        # by alias only. Whatever the broker does with the remap, nothing may reach B's topic;
        # the alias-only message may land on A's own topic if the refused remap left the alias.
        p = Properties(PacketTypes.PUBLISH)
        p.TopicAlias = 1
        a.publish(tel(A), pack({"alias": 1}), properties=p)
        changes[A]["alias"] = 1
        versions[A] += 1
        try_pub(tel(B), attack("alias remap"), props=p)
        alias_only = pack({"alias": 2})
        a.publish("", alias_only, properties=p)
    bn = w.barrier(a)
    changes[A].update(bn)
    c = Checks()
    if w.v5:
        own = [m for m in w.admin.messages(tel(A), mark) if m.payload == alias_only]
        on_b = [m for m in w.admin.messages(tel(B), mark) if m.payload == alias_only]
        print(f"v5 alias-only publish after a refused remap landed on: "
              f"{'A' if own else 'B' if on_b else 'nowhere'}", file=sys.stderr)
        c.check(not on_b, "the alias-only publish reached B's telemetry topic")
        if own:
            changes[A]["alias"] = 2
            versions[A] += 1
    # B (subscribed to its desired and commands) got nothing from A; so did A.
    b.publish(tel(B), pack({"b_barrier": 1}))  # B's own traffic still flows: a second barrier
    w.admin.wait_for(lambda m: m.topic == tel(B) and m.payload == pack({"b_barrier": 1}), 10,
                     "B's barrier at the admin", start=mark)
    changes[B] = {"b_barrier": 1}
    wait_until(lambda: (twin_get(w.db, B) or {}).get("reported", {}).get("b_barrier") == 1, 10,
               "B's barrier in its twin")
    saw = w.admin_saw(mark, topics={t for t, _ in bad if t != tel(B) and t != tel(A)},
                      payloads={p for _, p in bad})
    c.eq(saw, [], "messages the admin saw from A's unauthorized publishes")
    c.eq(a.messages() + b.messages(), [], "what A and B received on their desired/commands")
    c.check(get_retained(w.fx, w.sb.admin, f"devices/{B}/status") is None,
            "no retained devices/B/status")
    c.check(get_retained(w.fx, w.sb.admin, f"devices/{B}/desired") is None,
            "no retained devices/B/desired")
    c.check(get_retained(w.fx, w.sb.admin, tel(B)) is None, "no retained B telemetry")
    w.check_connected(c, a, b)
    w.expect_twins(before, changes, "twins after A published to B's topics", versions,
                   checks=c)
    c.done("cross-device publish checks")


def case_cross_subscribe(w):
    """Device A subscribes to B's desired and commands, to wildcards and to '#': the admin, B
    and the hub publish everywhere; A receives only its own desired and commands."""
    a, b = w.dev(A), w.dev(B)
    w.telemetry(b, {"seq": 1, "hr": 80})
    # Retained messages on B's topics before A subscribes (the broker checks them at SUBSCRIBE).
    w.admin.publish(f"devices/{B}/desired", pack({"version": 1, "delta": {"rate": 5}}),
                    retain=True)
    w.admin.publish(f"devices/{B}/status", b"online", retain=True)
    c = Checks()
    codes = {}
    filters = [f"devices/{B}/desired", f"devices/{B}/commands", f"devices/{B}/#",
               "devices/+/desired", "devices/+/commands", "devices/+/telemetry", "devices/#",
               "twins/#", f"twins/{B}/state", "hub/#", "#", "+/+/+", tel(A)]
    for f in filters:
        codes[f] = a.subscribe(f)
    before = w.snapshot()
    # Everything else that moves on the broker while A listens:
    others = [(f"devices/{B}/desired", pack({"version": 2, "delta": {"rate": 6}})),
              (f"devices/{B}/commands", pack({"id": "c-b", "cmd": "reboot", "args": {}})),
              (f"twins/{B}/events", pack({"rule": "r", "state": "firing"})),
              (f"twins/{B}/desired/set/accepted", pack({"version": 2})),
              ("hub/errors", pack({"topic": "x", "reason": "y"})),
              ("other/topic", b"x")]
    for t, p in others:
        w.admin.publish(t, p)
    w.telemetry(b, {"hr": 81})  # B's telemetry and the hub's twins/B/state
    w.telemetry(a, {"hr": 71})  # A's own telemetry: write-only for A, no echo
    # A's own: it must get these (possibly once per matching subscription).
    mine = [(f"devices/{A}/desired", pack({"version": 1, "delta": {"x": 1}})),
            (f"devices/{A}/commands", pack({"id": "c-a", "cmd": "ping", "args": {}}))]
    for t, p in mine:
        w.admin.publish(t, p)
    a.wait_for(lambda t, p: (t, p) == mine[-1], 10, "its own command (the barrier)")
    got = a.messages()
    c.check({(t, p) for t, p, r in got} >= set(mine),
            f"A received its own desired and command: {got!r}")
    foreign = [(t, p[:40], r) for t, p, r in got
               if t not in (f"devices/{A}/desired", f"devices/{A}/commands")]
    c.eq(foreign, [], "what A received that is not its own desired or commands")
    print(f"{w.version} SUBACK codes for A's subscriptions: {codes}", file=sys.stderr)
    w.check_connected(c, a, b)
    w.expect_twins(before, {B: {"hr": 81}, A: {"hr": 71}}, "twins after A listened", checks=c)
    c.done("cross-device subscribe checks")


def case_twins_publish(w):
    """Device A publishes to the service side: twins/# requests and outputs, hub/#."""
    a, b = w.dev(A), w.dev(B)
    b.subscribe(f"devices/{B}/desired")
    b.subscribe(f"devices/{B}/commands")
    w.telemetry(a, {"seq": 1, "hr": 70})
    w.telemetry(b, {"seq": 1, "hr": 80})
    ret_a = get_retained(w.fx, w.sb.admin, state(A))
    ret_b = get_retained(w.fx, w.sb.admin, state(B))
    before = w.snapshot()
    mark = w.admin_mark()
    forged = dict(before[B])
    forged.update(version=999, reported={"hr": 666})
    reqs = [(state(A), pack(dict(before[A], version=999)), True),
            (state(B), pack(forged), True),
            (f"twins/{B}/desired/set", pack({"desired": {"rate": 99}, "token": "t1"}), False),
            (f"twins/{A}/desired/set", pack({"desired": {"rate": 99}, "token": "t2"}), False),
            (f"twins/{B}/commands/send", pack({"cmd": "shutdown", "token": "t3"}), False),
            (f"twins/{B}/delete", pack({"token": "t4"}), False),
            (f"twins/{B}/get", pack({"token": "t5"}), False),
            (f"twins/{B}/desired/set/accepted", pack({"version": 9, "token": "t1"}), False),
            (f"twins/{B}/events", pack({"rule": "r", "state": "firing"}), False),
            (f"twins/{B}/predictions", pack({"model": "m", "value": 1}), False),
            ("hub/status", b"offline", True),
            ("hub/errors", pack({"topic": "x", "reason": "forged"}), False)]
    for t, p, r in reqs:
        a.publish(t, p, retain=r)
    bn = w.barrier(a)
    quiet = {t for t, p, r in reqs if t != state(A)}
    quiet |= {t + s for t, p, r in reqs for s in ("/accepted", "/rejected")}
    quiet |= {f"devices/{B}/desired", f"devices/{B}/commands", state(B)}
    c = Checks()
    c.eq(w.admin_saw(mark, topics=quiet, payloads={p for t, p, r in reqs}), [],
         "messages the admin saw after A's publishes to twins/# and hub/#")
    c.eq(b.messages(), [], "what B received on its desired and commands")
    c.eq(get_retained(w.fx, w.sb.admin, state(B)), ret_b, f"retained {state(B)}")
    ra = get_retained(w.fx, w.sb.admin, state(A))
    c.check(ra is not None and unpack(ra).get("version") == before[A]["version"] + 1,
            f"retained {state(A)} is the hub's (version {before[A]['version'] + 1})")
    c.check(ret_a is not None, "retained A state existed before")
    w.check_connected(c, a, b)
    w.expect_twins(before, {A: bn}, "twins after A published to twins/# and hub/#", checks=c)
    c.done("twins/# publish checks")


def case_bad_certs(w):
    """No certificate, the expired, revoked and foreign-CA certificates, and plaintext to the TLS
    port: refused (handshake or CONNACK) with paho and with pipelined raw packets; nothing
    delivered; the legitimate owners of those CNs stay connected."""
    a, b = w.dev(A), w.dev(B)
    w.telemetry(a, {"seq": 1, "hr": 70})
    w.telemetry(b, {"seq": 1, "hr": 80})
    c = Checks()
    # The bad certificates are bad for the reason their names say (so a refusal tests that).
    ca = os.path.join(w.pki, "ca.pem")

    def verify(*args):
        p = subprocess.run(["openssl", "verify"] + list(args), capture_output=True, timeout=30)
        return p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace").strip()
    exp_pem, _ = w.bad("expired")
    rev_pem, _ = w.bad("revoked")
    for_pem, _ = w.bad("foreign")
    ok, out = verify("-CAfile", ca, exp_pem)
    c.check(not ok and "expired" in out, f"openssl verify expired.pem: {out}")
    ok, out = verify("-CAfile", ca, "-no_check_time", exp_pem)
    c.check(ok, f"expired.pem is otherwise valid under the CA: {out}")
    ok, out = verify("-CAfile", ca, rev_pem)
    c.check(ok, f"revoked.pem is valid without the CRL: {out}")
    ok, out = verify("-CAfile", ca, "-CRLfile", os.path.join(w.pki, "crl.pem"), "-crl_check",
                     rev_pem)
    c.check(not ok and "revoked" in out, f"revoked.pem with the CRL: {out}")
    ok, out = verify("-CAfile", os.path.join(w.pki, "bad", "foreign-ca.pem"), for_pem)
    c.check(ok, f"foreign.pem is valid under the foreign CA: {out}")
    ok, out = verify("-CAfile", ca, for_pem)
    c.check(not ok, f"foreign.pem under our CA: {out}")

    before = w.snapshot()
    mark = w.admin_mark()
    attempts = [("no certificate", None, None, A),
                ("expired (CN ecg-0001)", *w.bad("expired"), A),
                ("revoked (CN ecg-0002)", *w.bad("revoked"), B),
                ("foreign CA (CN ecg-0001)", *w.bad("foreign"), A)]
    sent = []
    outcomes = []
    for label, cert, key, victim in attempts:
        # paho, as a device would
        p = TlsClient(w.fx, w.sb, f"paho {label}", cert, key, client_id=victim,
                      protocol=w.protocol, connect=False)
        accepted, how = p.try_connect()
        outcomes.append(f"paho {label}: {how}")
        c.check(not accepted, f"paho with {label} was accepted: {how}")
        if accepted:
            payload = attack(f"paho {label}")
            sent.append((tel(victim), payload))
            p.c.publish(tel(victim), payload, qos=0)
            p.c.loop(0.2)
        p.close()
        # raw, pipelined: CONNECT and PUBLISHes in one write, before any CONNACK
        pubs = [(tel(victim), attack(f"raw {label}"), False),
                (f"devices/{victim}/status", b"offline", True),
                ("hub/status", b"offline", True),
                (f"twins/{victim}/desired/set", pack({"desired": {"rate": 99}}), False)]
        sent += [(t, pl) for t, pl, r in pubs]
        accepted, how = raw_attempt(w.sb, w.v5, cert, key, victim, pubs)
        outcomes.append(f"raw {label}: {how}")
        c.check(not accepted, f"raw client with {label} was accepted: {how}")
    # Plaintext MQTT on the TLS port, and a client that trusts only the foreign CA.
    accepted, how = raw_attempt(w.sb, w.v5, None, None, A, [(tel(A), attack("plain"), False)],
                                tls=False)
    sent.append((tel(A), attack("plain")))
    outcomes.append(f"plaintext on the TLS port: {how}")
    c.check(not accepted, f"plaintext MQTT on the TLS port was accepted: {how}")
    # The admin listener is localhost-only: not reachable on another address of this host.
    for addr in other_addresses():
        try:
            with socket.create_connection((addr, w.sb.admin_port), timeout=1):
                c.check(False, f"the admin port is reachable on {addr}")
        except OSError:
            outcomes.append(f"admin port on {addr}: not reachable")
        try:
            with socket.create_connection((addr, w.sb.port), timeout=1):
                c.check(False, f"the TLS port is reachable on {addr} (listener not on 127.0.0.1)")
        except OSError:
            pass
    time.sleep(0.2)
    c.check(a.connected and b.connected, "the legitimate ecg-0001 and ecg-0002 are connected "
            f"(a refused client with their CN did not take over): {a.connected}, {b.connected}")
    try:
        ba = w.barrier(a)
        bb = w.barrier(b)
    except TestFailure as e:
        c.check(False, f"barrier: {e}")
        c.done("refused-connection checks")
    topics = {t for t, _ in sent if not t.startswith("devices/") or not t.endswith("/telemetry")}
    c.eq(w.admin_saw(mark, topics=topics, payloads={p for _, p in sent}), [],
         "messages the admin saw from refused clients")
    w.check_connected(c, a, b)
    log = w.sb.log_text()
    for cn in (A, B):
        c.check(f"Client {cn} already connected" not in log,
                f"mosquitto log: a refused client took over {cn}")
    print("\n".join(f"{w.version} {o}" for o in outcomes), file=sys.stderr)
    w.expect_twins(before, {A: ba, B: bb}, "twins after the refused connections", checks=c)
    c.done("refused-connection checks")


def other_addresses():
    """This host's non-loopback IPv4 addresses (none on an isolated machine)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, timeout=5).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return []
    return [x for x in out.split() if "." in x and not x.startswith("127.")]


def case_client_id(w):
    """A device takes another's client id (and the hub's): the broker uses the certificate's CN
    as the client id, so nobody is kicked and the impostor still speaks only as itself."""
    b = w.dev(B)  # client id ecg-0002
    w.telemetry(b, {"seq": 1, "hr": 80})
    before = w.snapshot()
    mark = w.admin_mark()
    c = Checks()
    imp = w.dev(B, client_id=B, cert_of=A)  # cert ecg-0001, client id "ecg-0002"
    imp3 = w.dev("twinhub", client_id="twinhub", cert_of=C)  # cert ecg-0003, id "twinhub"
    time.sleep(0.3)  # a kick is immediate; give its DISCONNECT time to arrive
    check(b.connected and not b.disconnects,
          f"{B} was dropped when {A} connected with client id {B!r}")
    bad = [(tel(B), attack("impostor -> B telemetry")),
           (f"devices/{B}/status", b"offline"),
           ("hub/status", b"offline")]
    for t, p in bad:
        imp.publish(t, p)
        imp3.publish(t, p)
    # What it may do, it does as ecg-0001 / ecg-0003.
    w.telemetry(imp, {"who": "impostor-a"})
    w.telemetry(imp3, {"who": "impostor-c"})
    bb = w.barrier(b)  # ecg-0002 still delivers
    c.eq(w.admin_saw(mark, topics={t for t, _ in bad if t != tel(B)},
                     payloads={p for _, p in bad}), [],
         "messages the admin saw from the impostors' publishes to B and hub topics")
    w.check_connected(c, b, imp, imp3)
    log = w.sb.log_text()
    for cid in (B, "twinhub"):
        c.check(f"Client {cid} already connected" not in log,
                f"mosquitto log: an impostor took over client id {cid}")
    c.check(re.search(rf"New client connected .* as {A} ", log),
            f"mosquitto log: the impostor with cert {A} connected as {A}")
    hub_offline = [m for m in w.admin.messages("hub/status", mark) if m.payload == b"offline"]
    c.eq(hub_offline, [], "hub/status offline (the hub's will) while impostors connected")
    w.expect_twins(before, {A: {"who": "impostor-a"}, C: {"who": "impostor-c"}, B: bb},
                   "twins after the impostors", checks=c)
    c.done("client-id checks")


def case_identities(w):
    """The hub's identity does what it needs; the service identity reads twins/# and hub/# but
    cannot write device topics, twins outputs or hub/#, nor read devices/#."""
    a = w.dev(A)
    c = Checks()
    # The hub: connected as twinhub over mutual TLS, birth published, telemetry in, state out.
    log = w.sb.log_text()
    c.check(re.search(r"New client connected .* as twinhub ", log),
            "mosquitto log: the hub connected as twinhub")
    w.telemetry(a, {"seq": 1, "hr": 70})
    svc = w.service()
    codes = {f: svc.subscribe(f) for f in ("twins/#", "hub/#", "devices/#")}
    svc.wait_for(lambda t, p: t == state(A) and unpack(p).get("reported", {}).get("hr") == 70,
                 10, f"the retained {state(A)} at the service")
    svc.wait_for(lambda t, p: t == "hub/status" and p == b"online", 10,
                 "the retained hub/status at the service")
    # A new state reaches the service live.
    w.telemetry(a, {"seq": 2, "hr": 71})
    svc.wait_for(lambda t, p: t == state(A) and unpack(p).get("reported", {}).get("hr") == 71,
                 10, f"the live {state(A)} at the service")
    # Requests are the service's to send (the broker routes them; the admin sees them).
    before = w.snapshot()
    mark = w.admin_mark()
    req = pack({"token": "svc-get"})
    svc.publish(f"twins/{A}/get", req)
    w.admin.wait_for(lambda m: m.topic == f"twins/{A}/get" and m.payload == req, 10,
                     "the service's request at the admin", start=mark)
    # What it may not write.
    bad = [(tel(A), attack("service -> telemetry"), False),
           # The device pattern rules apply to every username: the service must not be a
           # device named after its own CN either (a twin "twinhub-service").
           (tel("twinhub-service"), attack("service as a device"), False),
           ("devices/twinhub-service/status", b"online", True),
           (f"devices/{A}/desired", pack({"version": 9, "delta": {"rate": 99}}), True),
           (f"devices/{A}/commands", pack({"id": "s", "cmd": "x", "args": {}}), False),
           (state(A), pack({"id": A, "version": 999}), True),
           ("hub/status", b"offline", True)]
    a.subscribe(f"devices/{A}/desired")
    a.subscribe(f"devices/{A}/commands")
    mark = w.admin_mark()
    # Device traffic the service must not read (B is not connected: nobody else gets these).
    w.admin.publish(f"devices/{B}/desired", pack({"version": 1, "delta": {"rate": 3}}))
    w.admin.publish(f"devices/{B}/commands", pack({"id": "b", "cmd": "x", "args": {}}))
    # "offline" for a twin that does not exist changes nothing at the hub ("online" would
    # create B's twin: presence is a device's right), so twins stay comparable.
    w.admin.publish(f"devices/{B}/status", pack("offline"), retain=True)
    for t, p, r in bad:
        svc.publish(t, p, retain=r)
    req2 = pack({"token": "svc-barrier"})
    svc.publish(f"twins/{A}/get", req2)  # barrier for the admin: same publisher, in order
    w.admin.wait_for(lambda m: m.topic == f"twins/{A}/get" and m.payload == req2, 10,
                     "the service's barrier at the admin", start=mark)
    ba = w.barrier(a)  # and for the hub and for A
    c.eq(w.admin_saw(mark, topics={f"devices/{A}/desired", f"devices/{A}/commands",
                                   "hub/status", tel("twinhub-service"),
                                   "devices/twinhub-service/status"},
                     payloads={p for t, p, r in bad}), [],
         "messages the admin saw from the service's unauthorized publishes")
    c.eq(a.messages(), [], "what A received from the service")
    # What it may not read: the device topics, though they moved while it listened.
    dev_msgs = [(t, p[:40]) for t, p, r in svc.messages() if t.startswith("devices/")]
    c.eq(dev_msgs, [], "device messages the service received on devices/#")
    try:
        wait_until(lambda: any(t == state(A) and
                               unpack(p).get("reported", {}).get("barrier") == ba["barrier"]
                               for t, p, r in svc.messages()), 10, "the barrier's twin state")
    except TestFailure:
        c.check(False, "the service saw the barrier's twin state")
    print(f"{w.version} service SUBACK codes: {codes}", file=sys.stderr)
    w.check_connected(c, a, svc)
    w.expect_twins(before, {A: ba}, "twins after the service's attempts", checks=c)
    c.done("identity checks")


CASE_FUNCS = {
    "authorized": case_authorized,
    "cross_publish": case_cross_publish,
    "cross_subscribe": case_cross_subscribe,
    "twins_publish": case_twins_publish,
    "bad_certs": case_bad_certs,
    "client_id": case_client_id,
    "identities": case_identities,
}


def _runner(fn, version):
    def run(fx):
        w = World(fx, version)
        fn(w)
        # The hub's identity may do what the hub does: no refusal of its publications or its
        # subscription in its log, and it still stops cleanly.
        refused = [ln for ln in w.hub.log_text().splitlines()
                   if re.search(r"refused|not authori[sz]ed|reason=0x[89a-f]", ln, re.I)]
        check(not refused, "the hub logged refusals:\n" + "\n".join(refused[:20]))
        w.hub.stop()
    return run


CASES = {f"{name}_{v}": _runner(fn, v) for name, fn in CASE_FUNCS.items() for v in PROTOCOLS}

if __name__ == "__main__":
    if len(sys.argv) == 1:
        print(" ".join(CASES))
        sys.exit(0)
    sys.exit(run_case(CASES))
