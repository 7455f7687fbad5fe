#!/usr/bin/python3
"""export.py: writes a fitted scikit-learn estimator or Pipeline, or a PyTorch LSTM state_dict,
as a .twm model file (twins/models/FORMAT.md) that twinhub's C runtime predicts with exactly as
scikit-learn does. It refuses, with the reason, whatever it cannot reproduce exactly.

    export.py MODEL.pkl OUT.twm                  a pickled estimator or Pipeline
    export.py STATE.npz OUT.twm --window 60      an LSTM state_dict (.npz, .msgpack; .pt needs
                                                 torch) with a linear head
    python3 -c 'import export; export.export(est, "out.twm")'

Runs with Debian's python3, python3-sklearn (1.2) and python3-msgpack; torch only for .pt.
Exit codes: 0 written, 1 refused (the reason on stderr), 2 usage.
"""
import argparse
import math
import pickle
import re
import sys

import msgpack
import numpy as np

FORMAT = "twinhub-model"
VERSION = 1


class ExportError(Exception):
    """The estimator can't be written as a .twm that predicts exactly like it."""


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

def _floats(a, what):
    a = np.asarray(a, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise ExportError(f"{what} holds a NaN or infinite value")
    return [float(v) for v in a]


def _ints(a):
    return [int(v) for v in np.asarray(a).ravel()]


def _classes(classes):
    c = np.asarray(classes)
    if c.dtype.kind in "iub":
        if np.any(np.abs(c.astype(np.float64)) > 2**53):
            raise ExportError("class labels beyond 2**53 can't be held as doubles exactly")
        return [int(v) for v in c]
    if c.dtype.kind == "f":
        return _floats(c, "classes_")
    if c.dtype.kind in "OUS":
        if all(isinstance(v, str) for v in c):
            return [str(v) for v in c]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in c):
            return [int(v) for v in c]
        raise ExportError("class labels must be all numbers or all strings")
    raise ExportError(f"class labels of dtype {c.dtype} are not supported")


def _name(est):
    return type(est).__name__


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------

def _prep(step):
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if isinstance(step, StandardScaler):
        if not hasattr(step, "n_features_in_"):
            raise ExportError("StandardScaler is not fitted")
        return {
            "type": "standard",
            "mean": None if step.mean_ is None or not step.with_mean
            else _floats(step.mean_, "StandardScaler.mean_"),
            "scale": None if step.scale_ is None or not step.with_std
            else _floats(step.scale_, "StandardScaler.scale_"),
        }, step.n_features_in_
    if isinstance(step, MinMaxScaler):
        if not hasattr(step, "n_features_in_"):
            raise ExportError("MinMaxScaler is not fitted")
        lo, hi = step.feature_range
        return {
            "type": "minmax",
            "scale": _floats(step.scale_, "MinMaxScaler.scale_"),
            "min": _floats(step.min_, "MinMaxScaler.min_"),
            "clip": [float(lo), float(hi)] if step.clip else None,
        }, step.n_features_in_
    raise ExportError(f"pipeline step {_name(step)}: only StandardScaler and MinMaxScaler "
                      "can precede the estimator")


def _split(est):
    from sklearn.pipeline import Pipeline

    if not isinstance(est, Pipeline):
        return [], est
    *pre, (_, final) = est.steps
    steps = [s for _, s in pre if s is not None and s != "passthrough"]
    if final is None or final == "passthrough":
        raise ExportError("the pipeline ends without an estimator")
    if isinstance(final, Pipeline):
        inner, final = _split(final)
        steps += inner
    return steps, final


# ---------------------------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------------------------

LINEAR_REGRESSORS = {"LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet",
                     "ElasticNetCV", "SGDRegressor", "LinearSVR", "HuberRegressor"}
LINEAR_CLASSIFIERS = {"LogisticRegression", "LogisticRegressionCV", "LinearSVC",
                      "RidgeClassifier", "RidgeClassifierCV"}
SVMS = {"SVC": "c_svc", "NuSVC": "nu_svc", "SVR": "epsilon_svr", "NuSVR": "nu_svr"}
TREES = {"DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier",
         "ExtraTreeRegressor"}
FORESTS = {"RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
           "ExtraTreesRegressor"}
BOOSTS = {"GradientBoostingClassifier", "GradientBoostingRegressor"}
MLPS = {"MLPClassifier", "MLPRegressor"}


def _linear(est):
    coef = np.asarray(est.coef_, dtype=np.float64)
    outputs = 1 if coef.ndim == 1 else coef.shape[0]
    intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64), (outputs,))
    return {"kind": "linear", "outputs": outputs,
            "coef": _floats(coef, "coef_"), "intercept": _floats(intercept, "intercept_")}


def _logistic_proba(est):
    """Which predict_proba LogisticRegression.predict_proba takes (sklearn 1.2's rule)."""
    if _name(est) not in ("LogisticRegression", "LogisticRegressionCV"):
        return "none"
    ovr = est.multi_class in ("ovr", "warn") or (
        est.multi_class == "auto"
        and (est.classes_.size <= 2 or est.solver in ("liblinear", "newton-cholesky")))
    return "ovr" if ovr else "softmax"


def _logistic(est):
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
    n_classes = len(est.classes_)
    if n_classes < 2:
        raise ExportError(f"{_name(est)} with fewer than 2 classes")
    rows = 1 if n_classes == 2 else n_classes
    if coef.shape[0] != rows:
        raise ExportError(f"coef_ has {coef.shape[0]} rows, expected {rows} (multilabel?)")
    intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64), (rows,))
    return {"kind": "logistic", "outputs": 1, "classes": _classes(est.classes_),
            "proba": _logistic_proba(est),
            "coef": _floats(coef, "coef_"), "intercept": _floats(intercept, "intercept_")}


def _svm(est):
    kernel = est.kernel
    if callable(kernel) or kernel not in ("linear", "rbf", "poly", "sigmoid"):
        raise ExportError(f"{_name(est)} kernel {kernel!r}: only linear, rbf, poly, sigmoid")
    if est._sparse:
        raise ExportError(f"{_name(est)} fitted on sparse input is not supported")
    svm_type = SVMS[_name(est)]
    sv = np.asarray(est.support_vectors_, dtype=np.float64)
    d = {"kind": "svm", "outputs": 1, "svm_type": svm_type, "kernel": kernel,
         "gamma": float(est._gamma), "coef0": float(est.coef0), "degree": int(est.degree),
         "n_sv": int(sv.shape[0]),
         "support_vectors": _floats(sv, "support_vectors_"),
         "dual_coef": _floats(est._dual_coef_, "dual_coef_"),
         "intercept": _floats(est._intercept_, "intercept_")}
    if svm_type in ("c_svc", "nu_svc"):
        if est.break_ties and est.decision_function_shape == "ovo":
            raise ExportError("break_ties=True with decision_function_shape='ovo' can't predict "
                              "in scikit-learn either")
        d["classes"] = _classes(est.classes_)
        d["n_support"] = _ints(est._n_support)
        d["decision_shape"] = est.decision_function_shape
        d["break_ties"] = bool(est.break_ties)
        if est.probability:
            d["prob_a"] = _floats(est._probA, "probA_")
            d["prob_b"] = _floats(est._probB, "probB_")
    return d


def _tree_dict(tree, what, width):
    t = tree.tree_
    value = np.asarray(t.value, dtype=np.float64)
    if value.shape[1] * value.shape[2] != width:
        raise ExportError(f"{what}: nodes hold {value.shape[1]}x{value.shape[2]} values, "
                          f"expected {width}")
    left = np.asarray(t.children_left)
    feature = np.where(left >= 0, t.feature, 0)
    threshold = np.where(left >= 0, t.threshold, 0.0)
    return {"left": _ints(left), "right": _ints(t.children_right), "feature": _ints(feature),
            "threshold": _floats(threshold, f"{what}.threshold"),
            "value": _floats(value, f"{what}.value")}


def _trees(est):
    name = _name(est)
    classifier = hasattr(est, "classes_")
    d = {"kind": "tree"}
    if name in BOOSTS:
        if classifier:
            d["classes"] = _classes(est.classes_)
        return _boost(est, d)
    if classifier:
        if getattr(est, "n_outputs_", 1) != 1:
            raise ExportError(f"{name} with several outputs (multi-output classification)")
        d["classes"] = _classes(est.classes_)
        width = len(est.classes_)
        d["outputs"] = 1
    else:
        d["outputs"] = int(est.n_outputs_)
        width = d["outputs"]
    if name in TREES:
        d["ensemble"] = "single"
        trees = [est]
    else:
        d["ensemble"] = "forest"
        trees = list(est.estimators_)
    d["trees"] = [_tree_dict(t, f"trees[{i}]", width) for i, t in enumerate(trees)]
    return d


def _boost(est, d):
    if est.init not in (None, "zero"):
        raise ExportError("GradientBoosting with a custom init estimator: its predictions are "
                          "not constant")
    loss = type(est._loss).__name__
    links = {"LeastSquaresError": "identity", "LeastAbsoluteError": "identity",
             "HuberLossFunction": "identity", "QuantileLossFunction": "identity",
             "BinomialDeviance": "logistic", "MultinomialDeviance": "softmax",
             "ExponentialLoss": "exponential"}
    if loss not in links:
        raise ExportError(f"GradientBoosting loss {loss} is not supported")
    stages = est.estimators_
    k = stages.shape[1]
    init = est._raw_predict_init(np.zeros((1, est.n_features_in_), dtype=np.float32))
    d["ensemble"] = "boost"
    d["outputs"] = 1
    d["link"] = links[loss]
    d["per_stage"] = int(k)
    d["learning_rate"] = float(est.learning_rate)
    d["init"] = _floats(init[0], "init")
    d["trees"] = [_tree_dict(stages[i, j], f"estimators_[{i},{j}]", 1)
                  for i in range(stages.shape[0]) for j in range(k)]
    return d


def _mlp(est):
    acts = ("identity", "logistic", "tanh", "relu")
    if est.activation not in acts:
        raise ExportError(f"MLP activation {est.activation!r} is not supported")
    d = {"kind": "mlp", "activation": est.activation, "out_activation": est.out_activation_,
         "layers": [{"n_in": int(c.shape[0]), "n_out": int(c.shape[1]),
                     "coef": _floats(c, f"coefs_[{i}]"),
                     "intercept": _floats(b, f"intercepts_[{i}]")}
                    for i, (c, b) in enumerate(zip(est.coefs_, est.intercepts_))]}
    if _name(est) == "MLPClassifier":
        lb = est._label_binarizer
        if lb.y_type_ not in ("binary", "multiclass"):
            raise ExportError(f"MLPClassifier on {lb.y_type_} targets is not supported")
        if len(est.classes_) < 2:
            raise ExportError("MLPClassifier with a single class")
        d["classes"] = _classes(est.classes_)
        d["outputs"] = 1
    else:
        d["outputs"] = int(est.n_outputs_)
    return d


def to_dict(estimator):
    """The .twm content of a fitted estimator or Pipeline, as a dict (raises ExportError)."""
    pre, est = _split(estimator)
    name = _name(est)
    if name in LINEAR_REGRESSORS:
        d = _linear(est)
    elif name in LINEAR_CLASSIFIERS:
        d = _logistic(est)
    elif name in SVMS:
        d = _svm(est)
    elif name in TREES or name in FORESTS or name in BOOSTS:
        d = _trees(est)
    elif name in MLPS:
        d = _mlp(est)
    else:
        raise ExportError(f"{name}: not an estimator export.py can reproduce exactly")
    if not hasattr(est, "n_features_in_"):
        raise ExportError(f"{name} is not fitted")
    n_features = int(est.n_features_in_)
    steps = []
    for s in pre:
        p, n = _prep(s)
        if n != n_features:
            raise ExportError(f"{_name(s)} takes {n} features, the estimator {n_features}")
        steps.append(p)
    out = {"format": FORMAT, "version": VERSION, "kind": d.pop("kind"), "estimator": name,
           "n_features": n_features, "outputs": d.pop("outputs")}
    if steps:
        out["preprocess"] = steps
    out.update(d)
    return out


def _write(d, path):
    data = msgpack.packb(d, use_bin_type=True)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def export(estimator, path):
    """Writes a fitted estimator or Pipeline to `path` as .twm; raises ExportError."""
    return _write(to_dict(estimator), path)


# ---------------------------------------------------------------------------------------------
# LSTM (PyTorch state_dict)
# ---------------------------------------------------------------------------------------------

def lstm_to_dict(state, window, lstm_prefix=None, head_prefix=None, preprocess=None):
    """The .twm content of an nn.LSTM (batch of one window, last step's hidden state) followed by
    an nn.Linear head, from its state_dict (names -> arrays). `preprocess`: fitted scalers
    (StandardScaler, MinMaxScaler) applied to every step, in order."""
    state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v,
                           dtype=np.float64) for k, v in state.items()}
    if lstm_prefix is None:
        found = {m.group(1) for k in state for m in [re.match(r"(.*)weight_ih_l0$", k)] if m}
        if len(found) != 1:
            raise ExportError(f"found {len(found)} LSTMs in the state_dict; name one with "
                              "--lstm-prefix")
        lstm_prefix = found.pop()
    for k in state:
        if k.startswith(lstm_prefix) and ("_reverse" in k or "weight_hr" in k):
            raise ExportError("bidirectional LSTMs and proj_size are not supported")
    layers = []
    while f"{lstm_prefix}weight_ih_l{len(layers)}" in state:
        n = len(layers)
        w_ih = state[f"{lstm_prefix}weight_ih_l{n}"]
        w_hh = state[f"{lstm_prefix}weight_hh_l{n}"]
        hidden = w_hh.shape[1]
        b_ih = state.get(f"{lstm_prefix}bias_ih_l{n}", np.zeros(4 * hidden))
        b_hh = state.get(f"{lstm_prefix}bias_hh_l{n}", np.zeros(4 * hidden))
        if w_hh.shape != (4 * hidden, hidden) or b_ih.shape != (4 * hidden,) or \
                b_hh.shape != (4 * hidden,) or w_ih.ndim != 2 or w_ih.shape[0] != 4 * hidden:
            raise ExportError(f"layer {n}: weights are not shaped like nn.LSTM's")
        if layers and w_ih.shape[1] != layers[-1]["hidden"]:
            raise ExportError(f"layer {n} takes {w_ih.shape[1]} inputs, layer {n - 1} gives "
                              f"{layers[-1]['hidden']}")
        layers.append({"hidden": int(hidden), "n_in": int(w_ih.shape[1]),
                       "w_ih": _floats(w_ih, f"weight_ih_l{n}"),
                       "w_hh": _floats(w_hh, f"weight_hh_l{n}"),
                       "b_ih": _floats(b_ih, f"bias_ih_l{n}"),
                       "b_hh": _floats(b_hh, f"bias_hh_l{n}")})
    if not layers:
        raise ExportError("no weight_ih_l0 in the state_dict")
    rest = [k for k in state if not k.startswith(lstm_prefix) and k.endswith("weight")
            and state[k].ndim == 2]
    if head_prefix is None:
        if len(rest) != 1:
            raise ExportError(f"found {len(rest)} candidate heads; name one with --head-prefix")
        head_prefix = rest[0][:-len("weight")]
    hw = state.get(f"{head_prefix}weight")
    hb = state.get(f"{head_prefix}bias")
    if hw is None or hw.ndim != 2 or hw.shape[1] != layers[-1]["hidden"]:
        raise ExportError(f"head {head_prefix!r}: no weight of shape (outputs, "
                          f"{layers[-1]['hidden']})")
    if hb is None:
        hb = np.zeros(hw.shape[0])
    n_features = layers[0]["n_in"]
    steps = []
    for s in preprocess or []:
        p, n = _prep(s)
        if n != n_features:
            raise ExportError(f"{_name(s)} takes {n} features, the LSTM {n_features}")
        steps.append(p)
    out = {"format": FORMAT, "version": VERSION, "kind": "lstm", "estimator": "torch.nn.LSTM",
           "n_features": int(n_features), "window": int(window), "outputs": int(hw.shape[0])}
    if steps:
        out["preprocess"] = steps
    out["layers"] = layers
    out["head"] = {"weight": _floats(hw, "head.weight"), "bias": _floats(hb, "head.bias")}
    return out


def export_lstm(state, path, window, lstm_prefix=None, head_prefix=None, preprocess=None):
    """Writes an LSTM state_dict (see lstm_to_dict) to `path` as .twm; raises ExportError."""
    return _write(lstm_to_dict(state, window, lstm_prefix, head_prefix, preprocess), path)


def load_state(path):
    """A state_dict from .npz, .msgpack ({name: {shape, data}}) or .pt (needs torch)."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".msgpack"):
        with open(path, "rb") as f:
            raw = msgpack.unpackb(f.read(), raw=False)
        return {k: np.asarray(v["data"], dtype=np.float64).reshape(v["shape"])
                for k, v in raw.items()}
    import torch  # only for .pt files

    return torch.load(path, map_location="cpu")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a fitted estimator as a twinhub .twm model.")
    ap.add_argument("model", help="MODEL.pkl (pickled estimator or Pipeline), or an LSTM "
                                  "state_dict: STATE.npz, STATE.msgpack, STATE.pt")
    ap.add_argument("out", help="the .twm file to write")
    ap.add_argument("--window", type=int, help="LSTM: time steps per sample")
    ap.add_argument("--lstm-prefix", help="LSTM: state_dict prefix of the nn.LSTM, e.g. 'lstm.'")
    ap.add_argument("--head-prefix", help="LSTM: state_dict prefix of the nn.Linear head")
    a = ap.parse_args(argv)
    try:
        if a.model.endswith((".npz", ".msgpack", ".pt")):
            if not a.window or a.window < 1:
                ap.error("an LSTM state_dict needs --window N")
            n = export_lstm(load_state(a.model), a.out, a.window, a.lstm_prefix, a.head_prefix)
        else:
            with open(a.model, "rb") as f:
                est = pickle.load(f)
            n = export(est, a.out)
    except ExportError as e:
        print(f"export.py: {a.model}: {e}", file=sys.stderr)
        return 1
    except (OSError, pickle.UnpicklingError, ValueError, KeyError) as e:
        print(f"export.py: {a.model}: {e}", file=sys.stderr)
        return 1
    print(f"export.py: wrote {a.out} ({n} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
