"""Downstream scores in numpy (accuracy, macro-F1, mAP, ROC-AUC), per-class reports, the confusion PNG and Table 1."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

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


def per_class_markdown(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in ("precision", "recall", "f1", "ap", "roc_auc") if rows and k in rows[0]]
    lines = ["| class | support | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for row in rows:
        lines.append(f"| {row['label']} | {row['support']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the confusion-matrix picture


def confusion_png_size(n_classes: int, dpi: int = 100) -> tuple[int, int]:
    """(height, width) in pixels of the PNG plot_confusion writes for n_classes (square, 4 to 20 inches)."""
    side = round(min(20.0, max(4.0, 2.0 + 0.45 * n_classes)) * dpi)
    return side, side


def plot_confusion(matrix: np.ndarray, labels: list[str], path: str | Path, title: str = "", dpi: int = 100) -> Path:
    """Row-normalised confusion matrix with counts in the cells, saved as a PNG of confusion_png_size pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    height, width = confusion_png_size(n, dpi)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)  # no bbox_inches="tight": the size stays exactly figsize * dpi
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Table 1: rows scratch / fine-tuned / fine-tuned + augmentation, column groups per (task, bitrate)

ROW_ORDER = ("scratch", "scratch + augmentation", "fine-tuned", "fine-tuned + augmentation", "frozen probe")
METRIC_NAMES = {"accuracy": "Acc", "macro_f1": "F1", "map": "mAP", "roc_auc": "AUC"}


def result_row(result: dict[str, Any]) -> str:
    """Which Table 1 row a results.json belongs to."""
    if result["config"].get("freeze"):
        return "frozen probe"
    row = "scratch" if not result.get("init") else "fine-tuned"
    return row + (" + augmentation" if result.get("augment", "none") != "none" else "")


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * float(np.mean(values))
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * float(np.std(values)):.1f}"


def table1(results: list[dict[str, Any]], split: str = "test") -> str:
    """Markdown in the paper's Table 1 layout; several runs of one cell (seeds) show mean ± std in percent."""
    cells: dict[tuple[str, str, float, str], list[float]] = defaultdict(list)
    groups: dict[tuple[str, float], list[str]] = {}
    for r in results:
        group = (r["task"], float(r["bitrate"]))
        groups[group] = list(r["metrics"][split])
        for metric, value in r["metrics"][split].items():
            cells[(result_row(r), r["task"], float(r["bitrate"]), metric)].append(value)
    columns = [(task, bitrate, m) for task, bitrate in sorted(groups) for m in groups[(task, bitrate)]]
    header = ["model"] + [f"{task} {bitrate:g} kbps {METRIC_NAMES.get(m, m)}" for task, bitrate, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    present_rows = {result_row(r) for r in results}
    for row in [r for r in ROW_ORDER if r in present_rows]:
        values = [_cell(cells.get((row, *column), [])) for column in columns]
        lines.append("| " + " | ".join([row, *values]) + " |")
    return "\n".join(lines) + "\n"


def load_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """results.json files, or directories holding one (searched recursively)."""
    results = []
    for path in map(Path, paths):
        files = sorted(path.rglob("results.json")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no results.json under {path}: pass the output_dir of `mega-audio finetune` runs")
        results += [json.loads(f.read_text()) for f in files]
    return results
