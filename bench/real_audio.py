"""Build the real-audio benchmark offline from Debian packages: instrument notes, music vs speech, package of origin,
and an unlabelled pre-training pool.

    apt-get update && apt-get install -y --no-install-recommends fluidsynth openmpt123
    python bench/real_audio.py --out data/real-audio          # or: make real-audio

Sources (nothing else is used):
  music   ufoai-music (Ogg in a .pk3 zip), tecnoballz-data (.mod), xblast-tnt-musics (headerless PCM: unsigned 8-bit
          stereo at 22050 Hz, the format of the game's sound server), tomatoes-data (one .it), the music/ of
          fillets-ng-data; boswars-data is fetched too but ships no music (only short unit sound effects).
  speech  the Czech voice acting of fillets-ng-data-cs and the English voice lines of fillets-ng-data (sound/*/en/).
  notes   rendered with fluidsynth from csound-soundfont, fluidr3mono-gm-soundfont, musescore-general-soundfont.
Module formats (.mod, .it) are rendered with openmpt123 (libopenmpt).

Written under --out:
  nsynth/nsynth-{train,valid,test}/examples.json + audio/<note_str>.wav  16 kHz mono, 4 s (3 s held + release).
      Test is the csound soundfont: MuseScore General is a fork of FluidR3Mono and still plays FluidR3Mono samples for
      most presets, so only csound is truly unseen. Valid holds out whole GM programs (in both training soundfonts).
  music_speech/{music,speech}/*.wav   speech: consecutive lines of one level joined to >= 10 s clips;
      music: one excerpt per speech clip, the same length (10-30 s), spread over packages and tracks.
  genre/<package>/<track>.wav   one file per whole track, so a per-file split never puts a track in two splits.
  pool/   every unlabelled file for pre-training: music tracks, speech clips, training-soundfont notes (mostly links).
  licenses/<package>.copyright, sources.jsonl (where every written file comes from), SUMMARY.md.

Deterministic for a --seed; reruns skip finished stages and existing files. Debian packages are cached under --cache
(apt-get download + dpkg -x, no system install); the extracted trees are deleted at the end.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

MUSIC_PACKAGES = ("ufoai-music", "boswars-data", "tecnoballz-data", "xblast-tnt-musics", "tomatoes-data",
                  "fillets-ng-data")
SPEECH_PACKAGES = ("fillets-ng-data-cs", "fillets-ng-data")
SOUNDFONT_PACKAGES = {"csound": "csound-soundfont", "fluidr3mono": "fluidr3mono-gm-soundfont",
                      "musescore": "musescore-general-soundfont"}
PACKAGES = tuple(dict.fromkeys(MUSIC_PACKAGES + SPEECH_PACKAGES + tuple(SOUNDFONT_PACKAGES.values())))
APT_LINE = "apt-get update && apt-get install -y --no-install-recommends fluidsynth openmpt123"

RATE = 24000  # music, speech, genre, pool (the Encodec rate; the tokenizer resamples anyway)
NOTE_RATE, NOTE_SECONDS, NOTE_HELD = 16000, 4.0, 3.0
RENDER_RATE, NOTE_SLOT = 44100, 4.25  # fluidsynth renders one note per slot; all-sound-off ends each slot
VELOCITIES = (50, 90, 127)
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal")
SOURCES = ("acoustic", "electronic", "synthetic")
SKIPPED_TRACKS = {"ufoai-music": ("dynamictest-battle-41-74sec", "dynamictest-normal-08-35sec")}  # cut from others
NOT_IN_GENRE = {"tecnoballz-data": ("area1-game2",)}  # area1-game's tune with other samples: would cross splits
# Read by hand from the copyright files that are not machine-readable (the others are parsed per file used).
FREE_FORM_LICENCES = {"fillets-ng-data": "GPL-2", "fillets-ng-data-cs": "GPL-2", "xblast-tnt-musics": "GPL-2",
                      "fluidr3mono-gm-soundfont": "MIT", "musescore-general-soundfont": "MIT (parts PD or CC0)"}
MIN_GENRE_TRACKS = 3  # a package with fewer tracks cannot fill train/valid/test by track (tomatoes-data has one)

# GM program (0-based) -> (family, source, lowest, highest MIDI pitch played); programs that fit no family are absent
GM_PROGRAMS: dict[int, tuple[str, str, int, int]] = {
    0: ("keyboard", "acoustic", 28, 100), 1: ("keyboard", "acoustic", 28, 100), 2: ("keyboard", "electronic", 28, 100),
    3: ("keyboard", "acoustic", 28, 100), 4: ("keyboard", "electronic", 28, 96), 5: ("keyboard", "synthetic", 28, 96),
    6: ("keyboard", "acoustic", 29, 89), 7: ("keyboard", "electronic", 29, 89), 8: ("keyboard", "acoustic", 60, 108),
    9: ("mallet", "acoustic", 79, 108), 11: ("mallet", "acoustic", 53, 89), 12: ("mallet", "acoustic", 45, 96),
    13: ("mallet", "acoustic", 65, 108), 14: ("mallet", "acoustic", 60, 77),
    16: ("organ", "electronic", 36, 96), 17: ("organ", "electronic", 36, 96), 18: ("organ", "electronic", 36, 96),
    19: ("organ", "acoustic", 36, 96), 20: ("organ", "acoustic", 36, 96),
    **{p: ("guitar", "acoustic" if p < 26 else "electronic", 40, 84) for p in range(24, 32)},
    32: ("bass", "acoustic", 28, 60), **{p: ("bass", "electronic", 28, 60) for p in range(33, 38)},
    38: ("bass", "synthetic", 28, 60), 39: ("bass", "synthetic", 28, 60),
    40: ("string", "acoustic", 55, 96), 41: ("string", "acoustic", 48, 84), 42: ("string", "acoustic", 36, 76),
    43: ("string", "acoustic", 28, 60), 44: ("string", "acoustic", 36, 96), 45: ("string", "acoustic", 36, 96),
    48: ("string", "acoustic", 36, 96), 49: ("string", "acoustic", 36, 96), 110: ("string", "acoustic", 55, 91),
    52: ("vocal", "acoustic", 48, 79), 53: ("vocal", "acoustic", 48, 79), 54: ("vocal", "synthetic", 48, 84),
    56: ("brass", "acoustic", 55, 82), 57: ("brass", "acoustic", 40, 72), 58: ("brass", "acoustic", 28, 58),
    59: ("brass", "acoustic", 55, 82), 60: ("brass", "acoustic", 41, 77), 61: ("brass", "acoustic", 40, 80),
    64: ("reed", "acoustic", 56, 87), 65: ("reed", "acoustic", 49, 81), 66: ("reed", "acoustic", 44, 76),
    67: ("reed", "acoustic", 36, 69), 68: ("reed", "acoustic", 58, 91), 69: ("reed", "acoustic", 52, 81),
    70: ("reed", "acoustic", 34, 75), 71: ("reed", "acoustic", 50, 91), 109: ("reed", "acoustic", 55, 77),
    111: ("reed", "acoustic", 60, 84),
    72: ("flute", "acoustic", 74, 102), 73: ("flute", "acoustic", 60, 96), 74: ("flute", "acoustic", 60, 91),
    75: ("flute", "acoustic", 60, 91), 76: ("flute", "acoustic", 60, 84), 77: ("flute", "acoustic", 55, 84),
    78: ("flute", "acoustic", 72, 96), 79: ("flute", "acoustic", 60, 86),
    **{p: ("synth_lead", "synthetic", 36, 96) for p in range(80, 88)},
}


def rng_for(seed: int, *key: object) -> random.Random:
    return random.Random(":".join(str(k) for k in (seed, *key)))


def safe_name(text: str) -> str:
    return re.sub(r"[^\w-]", "_", text)


# ---------------------------------------------------------------------------------------------
# Debian packages


class Packages:
    """Downloads each package's .deb once into cache/debs and extracts it on first use into cache/extracted."""

    def __init__(self, cache: Path):
        self.debs, self.extracted = cache / "debs", cache / "extracted"
        self.debs.mkdir(parents=True, exist_ok=True)

    def deb(self, package: str) -> Path:
        found = sorted(self.debs.glob(f"{package}_*.deb"))
        if not found:
            result = subprocess.run(["apt-get", "download", "-q", package], cwd=self.debs, capture_output=True,
                                    text=True)
            found = sorted(self.debs.glob(f"{package}_*.deb"))
            if result.returncode or not found:
                sys.exit(f"apt-get download {package} failed ({result.stderr.strip().splitlines()[-1:]}): "
                         "run `apt-get update` first (Debian 12 'bookworm' main has all the packages)")
        return found[-1]

    def version(self, package: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(self.deb(package)), "Version"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def tree(self, package: str) -> Path:
        root = self.extracted / package
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(self.deb(package)), str(root)], check=True)
            (root / ".complete").touch()
        return root

    def copyright(self, package: str) -> Path:
        return self.tree(package) / "usr/share/doc" / package / "copyright"


def files_under(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------------
# audio in and out


def to_mono(audio: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    return mono if rate == out_rate else soxr.resample(mono, rate, out_rate, quality="HQ").astype(np.float32)


def read_mono(path: Path, out_rate: int = RATE) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return to_mono(audio, rate, out_rate)


def render_module(path: Path, out_rate: int = RATE) -> np.ndarray:
    """A tracker module played once through by openmpt123: raw mono float32 on stdout."""
    result = subprocess.run(["openmpt123", "--quiet", "--batch", "--stdout", "--samplerate", str(out_rate),
                             "--channels", "1", "--float", "--repeat", "0", "--", str(path)], capture_output=True)
    if result.returncode or not result.stdout:
        raise RuntimeError(f"openmpt123 could not render {path}: {result.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def read_xblast_raw(path: Path, out_rate: int = RATE) -> np.ndarray:
    """XBlast songs: headerless unsigned 8-bit stereo PCM at 22050 Hz."""
    raw = np.fromfile(path, dtype=np.uint8)
    stereo = (raw[: len(raw) // 2 * 2].astype(np.float32) - 128.0).reshape(-1, 2) / 128.0
    return to_mono(stereo, 22050, out_rate)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """16-bit PCM, written under a name no audio walker picks up and renamed, so a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    sf.write(str(part), np.clip(audio, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    os.replace(part, path)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def trim_silence(audio: np.ndarray, rate: int, below_peak_db: float = 40.0, pad_s: float = 0.05) -> np.ndarray:
    frame = max(1, rate // 50)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    if not len(frames):
        return audio
    level = np.sqrt(np.mean(frames ** 2, axis=1))
    loud = np.flatnonzero(level > max(level.max() * 10 ** (-below_peak_db / 20), 1e-4))
    if not len(loud):
        return audio[:0]
    pad = int(pad_s * rate)
    return audio[max(0, loud[0] * frame - pad): min(len(audio), (loud[-1] + 1) * frame + pad)]


# ---------------------------------------------------------------------------------------------
# sources


@dataclass
class Track:
    package: str
    name: str  # file-safe stem
    source: str  # path inside the package
    kind: str  # ogg | module | xblast


@dataclass
class Line:
    language: str
    level: str
    name: str
    source: str


def music_tracks(packages: Packages) -> list[Track]:
    tracks = []
    ufo = packages.tree("ufoai-music")
    for pk3 in files_under(ufo, (".pk3",)):
        with zipfile.ZipFile(pk3) as archive:
            for member in sorted(m for m in archive.namelist() if m.lower().endswith(".ogg")):
                target = ufo / "pk3" / member
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
                tracks.append(Track("ufoai-music", safe_name(Path(member).stem), str(target), "ogg"))
    for package in ("tecnoballz-data", "tomatoes-data"):
        for path in files_under(packages.tree(package), (".mod", ".xm", ".s3m", ".it")):
            tracks.append(Track(package, safe_name(path.stem), str(path), "module"))
    for path in files_under(packages.tree("xblast-tnt-musics"), (".raw",)):
        tracks.append(Track("xblast-tnt-musics", safe_name(path.stem), str(path), "xblast"))
    for path in files_under(packages.tree("fillets-ng-data"), (".ogg",)):
        if path.parent.name == "music":
            tracks.append(Track("fillets-ng-data", safe_name(path.stem), str(path), "ogg"))
    # boswars-data: its .wav files are unit sound effects of a second or two, not music; listed so SUMMARY says so
    packages.tree("boswars-data")
    return tracks


def load_track(track: Track) -> np.ndarray:
    if track.kind == "module":
        return render_module(Path(track.source))
    if track.kind == "xblast":
        return read_xblast_raw(Path(track.source))
    return read_mono(Path(track.source))


def speech_lines(packages: Packages) -> list[Line]:
    lines = []
    for package, language in (("fillets-ng-data-cs", "cs"), ("fillets-ng-data", "en")):
        for path in files_under(packages.tree(package), (".ogg",)):
            if path.parent.name == language and path.parent.parent.parent.name == "sound":
                lines.append(Line(language, path.parent.parent.name, path.stem, str(path)))
    return lines


# ---------------------------------------------------------------------------------------------
# stages


class Stages:
    """A finished stage leaves a marker with its options; a rerun with the same options skips it."""

    def __init__(self, out: Path):
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str, options: dict, rebuild_hint: str) -> bool:
        marker = self.dir / f"{name}.json"
        if not marker.exists():
            return False
        if json.loads(marker.read_text()) != options:
            sys.exit(f"{name} was built with other options: delete {rebuild_hint} (and {marker}) to rebuild it")
        return True

    def finish(self, name: str, options: dict) -> None:
        (self.dir / f"{name}.json").write_text(json.dumps(options, sort_keys=True))


def write_jsonl(path: Path, records: list[dict]) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(part, path)


def build_tracks(out: Path, packages: Packages) -> list[dict]:
    """Every music track, whole, 24 kHz mono: genre/<package>/ when it can be in the genre task, else pool/music/."""
    tracks = [t for t in music_tracks(packages) if t.name not in SKIPPED_TRACKS.get(t.package, ())]
    counts = Counter(t.package for t in tracks if t.name not in NOT_IN_GENRE.get(t.package, ()))
    records = []
    for track in tqdm(tracks, desc="music tracks", unit="track"):
        in_genre = counts[track.package] >= MIN_GENRE_TRACKS and track.name not in NOT_IN_GENRE.get(track.package, ())
        path = (out / "genre" if in_genre else out / "pool" / "music") / track.package / f"{track.name}.wav"
        if not path.exists():
            audio = load_track(track)
            write_wav(path, audio / max(1.0, float(np.abs(audio).max())), RATE)
        records.append({"task": "genre" if in_genre else "pool", "path": str(path.relative_to(out)),
                        "package": track.package, "source": str(Path(track.source).relative_to(packages.extracted)),
                        "seconds": round(sf.info(str(path)).duration, 3)})
    return records


def speech_clips(lines: list[Line], target_s: float, min_s: float) -> list[list[Line]]:
    """Consecutive lines (per language, in level then file order) joined until a clip reaches target_s; a clip crosses
    into the next level only while shorter than min_s; a short tail joins the clip before it."""
    clips: list[list[Line]] = []
    for language in sorted({line.language for line in lines}):
        ordered = sorted((line for line in lines if line.language == language), key=lambda x: (x.level, x.name))
        current, seconds, language_clips = [], 0.0, []
        for line in ordered:
            if current and current[-1].level != line.level and seconds >= min_s:
                language_clips.append(current)
                current, seconds = [], 0.0
            current.append(line)
            seconds += sf.info(line.source).duration
            if seconds >= target_s:
                language_clips.append(current)
                current, seconds = [], 0.0
        if current:
            if seconds < min_s and language_clips:
                language_clips[-1] += current
            else:
                language_clips.append(current)
        clips += language_clips
    return clips


def build_speech(out: Path, packages: Packages, target_s: float) -> list[dict]:
    lines = speech_lines(packages)
    gap = np.zeros(int(0.3 * RATE), dtype=np.float32)
    records = []
    for n, clip in enumerate(tqdm(speech_clips(lines, target_s, min_s=6.0), desc="speech clips", unit="clip")):
        first = clip[0]
        path = out / "music_speech" / "speech" / f"{first.language}_{safe_name(first.level)}_{n:04d}.wav"
        if not path.exists():
            parts = [trim_silence(read_mono(Path(line.source)), RATE) for line in clip]
            audio = np.concatenate([piece for part in parts for piece in (part, gap)][:-1])
            write_wav(path, audio / max(1.0, float(np.abs(audio).max())), RATE)
        records.append({"task": "music_speech", "label": "speech", "path": str(path.relative_to(out)),
                        "language": first.language, "sources": [Path(line.source).name for line in clip],
                        "level": first.level, "seconds": round(sf.info(str(path)).duration, 3)})
    return records


def water_fill(total: int, capacity: dict[str, int]) -> dict[str, int]:
    """Split total as evenly as the capacities allow (a key never gets more than its capacity)."""
    share = dict.fromkeys(capacity, 0)
    left = min(total, sum(capacity.values()))
    while left:
        open_keys = sorted(k for k in capacity if share[k] < capacity[k])
        each = max(1, left // len(open_keys))
        for key in open_keys:
            give = min(each, capacity[key] - share[key], left)
            share[key] += give
            left -= give
            if not left:
                break
    return share


def build_music_excerpts(out: Path, tracks: list[dict], speech: list[dict], seed: int) -> list[dict]:
    """One music excerpt per speech clip, with that clip's length (clamped to 10-30 s): packages as even as their
    length allows, each package's excerpts spread over its tracks in proportion to their length, one per 20 s slot."""
    slot = 20.0
    lengths = [min(30.0, max(10.0, s["seconds"])) for s in speech]
    rng_for(seed, "excerpt-lengths").shuffle(lengths)
    by_package: dict[str, list[dict]] = defaultdict(list)
    for t in tracks:
        if t["seconds"] >= 10.0:
            by_package[t["package"]].append(t)
    capacity = {p: sum(max(1, int(t["seconds"] // slot)) for t in ts) for p, ts in by_package.items()}
    quota = water_fill(len(lengths), capacity)
    plan = []  # (track record, part index, parts)
    for package, package_tracks in sorted(by_package.items()):
        per_track = water_fill(quota[package], {t["path"]: max(1, int(t["seconds"] // slot)) for t in package_tracks})
        plan += [(t, i, per_track[t["path"]]) for t in package_tracks for i in range(per_track[t["path"]])]
    records, silent = [], 0
    for (track, part, parts), length in tqdm(list(zip(plan, lengths)), desc="music excerpts", unit="clip"):
        part_s = track["seconds"] / parts
        length = min(length, part_s)
        start = part * part_s + rng_for(seed, "excerpt", track["path"], part).uniform(0, part_s - length)
        stem = Path(track["path"]).stem
        path = out / "music_speech" / "music" / f"{safe_name(track['package'])}_{stem}_{int(start * 1000):07d}ms.wav"
        if not path.exists():
            begin = int(start * RATE)
            audio, _ = sf.read(str(out / track["path"]), start=begin, stop=begin + int(length * RATE), dtype="float32")
            if rms(audio) < 10 ** (-50 / 20):
                silent += 1
                continue
            write_wav(path, audio, RATE)
        records.append({"task": "music_speech", "label": "music", "path": str(path.relative_to(out)),
                        "package": track["package"], "track": track["path"], "source": track["source"],
                        "start_s": round(start, 3),
                        "seconds": round(sf.info(str(path)).duration, 3)})
    if silent:
        print(f"music excerpts: {silent} near-silent windows skipped")
    return records


# ---------------------------------------------------------------------------------------------
# NSynth-style notes


def plan_notes(soundfont: str, split_of_program: dict[int, str], per_family: int, seed: int) -> list[dict]:
    """per_family notes of each family from one soundfont: the family's programs share them evenly; each program's
    pitches are drawn one per equal band of its range, velocities cycle through VELOCITIES."""
    notes = []
    for family_id, family in enumerate(FAMILIES):
        programs = sorted(p for p, spec in GM_PROGRAMS.items() if spec[0] == family)
        counts = [per_family // len(programs) + (i < per_family % len(programs)) for i in range(len(programs))]
        for program, count in zip(programs, counts):
            _, source, low, high = GM_PROGRAMS[program]
            rng = rng_for(seed, "notes", soundfont, program)
            bands = np.linspace(low, high + 1, count + 1)
            pitches = [rng.randrange(int(math.ceil(a)), max(int(math.ceil(a)) + 1, int(math.ceil(b)))) for a, b in
                       zip(bands[:-1], bands[1:])]
            offset = rng.randrange(len(VELOCITIES))
            instrument_str = f"{family}_{source}_{soundfont}_{program:03d}"
            for i, pitch in enumerate(pitches):
                velocity = VELOCITIES[(i + offset) % len(VELOCITIES)]
                notes.append({"note_str": f"{instrument_str}-{pitch:03d}-{velocity:03d}", "pitch": pitch,
                              "velocity": velocity, "instrument_str": instrument_str, "instrument_family": family_id,
                              "instrument_family_str": family, "instrument_source": SOURCES.index(source),
                              "instrument_source_str": source, "sample_rate": NOTE_RATE, "qualities": [0] * 10,
                              "qualities_str": [], "soundfont": soundfont, "program": program,
                              "split": split_of_program.get(program, "test")})
    return notes


def valid_programs(seed: int, fraction: float = 0.15) -> set[int]:
    """A seeded ~15% of each family's GM programs (at least one) for valid, kept out of train in every soundfont."""
    chosen = set()
    for family in FAMILIES:
        programs = sorted(p for p, spec in GM_PROGRAMS.items() if spec[0] == family)
        rng_for(seed, "valid", family).shuffle(programs)
        chosen.update(programs[: max(1, round(fraction * len(programs)))])
    return chosen


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n := n >> 7:
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def notes_midi(notes: list[dict]) -> bytes:
    """A format-0 MIDI file: note i starts at i * NOTE_SLOT on channel 0, held NOTE_HELD s, all sound off at 4.1 s."""
    ticks_per_s = 960  # division 480 at the default 120 bpm
    events = []
    for i, note in enumerate(notes):
        t = i * NOTE_SLOT
        events += [(t, 0, bytes([0xC0, note["program"]])), (t, 1, bytes([0x90, note["pitch"], note["velocity"]])),
                   (t + NOTE_HELD, 2, bytes([0x80, note["pitch"], 0])), (t + 4.1, 3, bytes([0xB0, 120, 0]))]
    track, last = vlq(0) + b"\xff\x51\x03" + (500000).to_bytes(3, "big"), 0
    for t, _, message in sorted(events):
        tick = round(t * ticks_per_s)
        track += vlq(tick - last) + message
        last = tick
    track += vlq(0) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track


def render_soundfont(soundfont_path: Path, notes: list[dict], work: Path) -> Path:
    """All notes in one fluidsynth run (loading a soundfont costs seconds), dry (no reverb or chorus), float WAV."""
    midi, wav = work / "notes.mid", work / "notes.wav"
    midi.write_bytes(notes_midi(notes))
    subprocess.run(["fluidsynth", "-ni", "-q", "-o", "synth.reverb.active=0", "-o", "synth.chorus.active=0",
                    "-r", str(RENDER_RATE), "-O", "float", "-T", "wav", "-F", str(wav), str(soundfont_path),
                    str(midi)], check=True, capture_output=True)
    return wav


def soundfont_member(packages: Packages, soundfont: str) -> str:
    """The soundfont file in the package (read from the .deb's listing: no need to unpack it)."""
    listing = subprocess.run(["dpkg-deb", "-c", str(packages.deb(SOUNDFONT_PACKAGES[soundfont]))], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    found = sorted(line.split()[-1] for line in listing if line.startswith("-") and line.endswith((".sf2", ".sf3")))
    if not found:
        sys.exit(f"no .sf2/.sf3 in {SOUNDFONT_PACKAGES[soundfont]}: is the package the Debian one?")
    return found[0]


def slice_notes(rendered: Path, notes: list[dict], out: Path) -> list[dict]:
    """Cut each note's 4 s, downmix, resample to 16 kHz, peak-normalise to -1 dBFS; silent notes are dropped."""
    kept = []
    with sf.SoundFile(str(rendered)) as f:
        for i, note in enumerate(tqdm(notes, desc=f"slice {notes[0]['soundfont']}", unit="note", leave=False)):
            f.seek(int(round(i * NOTE_SLOT * f.samplerate)))
            audio = to_mono(f.read(int(NOTE_SECONDS * f.samplerate), dtype="float32", always_2d=True), f.samplerate,
                            NOTE_RATE)
            length = int(NOTE_SECONDS * NOTE_RATE)
            audio = np.pad(audio, (0, max(0, length - len(audio))))[:length]
            peak = float(np.abs(audio).max())
            if peak < 1e-4:
                continue
            write_wav(note_path(out, note), audio * (0.89 / peak), NOTE_RATE)
            kept.append(note)
    return kept


def note_path(out: Path, note: dict) -> Path:
    return out / "nsynth" / f"nsynth-{note['split']}" / "audio" / f"{note['note_str']}.wav"


def plan_all_notes(per_family: int, test_soundfont: str, seed: int) -> list[dict]:
    """Every note of every soundfont with its split: test = the held-out soundfont, valid = valid_programs()."""
    valid = valid_programs(seed)
    notes = []
    for soundfont in SOUNDFONT_PACKAGES:
        split_of = {} if soundfont == test_soundfont else {p: "valid" if p in valid else "train" for p in GM_PROGRAMS}
        notes += plan_notes(soundfont, split_of, per_family, seed)
    assert len({n["note_str"] for n in notes}) == len(notes), "note_str collision"
    return notes


def build_nsynth(out: Path, packages: Packages, cache: Path, per_family: int, test_soundfont: str,
                 seed: int) -> list[dict]:
    notes = plan_all_notes(per_family, test_soundfont, seed)
    instrument_ids = {name: i for i, name in enumerate(sorted({n["instrument_str"] for n in notes}))}
    kept = []
    for soundfont in tqdm(SOUNDFONT_PACKAGES, desc="soundfonts", unit="font"):
        planned = [n for n in notes if n["soundfont"] == soundfont]
        if all(note_path(out, n).exists() for n in planned):
            kept += planned
            continue
        work = cache / "render" / soundfont
        work.mkdir(parents=True, exist_ok=True)
        soundfont_path = packages.tree(SOUNDFONT_PACKAGES[soundfont]) / soundfont_member(packages, soundfont)
        rendered = render_soundfont(soundfont_path, planned, work)
        kept += slice_notes(rendered, planned, out)
        shutil.rmtree(work)
    shutil.rmtree(cache / "render", ignore_errors=True)
    for split in ("train", "valid", "test"):
        examples = {note["note_str"]: {**{k: v for k, v in note.items() if k != "split"}, "note": number,
                                       "instrument": instrument_ids[note["instrument_str"]]}
                    for number, note in enumerate(n for n in kept if n["split"] == split)}
        path = out / "nsynth" / f"nsynth-{split}" / "examples.json"
        path.write_text(json.dumps(examples, indent=1, sort_keys=True))
    dropped = len(notes) - len(kept)
    if dropped:
        print(f"nsynth: {dropped} silent notes dropped (preset missing or inaudible at that pitch)")
    return [{"task": "nsynth", "label": n["instrument_family_str"], "split": n["split"],
             "path": str(note_path(out, n).relative_to(out)), "soundfont": n["soundfont"], "program": n["program"],
             "seconds": NOTE_SECONDS} for n in kept]


def build_pool(out: Path, records: list[dict]) -> list[dict]:
    """Relative links to every track, speech clip and training-soundfont note (tracks outside genre/ live here)."""
    pooled = []
    for r in records:
        wanted = (r["task"] == "genre" or r.get("label") == "speech"
                  or (r["task"] == "nsynth" and r["split"] != "test"))
        if r["task"] == "pool":
            pooled.append({**r, "task": "pool"})
        if not wanted:
            continue
        name = Path(r["path"]).name
        link = out / "pool" / {"genre": f"music/{r.get('package')}/{name}", "music_speech": f"speech/{name}",
                               "nsynth": f"notes/{name}"}[r["task"]]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(out / r["path"], link.parent))
        pooled.append({**r, "task": "pool", "path": str(link.relative_to(out)), "link_to": r["path"]})
    return pooled


# ---------------------------------------------------------------------------------------------
# summary


def dep5_licence(copyright_text: str, filename: str) -> str | None:
    """The License of the last machine-readable copyright stanza whose Files name this file, or are `*`. Matched by
    file name (upstream paths differ from installed ones), so a whole folder (`dir/*`) never matches."""
    found = None
    for stanza in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, flags=re.M)
        licence = re.search(r"^License:\s*(\S+)", stanza, flags=re.M)
        patterns = [p for p in files[1].split() if p == "*" or Path(p).name != "*"] if files else []
        if licence and any(fnmatch.fnmatch(filename, Path(pattern).name) for pattern in patterns):
            found = licence[1]
    return found


def licence_of(out: Path, package: str, filename: str) -> str:
    text = (out / "licenses" / f"{package}.copyright").read_text(errors="replace")
    if text.startswith("Format:"):
        return dep5_licence(text, filename) or "see copyright file"
    return FREE_FORM_LICENCES[package]


def add_licences(out: Path, records: list[dict], soundfont_files: dict[str, str]) -> None:
    """Give each record the package its audio comes from and that file's licence."""
    for r in records:
        if "soundfont" in r:
            r["package"] = SOUNDFONT_PACKAGES[r["soundfont"]]
            filename = Path(soundfont_files[r["soundfont"]]).name
        elif "language" in r:
            r["package"] = "fillets-ng-data-cs" if r["language"] == "cs" else "fillets-ng-data"
            filename = r["sources"][0]
        else:  # a music track or an excerpt of one
            filename = Path(r["source"]).name
        r["licence"] = licence_of(out, r["package"], filename)


def disk_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def hours(records: list[dict]) -> float:
    return sum(r["seconds"] for r in records) / 3600


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def summary(out: Path, packages: Packages, records: list[dict], options: dict) -> str:
    by_task = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    notes, genre, pool = by_task["nsynth"], by_task["genre"], by_task["pool"]
    ms = by_task["music_speech"]
    used = defaultdict(Counter)  # package -> licence -> hours written (tracks whole, speech and notes once)
    for r in genre + [r for r in pool if "link_to" not in r] + [r for r in ms if r["label"] == "speech"] + notes:
        used[r["package"]][r["licence"]] += r["seconds"] / 3600
    parts = ["# Real-audio benchmark\n\n",
             f"Built by `python bench/real_audio.py --out {options['out']}` (seed {options['seed']}) from Debian "
             f"packages only; needs `{APT_LINE}`. Not part of CI.\n",
             "\n## Packages\n\n",
             table(["package", "version", "used for", "licence of the files used (hours)"],
                   [[p, packages.version(p), role(p), ", ".join(f"{name} ({h:.2f} h)" for name, h in
                                                                sorted(used[p].items())) or "nothing used"]
                    for p in PACKAGES]),
             "\nFull texts: `licenses/<package>.copyright`; per file: `sources.jsonl`.\n",
             "\nboswars-data ships no music (its .wav files are 1-2 s unit sound effects): nothing from it is used.\n",
             f"\n## Instrument family (`nsynth` manifest: `--dataset nsynth --data-root {options['out']}/nsynth`)\n\n",
             f"16 kHz mono, 4 s (3 s held + release), peak -1 dBFS, velocities {list(VELOCITIES)}. Test = the "
             f"`{options['test_soundfont']}` soundfont, never seen in train/valid (MuseScore General is a fork of "
             "FluidR3Mono and still plays its samples for most presets, so holding out either of those would leak). "
             "Valid = a seeded ~15% of GM programs per family, rendered from both training soundfonts and absent "
             "from train.\n\n",
             table(["family"] + [f"{s}" for s in ("train", "valid", "test")],
                   [[f] + [sum(1 for n in notes if n["label"] == f and n["split"] == s) for s in ("train", "valid",
                                                                                                   "test")]
                    for f in FAMILIES] + [["**all**"] + [sum(1 for n in notes if n["split"] == s)
                                                        for s in ("train", "valid", "test")]]),
             f"\nNotes per soundfont: {dict(Counter(n['soundfont'] for n in notes))}; "
             f"{hours(notes):.2f} h.\n",
             "\n## Music vs speech (`folder` or `music_speech` manifest on `music_speech/`)\\n\n",
             "Speech: consecutive voice lines of one game level (Czech, English) joined with 0.3 s gaps into clips of "
             ">= 10 s. Music: one excerpt per speech clip with the same length (clamped to 10-30 s), spread evenly "
             "over packages and, within one, over its tracks. Excerpts of one track (and lines of one speaker) can "
             "fall in different splits of the per-file stratified split.\n\n",
             table(["class", "files", "hours", "by source"],
                   [[label, len(rs), f"{hours(rs):.2f}", dict(Counter(r.get("package", r.get("language")) for r in rs))]
                    for label in ("music", "speech") for rs in [[r for r in ms if r["label"] == label]]]),
             "\n## Package of origin (`folder` manifest on `genre/`)\\n\n",
             "One file per whole track, so the folder manifest's per-file split never puts one track in two splits; "
             f"left out: {', '.join(sum(NOT_IN_GENRE.values(), ()))} (another track's tune with other samples) and "
             f"packages with fewer than {MIN_GENRE_TRACKS} tracks (tomatoes-data: one); both are in the pool. "
             f"Never used: {', '.join(sum(SKIPPED_TRACKS.values(), ()))} (cut from other tracks). "
             "Score long tracks by chunks.\n\n",
             table(["package", "tracks", "hours"],
                   [[p, len(rs), f"{hours(rs):.2f}"] for p in sorted({r["package"] for r in genre})
                    for rs in [[r for r in genre if r["package"] == p]]]),
             "\n## Pre-training pool (`folder` manifest on `pool/`; labels unused)\\n\n",
             "Every music track (whole), every speech clip and the training-soundfont notes (train + valid; never the "
             "test soundfont), mostly as relative links into the task folders. It includes the music/speech and "
             "genre test audio, unlabelled.\n\n",
             table(["kind", "files", "hours"],
                   [[k, len(rs), f"{hours(rs):.2f}"] for k in ("music", "speech", "notes")
                    for rs in [[r for r in pool if Path(r["path"]).parts[1] == k]]]
                   + [["**all**", len(pool), f"{hours(pool):.2f}"]]),
             "\n## Size on disk\\n\n",
             table(["folder", "MB"], [[d, f"{disk_size(out / d) / 1e6:.0f}"] for d in
                                      ("nsynth", "music_speech", "genre", "pool")]
                   + [["**all**", f"{disk_size(out) / 1e6:.0f}"]]),
             f"\nDebian package cache (`--cache`, kept for offline reruns): "
             f"{disk_size(packages.debs) / 1e6:.0f} MB.\n"]
    return "".join(parts)


def role(package: str) -> str:
    uses = [name for name, group in (("music", MUSIC_PACKAGES), ("speech", SPEECH_PACKAGES),
                                     ("notes", tuple(SOUNDFONT_PACKAGES.values()))) if package in group]
    return " + ".join(uses)


# ---------------------------------------------------------------------------------------------


def check_tools() -> None:
    missing = [tool for tool in ("fluidsynth", "openmpt123", "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: install with `{APT_LINE}` (Debian/Ubuntu)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/real-audio"))
    parser.add_argument("--cache", type=Path, help="Debian packages and scratch (default: <out>-cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes-per-family", type=int, default=64, help="per soundfont")
    parser.add_argument("--test-soundfont", choices=tuple(SOUNDFONT_PACKAGES), default="csound")
    parser.add_argument("--speech-seconds", type=float, default=10.0, help="join voice lines until a clip is this long")
    parser.add_argument("--keep-extracted", action="store_true", help="keep the unpacked packages under <cache>")
    args = parser.parse_args(argv)
    started = time.time()
    out, cache = args.out, args.cache or args.out.with_name(args.out.name + "-cache")
    check_tools()
    packages, stages = Packages(cache), Stages(out)
    for package in PACKAGES:
        packages.deb(package)
    (out / "licenses").mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        if not (out / "licenses" / f"{package}.copyright").exists():
            shutil.copyfile(packages.copyright(package), out / "licenses" / f"{package}.copyright")

    def stage(name: str, options: dict, hint: str, build) -> list[dict]:
        records_path = out / ".stages" / f"{name}.jsonl"
        if stages.done(name, options, hint) and records_path.exists():
            return [json.loads(line) for line in records_path.read_text().splitlines()]
        records = build()
        write_jsonl(records_path, records)
        stages.finish(name, options)
        return records

    tracks = stage("tracks", {"rate": RATE}, f"{out}/genre and {out}/pool", lambda: build_tracks(out, packages))
    speech = stage("speech", {"rate": RATE, "target": args.speech_seconds}, f"{out}/music_speech",
                   lambda: build_speech(out, packages, args.speech_seconds))
    music = stage("music", {"rate": RATE, "seed": args.seed, "target": args.speech_seconds}, f"{out}/music_speech",
                  lambda: build_music_excerpts(out, tracks, speech, args.seed))
    notes = stage("nsynth", {"seed": args.seed, "per_family": args.notes_per_family, "test": args.test_soundfont},
                  f"{out}/nsynth", lambda: build_nsynth(out, packages, cache, args.notes_per_family,
                                                        args.test_soundfont, args.seed))
    pool = build_pool(out, tracks + speech + notes)
    records = [r for r in tracks if r["task"] != "pool"] + speech + music + notes + pool
    add_licences(out, records, {sf: soundfont_member(packages, sf) for sf in SOUNDFONT_PACKAGES})
    write_jsonl(out / "sources.jsonl", records)
    text = summary(out, packages, records, {"out": str(args.out), "seed": args.seed,
                                            "test_soundfont": args.test_soundfont})
    (out / "SUMMARY.md").write_text(text)
    if not args.keep_extracted:
        shutil.rmtree(packages.extracted, ignore_errors=True)
    pool_h = sum(r["seconds"] for r in pool) / 3600
    print(f"real-audio: {len(notes)} notes, {len(speech)} speech + {len(music)} music clips, "
          f"{sum(r['task'] == 'genre' for r in tracks)} genre tracks, pool {pool_h:.1f} h, "
          f"{disk_size(out) / 1e9:.2f} GB in {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
