"""Metrics (ltsei.learn.metrics) against scikit-learn on random predictions (zero_division=0 convention)."""
import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ltsei.learn.metrics import compute_metrics, confusion_matrix

GROUPS = {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9], "rule": "hand-made for the test"}


def sk_reference(y_true, y_pred, C):
    rec = skm.recall_score(y_true, y_pred, labels=range(C), average=None, zero_division=0)
    with warnings.catch_warnings():                       # "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore")
        bacc = skm.balanced_accuracy_score(y_true, y_pred)
    return dict(
        acc=skm.accuracy_score(y_true, y_pred),
        balanced_acc=bacc,
        macro_f1=skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        recall=rec,
        cm=skm.confusion_matrix(y_true, y_pred, labels=range(C)),
    )


def check(y_true, y_pred, C, groups):
    m = compute_metrics(y_true, y_pred, C, groups)
    ref = sk_reference(np.asarray(y_true), np.asarray(y_pred), C)
    assert m["acc"] == pytest.approx(ref["acc"])
    assert m["balanced_acc"] == pytest.approx(ref["balanced_acc"])
    assert m["macro_f1"] == pytest.approx(ref["macro_f1"])
    np.testing.assert_allclose(m["per_class_recall"], ref["recall"])
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, C), ref["cm"])
    assert m["per_class_support"] == np.bincount(np.asarray(y_true), minlength=C).tolist()
    present = np.bincount(np.asarray(y_true), minlength=C) > 0
    r = ref["recall"][present]
    gm = 0.0 if (r == 0).any() else float(np.prod(r) ** (1 / len(r)))
    assert m["gmean"] == pytest.approx(gm)
    for g in ("many", "medium", "few"):
        ids = [c for c in groups[g] if present[c]]
        if ids:
            assert m[f"{g}_acc"] == pytest.approx(ref["recall"][ids].mean())
        else:
            assert m[f"{g}_acc"] is None
    for k in ("acc", "balanced_acc", "macro_f1", "gmean", "many_acc", "medium_acc", "few_acc"):
        assert m[k] is None or (type(m[k]) is float and 0.0 <= m[k] <= 1.0)
    assert all(type(v) is float for v in m["per_class_recall"])
    json.dumps(m)
    return m


@pytest.mark.parametrize("seed", range(5))
def test_random_predictions_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    C = 10
    y_true = np.repeat(np.arange(C), 30)
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, C, y_true.size))
    m = check(y_true, y_pred, C, GROUPS)
    assert m["gmean"] > 0


def test_class_absent_from_predictions():
    rng = np.random.default_rng(10)
    C = 10
    y_true = np.repeat(np.arange(C), 20)
    y_pred = rng.integers(0, C - 2, y_true.size)          # classes 8, 9 never predicted: precision 0/0 := 0
    m = check(y_true, y_pred, C, GROUPS)
    assert m["per_class_recall"][8] == 0.0 and m["per_class_recall"][9] == 0.0
    assert m["gmean"] == 0.0


def test_class_absent_from_labels():
    rng = np.random.default_rng(11)
    C = 10
    y_true = rng.integers(0, 7, 300)                      # classes 7, 8, 9 have no test samples
    y_pred = rng.integers(0, C, 300)
    m = check(y_true, y_pred, C, GROUPS)
    assert m["few_acc"] is None                           # the 'few' group has no evaluated class
    assert m["per_class_support"][7:] == [0, 0, 0]


def test_perfect_and_empty_group():
    y = np.arange(10).repeat(3)
    m = compute_metrics(y, y, 10, {"many": list(range(10)), "medium": [], "few": []})
    assert m["acc"] == m["balanced_acc"] == m["macro_f1"] == m["gmean"] == m["many_acc"] == 1.0
    assert m["medium_acc"] is None and m["few_acc"] is None


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 10, 200)
    y_pred = rng.integers(0, 10, 200)
    a = compute_metrics(y_true, y_pred, 10, GROUPS)
    b = compute_metrics(torch.from_numpy(y_true), torch.from_numpy(y_pred).int(), 10, GROUPS)
    c = compute_metrics(y_true.tolist(), y_pred.tolist(), 10, GROUPS)
    assert a == b == c


def test_errors():
    with pytest.raises(ValueError, match="length"):
        compute_metrics([0, 1], [0], 2, GROUPS)
    with pytest.raises(ValueError, match="y_pred"):
        compute_metrics([0, 1], [0, 2], 2, {"many": [0], "medium": [1], "few": []})
    with pytest.raises(ValueError, match="few"):
        compute_metrics([0, 1], [0, 1], 2, {"many": [0], "medium": [1]})
    with pytest.raises(ValueError, match="groups"):
        compute_metrics([0, 1], [0, 1], 2, {"many": [0], "medium": [1], "few": [5]})
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], 2, {"many": [0], "medium": [1], "few": []})
    with pytest.raises(ValueError, match="integer"):
        compute_metrics(np.array([0.0, 1.0]), np.array([0, 1]), 2, {"many": [0], "medium": [1], "few": []})
