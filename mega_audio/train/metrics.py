"""Downstream scores in numpy (accuracy, macro-F1, mAP, ROC-AUC, log loss) and per-class precision / recall / F1."""

from __future__ import annotations

from typing import Any

import numpy as np

EVAL_MODES = ("chunks", "whole")
# a clip longer than the training window is scored by its windows (logits or embeddings averaged): `whole` would show
# the model lengths it never saw in training (30 s GTZAN clips to a model trained on 10 s windows)
DEFAULT_EVAL_MODE = "chunks"

# ---------------------------------------------------------------------------------------------
# single-label: y_true, y_pred are class ids (N,)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: rows are the true class, columns the predicted one."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class (precision, recall, F1, support) from a confusion matrix; 0 where a denominator is 0."""
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return precision, recall, f1, support


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes that occur in the truth or the predictions (sklearn's convention),
    so a small test split is not penalised for classes it does not hold."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        return float("nan")
    n_classes = n_classes or int(max(y_true.max(), y_pred.max())) + 1
    f1 = precision_recall_f1(confusion_matrix(y_true, y_pred, n_classes))[2]
    present = np.union1d(y_true, y_pred)
    return float(f1[present].mean())


# ---------------------------------------------------------------------------------------------
# multi-label: targets (N, C) 0/1, scores (N, C) real; ties between scores are handled exactly


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall steps: sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
    target, score = np.asarray(target, dtype=bool), np.asarray(score, dtype=np.float64)
    if not target.any():
        return float("nan")
    order = np.argsort(-score, kind="stable")
    target, score = target[order], score[order]
    last_of_tie = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]  # equal scores pass the threshold together
    tp = np.cumsum(target)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / target.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_x))[0] + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U)."""
    target, score = np.asarray(target, dtype=bool), np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_over_classes(fn, targets: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    per_class = np.array([fn(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
    defined = ~np.isnan(per_class)
    return (float(per_class[defined].mean()) if defined.any() else float("nan")), per_class


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the classes with at least one positive (AudioSet's convention)."""
    return _mean_over_classes(average_precision, np.asarray(targets), np.asarray(scores))[0]


def macro_roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over the classes with both positives and negatives."""
    return _mean_over_classes(roc_auc, np.asarray(targets), np.asarray(scores))[0]


# ---------------------------------------------------------------------------------------------
# one entry point per task kind


def score(targets: np.ndarray, scores: np.ndarray, multi_label: bool) -> dict[str, float]:
    """Single-label: targets (N,) ids, scores (N, C) -> accuracy, macro_f1. Multi-label: targets (N, C) -> map, roc_auc."""
    if multi_label:
        return {"map": mean_average_precision(targets, scores), "roc_auc": macro_roc_auc(targets, scores)}
    predictions = np.asarray(scores).argmax(axis=1)
    return {"accuracy": accuracy(targets, predictions), "macro_f1": macro_f1(targets, predictions, scores.shape[1])}


def per_class_report(targets: np.ndarray, scores: np.ndarray, labels: list[str], multi_label: bool,
                     threshold: float = 0.5) -> list[dict[str, Any]]:
    """A row per class that occurs in the truth or the predictions: support, precision, recall, F1
    (prediction = argmax, or sigmoid >= threshold when multi-label, where AP and ROC-AUC are added)."""
    scores = np.asarray(scores)
    if multi_label:
        truth, predicted = np.asarray(targets, dtype=bool), scores >= threshold
    else:
        n = len(labels)
        truth = np.eye(n, dtype=bool)[np.asarray(targets, dtype=np.int64)]  # (N, C) one-hot
        predicted = np.eye(n, dtype=bool)[scores.argmax(axis=1)]
    tp, fp, fn = (truth & predicted).sum(0), (~truth & predicted).sum(0), (truth & ~predicted).sum(0)
    rows = []
    for c in np.nonzero(truth.any(0) | predicted.any(0))[0]:
        p = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        r = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0
        row = {"label": labels[c], "support": int(truth[:, c].sum()), "precision": round(float(p), 6),
               "recall": round(float(r), 6), "f1": round(float(2 * p * r / (p + r)) if p + r else 0.0, 6)}
        if multi_label:
            row.update(ap=average_precision(truth[:, c], scores[:, c]), roc_auc=roc_auc(truth[:, c], scores[:, c]))
        rows.append(row)
    return rows


def log_loss(targets: np.ndarray, scores: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy (or binary cross-entropy) of the probabilities: breaks ties between equally accurate epochs."""
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    if not len(p):
        return float("nan")
    if multi_label:
        return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(p)), targets]).mean())
