"""A generated, labelled audio collection with real signal structure: the embedded default the demo runs on.

Five classes, each with wide random variation inside it, and every clip carries a quieter clip of another class
(0-10 dB below it) as background, so the task is not a lookup:
  bright_note  harmonic notes with a rich spectrum (many slowly decaying harmonics, brass/string-like)
  mellow_note  harmonic notes with few, fast-falling harmonics (flute/organ-like)
  drums        rhythmic percussive patterns: kick, snare (noise burst) and hi-hat on a random tempo grid
  speech       formant-synthesised speech-like babble: a glottal pulse train through moving vowel formants
  noise        noise textures: coloured noise with slow amplitude/filter modulation (wind, rain, hiss)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..config import option

SAMPLE_RATE = 24000
CLASSES = ("bright_note", "mellow_note", "drums", "speech", "noise")
VOWEL_FORMANTS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


@dataclass
class SynthConfig:
    out: str = option("", "folder to write <label>/<files> into", positional=True)
    per_class: int = option(40, "clips per class", min=1)
    seconds: float = option(4.0, "clip length", above=0)
    seed: int = option(0, "random seed")


def _envelope(n: int, attack: float, decay: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return np.minimum(t / attack, 1.0) * np.exp(-t / decay) * rng.uniform(0.5, 1.0)


def _note(seconds: float, rng: np.random.Generator, n_harmonics: int, rolloff: float) -> np.ndarray:
    """A sequence of notes; spectral envelope = harmonic k at amplitude k**-rolloff."""
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    start = 0
    while start < len(out):
        length = int(rng.uniform(0.3, 1.2) * SAMPLE_RATE)
        f0 = 55.0 * 2 ** rng.uniform(1, 4.5)
        t = np.arange(length) / SAMPLE_RATE
        vibrato = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
        note = sum(k ** -rolloff * np.sin(2 * np.pi * k * f0 * t * vibrato + rng.uniform(0, 2 * np.pi))
                   for k in range(1, n_harmonics + 1) if k * f0 < SAMPLE_RATE / 2)
        note = note * _envelope(length, rng.uniform(0.005, 0.08), rng.uniform(0.3, 1.5), rng)
        end = min(start + length, len(out))
        out[start:end] += note[: end - start]
        start += int(length * rng.uniform(0.6, 1.0))
    return out


def _drums(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    step = int(60 / rng.uniform(80, 160) / 2 * SAMPLE_RATE)  # eighth notes
    pattern = rng.random((3, 8)) < np.array([[0.5], [0.35], [0.8]])
    pattern[0, 0] = True
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * 50 * t * (1 + 2 * np.exp(-t * 30))) * np.exp(-t * 12)
    snare = rng.standard_normal(len(t)) * np.exp(-t * 25) * 0.6
    hihat = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t * 80) * 0.3
    for i, pos in enumerate(range(0, n, step)):
        for hit, sound in zip(pattern[:, i % 8], (kick, snare, hihat)):
            if hit:
                end = min(pos + len(sound), n)
                out[pos:end] += sound[: end - pos]
    return out


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonant filter (a formant)."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r
    y = np.zeros_like(x)
    for i in range(len(x)):  # short clips; clarity over speed
        y[i] = x[i] - a1 * y[i - 1] - a2 * y[i - 2] if i > 1 else x[i]
    return y


def _speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    out = []
    f0 = rng.uniform(90, 220)
    for _ in range(int(seconds / 0.2) + 1):  # one syllable every ~200 ms
        length = int(rng.uniform(0.12, 0.28) * SAMPLE_RATE)
        pitch = f0 * (1 + 0.1 * rng.standard_normal())
        pulses = np.zeros(length)
        pulses[:: max(1, int(SAMPLE_RATE / pitch))] = 1.0
        if rng.random() < 0.2:  # unvoiced consonant-like burst
            pulses = rng.standard_normal(length) * 0.1
        formants = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))]
        voiced = sum(_resonator(pulses, f * rng.uniform(0.9, 1.1), 80 + 40 * k) / (k + 1) for k, f in enumerate(formants))
        out.append(voiced * np.hanning(length))
        out.append(np.zeros(int(rng.uniform(0.0, 0.08) * SAMPLE_RATE)))
    return np.concatenate(out)[: int(seconds * SAMPLE_RATE)].astype(np.float32)


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= (freqs + 50) ** -rng.uniform(0.0, 1.2)  # white to brown-ish
    noise = np.fft.irfft(spectrum, n)
    t = np.arange(n) / SAMPLE_RATE
    swell = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t + rng.uniform(0, 2 * np.pi))
    return (noise * swell).astype(np.float32)


def _source(label: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    make = {
        "bright_note": lambda: _note(seconds, rng, n_harmonics=int(rng.integers(12, 25)), rolloff=rng.uniform(0.6, 1.0)),
        "mellow_note": lambda: _note(seconds, rng, n_harmonics=int(rng.integers(2, 5)), rolloff=rng.uniform(1.8, 3.0)),
        "drums": lambda: _drums(seconds, rng),
        "speech": lambda: _speech(seconds, rng),
        "noise": lambda: _noise(seconds, rng),
    }[label]
    clip = make()
    return clip / (np.sqrt(np.mean(clip**2)) + 1e-9)  # unit RMS


def synthesize(label: str, seconds: float, rng: np.random.Generator, background_db: tuple[float, float] = (0.0, 10.0)) -> np.ndarray:
    """One clip of class `label` over a background of another class, peak-normalised to a random level, float32 at 24 kHz."""
    other = CLASSES[(CLASSES.index(label) + rng.integers(1, len(CLASSES))) % len(CLASSES)]
    background = _source(other, seconds, rng) * 10 ** (-rng.uniform(*background_db) / 20)
    clip = _source(label, seconds, rng) + background + 0.003 * rng.standard_normal(int(seconds * SAMPLE_RATE))
    return (clip / (np.abs(clip).max() + 1e-9) * rng.uniform(0.3, 0.9)).astype(np.float32)


def write_collection(root: str | Path, per_class: int = 40, seconds: float = 4.0, seed: int = 0,
                     classes: tuple[str, ...] = CLASSES) -> int:
    """Write `<root>/<label>/<label>_NNN.wav` (the `folder` layout); returns the number of files written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    jobs = [(label, i) for label in classes for i in range(per_class)]
    for label, i in tqdm(jobs, desc="synthesize", unit="clip"):
        path = root / label / f"{label}_{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, synthesize(label, seconds, rng), SAMPLE_RATE, subtype="PCM_16")
    return len(jobs)
