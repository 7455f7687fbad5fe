#!/usr/bin/python3
"""train_hr_forecast.py: trains the demo's heart-rate forecaster, deploy/models/hr_forecast.twm:
an RBF SVR (after a StandardScaler) that predicts an ECG monitor's heart rate one minute ahead
from the last minute of its telemetry. The features, in order, are in README.md beside this file.

The training data is what sim/twinsim sends: its vitals model (dev_model_init, dev_model_step and
the ECG strip's draws from the same generator) is reimplemented here bit for bit, so that
`twinsim --seed S` device i and this script's device i produce the same heart_rate and spo2
sequence at the default --rate 1 (one message per second) and --ecg-samples 25. Seeded: the same
arguments write the same file.

    /usr/bin/python3 deploy/models/train_hr_forecast.py [--seed 7] [--devices 40] [--seconds 3600]
Needs python3-sklearn and python3-msgpack; the hub and the demo need only the .twm.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "twins", "models"))
import export  # noqa: E402

from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVR  # noqa: E402

M64 = (1 << 64) - 1
WINDOW = 60   # seconds of history the features look at (= messages at 1 Hz)
HORIZON = 60  # seconds ahead
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

    def __init__(self, seed, i, ecg_samples=25):
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
        for _ in range(self.ecg_samples):
            self.next()
        # C's lround (half away from zero) and round(x * 10) / 10
        hr = float(np.floor(self.hr + 0.5))
        spo2 = float(np.floor(self.spo2 * 10 + 0.5)) / 10
        return hr, spo2


def series(seed, devices, seconds):
    out = []
    for i in range(devices):
        d = Device(seed, i)
        out.append(np.array([d.step() for _ in range(seconds)]))
    return out


def features(hr, spo2, t):
    """The feature row at second t (the window is the last WINDOW messages, t included)."""
    w = hr[t - WINDOW + 1:t + 1]
    s = spo2[t - WINDOW + 1:t + 1]
    return [hr[t], w.mean(), w.min(), w.max(), w.std(), w[-1] - w[0], spo2[t], s.mean()]


def dataset(data, stride):
    X, y = [], []
    for s in data:
        hr, spo2 = s[:, 0], s[:, 1]
        for t in range(WINDOW - 1, len(hr) - HORIZON, stride):
            X.append(features(hr, spo2, t))
            y.append(hr[t + HORIZON])
    return np.array(X), np.array(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--stride", type=int, default=150, help="seconds between training rows")
    ap.add_argument("--out", default=os.path.join(HERE, "hr_forecast.twm"))
    a = ap.parse_args()
    data = series(a.seed, a.devices, a.seconds)
    test = series(a.seed + 1, 10, a.seconds)
    X, y = dataset(data, a.stride)
    Xt, yt = dataset(test, 7)
    model = make_pipeline(StandardScaler(), SVR(kernel="rbf", C=10.0, epsilon=4.0, gamma=0.1))
    model.fit(X, y)
    mae = np.mean(np.abs(model.predict(Xt) - yt))
    naive = np.mean(np.abs(Xt[:, 0] - yt))
    mean = np.mean(np.abs(Xt[:, 1] - yt))
    n = export.export(model, a.out)
    print(f"{a.out}: {n} bytes, {len(model[-1].support_)} support vectors, trained on {len(y)} "
          f"rows; held-out MAE {mae:.2f} bpm (current value: {naive:.2f}, minute average: "
          f"{mean:.2f})")


if __name__ == "__main__":
    main()
