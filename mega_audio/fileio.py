"""Files we can trust: atomic writes (a reader sees the old file or the new one, never half of one) that respect the
umask, and the size + checksum that indexes and checkpoints record so a damaged copy is noticed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which races threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a unique temporary file beside `path`, fsync it, then rename it over `path`.
    The file gets the mode open() would give it (0644 under umask 022), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # after write: a writer may replace the file (safetensors does)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def file_size(path: str | Path) -> int:
    """Bytes of a file, or of every file below a directory (a zarr shard)."""
    return sum(p.stat().st_size for p in _files(Path(path)))


def integrity_problem(path: str | Path, size: int | None, checksum: str | None = None) -> str | None:
    """What is wrong with a file against the size and checksum recorded for it (None: nothing; a None record is not
    checked). The size is checked first: one stat, where the checksum reads every byte."""
    path = Path(path)
    if not path.exists():
        return "is missing"
    if size is not None and (actual := file_size(path)) != size:
        return f"has {actual:,} bytes, its record says {size:,} (truncated or partly copied)"
    if checksum is not None and file_digest(path) != checksum:
        return "has damaged bytes (its checksum differs from the record)"
    return None


def file_digest(path: str | Path) -> str:
    """blake2b (hashlib, ~1 GB/s) of a file, or of a directory's files and their relative names in sorted order."""
    path, digest = Path(path), hashlib.blake2b(digest_size=16)
    for file in _files(path):
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
