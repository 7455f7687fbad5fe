#!/usr/bin/python3
"""test_service: twinhub as a service (issue 11): the HTTP listener, /metrics checked by
promtool and scraped by a real Prometheus, /healthz and /readyz, the systemd notify protocol
and the unit file.

    /usr/bin/python3 test_service.py CASE    (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

  metrics     /metrics passes `promtool check metrics`; its counters follow what was sent: a
              rule's fired count, a model's predictions, scores and MAE/RMSE (against
              `twinctl model predict`), commands by state, replies by code, and the per-rule
              series across a SIGHUP reload (kept by name, a removed rule's gone)
  prometheus  a Prometheus server (Debian's) scrapes the hub; its query API returns the hub's
              applied-telemetry count and a labelled one (replies with code 404)
  health      /readyz is 503 (broker: false) while the broker is down and 200 once it is back;
              /healthz stays 200
  http        404, 405, the bearer token (401 without it), a listener off loopback refused
              without a token, bad requests that leave ingest undisturbed
  notify      under a test-made NOTIFY_SOCKET: STATUS=, READY=1 once subscribed, WATCHDOG=1,
              RELOADING=1 and READY=1 around SIGHUP, STOPPING=1 on SIGTERM, in that order
  stall       a real stall: another process holds the store's LMDB write lock, so a telemetry
              message waits in its handler; past http.stall /healthz is 503 (ingest: false) and
              WATCHDOG=1 stops; once the lock goes, the message is applied and both come back
  unit        `systemd-analyze verify` accepts deploy/twinhub.service without a warning
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from harness import (REPO, TWINHUB_BIN, Broker, Child, Hub, MqttClient, check, check_eq,
                     child_env, free_port, pack, run_case, run_hub_once, tail, twin_get,
                     unpack, wait_until)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TWINCTL = os.environ.get("TWINCTL_BIN", "twinctl")
MODELS = os.path.join(REPO, "tests", "data", "models")
LINEAR = os.path.join(MODELS, "linear.twm")      # 3 features, a regressor
LOGISTIC = os.path.join(MODELS, "logistic.twm")  # the same 3, a classifier: low, mid, high
UNIT = os.path.join(REPO, "deploy", "twinhub.service")


def send_telemetry(fx, b, n, tid="svc-1"):
    dev = MqttClient(fx, b, "dev")
    for i in range(1, n + 1):
        dev.publish(f"devices/{tid}/telemetry", pack({"seq": i, "hr": 60 + i}))
    return dev


def scrape(hub):
    status, headers, body = hub.http("/metrics")
    check_eq(status, 200, "GET /metrics")
    check(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
          f"/metrics content type: {headers.get('Content-Type')!r}")
    return body.decode()


def sample(text, name):
    """The value of one sample line NAME (labels included in the name) or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def promtool_check(text):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=30)
    check(p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(),
          f"promtool check metrics: rc={p.returncode}\n{p.stdout.decode()}{p.stderr.decode()}")


def close(a, b):
    return a is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


# hot fires on ask == 1, predicts with lin and cls and sends the device a command; gone never
# fires (a reload removes it); only mx-* twins, so svc-1's telemetry runs no rule
METRIC_RULES = """
models:
  lin:
    file: {lin}
    inputs: [reported.a, reported.b, reported.c]
    target: reported.y
  cls:
    file: {cls}
    inputs: [reported.a, reported.b, reported.c]
    target: reported.label
rules:
  - name: hot
    match: "mx-*"
    when: {when}
    on_fire:
      - predict: lin
      - predict: cls
      - command: {{cmd: cool, args: {{level: 1}}}}
{more}"""
GONE = """  - name: gone
    match: "mx-*"
    when: reported.never == 1
"""
IDLE = """  - name: idle
    match: "mx-*"
    when: reported.idle == 1
"""


def write_rules(fx, text):
    path = fx.path("rules.yaml")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def case_metrics(fx):
    b = Broker(fx)
    rules = write_rules(fx, METRIC_RULES.format(lin=LINEAR, cls=LOGISTIC,
                                                when="reported.ask == 1", more=GONE))
    hub = Hub(fx, b, sets={"rules.file": rules})
    dev = send_telemetry(fx, b, 5)
    dev.publish("devices/svc-1/telemetry", pack({"seq": 9, "hr": 70}))  # a gap of 3 (6..8)
    dev.publish("devices/svc-1/telemetry", b"\xc1")                     # malformed
    wait_until(lambda: sample(scrape(hub), "twinhub_telemetry_applied_total") == 6, 10,
               "6 applied in /metrics")
    text = scrape(hub)
    promtool_check(text)
    for name, want in (("twinhub_messages_received_total", 7),
                       ("twinhub_telemetry_gaps_total", 1),
                       ("twinhub_telemetry_missed_total", 3),
                       ('twinhub_messages_rejected_total{reason="malformed"}', 1),
                       ("twinhub_twins", 1),
                       ("twinhub_broker_connected", 1),
                       ("twinhub_commit_duration_seconds_count", 6)):
        check_eq(sample(text, name), want, name)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_start_time_seconds", "twinhub_store_used_bytes",
                 "twinhub_publish_latency_seconds_count", "twinhub_publisher_inflight"):
        check(sample(text, name) is not None, f"{name} missing from /metrics")
    start = sample(text, "process_start_time_seconds")
    check(abs(start - time.time()) < 120, f"process_start_time_seconds {start} is not now")
    check(sample(text, "process_resident_memory_bytes") > 1e6, "resident memory under 1 MB")
    check_eq(sample(text, 'twinhub_rule_fired_total{rule="hot"}'), 0, "hot before it fires")
    check_eq(sample(text, 'twinhub_model_predictions_total{model="lin"}'), 0,
             "lin before a prediction")
    check(sample(text, 'twinhub_model_mean_absolute_error{model="lin"}') is None,
          "no MAE before a score")
    metrics_rules(fx, b, hub, rules)
    hub.stop()


def metrics_rules(fx, b, hub, rules):
    """The per-rule, per-model, command and reply series against what this test does."""
    tid = "mx-1"
    dev = MqttClient(fx, b, "mx-dev", subscribe=[f"devices/{tid}/commands"])
    svc = MqttClient(fx, b, "mx-svc", subscribe=["twins/+/desired/set/+", "twins/+/get/+"])
    seq = [0]

    def send(**fields):
        seq[0] += 1
        dev.publish(f"devices/{tid}/telemetry", pack({"seq": seq[0], **fields}))

    def value(name):
        return sample(scrape(hub), name)

    def wait_value(name, want, what=None):
        wait_until(lambda: value(name) == want, 10, what or f"{name} == {want}")

    acked = [0]

    def ack_commands(n):
        """Waits for the device's n-th command and acks every new one 'succeeded'."""
        dev.wait_for(lambda m: len(dev.messages(f"devices/{tid}/commands")) >= n, 10,
                     f"command {n} at the device")
        for c in dev.messages(f"devices/{tid}/commands")[acked[0]:]:
            dev.publish(f"devices/{tid}/commands/ack",
                        pack({"id": unpack(c.payload)["id"], "status": "succeeded"}))
        acked[0] = n

    # two rounds: ask (hot fires, lin and cls predict, a command goes out) then the truth
    # (both scored: cls is right the first time, wrong the second)
    inputs = [(0.5, 52.0, 1.0), (-1.0, 45.0, 0.9)]
    truths, labels = [10.0, -3.0], ["mid", "high"]

    def predict(model):
        p = subprocess.run([TWINCTL, "model", "predict", model],
                           input="".join(",".join(repr(v) for v in r) + "\n" for r in inputs),
                           capture_output=True, text=True, timeout=30, env=child_env())
        check_eq(p.returncode, 0, f"twinctl model predict {model} ({p.stderr.strip()!r})")
        return p.stdout.split()
    preds = [float(v) for v in predict(LINEAR)]
    check_eq(predict(LOGISTIC), ["mid", "low"], "test setup: cls's labels")
    send(a=0.0, b=50.0, c=1.0, ask=0)
    dev.publish(f"devices/{tid}/status", b"online", retain=True)
    for i, ((a, bb, c), y, label) in enumerate(zip(inputs, truths, labels)):
        send(a=a, b=bb, c=c, ask=1)
        wait_value('twinhub_rule_fired_total{rule="hot"}', i + 1, f"hot fired {i + 1} times")
        for m in ("lin", "cls"):
            check_eq(value(f'twinhub_model_predictions_total{{model="{m}"}}'), i + 1,
                     f"{m}'s predictions")
        ack_commands(i + 1)
        send(y=y, label=label, ask=0)
        for m in ("lin", "cls"):
            wait_value(f'twinhub_model_scored_total{{model="{m}"}}', i + 1, f"{m} scored {i + 1}")
    errs = [y - p for y, p in zip(truths, preds)]
    wait_value('twinhub_commands_total{state="succeeded"}', 2, "2 commands succeeded")
    text = scrape(hub)
    mae = sum(abs(e) for e in errs) / 2
    rmse = (sum(e * e for e in errs) / 2) ** 0.5
    for name, want in (('twinhub_model_mean_absolute_error{model="lin"}', mae),
                       ('twinhub_model_root_mean_squared_error{model="lin"}', rmse),
                       ('twinhub_model_absolute_error_total{model="lin"}', 2 * mae),
                       ('twinhub_model_squared_error_total{model="lin"}', 2 * rmse ** 2)):
        check(close(sample(text, name), want), f"{name} = {sample(text, name)}, want {want}")
    check(sample(text, 'twinhub_model_accuracy_ratio{model="lin"}') is None,
          "a regressor has no accuracy")
    check_eq(sample(text, 'twinhub_model_accuracy_ratio{model="cls"}'), 0.5, "cls's accuracy")
    check_eq(sample(text, 'twinhub_model_correct_total{model="cls"}'), 1, "cls right once")
    check(sample(text, 'twinhub_model_mean_absolute_error{model="cls"}') is None,
          "a classifier has no MAE")
    for name, want in (('twinhub_commands_total{state="queued"}', 2),
                       ('twinhub_commands_total{state="sent"}', 2),
                       ('twinhub_commands_total{state="delivered"}', 0),
                       ('twinhub_commands_total{state="succeeded"}', 2),
                       ('twinhub_commands_total{state="failed"}', 0),
                       ('twinhub_commands_total{state="expired"}', 0),
                       ('twinhub_rule_fired_total{rule="gone"}', 0),
                       ("twinhub_predictions_total", 4),
                       ("twinhub_predictions_scored_total", 4)):
        check_eq(sample(text, name), want, name)

    # replies by code: accepted, a version conflict, no such twin, a bad request, accepted
    svc.publish(f"twins/{tid}/desired/set", pack({"desired": {"fan": 2}}))
    svc.publish(f"twins/{tid}/desired/set", pack({"desired": {"fan": 3}, "version": 1}))
    svc.publish("twins/mx-none/get", b"")
    svc.publish(f"twins/{tid}/desired/set", pack({"desired": 5}))
    svc.publish(f"twins/{tid}/get", b"")
    svc.wait_for(lambda m: svc.count() >= 5, 10, "5 replies")
    got = sorted((m.topic, unpack(m.payload).get("code")) for m in svc.messages()
                 if m.topic.endswith("/rejected"))
    check_eq(got, [(f"twins/{tid}/desired/set/rejected", 400),
                   (f"twins/{tid}/desired/set/rejected", 409),
                   ("twins/mx-none/get/rejected", 404)], "the rejections")
    text = scrape(hub)
    for code, want in (("200", 2), ("400", 1), ("404", 1), ("409", 1), ("413", 0), ("500", 0)):
        check_eq(sample(text, f'twinhub_replies_total{{code="{code}"}}'), want,
                 f"replies with code {code}")
    check_eq(sample(text, "twinhub_requests_rejected_total"), 3, "requests rejected")

    # a reload keeps the series of the rules and models that keep their name (hot redefined),
    # drops the removed rule's and starts the new one's at 0
    logpos = len(hub.log_text())
    write_rules(fx, METRIC_RULES.format(lin=LINEAR, cls=LOGISTIC, when="reported.ask >= 1",
                                        more=IDLE))
    hub.sighup()
    hub.wait_log("rules reloaded", 10, logpos)
    text = scrape(hub)
    promtool_check(text)
    for name, want in (('twinhub_rule_fired_total{rule="hot"}', 2),
                       ('twinhub_rule_fired_total{rule="idle"}', 0),
                       ('twinhub_model_predictions_total{model="lin"}', 2),
                       ('twinhub_model_scored_total{model="lin"}', 2)):
        check_eq(sample(text, name), want, f"{name} after the reload")
    check(sample(text, 'twinhub_rule_fired_total{rule="gone"}') is None,
          "a removed rule's series after the reload")
    check(close(sample(text, 'twinhub_model_mean_absolute_error{model="lin"}'), mae),
          "lin's MAE after the reload")
    send(a=2.0, ask=1)
    wait_value('twinhub_rule_fired_total{rule="hot"}', 3, "hot fired again after the reload")
    text = scrape(hub)
    check_eq(sample(text, 'twinhub_model_predictions_total{model="lin"}'), 3, "lin's predictions")
    check_eq(sample(text, 'twinhub_commands_total{state="queued"}'), 3, "commands queued")
    promtool_check(text)


def case_prometheus(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    send_telemetry(fx, b, 4)
    svc = MqttClient(fx, b, "svc", subscribe=["twins/+/get/+"])
    svc.publish("twins/svc-none/get", b"")  # a labelled series: replies_total{code="404"}
    svc.wait_for(lambda m: m.topic == "twins/svc-none/get/rejected", 10, "the 404 reply")
    port = free_port()
    conf = fx.path("prometheus.yml")
    with open(conf, "w") as f:
        f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: twinhub\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{hub.http_port()}']}}]\n")
    prom = Child(fx, [PROMETHEUS, f"--config.file={conf}",
                      f"--storage.tsdb.path={fx.path('tsdb')}",
                      f"--web.listen-address=127.0.0.1:{port}"], "prometheus")
    proc, log = prom.proc, prom.log

    def query(expr='twinhub_telemetry_applied_total{job="twinhub"}'):
        check(proc.poll() is None, f"prometheus exited:\n{tail(log)}")
        q = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{q}",
                                        timeout=5) as r:
                res = json.load(r)
        except OSError:
            return None
        v = res.get("data", {}).get("result", [])
        return float(v[0]["value"][1]) if v else None
    got = wait_until(lambda: query() == 4 and query(), 60,
                     "Prometheus to scrape 4 applied messages from the hub", interval=0.5)
    check_eq(got, 4.0, "twinhub_telemetry_applied_total through Prometheus' query API")
    check_eq(query('twinhub_replies_total{job="twinhub",code="404"}'), 1.0,
             "twinhub_replies_total{code=\"404\"} through Prometheus' query API")
    hub.stop()


def case_health(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    status, _, body = hub.http("/readyz")
    check_eq((status, json.loads(body)["status"]), (200, "ok"), "/readyz with the broker up")
    b.cleanup()  # the broker goes away

    def ready():
        s, _, bd = hub.http("/readyz")
        return (s, json.loads(bd)["checks"]["broker"])
    wait_until(lambda: ready() == (503, False), 20, "/readyz 503 (broker: false)")
    status, _, body = hub.http("/healthz")
    check_eq((status, json.loads(body)["status"]), (200, "ok"), "/healthz without a broker")
    b.start(b.port)
    wait_until(lambda: ready() == (200, True), 60, "/readyz 200 again after the broker is back")
    hub.stop()


def case_http(fx):
    b = Broker(fx)
    token = "s3cret-token-0123456789"
    tf = fx.path("token")
    with open(tf, "w") as f:
        f.write(token + "\n")
    hub = Hub(fx, b, sets={"http.token_file": tf})
    auth = {"Authorization": f"Bearer {token}"}
    check_eq(hub.http("/metrics")[0], 401, "/metrics without the token")
    check_eq(hub.http("/metrics", headers={"Authorization": "Bearer wrong-token-0123456"})[0],
             401, "/metrics with a wrong token")
    check_eq(hub.http("/metrics", headers=auth)[0], 200, "/metrics with the token")
    check_eq(hub.http("/nothing", headers=auth)[0], 404, "an unknown path")
    check_eq(hub.http("/metrics", method="POST", headers=auth)[0], 405, "POST /metrics")
    check_eq(hub.http("/healthz", method="HEAD", headers=auth)[0], 200, "HEAD /healthz")

    # garbage, a header flood and a slow client: ingest goes on meanwhile
    port = hub.http_port()
    junk = [b"\x00\xff garbage\r\n\r\n", b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 40000 +
            b"\r\n\r\n", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nab"]
    socks = []
    for j in junk:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(j)
        except OSError:
            pass
        socks.append(s)
    # the unauthorized request with a body it never sends is answered at once, body unread
    socks[2].settimeout(5)
    try:
        head = socks[2].recv(64)
    except OSError as e:
        head = repr(e).encode()
    check(head.startswith(b"HTTP/1.1 401"), f"a request without the token and a body: {head!r}")
    send_telemetry(fx, b, 3, "svc-http")
    wait_until(lambda: b'"seq":3' in subprocess.run(
        [os.environ.get("TWINCTL_BIN", "twinctl"), "--db", hub.db, "get", "svc-http"],
        capture_output=True, env=child_env()).stdout, 10, "telemetry applied during bad requests")
    for s in socks:
        s.close()
    check_eq(hub.http("/healthz", headers=auth)[0], 200, "/healthz after the bad requests")
    hub.stop()

    # off loopback without a token: refused at start, with the reason
    rc, _, err = run_hub_once(["--broker", b.url, "--db", fx.path("db2"),
                               "--set", "http.listen=0.0.0.0:0"])
    check(rc != 0 and "not a loopback address" in err and "http.token_file" in err,
          f"a listener on 0.0.0.0 without a token: rc={rc} stderr={err[-500:]!r}")
    rc, _, err = run_hub_once(["--broker", b.url, "--db", fx.path("db4"),
                               "--set", "http.listen=0.0.0.0:0", "--set", f"http.token_file={tf}"])
    check(rc != 0 and "http.tls" in err,
          f"a listener on 0.0.0.0 with a token but no TLS: rc={rc} stderr={err[-500:]!r}")
    rc, _, err = run_hub_once(["--broker", b.url, "--db", fx.path("db3"),
                               "--set", "http.listen=localhost"])
    check(rc == 2 and "http.listen" in err, f"http.listen without a port: rc={rc} {err!r}")


def case_notify(fx):
    b = Broker(fx)
    path = fx.path("notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    msgs = []

    def drain():
        while True:
            try:
                msgs.extend(sock.recv(4096).decode().split("\n"))
            except socket.timeout:
                return

    def wait_msg(pred, what, timeout=15):
        def seen():
            drain()
            return any(pred(m) for m in msgs)
        wait_until(seen, timeout, what)
    hub = Hub(fx, b, start=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    hub.start()
    wait_msg(lambda m: m == "READY=1", "READY=1")
    wait_msg(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 (WatchdogSec=2s)")
    hub.sighup()
    wait_msg(lambda m: m == "RELOADING=1", "RELOADING=1 after SIGHUP")
    wait_until(lambda: drain() or msgs.count("READY=1") >= 2, 10, "READY=1 after the reload")
    hub.stop()
    drain()
    sock.close()
    seq = [m for m in msgs if m and m != "WATCHDOG=1"]
    order = [m for m in seq if not m.startswith("STATUS=")]
    check_eq(order, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
             f"notify messages in order (all: {seq})")
    check(seq[0].startswith("STATUS=connecting"), f"first message: {seq[0]!r}")
    check(any(m.startswith("STATUS=serving: connected to") for m in seq), f"STATUS lines: {seq}")
    check(any(m.startswith("STATUS=stopping") for m in seq), f"STATUS lines: {seq}")
    i_ready = seq.index("READY=1")
    check(seq[i_ready - 1].startswith("STATUS=serving"), f"READY=1 before subscribed: {seq}")


def case_stall(fx):
    import lmdb  # Debian's python3-lmdb: the same LMDB, from another process than the hub's
    b = Broker(fx)
    path = fx.path("notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    seen = []  # (monotonic time, message)

    def drain():
        while True:
            try:
                data = sock.recv(4096).decode()
            except socket.timeout:
                return
            seen.extend((time.monotonic(), m) for m in data.split("\n") if m)

    def watchdogs_since(t):
        drain()
        return sum(1 for at, m in seen if m == "WATCHDOG=1" and at >= t)

    def health():
        s, _, body = hub.http("/healthz")
        return s, json.loads(body)["checks"]
    hub = Hub(fx, b, sets={"http.stall": "1s"},
              env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    dev = MqttClient(fx, b, "dev")
    dev.publish("devices/st-1/telemetry", pack({"seq": 1, "n": 1}))
    wait_until(lambda: (twin_get(hub.db, "st-1") or {}).get("seq") == 1, 10, "seq 1 applied")
    drain()
    t0 = time.monotonic()
    wait_until(lambda: watchdogs_since(t0) >= 2, 10, "WATCHDOG=1 while ingest is well")
    check_eq(health()[0], 200, "/healthz before the stall")

    env = lmdb.open(hub.db, max_dbs=16, map_size=8 << 30)
    txn = env.begin(write=True)  # the store's write lock, held: the next commit waits
    try:
        dev.publish("devices/st-1/telemetry", pack({"seq": 2, "n": 2}), qos=1, timeout=5)
        wait_until(lambda: health() == (503, {**health()[1], "ingest": False}), 10,
                   "/healthz 503 with ingest: false")
        time.sleep(0.6)  # a WATCHDOG=1 sent just before the stall was seen has arrived
        drain()  # and is stamped before t1 (a message is stamped when it is read)
        t1 = time.monotonic()
        time.sleep(2.0)
        check_eq(watchdogs_since(t1), 0, "WATCHDOG=1 messages while ingest is stuck (2 s)")
        check_eq(twin_get(hub.db, "st-1")["seq"], 1, "the twin while its commit waits")
    finally:
        txn.abort()
        env.close()
    wait_until(lambda: twin_get(hub.db, "st-1")["seq"] == 2, 10, "seq 2 applied after the stall")
    wait_until(lambda: health()[0] == 200, 10, "/healthz 200 after the stall")
    drain()
    t2 = time.monotonic()
    wait_until(lambda: watchdogs_since(t2) >= 1, 10, "WATCHDOG=1 again after the stall")
    hub.stop()
    sock.close()


def case_unit(fx):
    sa = shutil.which("systemd-analyze")
    check(sa, "systemd-analyze is not installed")
    # verify wants ExecStart to exist: the built binary stands in for /usr/bin/twinhub
    with open(UNIT) as f:
        text = f.read()
    check("/usr/bin/twinhub " in text, "ExecStart is not /usr/bin/twinhub")
    unit = fx.path("twinhub.service")
    with open(unit, "w") as f:
        f.write(text.replace("/usr/bin/twinhub ", TWINHUB_BIN + " "))
    p = subprocess.run([sa, "verify", unit], capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    check(p.returncode == 0 and not out.strip(), f"systemd-analyze verify: rc={p.returncode}\n{out}")
    for need in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "User=twinhub",
                 "StateDirectory=twinhub", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "PrivateTmp=yes"):
        check(need in text, f"{need} missing from deploy/twinhub.service")


CASES = {"metrics": case_metrics, "prometheus": case_prometheus, "health": case_health,
         "http": case_http, "notify": case_notify, "stall": case_stall, "unit": case_unit}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
