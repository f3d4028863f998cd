"""The BEST-RQ random-projection quantizer: a weight-free, seeded codec with the same token grid as Encodec."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import BITRATE_TO_NQ, CODEBOOK_SIZE, HOP, SAMPLE_RATE, Codec


class BestRQCodec(Codec):
    """BEST-RQ random-projection quantizer (Chiu et al. 2022): weight-free, seeded, same token grid as Encodec.

    log-mel frames centred on each 320-sample hop -> minus the log-mel envelope of pink noise (a fixed tilt
    correction, so the 1/f slope all audio shares does not dominate the projections) -> per-clip normalisation by
    one mean and one std (not per mel band: that would erase the clip's steady spectral envelope, its timbre) ->
    `stack` neighbouring frames -> n_q frozen Xavier projections -> nearest of 1024 frozen standard-normal codes
    (both L2-normalised). Level k is the same at every bitrate, so 1.5 kbps codes are a prefix of 12 kbps ones.
    """

    name = "bestrq"
    VERSION = 2  # bump when the recipe changes: it is part of the fingerprint

    def __init__(self, bandwidth: float, seed: int = 0, n_mels: int = 80, n_fft: int = 1024, stack: int = 3,
                 codebook_dim: int = 16, device: str = "cpu", block_frames: int = 4096):
        self.bandwidth, self.n_q, self.device = bandwidth, BITRATE_TO_NQ[bandwidth], device
        self.seed, self.n_mels, self.n_fft, self.stack, self.codebook_dim = seed, n_mels, n_fft, stack, codebook_dim
        self.block_frames = block_frames
        self.fingerprint = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()
        projections, codebooks = self._random_params()
        self.projections = projections[: self.n_q].float().to(device)  # (n_q, n_mels * stack, dim)
        self.codebooks_t = codebooks[: self.n_q].mT.float().contiguous().to(device)  # (n_q, dim, 1024), unit columns
        self.score_frames = 128 if device == "cpu" else 4096
        self.window = torch.hann_window(n_fft, dtype=torch.float64).float().to(device)
        self.mel = mel_filterbank(n_mels, n_fft, SAMPLE_RATE).to(device)  # (n_fft // 2 + 1, n_mels)
        freqs = torch.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1, device=device)
        self.pink_log_mel = torch.log((1.0 / freqs.clamp(min=50.0)) @ self.mel + 1e-6)  # (n_mels,)

    def params(self) -> dict:
        return {"version": self.VERSION, "seed": self.seed, "n_mels": self.n_mels, "n_fft": self.n_fft,
                "stack": self.stack, "codebook_dim": self.codebook_dim}

    def _random_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn on the CPU in float64 from one seeded generator, for all 32 levels: same values on any machine.
        g = torch.Generator().manual_seed(self.seed)
        levels, fan_in = max(BITRATE_TO_NQ.values()), self.n_mels * self.stack
        bound = math.sqrt(6.0 / (fan_in + self.codebook_dim))  # Xavier uniform
        projections = (2 * torch.rand(levels, fan_in, self.codebook_dim, generator=g, dtype=torch.float64) - 1) * bound
        codebooks = torch.randn(levels, CODEBOOK_SIZE, self.codebook_dim, generator=g, dtype=torch.float64)
        return projections, F.normalize(codebooks, dim=-1)

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [self._encode_one(torch.as_tensor(w, dtype=torch.float32).to(self.device)) for w in waves]

    def _encode_one(self, wave: torch.Tensor) -> np.ndarray:
        n_frames = self.n_frames(len(wave))
        if n_frames == 0:
            return np.zeros((0, self.n_q), np.int16)
        feats = self._log_mel(wave, n_frames)  # (T, n_mels)
        feats = feats - self.pink_log_mel
        feats = (feats - feats.mean()) / (feats.std(unbiased=False) + 1e-5)  # loudness-invariant, keeps the envelope
        half = self.stack // 2
        padded = F.pad(feats.T[None], (half, self.stack - 1 - half), mode="replicate")[0].T  # (T + stack - 1, n_mels)
        stacked = padded.unfold(0, self.stack, 1).transpose(1, 2).reshape(n_frames, -1)  # (T, stack * n_mels)
        z = F.normalize(torch.einsum("tf,qfd->qtd", stacked, self.projections), dim=-1)  # (n_q, T, dim)
        codes = torch.empty(self.n_q, n_frames, dtype=torch.int64, device=self.device)
        step = self.score_frames  # small blocks keep the (n_q, step, 1024) scores in cache
        for t in range(0, n_frames, step):
            codes[:, t : t + step] = torch.bmm(z[:, t : t + step], self.codebooks_t).argmax(-1)
        return codes.T.to(torch.int16).cpu().numpy()  # (T, n_q)

    def _log_mel(self, wave: torch.Tensor, n_frames: int) -> torch.Tensor:
        # Frame t is centred on the middle of hop t, samples [t*320, (t+1)*320); zeros beyond the clip.
        left = self.n_fft // 2 - HOP // 2
        right = (n_frames - 1) * HOP + self.n_fft - left - len(wave)
        padded = F.pad(wave, (left, right))
        out = []
        for t in range(0, n_frames, self.block_frames):  # blocks bound the spectrogram's memory
            n = min(self.block_frames, n_frames - t)
            segment = padded[t * HOP : (t + n - 1) * HOP + self.n_fft]
            spec = torch.stft(segment, self.n_fft, HOP, window=self.window, center=False, return_complex=True)
            out.append(torch.log(spec.abs().square().T @ self.mel + 1e-6))  # (n, n_mels)
        return torch.cat(out)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels), each normalised to unit area (Slaney)."""
    f_max = f_max or sample_rate / 2
    mel_min, mel_max = (2595.0 * np.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    edges = 700.0 * (10.0 ** (np.linspace(mel_min, mel_max, n_mels + 2) / 2595.0) - 1.0)  # (n_mels + 2,) in Hz
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)[:, None]  # (F, 1)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return torch.from_numpy(filters.astype(np.float32))
