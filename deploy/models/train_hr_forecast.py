#!/usr/bin/python3
"""train_hr_forecast.py: trains the demo's heart-rate forecaster, deploy/models/hr_forecast.twm:
an RBF SVR (after a StandardScaler) that predicts an ECG monitor's heart rate one minute ahead
from the last minute of its telemetry, and writes beside it hr_naive.twm, the naive forecast
("the rate stays as it is") as a linear model over the same inputs, so that the hub scores both
on the same predictions. The features, in order, are in README.md beside this file.

The training data is what sim/twinsim sends in ./deploy/demo.sh: its vitals model
(dev_model_init, dev_model_step and the ECG strip's draws from the same generator) is
reimplemented here bit for bit, so that `twinsim --seed S` device i and this script's device i
produce the same heart_rate and spo2 sequence message after message; and the messages are timed
as in the demo, where the rate changes:
  - twinsim runs at --rate 2 (demo.sh) with its continuous ECG strip (250 Hz / rate = 125
    samples a message);
  - the rules (deploy/rules/ecg.yaml) make a monitor send at 5 Hz while `tachycardia` fires
    (heart_rate > 120 for 3 s; cooldown 10 s) and at 2 Hz again when it resolves;
  - demo.sh's operator visits a random monitor every ~4.7 s: it goes offline for 5 s (the
    messages it owes come in a burst when it is back) and comes back at 1..4 Hz.
The vitals step once a message, so the rate decides how fast they move in time: a model trained
at another rate forecasts the wrong minute. Predictions are made when the hub makes them in the
demo: every 15 s (the `forecast` rule's every:) and when tachycardia fires; each is scored
against the first heart rate at least 60 s later, as the hub scores it (target:, horizon:).

Seeded: the same arguments write the same files.

    /usr/bin/python3 deploy/models/train_hr_forecast.py [--seed 7] [--devices 40] [--seconds 3600]
Needs python3-sklearn and python3-msgpack; the hub and the demo need only the .twm files.
"""
import argparse
import os
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "twins", "models"))
import export  # noqa: E402

from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVR  # noqa: E402

M64 = (1 << 64) - 1
WINDOW = 60.0   # seconds of history the features look at
HORIZON = 60.0  # seconds ahead
EVERY = 15.0    # the forecast rule's period (deploy/rules/ecg.yaml)
ECG_HZ = 250.0
FEATURES = ["reported.heart_rate", "avg(heart_rate, 60s)", "min(heart_rate, 60s)",
            "max(heart_rate, 60s)", "stddev(heart_rate, 60s)", "delta(heart_rate, 60s)",
            "reported.spo2", "avg(spo2, 60s)"]


def splitmix64(x):
    x = (x + 0x9e3779b97f4a7c15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return x, z ^ (z >> 31)


class Device:
    """twinsim's struct dev model: the same generator, draws and arithmetic, in order."""

    def __init__(self, seed, i, ecg_samples):
        x = seed ^ ((i * 0xd1b54a32d192ed03) & M64)
        _, r = splitmix64(x)
        self.s = r | 1
        self.ecg_samples = ecg_samples
        self.hr_base = 60 + 25 * self.unit()
        self.hr = self.hr_base
        self.spo2_base = 96.5 + 2.5 * self.unit()
        self.spo2 = self.spo2_base
        self.temp_base = 36.4 + 0.7 * self.unit()
        self.temp = self.temp_base
        self.unit()  # ecg_phase
        self.episode_left = 0
        self.episode_hr = 0.0

    def next(self):  # xorshift64*
        x = self.s
        x ^= x >> 12
        x ^= (x << 25) & M64
        x ^= x >> 27
        self.s = x
        return (x * 0x2545f4914f6cdd1d) & M64

    def unit(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def step(self):
        """One message: dev_model_step, then the ECG strip's draws. Returns what is sent."""
        hr_target, spo2_target, temp_target = self.hr_base, self.spo2_base, self.temp_base
        if self.episode_left == 0 and self.unit() < 0.01:
            self.episode_left = 20 + self.next() % 41
            self.episode_hr = 125 + 20 * self.unit()
        if self.episode_left > 0:
            self.episode_left -= 1
            self.hr = min(max(self.episode_hr + 8 * (self.unit() - 0.5), 121), 150)
            spo2_target = 93.0
            temp_target = self.temp_base + 0.5
        else:
            self.hr += 0.15 * (hr_target - self.hr) + 4 * (self.unit() - 0.5)
            self.hr = min(max(self.hr, 50), 150)
        self.spo2 += 0.2 * (spo2_target - self.spo2) + 0.6 * (self.unit() - 0.5)
        self.spo2 = min(max(self.spo2, 92), 100)
        self.temp += 0.05 * (temp_target - self.temp) + 0.04 * (self.unit() - 0.5)
        self.temp = min(max(self.temp, 36.0), 38.5)
        x = self.s  # the strip's draws (xorshift64* steps; their outputs shape only the ECG)
        for _ in range(self.ecg_samples):
            x ^= x >> 12
            x ^= (x << 25) & M64
            x ^= x >> 27
        self.s = x
        # C's lround (half away from zero) and round(x * 10) / 10
        hr = float(np.floor(self.hr + 0.5))
        spo2 = float(np.floor(self.spo2 * 10 + 0.5)) / 10
        return hr, spo2


class Demo:
    """When one device of the demo sends, as twinsim schedules it and the demo changes its rate;
    times in seconds. twinsim: message k is due at base + (k - k0) / rate; a new rate (its
    twin's desired sample_hz, applied when it is connected) sets base = now, k0 = k and leaves
    the deadline already set; a device behind its schedule sends at once."""

    def __init__(self, a, rng):
        self.a = a
        self.rng = rng

    def run(self, dev, seconds):
        a, inf = self.a, float("inf")
        self.dev = dev
        self.msgs, self.fires = [], []  # (t, hr, spo2); the times tachycardia fired
        self.state, self.fire_at, self.cooldown_until = "inactive", inf, -inf
        self.rate = self.desired = a.rate
        self.base, self.k, self.k0 = 0.0, 0, 0
        self.connected = True
        due = 0.0                        # the deadline of message k
        visit, back = self.next_visit(0.0), inf
        while True:
            at = min(due if self.connected else inf, self.fire_at, visit, back)
            if at >= seconds:
                break
            if at == self.fire_at:       # the hub's timer: tachycardia fires on its deadline
                self.rule(True, at)
                self.apply(at)
            elif at == visit:            # the operator: go_offline 5 s, a new rate meanwhile
                visit = self.next_visit(at)
                if self.connected:
                    self.connected = False
                    back = at + a.offline + a.reconnect
                    self.desired = float(self.rng.randint(1, 4))
            elif at == back:             # online again: what it owes in a burst, then desired
                back = inf
                self.connected = True
                while self.deadline() <= at:
                    self.send(at)
                due = self.deadline()
                self.apply(at)
            else:
                self.send(at)
                due = max(self.deadline(), at)  # set before the twin's answer comes
                self.apply(at)
        return self.msgs, self.fires

    def deadline(self):
        return self.base + (self.k - self.k0) / self.rate

    def apply(self, now):
        if self.connected and self.desired != self.rate:
            self.rate, self.base, self.k0 = self.desired, now, self.k

    def send(self, now):
        hr, spo2 = self.dev.step()
        self.msgs.append((now, hr, spo2))
        self.k += 1
        self.rule(hr > 120, now)

    def rule(self, cond, now):
        """tachycardia (for:, cooldown:): desired sample_hz alarm_rate on fire, rate on resolve;
        the device applies it after the deadline of its next message is set (apply)."""
        a, inf = self.a, float("inf")
        if self.state == "inactive" and cond:
            self.state, self.fire_at = "pending", max(now + a.alarm_for, self.cooldown_until)
        if self.state == "pending" and not cond:
            self.state, self.fire_at = "inactive", inf
        elif self.state == "pending" and now >= self.fire_at:
            self.state, self.fire_at = "firing", inf
            self.fires.append(now)
            self.desired = a.alarm_rate
        elif self.state == "firing" and not cond:
            self.state, self.cooldown_until = "inactive", now + a.alarm_cooldown
            self.desired = a.rate

    def next_visit(self, now):
        if self.a.operator_every <= 0:
            return float("inf")
        return now + self.rng.expovariate(1.0 / (self.a.operator_every * self.a.fleet))


def simulate(a, seed, devices, seconds):
    """Each device's messages (arrays t, hr, spo2) and its prediction times."""
    out = []
    rng = random.Random(seed * 7919 + 1)
    ecg = int(min(1000, max(1, np.floor(ECG_HZ / a.rate + 0.5))))  # twinsim: C round()
    for i in range(devices):
        msgs, fires = Demo(a, rng).run(Device(seed, i, ecg), seconds)
        m = np.array(msgs)
        phase = rng.uniform(0, EVERY)  # when the device's first message came, in its period
        times = np.concatenate([np.arange(phase, seconds, EVERY), np.array(fires)])
        out.append((m[:, 0], m[:, 1], m[:, 2], np.sort(times)))
    return out


def features(t, hr, spo2, at):
    """The feature row at time `at` (the window: messages at or after at - 60 s, up to at), and
    the target (the first heart rate at least 60 s later); None when the hub would skip it."""
    lo, hi = np.searchsorted(t, at - WINDOW, "left"), np.searchsorted(t, at, "right")
    j = np.searchsorted(t, at + HORIZON, "left")
    if hi - lo < 2 or j >= len(t):
        return None  # delta() needs two points; no target yet
    w, s = hr[lo:hi], spo2[lo:hi]
    return [w[-1], w.mean(), w.min(), w.max(), w.std(), w[-1] - w[0], s[-1], s.mean()], hr[j]


def dataset(data, stride):
    """Rows at the prediction times (every `stride`-th of them, to keep the SVR small)."""
    X, y = [], []
    for t, hr, spo2, times in data:
        for at in times[::stride]:
            r = features(t, hr, spo2, at)
            if r:
                X.append(r[0])
                y.append(r[1])
    return np.array(X), np.array(y)


def naive_model():
    """The naive forecast as a linear model over the same inputs: value = reported.heart_rate."""
    m = LinearRegression()
    m.coef_ = np.array([1.0] + [0.0] * (len(FEATURES) - 1))
    m.intercept_ = 0.0
    m.n_features_in_ = len(FEATURES)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--stride", type=int, default=150,
                    help="seconds between training rows (at least the 15 s of every:)")
    ap.add_argument("--rate", type=float, default=2.0, help="twinsim --rate (demo.sh)")
    ap.add_argument("--alarm-rate", type=float, default=5.0,
                    help="sample_hz while tachycardia fires (ecg.yaml)")
    ap.add_argument("--alarm-for", type=float, default=3.0, help="tachycardia's for:, s")
    ap.add_argument("--alarm-cooldown", type=float, default=10.0, help="its cooldown:, s")
    ap.add_argument("--operator-every", type=float, default=4.7,
                    help="seconds between demo.sh's operator visits to the fleet (0: none)")
    ap.add_argument("--fleet", type=int, default=50, help="demo.sh --devices")
    ap.add_argument("--offline", type=float, default=5.0, help="the operator's go_offline, s")
    ap.add_argument("--reconnect", type=float, default=0.3, help="seconds to come back online")
    ap.add_argument("--out", default=os.path.join(HERE, "hr_forecast.twm"))
    ap.add_argument("--naive-out", default=None,
                    help="the naive forecast's .twm (default: hr_naive.twm beside --out)")
    a = ap.parse_args()
    naive_out = a.naive_out or os.path.join(os.path.dirname(os.path.abspath(a.out)),
                                            "hr_naive.twm")
    stride = max(1, int(round(a.stride / EVERY)))
    data = simulate(a, a.seed, a.devices, a.seconds)
    test = simulate(a, a.seed + 1, 10, a.seconds)
    X, y = dataset(data, stride)
    Xt, yt = dataset(test, 1)
    model = make_pipeline(StandardScaler(), SVR(kernel="rbf", C=10.0, epsilon=4.0, gamma=0.1))
    model.fit(X, y)
    mae = np.mean(np.abs(model.predict(Xt) - yt))
    naive = np.mean(np.abs(Xt[:, 0] - yt))
    mean = np.mean(np.abs(Xt[:, 1] - yt))
    n = export.export(model, a.out)
    nn = export.export(naive_model(), naive_out)
    sent = sum(len(d[0]) for d in data)
    print(f"{a.out}: {n} bytes, {len(model[-1].support_)} support vectors, trained on {len(y)} "
          f"rows ({sent} messages, {sent / (a.devices * a.seconds):.2f} a second a device); "
          f"held-out MAE {mae:.2f} bpm over {len(yt)} predictions (naive, the current value: "
          f"{naive:.2f}; the minute's average: {mean:.2f})")
    print(f"{naive_out}: {nn} bytes, the naive forecast")


if __name__ == "__main__":
    main()
