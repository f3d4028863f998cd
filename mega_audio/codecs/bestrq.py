"""The BEST-RQ random-projection quantizer: a weight-free, seeded codec with the same token grid as Encodec."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import BITRATE_TO_NQ, CODEBOOK_SIZE, SAMPLE_RATE, Codec
from .logmel import LogMel

NORMALIZATIONS = ("clip", "feature")
CODEBOOK_SIZES = (CODEBOOK_SIZE, 8192)
# Options added after version 2: they enter the fingerprint only when they differ from these defaults, so stores
# tokenized before the options existed (the same codes) keep their fingerprint and still mix with new ones.
LATER_DEFAULTS = {"codebook_size": CODEBOOK_SIZE, "normalize": "clip"}


class BestRQCodec(Codec):
    """BEST-RQ random-projection quantizer (Chiu et al. 2022): weight-free, seeded, same token grid as Encodec.

    log-mel frames centred on each 320-sample hop -> minus the log-mel envelope of pink noise (a fixed tilt
    correction, so the 1/f slope all audio shares does not dominate the projections) -> normalisation -> `stack`
    neighbouring frames -> n_q frozen Xavier projections -> nearest of `codebook_size` (1024, or 8192 as in the
    BEST-RQ paper) frozen standard-normal codes (both L2-normalised). Level k is the same at every bitrate, so
    1.5 kbps codes are a prefix of 12 kbps ones.

    normalize="clip" (default): one mean and one std per clip, which keeps the clip's steady spectral envelope
    (its timbre) in the input. normalize="feature": a mean and std per mel bin, the paper's per-feature
    normalisation; its statistics come from the clip itself, since a codec that needs no data has no dataset
    statistics. That erases the steady envelope and keeps how each band moves over time.
    """

    name = "bestrq"
    VERSION = 2  # bump when the recipe changes: it is part of the fingerprint

    def __init__(self, bandwidth: float, seed: int = 0, n_mels: int = 80, n_fft: int = 1024, stack: int = 3,
                 codebook_dim: int = 16, device: str = "cpu", block_frames: int = 4096,
                 codebook_size: int = CODEBOOK_SIZE, normalize: str = "clip"):
        if codebook_size not in CODEBOOK_SIZES:
            raise ValueError(f"bestrq codebook size {codebook_size}: use one of {CODEBOOK_SIZES}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"bestrq normalisation {normalize!r}: use one of {NORMALIZATIONS}")
        self.bandwidth, self.n_q, self.device = bandwidth, BITRATE_TO_NQ[bandwidth], device
        self.seed, self.n_mels, self.n_fft, self.stack, self.codebook_dim = seed, n_mels, n_fft, stack, codebook_dim
        self.codebook_size, self.normalize = codebook_size, normalize
        recipe = {k: v for k, v in self.params().items() if LATER_DEFAULTS.get(k, object()) != v}
        self.fingerprint = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        projections, codebooks = self._random_params()
        self.projections = projections[: self.n_q].float().to(device)  # (n_q, n_mels * stack, dim)
        self.codebooks_t = codebooks[: self.n_q].mT.float().contiguous().to(device)  # (n_q, dim, codes), unit columns
        self.score_frames = 128 if device == "cpu" else 4096
        self.log_mel = LogMel(n_mels, n_fft, device, block_frames)
        freqs = torch.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1, device=device)
        self.pink_log_mel = torch.log((1.0 / freqs.clamp(min=50.0)) @ self.log_mel.filters + 1e-6)  # (n_mels,)

    def params(self) -> dict:
        return {"version": self.VERSION, "seed": self.seed, "n_mels": self.n_mels, "n_fft": self.n_fft,
                "stack": self.stack, "codebook_dim": self.codebook_dim, "codebook_size": self.codebook_size,
                "normalize": self.normalize}

    def _random_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn on the CPU in float64 from one seeded generator, for all 32 levels: same values on any machine.
        g = torch.Generator().manual_seed(self.seed)
        levels, fan_in = max(BITRATE_TO_NQ.values()), self.n_mels * self.stack
        bound = math.sqrt(6.0 / (fan_in + self.codebook_dim))  # Xavier uniform
        projections = (2 * torch.rand(levels, fan_in, self.codebook_dim, generator=g, dtype=torch.float64) - 1) * bound
        codebooks = torch.randn(levels, self.codebook_size, self.codebook_dim, generator=g, dtype=torch.float64)
        return projections, F.normalize(codebooks, dim=-1)

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [self._encode_one(torch.as_tensor(w, dtype=torch.float32).to(self.device)) for w in waves]

    def _encode_one(self, wave: torch.Tensor) -> np.ndarray:
        n_frames = self.n_frames(len(wave))
        if n_frames == 0:
            return np.zeros((0, self.n_q), np.int16)
        return self.quantize(self.log_mel(wave, n_frames))

    @classmethod
    def from_card(cls, card: dict, device: str = "cpu") -> "BestRQCodec":
        """The quantizer a store card (`dataset.json`'s codec entry) describes; refuses a card this version of the
        recipe would not reproduce (its fingerprint differs)."""
        options = {k: card[k] for k in ("seed", "n_mels", "n_fft", "stack", "codebook_dim") if k in card}
        codec = cls(card["bandwidth"], device=device, codebook_size=card.get("codebook_size", CODEBOOK_SIZE),
                    normalize=card.get("normalize", "clip"), **options)
        if codec.fingerprint != card["fingerprint"]:
            raise ValueError(f"the store's bestrq codec (fingerprint {card['fingerprint'][:12]}, version "
                             f"{card.get('version')}) is not this version's ({codec.fingerprint[:12]}, version "
                             f"{cls.VERSION}): its codes cannot be re-made here")
        return codec

    @torch.inference_mode()
    def quantize(self, log_mel: torch.Tensor) -> np.ndarray:
        """(T, n_mels) natural-log mel power (LogMel's frames, what `tokenize --store-features logmel` stores)
        -> codes (T, n_q) int16."""
        feats = log_mel.to(self.device) - self.pink_log_mel
        n_frames = len(feats)
        over = None if self.normalize == "clip" else 0  # one mean / std for the clip, or one per mel bin
        mean, std = feats.mean(dim=over, keepdim=True), feats.std(dim=over, unbiased=False, keepdim=True)
        feats = (feats - mean) / (std + 1e-5)  # loudness-invariant
        half = self.stack // 2
        padded = F.pad(feats.T[None], (half, self.stack - 1 - half), mode="replicate")[0].T  # (T + stack - 1, n_mels)
        stacked = padded.unfold(0, self.stack, 1).transpose(1, 2).reshape(n_frames, -1)  # (T, stack * n_mels)
        z = F.normalize(torch.einsum("tf,qfd->qtd", stacked, self.projections), dim=-1)  # (n_q, T, dim)
        codes = torch.empty(self.n_q, n_frames, dtype=torch.int64, device=self.device)
        step = self.score_frames  # small blocks keep the (n_q, step, 1024) scores in cache
        for t in range(0, n_frames, step):
            codes[:, t : t + step] = torch.bmm(z[:, t : t + step], self.codebooks_t).argmax(-1)
        return codes.T.to(torch.int16).cpu().numpy()  # (T, n_q)
