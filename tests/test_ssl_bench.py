"""bench/ssl_bench.py's jobs: a cached job is reused only by a run of the same setting, and two benches on one --work
run a job once."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

_spec = importlib.util.spec_from_file_location("ssl_bench", Path(__file__).parent.parent / "bench" / "ssl_bench.py")
sb = sys.modules["ssl_bench"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(sb)

TASK = "instrument_family"


def job_names(argv: list[str], seed: int = 0) -> dict[str, str]:
    """The directory name of every job one seed of the protocol runs, by job."""
    args = sb.parse_args(["--work", "/w", *argv])
    names = {arm: sb.finetune_dir(args, TASK, arm, args.recipe, seed).name for arm in sb.TAGS}
    return {"pretrain": sb.pretrain_dir(args, args.recipe, seed).name, **names}


def test_the_shipped_protocol_keeps_the_names_of_its_cached_jobs_and_results():
    assert job_names([]) == {"pretrain": "pre-default", "frozen_random": "fzs-random-instrument_family-1.5-s0",
                             "frozen_pretrained": "fzs-default-instrument_family-1.5-s0",
                             "scratch": "ft-scratch-instrument_family-1.5-s0",
                             "finetuned": "ft-default-instrument_family-1.5-s0",
                             "finetuned_lpft": "lpft-default-instrument_family-1.5-s0"}
    assert job_names(["--recipe", "mini"], seed=2)["scratch"] == "ft-scratch-mini-instrument_family-1.5-s2"
    assert job_names(["--recipe", "span25-12kbps"])["pretrain"] == "pre-span25-12kbps"
    assert sb.results_name(sb.parse_args([])) == "ssl"
    assert sb.results_name(sb.parse_args(["--recipe", "colour", "--seeds", "0", "1", "2", "3", "4"])) == \
        "ssl_colour_5seeds"


@pytest.mark.parametrize("argv, changed, results", [
    (["--gpu"], {"pretrain", "frozen_random", "frozen_pretrained", "scratch", "finetuned", "finetuned_lpft"},
     "ssl_smallmodel_8000steps"),
    (["--steps", "500"], {"pretrain", "frozen_pretrained", "finetuned", "finetuned_lpft"}, "ssl_500steps"),
    (["--bitrate", "12"], {"pretrain", "frozen_random", "frozen_pretrained", "scratch", "finetuned", "finetuned_lpft"},
     "ssl_12kbps"),
    (["--lr", "1e-4"], {"scratch", "finetuned", "finetuned_lpft"}, "ssl_lr0.0001"),  # the probes train at 1e-3
    (["--finetune-colour-db", "6"], {"scratch", "finetuned", "finetuned_lpft"}, "ssl_ftcolour6"),
])
def test_a_changed_setting_renames_exactly_the_jobs_and_results_it_changes(argv, changed, results):
    shipped, other = job_names([]), job_names(argv)
    assert {job for job in shipped if other[job] != shipped[job]} == changed
    assert sb.results_name(sb.parse_args(argv)) == results


def test_a_variant_that_pins_a_setting_is_not_renamed_by_it():
    """`--recipe steps500` pins 500 steps: --steps does not reach it, so its cached jobs still count."""
    assert job_names(["--recipe", "steps500", "--steps", "8000"]) == job_names(["--recipe", "steps500"])
    assert sb.results_name(sb.parse_args(["--recipe", "steps500", "--steps", "8000"])) == "ssl_steps500"


def test_every_setting_of_the_readme_gets_jobs_of_its_own():
    settings = [[], ["--gpu"], ["--bitrate", "12"], ["--model", "mini"], ["--steps", "500"], ["--lr", "1e-4"],
                ["--gpu", "--bitrate", "12"], ["--recipe", "mini"], ["--recipe", "colour"]]
    pretrained = [job_names(argv)["finetuned"] for argv in settings]
    assert len(set(pretrained)) == len(settings)
    assert len({sb.results_name(sb.parse_args(argv)) for argv in settings}) == len(settings)


@pytest.mark.parametrize("argv, on_cpu", [([], True), (["--gpu"], False)])
def test_the_gpu_size_runs_its_jobs_on_the_gpu_and_the_protocol_stays_on_the_cpu(tmp_path, monkeypatch, argv, on_cpu):
    commands = []

    def run_job(cmd, log, threads):  # records the command and leaves what a finished job leaves
        commands.append(cmd)
        out = Path(cmd[cmd.index("--output-dir") + 1])
        if "train/pretrain.py" in cmd:
            (out / "model").mkdir(parents=True)
            (out / "model" / "model.safetensors").touch()
        else:
            out.mkdir(parents=True)
            (out / "results.json").write_text("{}")

    monkeypatch.setattr(sb, "run", run_job)
    args = sb.parse_args(["--work", str(tmp_path), *argv])
    model = sb.pretrain(args, args.recipe, 0, threads=1)
    for arm in ("frozen_pretrained", "finetuned"):
        sb.finetune(args, TASK, arm, args.recipe, 0, model, threads=1)
    assert [("--cpu" in cmd) for cmd in commands] == [on_cpu] * 3


@pytest.mark.parametrize("argv", [["--gpu"], ["--gpu", "--steps", "500", "--bitrate", "12"], ["--model", "mini"]])
def test_the_command_a_table_shows_makes_the_same_setting_again(argv):
    args = sb.parse_args(argv)
    again = sb.parse_args(sb.setting_flags(args))
    assert (again.gpu, again.model, again.steps, again.bitrate) == (args.gpu, args.model, args.steps, args.bitrate)


@pytest.mark.parametrize("recipe, parent, flag", [("hubert", "span25", "--teacher"),
                                                  ("default-token500", "default", "--init-from")])
def test_a_variant_built_on_another_pretrains_that_one_of_its_seed_first_and_passes_its_model(tmp_path, monkeypatch,
                                                                                                recipe, parent, flag):
    commands = []

    def run_pretraining(cmd, log, threads):  # records the command and leaves the model a finished run leaves
        commands.append(cmd)
        model = Path(cmd[cmd.index("--output-dir") + 1]) / "model"
        model.mkdir(parents=True)
        (model / "model.safetensors").touch()

    monkeypatch.setattr(sb, "run", run_pretraining)
    args = sb.parse_args(["--work", str(tmp_path), "--recipe", recipe])
    assert sb.pretrain(args, recipe, 1, threads=1) == tmp_path / "runs" / f"pre-{recipe}-s1" / "model"
    assert [Path(c[c.index("--output-dir") + 1]).name for c in commands] == [f"pre-{parent}-s1", f"pre-{recipe}-s1"]
    assert commands[1][commands[1].index(flag) + 1] == str(tmp_path / "runs" / f"pre-{parent}-s1" / "model")
    assert flag not in commands[0]
    sb.pretrain(args, recipe, 1, threads=1)
    assert len(commands) == 2  # both cached now


def test_a_pretraining_killed_after_its_last_checkpoint_goes_on_from_it(small_store, tmp_path):
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "pool-1.5").symlink_to(small_store)
    args = sb.parse_args(["--work", str(tmp_path), "--steps", "3"])
    model = sb.pretrain(args, args.recipe, 0, threads=1)
    weights = load_file(model / "model.safetensors")
    shutil.rmtree(model)  # what a kill after the final checkpoint, before the model is written, leaves
    assert sb.pretrain(args, args.recipe, 0, threads=1) == model  # pretrain.py refuses that dir without --resume
    assert "resumed from" in (tmp_path / "logs" / f"{model.parent.name}.log").read_text()
    again = load_file(model / "model.safetensors")
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)


def test_a_continued_variant_reports_its_total_steps():
    args = sb.parse_args(["--recipe", "default-token500"])
    assert sb.steps_words(args, "default-token500") == \
        "2500 pre-training steps (500 continuing the `default` model's 2000)"
    assert sb.steps_words(args, "default") == "2000 pre-training steps"


def test_a_frozen_arm_scores_an_encoder_by_the_mean_of_its_probe_seeds(tmp_path, monkeypatch):
    commands = []

    def run_probe(cmd, log, threads):  # a probe whose accuracy depends on its head's seed
        commands.append(cmd)
        probe_seed = int(cmd[cmd.index("--probe-seed") + 1]) if "--probe-seed" in cmd else 3
        out = Path(cmd[cmd.index("--output-dir") + 1])
        out.mkdir(parents=True)
        metrics = {split: {"accuracy": probe_seed / 10_000} for split in ("valid", "test")}
        (out / "results.json").write_text(json.dumps({"metrics": metrics, "probe_layer": "mean"}))

    monkeypatch.setattr(sb, "run", run_probe)
    args = sb.parse_args(["--work", str(tmp_path), "--seeds", "3"])
    runs = [sb.finetune(args, TASK, "frozen_random", args.recipe, 3, None, threads=1, run=k)
            for k in range(args.probe_seeds)]
    assert args.probe_seeds == 3
    # probe 0 is the run a single probe made (no --probe-seed: --seed seeds its head), so its cached runs still count
    assert [Path(c[c.index("--output-dir") + 1]).name for c in commands] == \
        ["fzs-random-instrument_family-1.5-s3", "fzs-random-instrument_family-1.5-s3-p1",
         "fzs-random-instrument_family-1.5-s3-p2"]
    assert all(c[c.index("--seed") + 1] == "3" for c in commands)  # one random encoder, three heads
    result = sb.mean_of_runs(runs)
    assert result["probe_runs"] == pytest.approx([0.03, 10.03, 20.03])
    assert result["metrics"]["test"]["accuracy"] == pytest.approx((3 + 1003 + 2003) / 3 / 10_000)
    summary = sb.summarise({(TASK, "frozen_random", 3): result}, [TASK], [3], ["frozen_random"])
    assert summary[TASK]["frozen_random"]["runs"] == pytest.approx([100 * (3 + 1003 + 2003) / 3 / 10_000])
    assert sb.results_name(sb.parse_args(["--probe-seeds", "1"])) == "ssl_1probe"


def test_a_trained_arm_scores_a_seed_by_the_mean_of_its_fine_tuning_runs(tmp_path, monkeypatch):
    commands = []

    def run_finetuning(cmd, log, threads):  # a run whose accuracy depends on its seed
        commands.append(cmd)
        out = Path(cmd[cmd.index("--output-dir") + 1])
        out.mkdir(parents=True)
        metrics = {split: {"accuracy": int(cmd[cmd.index("--seed") + 1]) / 10_000} for split in ("valid", "test")}
        (out / "results.json").write_text(json.dumps({"metrics": metrics}))

    monkeypatch.setattr(sb, "run", run_finetuning)
    args = sb.parse_args(["--work", str(tmp_path), "--seeds", "2"])
    model = tmp_path / "runs" / "pre-default-s2" / "model"
    runs = [sb.finetune(args, TASK, "finetuned", args.recipe, 2, model, threads=1, run=k) for k in range(3)]
    # run 0 is the one-run protocol's (cached runs count); every run fine-tunes the same pre-trained model
    assert [Path(c[c.index("--output-dir") + 1]).name for c in commands] == \
        ["ft-default-instrument_family-1.5-s2", "ft-default-instrument_family-1.5-s2-r1",
         "ft-default-instrument_family-1.5-s2-r2"]
    assert [c[c.index("--seed") + 1] for c in commands] == ["2", "1002", "2002"]
    assert all(c[c.index("--init") + 1] == str(model) and "--probe-seed" not in c for c in commands)
    result = sb.mean_of_runs(runs, "finetune_runs")
    assert result["finetune_runs"] == pytest.approx([0.02, 10.02, 20.02]) and "probe_layer" not in result
    assert args.finetune_seeds == 3
    one_run = sb.parse_args(["--finetune-seeds", "1"])
    assert sb.results_name(one_run) == "ssl_1finetune"
    assert sb.parse_args(sb.setting_flags(one_run)).finetune_seeds == 1  # the command a table shows runs it again


def test_the_paired_gains_compare_each_seed_with_its_own_baseline():
    seeds = [0, 1, 2]
    results = {(TASK, arm, s): {"metrics": {"test": {"accuracy": acc / 100}, "valid": {"accuracy": 0.5}},
                                "n": {"test": 10}}
               for arm, accs in {"scratch": [30, 20, 40], "finetuned": [34, 25, 43]}.items()
               for s, acc in zip(seeds, accs)}
    gains = sb.summarise(results, [TASK], seeds, ["scratch", "finetuned"])[TASK]["gains"]
    assert list(gains) == ["fine-tuned - scratch"]  # only the comparisons whose two arms ran
    gain = gains["fine-tuned - scratch"]
    assert gain["runs"] == pytest.approx([4, 5, 3]) and gain["mean"] == pytest.approx(4)
    assert gain["std"] == pytest.approx(1) and gain["beyond_2_std"]  # the arms' own spreads (10) do not enter
    rows = sb._gain_rows({"tasks": {TASK: {"gains": gains}}, "seeds": seeds}, [TASK])
    assert rows[-1] == "| fine-tuned - scratch | +4.0 ± 1.0 * (+3.0 to +5.0) |"


JOB = """import pathlib, sys, time
pathlib.Path(sys.argv[1]).touch()
with open(sys.argv[2], "a") as runs:
    runs.write("ran\\n")
time.sleep(float(sys.argv[3]))
pathlib.Path(sys.argv[4]).write_text("done")
"""
DRIVER = """import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("ssl_bench", {bench!r})
sb = sys.modules["ssl_bench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)
done = pathlib.Path(sys.argv[4])
sb.run_once(done.exists, [sys.executable, {job!r}, *sys.argv[1:]], pathlib.Path({log!r}), 1)
"""


def start_bench(tmp_path: Path, seconds: float) -> subprocess.Popen:
    """A process that runs the job 'write started, count a run, sleep, write done' through run_once."""
    (tmp_path / "job.py").write_text(JOB)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(bench=str(Path(sb.__file__)), job=str(tmp_path / "job.py"),
                                    log=str(tmp_path / "logs" / "job.log")))
    return subprocess.Popen([sys.executable, str(driver), str(tmp_path / "started"), str(tmp_path / "runs.txt"),
                             str(seconds), str(tmp_path / "done")], start_new_session=True)


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_benches_on_one_work_dir_run_a_job_once(tmp_path):
    first = start_bench(tmp_path, seconds=1.5)
    wait_for(tmp_path / "started")
    second = start_bench(tmp_path, seconds=1.5)  # the same job while the first is running it
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    assert (tmp_path / "runs.txt").read_text() == "ran\n"
    assert (tmp_path / "done").read_text() == "done"


def test_a_killed_bench_leaves_no_lock_behind(tmp_path):
    killed = start_bench(tmp_path, seconds=600)
    wait_for(tmp_path / "started")
    os.killpg(killed.pid, signal.SIGKILL)  # the bench and its job, as `kill -- -PGID` would
    killed.wait(timeout=30)
    (tmp_path / "started").unlink()
    again = start_bench(tmp_path, seconds=0)
    assert again.wait(timeout=60) == 0  # would wait forever on a stale lock
    assert (tmp_path / "runs.txt").read_text() == "ran\nran\n" and (tmp_path / "done").exists()


def test_the_bag_statistics_see_what_the_histogram_cannot():
    """Two clips with the same codes in reverse order: one histogram, but other quarters and other bigrams; and
    per-frame pairs tell apart clips whose levels are each the same bag."""
    rising = np.stack([np.arange(8), np.arange(8) % 2], axis=1)  # (frames, levels)
    falling = rising[::-1]
    count = sb.BAG_STATISTICS
    np.testing.assert_array_equal(count["unigram"](rising, 8), count["unigram"](falling, 8))
    assert count["unigram"](rising, 8).sum() == pytest.approx(2.0)  # one distribution per level
    assert not np.array_equal(count["segments"](rising, 8), count["segments"](falling, 8))
    assert (count["bigram"](rising, 8) != count["bigram"](falling, 8)).nnz > 0
    shuffled_level = np.stack([rising[:, 0], rising[::-1, 1]], axis=1)  # level 1's bag unchanged, its pairing not
    np.testing.assert_array_equal(count["unigram"](rising, 8), count["unigram"](shuffled_level, 8))
    assert (count["joint"](rising, 8) != count["joint"](shuffled_level, 8)).nnz > 0
    repeated = np.zeros((4, 2), dtype=np.int64)  # one pair four times: its frequency adds up to 1
    assert count["joint"](repeated, 8).sum() == pytest.approx(1.0) and count["joint"](repeated, 8).nnz == 1


def test_the_linear_probe_reads_the_candidate_layer_best_on_valid_and_never_the_patch_embeddings():
    """Layers 0..2 and their mean of 3-class clips: the class shows in layer 0 (the patch embeddings, which of a
    random-init encoder are a bag of tokens) and, through noise, in layer 2; layer 1 and the mean are noise."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), 100)
    splits = np.tile(np.array(["train"] * 6 + ["valid"] * 2 + ["test"] * 2), 30)
    features = rng.normal(size=(len(labels), 4, 8))
    centres = {"a": 0.0, "b": 2.0, "c": 4.0}
    signal = np.array([centres[label] for label in labels])
    features[:, 0, 0] = signal
    features[:, 2, :3] += signal[:, None]
    r = sb.linear_read_out(features, labels, splits, seed=0)
    assert r["probe_layer"] == "2" and set(r["valid_by_layer"]) == {"mean", "1", "2"}
    assert r["valid_by_layer"]["2"] > 0.8 and max(r["valid_by_layer"]["1"], r["valid_by_layer"]["mean"]) < 0.6
    assert r["metrics"]["test"]["accuracy"] > 0.8 and r["C"] in sb.LINEAR_CS
