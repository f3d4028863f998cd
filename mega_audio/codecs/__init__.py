"""Codecs: one interface (`base.Codec`) that turns 24 kHz mono waveforms into int16 token grids (T, n_q) at 75 Hz.

This module is the registry: `load_codec(name, bitrate)` builds "encodec" (transformers' Encodec, `encodec.py`)
or "bestrq" (the weight-free random-projection quantizer, `bestrq.py`).
"""

from __future__ import annotations

import torch

from .base import BITRATE_TO_NQ, CODEBOOK_SIZE, Codec, check_bitrate, use_available_cores
from .bestrq import BestRQCodec
from .encodec import DEFAULT_ENCODEC, EncodecCodec, default_codec, load_encodec_model

CODECS = ("encodec", "bestrq")
__all__ = ["BITRATE_TO_NQ", "CODECS", "Codec", "default_codec", "load_codec"]


def load_codec(name: str, bitrate: float, weights: str | None = None, device: str | None = None,
               compile: bool = False, codebook_size: int = CODEBOOK_SIZE, normalize: str = "clip") -> Codec:
    """Build a codec by name ("encodec" or "bestrq") at a bitrate in BITRATE_TO_NQ (kbps).

    `compile` (encodec only) trades 10-30 s of torch.compile per process for ~1.2x faster encoding.
    `codebook_size` (1024 or 8192) and `normalize` ("clip" or "feature") are BEST-RQ options."""
    bitrate = check_bitrate(bitrate)
    if name == "encodec" and (codebook_size, normalize) != (CODEBOOK_SIZE, "clip"):
        raise ValueError(f"encodec has {CODEBOOK_SIZE} codes per level and no input normalisation option: "
                         f"--codebook-size and --bestrq-norm apply to --codec bestrq")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        use_available_cores()
    if name == "encodec":
        return EncodecCodec(load_encodec_model(weights or DEFAULT_ENCODEC), bitrate, device,
                            source=weights or DEFAULT_ENCODEC, compile=compile)
    if name == "bestrq":
        return BestRQCodec(bitrate, device=device, codebook_size=codebook_size, normalize=normalize)
    raise ValueError(f"unknown codec {name!r}: use one of {', '.join(CODECS)}")
