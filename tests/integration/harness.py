"""harness: what every integration test needs to run twinhub against a real Mosquitto.

It owns the plumbing (temp dirs, free ports, the broker, the hub process, MQTT clients,
twinctl) and nothing of what is being tested. A test builds a Fixture, starts a Broker and a
Hub in it, talks MQTT like a device or a service would, and the Fixture kills and removes
everything it started on every exit path (try/finally in run_case, atexit, SIGTERM).

Run by Debian's /usr/bin/python3 with python3-paho-mqtt (1.6) and python3-msgpack.
Environment: TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO (set by ctest); TWINHUB_IT_KEEP=1 keeps the
temp dir of a failed test (=always: of every test); TWINHUB_IT_SEED fixes the random choices of
the kill9 case, TWINHUB_IT_PERIOD the pause between a device's messages there (s).
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import msgpack
import paho.mqtt.client as mqtt

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LSAN_SUPP = os.path.join(REPO, "tests", "lsan.supp")


def _binary(var, fallback):
    path = os.environ.get(var) or shutil.which(fallback) or ""
    return path


TWINHUB_BIN = _binary("TWINHUB_BIN", "twinhub")
TWINCTL_BIN = _binary("TWINCTL_BIN", "twinctl")
TWINSIM_BIN = _binary("TWINSIM_BIN", "twinsim")
MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SETPRIV = shutil.which("setpriv")


# ---------------------------------------------------------------------------------------------
# Failing clearly
# ---------------------------------------------------------------------------------------------

class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def check_eq(got, expected, what):
    if got != expected:
        raise TestFailure(f"{what}:\n  expected: {expected!r}\n  got:      {got!r}")


class Checks:
    """Soft checks: collect every failure of a table of cases, fail once at the end."""

    def __init__(self):
        self.failures = []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
        return bool(cond)

    def eq(self, got, expected, what):
        return self.check(got == expected, f"{what}: expected {expected!r}, got {got!r}")

    def done(self, what="checks"):
        if self.failures:
            raise TestFailure(f"{len(self.failures)} {what} failed:\n  - " +
                              "\n  - ".join(self.failures))


def wait_until(pred, timeout, what, interval=0.02):
    """Polls pred() until it returns something truthy; returns that. Fails after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def now_ms():
    return int(time.time() * 1000)


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(payload):
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (Mosquitto 2 reads 0 as a socket)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path, lines=80):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    text = data.decode("utf-8", "replace").splitlines()
    cut = text[-lines:]
    head = f"(last {len(cut)} of {len(text)} lines)\n" if len(text) > len(cut) else ""
    return head + "\n".join(cut)


def child_env(extra=None):
    """The environment of the hub and twinctl: no stray TWINHUB_* settings from the caller's
    shell, sanitizer options that the test build needs (unless the caller set them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINHUB_")}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    if os.path.exists(LSAN_SUPP):
        env.setdefault("LSAN_OPTIONS", f"suppressions={LSAN_SUPP}:print_suppressions=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if extra:
        env.update(extra)
    return env


def spawn(argv, log_path, cwd, env=None):
    """Starts a child with stdout+stderr to log_path. With setpriv, the child gets SIGKILL if
    this process dies (the main thread must spawn: the death signal follows the thread)."""
    if SETPRIV:
        argv = [SETPRIV, "--pdeathsig", "KILL", "--"] + list(argv)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=cwd, env=env)
    finally:
        log.close()


# ---------------------------------------------------------------------------------------------
# Fixture: one temp dir, everything a test started, and their cleanup
# ---------------------------------------------------------------------------------------------

class Fixture:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"twinhub-it-{name}-")
        self.procs = []    # objects with .cleanup() (Broker, Hub)
        self.clients = []  # MqttClient
        self.logs = []     # (label, path) printed when the test fails
        self.failed = False
        self.closed = False
        self._n = 0
        atexit.register(self.close)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def unique(self, prefix):
        self._n += 1
        return f"{prefix}-{os.getpid()}-{self._n}"

    def dump_logs(self, out=sys.stderr):
        for label, path in self.logs:
            print(f"----- {label}: {path}", file=out)
            print(tail(path), file=out)
        out.flush()

    def close(self):
        """Idempotent: disconnects clients, kills processes, removes the temp dir."""
        if self.closed:
            return
        self.closed = True
        for c in reversed(self.clients):
            try:
                c.close()
            except Exception:
                pass
        leftovers = []
        for p in reversed(self.procs):
            try:
                p.cleanup()
            except Exception as e:
                leftovers.append(f"{p}: {e}")
        keep_env = os.environ.get("TWINHUB_IT_KEEP")
        keep = keep_env == "always" or (self.failed and keep_env == "1")
        if keep:
            print(f"keeping {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if leftovers:
            print("cleanup problems: " + "; ".join(leftovers), file=sys.stderr)

    def check_nothing_left(self):
        """After close(): every process we started is gone and the temp dir is removed."""
        for p in self.procs:
            proc = getattr(p, "proc", None)
            check(proc is None or proc.poll() is not None, f"{p} is still running after cleanup")
        check(not os.path.exists(self.dir) or self.failed or
              os.environ.get("TWINHUB_IT_KEEP") == "always", f"{self.dir} left behind")


# ---------------------------------------------------------------------------------------------
# Mosquitto
# ---------------------------------------------------------------------------------------------

DURABLE_CONF = os.path.join(REPO, "deploy", "mosquitto-durable.conf")


class Broker:
    """mosquitto on a free port with the queue and persistence of the shipped configuration
    (deploy/mosquitto-durable.conf, mosquitto.db in the temp dir), or with Mosquitto's own
    defaults (durable=False: no persistence, 1000 messages queued per client)."""

    def __init__(self, fx, acl=None, durable=True):
        self.fx = fx
        self.proc = None
        self.port = None
        self.durable = durable
        self.data = fx.path(fx.unique("mosquitto-data"))  # one per broker, kept across restarts
        if durable:
            os.makedirs(self.data, exist_ok=True)
            if os.geteuid() == 0:
                # started as root, mosquitto writes mosquitto.db as user 'mosquitto'
                os.chmod(fx.dir, 0o755)
                shutil.chown(self.data, "mosquitto")
        self.acl = fx.path("mosquitto.acl") if acl is not None else None
        if acl is not None:
            # Started as root, mosquitto reads the ACL file as user 'mosquitto' (also at
            # reload): let it into the temp dir.
            os.chmod(fx.dir, 0o755)
            self.write_acl(acl)
        self.log = fx.path("mosquitto.log")
        fx.procs.append(self)
        fx.logs.append(("mosquitto", self.log))
        self.start()

    def __repr__(self):
        return f"mosquitto(port={self.port})"

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, port=None):
        """Starts mosquitto; on `port` (a restart), else on a free one. Mosquitto with
        persistence reloads its mosquitto.db: sessions, their queues, retained messages."""
        # The port can be taken between free_port() and mosquitto's bind: try a few.
        for _ in range(1 if port else 5):
            self.port = port or free_port()
            conf = self.fx.path("mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {self.port} 127.0.0.1\n"
                        "allow_anonymous true\n"
                        "log_dest stderr\n"
                        "log_type error\nlog_type warning\nlog_type notice\n"
                        "log_type information\n"
                        "connection_messages true\n" +
                        (f"acl_file {self.acl}\n" if self.acl else ""))
                if self.durable:
                    f.write(f"persistence_location {self.data}/\n")
                    with open(DURABLE_CONF) as d:
                        f.write(d.read())
            self.proc = spawn([MOSQUITTO, "-c", conf], self.log, self.fx.dir)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_accepts(self.port):
                    return
                time.sleep(0.02)
            self.cleanup()
        raise TestFailure(f"mosquitto did not start; log:\n{tail(self.log)}")

    def restart(self):
        """A clean stop (SIGTERM: mosquitto saves its database) and a start on the same port."""
        self.cleanup()
        self.start(self.port)

    def write_acl(self, text):
        """Rules for anonymous clients (topic lines before any user line), e.g.
        "topic readwrite #". Takes effect at start or at reload()."""
        with open(self.acl, "w") as f:
            f.write(text)
        os.chmod(self.acl, 0o644)

    def reload(self):
        """SIGHUP: mosquitto re-reads its configuration and ACL file."""
        mark = os.path.getsize(self.log)
        self.proc.send_signal(signal.SIGHUP)

        def reloaded():
            with open(self.log, "rb") as f:
                f.seek(mark)
                return b"Reloading config" in f.read()
        wait_until(reloaded, 10, "mosquitto to reload its configuration")

    def cleanup(self):
        terminate(self.proc)


def terminate(proc, timeout=5):
    """SIGTERM, then SIGKILL after `timeout` s; waits for the exit. None or exited is fine."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Child:
    """Another program a test runs (a Prometheus, say), logged and stopped with the Fixture."""

    def __init__(self, fx, argv, label):
        self.label = label
        self.log = fx.path(f"{label}.log")
        fx.logs.append((label, self.log))
        self.proc = spawn(argv, self.log, fx.dir)
        fx.procs.append(self)

    def __repr__(self):
        return f"{self.label}(pid={self.proc.pid})"

    def cleanup(self):
        terminate(self.proc, 10)


# ---------------------------------------------------------------------------------------------
# MQTT clients (paho-mqtt 1.6)
# ---------------------------------------------------------------------------------------------

class Msg:
    __slots__ = ("topic", "payload", "retain", "qos", "t", "corr")

    def __init__(self, m):
        props = getattr(m, "properties", None)
        self.corr = getattr(props, "CorrelationData", None) if props else None
        self.topic = m.topic
        self.payload = m.payload
        self.retain = bool(m.retain)
        self.qos = m.qos
        self.t = time.monotonic()

    def __repr__(self):
        return f"Msg({self.topic!r}, {self.payload[:80]!r}, retain={self.retain})"


class MqttClient:
    """A connected client with its network loop in a thread; collects every message."""

    def __init__(self, fx, broker, name="client", protocol=mqtt.MQTTv311, subscribe=(),
                 qos=1):
        self.fx = fx
        self.protocol = protocol
        self.client_id = fx.unique(f"it-{name}")
        self.sync_topic = f"it/sync/{self.client_id}"
        self.lock = threading.Condition()
        self.msgs = []
        self.subacks = {}
        self.connected = False
        self.connect_rc = None
        self._sync_n = 0
        if protocol == mqtt.MQTTv5:
            self.c = mqtt.Client(client_id=self.client_id, protocol=protocol)
        else:
            self.c = mqtt.Client(client_id=self.client_id, clean_session=True, protocol=protocol)
        self.c.max_inflight_messages_set(200)
        self.c.max_queued_messages_set(0)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        fx.clients.append(self)
        if protocol == mqtt.MQTTv5:
            self.c.connect("127.0.0.1", broker.port, keepalive=60, clean_start=True)
        else:
            self.c.connect("127.0.0.1", broker.port, keepalive=60)
        self.c.loop_start()
        with self.lock:
            ok = self.lock.wait_for(lambda: self.connected or self.connect_rc is not None, 10)
        check(ok and self.connected, f"MQTT client {self.client_id} could not connect "
                                     f"(rc={self.connect_rc})")
        self.subscribe(self.sync_topic, 1)
        for t in subscribe:
            self.subscribe(t, qos)

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        with self.lock:
            code = rc.value if hasattr(rc, "value") else rc
            self.connect_rc = code
            self.connected = code == 0
            self.lock.notify_all()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        with self.lock:
            self.connected = False
            self.lock.notify_all()

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.msgs.append(Msg(m))
            self.lock.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        with self.lock:
            self.subacks[mid] = granted
            self.lock.notify_all()

    def subscribe(self, topic, qos=1, timeout=10):
        rc, mid = self.c.subscribe(topic, qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic}: rc={rc}")
        with self.lock:
            ok = self.lock.wait_for(lambda: mid in self.subacks, timeout)
        check(ok, f"no SUBACK for {topic} within {timeout}s")

    def publish(self, topic, payload, qos=1, retain=False, timeout=15, properties=None):
        """Publishes and, for QoS > 0, waits for the broker's acknowledgement."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r} failed: rc={info.rc}")
        if qos > 0:
            info.wait_for_publish(timeout)
            check(info.is_published(), f"no PUBACK for {topic!r} within {timeout}s")
        return info

    def publish_nowait(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos=qos)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r} failed: rc={info.rc}")
        return info

    def sync(self, timeout=10):
        """Round trip through the broker: everything the broker queued for us before (e.g.
        retained messages of a subscription) has arrived when this returns."""
        self._sync_n += 1
        token = f"sync-{self._sync_n}".encode()
        self.publish(self.sync_topic, token, qos=1)
        self.wait_for(lambda m: m.topic == self.sync_topic and m.payload == token, timeout,
                      "own sync message")

    def count(self):
        with self.lock:
            return len(self.msgs)

    def messages(self, sub=None, start=0):
        with self.lock:
            ms = self.msgs[start:]
        ms = [m for m in ms if m.topic != self.sync_topic]
        if sub is not None:
            ms = [m for m in ms if mqtt.topic_matches_sub(sub, m.topic)]
        return ms

    def wait_for(self, pred, timeout, what, start=0):
        """Waits for a message (from index `start`) that satisfies pred; returns it."""
        deadline = time.monotonic() + timeout
        with self.lock:
            i = start
            while True:
                while i < len(self.msgs):
                    m = self.msgs[i]
                    i += 1
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestFailure(f"timed out after {timeout:g}s waiting for {what}")
                self.lock.wait(min(left, 0.5))

    def close(self):
        if self.c is None:
            return
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()
        self.c = None


def get_retained(fx, broker, topic, name="retained"):
    """The retained message of `topic` (bytes) or None, read by a fresh subscriber."""
    c = MqttClient(fx, broker, name)
    try:
        c.subscribe(topic, 1)
        c.sync()
        ms = [m for m in c.messages(topic) if m.retain]
        return ms[-1].payload if ms else None
    finally:
        c.close()
        fx.clients.remove(c)


# ---------------------------------------------------------------------------------------------
# twinhub
# ---------------------------------------------------------------------------------------------

class Hub:
    """One twinhub service (a db dir), started and stopped any number of times."""

    def __init__(self, fx, broker, sets=None, config=None, flags=True, db=None, start=True,
                 env=None):
        self.fx = fx
        self.broker = broker
        # every hub of a test run listens for HTTP on a port of its own (logged, http_port())
        self.sets = {"http.listen": "127.0.0.1:0", **dict(sets or {})}
        self.config = config
        self.flags = flags
        self.db = db or fx.path("db")
        self.env = env
        self.proc = None
        self.starts = 0
        self.log = None
        fx.procs.append(self)
        self.status = MqttClient(fx, broker, "status", subscribe=["hub/status"])
        if start:
            self.start()

    def __repr__(self):
        return f"twinhub(pid={self.proc.pid if self.proc else None})"

    def argv(self):
        a = [TWINHUB_BIN]
        if self.config:
            a += ["-c", self.config]
        if self.flags:
            a += ["--broker", self.broker.url, "--db", self.db, "--log-level", "debug"]
        for k, v in self.sets.items():
            a += ["--set", f"{k}={v}"]
        return a

    def start(self, wait=True, timeout=30):
        check(self.proc is None or self.proc.poll() is not None, "hub already running")
        self.starts += 1
        self.log = self.fx.path(f"hub-{self.starts}.log")
        self.fx.logs.append((f"twinhub run {self.starts}", self.log))
        self._status_mark = self.status.count()
        self.proc = spawn(self.argv(), self.log, self.fx.dir, child_env(self.env))
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout=30):
        """Ready: this process published its birth message (a live 'online', not a retained
        one left by an earlier run) and the retained hub/status is 'online'."""
        def born():
            self.check_alive("while waiting for it to come online")
            return any(m.payload == b"online" and not m.retain
                       for m in self.status.messages("hub/status", self._status_mark))
        wait_until(born, timeout, "the hub's live 'online' on hub/status")
        st = get_retained(self.fx, self.broker, "hub/status")
        check_eq(st, b"online", "retained hub/status after start")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def http_port(self, timeout=10):
        """The port of this run's HTTP listener (from its 'http listening' log line)."""
        def port():
            self.check_alive("while waiting for its HTTP listener")
            m = re.search(r'msg="http listening".* port=(\d+)', self.log_text())
            return int(m.group(1)) if m else None
        return wait_until(port, timeout, "the hub's 'http listening' log line")

    def http(self, path, method="GET", headers=None, timeout=10):
        """One HTTP request to this run's listener: (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port(), timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def check_alive(self, when=""):
        if self.proc is not None and self.proc.poll() is not None:
            raise TestFailure(f"twinhub exited with status {self.proc.returncode} {when}")

    def stop(self, timeout=30, expect_rc=0):
        """SIGTERM; waits for the exit and checks its status."""
        check(self.alive(), "stop(): hub not running")
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure(f"twinhub did not exit within {timeout}s of SIGTERM")
        check_eq(rc, expect_rc, "twinhub exit status after SIGTERM")
        return rc

    def kill9(self):
        check(self.alive(), "kill9(): hub not running")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def sighup(self):
        check(self.alive(), "sighup(): hub not running")
        self.proc.send_signal(signal.SIGHUP)

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, needle, timeout=10, start=0):
        """Waits until the current run's log has `needle` after offset `start` (chars)."""
        def found():
            self.check_alive(f"while waiting for {needle!r} in its log")
            return needle in self.log_text()[start:]
        wait_until(found, timeout, f"{needle!r} in the hub's log")

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_hub_once(args, timeout=20, env=None, cwd=None):
    """Runs twinhub to completion (for --help, bad configs): (rc, stdout, stderr)."""
    p = subprocess.run([TWINHUB_BIN] + list(args), capture_output=True, timeout=timeout,
                       env=child_env(env), cwd=cwd, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# twinctl
# ---------------------------------------------------------------------------------------------

def twinctl(db, *args, timeout=30, env=None):
    """Runs `twinctl --db DB ARGS...`: (exit code, stdout, stderr)."""
    argv = [TWINCTL_BIN]
    if db is not None:
        argv += ["--db", db]
    argv += list(args)
    p = subprocess.run(argv, capture_output=True, timeout=timeout, env=child_env(env),
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def twinctl_json(db, *args):
    """Runs twinctl, expects exit 0 and JSON on stdout; returns the parsed value."""
    rc, out, err = twinctl(db, *args)
    check(rc == 0, f"twinctl {' '.join(args)}: exit {rc}, stderr: {err.strip()!r}")
    try:
        return parse_json_output(out)
    except ValueError as e:
        raise TestFailure(f"twinctl {' '.join(args)}: stdout is not JSON ({e}): {out[:500]!r}")


def parse_json_output(out):
    """One JSON value, or JSON lines (returned as a list)."""
    text = out.strip()
    try:
        return json.loads(text)
    except ValueError:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1:
            return [json.loads(ln) for ln in lines]
        raise


def twin_get(db, twin_id):
    """The twin document from twinctl get (None when it exits 1: no such twin)."""
    rc, out, err = twinctl(db, "get", twin_id)
    if rc == 1:
        return None
    check(rc == 0, f"twinctl get {twin_id}: exit {rc}, stderr: {err.strip()!r}")
    try:
        return json.loads(out)
    except ValueError as e:
        raise TestFailure(f"twinctl get {twin_id}: stdout is not JSON ({e}): {out[:500]!r}")


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------

def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run_case(cases, argv=None):
    """Runs the case named by argv[1] with a fresh Fixture; exit status 0 = passed."""
    argv = sys.argv if argv is None else argv
    if len(argv) != 2 or argv[1] not in cases:
        print(f"usage: {argv[0]} CASE\ncases: {' '.join(cases)}", file=sys.stderr)
        return 2
    for var, path in (("TWINHUB_BIN", TWINHUB_BIN), ("TWINCTL_BIN", TWINCTL_BIN),
                      ("MOSQUITTO", MOSQUITTO)):
        if not path or not os.access(path, os.X_OK):
            print(f"{var} does not name an executable: {path!r}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    name = argv[1]
    fx = Fixture(name)
    t0 = time.monotonic()
    ok = False
    try:
        cases[name](fx)
        ok = True
    except BaseException as e:
        fx.failed = True
        print(f"FAIL {name}: {e}" if isinstance(e, TestFailure) else f"ERROR {name}: {e!r}",
              file=sys.stderr)
        traceback.print_exc()
        fx.dump_logs()
    finally:
        fx.close()
    if ok:
        try:
            fx.check_nothing_left()
        except TestFailure as e:
            print(f"FAIL {name}: {e}", file=sys.stderr)
            ok = False
    print(f"{'PASS' if ok else 'FAIL'} {name} ({time.monotonic() - t0:.1f}s)")
    return 0 if ok else 1
