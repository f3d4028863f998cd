"""Tiny real audio trees in the five dataset layouts (GTZAN, NSynth, music/speech, AudioSet, folder), and a Hugging Face
dataset on disk, for tests.

Every writer returns an `AudioTree`: the root to hand to `build_manifest`, what it wrote (with exact durations), what
the dataset's own metadata lists but the tree leaves out, and the deliberately broken files. Signals are real: a
chord per class (different fundamentals) plus a little noise, so a model can tell classes apart.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
GTZAN_SPLITS = {split: REPO / "manifests" / "gtzan" / f"{split}_filtered.txt" for split in ("train", "valid", "test")}
AUDIOSET_CLASSES = REPO / "manifests" / "audioset" / "class_labels_indices.csv"
# (extension, sample rate, channels) cycled through by the mixed trees: wav/flac/ogg, 16/22.05/44.1 kHz, mono/stereo
FORMATS = [(".wav", 16000, 1), (".flac", 22050, 2), (".ogg", 44100, 1),
           (".wav", 44100, 2), (".flac", 16000, 1), (".ogg", 22050, 2)]


@dataclass
class AudioFile:
    path: Path
    key: str  # the dataset's own name: "blues.00029", an NSynth note_str, a YTID, a file stem
    labels: list[str]
    split: str | None  # the split the dataset fixes (GTZAN, NSynth, AudioSet subset); None where the builder draws it
    seconds: float  # exact: samples / sample_rate
    sample_rate: int
    channels: int
    extra: dict = field(default_factory=dict)


@dataclass
class AudioTree:
    root: Path  # pass this to build_manifest
    files: list[AudioFile]
    missing: list[str] = field(default_factory=list)  # listed by the dataset's metadata, no audio written
    faulty: dict[str, Path] = field(default_factory=dict)  # reason ("corrupt", "empty", "nan", "too_short") -> path

    def by_key(self) -> dict[str, AudioFile]:
        return {f.key: f for f in self.files}


# ---------------------------------------------------------------------------------------------
# signals and single files


def class_freq(index: int) -> float:
    """Fundamental for class `index`: a fifth apart per class, so classes differ audibly."""
    return 110.0 * 2 ** (7 * (index % 12) / 12) * (1 + index // 12)


def tone(seconds: float, sample_rate: int, channels: int = 1, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A decaying harmonic tone plus noise, float32 (samples, channels); channels differ slightly."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    out = []
    for ch in range(channels):
        x = sum(0.3 / k * np.sin(2 * np.pi * k * freq * t + ch * 0.5) for k in (1, 2, 3))
        out.append(x * np.exp(-t) + 0.03 * rng.standard_normal(t.size))
    return np.stack(out, axis=1).astype(np.float32)


def babble(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Speech-like: noise under a 4 Hz syllable envelope, float32 (samples, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)), 0, None)
    return (0.3 * envelope[:, None] * rng.standard_normal((t.size, channels))).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> AudioFile:
    """Write with soundfile (format from the extension); returns the record with its exact duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sample_rate)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return AudioFile(path, path.stem, [], None, len(samples) / sample_rate, sample_rate, channels)


def write_tone(path: Path, seconds: float = 1.0, sample_rate: int = 16000, channels: int = 1,
               freq: float = 440.0, seed: int = 0) -> AudioFile:
    return write_audio(path, tone(seconds, sample_rate, channels, freq, seed), sample_rate)


def write_corrupt(path: Path, n_bytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under an audio name (like GTZAN's jazz.00054.wav): the header cannot be read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00JUNK" + np.random.default_rng(seed).bytes(n_bytes))
    return path


def write_empty_wav(path: Path, sample_rate: int = 16000) -> Path:
    """A valid WAV header with zero samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(0, np.float32), sample_rate)
    return path


def write_nan_wav(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """A float WAV whose every sample is NaN (the header is fine, the audio is not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(round(seconds * sample_rate), np.nan, np.float32), sample_rate, subtype="FLOAT")
    return path


def write_too_short(path: Path, samples: int = 32, sample_rate: int = 16000) -> Path:
    """A few milliseconds of audio: shorter than one codec frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(samples / sample_rate, sample_rate)[:, 0], sample_rate)
    return path


def write_faulty_files(folder: Path) -> dict[str, Path]:
    """One of each broken kind in `folder`: reason -> path."""
    return {"corrupt": write_corrupt(folder / "broken_corrupt.wav"),
            "empty": write_empty_wav(folder / "broken_empty.wav"),
            "nan": write_nan_wav(folder / "broken_nan.wav"),
            "too_short": write_too_short(folder / "broken_short.wav")}


def write_m4a(path: Path, seconds: float = 1.0, sample_rate: int = 44100) -> Path:
    """AAC in an .m4a container through PyAV (the YouTube-download case); needs `av`."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = tone(seconds, sample_rate)[:, 0]  # (samples,)
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")  # (1, samples) packed
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------
# dataset trees


def gtzan_listed() -> dict[str, str]:
    """'blues.00029.wav' -> split, from the fault-filtered split files."""
    return {line.split("/")[1]: split for split, path in GTZAN_SPLITS.items() for line in path.read_text().split()}


def write_gtzan_tree(root: Path, genres: tuple[str, ...] = ("blues", "classical", "jazz"), per_split: int = 1,
                     layout: str = "genres", seconds: float = 1.0, sample_rate: int = 22050, ext: str = ".wav",
                     corrupt: tuple[str, ...] = (), excluded: int = 0) -> AudioTree:
    """The first `per_split` listed files of each genre in each split, and the first `excluded` of each genre's
    clips that the fault-filtered split leaves out (split "excluded"). layout: "genres" (genres/<genre>/),
    "kaggle" (Data/genres_original/<genre>/) or "flat" (<genre>/ at the root). `corrupt` names
    (e.g. "jazz.00054") are written as random bytes, like the public copy's jazz.00054.wav.
    `missing` lists the rest of GTZAN's 1,000 clips."""
    base = {"genres": root / "genres", "kaggle": root / "Data" / "genres_original", "flat": root}[layout]
    listed = gtzan_listed()
    split_of = {f"{g}.{i:05d}.wav": listed.get(f"{g}.{i:05d}.wav", "excluded") for g in GTZAN_GENRES for i in range(100)}
    chosen = []
    for genre in genres:
        for split in [*GTZAN_SPLITS, "excluded"]:
            wanted = excluded if split == "excluded" else per_split
            chosen += [n for n, s in split_of.items() if s == split and n.startswith(genre + ".")][:wanted]
    files = []
    for name in chosen:
        genre, stem = name.split(".")[0], name.removesuffix(".wav")
        if stem in corrupt:
            continue
        f = write_tone(base / genre / (stem + ext), seconds, sample_rate, freq=class_freq(genres.index(genre)),
                       seed=len(files))
        f.key, f.labels, f.split = stem, [genre], split_of[name]
        files.append(f)
    faulty = {stem: write_corrupt(base / stem.split(".")[0] / (stem + ext), seed=i) for i, stem in enumerate(corrupt)}
    written = {f.key for f in files} | set(corrupt)
    missing = sorted(n for n in split_of if n.removesuffix(".wav") not in written)
    return AudioTree(root, files, missing, faulty)


NSYNTH_FAMILY_INDEX = {name: i for i, name in enumerate(
    ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal"))}


def write_nsynth_tree(root: Path, families: tuple[str, ...] = ("bass", "guitar", "vocal"), per_split: int = 1,
                      seconds: float = 1.0, sample_rate: int = 16000, missing: int = 0) -> AudioTree:
    """nsynth-{train,valid,test}/examples.json + audio/<note_str>.wav with the real record fields.
    `missing` extra notes per split are listed in examples.json without audio."""
    sources = ("acoustic", "electronic", "synthetic")
    files, absent = [], []
    for s, split in enumerate(("train", "valid", "test")):
        folder, examples = root / f"nsynth-{split}", {}
        for i in range(len(families) * per_split + missing):
            family = families[i % len(families)]
            source, pitch, velocity = sources[i % 3], 36 + 7 * i + s, (25, 50, 75, 100, 127)[i % 5]
            instrument = f"{family}_{source}_{10 * s + i:03d}"
            note_str = f"{instrument}-{pitch:03d}-{velocity:03d}"
            examples[note_str] = {
                "note": 1000 * s + i, "note_str": note_str, "instrument": 10 * s + i, "instrument_str": instrument,
                "pitch": pitch, "velocity": velocity, "sample_rate": sample_rate,
                "qualities": [0] * 10, "qualities_str": [],
                "instrument_source": i % 3, "instrument_source_str": source,
                "instrument_family": NSYNTH_FAMILY_INDEX[family], "instrument_family_str": family}
            if i >= len(families) * per_split:
                absent.append(f"nsynth-{split}/audio/{note_str}.wav")
                continue
            freq = 440.0 * 2 ** ((pitch - 69) / 12)
            f = write_tone(folder / "audio" / f"{note_str}.wav", seconds, sample_rate, freq=freq, seed=i)
            f.key, f.labels, f.split, f.extra = note_str, [family], split, {"pitch": pitch, "velocity": velocity}
            files.append(f)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "examples.json").write_text(json.dumps(examples, indent=4))
    return AudioTree(root, files, absent)


def write_music_speech_tree(root: Path, per_class: int = 10, layout: str = "nested", seconds: float = 0.5,
                            sample_rate: int = 22050) -> AudioTree:
    """music/speech clips. layout: "nested" (music_speech/{music,speech}_wav/), "flat" ({music,speech}_wav/ at the
    root: root is the music_speech folder itself) or "short" (music_speech/{music,speech}/)."""
    base = root if layout == "flat" else root / "music_speech"
    suffix = "" if layout == "short" else "_wav"
    files = []
    for i in range(per_class):
        music = write_audio(base / f"music{suffix}" / f"song{i:02d}.wav",
                            tone(seconds, sample_rate, freq=class_freq(i % 4), seed=i), sample_rate)
        speech = write_audio(base / f"speech{suffix}" / f"talk.{i:02d}.wav",  # dotted stems, like some real names
                             babble(seconds, sample_rate, seed=100 + i), sample_rate)
        music.labels, speech.labels = ["music"], ["speech"]
        files += [music, speech]
    return AudioTree(root, files)


def audioset_classes() -> list[tuple[str, str]]:
    """(mid, display_name) in index order."""
    with open(AUDIOSET_CLASSES, newline="") as f:
        return [(row["mid"], row["display_name"]) for row in csv.DictReader(f)]


def write_audioset_tree(root: Path, subsets: tuple[str, ...] = ("balanced_train", "eval"), per_subset: int = 3,
                        missing: int = 1, seconds: float = 1.0) -> AudioTree:
    """Real-format `<subset>_segments.csv` (3 comment lines, `YTID, start, end, "mid1,mid2"`) at the root; audio
    under audio/<subset>/, alternately named `<YTID>.<ext>` and `Y<YTID>_<start>_<end>.<ext>` (the latter one folder
    deeper); formats cycle through FORMATS. `missing` rows per subset have no audio. Row labels alternate between
    one MID and two or three quoted MIDs, including classes whose display names contain commas."""
    classes = audioset_classes()
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    files, absent, n = [], [], 0
    for subset in subsets:
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={per_subset + missing}, num_segs={per_subset + missing}, num_pos_labels=0",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for i in range(per_subset + missing):
            ytid = ("--" if n == 0 else "") + "".join(rng.choice(alphabet, 11 if n else 9))
            start = float(10 * (n % 4))
            picks = [(n * 37) % len(classes)]  # class indices; odd rows add 1 or 2 more, one with a comma in its name
            if n % 2:
                picks += [1 + n % 3, (n * 11 + 5) % len(classes)][: 1 + (n // 2) % 2]
            mids = [classes[k][0] for k in picks]
            lines.append(f'{ytid}, {start:.3f}, {start + 10:.3f}, "{",".join(mids)}"')
            if i >= per_subset:
                absent.append(f"{subset}/{ytid}")
            else:
                ext, sr, channels = FORMATS[n % len(FORMATS)]
                name = f"{ytid}{ext}" if n % 2 == 0 else f"part1/Y{ytid}_{start:.3f}_{start + 10:.3f}{ext}"
                f = write_tone(root / "audio" / subset / name, seconds, sr, channels, freq=class_freq(picks[0]), seed=n)
                f.key, f.labels, f.split = ytid, [classes[k][1] for k in picks], subset
                f.extra = {"mids": mids, "start": start, "end": start + 10}
                files.append(f)
            n += 1
        (root / f"{subset}_segments.csv").write_text("\n".join(lines) + "\n")
    return AudioTree(root, files, absent)


def write_folder_tree(root: Path, labels: tuple[str, ...] = ("bird", "cat", "dog"), per_label: int = 5,
                      seconds: float = 0.5, faulty: bool = False) -> AudioTree:
    """<root>/<label>/<files> cycling through FORMATS; the second file of a label sits in a subfolder, the third has a
    dotted name. faulty=True adds a corrupt, an empty, a NaN and a too-short file under the first label."""
    files, n = [], 0
    for c, label in enumerate(labels):
        for i in range(per_label):
            ext, sr, channels = FORMATS[n % len(FORMATS)]
            name = {1: f"takes/{label}{i}{ext}", 2: f"{label}.take.{i}{ext}"}.get(i, f"{label}{i}{ext}")
            f = write_tone(root / label / name, seconds, sr, channels, freq=class_freq(c), seed=n)
            f.labels = [label]
            files.append(f)
            n += 1
    broken = write_faulty_files(root / labels[0]) if faulty else {}
    return AudioTree(root, files, faulty=broken)


def write_hf_dataset(root: Path) -> Path:
    """A Hugging Face `save_to_disk` dataset (train + test) with an Audio column of encoded wav bytes whose file names
    have dots and clash across splits, and string labels; skips the test when `datasets` is not installed."""
    import io

    import pytest

    datasets = pytest.importorskip("datasets")
    splits = {}
    for split in ("train", "test"):
        rows, labels = [], []
        for i in range(4):
            buffer = io.BytesIO()
            sf.write(buffer, tone(0.3, 16000, freq=class_freq(i % 2), seed=i), 16000, format="WAV")
            rows.append({"bytes": buffer.getvalue(), "path": f"take.{i % 3}.wav"})  # take.0 twice: a clash
            labels.append(["low", "high"][i % 2])
        splits[split] = datasets.Dataset.from_dict({"audio": rows, "label": labels}).cast_column("audio", datasets.Audio())
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root
