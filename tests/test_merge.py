"""Specifications of `mega-audio merge` (task arithmetic): exact on the trivial merges, the formula on real exports,
refusals of other architectures and codecs, and an output that fine-tuning takes."""

import json
import re

import pytest
import torch

from mega_audio.cli import main
from mega_audio.data.store import TokenStore
from mega_audio.models.checkpoint import load_weights, read_checkpoint_config
from mega_audio.models.classifier import AudioClassifier
from mega_audio.models.config import model_config
from mega_audio.models.mega import MegaAudioFormer
from mega_audio.train.finetune import FinetuneConfig, finetune


def export(directory, store, seed, **config_overrides):
    """A Mega-AudioFormer export of random weights (seeded) carrying the store's codec card."""
    torch.manual_seed(seed)
    card = TokenStore(store).card["codec"]
    model = MegaAudioFormer(model_config("tiny", card["n_q"], card["codebook_size"], **config_overrides))
    return model.save_pretrained(directory, metadata={"codec": card, "pretrain": {"step": seed}})


def merge(base, models, lambdas, out):
    main(["merge", "--base", str(base), "--models", *map(str, models), "--lambdas", *map(str, lambdas),
          "--out", str(out)])
    return load_weights(out)


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lambdas_one_zero_give_the_first_model_and_halves_of_two_copies_give_the_copy(small_store, tmp_path, capsys):
    base, m1, m2 = (export(tmp_path / name, small_store, seed) for name, seed in (("base", 0), ("m1", 1), ("m2", 2)))
    assert_identical(merge(base, [m1, m2], [1, 0], tmp_path / "first"), load_weights(m1))
    assert_identical(merge(base, [m1, m1], [0.5, 0.5], tmp_path / "copies"), load_weights(m1))
    assert "merge: base + 2 task vector(s) with lambdas 0.5 0.5" in capsys.readouterr().out


def test_merge_is_base_plus_the_scaled_task_vectors_and_records_what_it_merged(small_store, tmp_path):
    base, m1, m2 = (export(tmp_path / name, small_store, seed) for name, seed in (("base", 0), ("m1", 1), ("m2", 2)))
    merged = merge(base, [m1, m2], [0.3, -0.2], tmp_path / "out")
    theta, t1, t2 = load_weights(base), load_weights(m1), load_weights(m2)
    name = "global_encoder.encoder.blocks.0.mlp.fc.weight"
    expected = theta[name] + 0.3 * (t1[name] - theta[name]) - 0.2 * (t2[name] - theta[name])
    torch.testing.assert_close(merged[name], expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(merged[name], theta[name])
    header = read_checkpoint_config(tmp_path / "out")
    assert header["config"] == read_checkpoint_config(base)["config"]
    assert header["metadata"]["codec"] == TokenStore(small_store).card["codec"]
    assert header["metadata"]["merge"] == {"base": str(base), "models": [str(m1), str(m2)], "lambdas": [0.3, -0.2]}
    assert "pretrain" not in header["metadata"]  # the base's training record does not describe the merge
    assert not (tmp_path / "out.tmp").exists()
    assert f"base `{base}` + 0.3 x (`{m1}` - base) + -0.2 x (`{m2}` - base)" in (tmp_path / "out" / "README.md").read_text()


def refusal(capsys, base, models, lambdas, out) -> str:
    """The one-line error a refused merge prints (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        merge(base, models, lambdas, out)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_a_model_of_another_architecture_or_codec_is_refused_naming_the_mismatch(small_store, tmp_path, capsys):
    base = export(tmp_path / "base", small_store, 0)
    wider = export(tmp_path / "wider", small_store, 1, d_global=96)
    assert re.search(r"^error: .*the architecture differs \(config\.d_global: \d+ vs 96\)",
                     refusal(capsys, base, [wider], [0.5], tmp_path / "a"))
    other_codec = export(tmp_path / "other", small_store, 2)
    header = json.loads((other_codec / "config.json").read_text())
    header["metadata"]["codec"]["fingerprint"] = "0" * 64
    (other_codec / "config.json").write_text(json.dumps(header))
    assert re.search(r"^error: .*different codecs \(.*fingerprint 000000000000\) vs ",
                     refusal(capsys, base, [other_codec], [0.5], tmp_path / "b"))
    assert "pass one lambda per model" in refusal(capsys, base, [base, base], [0.5], tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_classifiers_with_the_same_head_merge_and_the_merge_fine_tunes(small_store, tmp_path):
    card = TokenStore(small_store).card["codec"]
    heads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        clf = AudioClassifier(model_config("tiny", card["n_q"], card["codebook_size"]), n_classes=3)
        heads.append(clf.save_pretrained(tmp_path / f"clf{seed}", metadata={"codec": card, "labels": ["a", "b", "c"]}))
    merged = merge(heads[0], [heads[1]], [1.0], tmp_path / "clf")
    assert_identical(merged, load_weights(heads[1]))

    base, m1 = export(tmp_path / "base", small_store, 0), export(tmp_path / "m1", small_store, 1)
    merge(base, [m1], [0.5], tmp_path / "merged")
    out = tmp_path / "ft"
    finetune(FinetuneConfig(task="folder", data=str(small_store), init=str(tmp_path / "merged"), lr=0.0, max_steps=1,
                            batch_size=4, max_seconds=1.0, output_dir=str(out), eval_batch_size=8))
    assert_identical(load_weights(out, "global_encoder."), load_weights(tmp_path / "merged", "global_encoder."))
