"""bench/real_audio.py's planning, without the Debian packages or the renderers: note splits, the MIDI schedule,
speech clip joining, excerpt quotas and licence lookup."""

import importlib.util
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

_spec = importlib.util.spec_from_file_location("real_audio", Path(__file__).parent.parent / "bench" / "real_audio.py")
ra = sys.modules["real_audio"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(ra)


def test_note_plan_holds_out_a_soundfont_and_whole_programs():
    notes = ra.plan_all_notes(per_family=20, test_soundfont="csound", seed=3)
    assert len({n["note_str"] for n in notes}) == len(notes) == 3 * 11 * 20
    assert {n["split"] for n in notes if n["soundfont"] == "csound"} == {"test"}
    programs = defaultdict(set)
    for n in notes:
        programs[n["split"]].add(n["program"])
        _, _, low, high = ra.GM_PROGRAMS[n["program"]]
        assert low <= n["pitch"] <= high and n["velocity"] in ra.VELOCITIES
    assert not programs["train"] & programs["valid"]
    for split in ("train", "valid", "test"):
        assert {n["instrument_family_str"] for n in notes if n["split"] == split} == set(ra.FAMILIES)
    assert notes == ra.plan_all_notes(per_family=20, test_soundfont="csound", seed=3)


def read_midi_events(data: bytes) -> list[tuple[int, bytes]]:
    """(tick, message) of a format-0 file whose messages are all 2 or 3 bytes or meta events."""
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    track, pos, tick, events = data[22:22 + struct.unpack(">I", data[18:22])[0]], 0, 0, []
    while pos < len(track):
        delta = 0
        while True:
            delta, pos = (delta << 7) | (track[pos] & 0x7F), pos + 1
            if track[pos - 1] < 0x80:
                break
        tick += delta
        size = 3 + track[pos + 2] if track[pos] == 0xFF else (2 if track[pos] >> 4 == 0xC else 3)
        events.append((tick, track[pos:pos + size]))
        pos += size
    return events


def test_midi_plays_each_note_in_its_slot():
    notes = ra.plan_all_notes(per_family=2, test_soundfont="csound", seed=0)[:30]
    events = read_midi_events(ra.notes_midi(notes))
    note_ons = [(tick, msg) for tick, msg in events if msg[0] == 0x90]
    programs = [msg[1] for _, msg in events if msg[0] == 0xC0]
    assert [msg[1:] for _, msg in note_ons] == [bytes([n["pitch"], n["velocity"]]) for n in notes]
    assert [tick for tick, _ in note_ons] == [round(i * ra.NOTE_SLOT * 960) for i in range(len(notes))]
    assert programs == [n["program"] for n in notes]


def test_speech_clips_keep_every_line_once_in_order(tmp_path):
    lines = []
    for level, seconds in (("a", [3, 4, 5, 2]), ("b", [1, 2]), ("c", [12, 3]), ("d", [7])):
        for i, s in enumerate(seconds):
            path = tmp_path / f"{level}-m-{i}.wav"
            sf.write(path, np.zeros(int(s * 1000), dtype=np.float32), 1000)
            lines.append(ra.Line("cs", level, path.stem, str(path)))
    clips = ra.speech_clips(lines[::-1], target_s=10, min_s=6)
    assert [line.name for clip in clips for line in clip] == [line.name for line in lines]
    assert [[line.name for line in clip] for clip in clips] == [
        ["a-m-0", "a-m-1", "a-m-2"], ["a-m-3", "b-m-0", "b-m-1", "c-m-0"], ["c-m-1", "d-m-0"]]


def test_water_fill_is_even_within_capacities():
    assert ra.water_fill(10, {"a": 2, "b": 100, "c": 100}) == {"a": 2, "b": 4, "c": 4}
    assert ra.water_fill(50, {"a": 2, "b": 3}) == {"a": 2, "b": 3}


def test_dep5_licence_is_the_last_stanza_naming_the_file():
    text = ("Format: x\n\nFiles: *\nLicense: GPL-2+\n\nFiles:\n base/music/song.ogg\n other.ogg\nLicense: CC-BY-3.0\n"
            "\nFiles: debian/*\nLicense: GPL-3+\n\nFiles: tools/*\nLicense: MIT\n")
    assert ra.dep5_licence(text, "song.ogg") == "CC-BY-3.0"
    assert ra.dep5_licence(text, "track.mod") == "GPL-2+"
