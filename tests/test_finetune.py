"""Specifications of fine-tuning, evaluation, decode-free prediction, embeddings and the task registry, on real stores."""

import contextlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mega_audio.cli import main
from mega_audio.data.manifest import write_manifest
from mega_audio.data.recipes import TASKS, build_manifest, get_task
from mega_audio.data.store import TokenStore
from mega_audio.data.tasks import NO_LABEL, task_view
from mega_audio.data.tokenize import TokenizeConfig, tokenize
from mega_audio.models.checkpoint import load_weights
from mega_audio.models.classifier import AudioClassifier
from mega_audio.models.config import model_config
from mega_audio.models.mega import MegaAudioFormer
from mega_audio.train.finetune import FinetuneConfig, chunk_drop, finetune
from mega_audio.train.inference import clip_outputs, embed, evaluate, load_classifier, predict, windows
from mega_audio.train.report import confusion_png_size

SR = 16000


@contextlib.contextmanager
def one_thread():
    # tiny models run fastest on one thread (several times faster when the 2 cores are busy with other work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def gated(t: np.ndarray, rate: float, duty: float, rng: np.random.Generator) -> np.ndarray:
    return ((t * rate + rng.uniform(0, 1)) % 1.0 < duty).astype(np.float32)


def separable_clip(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Noise that is steady, pulses slowly (1.5/s) or rattles (8/s): rhythms a codec's tokens keep apart."""
    t = np.arange(int(seconds * SR)) / SR
    noise = 0.3 * rng.standard_normal(t.size).astype(np.float32)
    if kind == "steady":
        return noise
    return noise * gated(t, rng.uniform(1.3, 1.7) if kind == "slow" else rng.uniform(7, 9), 0.5, rng)


@pytest.fixture(scope="session")
def separable_store(tmp_path_factory) -> Path:
    """48 two-second wav clips of 3 clearly different classes, split 24/12/12, tokenized by the real pipeline (bestrq)."""
    root = tmp_path_factory.mktemp("separable")
    for c, kind in enumerate(("steady", "slow", "fast")):
        for i in range(16):
            path = root / "audio" / kind / f"{kind}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, separable_clip(kind, 2.0, np.random.default_rng(100 * c + i)).astype(np.float32), SR)
    clips, _ = build_manifest("folder", root / "audio", fractions=(0.5, 0.25, 0.25))
    write_manifest(root / "manifest.jsonl", clips)
    tokenize(TokenizeConfig(dataset="folder", manifest=str(root / "manifest.jsonl"), out=str(root / "store"),
                            codec="bestrq", bitrate=1.5, shard_size=4, batch_size=4, num_workers=0, device="cpu"))
    return root / "store"


def config(store: Path, out: Path, **overrides) -> FinetuneConfig:
    base = FinetuneConfig(task="folder", data=str(store), scratch=True, epochs=10, batch_size=8, lr=1e-3,
                          max_seconds=2.0, output_dir=str(out), eval_batch_size=8)
    return replace(base, **overrides)


@pytest.fixture(scope="session")
def scratch_run(separable_store, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scratch_run")
    with one_thread():  # session fixtures are set up before the module's autouse fixture
        return out, finetune(config(separable_store, out))


def pretrained(directory: Path, store: Path, seed: int, **metadata) -> Path:
    """A pre-training export (random weights of a given seed) carrying the store's codec card."""
    torch.manual_seed(seed)
    ts = TokenStore(store)
    model = MegaAudioFormer(model_config("tiny", ts.n_q, ts.codebook_size))
    return model.save_pretrained(directory, metadata={"codec": ts.card["codec"], **metadata})


def encoder_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_weights(directory, "global_encoder.")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------------------------------
# training and results


def test_tiny_classifier_from_scratch_reaches_full_accuracy_on_clearly_different_signals(scratch_run):
    _, results = scratch_run
    assert results["metrics"]["test"] == {"accuracy": 1.0, "macro_f1": 1.0}
    assert results["metrics"]["valid"]["accuracy"] == 1.0
    losses = [h["train_loss"] for h in results["history"]]
    assert losses[-1] < losses[0] / 4


def test_results_json_holds_what_the_run_did(scratch_run, separable_store):
    out, results = scratch_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    card = TokenStore(separable_store).card
    assert (on_disk["task"], on_disk["codec"], on_disk["bitrate"]) == ("folder", "bestrq", card["codec"]["bandwidth"])
    assert on_disk["n"] == {s: card["splits"][s]["clips"] for s in ("train", "valid", "test")}
    assert on_disk["n"] == {"train": 24, "valid": 12, "test": 12}
    assert on_disk["init"] is None and on_disk["augment"] == "none" and on_disk["config"]["epochs"] == 10
    best = max(on_disk["history"], key=lambda h: (h["valid"]["accuracy"], -h["valid_loss"]))  # ties: lower loss
    assert on_disk["best_epoch"] == best["epoch"] and on_disk["metrics"]["valid"] == best["valid"]
    # the checkpoint in output_dir is the selected one: re-evaluating it reproduces the reported test metrics
    again = evaluate(out, separable_store)
    assert again["n"] == 12 and again["metrics"] == pytest.approx(on_disk["metrics"]["test"])


def test_per_class_report_and_confusion_png_describe_the_test_split(scratch_run):
    import matplotlib.image

    out, results = scratch_run
    rows = json.loads((out / "per_class.json").read_text())
    assert {r["label"]: r["support"] for r in rows} == {"fast": 4, "slow": 4, "steady": 4}
    assert all(r["precision"] == r["recall"] == r["f1"] == 1.0 for r in rows)
    assert "| slow | 4 |" in (out / "per_class.md").read_text()
    confusion = results["confusion"]
    assert np.trace(confusion["matrix"]) == np.sum(confusion["matrix"]) == results["n"]["test"]
    image = matplotlib.image.imread(out / confusion["png"])
    assert image.shape[:2] == (confusion["height"], confusion["width"]) == confusion_png_size(3)


def test_checkpoint_records_codec_card_and_label_vocabulary(scratch_run, separable_store):
    out, _ = scratch_run
    model, meta = load_classifier(out)
    assert meta["labels"] == ["fast", "slow", "steady"] and meta["task"] == "folder"
    assert meta["codec"] == TokenStore(separable_store).card["codec"]
    assert model.n_classes == 3


def test_report_builds_table1_from_several_results(scratch_run, separable_store, tmp_path, capsys):
    out, results = scratch_run
    tuned = dict(results, init="some/checkpoint", metrics={"test": {"accuracy": 0.5, "macro_f1": 0.25}})
    augmented = dict(tuned, augment="chunk-drop", metrics={"test": {"accuracy": 0.75, "macro_f1": 0.5}})
    for name, r in (("tuned", tuned), ("augmented", augmented)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    main(["report", str(out / "results.json"), str(tmp_path), "--out", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert table in capsys.readouterr().out
    assert table.splitlines()[0] == "| model | folder 1.5 kbps Acc | folder 1.5 kbps F1 |"
    assert table.splitlines()[2:] == ["| scratch | 100.0 | 100.0 |", "| fine-tuned | 50.0 | 25.0 |",
                                      "| fine-tuned + augmentation | 75.0 | 50.0 |"]


# ---------------------------------------------------------------------------------------------
# initialisation and the frozen probe


def test_finetuning_from_a_checkpoint_starts_from_its_weights(small_store, tmp_path):
    # lr 0: the run cannot move the weights, so what it saves is exactly where it started
    starts = {}
    for seed in (1, 2):
        ckpt = pretrained(tmp_path / f"pre{seed}", small_store, seed)
        out = tmp_path / f"ft{seed}"
        finetune(config(small_store, out, scratch=False, init=str(ckpt), lr=0.0, max_steps=1))
        assert_same_weights(encoder_weights(out), encoder_weights(ckpt))
        starts[seed] = load_classifier(out)[0]
    codes = torch.from_numpy(next(TokenStore(small_store).iter_samples("test"))[0].astype(np.int64))[None]
    with torch.no_grad():
        assert not torch.allclose(starts[1].embed(codes), starts[2].embed(codes))


def test_a_checkpoint_from_another_codec_or_bitrate_is_refused(small_store, tmp_path):
    other = dict(TokenStore(small_store).card["codec"], fingerprint="0" * 64, name="encodec")
    ckpt = pretrained(tmp_path / "other_codec", small_store, 0)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["metadata"]["codec"] = other
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="use data tokenized with the checkpoint's codec"):
        finetune(config(small_store, tmp_path / "a", scratch=False, init=str(ckpt), max_steps=1))
    wide = MegaAudioFormer(model_config("tiny", n_q=16, codebook_size=1024)).save_pretrained(tmp_path / "12kbps")
    with pytest.raises(ValueError, match="n_q=16"):
        finetune(config(small_store, tmp_path / "b", scratch=False, init=str(wide), max_steps=1))
    with pytest.raises(ValueError, match="exactly one of --init"):
        finetune(config(small_store, tmp_path / "c", init=str(ckpt)))


def test_freeze_trains_only_a_512_wide_probe_and_leaves_encoder_weights_untouched(small_store, tmp_path):
    ckpt = pretrained(tmp_path / "pre", small_store, 0)
    heads = {}
    for lr in (0.0, 1e-2):
        out = tmp_path / f"probe{lr}"
        finetune(config(small_store, out, scratch=False, init=str(ckpt), freeze=True, lr=lr, max_steps=3))
        assert_same_weights(encoder_weights(out), encoder_weights(ckpt))
        heads[lr] = load_weights(out, "head.")
    # after the standardising norm; the default statistics pooling hands it each feature's mean and std
    assert heads[0.0]["head.1.weight"].shape == (512, 2 * model_config("tiny", 2, 1024).d_global)
    assert not torch.equal(heads[0.0]["head.1.weight"], heads[1e-2]["head.1.weight"])  # the probe did train


def test_probe_seed_draws_another_head_on_the_same_random_encoder(small_store, tmp_path):
    runs = {}
    for name, probe_seed in (("default", None), ("same", 0), ("other", 7)):
        out = tmp_path / name
        runs[name] = finetune(config(small_store, out, seed=0, probe_seed=probe_seed, freeze=True, max_steps=3))
    assert_same_weights(encoder_weights(tmp_path / "other"), encoder_weights(tmp_path / "default"))  # --seed's encoder
    assert not torch.equal(load_weights(tmp_path / "other", "head.")["head.1.weight"],
                           load_weights(tmp_path / "default", "head.")["head.1.weight"])
    assert runs["same"]["metrics"] == runs["default"]["metrics"]  # the default is --seed


@pytest.mark.parametrize("pool, hidden", [("mean", 512), ("stats", 512), ("attention", 0)])  # 0: a linear head
def test_frozen_probe_picks_a_layer_on_valid_and_its_checkpoint_scores_the_same_as_the_cached_features(
        small_store, tmp_path, pool, hidden):
    ckpt = pretrained(tmp_path / "pre", small_store, 0)
    out = tmp_path / "probe"
    results = finetune(config(small_store, out, scratch=False, init=str(ckpt), freeze=True, probe_layer="best",
                              probe_pool=pool, hidden=hidden, epochs=20, lr=1e-2))
    n_layers = model_config("tiny", 2, 1024).n_global_layers
    assert set(results["valid_by_layer"]) == {"mean", *map(str, range(1, n_layers + 1))}
    assert results["valid_by_layer"][results["probe_layer"]] == max(results["valid_by_layer"].values())
    # the saved classifier reads that layer through the encoder and pools it itself: the same test metrics as the
    # cached path (for attention, frames cached per clip and padded per batch)
    again = evaluate(out, small_store)
    assert again["metrics"] == pytest.approx(results["metrics"]["test"], abs=1e-6)
    saved = AudioClassifier.from_pretrained(out)
    assert (saved.probe_layer, saved.probe_pool, saved.hidden) == (results["probe_layer"], pool, hidden)
    assert_same_weights(encoder_weights(out), encoder_weights(ckpt))


def test_lp_ft_fits_the_linear_head_on_frozen_features_before_fine_tuning(small_store, tmp_path):
    ckpt = pretrained(tmp_path / "pre", small_store, 0)
    heads = {}
    for lp_epochs in (0, 20):  # lr 0: fine-tuning changes nothing, so what is saved is what LP-FT left
        out = tmp_path / f"lp{lp_epochs}"
        finetune(config(small_store, out, scratch=False, init=str(ckpt), lr=0.0, max_steps=1, lp_epochs=lp_epochs))
        assert_same_weights(encoder_weights(out), encoder_weights(ckpt))
        heads[lp_epochs] = load_weights(out, "head.")
    assert not torch.equal(heads[0]["head.weight"], heads[20]["head.weight"])


# ---------------------------------------------------------------------------------------------
# augmentation and long clips


def test_chunk_drop_removes_exactly_one_contiguous_span_per_clip():
    lengths = [40, 25, 3]  # the last clip is too short for a span of 25%: unchanged
    B, T, n_q, pad = len(lengths), max(lengths), 2, 1025
    codes = torch.full((B, T, n_q), pad)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        codes[b, :n] = torch.arange(n)[:, None] + 100 * torch.arange(n_q)  # every frame distinct
        mask[b, :n] = True
    generator = torch.Generator().manual_seed(0)
    dropped = set()
    for _ in range(20):
        out, out_mask = chunk_drop(codes, mask, 0.25, pad, generator)
        for b, n in enumerate(lengths):
            kept = out[b, out_mask[b]]
            removed = n - len(kept)
            assert out_mask[b].tolist() == [True] * len(kept) + [False] * (T - len(kept))  # still left-aligned
            assert (out[b, ~out_mask[b]] == pad).all()
            if n < 4:
                assert torch.equal(kept, codes[b, :n])
                continue
            assert 1 <= removed <= int(0.25 * n)
            differs = (kept[:, 0] != codes[b, : len(kept), 0]).nonzero()
            start = int(differs[0]) if len(differs) else len(kept)  # nothing differs: the span ended the clip
            assert torch.equal(kept, torch.cat([codes[b, :start], codes[b, start + removed: n]]))
            dropped.add((b, start, removed))
    assert len(dropped) > 10  # spans are drawn at random, not always the same


def test_chunks_eval_mode_averages_the_windows_of_a_long_clip():
    assert [len(w) for w in windows(np.zeros((240, 2)), 100, "chunks")] == [100, 100]  # a 40-frame tail is dropped
    assert [len(w) for w in windows(np.zeros((260, 2)), 100, "chunks")] == [100, 100, 60]
    assert [len(w) for w in windows(np.zeros((260, 2)), 100, "whole")] == [260]
    torch.manual_seed(0)
    model = AudioClassifier(model_config("tiny", 2, 1024), 4).eval()
    codes = np.random.default_rng(0).integers(0, 1024, (260, 2)).astype(np.int16)
    logits = lambda c, m: model(c, m)[0]  # noqa: E731
    (_, averaged), = clip_outputs(logits, [(codes, {"id": "x"})], model.config.pad_id, 100, "chunks", 8, "cpu")
    with torch.no_grad():
        each = [model(torch.from_numpy(w.astype(np.int64))[None])[0][0].numpy() for w in windows(codes, 100, "chunks")]
    np.testing.assert_allclose(averaged, np.mean(each, axis=0), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# predict and embed


def test_predict_gives_the_same_answer_for_an_audio_file_and_its_token_file(scratch_run, separable_store, tmp_path):
    out, _ = scratch_run
    codes, meta = next(TokenStore(separable_store).iter_samples("test"))
    np.save(tmp_path / "clip.npy", codes)
    from_audio, from_tokens = predict([meta["source"], tmp_path / "clip.npy"], out, top_k=3)
    assert [label for label, _ in from_audio["top"]] == [label for label, _ in from_tokens["top"]]
    assert from_audio["top"][0][0] == meta["labels"][0]
    np.testing.assert_allclose([p for _, p in from_audio["top"]], [p for _, p in from_tokens["top"]], atol=1e-5)
    assert sum(p for _, p in from_audio["top"]) == pytest.approx(1.0, abs=1e-4)  # 3 classes, top 3: all of them


def test_predict_reads_token_files_without_any_codec(scratch_run, separable_store, tmp_path, capsys):
    out, _ = scratch_run
    no_codec = tmp_path / "ckpt"
    no_codec.mkdir()
    for name in ("model.safetensors", "config.json"):
        (no_codec / name).write_bytes((out / name).read_bytes())
    header = json.loads((no_codec / "config.json").read_text())
    header["metadata"]["codec"].update(name="encodec", weights=str(tmp_path / "no-such-weights"))
    (no_codec / "config.json").write_text(json.dumps(header))
    codes, meta = next(TokenStore(separable_store).iter_samples("test"))
    np.save(tmp_path / "clip.npy", codes)
    main(["predict", str(tmp_path / "clip.npy"), "--checkpoint", str(no_codec), "--top-k", "1"])
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'clip.npy'}: {meta['labels'][0]} ")
    with pytest.raises(Exception, match="no-such-weights"):  # audio needs the codec, and says which weights it looked for
        predict([meta["source"]], no_codec)


def test_embed_reads_long_clips_in_windows_of_the_checkpoint_training_length_by_default(separable_store, tmp_path):
    export = pretrained(tmp_path / "export", separable_store, seed=0, pretrain={"max_frames": 50})  # clips: 150 frames
    info = embed(export, separable_store, tmp_path / "emb.npy", split="test")
    whole = embed(export, separable_store, tmp_path / "whole.npy", split="test", eval_mode="whole")
    assert (info["eval_mode"], info["max_frames"], whole["eval_mode"]) == ("chunks", 50, "whole")
    codes = next(TokenStore(separable_store).iter_samples("test"))[0]
    model, _ = load_classifier(export)
    with torch.no_grad():
        embeddings = [model.embed(torch.from_numpy(w.astype(np.int64))[None])[0].numpy() for w in windows(codes, 50, "chunks")]
        full = model.embed(torch.from_numpy(codes.astype(np.int64))[None])[0].numpy()
    assert len(embeddings) == 3
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy")[0], np.mean(embeddings, axis=0), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "whole.npy")[0], full, atol=1e-5)


def test_embed_writes_one_mean_pooled_vector_per_clip_with_ids(scratch_run, separable_store, tmp_path):
    out, _ = scratch_run
    info = embed(out, separable_store, tmp_path / "emb.npy", split="valid")
    vectors = np.load(tmp_path / "emb.npy")
    index = json.loads((tmp_path / "emb.json").read_text())
    samples = list(TokenStore(separable_store).iter_samples("valid"))
    assert vectors.shape == (len(samples), info["dim"]) and vectors.dtype == np.float32
    assert index["ids"] == [m["id"] for _, m in samples]
    model, _ = load_classifier(out)
    with torch.no_grad():
        first = model.embed(torch.from_numpy(samples[0][0].astype(np.int64))[None])[0].numpy()
    np.testing.assert_allclose(vectors[0], first, atol=1e-5)


def test_embed_reads_any_layer_of_a_checkpoint_with_either_parameter_free_pooling(separable_store, tmp_path, capsys):
    export = pretrained(tmp_path / "export", separable_store, seed=0)
    main(["embed", "--checkpoint", str(export), "--data", str(separable_store), "--out", str(tmp_path / "all"),
          "--split", "test", "--eval-mode", "whole", "--probe-layer", "all", "--probe-pool", "stats"])
    written = json.loads(capsys.readouterr().out)
    every = np.load(tmp_path / "all.npy")
    model, _ = load_classifier(export)
    depth, d = model.config.n_global_layers, model.config.d_global
    assert every.shape == (12, depth + 2, 2 * d) and written["dim"] == 2 * d
    one = embed(export, separable_store, tmp_path / "one.npy", split="test", eval_mode="whole", probe_layer="1",
                probe_pool="stats")
    np.testing.assert_allclose(np.load(one["path"]), every[:, 1], atol=1e-5)
    default = embed(export, separable_store, tmp_path / "default.npy", split="test", eval_mode="whole")
    assert (default["probe_layer"], default["probe_pool"], default["dim"]) == ("last", "mean", d)
    np.testing.assert_allclose(np.load(default["path"]), every[:, depth, :d], atol=1e-5)  # the stats' first half
    codes = torch.from_numpy(next(TokenStore(separable_store).iter_samples("test"))[0].astype(np.int64))[None]
    with torch.no_grad():
        states = model.global_encoder.layer_states(codes)  # the patch embeddings, then every layer
    np.testing.assert_allclose(every[0, 0, :d], states[0].mean(dim=1)[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(every[0, depth + 1, d:], torch.stack(states[1:]).mean(dim=0)[0].std(dim=0,
                               unbiased=False).numpy(), atol=1e-4)


def test_embed_will_not_read_another_layer_through_a_learned_attention_pool(separable_store, tmp_path):
    ts = TokenStore(separable_store)
    probe = AudioClassifier(model_config("tiny", ts.n_q, ts.codebook_size), 3, hidden=0, probe_layer="2",
                            probe_pool="attention")
    probe.save_pretrained(tmp_path / "probe", metadata={"codec": ts.card["codec"]})
    with pytest.raises(ValueError, match="attention: pass --probe-pool mean or stats"):
        embed(tmp_path / "probe", separable_store, tmp_path / "emb.npy", probe_layer="1")
    info = embed(tmp_path / "probe", separable_store, tmp_path / "emb.npy", split="test", probe_layer="1",
                 probe_pool="mean")
    assert (info["probe_layer"], info["probe_pool"], np.load(info["path"]).shape) == ("1", "mean", (12, probe.config.d_global))


def test_embed_safetensors_holds_the_same_vectors_and_the_ids(scratch_run, separable_store, tmp_path, capsys):
    from safetensors import safe_open

    out, _ = scratch_run
    main(["embed", "--checkpoint", str(out), "--data", str(separable_store), "--out", str(tmp_path / "emb"),
          "--split", "test", "--safetensors"])
    written = json.loads(capsys.readouterr().out)
    with safe_open(written["safetensors"], framework="numpy") as f:
        vectors, metadata = f.get_tensor("embeddings"), f.metadata()
    np.testing.assert_array_equal(vectors, np.load(tmp_path / "emb.npy"))
    assert json.loads(metadata["ids"]) == json.loads((tmp_path / "emb.json").read_text())["ids"]
    assert len(json.loads(metadata["ids"])) == vectors.shape[0] == written["n"] == 12


def test_predict_json_prints_one_parsable_line_per_file(scratch_run, separable_store, tmp_path, capsys):
    out, _ = scratch_run
    samples = list(TokenStore(separable_store).iter_samples("test"))[:2]
    files = []
    for i, (codes, _) in enumerate(samples):
        np.save(tmp_path / f"clip{i}.npy", codes)
        files.append(str(tmp_path / f"clip{i}.npy"))
    main(["predict", *files, "--checkpoint", str(out), "--top-k", "2", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == files
    assert [len(line["top"]) for line in lines] == [2, 2]
    assert [line["top"][0][0] for line in lines] == [predict([f], out, top_k=1)[0]["top"][0][0] for f in files]


# ---------------------------------------------------------------------------------------------
# the Hugging Face Hub: save_pretrained / from_pretrained / push_to_hub and the model card


def test_a_pretrained_export_round_trips_with_its_codec_card_and_model_card(small_store, tmp_path):
    first = pretrained(tmp_path / "export", small_store, seed=3, pretrain={"step": 7, "data": ["stores/x"],
                                                                           "mask_ratio": 0.25, "eval": {"loss": 1.5}})
    model = MegaAudioFormer.from_pretrained(first).eval()
    again = MegaAudioFormer.from_pretrained(model.save_pretrained(tmp_path / "again")).eval()
    codes = torch.from_numpy(next(TokenStore(small_store).iter_samples("train"))[0].astype(np.int64))[None]
    with torch.no_grad():
        assert torch.equal(model(codes)[0], again(codes)[0])
    assert again.metadata["codec"] == TokenStore(small_store).card["codec"]
    card = (tmp_path / "again" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mega-audio")
    assert TokenStore(small_store).card["codec"]["fingerprint"] in card and "`stores/x`" in card and "1.5000" in card


def test_a_finetuned_model_pushed_to_a_local_hub_loads_back_with_the_same_outputs(scratch_run, separable_store,
                                                                                   tmp_path, monkeypatch):
    from huggingface_hub import constants
    from hub_server import FakeHub

    out, results = scratch_run
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # what HF_ENDPOINT sets when huggingface_hub is imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI runs offline; this hub is a local server
    model = AudioClassifier.from_pretrained(out).eval()
    url = model.push_to_hub("lab/tiny-classifier")
    assert url.startswith(hub.url) and hub.commits == ["lab/tiny-classifier"]
    pushed = tmp_path / "hub" / "lab" / "tiny-classifier"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    reloaded = AudioClassifier.from_pretrained(pushed).eval()
    codes = torch.from_numpy(next(TokenStore(separable_store).iter_samples("test"))[0].astype(np.int64))[None]
    with torch.no_grad():
        assert torch.equal(model(codes)[0], reloaded(codes)[0])
    assert reloaded.metadata["labels"] == ["fast", "slow", "steady"]
    assert reloaded.metadata["results"]["test"] == results["metrics"]["test"]
    card = (pushed / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "| test |" in card and "`steady`" in card
    # the run's own directory holds the same card: the export is hub-ready as it is
    assert (out / "README.md").read_text() == card


def test_a_missing_checkpoint_that_looks_like_a_repo_id_fails_in_one_line():
    with pytest.raises(FileNotFoundError, match="no local directory and could not be read from the Hugging Face Hub"):
        MegaAudioFormer.from_pretrained("nobody/no-such-model", local_files_only=True)


# ---------------------------------------------------------------------------------------------
# the task registry


def test_task_registry_knows_vocabularies_splits_and_metrics():
    assert len(get_task("gtzan").labels) == 10 and len(get_task("nsynth").labels) == 11
    audioset = get_task("audioset")
    assert audioset.multi_label and len(audioset.labels) == 527 and audioset.metrics == ("map", "roc_auc")
    assert audioset.labels[0] == "Speech"  # display names, as manifests.py stores AudioSet labels
    assert get_task("nsynth").metrics == ("accuracy", "macro_f1") and get_task("speech_music").labels == ("music", "speech")
    assert set(TASKS) == {"gtzan", "nsynth", "nsynth-pitch", "speech_music", "audioset", "folder"}
    assert get_task("folder").vocabulary({"labels": ["a", "b"]}) == ["a", "b"]


def test_nsynth_pitch_reads_the_pitch_from_the_clip_extra():
    task = get_task("nsynth-pitch")
    vocab = list(task.labels)
    targets = task.encode([{"labels": ["bass"], "extra": {"pitch": 60}}, {"labels": ["bass"]}], vocab)
    assert targets.tolist() == [60, NO_LABEL]


def test_multi_label_targets_are_multi_hot_over_the_vocabulary():
    task = get_task("audioset")
    vocab = list(task.labels)
    targets = task.encode([{"labels": ["Speech", "Music", "not a class"]}], vocab)
    assert targets.shape == (1, 527) and targets.sum() == 2 and targets[0, vocab.index("Music")] == 1


def test_a_store_of_another_dataset_is_refused_by_a_dataset_task(small_store, tmp_path):
    with pytest.raises(ValueError, match="--task folder"):
        finetune(config(small_store, tmp_path, task="gtzan"))


def tokenized(tree_root: Path, dataset: str) -> Path:
    out = tree_root.parent / f"{dataset}-store"
    tokenize(TokenizeConfig(dataset=dataset, data_root=str(tree_root), out=str(out), codec="bestrq", bitrate=1.5,
                            shard_size=4, batch_size=4, num_workers=0, device="cpu"))
    return out


def test_nsynth_pitch_task_learns_the_pitch_kept_in_the_clip_extra(tmp_path):
    from audio_trees import write_nsynth_tree

    tree = write_nsynth_tree(tmp_path / "nsynth", per_split=2, seconds=0.5)
    store = tokenized(tree.root, "nsynth")
    out = tmp_path / "pitch"
    # also runs the other code paths: chunk-drop in training, chunked evaluation (the default) of clips longer than
    # the window
    results = finetune(config(store, out, task="nsynth-pitch", max_steps=2, batch_size=2, augment="chunk-drop",
                              max_seconds=0.25))
    assert (results["augment"], results["config"]["eval_mode"]) == ("chunk-drop", "chunks")
    test_pitches = {str(f.extra["pitch"]) for f in tree.files if f.split == "test"}
    truth = {r["label"] for r in json.loads((out / "per_class.json").read_text()) if r["support"]}
    assert truth == test_pitches and results["n"] == {"train": 6, "valid": 6, "test": 6}
    assert load_classifier(out)[1]["labels"] == [str(p) for p in range(128)]


def test_fine_tuning_with_colour_db_trains_on_recoloured_codes_and_says_so(logmel_store, small_store, tmp_path):
    short = dict(max_steps=3, batch_size=4, max_seconds=1.0, epochs=1)
    plain = finetune(config(logmel_store, tmp_path / "plain", **short))
    coloured = finetune(config(logmel_store, tmp_path / "colour", colour_db=6.0, **short))
    # the same seed, init and clip order: only the re-made codes (and the crops drawn after them) can move the loss
    assert coloured["history"][0]["train_loss"] != plain["history"][0]["train_loss"]
    assert (plain["augment"], coloured["augment"]) == ("none", "colour 6 dB")
    assert "augmentation `colour 6 dB`" in (tmp_path / "colour" / "README.md").read_text()
    with pytest.raises(ValueError, match="--freeze reads every clip's features once"):
        finetune(config(logmel_store, tmp_path / "frozen", colour_db=6.0, freeze=True, **short))
    with pytest.raises(ValueError, match="has none: re-tokenize it with --store-features logmel"):
        finetune(config(small_store, tmp_path / "no-mels", colour_db=6.0, **short))


def test_gtzan_split_random_re_splits_all_clips_of_the_same_store_80_10_10_and_evaluate_follows_it(tmp_path):
    from audio_trees import write_gtzan_tree

    tree = write_gtzan_tree(tmp_path / "gtzan", genres=("disco", "hiphop", "jazz"), per_split=2, excluded=4, seconds=0.5)
    # 10 clips of each of 3 genres: 6 in the filtered split, 4 left out of it
    store = tokenized(tree.root, "gtzan")
    assert set(TokenStore(store).card["splits"]) == {"train", "valid", "test", "excluded"}

    filtered = finetune(config(store, tmp_path / "filtered", task="gtzan", max_steps=1, batch_size=4))
    assert filtered["split"] == "filtered" and filtered["n"] == {"train": 6, "valid": 6, "test": 6}
    shuffled = finetune(config(store, tmp_path / "random", task="gtzan", split="random", max_steps=1, batch_size=4))
    assert shuffled["split"] == "random" and shuffled["n"] == {"train": 24, "valid": 3, "test": 3}

    gtzan = get_task("gtzan")
    view = task_view(gtzan, TokenStore(store), list(gtzan.labels), seed=5, scheme="random")  # the run seed changes nothing
    roles = {role: keep.holdout for role, keep in view.keep.items()}
    assert set().union(*roles.values()) == {f.key.replace(".", "_") for f in tree.files}  # excluded clips too
    assert sum(map(len, roles.values())) == 30  # disjoint
    genre_of = {f.key.replace(".", "_"): f.labels[0] for f in tree.files}
    for role, share in (("train", 8), ("valid", 1), ("test", 1)):
        assert Counter(genre_of[i] for i in roles[role]) == {"disco": share, "hiphop": share, "jazz": share}

    again = evaluate(tmp_path / "random", store)  # the checkpoint knows its split: the random test share
    assert again["n"] == 3 and again["metrics"] == pytest.approx(shuffled["metrics"]["test"])
    assert evaluate(tmp_path / "filtered", store)["n"] == 6
    with pytest.raises(ValueError, match="no --split 'random'"):
        finetune(config(store, tmp_path / "folder", task="folder", split="random", max_steps=1))


def test_gtzan_split_random_on_a_store_without_the_excluded_clips_asks_for_a_re_tokenize(tmp_path):
    from audio_trees import write_gtzan_tree

    tree = write_gtzan_tree(tmp_path / "gtzan", genres=("disco", "jazz"), per_split=1, excluded=0, seconds=0.5)
    store = tokenized(tree.root, "gtzan")  # what a store made before the `excluded` split looks like
    with pytest.raises(ValueError, match=r"no 'excluded' split .* re-tokenize it to a new --out"):
        finetune(config(store, tmp_path / "random", task="gtzan", split="random", max_steps=1))
    assert finetune(config(store, tmp_path / "filtered", task="gtzan", max_steps=1))["split"] == "filtered"


def test_audioset_task_is_multi_label_and_selects_on_a_held_out_slice_of_balanced_train(tmp_path):
    from audio_trees import write_audioset_tree

    tree = write_audioset_tree(tmp_path / "audioset", per_subset=10, missing=0, seconds=0.5)
    store = tokenized(tree.root, "audioset")
    out = tmp_path / "as"
    results = finetune(config(store, out, task="audioset", max_steps=2, valid_fraction=0.3))
    assert results["splits"] == {"train": "balanced_train", "valid": "balanced_train", "test": "eval", "holdout": True}
    assert results["n"] == {"train": 7, "valid": 3, "test": 10}  # 30% of balanced_train held out for selection
    assert set(results["metrics"]["test"]) == {"map", "roc_auc"}
    assert 0.0 <= results["metrics"]["test"]["roc_auc"] <= 1.0
    rows = json.loads((out / "per_class.json").read_text())
    eval_labels = {label for f in tree.files if f.split == "eval" for label in f.labels}
    assert {r["label"] for r in rows if r["support"]} == eval_labels and all("ap" in r for r in rows)
    assert not (out / "confusion.png").exists()
