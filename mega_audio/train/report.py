"""Reports of fine-tuning runs: per-class tables (markdown), the confusion-matrix PNG, the files a run writes beside
its results.json, and Table 1 gathered from many runs (`mega-audio report`, configured by ReportConfig)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import option
from ..data.recipes import TASKS
from ..data.tasks import Task
from .metrics import DEFAULT_EVAL_MODE, confusion_matrix, per_class_report


@dataclass
class ReportConfig:
    results: list[str] = option([], "results.json files or folders holding them", positional=True)
    split: str = option("test", "which split's metrics to tabulate")
    out: str | None = option(None, "also write the markdown here")


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


def result_column(result: dict[str, Any]) -> str:
    """The column group's task name; a run scored another way (whole clips, another split) is not comparable with
    the default protocol, so it gets its own group, e.g. "gtzan (random split)"."""
    task = TASKS.get(result["task"])
    split = result.get("split")
    protocol = [f"{split} split"] if task and split and split != task.split_scheme(None) else []
    if result.get("config", {}).get("eval_mode", DEFAULT_EVAL_MODE) != DEFAULT_EVAL_MODE:
        protocol.append(f"{result['config']['eval_mode']} clips")
    return result["task"] + (f" ({', '.join(protocol)})" if protocol else "")


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
        group = (result_column(r), float(r["bitrate"]))
        groups[group] = list(r["metrics"][split])
        for metric, value in r["metrics"][split].items():
            cells[(result_row(r), *group, metric)].append(value)
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


def write_reports(output_dir: Path, evaluation: dict, task: Task, vocab: list[str]) -> dict[str, Any]:
    """per_class.json/.md for the test split, and for single-label tasks confusion.png; returns what results.json records."""
    targets, scores = evaluation["targets"], evaluation["scores"]
    rows = per_class_report(targets, scores, vocab, task.multi_label)
    (output_dir / "per_class.json").write_text(json.dumps(rows, indent=1) + "\n")
    (output_dir / "per_class.md").write_text(per_class_markdown(rows))
    if task.multi_label:
        return {"per_class": "per_class.json"}
    matrix = confusion_matrix(targets, scores.argmax(axis=1), len(vocab))
    shown = np.nonzero(matrix.sum(axis=0) + matrix.sum(axis=1))[0]  # classes in the truth or the predictions
    labels, matrix = [vocab[i] for i in shown], matrix[np.ix_(shown, shown)]
    plot_confusion(matrix, labels, output_dir / "confusion.png", title=f"{task.name}: test, n={evaluation['n']}")
    height, width = confusion_png_size(len(labels))
    confusion = {"labels": labels, "matrix": matrix.tolist(), "png": "confusion.png", "height": height, "width": width}
    return {"per_class": "per_class.json", "confusion": confusion}
