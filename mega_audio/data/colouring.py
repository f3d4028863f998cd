"""`--colour-db`: re-tokenize every clip from its stored log-mels under a new random spectral colouring each time a
stream reads it, so a model sees every sound through many EQs (renderers, microphones, rooms) without decoding audio.
Pre-training and fine-tuning share it; only BEST-RQ codes can be re-made from log-mels (Encodec's need the waveform)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..codecs.bestrq import BestRQCodec
from ..codecs.logmel import colour, random_colouring
from .store import TokenStore
from .stream import Augment


def stored_log_mels(stores: list[TokenStore], flag: str, value: float) -> list[dict]:
    """Every store's log-mel feature card (`tokenize --store-features logmel`); refuses a store without them, naming
    the flag that needs them and the fix."""
    cards = [store.card.get("features", {}).get("logmel") for store in stores]
    for store, logmel in zip(stores, cards):
        if logmel is None:
            raise ValueError(f"{flag} {value} needs log-mel features, and {store.path} has none: re-tokenize it with "
                             f"--store-features logmel, or pass {flag} 0")
    return cards


def recolour(codec: BestRQCodec, db: float, codes: np.ndarray, meta: dict, rng: np.random.Generator) -> np.ndarray:
    """A clip's codes re-made from its stored log-mels, filtered by a random colouring of about `db` dB."""
    return codec.quantize(colour(torch.from_numpy(meta["logmel"]).float(), random_colouring(codec.n_mels, db, rng)))


def colour_augment(db: float, stores: list[TokenStore]) -> Augment | None:
    """The stream augmentation of `--colour-db db` (None at 0): checks that every store can be re-tokenized."""
    if db <= 0:
        return None
    card = stores[0].card["codec"]
    if card["name"] != "bestrq":
        raise ValueError(f"--colour-db re-makes codes from stored log-mels, which only the bestrq codec can do; "
                         f"{stores[0].path} holds {card['name']} codes: pass --colour-db 0")
    codec = BestRQCodec.from_card(card)
    for store, logmel in zip(stores, stored_log_mels(stores, "--colour-db", db)):
        if (logmel["n_mels"], logmel["n_fft"]) != (codec.n_mels, codec.log_mel.n_fft):
            raise ValueError(f"{store.path}'s log-mels ({logmel['n_mels']} bins, n_fft {logmel['n_fft']}) are not "
                             f"the ones its codec quantizes ({codec.n_mels}, {codec.log_mel.n_fft})")
    return partial(recolour, codec, db)
