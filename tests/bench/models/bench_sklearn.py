#!/usr/bin/python3
"""bench_sklearn.py: scikit-learn's (and PyTorch's, when installed) own per-sample predict time
next to twinhub's C runtime on the same models: trains the benchmark's models with fixed seeds
(a 100-tree depth-8 forest on 10 features, an RBF SVR with ~500 support vectors on 10 features,
an MLP 10-64-64-1, an LSTM of 32 units over 60 steps), exports them, times one-row predict calls
in Python, then runs bench_models on the exported files. Prints figures; judges nothing.

    tests/bench/models/bench_sklearn.py --bench build-rel/tests/bench/models/bench_models
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

from sklearn.ensemble import RandomForestRegressor  # noqa: E402
from sklearn.neural_network import MLPRegressor  # noqa: E402
from sklearn.svm import SVR  # noqa: E402

warnings.filterwarnings("ignore")


def per_sample(fn, rows, runs=3):
    """Median over runs of the mean seconds of fn(row) over rows, in µs."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for r in rows:
            fn(r)
        times.append((time.perf_counter() - t0) / len(rows) * 1e6)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the bench_models executable")
    ap.add_argument("-n", type=int, default=500, help="one-row predict calls per run in Python")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 10))
    y = np.sin(X[:, 0]) * 10 + X[:, 1] * X[:, 2] + rng.normal(scale=0.3, size=len(X))
    T = rng.normal(size=(a.n, 10))
    rows = [T[i:i + 1] for i in range(len(T))]
    models = {
        "forest 100 x depth 8": RandomForestRegressor(n_estimators=100, max_depth=8,
                                                      random_state=0).fit(X, y),
        "svr rbf ~500 sv x 10": SVR(C=10.0, epsilon=0.001).fit(X[:500], y[:500]),
        "mlp 10-64-64-1": MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=30,
                                       random_state=0).fit(X, y),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, est in models.items():
            path = os.path.join(tmp, name.split()[0] + ".twm")
            export.export(est, path)
            files.append(path)
            extra = f"{len(est.support_)} SVs" if hasattr(est, "support_") else ""
            results.append([name, per_sample(est.predict, rows), extra])
        try:
            import torch
            from torch import nn

            torch.manual_seed(0)
            torch.set_num_threads(1)
            lstm, head = nn.LSTM(4, 32, batch_first=True).eval(), nn.Linear(32, 1).eval()
            state = {"lstm." + k: v for k, v in lstm.state_dict().items()}
            state.update({"head." + k: v for k, v in head.state_dict().items()})
            path = os.path.join(tmp, "lstm.twm")
            export.export_lstm(state, path, window=60)
            files.append(path)
            W = [torch.randn(1, 60, 4) for _ in range(min(a.n, 200))]

            def fwd(w):
                with torch.no_grad():
                    return head(lstm(w)[0][:, -1, :])
            results.append(["lstm 32 units x 60 steps", per_sample(fwd, W), "PyTorch, 1 thread"])
        except ImportError:
            results.append(["lstm 32 units x 60 steps", None, "no torch here"])
        out = subprocess.run([a.bench, "-n", "20000"] + files, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    c_us = [float(line.split()[2]) for line in out]
    print(f"{'model':28} {'python us':>10} {'C us':>9} {'ratio':>7}  note")
    for (name, py, note), c in zip(results, c_us + [None] * (len(results) - len(c_us))):
        ratio = f"{py / c:7.0f}x" if py and c else "      -"
        pys = f"{py:10.1f}" if py else "         -"
        cs = f"{c:9.2f}" if c is not None else "        -"
        print(f"{name:28} {pys} {cs} {ratio}  {note}")


if __name__ == "__main__":
    main()
