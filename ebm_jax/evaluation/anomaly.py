"""Anomaly and out-of-distribution metrics from scores (higher = more anomalous), in numpy.

  auroc(scores_normal, scores_anomalous)    area under the ROC curve, ties counted as one half
  auprc_trapezoid(scores_normal, scores_anomalous)   area under the precision-recall curve by the
                                            trapezoid rule, sklearn's auc(recall, precision) over
                                            precision_recall_curve: what MEG's and Zenati et al.'s code report
  average_precision(scores_normal, scores_anomalous) the step-wise area (sklearn's average_precision_score)
  fpr_at_tpr(scores_normal, scores_anomalous, 0.8)   false-positive rate at 80% true positives (FPR80)
  precision_recall_f1(scores, labels, fraction)      at the threshold flagging `fraction` of the rows
"""
import numpy as np


def _labelled(scores_normal, scores_anomalous):
    s = np.concatenate([np.asarray(scores_normal, np.float64).ravel(), np.asarray(scores_anomalous, np.float64).ravel()])
    y = np.concatenate([np.zeros(np.size(scores_normal)), np.ones(np.size(scores_anomalous))])
    if not np.all(np.isfinite(s)):
        raise ValueError("anomaly scores contain NaN or infinite values; the model's energies are not finite there.")
    if np.size(scores_normal) == 0 or np.size(scores_anomalous) == 0:
        raise ValueError("both the normal and the anomalous set need at least one score.")
    return s, y


def auroc(scores_normal, scores_anomalous) -> float:
    """P(score of a random anomaly > score of a random normal example) + P(tie) / 2, by ranks (the
    Mann-Whitney U statistic)."""
    s, y = _labelled(scores_normal, scores_anomalous)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = 0.5 * (a + b - 1) + 1.0
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _curve(s, y):
    """Precision / recall / FPR at every distinct threshold, scores sorted in decreasing order."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    return tp, fp, y.sum(), len(y) - y.sum()


def average_precision(scores_normal, scores_anomalous) -> float:
    """Average precision: sum over thresholds of (recall_k - recall_{k-1}) * precision_k (as
    sklearn.metrics.average_precision_score, anomalies positive)."""
    s, y = _labelled(scores_normal, scores_anomalous)
    tp, fp, n_pos, _ = _curve(s, y)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auprc_trapezoid(scores_normal, scores_anomalous) -> float:
    """Area under the precision-recall curve by the trapezoid rule between the curve's points, one
    per distinct threshold, starting from (recall 0, precision 1): sklearn's
    auc(*precision_recall_curve(...)[1::-1]) as MEG's and Zenati et al.'s evaluation code computes
    its AUPRC. Linear interpolation of precision is optimistic between distant thresholds, so it is
    at least the average precision on most curves."""
    s, y = _labelled(scores_normal, scores_anomalous)
    tp, fp, n_pos, _ = _curve(s, y)
    precision = np.r_[1.0, tp / (tp + fp)]
    recall = np.r_[0.0, tp / n_pos]
    return float(np.sum(np.diff(recall) * 0.5 * (precision[1:] + precision[:-1])))


def fpr_at_tpr(scores_normal, scores_anomalous, tpr: float = 0.8) -> float:
    """The smallest false-positive rate among thresholds whose true-positive rate is >= tpr."""
    s, y = _labelled(scores_normal, scores_anomalous)
    tp, fp, n_pos, n_neg = _curve(s, y)
    ok = tp / n_pos >= tpr
    return float(np.min(fp[ok] / n_neg))


def precision_recall_f1(scores, labels, fraction: float):
    """Precision, recall and F1 of the anomalies (labels 1) when the `fraction` of rows with the
    highest scores is flagged (the DAGMM / MEG KDD99 protocol: the threshold is the score's
    (1 - fraction) quantile, and rows scoring AT it are flagged too, as MEG's KDD99 code does with
    np.percentile and `>=`, which matters for tied scores)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    threshold = np.quantile(scores, 1.0 - fraction)
    flagged = scores >= threshold
    tp = np.sum(flagged & labels)
    precision = tp / max(np.sum(flagged), 1)
    recall = tp / max(np.sum(labels), 1)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return float(precision), float(recall), float(f1)


def ood_metrics(scores_in, scores_out, prefix: str) -> dict:
    """AUROC, AUPRC (trapezoid), average precision and FPR80 of separating out-of-distribution
    (positive) from in-distribution data."""
    return {f"{prefix}/auroc": auroc(scores_in, scores_out),
            f"{prefix}/auprc_trapezoid": auprc_trapezoid(scores_in, scores_out),
            f"{prefix}/average_precision": average_precision(scores_in, scores_out),
            f"{prefix}/fpr80": fpr_at_tpr(scores_in, scores_out, 0.8)}
