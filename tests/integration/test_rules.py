#!/usr/bin/python3
"""test_rules: the rules engine in a running hub, over MQTT against a real Mosquitto.

    /usr/bin/python3 test_rules.py CASE      (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

A device crosses a threshold and the hub answers in one commit: a command at the device, an
event on the twin's topic, desired state changed; a restart in the middle of a `for` still fires
on time; an absence rule fires with no message arriving; a reload keeps the state of unchanged
rules, and a bad reload keeps the old rules running and says why on hub/errors; a periodic rule
(every:) runs for a twin that sent one message, every period, across a restart.
"""

import json
import os
import subprocess
import sys
import time

from harness import (Broker, Checks, Hub, MqttClient, check, check_eq, now_ms, pack, run_case,
                     twin_get, twinctl, unpack, wait_until)

RULES = """
rules:
  - name: tachycardia
    match: "ecg-*"
    when: reported.heart_rate > 120 and reported.spo2 < 94
    for: {for_}
    cooldown: 5s
    on_fire:
      - command: {{cmd: alert, args: {{level: high}}}}
      - desired: {{sample_hz: 250}}
      - event: {{severity: high}}
    on_resolve:
      - desired: {{sample_hz: 50}}
  - name: alarm_follower
    when: desired.sample_hz == 250
    on_fire: [{{event: {{note: follows}}}}]
  - name: lead_off
    match: "ecg-*"
    when: age(reported.ecg) > 1500ms
    on_fire: [{{event: {{severity: warning}}}}]
"""


def write_rules(fx, text, name="rules.yaml"):
    path = fx.path(name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


class Device:
    def __init__(self, fx, broker, dev_id):
        self.id = dev_id
        self.seq = 0
        self.c = MqttClient(fx, broker, dev_id, subscribe=[f"devices/{dev_id}/commands",
                                                           f"devices/{dev_id}/desired"])

    def send(self, **fields):
        self.seq += 1
        body = {"seq": self.seq}
        body.update(fields)
        self.c.publish(f"devices/{self.id}/telemetry", pack(body))

    def online(self):
        self.c.publish(f"devices/{self.id}/status", b"online", retain=True)

    def commands(self, start=0):
        return [unpack(m.payload) for m in self.c.messages(f"devices/{self.id}/commands", start)]


def events(watch, dev_id, rule=None, start=0):
    out = []
    for m in watch.messages(f"twins/{dev_id}/events", start):
        e = unpack(m.payload)
        if e.get("type") == "rule" and (rule is None or e.get("rule") == rule):
            out.append(e)
    return out


def wait_event(watch, dev_id, rule, state, timeout, start=0):
    def seen():
        return any(e["state"] == state for e in events(watch, dev_id, rule, start))
    wait_until(seen, timeout, f"{rule} {state} on twins/{dev_id}/events")
    return [e for e in events(watch, dev_id, rule, start) if e["state"] == state][-1]


def rule_state(db, dev_id, rule, rules_file=None):
    """The record of `rule` for the twin from `twinctl rules state` (None: no record); with
    rules_file, twinctl judges whether it is current against that file."""
    env = {"TWINHUB_RULES_FILE": rules_file} if rules_file else None
    rc, out, err = twinctl(db, "rules", "state", dev_id, env=env)
    check_eq(rc, 0, f"twinctl rules state {dev_id} (stderr {err.strip()!r})")
    st = json.loads(out)
    for r in st["rules"]:
        if r["rule"] == rule:
            return r
    return None


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def case_fire(fx):
    """Threshold crossed -> pending, then firing: command at the device, event with the values
    that decided it, desired changed (and a rule reading desired fires in the same commit);
    back below -> resolved and on_resolve's desired."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="1s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events", "twins/+/state"])
    dev = Device(fx, b, "ecg-fire")
    dev.online()
    c = Checks()
    dev.send(heart_rate=80, spo2=97, ecg=[1, 2])
    dev.send(heart_rate=130, spo2=92, ecg=[1, 2])
    t_cross = time.monotonic()
    p = wait_event(w, dev.id, "tachycardia", "pending", 10)
    c.eq(p["values"], {"reported.heart_rate": 130, "reported.spo2": 92}, "pending values")
    f = wait_event(w, dev.id, "tachycardia", "firing", 10)
    c.check(time.monotonic() - t_cross >= 0.9, "fired before its `for` of 1s")
    c.eq(f.get("severity"), "high", "the event action's field")
    c.eq(f.get("from"), "pending", "from")
    cmd = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/commands", 10,
                         "the alert command at the device")
    body = unpack(cmd.payload)
    c.eq((body.get("cmd"), body.get("args")), ("alert", {"level": "high"}), "command")
    doc = twin_get(hub.db, dev.id)
    c.eq(doc["desired"].get("sample_hz"), 250, "desired set by on_fire")
    c.eq(doc.get("delta", {}).get("sample_hz"), 250, "delta")
    fol = wait_event(w, dev.id, "alarm_follower", "firing", 5)
    c.eq(fol["values"], {"desired.sample_hz": 250}, "follower read what the leader wrote")
    c.eq(fol["ts"], f["ts"], "the follower fired in the same commit as the leader")
    desired = dev.c.wait_for(lambda m: m.topic == f"devices/{dev.id}/desired" and m.payload and
                             unpack(m.payload)["delta"].get("sample_hz") == 250, 10,
                             "the new delta at the device")
    c.check(desired is not None, "delta")
    st = rule_state(hub.db, dev.id, "tachycardia", rules)
    c.eq(st and st["state"], "firing", "twinctl rules state")
    c.eq(st and st.get("current"), True, "record current against the configured file")
    # Still high: no second firing, no second command.
    n_cmds = len(dev.commands())
    dev.send(heart_rate=135, spo2=91)
    time.sleep(0.5)
    c.eq(len([e for e in events(w, dev.id, "tachycardia") if e["state"] == "firing"]), 1,
         "firing events while it stays high")
    c.eq(len(dev.commands()), n_cmds, "commands while it stays high")
    # Back to normal: resolved, desired back to 50.
    dev.send(heart_rate=90, spo2=97)
    r = wait_event(w, dev.id, "tachycardia", "resolved", 10)
    c.eq(r["values"].get("reported.heart_rate"), 90, "resolved values")
    wait_until(lambda: twin_get(hub.db, dev.id)["desired"].get("sample_hz") == 50, 10,
               "desired back to 50 by on_resolve")
    wait_event(w, dev.id, "alarm_follower", "resolved", 5)
    # A device the match does not admit never fires.
    other = Device(fx, b, "pump-1")
    other.send(heart_rate=150, spo2=80)
    time.sleep(1.5)
    c.eq(events(w, other.id, "tachycardia"), [], "events for a twin outside match")
    c.done("fire checks")
    hub.stop()


def case_restart(fx):
    """A hub restart during `for` still fires on time, from the stored deadline, with no new
    message; a firing rule is not fired again after a restart."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="4s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    dev = Device(fx, b, "ecg-restart")
    c = Checks()
    dev.send(heart_rate=130, spo2=92, ecg=[1])
    p = wait_event(w, dev.id, "tachycardia", "pending", 10)
    hub.kill9()
    time.sleep(1.0)
    hub.start()
    f = wait_event(w, dev.id, "tachycardia", "firing", 15)
    late = f["ts"] - (p["ts"] + 4000)
    c.check(0 <= late < 1500, f"fired {late} ms after its deadline (pending at {p['ts']})")
    mark = w.count()
    hub.stop()
    hub.start()
    time.sleep(2.0)
    c.eq([e for e in events(w, dev.id, "tachycardia", mark) if e["state"] == "firing"], [],
         "firing again after a restart")
    c.eq(rule_state(hub.db, dev.id, "tachycardia")["state"], "firing", "state after restart")
    c.done("restart checks")
    hub.stop()


def case_absence(fx):
    """age(reported.ecg) > 1500ms fires for a device that went silent, with nothing arriving,
    and resolves with its next strip."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="1s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    dev = Device(fx, b, "ecg-silent")
    c = Checks()
    t0 = now_ms()
    dev.send(heart_rate=70, spo2=98, ecg=[1, 2, 3], ts=t0)
    f = wait_event(w, dev.id, "lead_off", "firing", 10)
    c.check(f["ts"] - t0 >= 1500, f"fired {f['ts'] - t0} ms after the last strip")
    c.check(f["ts"] - t0 < 3000, f"fired late: {f['ts'] - t0} ms after the last strip")
    c.check(f["values"].get("age(reported.ecg)", 0) > 1500, f"values {f['values']}")
    c.eq(f.get("severity"), "warning", "severity")
    dev.send(heart_rate=70, spo2=98, ecg=[4])
    wait_event(w, dev.id, "lead_off", "resolved", 10)
    c.done("absence checks")
    hub.stop()


def case_reload(fx):
    """A reload (file changed on disk, and SIGHUP) keeps the state of every unchanged rule: a
    firing rule neither fires again nor resolves; a changed rule starts over; a removed rule's
    state is cleared."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="1s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events"])
    dev = Device(fx, b, "ecg-reload")
    c = Checks()
    dev.send(heart_rate=130, spo2=92, ecg=[1])
    wait_event(w, dev.id, "tachycardia", "firing", 10)
    wait_event(w, dev.id, "alarm_follower", "firing", 10)
    mark, logpos = w.count(), len(hub.log_text())
    # Only the actions of tachycardia change (same definition); alarm_follower is removed.
    text = RULES.format(for_="1s").replace("level: high", "level: urgent")
    text = text.replace("  - name: alarm_follower\n    when: desired.sample_hz == 250\n"
                        "    on_fire: [{event: {note: follows}}]\n", "")
    check("alarm_follower" not in text, "test setup: follower not removed")
    write_rules(fx, text)
    hub.wait_log("rules reloaded", 10, logpos)
    c.eq(rule_state(hub.db, dev.id, "tachycardia")["state"], "firing",
         "tachycardia after the reload")
    c.eq(rule_state(hub.db, dev.id, "alarm_follower"), None, "the removed rule's state")
    dev.send(heart_rate=132, spo2=92)
    time.sleep(1.0)
    c.eq([e["state"] for e in events(w, dev.id, "tachycardia", mark)], [],
         "tachycardia events after a reload that kept it")
    # The condition changes: the rule starts over (pending again, then firing).
    logpos = len(hub.log_text())
    write_rules(fx, text.replace("reported.heart_rate > 120", "reported.heart_rate > 125"))
    hub.sighup()
    hub.wait_log("rules reloaded", 10, logpos)
    dev.send(heart_rate=133, spo2=92)
    wait_event(w, dev.id, "tachycardia", "pending", 10, mark)
    wait_event(w, dev.id, "tachycardia", "firing", 10, mark)
    c.done("reload checks")
    hub.stop()


def case_bad_reload(fx):
    """A bad file keeps the old rules running, logs every error and reports on hub/errors."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="1s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events", "hub/errors"])
    c = Checks()
    logpos = len(hub.log_text())
    write_rules(fx, "rules:\n  - name: x\n    when: avgg(reported.hr, 5s) > 1\n"
                    "    cooldwn: 5m\n")
    hub.sighup()
    hub.wait_log("rules reload failed", 10, logpos)
    log = hub.log_text()[logpos:]
    c.check("unknown function 'avgg'; did you mean 'avg'?" in log, "the expression error logged")
    c.check("unknown key 'cooldwn'; did you mean 'cooldown'?" in log, "the key error logged")
    m = w.wait_for(lambda m: m.topic == "hub/errors", 10, "a report on hub/errors")
    rep = unpack(m.payload)
    c.eq(rep.get("kind"), "rules", "report kind")
    c.eq(rep.get("topic"), rules, "report names the file")
    c.check("rules.yaml:" in rep.get("reason", ""), f"reason has file:line:col: {rep!r}")
    # The old rules still run.
    dev = Device(fx, b, "ecg-after-bad")
    dev.send(heart_rate=130, spo2=92, ecg=[1])
    wait_event(w, dev.id, "tachycardia", "firing", 10)
    # A hub does not start with a bad file.
    hub.stop()
    hub.proc = None
    bad = Hub(fx, b, sets={"rules.file": rules}, db=fx.path("db2"), start=False)
    bad.start(wait=False)
    rc = bad.proc.wait(20)
    c.check(rc != 0, "a hub started with a bad rules file exited 0")
    c.done("bad reload checks")


def case_desired_set(fx):
    """A service's desired/set is a committed change too: the rules reading desired run in its
    transaction, and the reply names the version with their changes."""
    b = Broker(fx)
    rules = write_rules(fx, RULES.format(for_="1s"))
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events", "twins/+/desired/set/+"])
    dev = Device(fx, b, "ecg-svc")
    dev.send(heart_rate=70, spo2=98, ecg=[1])
    c = Checks()
    w.publish(f"twins/{dev.id}/desired/set", pack({"desired": {"sample_hz": 250}, "token": "t1"}))
    m = w.wait_for(lambda m: m.topic == f"twins/{dev.id}/desired/set/accepted", 10, "the reply")
    reply = unpack(m.payload)
    f = wait_event(w, dev.id, "alarm_follower", "firing", 10)
    c.eq(f["values"], {"desired.sample_hz": 250}, "follower values")
    doc = twin_get(hub.db, dev.id)
    c.eq(reply.get("version"), doc["version"], "reply version is the committed one")
    c.done("desired/set checks")
    hub.stop()


# A block list: in a [flow, list] the comma inside avg(x, 60s) would end the item.
FORECAST_INPUTS = """
      - reported.heart_rate
      - avg(reported.heart_rate, 60s)
      - min(reported.heart_rate, 60s)
      - max(reported.heart_rate, 60s)
      - stddev(reported.heart_rate, 60s)
      - delta(reported.heart_rate, 60s)
      - reported.spo2
      - avg(reported.spo2, 60s)"""


def case_predict(fx):
    """The predict action runs the demo's SVR in the commit: predicted.hr_forecast in the twin,
    twins/{id}/predictions, a rule on predicted.* firing in the same commit; the value equals
    `twinctl model predict` on the same features (the model runtime's own parity is
    tests/unit/models)."""
    model = os.path.join(os.environ["TWINHUB_REPO"], "deploy/models/hr_forecast.twm")
    rules = write_rules(fx, f"""
models:
  hr_forecast:
    file: {model}
    inputs: {FORECAST_INPUTS}
rules:
  - name: tachy
    when: reported.heart_rate > 120
    on_fire: [{{predict: hr_forecast}}]
  - name: forecast_high
    when: predicted.hr_forecast.value > 0
    on_fire: [{{event: {{severity: high}}}}]
""")
    b = Broker(fx)
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/events", "twins/+/predictions"])
    dev = Device(fx, b, "ecg-pred")
    c = Checks()
    t = now_ms() - 5000
    sent = []
    for i, (hr, spo2) in enumerate([(80, 97.5), (84, 97.0), (90, 96.5), (101, 96.0), (131, 95.0)]):
        ts = t + 1000 * i
        sent.append((hr, spo2))
        dev.send(heart_rate=hr, spo2=spo2, ts=ts)
    m = w.wait_for(lambda m: m.topic == f"twins/{dev.id}/predictions", 10, "a prediction")
    pred = unpack(m.payload)
    c.eq(pred.get("model"), "hr_forecast", "model")
    c.check(str(pred.get("model_version", "")).startswith("fnv1a64:"), f"model_version {pred!r}")
    doc = twin_get(hub.db, dev.id)
    stored = doc.get("predicted", {}).get("hr_forecast", {})
    c.eq(stored.get("value"), pred.get("value"), "predicted.hr_forecast.value in the twin")
    c.eq(stored.get("twin_version"), pred.get("twin_version"), "twin_version")
    c.check(doc["version"] > pred["twin_version"], "the prediction is a later version")
    f = wait_event(w, dev.id, "forecast_high", "firing", 10)
    tachy = wait_event(w, dev.id, "tachy", "firing", 10)
    c.eq(f["ts"], tachy["ts"], "the rule on predicted.* fired in the same commit")
    # The same features by hand, through twinctl model predict.
    hrs = [h for h, _ in sent]
    sps = [s for _, s in sent]
    mean = sum(hrs) / len(hrs)
    sd = (sum((h - mean) ** 2 for h in hrs) / len(hrs)) ** 0.5
    row = [hrs[-1], mean, min(hrs), max(hrs), sd, hrs[-1] - hrs[0], sps[-1], sum(sps) / len(sps)]
    p = subprocess.run([os.environ["TWINCTL_BIN"], "model", "predict", model],
                       input=",".join(repr(float(v)) for v in row) + "\n",
                       capture_output=True, text=True, timeout=30)
    c.eq(p.returncode, 0, f"twinctl model predict ({p.stderr.strip()!r})")
    want = float(p.stdout.strip())
    c.check(abs(pred["value"] - want) <= 1e-9 * max(1.0, abs(want)),
            f"hub predicted {pred['value']!r}, twinctl {want!r}")
    c.done("predict checks")
    hub.stop()


def export_models(fx):
    """Trains the learn case's two models with scikit-learn: a linear regressor fitted to
    y = 2x (the devices' truth is y = 3x + 5) and a classifier of x > 0 (the truth: x > 1)."""
    sys.path.insert(0, os.path.join(os.environ["TWINHUB_REPO"], "twins", "models"))
    import export
    import numpy as np
    from sklearn.linear_model import LinearRegression, LogisticRegression
    X = np.arange(-5.0, 6.0).reshape(-1, 1)
    lin = LinearRegression().fit(X, 2.0 * X[:, 0])
    cls = LogisticRegression().fit(X, np.where(X[:, 0] > 0, "pos", "neg"))
    export.export(lin, fx.path("lin.twm"))
    export.export(cls, fx.path("cls.twm"))
    return [float(lin.coef_[0]), float(lin.intercept_)], cls


LEARN_RULES = """
models:
  lin:
    file: lin.twm
    inputs: [reported.x]
    learn: {{target: reported.y, rate: {rate}}}
  cls:
    file: cls.twm
    inputs: [reported.x]
    target: reported.label
rules:
  - name: ask
    when: reported.ask == 1
    on_fire: [{{predict: lin}}, {{predict: cls}}]
"""


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def case_learn(fx):
    """Online learning and error tracking in a running hub: a device asks for a prediction
    ({x, ask: 1}), then reports the truth ({y, label}); the hub scores each prediction, takes
    one least-mean-squares step on the twin's own weights, and the next prediction uses them.
    The hub's predictions, MAE, RMSE and accuracy equal a simulation of the same steps in
    Python; the weights survive a restart; a changed definition starts over from the file;
    twinctl stats sums the scores per model."""
    theta0, cls = export_models(fx)
    rate = 0.1
    rules = write_rules(fx, LEARN_RULES.format(rate=rate))
    b = Broker(fx)
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/predictions"])
    dev = Device(fx, b, "lab-learn")
    c = Checks()

    def truth(x):
        return 3.0 * x + 5.0, "pos" if x > 1 else "neg"

    def predictions(model, start=0):
        out = []
        for m in w.messages(f"twins/{dev.id}/predictions", start):
            p = unpack(m.payload)
            if p.get("model") == model:
                out.append(p)
        return out

    def ask(x, start=0, n=1):
        dev.send(x=x, ask=1)
        w.wait_for(lambda m: len(predictions("lin", start)) >= n and
                   len(predictions("cls", start)) >= n, 10, f"prediction {n}")

    xs = [-2.0 + 0.5 * ((7 * i) % 9) for i in range(24)]
    theta = list(theta0)
    want, errs, right = [], [], 0
    for i, x in enumerate(xs):
        ask(x, n=i + 1)
        y, label = truth(x)
        dev.send(y=y, label=label, ask=0)
        y_hat = theta[0] * x + theta[1]
        want.append(y_hat)
        errs.append(y - y_hat)
        theta = [theta[0] + rate * (y - y_hat) * x, theta[1] + rate * (y - y_hat)]
        right += cls.predict([[x]])[0] == label
    got = [p["value"] for p in predictions("lin")]
    c.check(len(got) == len(want) and all(close(a, b) for a, b in zip(got, want)),
            f"the hub's predictions follow the LMS steps:\n got {got}\nwant {want}")
    first, last = sum(abs(e) for e in errs[:4]), sum(abs(e) for e in errs[-4:])
    c.check(last < first / 4, f"learning: |error| of the first 4 {first}, of the last 4 {last}")

    def scored_all():
        doc = twin_get(hub.db, dev.id)
        p = doc.get("predicted", {})
        return (p.get("lin", {}).get("scored") == len(xs) and
                p.get("cls", {}).get("scored") == len(xs))
    wait_until(scored_all, 10, "every prediction scored")
    pred = twin_get(hub.db, dev.id)["predicted"]
    mae = sum(abs(e) for e in errs) / len(errs)
    rmse = (sum(e * e for e in errs) / len(errs)) ** 0.5
    c.check(close(pred["lin"]["mae"], mae), f"mae {pred['lin'].get('mae')} want {mae}")
    c.check(close(pred["lin"]["rmse"], rmse), f"rmse {pred['lin'].get('rmse')} want {rmse}")
    c.eq(pred["lin"].get("learned"), len(xs), "learning steps in predicted.lin")
    c.check(close(pred["cls"]["accuracy"], right / len(xs)),
            f"accuracy {pred['cls'].get('accuracy')} want {right}/{len(xs)}")
    c.check(0 < right < len(xs), f"test setup: the classifier is right {right} times")

    # The twin's weights are in the store: a restart predicts with them.
    hub.stop()
    hub.start()
    mark = w.count()
    ask(1.5, mark)
    c.check(close(predictions("lin", mark)[0]["value"], theta[0] * 1.5 + theta[1]),
            f"after a restart: {predictions('lin', mark)[0]['value']} want "
            f"{theta[0] * 1.5 + theta[1]} (learned weights {theta})")
    rc, out, err = twinctl(hub.db, "stats")
    c.eq(rc, 0, f"twinctl stats ({err.strip()!r})")
    models = json.loads(out).get("models", {})
    lin, cl = models.get("lin", {}), models.get("cls", {})
    c.eq((lin.get("twins"), lin.get("scored"), lin.get("learned"), lin.get("pending")),
         (1, len(xs), len(xs), 1), f"twinctl stats lin {lin}")
    c.check(close(lin.get("mae", -1), mae), f"twinctl stats lin mae {lin}")
    c.check(close(cl.get("accuracy", -1), right / len(xs)), f"twinctl stats cls {cl}")

    # Another rate is another definition: the twin starts over from the file's weights.
    logpos = len(hub.log_text())
    write_rules(fx, LEARN_RULES.format(rate=rate / 2))
    hub.wait_log("rules reloaded", 10, logpos)
    dev.send(y=9.5, ask=0)
    mark = w.count()
    ask(1.5, mark)
    c.check(close(predictions("lin", mark)[0]["value"], theta0[0] * 1.5 + theta0[1]),
            f"after a redefinition: {predictions('lin', mark)[0]['value']} want the file's "
            f"{theta0[0] * 1.5 + theta0[1]}")
    doc = twin_get(hub.db, dev.id)
    c.eq(doc["predicted"]["lin"].get("scored"), 0, "the score starts over too")
    c.done("learn checks")
    hub.stop()


EVERY_RULES = """
models:
  lin:
    file: lin.twm
    inputs: [reported.heart_rate]
rules:
  - name: refresh
    match: "ecg-*"
    every: 1s
    on_fire: [{predict: lin}, {event: {kind: refresh}}]
"""


def case_every(fx):
    """A periodic rule (every: 1s, no when: a schedule) runs for a twin that sent ONE message:
    a prediction and an event every second, driven by the hub's clock, at first + k seconds;
    the next run is committed in the store, so after a kill -9 and a restart it goes on (one
    run for the time it was down, then the same series); a twin outside its match gets none."""
    theta, _ = export_models(fx)
    rules = write_rules(fx, EVERY_RULES)
    b = Broker(fx)
    hub = Hub(fx, b, sets={"rules.file": rules})
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/predictions", "twins/+/events"])
    dev = Device(fx, b, "ecg-every")
    other = Device(fx, b, "pump-every")
    c = Checks()

    def runs(start=0):
        return [unpack(m.payload) for m in w.messages(f"twins/{dev.id}/predictions", start)]

    dev.send(heart_rate=72)  # the only message it ever sends
    other.send(heart_rate=72)
    w.wait_for(lambda m: len(runs()) >= 5, 15, "five periodic predictions")
    first = runs()
    t0 = first[0]["ts"]
    c.eq({p["model"] for p in first}, {"lin"}, "models predicted")
    c.check(all(close(p["value"], theta[0] * 72 + theta[1]) for p in first),
            f"predictions of the one message: {[p['value'] for p in first]}")
    offs = [p["ts"] - t0 for p in first[:5]]
    c.check(all(k * 1000 <= o < k * 1000 + 700 for k, o in enumerate(offs)),
            f"runs not at first + k s: offsets {offs}")
    ev = [e for e in (unpack(m.payload) for m in w.messages(f"twins/{dev.id}/events"))
          if e.get("rule") == "refresh"]
    c.check(len(ev) >= 4, f"{len(ev)} periodic events")
    c.eq({(e.get("state"), e.get("from"), e.get("kind")) for e in ev},
         {("periodic", "inactive", "refresh")}, "periodic events")
    doc = twin_get(hub.db, dev.id)
    c.eq(doc["predicted"]["lin"]["ts"], runs()[-1]["ts"], "predicted.lin.ts is the latest run")
    c.check(doc["seq"] == 1, f"test setup: the twin got one message (seq {doc['seq']})")
    st = rule_state(hub.db, dev.id, "refresh", rules)
    c.eq((st and st["state"], st and st.get("current")), ("inactive", True),
         "a schedule's record: inactive, current")
    c.check(st and st["wake"] and st["wake"] > runs()[-1]["ts"], f"its next run stored: {st}")
    c.eq(w.messages(f"twins/{other.id}/predictions"), [], "predictions outside match")
    info = [ln for ln in hub.log_text().splitlines()
            if 'rule=refresh' in ln and 'level=info' in ln]
    c.eq(info, [], "periodic runs in the info log")

    # kill -9, down for ~2.5 periods, restart: one run at once, then the same series
    hub.kill9()
    down = now_ms()
    time.sleep(2.5)
    mark = w.count()
    hub.start()
    w.wait_for(lambda m: len(runs(mark)) >= 4, 15, "periodic predictions after the restart")
    after = runs(mark)
    c.check(after[0]["ts"] - down < 2500 + 3000, f"first run after the restart at "
            f"{after[0]['ts'] - down} ms after the kill")
    offs = [(p["ts"] - t0) % 1000 for p in after[1:4]]
    c.check(all(o < 700 for o in offs), f"after the restart, off the series by {offs} ms")
    gaps = [b_["ts"] - a["ts"] for a, b_ in zip(after[1:], after[2:4])]
    c.check(all(300 <= g <= 1700 for g in gaps), f"periods after the restart: {gaps}")
    c.eq(twin_get(hub.db, dev.id)["seq"], 1, "no message arrived meanwhile")
    c.done("every checks")
    hub.stop()


def case_check(fx):
    """twinctl rules check: 0 valid, 1 invalid with every error listed, 2 usage."""
    c = Checks()
    good = write_rules(fx, RULES.format(for_="1s"))
    rc, out, err = twinctl(None, "rules", "check", good)
    c.eq(rc, 0, f"check of a valid file (stderr {err!r})")
    c.check("3 rules" in out, f"summary: {out!r}")
    bad = write_rules(fx, "rules:\n"
                          "  - name: a\n"
                          "    when: reported.x >\n"
                          "  - name: b\n"
                          "    when: reported.y > 1\n"
                          "    for: soon\n", "bad.yaml")
    rc, out, err = twinctl(None, "rules", "check", bad)
    c.eq(rc, 1, "check of an invalid file")
    c.check(f"{bad}:3:23: when: expected a value, found the end" in err, f"stderr: {err!r}")
    c.check(f"{bad}:6:10: for: expected a duration" in err, f"stderr: {err!r}")
    rc, out, err = twinctl(None, "rules", "check", fx.path("missing.yaml"))
    c.eq(rc, 1, "check of a missing file")
    rc, out, err = twinctl(None, "rules", "frobnicate", good)
    c.eq(rc, 2, "unknown subcommand")
    rc, out, err = twinctl(None, "rules", "check")
    c.eq(rc, 2, "missing argument")
    c.done("check checks")


CASES = {
    "fire": case_fire,
    "restart": case_restart,
    "absence": case_absence,
    "reload": case_reload,
    "bad_reload": case_bad_reload,
    "check": case_check,
    "desired_set": case_desired_set,
    "predict": case_predict,
    "learn": case_learn,
    "every": case_every,
}

if __name__ == "__main__":
    sys.exit(run_case(CASES))
