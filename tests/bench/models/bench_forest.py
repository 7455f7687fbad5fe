#!/usr/bin/python3
"""bench_forest.py: twinhub's tree ensembles against scikit-learn's own predict, per sample and
batched, in one command. Fits with fixed seeds, on a pump's telemetry (8 inputs, generated:
pressures, flow, current, vibration, temperatures and speed driven by a shared load and a slow
wear, as a digital twin would see them), a 100-tree depth-10 RandomForestRegressor (issue 5's
yardstick), the same forest as a classifier (the pump's health class, predict_proba), a
GradientBoostingRegressor and a GradientBoostingClassifier (100 stages of depth 3) and one
depth-10 DecisionTreeRegressor; exports each with twins/models/export.py, times scikit-learn's
one-row predict calls and its batch predict (est.predict(X) over all the test rows, time / rows,
one thread), then runs bench_models on the exported files over the same rows. Prints µs per
sample for each and the ratios; judges nothing.

    tests/bench/models/bench_forest.py --bench build-rel/tests/bench/models/bench_models
        [--only forest_reg] [--keep DIR]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "twins", "models"))
import export  # noqa: E402

from sklearn.ensemble import (GradientBoostingClassifier,  # noqa: E402
                              GradientBoostingRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.tree import DecisionTreeRegressor  # noqa: E402

warnings.filterwarnings("ignore")

FEATURES = ["inlet_kpa", "outlet_kpa", "flow_m3h", "current_a", "vibration_mms", "bearing_c",
            "ambient_c", "speed_rpm"]


def pump(n, rng):
    """n rows of the 8 inputs, the efficiency (%) to regress and the health class (0 ok,
    1 worn, 2 failing) to classify."""
    load = rng.beta(2.0, 2.0, n)                     # demanded duty, 0..1
    wear = rng.gamma(2.0, 0.15, n)                   # bearing and impeller wear
    ambient = 18 + 8 * np.sin(rng.uniform(0, 2 * np.pi, n)) + rng.normal(0, 1.5, n)
    speed = 1450 + 1500 * load + rng.normal(0, 20, n)
    inlet = 120 + rng.normal(0, 6, n) - 10 * load
    flow = 40 * load * (1 - 0.3 * wear) + rng.normal(0, 1.2, n)
    outlet = inlet + 0.0009 * speed ** 2 * (1 - 0.25 * wear) + rng.normal(0, 8, n)
    current = 8 + 0.004 * speed + 0.12 * flow * (1 + 0.4 * wear) + rng.normal(0, 0.4, n)
    vibration = 1.2 + 3.5 * wear ** 1.5 + 0.0006 * speed + rng.gamma(1.5, 0.3, n)
    bearing = ambient + 15 + 20 * load + 25 * wear + rng.normal(0, 2, n)
    X = np.column_stack([inlet, outlet, flow, current, vibration, bearing, ambient, speed])
    hydraulic = flow * (outlet - inlet) / 3600
    electrical = np.maximum(current * 0.4 * np.sqrt(3) * 0.85, 1e-3)
    eff = 100 * hydraulic / electrical + rng.normal(0, 0.8, n)
    health = np.digitize(wear + 0.05 * vibration + rng.normal(0, 0.08, n), [0.45, 0.75])
    return X, eff, health


def per_sample(fn, rows, runs=3):
    """Median over runs of the mean µs of fn(row) over rows."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for r in rows:
            fn(r)
        times.append((time.perf_counter() - t0) / len(rows) * 1e6)
    return sorted(times)[len(times) // 2]


def batch(fn, X, runs=5):
    """Median over runs of fn(X)'s seconds divided by the rows, in µs."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(X)
        times.append((time.perf_counter() - t0) / len(X) * 1e6)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the bench_models executable")
    ap.add_argument("--rows", type=int, default=10000, help="test rows (batch size)")
    ap.add_argument("--single", type=int, default=300, help="one-row predict calls per run")
    ap.add_argument("-n", type=int, default=100000, help="C predictions per run")
    ap.add_argument("--only", help="one model by name")
    ap.add_argument("--keep", help="keep the .twm files and rows here")
    a = ap.parse_args()
    rng = np.random.default_rng(5)
    X, eff, health = pump(20000, rng)
    T, _, _ = pump(a.rows, rng)
    models = {
        "forest_reg": lambda: RandomForestRegressor(n_estimators=100, max_depth=10,
                                                    random_state=0).fit(X, eff),
        "forest_cls": lambda: RandomForestClassifier(n_estimators=100, max_depth=10,
                                                     random_state=0).fit(X, health),
        "gb_reg": lambda: GradientBoostingRegressor(n_estimators=100, max_depth=3,
                                                    random_state=0).fit(X, eff),
        "gb_cls": lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3,
                                                     random_state=0).fit(X, health),
        "tree_reg": lambda: DecisionTreeRegressor(max_depth=10, random_state=0).fit(X, eff),
    }
    if a.only:
        models = {a.only: models[a.only]}
    tmp = a.keep or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    rows_path = os.path.join(tmp, "rows.f64")
    np.ascontiguousarray(T, dtype=np.float64).tofile(rows_path)
    one = [T[i:i + 1] for i in range(min(a.single, len(T)))]
    results = []
    for name, fit in models.items():
        est = fit()
        path = os.path.join(tmp, name + ".twm")
        export.export(est, path)
        single = per_sample(est.predict, one)
        batched = batch(est.predict, T)
        out = subprocess.run([a.bench, "-n", str(a.n), "-r", "5", "-x", rows_path, path],
                             capture_output=True, text=True, check=True).stdout.split()
        results.append((name, single, batched, float(out[2])))
    print(f"{'model':12} {'sklearn 1-row':>14} {'sklearn batch':>14} {'C':>9}"
          f" {'1-row/C':>9} {'batch/C':>8}   (µs per sample; ratios > 1: C faster)")
    for name, single, batched, c in results:
        print(f"{name:12} {single:14.1f} {batched:14.2f} {c:9.2f} {single / c:8.0f}x"
              f" {batched / c:7.2f}x")
    if not a.keep:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
