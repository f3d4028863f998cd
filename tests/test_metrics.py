"""Specifications of the downstream metrics (hand-computed values, ties included), per-class reports, the PNG and Table 1."""

import json

import numpy as np
import pytest

from mega_audio.train.metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    macro_f1,
    macro_roc_auc,
    mean_average_precision,
    per_class_report,
    roc_auc,
    score,
)
from mega_audio.train.report import confusion_png_size, load_results, plot_confusion, table1

Y_TRUE = np.array([0, 1, 2, 2, 1])
Y_PRED = np.array([0, 2, 2, 2, 1])


def test_accuracy_and_macro_f1_match_hand_computed_values():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 5)
    # class 0: P=1 R=1 F1=1; class 1: P=1 R=1/2 F1=2/3; class 2: P=2/3 R=1 F1=4/5
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)


def test_macro_f1_averages_classes_present_in_truth_or_predictions_only():
    assert macro_f1(Y_TRUE, Y_PRED, n_classes=5) == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    # class 1 is only ever predicted (wrongly): it counts, with F1 = 0
    assert macro_f1(np.array([0, 0]), np.array([0, 1])) == pytest.approx((2 / 3 + 0) / 2)


def test_confusion_matrix_rows_are_truth_columns_predictions():
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]


def test_average_precision_matches_hand_computed_values_and_treats_ties_as_one_threshold():
    # thresholds 0.9 (P=1, R=1/2) and 0.8 with a tie (P=2/3, R=1)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # the tie at 0.5 holds one positive and two negatives: P=1/3 at R=1/2, then P=2/4 at R=1.
    # Breaking the tie positive-first would give 0.75: ties must not be broken by position.
    assert average_precision([1, 0, 0, 1], [0.5, 0.5, 0.5, 0.2]) == pytest.approx(0.5 / 3 + 0.5 * 0.5)
    assert average_precision([0, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1 / 3)


def test_roc_auc_matches_hand_computed_values_with_ties_counting_one_half():
    # pairs (pos, neg): (.9,.8)=1 (.9,.1)=1 (.8,.8)=1/2 (.8,.1)=1
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1]) == pytest.approx(3.5 / 4)
    assert roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == pytest.approx(0.0)


def test_roc_auc_equals_the_pairwise_definition_on_random_tied_scores():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 60).astype(bool)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    pos, neg = scores[target], scores[~target]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(target, scores) == pytest.approx(pairwise)


def test_multi_label_means_skip_classes_without_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.8, 0.3, 0.5], [0.1, 0.4, 0.5]])
    assert mean_average_precision(targets, scores) == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert macro_roc_auc(targets, scores) == pytest.approx((0.875 + 1 / 3) / 2)
    assert set(score(targets, scores, multi_label=True)) == {"map", "roc_auc"}


def test_single_label_score_uses_the_argmax_of_the_scores():
    scores = np.eye(3)[Y_PRED] * 0.8 + 0.1
    assert score(Y_TRUE, scores, multi_label=False) == pytest.approx(
        {"accuracy": 4 / 5, "macro_f1": (1 + 2 / 3 + 4 / 5) / 3})


def test_per_class_report_lists_precision_recall_f1_of_each_class_present():
    rows = per_class_report(Y_TRUE, np.eye(4)[Y_PRED], ["a", "b", "c", "never"], multi_label=False)
    assert [r["label"] for r in rows] == ["a", "b", "c"]
    b = rows[1]
    assert (b["support"], b["precision"], b["recall"], b["f1"]) == (2, 1.0, 0.5, pytest.approx(2 / 3, abs=1e-6))


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_scikit_learn_on_random_cases_with_ties(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")  # the dev extra
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 60)), int(rng.integers(3, 7))
    y_true, y_pred = rng.integers(0, c, n), rng.integers(0, c - 1, n)  # the last class is never predicted
    assert accuracy(y_true, y_pred) == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert macro_f1(y_true, y_pred, c) == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro",
                                                                                  zero_division=0))
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[:, 0] = 0  # a class without positives: left out of both means
    scores = np.round(rng.random((n, c)), 1)  # ten distinct values: many tied scores
    kept = targets.sum(axis=0) > 0
    both = kept & (targets.sum(axis=0) < n)
    assert mean_average_precision(targets, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(targets[:, kept], scores[:, kept], average="macro"))
    assert macro_roc_auc(targets, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(targets[:, both], scores[:, both], average="macro"))


def test_confusion_png_decodes_at_the_documented_size(tmp_path):
    import matplotlib.image

    matrix = confusion_matrix(Y_TRUE, Y_PRED, 3)
    path = plot_confusion(matrix, ["a", "b", "c"], tmp_path / "confusion.png", title="test")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == confusion_png_size(3)
    assert image[..., :3].std() > 0.05  # something is drawn


def _result(task, bitrate, init, augment, acc, f1, seed=0, split=None, eval_mode="chunks"):
    return {"task": task, "bitrate": bitrate, "init": init, "augment": augment, "split": split,
            "config": {"freeze": False, "seed": seed, "eval_mode": eval_mode},
            "metrics": {"test": {"accuracy": acc, "macro_f1": f1}, "valid": {"accuracy": 0.0, "macro_f1": 0.0}}}


def test_report_lays_results_out_as_table1_with_rows_per_init_and_column_groups_per_task_and_bitrate(tmp_path):
    runs = [
        _result("nsynth", 1.5, None, "none", 0.50, 0.40),
        _result("nsynth", 1.5, "ckpt", "none", 0.60, 0.55),
        _result("nsynth", 1.5, "ckpt", "chunk-drop", 0.70, 0.65),
        _result("nsynth", 12.0, None, "none", 0.52, 0.42),
        _result("gtzan", 1.5, "ckpt", "none", 0.80, 0.78, split="filtered"),
        _result("gtzan", 1.5, "ckpt", "none", 0.90, 0.88, seed=1, split="filtered"),
    ]
    for i, run in enumerate(runs):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "results.json").write_text(json.dumps(run))
    lines = table1(load_results([tmp_path])).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "gtzan 1.5 kbps Acc", "gtzan 1.5 kbps F1", "nsynth 1.5 kbps Acc", "nsynth 1.5 kbps F1",
                      "nsynth 12 kbps Acc", "nsynth 12 kbps F1"]
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == ["scratch", "fine-tuned", "fine-tuned + augmentation"]
    assert rows["scratch"] == ["-", "-", "50.0", "40.0", "52.0", "42.0"]
    assert rows["fine-tuned"][:4] == ["85.0 ± 5.0", "83.0 ± 5.0", "60.0", "55.0"]
    assert rows["fine-tuned + augmentation"] == ["-", "-", "70.0", "65.0", "-", "-"]


def test_report_keeps_runs_scored_another_way_out_of_the_default_columns(tmp_path):
    runs = [_result("gtzan", 1.5, None, "none", 0.70, 0.70, split="filtered"),
            _result("gtzan", 1.5, None, "none", 0.80, 0.80, split="random"),
            _result("gtzan", 1.5, None, "none", 0.60, 0.60, split="filtered", eval_mode="whole")]
    for i, run in enumerate(runs):
        (tmp_path / f"run{i}.json").write_text(json.dumps(run))
    lines = table1(load_results(sorted(tmp_path.glob("*.json")))).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")][1::2]
    assert header == ["gtzan 1.5 kbps Acc", "gtzan (random split) 1.5 kbps Acc", "gtzan (whole clips) 1.5 kbps Acc"]
    assert [c.strip() for c in lines[2].strip("|").split("|")][1::2] == ["70.0", "80.0", "60.0"]
