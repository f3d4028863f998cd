"""Log-mel frames on the codec token grid: one frame per 320-sample hop, centred on that hop, so feature frame t
lines up with code frame t. BEST-RQ quantizes these frames; `tokenize --store-features logmel` stores them
(float16) as the target of pre-training's auxiliary mel loss, so training never decodes audio."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import HOP, SAMPLE_RATE


class LogMel:
    """wave (N,) float32 -> natural-log mel power (ceil(N / 320), n_mels), HTK mel scale, Slaney-normalised filters."""

    def __init__(self, n_mels: int = 80, n_fft: int = 1024, device: str = "cpu", block_frames: int = 4096):
        from transformers.audio_utils import mel_filter_bank  # here, not at import: transformers takes ~1 s to load

        self.n_mels, self.n_fft, self.block_frames, self.device = n_mels, n_fft, block_frames, device
        self.window = torch.hann_window(n_fft, dtype=torch.float64).float().to(device)
        filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                                  max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                                  mel_scale="htk")
        self.filters = torch.from_numpy(filters.astype(np.float32)).to(device)  # (n_fft // 2 + 1, n_mels)

    def __call__(self, wave: torch.Tensor, n_frames: int) -> torch.Tensor:
        # Frame t is centred on the middle of hop t, samples [t*320, (t+1)*320); zeros beyond the clip.
        left = self.n_fft // 2 - HOP // 2
        right = (n_frames - 1) * HOP + self.n_fft - left - len(wave)
        padded = F.pad(wave, (left, right))
        out = []
        for t in range(0, n_frames, self.block_frames):  # blocks bound the spectrogram's memory
            n = min(self.block_frames, n_frames - t)
            segment = padded[t * HOP : (t + n - 1) * HOP + self.n_fft]
            spec = torch.stft(segment, self.n_fft, HOP, window=self.window, center=False, return_complex=True)
            out.append(torch.log(spec.abs().square().T @ self.filters + 1e-6))  # (n, n_mels)
        return torch.cat(out)


def random_colouring(n_mels: int, db: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random gain over the mel bins, in natural-log power: a tilt of up to +-db from the lowest to the
    highest bin plus three bumps of N(0, db) dB, 3-15 bins wide. What a random EQ, microphone or renderer does to a
    sound's spectral envelope, at mel resolution."""
    bins = np.arange(n_mels)
    gain_db = rng.uniform(-db, db) * (2 * bins / (n_mels - 1) - 1)
    for _ in range(3):
        centre, width = rng.uniform(0, n_mels), rng.uniform(3, 15)
        gain_db = gain_db + rng.normal(0, db) * np.exp(-0.5 * ((bins - centre) / width) ** 2)
    return gain_db * (np.log(10) / 10)  # dB of power -> natural log


def colour(log_mel: torch.Tensor, gain: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Filter log-mel frames (T, n_mels) by exp(gain) per bin. The power is scaled, not the log: LogMel's 1e-6 floor
    (digital silence) stays the floor, as it would under a real filter."""
    gain = torch.as_tensor(gain, dtype=log_mel.dtype, device=log_mel.device)
    return torch.log((log_mel.exp() - 1e-6).clamp(min=0) * gain.exp() + 1e-6)
