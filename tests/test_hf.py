"""Specifications of `--dataset hf`: Hugging Face datasets (save_to_disk folders, parquet folders) written by the tests
with real encoded audio, tokenized into the same store contract (ids, splits, labels, failures, resume), and the one-line
errors when `datasets` or the data is missing."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mega_audio.cli import main
from mega_audio.data.store import TokenStore

REPO = Path(__file__).resolve().parent.parent


def encoded(seconds: float, rate: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt)
    return buffer.getvalue()


def audio_rows(n: int, seed: int) -> list[dict]:
    """Half WAV at 16 kHz, half FLAC at 48 kHz (what AudioSet on the Hub holds), of 1 to 1.5 s."""
    return [{"bytes": encoded(1.0 + 0.1 * i, 16000 if i % 2 else 48000, "WAV" if i % 2 else "FLAC", seed + i),
             "path": f"clip{seed + i}.{'wav' if i % 2 else 'flac'}"} for i in range(n)]


def tokenize_args(source, out, *extra):
    return ["tokenize", "--dataset", "hf", "--hf-name", str(source), "--out", str(out), "--codec", "bestrq",
            "--num-workers", "0", "--shard-size", "3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    """A DatasetDict on disk: train 5 rows + test 3 rows, ClassLabel labels, a video_id column, one corrupt row."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf") / "saved"
    splits = {}
    for split, n, seed in (("train", 5, 0), ("test", 3, 100)):
        rows = audio_rows(n, seed)
        if split == "train":
            rows[2] = {"bytes": b"not audio at all", "path": "broken.wav"}
        table = {"audio": rows, "label": [i % 2 for i in range(n)], "video_id": [f"vid{seed + i:03d}" for i in range(n)]}
        splits[split] = (datasets.Dataset.from_dict(table)
                         .cast_column("label", datasets.ClassLabel(names=["quiet", "loud"]))
                         .cast_column("audio", datasets.Audio()))  # the Hub's Audio feature, stored as encoded bytes
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def test_a_saved_hub_dataset_tokenizes_into_a_store_with_its_splits_labels_and_ids(saved_dataset, tmp_path, capsys):
    out = tmp_path / "store"
    main(tokenize_args(saved_dataset, out, "--split-map", "train=balanced_train", "test=eval"))
    assert "7 clips ok, 1 failed" in capsys.readouterr().out
    store = TokenStore(out)
    assert store.card["dataset"] == "hf" and store.card["labels"] == ["loud", "quiet"]
    samples = {meta["id"]: (codes, meta) for split in ("balanced_train", "eval") for codes, meta in store.iter_samples(split)}
    assert sorted(samples) == ["vid000", "vid001", "vid003", "vid004", "vid100", "vid101", "vid102"]
    codes, meta = samples["vid003"]  # row 3: WAV at 16 kHz, 1.3 s, label 1
    assert meta["split"] == "balanced_train" and meta["labels"] == ["loud"]
    assert codes.shape == (math.ceil(1.3 * 24000 / 320), 2)
    assert samples["vid000"][0].shape[0] == math.ceil(1.0 * 24000 / 320)  # FLAC at 48 kHz
    (failure,) = [json.loads(line) for log in out.glob("failures-r*.jsonl") for line in log.read_text().splitlines()]
    assert failure["id"] == "vid002" and failure["reason"].startswith("decoder error: ")

    main(tokenize_args(saved_dataset, out, "--split-map", "train=balanced_train", "test=eval"))  # resume: nothing new
    assert "0 clips ok, 0 failed" in capsys.readouterr().out
    assert sum(1 for split in ("balanced_train", "eval") for _ in TokenStore(out).iter_samples(split)) == 7


def test_a_parquet_folder_with_string_label_lists_gives_multi_label_clips_named_by_file(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep the Arrow cache in tmp
    tags = [["Speech"], ["Speech", "Music"], []]
    for split, seed in (("train", 0), ("validation", 10)):
        table = datasets.Dataset.from_dict({"audio": audio_rows(3, seed), "tags": tags}).cast_column("audio", datasets.Audio())
        (tmp_path / "repo" / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "store"
    main(tokenize_args(tmp_path / "repo", out, "--label-column", "tags"))
    store = TokenStore(out)
    assert sorted(store.card["splits"]) == ["train", "valid"]  # `validation` is the store's `valid`
    metas = {meta["id"]: meta for split in ("train", "valid") for _, meta in store.iter_samples(split)}
    assert sorted(metas) == ["clip0", "clip1", "clip10", "clip11", "clip12", "clip2"]
    assert metas["clip11"]["labels"] == ["Speech", "Music"] and metas["clip12"]["labels"] == []


def test_a_label_column_that_is_not_there_is_named_with_the_columns_there(saved_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(tokenize_args(saved_dataset, tmp_path / "store", "--label-column", "genre"))
    assert exit_.value.code == 2
    assert "no column 'genre' among ['audio', 'label', 'video_id']" in capsys.readouterr().err


def run_cli(*args: str, prelude: str = "pass") -> subprocess.CompletedProcess:
    code = f"import sys; {prelude}; from mega_audio.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_without_the_datasets_package_the_error_is_one_line_naming_the_extra(tmp_path):
    result = run_cli(*tokenize_args("some/repo", tmp_path / "store"), prelude="sys.modules['datasets'] = None")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --dataset hf reads audio through the `datasets` package: pip install 'mega-audio[hf]'"]


def test_audioset_without_data_says_in_one_line_where_to_put_it_or_which_hub_copy_to_name(tmp_path):
    # what `make tokenize DATASET=audioset BITRATE=1.5` runs on a fresh machine
    result = run_cli("tokenize", "--dataset", "audioset", "--data-root", str(tmp_path / "data" / "audioset"),
                     "--out", str(tmp_path / "stores" / "audioset"), "--codec", "bestrq", "--bitrate", "1.5")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: no audioset data at {tmp_path / 'data' / 'audioset'}: put the AudioSet")
    assert "--dataset hf --hf-name agkphysics/AudioSet" in line
