"""The codec interface every tokenizer implements and the token grid they share (24 kHz, hop 320, 75 Hz, 1024 codes)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

BITRATE_TO_NQ = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
SAMPLE_RATE, HOP, CODEBOOK_SIZE = 24_000, 320, 1024


class CodecWeightsError(ValueError):
    """The codec's weights could not be found or do not fit the model."""


class Codec:
    """One interface for every codec: encode(waves) -> [int16 (ceil(len/320), n_q)]."""

    name: str
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP
    frame_rate: float = SAMPLE_RATE / HOP
    codebook_size: int = CODEBOOK_SIZE
    bandwidth: float
    n_q: int
    fingerprint: str

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_length)

    def params(self) -> dict:
        """Codec-specific fields for the store card."""
        return {}

    def card(self) -> dict:
        return {**dict(name=self.name, fingerprint=self.fingerprint, sample_rate=self.sample_rate,
                       frame_rate=self.frame_rate, hop_length=self.hop_length, bandwidth=self.bandwidth,
                       n_q=self.n_q, codebook_size=self.codebook_size), **self.params()}


def check_bitrate(bitrate: float) -> float:
    if float(bitrate) not in BITRATE_TO_NQ:
        raise ValueError(f"bitrate {bitrate} kbps is not one of {sorted(BITRATE_TO_NQ)}")
    return float(bitrate)


def use_available_cores() -> None:
    # torch counts the host's cores; in a container or under taskset fewer may be ours (oversubscription
    # makes matmuls several times slower).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
