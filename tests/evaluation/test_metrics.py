import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from smallct.evaluation.intervals import bootstrap_ci
from smallct.evaluation.metrics import (binary_metrics, choose_threshold, classification_metrics, counted_figures,
                                       multiclass_metrics, roc_auc, summarize_folds)


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


def test_multiclass_metrics_are_right_and_quiet_when_a_test_fold_lacks_a_class():
    # Class 2 is absent from this fold, and predicted once (image 2). 0.3.0 warned twice (scikit-learn's
    # "y_pred contains classes not in y_true" and "Only one class is present"). Mutants caught: balanced accuracy
    # over all three classes (5/9), F1 over every class (the second fold), AUC over the classes present.
    y = np.array([0, 0, 0, 1, 1, 1])
    P = np.array([[.6, .3, .1], [.5, .2, .3], [.3, .3, .4], [.2, .7, .1], [.1, .6, .3], [.4, .5, .1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multiclass_metrics(y, P)
        two = multiclass_metrics(y[[0, 1, 3, 4]], P[[0, 1, 3, 4]])  # class 2 neither present nor predicted
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # the recalls of the classes present
    assert m["f1"] == pytest.approx((0.8 + 1 + 0) / 3)  # classes present or predicted; class 2: 0 right of 1
    assert np.isnan(m["roc_auc"])  # class 2's one-vs-rest AUC has no positives (as counted_figures says)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([.6, .5, .3, .7, .6, .5])))
    assert two["f1"] == two["balanced_accuracy"] == two["accuracy"] == 1.0


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)

    def acc(y, p):
        return {"accuracy": float((y == (p > 0.5)).mean())}

    widths = []
    for n in (40, 400):
        y = rng.integers(0, 2, n)
        p = np.where(rng.random(n) < 0.8, y, 1 - y).astype(float)
        lo, hi = bootstrap_ci(y, p, acc, n_boot=500, seed=0)["accuracy"]
        a = acc(y, p)["accuracy"]
        normal = 2 * 1.96 * np.sqrt(a * (1 - a) / n)  # the normal-approximation width for a proportion
        assert hi - lo == pytest.approx(normal, rel=0.2) and lo < a < hi
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


def test_choose_threshold_picks_the_most_accurate_cut_and_prefers_one_near_half():
    # separable below 0.5: any cut in (0.2, 0.3] is perfect; the midpoint 0.25 is the candidate nearest 0.5
    assert choose_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.25)
    # 0.5 is already perfect: it stays, although other cuts tie
    assert choose_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.5
    # noisy scores: as accurate as the best cut found by brute force over a fine grid
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, 300), 0, 1)
    t = choose_threshold(y, p)
    grid = np.linspace(0, 1, 2001)
    best = max(((p >= g) == y).mean() for g in grid)
    assert ((p >= t) == y).mean() == pytest.approx(best)
    assert t != 0.5 and ((p >= 0.5) == y).mean() < best


def test_choose_threshold_by_balanced_accuracy_keeps_the_minority_class():
    # 2 positives among 10: by accuracy 0.5 (every image negative, 0.8) ties with the cut below 0.33 and stays;
    # by balanced accuracy that cut wins: both positives caught at the cost of two negatives
    y = np.array([0] * 8 + [1] * 2)
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.36, 0.4, 0.33, 0.34])
    t_acc = choose_threshold(y, p)
    t_bal = choose_threshold(y, p, "balanced_accuracy")
    assert t_acc == 0.5 and ((p >= t_acc) == y).mean() == 0.8
    assert t_bal == pytest.approx(0.315)
    assert binary_metrics(y, p, t_bal)["balanced_accuracy"] > binary_metrics(y, p, t_acc)["balanced_accuracy"]
    with pytest.raises(ValueError, match="choose accuracy or balanced_accuracy"):
        choose_threshold(y, p, "f1")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_counted_figures_are_the_metrics_of_the_images_repeated(n_classes):
    # a bootstrap resample as counts: the figures must be classification_metrics' on the images taken that often.
    # Mutants caught: p > 0.5 instead of >= 0.5 (the 0.5 rows), ties in the AUC not halved (the copied scores), a
    # class absent from the resample kept in the balanced accuracy (rows of zero counts), counts ignored
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 60)
    P = rng.dirichlet(np.ones(n_classes), 60)
    P[:10] = P[10:20]  # tied scores
    if n_classes == 2:
        P[20:23] = 0.5  # on the threshold
    counts = rng.integers(0, 3, (40, 60))
    counts[0, y == 0] = 0  # one class missing: AUC undefined, balanced accuracy over the classes present
    counts[1] = 1  # every image once
    figures = counted_figures(y, P, counts)
    for b in range(len(counts)):
        idx = np.repeat(np.arange(60), counts[b])
        expected = classification_metrics(y[idx], P[idx])
        for name, values in figures.items():
            assert values[b] == pytest.approx(expected[name], abs=1e-12, nan_ok=True), (b, name)
    assert np.isnan(figures["roc_auc"][0]) and np.isfinite(figures["balanced_accuracy"][0])
