#!/usr/bin/python3
"""make_fixtures.py: regenerates the small valid .twm files that test_models.c truncates,
corrupts and loads (one per kind and shape of interest), with scikit-learn and export.py;
lstm.twm comes from the committed PyTorch fixture lstm_1layer.state.npz (no torch needed).
Seeded; run from anywhere:  /usr/bin/python3 tests/data/models/make_fixtures.py
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "twins", "models"))
import export  # noqa: E402

from sklearn import svm  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402


def main():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(60, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 1.0]
    y = X @ [1.5, -0.2, 8.0] + 3.0 + rng.normal(scale=0.1, size=60)
    c2 = (X[:, 0] + X[:, 2] > 1.0).astype(int)
    c3 = np.digitize(X[:, 0], [-0.5, 0.5])
    names = np.array(["low", "mid", "high"], dtype=object)[c3]
    models = {
        "linear": make_pipeline(StandardScaler(), LinearRegression()).fit(X, y),
        "logistic": make_pipeline(MinMaxScaler(), LogisticRegression()).fit(X, names),
        "svc": make_pipeline(StandardScaler(), svm.SVC(probability=True, random_state=0,
                                                       C=0.5)).fit(X[:24], c3[:24]),
        "svr": make_pipeline(StandardScaler(), svm.SVR(C=0.5)).fit(X[:20], y[:20]),
        "forest": RandomForestRegressor(n_estimators=3, max_depth=3,
                                        random_state=0).fit(X, y),
        "gb": GradientBoostingClassifier(n_estimators=3, max_depth=2,
                                         random_state=0).fit(X, c3),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(4,), max_iter=50, random_state=0)).fit(X, c2),
    }
    for name, est in models.items():
        n = export.export(est, os.path.join(HERE, name + ".twm"))
        print(f"{name}.twm: {n} bytes")
    state = export.load_state(os.path.join(HERE, "lstm_1layer.state.npz"))
    n = export.export_lstm(state, os.path.join(HERE, "lstm.twm"), window=4)
    print(f"lstm.twm: {n} bytes")


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    main()
