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
