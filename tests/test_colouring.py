"""Specifications of `--colour-db`: BEST-RQ codes re-made from stored log-mels under a random EQ, in the stream."""

from functools import partial
from itertools import islice

import numpy as np
import pytest
import torch

from mega_audio.codecs.bestrq import BestRQCodec
from mega_audio.data.colouring import recolour
from mega_audio.data.store import TokenStore
from mega_audio.data.stream import TokenStream


def test_colouring_re_makes_the_stored_codes_at_0_db_and_recodes_a_share_of_frames_at_6_db(logmel_store):
    store = TokenStore(logmel_store)
    codec = BestRQCodec.from_card(store.card["codec"])
    changed = []
    for codes, meta in store.iter_samples("train"):
        plain = recolour(codec, 0.0, codes, meta, np.random.default_rng(0))
        assert (plain == codes).mean() > 0.99  # the stored frames are float16: a rare code flips at a tie
        coloured = recolour(codec, 6.0, codes, meta, np.random.default_rng(1))
        assert coloured.shape == codes.shape and coloured.dtype == np.int16
        np.testing.assert_array_equal(coloured, recolour(codec, 6.0, codes, meta, np.random.default_rng(1)))
        changed.append((coloured != codes).mean())
    assert 0.05 < np.mean(changed) < 0.8  # an EQ moves many frames to other codes, not all of them


def test_a_codec_card_of_another_recipe_is_refused(logmel_store):
    card = {**TokenStore(logmel_store).card["codec"], "stack": 5}  # a card whose fingerprint no longer matches
    with pytest.raises(ValueError, match="cannot be re-made here"):
        BestRQCodec.from_card(card)


def test_the_colour_augmented_stream_is_a_function_of_its_seed(logmel_store):
    codec = BestRQCodec.from_card(TokenStore(logmel_store).card["codec"])
    def first_batches(augment, seed=0):
        stream = TokenStream([TokenStore(logmel_store)], "train", batch_size=4, max_frames=75, pad_id=1025,
                             seed=seed, augment=augment)
        return [b["codes"] for b in islice(iter(stream), 3)]
    coloured = first_batches(partial(recolour, codec, 6.0))
    for a, b in zip(coloured, first_batches(partial(recolour, codec, 6.0))):
        torch.testing.assert_close(a, b)  # a resumed run re-makes the same batches
    plain = first_batches(None)
    assert any(not torch.equal(a, b) for a, b in zip(coloured, plain))
