"""Anomaly / OOD metrics against hand-computed cases, brute-force definitions and scikit-learn."""
import numpy as np
import pytest

from ebm_jax.evaluation import anomaly


def test_hand_computed_case():
    normal, anomalous = [0.1, 0.4], [0.35, 0.8]
    # pairs (anomaly > normal): 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 -> 3 of 4
    assert anomaly.auroc(normal, anomalous) == pytest.approx(0.75)
    # ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3
    assert anomaly.average_precision(normal, anomalous) == pytest.approx(0.5 + 1 / 3)
    # the curve's points (recall, precision): (0, 1), (0.5, 1), (0.5, 0.5), (1, 2/3), (1, 0.5)
    # trapezoids: 0.5 * 1 + 0 + 0.5 * (0.5 + 2/3) / 2 + 0
    assert anomaly.auprc_trapezoid(normal, anomalous) == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3))
    # TPR >= 0.8 needs both anomalies, threshold 0.35, which also flags 0.4: FPR = 1/2
    assert anomaly.fpr_at_tpr(normal, anomalous, 0.8) == pytest.approx(0.5)
    assert anomaly.auroc(anomalous, normal) == pytest.approx(0.25)


def test_auroc_is_the_pairwise_probability_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 40).astype(float)      # many ties
    b = rng.integers(2, 9, 30).astype(float)
    pairs = np.mean((b[None, :] > a[:, None]) + 0.5 * (b[None, :] == a[:, None]))
    assert anomaly.auroc(a, b) == pytest.approx(pairs, abs=1e-12)


def brute_force_ap(normal, anomalous):
    s = np.r_[normal, anomalous]
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        flagged = s >= t
        recall = y[flagged].sum() / y.sum()
        precision = y[flagged].sum() / flagged.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def brute_force_fpr(normal, anomalous, tpr):
    s = np.r_[normal, anomalous]
    best = 1.0
    for t in set(s):
        if np.mean(np.asarray(anomalous) >= t) >= tpr:
            best = min(best, np.mean(np.asarray(normal) >= t))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_and_fpr80_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    normal = np.round(rng.normal(size=50), 1)      # rounded: ties across the classes
    anomalous = np.round(rng.normal(0.8, 1.0, size=20), 1)
    assert anomaly.average_precision(normal, anomalous) == pytest.approx(brute_force_ap(normal, anomalous), abs=1e-12)
    assert anomaly.fpr_at_tpr(normal, anomalous, 0.8) == pytest.approx(brute_force_fpr(normal, anomalous, 0.8))


def test_precision_recall_f1_at_the_flagged_fraction():
    scores = np.arange(10.0)                       # the top 20% (8, 9) are flagged
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    p, r, f1 = anomaly.precision_recall_f1(scores, labels, 0.2)
    assert (p, r) == (0.5, 0.5) and f1 == pytest.approx(0.5)


def test_bad_scores_are_one_sentence_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        anomaly.auroc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="at least one score"):
        anomaly.average_precision([], [1.0])
    with pytest.raises(ValueError, match="at least one score"):
        anomaly.auprc_trapezoid([1.0], [])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_against_scikit_learn_with_ties(seed):
    """Every metric against scikit-learn on random scores rounded so that many tie, within and across
    the classes; the KDD99 protocol as MEG's code writes it (np.percentile, flagged if >=)."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    normal = np.round(rng.normal(size=300), 1)
    anomalous = np.round(rng.normal(0.7, 1.2, size=120), 1)
    scores = np.r_[normal, anomalous]
    labels = np.r_[np.zeros(len(normal), int), np.ones(len(anomalous), int)]
    assert anomaly.auroc(normal, anomalous) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert anomaly.average_precision(normal, anomalous) == pytest.approx(
        metrics.average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    assert anomaly.auprc_trapezoid(normal, anomalous) == pytest.approx(metrics.auc(recall, precision), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    assert anomaly.fpr_at_tpr(normal, anomalous, 0.8) == pytest.approx(np.min(fpr[tpr >= 0.8]), abs=1e-12)
    for fraction in (0.2, 0.3):
        flags = (scores >= np.percentile(scores, 100 * (1 - fraction))).astype(int)
        p, r, f1, _ = metrics.precision_recall_fscore_support(labels, flags, average="binary")
        assert anomaly.precision_recall_f1(scores, labels, fraction) == pytest.approx((p, r, f1), abs=1e-12)
