import json

import numpy as np
import pytest

from mega_audio.data.store import (ShardWriter, TokenStore, check_same_codec, clean_interrupted, list_shards,
                                   read_shard, shard_ids, write_card)

CODEC = {"name": "bestrq", "fingerprint": "abc", "sample_rate": 24000, "frame_rate": 75.0, "bandwidth": 1.5,
         "n_q": 2, "codebook_size": 1024}


def random_samples(n, n_q=2, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 1024, (int(rng.integers(1, 200)), n_q)).astype(np.int16),
             {"id": f"clip_{i:03d}", "split": "train" if i % 4 else "test", "labels": [f"c{i % 3}"]}) for i in range(n)]


def build_store(path, fmt, samples, shard_size=4):
    writer = ShardWriter(path, fmt, rank=0, shard_size=shard_size)
    for codes, meta in samples:
        writer.add(codes, meta)
    writer.close()
    return write_card(path, CODEC, fmt, "unit")


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_store_round_trips_every_clip_exactly(tmp_path, fmt):
    samples = random_samples(23)
    card = build_store(tmp_path / fmt, fmt, samples)
    store = TokenStore(tmp_path / fmt)
    back = {meta["id"]: (codes, meta) for codes, meta in store.iter_samples()}
    assert len(back) == 23
    for codes, meta in samples:
        np.testing.assert_array_equal(back[meta["id"]][0], codes)
        assert back[meta["id"]][0].dtype == np.int16
        assert back[meta["id"]][1]["labels"] == meta["labels"]
    assert card["splits"]["train"]["clips"] + card["splits"]["test"]["clips"] == 23
    assert card["labels"] == ["c0", "c1", "c2"]
    assert {m["split"] for _, m in store.iter_samples(split="test")} == {"test"}
    assert store.num_samples("test") == sum(m["split"] == "test" for _, m in samples)


def test_wds_and_zarr_stores_read_back_equal(tmp_path):
    samples = random_samples(10, n_q=16)
    for fmt in ("wds", "zarr"):
        build_store(tmp_path / fmt, fmt, samples)
    a = {m["id"]: c for c, m in TokenStore(tmp_path / "wds").iter_samples()}
    b = {m["id"]: c for c, m in TokenStore(tmp_path / "zarr").iter_samples()}
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_interrupted_shard_is_invisible_and_cleaned(tmp_path, fmt):
    build_store(tmp_path, fmt, random_samples(8), shard_size=4)
    shards = list_shards(tmp_path)
    # a crash after the rename but before the index: the shard file exists, its index does not
    shards[0].index_path.unlink()
    (tmp_path / "shards" / f"train-r000-000009{'.tar' if fmt == 'wds' else '.zarr'}.tmp").write_text("half")
    assert len(list_shards(tmp_path)) == len(shards) - 1
    removed = clean_interrupted(tmp_path, rank=0)
    assert len(removed) == 2
    assert len(shard_ids(tmp_path)) == 8 - shards[0].n
    assert sorted(p.name for p in (tmp_path / "shards").iterdir() if p.suffix == ".json") == \
        sorted(s.index_path.name for s in shards[1:])


def test_shard_names_continue_after_existing_shards(tmp_path):
    build_store(tmp_path, "wds", random_samples(8), shard_size=4)
    writer = ShardWriter(tmp_path, "wds", rank=0, shard_size=4)
    codes, meta = random_samples(1, seed=5)[0]
    writer.add(codes, {**meta, "id": "late"})
    writer.close()
    assert len({s.name for s in list_shards(tmp_path)}) == len(list_shards(tmp_path))
    assert "late" in shard_ids(tmp_path)


def test_mixing_stores_of_different_codecs_is_refused(tmp_path):
    build_store(tmp_path / "a", "wds", random_samples(4))
    build_store(tmp_path / "b", "wds", random_samples(4))
    card = json.loads((tmp_path / "b" / "dataset.json").read_text())
    card["codec"]["fingerprint"] = "other"
    (tmp_path / "b" / "dataset.json").write_text(json.dumps(card))
    check_same_codec([TokenStore(tmp_path / "a"), TokenStore(tmp_path / "a")])
    with pytest.raises(ValueError, match="different codecs"):
        check_same_codec([TokenStore(tmp_path / "a"), TokenStore(tmp_path / "b")])


def test_a_directory_without_card_is_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="mega-audio tokenize"):
        TokenStore(tmp_path)


def test_shard_order_is_write_order(tmp_path):
    samples = random_samples(4)
    build_store(tmp_path, "zarr", samples, shard_size=10)
    (shard,) = list_shards(tmp_path, "train")
    assert [m["id"] for _, m in read_shard(shard)] == [m["id"] for _, m in samples if m["split"] == "train"]
