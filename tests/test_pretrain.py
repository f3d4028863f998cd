"""Specifications of pre-training: 2-process CPU runs, exact resume after a kill, codec checks, schedule and configs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from stores import build_token_store, codes_store

from mega_audio.config import parse_config
from mega_audio.data.store import TokenStore
from mega_audio.data.stream import TokenStream
from mega_audio.models.checkpoint import read_checkpoint_config
from mega_audio.models.config import model_config
from mega_audio.models.masking import IGNORE_INDEX, clip_halves, mask_tokens
from mega_audio.models.mega import MegaAudioFormer
from mega_audio.train.pretrain import RECIPES, PretrainConfig, build_model, lr_at, run
from mega_audio.train.teacher import fit_teacher, kmeans, nearest_centroid

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "train" / "pretrain.py")
CONFIGS = REPO / "train" / "configs"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def train_args(store, out, *extra):
    return ["--cpu", "--data", str(store), "--output-dir", str(out), "--batch-size", "4", "--max-seconds", "1",
            "--lr", "3e-3", "--warmup-steps", "3", "--log-every", "5", "--eval-batches", "2", "--debug-log", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(*args):
    """The documented 2-process CPU command (docs/architecture.md): MULTI_GPU launcher (torchrun) + Accelerator(cpu=True)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), SCRIPT, *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], env=ENV, capture_output=True, text=True, timeout=600)


def debug_records(out, rank=0):
    lines = (Path(out) / "debug" / f"rank{rank}.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if "ids" in r], [r for r in records if r.get("final")]


def random_store(path, codec_name="encodec", n_q=2, n=8):
    """A store as another codec would write it (its own card and fingerprint), through the real shard writer."""
    return codes_store(path, {"name": codec_name, "fingerprint": "f" * 64, "sample_rate": 24000, "frame_rate": 75.0,
                              "bandwidth": 1.5, "n_q": n_q, "codebook_size": 1024}, n)


@pytest.fixture(scope="module")
def reference_run(small_store, tmp_path_factory):
    """One uninterrupted single-process run of 24 steps, checkpointing every 5; read-only for the tests."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_script(*train_args(small_store, out, "--max-steps", "24", "--save-every", "5", "--eval-every", "12",
                                    "--num-workers", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_cpu_processes_train_on_disjoint_clips_and_end_with_identical_weights(small_store, tmp_path):
    out = tmp_path / "run"
    result = launch_two_processes(*train_args(small_store, out, "--max-steps", "20", "--grad-accum", "2",
                                              "--save-every", "10", "--eval-every", "10", "--num-workers", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "20 steps on 2 process(es)" in result.stdout

    ranks = [debug_records(out, rank) for rank in (0, 1)]
    assert [len(steps) for steps, _ in ranks] == [40, 40]  # every rank ran every step's 2 micro-batches
    # epoch 0 of each rank (one worker: slot = rank) deals every training clip to exactly one rank
    stream = TokenStream([TokenStore(small_store)], "train", 4, 75, 1025, seed=0, world_size=2)
    first_epoch = []
    for rank, (steps, _) in enumerate(ranks):
        ids = [i for r in steps for i in r["ids"]]
        first_epoch.append(ids[: stream.epoch_size(0, rank, 2)])
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == sorted(m["id"] for _, m in TokenStore(small_store).iter_samples("train"))

    (final0,), (final1,) = ranks[0][1], ranks[1][1]
    assert final0["weights"] == final1["weights"]

    losses = np.mean([[r["loss"] for r in steps] for steps, _ in ranks], axis=0)
    assert losses[-5:].mean() < losses[:5].mean() - 0.05, losses

    header = read_checkpoint_config(out / "model")
    assert header["metadata"]["codec"] == TokenStore(small_store).card["codec"]
    assert header["metadata"]["pretrain"]["step"] == 20
    MegaAudioFormer.from_pretrained(out / "model")


def kill_then_resume(args, out, first_checkpoint: str) -> list[dict]:
    """Start the trainer, SIGKILL it (and its DataLoader workers) once `first_checkpoint` exists, resume it with the
    same command + --resume; returns the micro-batch records of the stitched run (what an uninterrupted one logs)."""
    victim = subprocess.Popen([sys.executable, SCRIPT, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / first_checkpoint).exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer and its DataLoader workers, wherever they are
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = run_script(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records, _ = debug_records(out)
    start = max(r["run_start"] for r in records)
    assert start >= int(first_checkpoint.removeprefix("step_"))
    return [r for r in records if r["run_start"] == 0 and r["step"] < start] + \
           [r for r in records if r["run_start"] == start]


def assert_same_run(out, reference_out, stitched):
    reference, (reference_final,) = debug_records(reference_out)
    assert [(r["step"], r["ids"]) for r in stitched] == [(r["step"], r["ids"]) for r in reference]
    np.testing.assert_allclose([r["loss"] for r in stitched], [r["loss"] for r in reference], rtol=1e-5)
    assert debug_records(out)[1][-1]["weights"] == reference_final["weights"]


@pytest.mark.slow
def test_run_killed_mid_training_resumes_with_the_same_batches_masks_and_losses(small_store, reference_run, tmp_path):
    out = tmp_path / "run"
    args = train_args(small_store, out, "--max-steps", "24", "--save-every", "5", "--eval-every", "12", "--num-workers", "2")
    assert_same_run(out, reference_run, kill_then_resume(args, out, "step_0000005"))


@pytest.mark.slow
def test_continual_pretraining_with_replay_rewarms_the_lr_and_resumes_exactly_after_a_kill(small_store, reference_run,
                                                                                             tmp_path):
    # continue the reference model on a "new corpus" (small_store) with 30% of an "old corpus" replayed
    old = codes_store(tmp_path / "old", TokenStore(small_store).card["codec"], n=8, prefix="old")
    def args(out):
        return ["--cpu", "--data", f"{small_store}:0.7", f"{old}:0.3", "--output-dir", str(out), "--batch-size", "4",
                "--max-seconds", "1", "--lr", "3e-3", "--log-every", "4", "--eval-every", "-1", "--debug-log",
                "--init-from", str(reference_run / "model"), "--rewarm-steps", "3", "--max-steps", "12",
                "--save-every", "4", "--num-workers", "2"]
    uninterrupted = run_script(*args(tmp_path / "reference"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert f"12 steps (continued from {reference_run / 'model'})" in uninterrupted.stdout

    out = tmp_path / "run"
    stitched = kill_then_resume(args(out), out, "step_0000004")
    assert_same_run(out, tmp_path / "reference", stitched)
    ids = [i for r in stitched for i in r["ids"]]
    assert 0.1 < sum(i.startswith("old") for i in ids) / len(ids) < 0.5  # 48 clips, 30% expected

    schedule = {"peak": 3e-3, "warmup_steps": 3, "warmup_from": 0.1, "decay_steps": 12, "min_lr_ratio": 0.1,
                "rewarm": True}
    pretrain = read_checkpoint_config(out / "model")["metadata"]["pretrain"]
    assert pretrain["lr_schedule"] == schedule
    assert pretrain["continued_from"] == {"model": str(reference_run / "model"), "step": 24, "data": [str(small_store)]}
    assert pretrain["data"] == [f"{small_store}:0.7", f"{old}:0.3"]
    state = json.loads((out / "checkpoints" / "step_0000012" / "trainer_state.json").read_text())
    assert state["continued_from"] == pretrain["continued_from"] and state["lr_schedule"] == schedule
    card = (out / "model" / "README.md").read_text()
    assert f"Continued from `{reference_run / 'model'}` with the learning rate re-warmed" in card


def test_resuming_on_a_store_with_another_n_q_is_refused_naming_both(reference_run, tmp_path):
    store_12kbps = build_token_store(tmp_path / "hi", bitrate=12.0, per_class=2)
    cfg = PretrainConfig(data=[str(store_12kbps)], output_dir=str(reference_run), resume=True, cpu=True)
    with pytest.raises(ValueError, match=r"trained on bestrq \(n_q=2.*holds bestrq \(n_q=16"):
        run(cfg)


def test_initialising_from_a_model_of_another_codec_is_refused(reference_run, tmp_path):
    other = random_store(tmp_path / "other", codec_name="encodec", n_q=2)
    cfg = PretrainConfig(data=[str(other)], output_dir=str(tmp_path / "new"), init_from=str(reference_run / "model"), cpu=True)
    with pytest.raises(ValueError, match=r"trained on bestrq .*holds encodec .*fingerprint ffffffffffff"):
        run(cfg)


def test_stores_of_different_codecs_are_not_mixed(small_store, tmp_path):
    other = random_store(tmp_path / "other", codec_name="encodec", n_q=2)
    with pytest.raises(ValueError, match="different codecs"):
        run(PretrainConfig(data=[str(small_store), str(other)], output_dir=str(tmp_path / "run"), cpu=True))


def test_a_mel_loss_on_a_store_without_features_is_refused_with_the_fix(small_store, tmp_path):
    with pytest.raises(ValueError, match=r"has none: re-tokenize it with --store-features logmel"):
        run(PretrainConfig(data=[str(small_store)], output_dir=str(tmp_path / "run"), cpu=True, mel_loss_weight=0.5))


def test_continuing_a_mel_model_without_the_mel_loss_drops_its_head_so_every_parameter_gets_a_gradient(tmp_path):
    """DDP needs a gradient on every parameter at every step: a mel head that no loss reaches must not be trained."""
    with_head = MegaAudioFormer(model_config("tiny", 2, 1024, mel_bins=80))
    with_head.save_pretrained(tmp_path / "mel-model")
    codec = {"n_q": 2, "codebook_size": 1024}
    cfg = PretrainConfig(init_from=str(tmp_path / "mel-model"), mel_loss_weight=0.0)
    model, model_cfg = build_model(cfg, codec, None, n_mels=0)
    assert model.mel_head is None and model_cfg.mel_bins == 0
    codes = torch.randint(0, 1024, (2, 40, 2))
    inputs, targets = mask_tokens(codes, ratio=0.5, generator=torch.Generator().manual_seed(0), mask_id=model_cfg.mask_id)
    model(inputs, None, targets)[1].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(ValueError, match="resume it with its --mel-loss-weight"):
        build_model(cfg, codec, {"model": with_head.config.to_dict()}, n_mels=0)


def test_a_contrastive_run_trains_its_head_exports_it_and_a_run_continued_without_the_loss_drops_it(small_store, tmp_path):
    out = tmp_path / "run"
    result = run_script(*train_args(small_store, out, "--max-steps", "3", "--num-workers", "0", "--eval-every", "-1",
                                    "--contrastive-weight", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    header = read_checkpoint_config(out / "model")
    assert header["config"]["contrastive_dim"] > 0 and header["metadata"]["pretrain"]["contrastive_weight"] == 1.0
    steps, _ = debug_records(out)
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)
    codec = {"n_q": 2, "codebook_size": 1024}
    model, _ = build_model(PretrainConfig(init_from=str(out / "model"), contrastive_weight=1.0), codec, None)
    codes = clip_halves(torch.randint(0, 1024, (3, 40, 2)))
    inputs, targets = mask_tokens(codes, ratio=0.5, generator=torch.Generator().manual_seed(0), mask_id=model.config.mask_id)
    model(inputs, None, targets, contrastive_weight=1.0)[1].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []  # the head gets its gradient too
    model, model_cfg = build_model(PretrainConfig(init_from=str(out / "model")), codec, None)
    assert model.contrastive_head is None and model_cfg.contrastive_dim == 0
    with pytest.raises(ValueError, match="resume it with its --contrastive-weight"):
        build_model(PretrainConfig(), codec, {"model": header["config"]})
    with pytest.raises(ValueError, match="has none: pass --contrastive-weight 0"):
        build_model(PretrainConfig(init_from=str(out / "model"), contrastive_weight=1.0), codec,
                    {"model": model_cfg.to_dict()})


def test_linear_complexity_preset_trains_on_bestrq_8192_codes_with_a_mel_loss(tmp_path):
    store = build_token_store(tmp_path / "data", per_class=3, codebook_size=8192, bestrq_norm="feature",
                              store_features="logmel")
    out = tmp_path / "run"
    result = run_script(*train_args(store, out, "--preset", "orfium-linear", "--model", "tiny", "--max-steps", "3",
                                    "--num-workers", "2", "--eval-every", "-1", "--mixed-precision", "no"))
    assert result.returncode == 0, result.stderr[-3000:]
    header = read_checkpoint_config(out / "model")
    config, recipe = header["config"], header["metadata"]["pretrain"]
    assert (config["global_block"], config["global_mixer"], config["codebook_size"], config["mel_bins"]) == \
        ("branchformer", "summary_mixing", 8192, 80)
    assert (recipe["mask_unit"], recipe["mask_ratio"], recipe["mask_span_ms"], recipe["mel_loss_weight"]) == \
        ("span", 0.2, 400.0, 1.0)
    steps, _ = debug_records(out)
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)


def test_existing_checkpoints_are_never_overwritten_without_resume(small_store, reference_run):
    with pytest.raises(ValueError, match="pass --resume"):
        run(PretrainConfig(data=[str(small_store)], output_dir=str(reference_run), cpu=True))


def test_checkpoints_are_complete_and_only_the_newest_are_kept(reference_run):
    kept = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert kept == ["step_0000015", "step_0000020", "step_0000024"]  # keep_checkpoints=3, no .tmp left behind
    state = json.loads((reference_run / "checkpoints" / "step_0000024" / "trainer_state.json").read_text())
    assert state["step"] == 24 and state["batches_per_rank"] == 24 and state["codec"]["n_q"] == 2
    assert (reference_run / "model" / "model.safetensors").is_file()


def test_by_default_the_run_writes_tensorboard_events_with_its_losses(reference_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (reference_run / "tensorboard").glob("*/events.out.tfevents.*")
    scalars = EventAccumulator(str(events.parent)).Reload()
    assert [e.step for e in scalars.Scalars("train/loss")] == [5, 10, 15, 20, 24]
    assert [e.step for e in scalars.Scalars("eval/accuracy")] == [12, 24]


def quick_run(store, out, *flags):
    return run_script("--cpu", "--data", str(store), "--output-dir", str(out), "--batch-size", "4", "--max-seconds", "1",
                      "--max-steps", "2", "--log-every", "1", "--eval-every", "-1", "--num-workers", "0", *flags)


def test_report_to_none_writes_no_events(small_store, tmp_path):
    result = quick_run(small_store, tmp_path / "run", "--report-to", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_report_to_wandb_offline_is_accepted(small_store, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setitem(ENV, "WANDB_MODE", "offline")
    monkeypatch.setitem(ENV, "WANDB_DIR", str(tmp_path))
    result = quick_run(small_store, tmp_path / "run", "--report-to", "wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)


def test_rewarm_climbs_from_the_floor_back_to_the_peak_then_re_decays_over_the_run():
    cfg = PretrainConfig(lr=1.0, min_lr_ratio=0.1, init_from="model", rewarm_steps=10, warmup_steps=1000, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.19) and lr_at(9, cfg) == pytest.approx(1.0)  # 0.1 + 0.9 * (step + 1) / 10
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_rewarm_without_a_model_to_continue_is_refused(small_store, tmp_path):
    with pytest.raises(ValueError, match="pass --init-from MODEL_DIR too"):
        run(PretrainConfig(data=[str(small_store)], output_dir=str(tmp_path / "run"), rewarm_steps=10, cpu=True))


def test_example_configs_use_real_field_names_and_valid_accelerate_keys():
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("pretrain_tiny.yaml", "pretrain_base.yaml", "pretrain_linear.yaml"):
        cfg = parse_config(PretrainConfig, ["--config", str(CONFIGS / name), "--data", "s"])
        assert cfg.max_seconds == 10.0 and cfg.data == ["s"]
    linear = parse_config(PretrainConfig, ["--config", str(CONFIGS / "pretrain_linear.yaml")])
    recipe = RECIPES["orfium-linear"]
    for field in ("model", "global_block", "global_mixer", "mask_unit", "mask_span_ms", "mask_ratio", "mask_start_prob",
                  "mel_loss_weight"):
        assert getattr(linear, field) == getattr(recipe, field), field  # the YAML is the preset as a file
    for name in ("cpu_2proc.yaml", "one_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "fsdp.yaml"):
        config = load_config_from_file(str(CONFIGS / name))
        assert config.num_processes >= 1, name
        assert yaml.safe_load((CONFIGS / name).read_text())["distributed_type"] == config.distributed_type


def test_pretraining_with_colour_db_runs_in_workers_and_records_it(logmel_store, tmp_path):
    out = tmp_path / "run"
    result = run_script(*train_args(logmel_store, out, "--model", "tiny", "--max-steps", "3", "--num-workers", "2",
                                    "--eval-every", "-1", "--colour-db", "6"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_checkpoint_config(out / "model")["metadata"]["pretrain"]["colour_db"] == 6.0
    steps, _ = debug_records(out)
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)


def test_colour_db_without_stored_log_mels_or_on_encodec_codes_is_refused_with_the_fix(small_store, tmp_path):
    with pytest.raises(ValueError, match=r"has none: re-tokenize it with --store-features logmel"):
        run(PretrainConfig(data=[str(small_store)], output_dir=str(tmp_path / "a"), cpu=True, colour_db=6.0))
    with pytest.raises(ValueError, match="only the bestrq codec can do"):
        run(PretrainConfig(data=[str(random_store(tmp_path / "encodec"))], output_dir=str(tmp_path / "b"), cpu=True,
                           colour_db=6.0))


def test_kmeans_separates_well_apart_groups_and_the_same_seed_gives_the_same_centroids():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    groups = torch.arange(3).repeat_interleave(200)
    points = centres[groups] + torch.randn(600, 2, generator=generator)
    centroids = kmeans(points, 3, seed=1)
    assignment = nearest_centroid(points, centroids)
    assert all(len(assignment[groups == g].unique()) == 1 for g in range(3))  # each group one cluster...
    assert len(assignment.unique()) == 3  # ...and no two groups share one
    torch.testing.assert_close(kmeans(points, 3, seed=1), centroids, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs at least 700 frames"):
        kmeans(points, 700)


def test_a_teacher_run_learns_the_teachers_clusters_of_masked_frames_and_records_its_teacher(small_store, reference_run,
                                                                                              tmp_path):
    """HuBERT's second iteration: the teacher (the reference run's export) clusters its frame states; the student gets a
    cluster head trained on the masked frames, and the export says which teacher it learnt from."""
    teacher_dir = reference_run / "model"
    store = TokenStore(small_store)
    teacher = fit_teacher(teacher_dir, [store], "train", 8, 75, seed=0)
    again = fit_teacher(teacher_dir, [store], "train", 8, 75, seed=0)
    torch.testing.assert_close(again.centroids, teacher.centroids, rtol=0, atol=0)  # a resumed run fits the same
    clips = [torch.from_numpy(codes[:75].astype("int64")) for codes, _ in store.iter_samples("train")]
    clusters = [teacher(codes[None])[0] for codes in clips]
    assert [len(c) for c in clusters] == [len(codes) for codes in clips]
    assert len(torch.cat(clusters).unique()) == 8  # k-means++ spreads its seeds: every cluster holds frames

    out = tmp_path / "run"
    result = run_script(*train_args(small_store, out, "--max-steps", "3", "--num-workers", "0", "--eval-every", "-1",
                                    "--teacher", str(teacher_dir), "--teacher-clusters", "8"))
    assert result.returncode == 0, result.stderr[-3000:]
    header = read_checkpoint_config(out / "model")
    assert header["config"]["teacher_clusters"] == 8
    assert header["metadata"]["pretrain"]["teacher"] == {"model": str(teacher_dir), "clusters": 8, "weight": 1.0}
    model = MegaAudioFormer.from_pretrained(out / "model")
    codes = torch.randint(0, 1024, (2, 40, 2))
    generator = torch.Generator().manual_seed(0)
    inputs, targets = mask_tokens(codes, ratio=0.5, generator=generator, mask_id=model.config.mask_id)
    clusters = torch.randint(0, 8, (2, 40))
    _, with_clusters = model(inputs, None, targets, clusters=clusters)
    with_clusters.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []  # the cluster head learns too
    masked = (targets != IGNORE_INDEX).any(-1)
    relabelled = torch.where(masked, clusters, (clusters + 1) % 8)  # unmasked frames' clusters changed: no effect
    torch.testing.assert_close(model(inputs, None, targets, clusters=relabelled)[1], with_clusters)
    assert model(inputs, None, targets)[1] < with_clusters  # the token loss alone is the smaller part

    other_codec = random_store(tmp_path / "n_q4", n_q=4)
    with pytest.raises(ValueError, match="was trained on bestrq .* tokens, but .* holds encodec"):
        fit_teacher(teacher_dir, [TokenStore(other_codec)], "train", 8, 75, seed=0)
