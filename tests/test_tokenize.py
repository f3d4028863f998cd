import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch
from audio_trees import write_folder_tree, write_gtzan_tree

from mega_audio.codecs.logmel import LogMel
from mega_audio.data.audio import load_audio
from mega_audio.data.manifest import read_manifest
from mega_audio.data.store import TokenStore, list_shards, read_shard
from mega_audio.data.stream import collate
from mega_audio.data.tokenize import TokenizeConfig, tokenize


def config(tmp_path, **kw):
    base = dict(dataset="folder", data_root=str(tmp_path / "audio"), out=str(tmp_path / "store"), codec="bestrq",
                bitrate=1.5, shard_size=3, batch_size=4, num_workers=0, device="cpu")
    return TokenizeConfig(**{**base, **kw})


def cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "mega_audio.cli", "tokenize", *args], **popen)


def cli_args(tmp_path, *extra):
    return ["--dataset", "folder", "--data-root", str(tmp_path / "audio"), "--out", str(tmp_path / "store"),
            "--codec", "bestrq", "--num-workers", "0", "--device", "cpu", *extra]


def id_counts(store):
    return Counter(meta["id"] for shard in list_shards(store) for _, meta in read_shard(shard))


@pytest.mark.parametrize("fmt,bitrate", [("wds", 1.5), ("zarr", 12.0)])
def test_store_holds_exactly_the_manifest_clips_with_channel_packed_codes(tmp_path, fmt, bitrate):
    tree = write_folder_tree(tmp_path / "audio", per_label=4, seconds=0.7)
    stats = tokenize(config(tmp_path, format=fmt, bitrate=bitrate))
    manifest = {c.id: c for c in read_manifest(tmp_path / "store" / "manifest.jsonl")}
    store = TokenStore(tmp_path / "store")
    n_q = {1.5: 2, 12.0: 16}[bitrate]
    seen = Counter()
    for codes, meta in store.iter_samples():
        seen[meta["id"]] += 1
        clip = manifest[meta["id"]]
        assert codes.dtype == np.int16 and codes.shape == (math.ceil(clip.duration * 75 - 1e-9), n_q)
        assert meta["labels"] == clip.labels and meta["split"] == clip.split
    assert seen == Counter(list(manifest)) and len(manifest) == len(tree.files)
    assert stats["ok"] == len(tree.files) and stats["failed"] == 0
    card = store.card
    assert card["complete"] and card["format"] == fmt and card["codec"]["n_q"] == n_q
    assert card["labels"] == ["bird", "cat", "dog"]
    assert sum(s["clips"] for s in card["splits"].values()) == len(tree.files)


def test_bad_files_land_in_failures_log_and_nothing_else_is_lost(tmp_path):
    tree = write_folder_tree(tmp_path / "audio", per_label=3, seconds=0.5, faulty=True)
    stats = tokenize(config(tmp_path))
    failures = [json.loads(line) for line in (tmp_path / "store" / "failures-r000.jsonl").read_text().splitlines()]
    failed_paths = {f["path"]: f["reason"] for f in failures}
    assert set(failed_paths) == {str(p) for p in tree.faulty.values()}
    reasons = {kind: failed_paths[str(path)] for kind, path in tree.faulty.items()}
    assert reasons["corrupt"] == "not audio / unknown format" and reasons["empty"].startswith("empty")
    assert "NaN" in reasons["nan"] and reasons["too_short"].startswith("too short")
    assert set(id_counts(tmp_path / "store")) == {c.id for c in read_manifest(tmp_path / "store" / "manifest.jsonl")
                                                  if c.path not in failed_paths}
    assert stats["failed"] == 4 and TokenStore(tmp_path / "store").card["complete"]


def test_rerun_finishes_nothing_twice(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=2, seconds=0.5, faulty=True)
    first = tokenize(config(tmp_path))
    second = tokenize(config(tmp_path))
    assert second["ok"] == 0 and second["failed"] == 0 and second["skipped"] == first["ok"] + first["failed"]
    assert max(id_counts(tmp_path / "store").values()) == 1


def test_a_store_refuses_tokens_of_another_codec(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=1, seconds=0.5)
    tokenize(config(tmp_path, bitrate=1.5))
    with pytest.raises(ValueError, match="another codec"):
        tokenize(config(tmp_path, bitrate=12.0))


def test_logmel_features_round_trip_through_both_store_formats_aligned_with_the_codes(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=2, seconds=0.7)
    stores = {}
    for fmt in ("wds", "zarr"):
        tokenize(config(tmp_path, format=fmt, out=str(tmp_path / fmt), store_features="logmel"))
        stores[fmt] = {meta["id"]: (codes, meta) for codes, meta in TokenStore(tmp_path / fmt).iter_samples()}
    manifest = {c.id: c for c in read_manifest(tmp_path / "wds" / "manifest.jsonl")}
    log_mel = LogMel()
    assert stores["wds"].keys() == stores["zarr"].keys() == manifest.keys()
    for clip_id, (codes, meta) in stores["wds"].items():
        features = meta["logmel"]
        assert features.dtype == np.float16 and features.shape == (len(codes), 80)  # one mel frame per code frame
        wave = torch.from_numpy(load_audio(manifest[clip_id].path, 24000))
        np.testing.assert_array_equal(features, log_mel(wave, len(codes)).half().numpy())  # the stored frames, exactly
        zarr_codes, zarr_meta = stores["zarr"][clip_id]
        np.testing.assert_array_equal(zarr_meta["logmel"], features)
        np.testing.assert_array_equal(zarr_codes, codes)
    card = TokenStore(tmp_path / "zarr").card["features"]["logmel"]
    assert card["n_mels"] == 80 and card["dtype"] == "float16" and card["mb_per_hour"] == 43.2  # 80 x 2 B x 75 x 3600

    batch = collate(list(stores["zarr"].values())[:3], max_frames=20, pad_id=1025, rng=np.random.default_rng(0))
    for i, clip_id in enumerate(batch["ids"]):  # the crop window of the codes is the window of the features
        codes, meta = stores["zarr"][clip_id]
        n = int(batch["padding_mask"][i].sum())
        start = next(s for s in range(len(codes) - n + 1) if np.array_equal(codes[s: s + n], batch["codes"][i, :n].numpy()))
        np.testing.assert_array_equal(batch["features"][i, :n].numpy(), meta["logmel"][start: start + n])
        assert not batch["features"][i, n:].any()
    assert "features" not in collate([(c, {"id": "x"}) for c, _ in stores["wds"].values()], None, 1025)


def test_a_store_refuses_a_resume_with_other_features(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=1, seconds=0.5)
    tokenize(config(tmp_path))
    with pytest.raises(ValueError, match="same --store-features"):
        tokenize(config(tmp_path, store_features="logmel"))


@pytest.mark.slow
def test_two_processes_split_the_work_and_their_union_is_the_manifest(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=4, seconds=0.5)
    proc = cli(*cli_args(tmp_path, "--nproc", "2", "--shard-size", "2"))
    assert proc.wait(timeout=300) == 0
    by_rank = {0: set(), 1: set()}
    for shard in list_shards(tmp_path / "store"):
        rank = int(shard.name.split("-r")[1][:3])
        by_rank[rank].update(meta["id"] for _, meta in read_shard(shard))
    manifest = {c.id for c in read_manifest(tmp_path / "store" / "manifest.jsonl")}
    assert by_rank[0] and by_rank[1] and not by_rank[0] & by_rank[1]
    assert by_rank[0] | by_rank[1] == manifest
    assert TokenStore(tmp_path / "store").card["complete"]


@pytest.mark.slow
def test_resume_after_kill_yields_every_clip_exactly_once(tmp_path):
    write_folder_tree(tmp_path / "audio", labels=tuple(f"c{i}" for i in range(6)), per_label=10, seconds=2.0)
    args = cli_args(tmp_path, "--shard-size", "2", "--batch-size", "1")
    proc = cli(*args, start_new_session=True)
    shards = tmp_path / "store" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list_shards(tmp_path / "store"))
    assert 3 <= done_at_kill < 30, "the run was not interrupted midway"
    assert cli(*args).wait(timeout=300) == 0
    counts = id_counts(tmp_path / "store")
    assert set(counts) == {c.id for c in read_manifest(tmp_path / "store" / "manifest.jsonl")}
    assert set(counts.values()) == {1}
    assert not list(shards.glob("*.tmp"))


def test_gtzan_layout_tokenizes_into_its_filtered_splits(tmp_path):
    tree = write_gtzan_tree(tmp_path / "gtzan")
    tokenize(config(tmp_path, dataset="gtzan", data_root=str(tree.root)))
    store = TokenStore(tmp_path / "store")
    assert set(store.card["splits"]) == {"train", "valid", "test"}
    assert store.num_samples() == len(tree.files)


def test_inspect_prints_card_splits_and_codebook_usage(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=2, seconds=0.5)
    tokenize(config(tmp_path))
    out = subprocess.run([sys.executable, "-m", "mega_audio.cli", "inspect", str(tmp_path / "store")],
                         capture_output=True, text=True, check=True).stdout
    assert '"fingerprint"' in out and "codebook  0" in out and "codebook  1" in out
    assert "train" in out
