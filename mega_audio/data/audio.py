"""Audio input: read any file, downmix to mono, resample to the codec rate, and reject bad clips with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# Containers libsndfile cannot read (YouTube AudioSet downloads); they need PyAV.
AV_SUFFIXES = {".m4a", ".mp4", ".webm", ".aac", ".mkv"}


class AudioError(Exception):
    """A clip that cannot be used; the message is the reason logged in failures.jsonl."""


def _read_with_av(source, name: str) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError as e:
        raise AudioError(f"{name} needs PyAV to decode: pip install 'mega-audio[av]'") from e
    try:
        with av.open(source) as container:
            stream = container.streams.audio[0]
            frames = [f.to_ndarray() for f in container.decode(stream)]
            rate = stream.rate
    except Exception as e:  # PyAV raises many error types
        raise AudioError(f"unreadable ({type(e).__name__}: {e})") from e
    if not frames:
        raise AudioError("empty: no audio frames")
    # planar float frames: (channels, samples); packed: (1, samples*channels)
    data = np.concatenate([f if f.ndim == 2 else f[None] for f in frames], axis=1).astype(np.float32)
    return data.T, rate


def _read_hub_row(uri: str) -> tuple[np.ndarray, int]:
    """A row of a Hugging Face dataset (`hf://...` manifest paths): its encoded bytes, decoded like a file."""
    from .recipes.hf import as_file, read_row_audio

    try:
        audio = read_row_audio(uri)
    except Exception as e:  # a missing row or cache: logged as the clip's failure
        raise AudioError(f"unreadable ({type(e).__name__}: {e})") from e
    try:
        data, rate = sf.read(as_file(audio), dtype="float32", always_2d=True)
    except Exception:  # m4a, webm, ... bytes: PyAV reads file objects too
        return _read_with_av(as_file(audio), "this audio format")
    return data, rate


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Return `(samples, channels)` float32 and the file's sample rate."""
    if str(path).startswith("hf://"):
        return _read_hub_row(str(path))
    path = Path(path)
    if path.suffix.lower() in AV_SUFFIXES:
        return _read_with_av(str(path), path.suffix)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors, missing files, permission errors
        raise AudioError(f"unreadable ({type(e).__name__}: {e})") from e
    return data, rate


def load_audio(path: str | Path, sample_rate: int = 24000, min_seconds: float = 0.1) -> np.ndarray:
    """Mono float32 waveform at `sample_rate`; raises AudioError for unreadable, empty, non-finite or too-short clips."""
    data, rate = read_audio(path)
    if data.size == 0:
        raise AudioError("empty: 0 samples")
    if not np.isfinite(data).all():
        raise AudioError("non-finite samples (NaN/Inf)")
    if len(data) < min_seconds * rate:
        raise AudioError(f"too short: {len(data) / rate:.3f} s < {min_seconds} s")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_duration(path: str | Path) -> float | None:
    """Duration in seconds from the file header (no decoding); None when the header is unreadable."""
    path = Path(path)
    try:
        if path.suffix.lower() in AV_SUFFIXES:
            import av

            with av.open(str(path)) as container:
                return float(container.duration) / av.time_base if container.duration else None
        return sf.info(str(path)).duration
    except Exception:
        return None
