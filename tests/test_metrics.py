import numpy as np
import pytest
from sklearn import metrics as skm

from smallct.metrics import binary_metrics, bootstrap_ci, multiclass_metrics, roc_auc, summarize_folds


@pytest.fixture
def preds():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    p = np.clip(0.3 * y + rng.random(120) * 0.7, 0, 1)
    p[:10] = 0.5  # ties
    return y, p


def test_binary_metrics_match_scikit_learn(preds):
    y, p = preds
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert np.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    y = np.arange(60) % 3
    P = rng.dirichlet([1, 1, 1], 60)
    P[np.arange(60), y] += 0.5
    P /= P.sum(1, keepdims=True)
    m = multiclass_metrics(y, P)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, P.argmax(1)))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr"))


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)

    def acc(y, p):
        return {"accuracy": float((y == (p > 0.5)).mean())}

    widths = []
    for n in (40, 400):
        y = rng.integers(0, 2, n)
        p = np.where(rng.random(n) < 0.8, y, 1 - y).astype(float)
        lo, hi = bootstrap_ci(y, p, acc, n_boot=500, seed=0)["accuracy"]
        assert lo <= acc(y, p)["accuracy"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10)
    # 40 test images at 97.5%: the interval is wide, as users must see
    y = np.array([1] * 20 + [0] * 20)
    p = y.astype(float)
    p[0] = 0.0
    lo, hi = bootstrap_ci(y, p, acc, n_boot=1000)["accuracy"]
    assert lo < 0.95 and hi == 1.0


def test_summarize_folds():
    s = summarize_folds([{"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": 1.0}])
    assert s["accuracy"]["mean"] == pytest.approx(0.9) and s["accuracy"]["std"] == pytest.approx(0.1)
