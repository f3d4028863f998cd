"""Audio input: read any file, downmix to mono, resample to the codec rate, and reject bad clips with a reason.

The reasons a clip is rejected (the `reason` of failures-r*.jsonl): missing, broken symlink, permission denied,
not audio / unknown format, truncated (header N s, data M s), empty, too short, non-finite samples, decoder error.
A truncated file is a failure, not a shorter clip: its header promises audio the file does not hold."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# Containers libsndfile cannot read (YouTube AudioSet downloads); they need PyAV.
AV_SUFFIXES = {".m4a", ".mp4", ".webm", ".aac", ".mkv"}


class AudioError(Exception):
    """A clip that cannot be used; the message is the reason logged in failures.jsonl."""


def _unopenable(path: Path) -> str | None:
    """Why the file cannot even be opened, in plain words; None if it can."""
    if path.is_symlink() and not path.exists():
        return f"broken symlink (-> {os.readlink(path)})"
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "permission denied"
    except IsADirectoryError:
        return "not audio / unknown format (a directory)"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if first else "empty: 0 bytes"


def _decoder_error(path: Path, error: Exception, where: str = "") -> AudioError:
    reason = _unopenable(path)
    if reason is None:
        message = str(error).split(": ", 1)[-1].strip().rstrip(".") or type(error).__name__
        reason = ("not audio / unknown format" if "Format not recognised" in str(error)
                  else f"decoder error: {message}{where}")
    return AudioError(reason)


def _wav_header_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares (libsndfile silently clamps them to the bytes present); None if unknown."""
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return None
        block_align = None
        while len(chunk := f.read(8)) == 8:
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                block_align = struct.unpack("<H", f.read(16)[12:14])[0]
                f.seek(size - 16 + size % 2, 1)
            elif kind == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            else:
                f.seek(size + size % 2, 1)
    return None


def _read_with_av(source, name: str) -> tuple[np.ndarray, int]:
    """Decode with PyAV; `source` is a file Path or a file object (a Hub row's bytes)."""
    try:
        import av
    except ImportError as e:
        raise AudioError(f"{name} needs PyAV to decode: pip install 'mega-audio[av]'") from e
    try:
        with av.open(str(source) if isinstance(source, Path) else source) as container:
            stream = container.streams.audio[0]
            frames = [f.to_ndarray() for f in container.decode(stream)]
            rate = stream.rate
    except Exception as e:  # PyAV raises many error types
        raise (_decoder_error(source, e) if isinstance(source, Path) else AudioError(f"decoder error: {e}")) from e
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
        return _read_with_av(path, path.suffix)
    blocks, rate, header_frames, error = [], 0, 0, None
    try:
        with sf.SoundFile(str(path)) as f:
            rate, header_frames = f.samplerate, f.frames
            if f.format == "WAV":
                header_frames = _wav_header_frames(path) or header_frames
            for block in f.blocks(blocksize=1 << 13, dtype="float32", always_2d=True):
                blocks.append(block)
    except Exception as e:  # libsndfile errors, missing files, permission errors
        error = e
    data = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    if error is not None:
        where = f" (after {len(data) / rate:.2f} s of {header_frames / rate:.2f} s)" if blocks else ""
        raise _decoder_error(path, error, where) from error
    if len(data) < header_frames:
        raise AudioError(f"truncated (header {header_frames / rate:.2f} s, data {len(data) / rate:.2f} s)")
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
