#!/usr/bin/python3
"""test_parity.py: trains small scikit-learn models on seeded generated data, exports them with
twins/models/export.py, predicts held-out samples through the C runtime (model_eval) and checks
predict / predict_proba / decision_function agree to 1e-9 relative (labels exactly); the LSTM
against the committed PyTorch fixtures of tests/data/models/ to 1e-5. Also the edge cases:
ties in one-vs-one voting, a single class, constant features, NaN input, refused estimators.

    test_parity.py --eval build/tests/unit/models/model_eval [--only NAME] [--keep DIR] [-v]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "twins", "models"))
import export  # noqa: E402

from sklearn import svm, tree  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor,  # noqa: E402
                              GradientBoostingClassifier, GradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import (ElasticNet, Lasso, LinearRegression,  # noqa: E402
                                  LogisticRegression, Ridge, SGDRegressor)
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402

RTOL = 1e-9
ATOL = 1e-12  # absolute floor for values that cancel to ~0 (summation order differs from BLAS)
LSTM_RTOL = 1e-5

warnings.filterwarnings("ignore", category=ConvergenceWarning)


# ---------------------------------------------------------------------------------------------
# Data (seeded)
# ---------------------------------------------------------------------------------------------

def reg_data(seed, n=240, f=6, targets=1, const=False):
    X, y = make_regression(n_samples=n, n_features=f, n_informative=min(f, 4), n_targets=targets,
                           noise=5.0, random_state=seed)
    X = X * np.arange(1, f + 1) + np.arange(f) * 3.0  # uneven scales and offsets
    if const:
        X[:, 1] = 7.5
    y = y + 0.05 * (X[:, 0] ** 2 if targets == 1 else (X[:, :1] ** 2))
    return X[:160], y[:160], X[160:]


def cls_data(seed, classes=2, n=300, f=5, const=False):
    X, y = make_classification(n_samples=n, n_features=f, n_informative=3, n_redundant=1,
                               n_classes=classes, n_clusters_per_class=1, random_state=seed)
    if const:
        X[:, 2] = -3.25
    return X[:200], y[:200], X[200:]


def labels(y, kind):
    if kind == "str":
        return np.array(["cls_" + "abcdefgh"[v] for v in y], dtype=object)
    if kind == "neg":
        return np.array([-5, 3, 11, 40][: y.max() + 1])[y]
    return y


# ---------------------------------------------------------------------------------------------
# Cases: name -> (estimator, X_train, y_train, X_test)
# ---------------------------------------------------------------------------------------------

def cases():
    c = {}
    X, y, T = reg_data(1)
    c["linear_regression"] = (LinearRegression(), X, y, T)
    c["ridge_std"] = (make_pipeline(StandardScaler(), Ridge(alpha=2.0)), X, y, T)
    c["lasso_minmax"] = (make_pipeline(MinMaxScaler(), Lasso(alpha=0.3)), X, y, T)
    c["elasticnet"] = (ElasticNet(alpha=0.2, l1_ratio=0.4), X, y, T)
    c["sgd_regressor"] = (make_pipeline(StandardScaler(), SGDRegressor(random_state=3)), X, y, T)
    c["linear_svr"] = (make_pipeline(StandardScaler(), svm.LinearSVR(random_state=0,
                                                                      max_iter=5000)), X, y, T)
    X2, y2, T2 = reg_data(2, targets=2)
    c["linear_multi_output"] = (Ridge(alpha=1.0), X2, y2, T2)
    Xc, yc, Tc = reg_data(3, const=True)
    c["ridge_const_feature"] = (make_pipeline(StandardScaler(), MinMaxScaler(clip=True),
                                              Ridge()), Xc, yc, Tc)

    X, y, T = cls_data(4)
    c["logistic_binary"] = (make_pipeline(StandardScaler(), LogisticRegression()), X, y, T)
    c["logistic_binary_str"] = (LogisticRegression(C=0.5), X, labels(y, "str"), T)
    c["logistic_binary_multinomial"] = (LogisticRegression(multi_class="multinomial"), X, y, T)
    X, y, T = cls_data(5, classes=3)
    c["logistic_multinomial"] = (make_pipeline(StandardScaler(), LogisticRegression()),
                                 X, labels(y, "neg"), T)
    c["logistic_ovr"] = (LogisticRegression(multi_class="ovr"), X, y, T)
    c["logistic_liblinear"] = (LogisticRegression(solver="liblinear"), X, y, T)
    c["linear_svc"] = (make_pipeline(StandardScaler(), svm.LinearSVC(random_state=0,
                                                                      max_iter=5000)), X, y, T)

    X, y, T = cls_data(6, classes=2)
    for k in ("linear", "rbf", "poly", "sigmoid"):
        c[f"svc_{k}_binary"] = (make_pipeline(StandardScaler(), svm.SVC(kernel=k, degree=3,
                                                                        coef0=0.5)), X, y, T)
    c["svc_rbf_binary_proba"] = (make_pipeline(StandardScaler(), svm.SVC(probability=True,
                                                                         random_state=1)),
                                 X, labels(y, "str"), T)
    X, y, T = cls_data(7, classes=4, f=6)
    c["svc_rbf_ovr"] = (make_pipeline(StandardScaler(), svm.SVC(gamma=0.3)), X, y, T)
    c["svc_poly_ovo"] = (make_pipeline(StandardScaler(), svm.SVC(kernel="poly", degree=2,
                                                                 decision_function_shape="ovo")),
                         X, labels(y, "str"), T)
    c["svc_sigmoid_break_ties"] = (make_pipeline(StandardScaler(), svm.SVC(
        kernel="sigmoid", gamma=0.05, break_ties=True)), X, y, T)
    c["svc_rbf_proba_multi"] = (make_pipeline(StandardScaler(), svm.SVC(probability=True,
                                                                        random_state=2)),
                                X, y, T)
    c["nusvc_linear"] = (make_pipeline(StandardScaler(), svm.NuSVC(kernel="linear", nu=0.3)),
                         X, y, T)
    X, y, T = reg_data(8)
    c["svr_rbf"] = (make_pipeline(StandardScaler(), svm.SVR(C=50.0, epsilon=0.5)), X, y, T)
    c["svr_poly"] = (make_pipeline(MinMaxScaler(), svm.SVR(kernel="poly", degree=3, C=20.0)),
                     X, y, T)
    c["nusvr_sigmoid"] = (make_pipeline(StandardScaler(), svm.NuSVR(kernel="sigmoid",
                                                                    gamma=0.02)), X, y, T)

    X, y, T = reg_data(9)
    c["tree_regressor"] = (tree.DecisionTreeRegressor(max_depth=6, random_state=0), X, y, T)
    c["extra_tree_regressor"] = (tree.ExtraTreeRegressor(random_state=0), X, y, T)
    c["forest_regressor"] = (RandomForestRegressor(n_estimators=20, max_depth=6,
                                                   random_state=0), X, y, T)
    c["extra_trees_regressor"] = (make_pipeline(StandardScaler(), ExtraTreesRegressor(
        n_estimators=15, random_state=1)), X, y, T)
    c["gb_regressor"] = (GradientBoostingRegressor(n_estimators=40, max_depth=3,
                                                   random_state=0), X, y, T)
    c["gb_regressor_huber"] = (GradientBoostingRegressor(loss="huber", n_estimators=30,
                                                         random_state=0), X, y, T)
    X2, y2, T2 = reg_data(10, targets=2)
    c["forest_regressor_multi_output"] = (RandomForestRegressor(n_estimators=10, max_depth=5,
                                                                random_state=0), X2, y2, T2)
    X, y, T = cls_data(11, classes=3)
    c["tree_classifier"] = (tree.DecisionTreeClassifier(max_depth=5, random_state=0), X,
                            labels(y, "str"), T)
    c["forest_classifier"] = (RandomForestClassifier(n_estimators=25, max_depth=6,
                                                     random_state=0), X, y, T)
    c["extra_trees_classifier"] = (ExtraTreesClassifier(n_estimators=20, random_state=0),
                                   X, labels(y, "neg"), T)
    c["gb_classifier_multi"] = (GradientBoostingClassifier(n_estimators=25, max_depth=2,
                                                           random_state=0), X, y, T)
    X, y, T = cls_data(12, classes=2, const=True)
    c["gb_classifier_binary"] = (GradientBoostingClassifier(n_estimators=30, random_state=0),
                                 X, y, T)
    c["gb_classifier_exponential"] = (GradientBoostingClassifier(loss="exponential",
                                                                 n_estimators=20,
                                                                 random_state=0), X, y, T)
    c["forest_const_feature"] = (RandomForestClassifier(n_estimators=10, random_state=0),
                                 X, labels(y, "str"), T)
    c["tree_single_class"] = (tree.DecisionTreeClassifier(), X, np.full(len(y), 7), T)
    c["forest_single_class"] = (RandomForestClassifier(n_estimators=5, random_state=0), X,
                                np.array(["only"] * len(y), dtype=object), T)

    # issue 5's size: 100 trees of depth 10 on 8 inputs, with enough rows that the trees are
    # (nearly) complete, which the runtime lays out differently from sparse ones
    X, y = make_regression(n_samples=6000, n_features=8, n_informative=6, noise=5.0,
                           random_state=14)
    X, y, T = X[:4000], y[:4000] + 0.05 * X[:4000, 0] ** 2, X[4000:]
    c["forest_100_depth_10_regressor"] = (RandomForestRegressor(n_estimators=100, max_depth=10,
                                                                random_state=0), X, y, T)
    X, y = make_classification(n_samples=6000, n_features=8, n_informative=5, n_classes=3,
                               random_state=15)
    X, y, T = X[:4000], y[:4000], X[4000:]
    c["forest_100_depth_10_classifier"] = (RandomForestClassifier(n_estimators=100,
                                                                  max_depth=10,
                                                                  random_state=0), X, y, T)

    X, y, T = reg_data(13)
    for act in ("identity", "logistic", "tanh", "relu"):
        c[f"mlp_regressor_{act}"] = (make_pipeline(StandardScaler(), MLPRegressor(
            hidden_layer_sizes=(16, 8), activation=act, max_iter=300, random_state=0)),
            X, y, T)
    X2, y2, T2 = reg_data(14, targets=2)
    c["mlp_regressor_multi_output"] = (make_pipeline(StandardScaler(), MLPRegressor(
        hidden_layer_sizes=(10,), max_iter=200, random_state=0)), X2, y2, T2)
    X, y, T = cls_data(15, classes=2)
    c["mlp_classifier_binary"] = (make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(12,), activation="tanh", max_iter=300, random_state=0)),
        X, labels(y, "str"), T)
    X, y, T = cls_data(16, classes=4, f=6)
    c["mlp_classifier_multi"] = (make_pipeline(MinMaxScaler(), MLPClassifier(
        hidden_layer_sizes=(20, 10), activation="logistic", max_iter=400, random_state=0)),
        X, y, T)
    return c


# ---------------------------------------------------------------------------------------------
# Running the C side and comparing
# ---------------------------------------------------------------------------------------------

def run_c(model_eval, twm, X, tmp):
    xin = os.path.join(tmp, "in.f64")
    xout = os.path.join(tmp, "out.f64")
    np.ascontiguousarray(X, dtype=np.float64).tofile(xin)
    p = subprocess.run([model_eval, twm, xin, xout], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"model_eval failed ({p.returncode}): {p.stderr.strip()}")
    no, nc, nd, hp = (int(v) for v in p.stdout.split())
    out = np.fromfile(xout, dtype=np.float64).reshape(len(X), no + 1 + nc + nd)
    return {"values": out[:, :no], "label": out[:, no], "proba": out[:, no + 1:no + 1 + nc],
            "decision": out[:, no + 1 + nc:], "has_proba": bool(hp), "n_decision": nd}


def close(name, what, got, want, rtol=RTOL, atol=ATOL):
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(want))
    want = np.asarray(want, dtype=np.float64)
    err = np.abs(got - want)
    bad = err > rtol * np.abs(want) + atol
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{name}: {what} differs at {tuple(i)}: C {got[tuple(i)]!r}, "
                             f"Python {want[tuple(i)]!r}")
    rel = np.max(err / np.maximum(np.abs(want), 1e-300)) if want.size else 0.0
    return rel


def check(name, est, X, y, T, model_eval, tmp, verbose):
    est.fit(X, y)
    twm = os.path.join(tmp, name + ".twm")
    export.export(est, twm)
    c = run_c(model_eval, twm, T, tmp)
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    worst = 0.0
    if hasattr(final, "classes_"):
        classes = final.classes_
        want = est.predict(T)
        got = classes[c["label"].astype(int)]
        if not np.array_equal(got, want):
            i = int(np.argmax(got != want))
            raise AssertionError(f"{name}: label differs at row {i}: C {got[i]!r}, Python "
                                 f"{want[i]!r}")
        if hasattr(est, "predict_proba") and _has(est, "predict_proba"):
            if not c["has_proba"]:
                raise AssertionError(f"{name}: the C model has no predict_proba")
            worst = max(worst, close(name, "predict_proba", c["proba"], est.predict_proba(T)))
        elif c["has_proba"]:
            raise AssertionError(f"{name}: the C model has a predict_proba, Python has none")
        if _has(est, "decision_function"):
            d = est.decision_function(T)
            worst = max(worst, close(name, "decision_function", c["decision"], d))
        elif c["n_decision"]:
            raise AssertionError(f"{name}: the C model has a decision_function, Python none")
    else:
        want = est.predict(T)
        worst = close(name, "predict", c["values"], np.reshape(want, c["values"].shape))
    if verbose:
        print(f"  {name}: {len(T)} rows, max relative difference {worst:.2e}")
    return c


def _has(est, attr):
    try:
        return hasattr(est, attr)
    except AttributeError:
        return False


def check_ties(model_eval, tmp, verbose):
    """One-vs-one votes that tie: three classes around a centre, so that many points get one
    vote each; libsvm takes the first class, decision_function_shape='ovr' and break_ties use
    the confidences. The labels must match scikit-learn on every point."""
    rng = np.random.default_rng(17)
    centres = np.array([[0.0, 1.0], [-0.87, -0.5], [0.87, -0.5]])
    y = np.repeat(np.arange(3), 40)
    X = centres[y] + rng.normal(scale=0.6, size=(120, 2))
    g = np.linspace(-0.6, 0.6, 41)
    T = np.array([[a, b] for a in g for b in g])
    ties = 0
    for shape, bt in (("ovo", False), ("ovr", False), ("ovr", True)):
        est = svm.SVC(kernel="linear", C=0.01, decision_function_shape=shape, break_ties=bt)
        check(f"svc_ties_{shape}_{bt}", est, X, y, T, model_eval, tmp, verbose)
        if shape == "ovo":
            d = est.decision_function(T)
            votes = np.zeros((len(T), 3))
            for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
                votes[d[:, k] > 0, i] += 1
                votes[d[:, k] <= 0, j] += 1
            ties = int(np.sum(votes.max(axis=1) == 1))
    if ties == 0:
        raise AssertionError("svc_ties: the grid produced no tied votes; the test tests nothing")
    if verbose:
        print(f"  svc_ties: {ties} points with tied one-vs-one votes")


def check_thresholds(model_eval, tmp, verbose):
    """Samples on the splits: every threshold of a forest (complete trees and sparse ones), the
    float32 values either side of it and the float64 ones either side, in every feature, so that
    each `x <= threshold` is decided at its edge; the walk compares in float32."""
    rng = np.random.default_rng(23)
    X = rng.normal(size=(3000, 4)) * [1.0, 1e3, 1e-3, 7.0]
    y = X[:, 0] * 2 + np.sin(X[:, 1] / 500) + 1e3 * X[:, 2] + rng.normal(scale=0.1, size=len(X))
    for name, est in (("thresholds_complete", RandomForestRegressor(n_estimators=8,
                                                                    max_depth=6,
                                                                    random_state=0)),
                      ("thresholds_sparse", RandomForestRegressor(n_estimators=8,
                                                                  min_samples_leaf=40,
                                                                  random_state=0))):
        est.fit(X, y)
        rows = []
        for t in est.estimators_:
            tr = t.tree_
            for k in np.flatnonzero(tr.children_left >= 0):
                th = tr.threshold[k]
                f32 = np.float32(th)
                for v in (th, np.nextafter(th, -np.inf), np.nextafter(th, np.inf), float(f32),
                          float(np.nextafter(f32, np.float32(-np.inf))),
                          float(np.nextafter(f32, np.float32(np.inf)))):
                    r = X[rng.integers(len(X))].copy()
                    r[tr.feature[k]] = v
                    rows.append(r)
        T = np.array(rows)
        check(name, est, X, y, T, model_eval, tmp, verbose)


def check_nan(model_eval, tmp, verbose):
    """NaN and infinite inputs: scikit-learn raises; the C runtime refuses the row (-EDOM)."""
    X, y, T = cls_data(18)
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    twm = os.path.join(tmp, "nan.twm")
    export.export(est, twm)
    bad = T[:4].copy()
    bad[0, 1] = np.nan
    bad[1, 0] = np.inf
    bad[2, 4] = -np.inf
    for row in bad[:3]:
        try:
            est.predict(row[None, :])
        except ValueError:
            pass
        else:
            raise AssertionError("nan: scikit-learn accepted a non-finite input")
    c = run_c(model_eval, twm, bad, tmp)
    if list(c["label"]) != [-1, -1, -1, est.predict(bad[3:4]).tolist()[0]]:
        raise AssertionError(f"nan: rows not refused as expected: {c['label']}")
    if verbose:
        print("  nan: non-finite rows refused, the finite one predicted")


def check_refusals(verbose):
    """What export.py must refuse rather than approximate."""
    from sklearn.neighbors import KNeighborsRegressor
    X, y, _ = reg_data(19)
    Xc, yc, _ = cls_data(19)
    refused = [
        ("knn", KNeighborsRegressor().fit(X, y)),
        ("precomputed", svm.SVC(kernel="precomputed").fit(Xc @ Xc.T, yc)),
        ("callable kernel", svm.SVR(kernel=lambda a, b: a @ b.T).fit(X, y)),
        ("multi-output tree classifier", tree.DecisionTreeClassifier().fit(
            Xc, np.c_[yc, 1 - yc])),
        ("custom init", GradientBoostingRegressor(init=LinearRegression(),
                                                  n_estimators=3).fit(X, y)),
    ]
    for what, est in refused:
        try:
            export.to_dict(est)
        except export.ExportError as e:
            if verbose:
                print(f"  refused {what}: {e}")
        else:
            raise AssertionError(f"export.py accepted {what}")


def check_lstm(model_eval, tmp, verbose):
    """LSTM fixtures made with real PyTorch by tests/data/models/make_lstm_fixtures.py."""
    data = os.path.join(ROOT, "tests", "data", "models")
    names = sorted(f[:-len(".state.npz")] for f in os.listdir(data) if f.endswith(".state.npz"))
    if not names:
        raise AssertionError("no LSTM fixtures in tests/data/models")
    for name in names:
        state = export.load_state(os.path.join(data, name + ".state.npz"))
        with np.load(os.path.join(data, name + ".cases.npz")) as z:
            x, want, window = z["x"], z["y"], int(z["window"])
        twm = os.path.join(tmp, name + ".twm")
        export.export_lstm(state, twm, window)
        c = run_c(model_eval, twm, x.reshape(len(x), -1), tmp)
        worst = close(name, "LSTM output", c["values"], want.reshape(c["values"].shape),
                      rtol=LSTM_RTOL, atol=1e-7)
        if verbose:
            print(f"  {name}: {len(x)} windows, max relative difference {worst:.2e}")


def check_twinctl(twinctl, tmp, verbose):
    """`twinctl model info` and `twinctl model predict [--proba]` on CSV: labels, values and
    probabilities as scikit-learn's (17 significant digits read back exactly)."""
    import json
    X, y, T = cls_data(20, classes=3)
    est = make_pipeline(StandardScaler(), svm.SVC(probability=True, random_state=0))
    est.fit(X, labels(y, "str"))
    twm = os.path.join(tmp, "ctl.twm")
    export.export(est, twm)
    csv = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in T)

    def run(*args, stdin=""):
        p = subprocess.run([twinctl, "model", *args], input=stdin, capture_output=True,
                           text=True)
        return p.returncode, p.stdout, p.stderr

    rc, out, err = run("info", twm)
    info = json.loads(out) if rc == 0 else {}
    if rc or info.get("kind") != "svm" or info.get("classes") != ["cls_a", "cls_b", "cls_c"] \
            or info.get("preprocess") != ["standard"] or info.get("features") != 5:
        raise AssertionError(f"twinctl model info: rc {rc}, {out!r} {err!r}")
    rc, out, err = run("predict", twm, stdin=csv)
    if rc or out.split() != list(est.predict(T)):
        raise AssertionError(f"twinctl model predict: rc {rc}, {err!r}")
    rc, out, err = run("predict", twm, "--proba", stdin=csv)
    got = np.array([[float(v) for v in line.split(",")] for line in out.split()])
    if rc:
        raise AssertionError(f"twinctl model predict --proba: rc {rc}, {err!r}")
    close("twinctl", "--proba", got, est.predict_proba(T))
    rc, out, err = run("predict", twm, stdin=csv.splitlines()[0] + "\n1,2\n")
    if rc != 1 or len(out.split()) != 1 or "stdin:2" not in err:
        raise AssertionError(f"twinctl: a short row: rc {rc}, {out!r}, {err!r}")
    rc, out, err = run("predict", twm, stdin="nan,1,2,3,4\n")
    if rc != 1:
        raise AssertionError(f"twinctl: a NaN row: rc {rc}")
    rc, _, _ = run("predict")
    if rc != 2:
        raise AssertionError(f"twinctl model predict without a file: rc {rc}")
    with open(os.path.join(tmp, "bad.twm"), "wb") as f:
        f.write(b"\x81\xa6format\xa3bad")
    rc, _, err = run("info", os.path.join(tmp, "bad.twm"))
    if rc != 1 or "not a model" not in err:
        raise AssertionError(f"twinctl model info on a bad file: rc {rc}, {err!r}")
    if verbose:
        print(f"  twinctl: info, predict and --proba agree on {len(T)} rows; bad rows exit 1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", required=True, help="the model_eval executable")
    ap.add_argument("--twinctl", help="also check `twinctl model` (the twinctl executable)")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    ap.add_argument("--keep", help="keep the .twm files in this directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = a.keep or tmpdir
        os.makedirs(tmp, exist_ok=True)
        runs = [(n, lambda n=n, c=c: check(n, *c, a.eval, tmp, a.verbose))
                for n, c in cases().items()]
        runs += [("svc_ties", lambda: check_ties(a.eval, tmp, a.verbose)),
                 ("nan", lambda: check_nan(a.eval, tmp, a.verbose)),
                 ("thresholds", lambda: check_thresholds(a.eval, tmp, a.verbose)),
                 ("refusals", lambda: check_refusals(a.verbose)),
                 ("lstm", lambda: check_lstm(a.eval, tmp, a.verbose))]
        if a.twinctl:
            runs.append(("twinctl", lambda: check_twinctl(a.twinctl, tmp, a.verbose)))
        for name, run in runs:
            if a.only and a.only not in name:
                continue
            try:
                run()
            except Exception as e:  # report every case, then fail
                failures += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    if failures:
        print(f"{failures} parity case(s) failed")
        return 1
    print("parity: all cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
