"""Audio from the Hugging Face Hub as a tokenize source: a Hub dataset repo (read through the local `datasets` cache,
downloaded on first use), a `save_to_disk` folder or a local folder of parquet files, with an `Audio` column.

The manifest holds one clip per row; its path is `hf://<source>/<config>/<split>/<row>` (quoted parts), and the
tokenize readers fetch that row's encoded bytes (Arrow, memory-mapped: random access, so the usual resume, rank
slicing and failure log apply unchanged) and decode them like a file. Streaming is not used: resuming and slicing by
clip id need random access. Needs the `hf` extra (`pip install 'mega-audio[hf]'`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, unquote

from ..manifest import Clip, ManifestError, ManifestReport, clip_id, file_stem
from ..tasks import Task

HF_SCHEME = "hf://"
ID_COLUMNS = ("id", "video_id", "ytid", "youtube_id", "file_id")  # the first present names the clips
RENAMED_SPLITS = {"validation": "valid", "val": "valid", "dev": "valid"}  # Hub names -> store split names


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise ManifestError("--dataset hf reads audio through the `datasets` package: pip install 'mega-audio[hf]'") from None
    return datasets


def _saved_to_disk(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def split_names(source: str, config: str | None) -> list[str]:
    datasets = require_datasets()
    if _saved_to_disk(source):
        saved = datasets.load_from_disk(source)
        return list(saved) if isinstance(saved, datasets.DatasetDict) else ["train"]
    return list(datasets.get_dataset_split_names(source, config))


@lru_cache(maxsize=16)  # once per process and split: DataLoader workers each open it once
def open_split(source: str, config: str | None, split: str):
    datasets = require_datasets()
    if _saved_to_disk(source):
        saved = datasets.load_from_disk(source)
        return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
    return datasets.load_dataset(source, config, split=split)


def audio_column(dataset) -> str:
    from datasets import Audio

    names = [name for name, feature in dataset.features.items() if isinstance(feature, Audio)]
    if not names:
        raise ManifestError(f"no Audio column among {list(dataset.features)}: --dataset hf needs a dataset with audio")
    return names[0]


def _label_names(feature) -> list[str] | None:
    """The class names of a ClassLabel column (or a list of ClassLabel), else None (the values are the labels)."""
    from datasets import ClassLabel

    inner = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(inner.names) if isinstance(inner, ClassLabel) else None


def _as_labels(value, names: list[str] | None) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    return [names[v] if names is not None else str(v) for v in values if not (names is not None and v < 0)]


def row_uri(source: str, config: str | None, split: str, row: int) -> str:
    return f"{HF_SCHEME}{quote(source, safe='')}/{quote(config or '', safe='')}/{quote(split, safe='')}/{row}"


def read_row_audio(uri: str) -> bytes | str:
    """The encoded audio of one manifest row: its bytes, or the local file path a dataset built from files keeps."""
    source, config, split, row = uri.removeprefix(HF_SCHEME).split("/")
    dataset = open_split(unquote(source), unquote(config) or None, unquote(split))
    column = audio_column(dataset)
    value = dataset.data.fast_slice(int(row), 1).column(column)[0].as_py()  # the raw struct: no decoding by datasets
    if value.get("bytes"):
        return value["bytes"]
    if value.get("path") and Path(value["path"]).is_file():
        return value["path"]
    raise OSError(f"row {row} of {split} holds no audio bytes and no readable path ({value.get('path')})")


def as_file(audio: bytes | str) -> io.BytesIO | str:
    return io.BytesIO(audio) if isinstance(audio, bytes) else audio


def _parse_split_map(split_map: str | Sequence[str] | None) -> dict[str, str]:
    items = split_map.split(",") if isinstance(split_map, str) else list(split_map or [])
    if bad := [item for item in items if item.count("=") != 1]:
        raise ManifestError(f"--split-map takes HUB_SPLIT=STORE_SPLIT pairs (e.g. train=balanced_train), not {bad}")
    return dict(item.split("=") for item in items)


def prepare_hf(source: str, report: ManifestReport, seed: int = 0, hf_config: str | None = None,
               label_column: str | None = None, split_map: str | Sequence[str] | None = None) -> list[Clip]:
    """One clip per row of every split (or of the splits named in split_map, renamed as it says). Labels come from
    label_column (default `label`; `none` = unlabelled): ClassLabel ids become their names, strings stay as they are,
    lists give multi-label clips. Ids come from an id column (video_id, id, ...) or the audio's file name."""
    mapping = _parse_split_map(split_map)
    available = split_names(source, hf_config)
    if unknown := sorted(set(mapping) - set(available)):
        raise ManifestError(f"{source} has no split {unknown}: its splits are {available}")
    clips, labels_seen = [], set()
    for split in mapping or available:
        dataset = open_split(source, hf_config, split)
        column = label_column or "label"
        if column.lower() != "none" and column not in dataset.features:
            raise ManifestError(f"{source} ({split}) has no column {column!r} among {list(dataset.features)}: pass "
                                "--label-column NAME, or --label-column none for unlabelled audio")
        labelled = column.lower() != "none"
        names = _label_names(dataset.features[column]) if labelled else None
        label_values = dataset.data.column(column).to_pylist() if labelled else [None] * len(dataset)
        id_column = next((c for c in ID_COLUMNS if c in dataset.features), None)
        if id_column:
            ids = [str(v) for v in dataset.data.column(id_column).to_pylist()]
        else:  # the audio's own file name, else the row number
            chunks = dataset.data.column(audio_column(dataset)).chunks  # only the path field: the bytes stay on disk
            paths = [p for chunk in chunks for p in chunk.field("path").to_pylist()]
            ids = [file_stem(p) if p else f"{split}-{row:07d}" for row, p in enumerate(paths)]
        store_split = mapping.get(split) or RENAMED_SPLITS.get(split, split)
        for row, (name, value) in enumerate(zip(ids, label_values)):
            labels = _as_labels(value, names) if labelled else []
            labels_seen.update(labels)
            clips.append(Clip(clip_id(name), row_uri(source, hf_config, split, row), store_split, labels,
                              extra={"hf_split": split, "hf_row": row}))
    report.labels = sorted(labels_seen)
    return clips


TASKS: tuple[Task, ...] = ()  # a Hub copy is used with the task of its dataset (or `folder`): see tasks.check_store
