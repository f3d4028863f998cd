"""The two on-disk shard formats, each one writer and one reader of `(codes (T, n_q) int16, meta)` samples:
webdataset tar (`<id>.codes.npy` + `<id>.json` per clip) and zarr (`codes (sum T, n_q)` + `offsets (N+1,)` + metas).
Atomic naming, indexes and the store card are `store.py`'s job.

A sample may also carry per-frame features aligned with its codes (FEATURES, e.g. `meta["logmel"]`: (T, n_mels)
float16): an extra `<id>.logmel.npy` member in a tar, a parallel `logmel (sum T, n_mels)` array with the same
offsets in zarr. They travel in the meta dict but never into its JSON."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

Sample = tuple[np.ndarray, dict[str, Any]]
ZARR_CHUNK_FRAMES = 1 << 16  # one chunk ~ 15 min of audio: a shard is read in a few large blocks
FEATURES = ("logmel",)  # per-frame arrays a sample may carry in its meta, stored beside the codes


def split_features(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the JSON part of a sample's meta, its per-frame feature arrays)."""
    return ({k: v for k, v in meta.items() if k not in FEATURES},
            {k: meta[k] for k in FEATURES if k in meta})


def _write_wds(path: Path, samples: list[Sample]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path), mtime=0) as sink:
        for codes, meta in samples:
            info, features = split_features(meta)
            sink.write({"__key__": meta["id"], "codes.npy": codes, "json": info,
                        **{f"{name}.npy": array for name, array in features.items()}})


def _write_zarr(path: Path, samples: list[Sample]) -> None:
    import zarr

    infos, features = zip(*(split_features(m) for _, m in samples))
    codes = np.concatenate([c for c, _ in samples])  # (sum T, n_q)
    offsets = np.cumsum([0] + [len(c) for c, _ in samples], dtype=np.int64)
    group = zarr.open_group(str(path), mode="w", attributes={"samples": list(infos)})
    chunk = min(len(codes), ZARR_CHUNK_FRAMES)
    group.create_array("codes", data=codes, chunks=(chunk, codes.shape[1]))
    group.create_array("offsets", data=offsets, chunks=(len(offsets),))
    for name in features[0]:  # every sample of a shard has the same features (one tokenize run writes it)
        array = np.concatenate([f[name] for f in features])  # (sum T, n_features): the same offsets as the codes
        group.create_array(name, data=array, chunks=(chunk, array.shape[1]))


WRITERS = {"wds": _write_wds, "zarr": _write_zarr}


_NPY_HEADER = re.compile(rb"\{'descr': '([^']+)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}")
_PLAIN_FILE = (b"0", b"\0")
_SPECIAL = (b"x", b"g", b"L", b"K")  # pax / GNU long-name headers: left to tarfile


def _decode_npy(data: bytes) -> np.ndarray:
    """np.load for the C-ordered arrays np.save writes, without ast-parsing the header; anything else via np.load."""
    if data[:6] == b"\x93NUMPY" and data[6] in (1, 2, 3):
        size_bytes = 2 if data[6] == 1 else 4
        start = 8 + size_bytes
        header_end = start + int.from_bytes(data[8:start], "little")
        m = _NPY_HEADER.match(data, start, header_end)
        if m:
            shape = tuple(int(d) for d in m[2].split(b",") if d.strip())
            return np.frombuffer(data, np.dtype(m[1].decode()), offset=header_end).reshape(shape).copy()
    return np.load(io.BytesIO(data))


def _tar_members(data: bytes) -> list[tuple[str, int, int]] | None:
    """(name, offset, size) of the regular files of a ustar archive; None if it has headers we do not parse."""
    members, pos = [], 0
    while pos + 512 <= len(data) and data[pos] != 0:
        header = data[pos: pos + 512]
        kind = header[156:157]
        if kind in _SPECIAL or header[124] & 0x80:  # extended headers or base-256 sizes
            return None
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix and header[257:262] == b"ustar":
            name = prefix.decode() + "/" + name
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if kind in _PLAIN_FILE:
            members.append((name, pos + 512, size))
        pos += 512 + (size + 511) // 512 * 512
    return members


def _tarfile_members(path: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read()


def _read_wds(path: str) -> Iterator[Sample]:
    # The webdataset layout: members of one sample are adjacent, key = name up to the first dot. A shard is read in
    # one call and its headers parsed by hand (tarfile costs ~8x more per clip); unusual archives go through tarfile.
    with open(path, "rb") as f:
        data = f.read()
    members = _tar_members(data)
    files = ((name, data[start: start + size]) for name, start, size in members) if members is not None \
        else _tarfile_members(path)
    key, parts = None, {}
    for name, payload in files:
        sample_key, ext = name.split(".", 1)
        if sample_key != key:
            if "codes.npy" in parts and "json" in parts:
                yield _wds_sample(parts)
            key, parts = sample_key, {}
        parts[ext] = payload
    if "codes.npy" in parts and "json" in parts:
        yield _wds_sample(parts)


def _wds_sample(parts: dict[str, bytes]) -> Sample:
    meta = json.loads(parts["json"])
    meta.update({name: _decode_npy(parts[f"{name}.npy"]) for name in FEATURES if f"{name}.npy" in parts})
    return _decode_npy(parts["codes.npy"]), meta


def _read_zarr(path: str) -> Iterator[Sample]:
    import zarr

    group = zarr.open_group(path, mode="r")
    codes, offsets = group["codes"][:], group["offsets"][:]  # one block read, slice in memory (docs/architecture.md)
    features = {name: group[name][:] for name in FEATURES if name in group}
    for i, meta in enumerate(group.attrs["samples"]):
        start, end = offsets[i], offsets[i + 1]
        yield codes[start:end], {**meta, **{name: array[start:end] for name, array in features.items()}}


READERS = {"wds": _read_wds, "zarr": _read_zarr}
