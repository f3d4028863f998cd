"""Specifications of the training input: exactly-once rank/worker splitting, seeded shuffles and crops, exact resume, collate."""

import numpy as np
import pytest
import torch
from stores import codes_store

from mega_audio.data.store import TokenStore
from mega_audio.data.stream import TokenStream, collate, make_loader, parse_store_weights

PAD = 1025


def stream(store_dir, split="train", **kwargs) -> TokenStream:
    options = dict(batch_size=3, max_frames=40, pad_id=PAD, seed=0)
    options.update(kwargs)
    return TokenStream([TokenStore(store_dir)], split, **options)


def take(iterable, n):
    out = []
    for batch in iterable:
        out.append(batch)
        if len(out) == n:
            break
    return out


def flat_ids(batches):
    return [i for b in batches for i in b["ids"]]


@pytest.mark.parametrize("world_size, workers", [(1, 2), (2, 1), (3, 2)])
def test_one_pass_gives_every_clip_to_exactly_one_rank_and_worker(small_store, world_size, workers):
    every_clip = sorted(m["id"] for _, m in TokenStore(small_store).iter_samples("train"))
    seen = []
    for rank in range(world_size):
        s = stream(small_store, loop=False, rank=rank, world_size=world_size)
        seen += flat_ids(make_loader(s, num_workers=workers))
    assert sorted(seen) == every_clip
    # both ways of splitting are exercised: whole shards per slot (2 slots), every n-th clip when shards are too few (6)
    assert (len(s.shards) >= world_size * workers) == (world_size * workers == 2)


def test_shuffle_is_seeded_and_differs_between_seeds_and_epochs(small_store):
    n = TokenStore(small_store).num_samples("train")
    epochs = lambda seed: flat_ids(take(stream(small_store, batch_size=1, seed=seed), 2 * n))
    a, again, other = epochs(0), epochs(0), epochs(1)
    assert a == again
    assert a != other
    first, second = a[:n], a[n:]
    assert sorted(first) == sorted(second) and len(set(first)) == n  # each epoch is one full pass
    assert first != second


def test_start_batch_resumes_the_exact_batch_sequence_across_workers(small_store):
    full = take(make_loader(stream(small_store, max_frames=20), num_workers=2), 9)
    resumed = take(make_loader(stream(small_store, max_frames=20, start_batch=5), num_workers=2), 4)
    for a, b in zip(full[5:], resumed, strict=True):
        assert a["ids"] == b["ids"]
        torch.testing.assert_close(a["codes"], b["codes"])  # the same random crops too


def test_random_crops_are_seeded_windows_of_the_clip(small_store):
    clips = {m["id"]: c for c, m in TokenStore(small_store).iter_samples("train")}
    a = take(stream(small_store, max_frames=30, seed=3), 2)
    b = take(stream(small_store, max_frames=30, seed=3), 2)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["codes"], y["codes"])
    starts = set()
    for i, clip_id in enumerate(a[0]["ids"]):
        clip, window = clips[clip_id], a[0]["codes"][i].numpy()  # (T, n_q)
        matches = [s for s in range(len(clip) - 29) if np.array_equal(clip[s: s + 30], window)]
        assert matches, f"{clip_id}: the batch row is not a window of the clip"
        starts.add(matches[0])
    assert starts != {0}  # random, not always the start


def test_collate_crops_pads_and_marks_valid_frames():
    rng = np.random.default_rng(0)
    lengths = [50, 200, 120]
    samples = [(rng.integers(0, 1024, (n, 2)).astype(np.int16), {"id": f"c{i}", "labels": [str(i)]})
               for i, n in enumerate(lengths)]
    batch = collate(samples, max_frames=100, pad_id=PAD, crop="random", rng=np.random.default_rng(1))
    assert batch["codes"].shape == (3, 100, 2) and batch["codes"].dtype == torch.long
    assert batch["padding_mask"].dtype == torch.bool
    assert batch["padding_mask"].sum(1).tolist() == [50, 100, 100]
    assert (batch["codes"][0, 50:] == PAD).all()
    np.testing.assert_array_equal(batch["codes"][0, :50].numpy(), samples[0][0])
    assert batch["ids"] == ["c0", "c1", "c2"] and batch["labels"] == [["0"], ["1"], ["2"]]

    start = collate(samples, max_frames=100, pad_id=PAD, crop="start")
    np.testing.assert_array_equal(start["codes"][1].numpy(), samples[1][0][:100])
    center = collate(samples, max_frames=100, pad_id=PAD, crop="center")
    np.testing.assert_array_equal(center["codes"][2].numpy(), samples[2][0][10:110])
    whole = collate(samples, max_frames=None, pad_id=PAD, crop="start")
    assert whole["codes"].shape == (3, 200, 2) and whole["padding_mask"].sum(1).tolist() == lengths


def test_wds_and_zarr_stores_stream_the_same_batches(small_store, small_zarr_store):
    for a, b in zip(take(stream(small_store), 6), take(stream(small_zarr_store), 6), strict=True):
        assert a["ids"] == b["ids"]
        torch.testing.assert_close(a["codes"], b["codes"])


def test_endless_stream_refuses_more_ranks_and_workers_than_clips(small_store):
    n = TokenStore(small_store).num_samples("test")
    with pytest.raises(ValueError, match="fewer than ranks x workers"):
        next(iter(stream(small_store, split="test", world_size=n + 1)))


def test_missing_split_is_named_with_the_splits_that_exist(small_store):
    with pytest.raises(ValueError, match="no 'holdout' shards.*train"):
        stream(small_store, split="holdout")


def test_int16_batches_from_workers_carry_the_same_codes_as_long_ones(small_store):
    wide = take(make_loader(stream(small_store), num_workers=2), 4)
    narrow = take(make_loader(stream(small_store, codes_dtype=torch.int16), num_workers=2), 4)
    for a, b in zip(wide, narrow, strict=True):
        assert a["codes"].dtype == torch.long and b["codes"].dtype == torch.int16
        torch.testing.assert_close(a["codes"], b["codes"].long())
        torch.testing.assert_close(a["padding_mask"], b["padding_mask"])


# ---------------------------------------------------------------------------------------------
# weighted mixing of stores (continual pre-training with replay)


def mixed_stream(new_store, old_store, weights, **kwargs) -> TokenStream:
    paths, normalised = parse_store_weights([f"{new_store}:{weights[0]}", f"{old_store}:{weights[1]}"])
    options = dict(batch_size=4, max_frames=20, pad_id=PAD, seed=0, weights=normalised)
    options.update(kwargs)
    return TokenStream([TokenStore(p) for p in paths], "train", **options)


@pytest.fixture
def old_store(small_store, tmp_path):
    """An 'old corpus' of 8 clips (ids old0..old7) with small_store's codec card."""
    return codes_store(tmp_path / "old", TokenStore(small_store).card["codec"], n=8, prefix="old")


def test_data_weights_parse_from_path_suffixes_and_are_normalised(tmp_path):
    assert parse_store_weights(["a", "b"]) == (["a", "b"], None)  # no weights: the stores are read as one
    paths, weights = parse_store_weights(["a:3", "b", "c:x"])
    assert paths == ["a", "b", "c:x"] and weights == pytest.approx([0.6, 0.2, 0.2])
    colon_dir = tmp_path / "store:2"
    colon_dir.mkdir()
    assert parse_store_weights([str(colon_dir), "b:1"]) == ([str(colon_dir), "b"], [0.5, 0.5])
    with pytest.raises(ValueError, match="must be a positive number"):
        parse_store_weights(["a:0.8", "b:-1"])


def test_weighted_stores_are_read_in_the_configured_ratio_and_the_same_for_the_same_seed(small_store, old_store):
    ids = lambda seed, weights: flat_ids(take(mixed_stream(small_store, old_store, weights, seed=seed), 250))
    mix = ids(0, (0.8, 0.2))
    assert abs(sum(i.startswith("old") for i in mix) / len(mix) - 0.2) < 0.04  # 1000 clips: 0.2 +- 4 sigma
    heavy = ids(0, (1, 3))  # relative weights: 1:3 is 25% / 75%
    assert abs(sum(i.startswith("old") for i in heavy) / len(heavy) - 0.75) < 0.04
    assert mix == ids(0, (0.8, 0.2)) and mix != ids(1, (0.8, 0.2))
    old = [i for i in mix if i.startswith("old")]
    assert sorted(old[:8]) == [f"old{i}" for i in range(8)]  # the replayed store still comes round in whole epochs


def test_a_weighted_mix_resumes_the_exact_batch_sequence_across_workers(small_store, old_store):
    full = take(make_loader(mixed_stream(small_store, old_store, (0.7, 0.3)), num_workers=2), 14)
    resumed = take(make_loader(mixed_stream(small_store, old_store, (0.7, 0.3), start_batch=9), num_workers=2), 5)
    for a, b in zip(full[9:], resumed, strict=True):
        assert a["ids"] == b["ids"]
        torch.testing.assert_close(a["codes"], b["codes"])
