"""Manifest builders on small real audio trees: ids, splits, labels, durations, reports, determinism."""

from pathlib import Path

import pytest
from audio_trees import (
    audioset_classes,
    write_audioset_tree,
    write_folder_tree,
    write_gtzan_tree,
    write_hf_dataset,
    write_m4a,
    write_music_speech_tree,
    write_nsynth_tree,
    write_tone,
)

from mega_audio.data.manifest import (
    Clip,
    ManifestError,
    read_manifest,
    split_counts,
    stratified_split,
    write_manifest,
)
from mega_audio.data.recipes import RECIPES, build_manifest

WRITERS = {"gtzan": write_gtzan_tree, "nsynth": write_nsynth_tree, "music_speech": write_music_speech_tree,
           "audioset": write_audioset_tree, "folder": write_folder_tree, "hf": write_hf_dataset}


def by_id(clips):
    return {c.id: c for c in clips}


def by_path(clips):
    return {Path(c.path): c for c in clips}


def assert_matches_tree(clips, tree):
    """Every written file is in the manifest once, with its labels, fixed split and header duration."""
    found = by_path(clips)
    for f in tree.files:
        clip = found[f.path.resolve()]
        assert clip.labels == f.labels
        assert clip.duration == pytest.approx(f.seconds, abs=1e-6)
        if f.split is not None:
            assert clip.split == f.split


@pytest.mark.parametrize("layout, ext", [("genres", ".wav"), ("kaggle", ".flac"), ("flat", ".au")])
def test_gtzan_uses_the_filtered_split_in_every_layout_and_counts_listed_but_missing_files(tmp_path, layout, ext):
    tree = write_gtzan_tree(tmp_path, layout=layout, ext=ext)
    clips, report = build_manifest("gtzan", tmp_path)

    assert_matches_tree(clips, tree)
    assert {c.id for c in clips} == {f.key.replace(".", "_") for f in tree.files}  # blues.00029 -> blues_00029
    assert {c.split for c in clips} == {"train", "valid", "test"}
    assert report.missing == 1000 - len(tree.files) == len(tree.missing)  # GTZAN has 1,000 clips, 930 in the filter
    assert set(report.missing_examples) <= set(tree.missing) and len(report.missing_examples) == 5
    assert f"{report.missing} listed but missing" in report.summary()
    assert report.labels[0] == "blues" and len(report.labels) == 10


def test_gtzan_lists_the_corrupt_jazz_00054_with_no_duration_and_reports_its_header(tmp_path):
    tree = write_gtzan_tree(tmp_path, genres=("jazz",), corrupt=("jazz.00054",))
    clips, report = build_manifest("gtzan", tmp_path)

    corrupt = by_id(clips)["jazz_00054"]
    assert corrupt.split == "train" and corrupt.labels == ["jazz"] and corrupt.duration is None
    assert Path(corrupt.path) == tree.faulty["jazz.00054"].resolve()
    assert report.unreadable == 1 and report.unreadable_examples == ["jazz.00054.wav"]
    assert len(clips) == len(tree.files) + 1


def test_gtzan_keeps_the_clips_the_filter_leaves_out_in_an_excluded_split_and_ignores_other_files(tmp_path):
    tree = write_gtzan_tree(tmp_path, genres=("disco", "jazz"), excluded=2)
    not_gtzan = write_tone(tmp_path / "genres" / "disco" / "disco.00100.wav")  # no GTZAN clip has this number
    clips, report = build_manifest("gtzan", tmp_path)

    assert_matches_tree(clips, tree)
    excluded = {c.id for c in clips if c.split == "excluded"}
    assert excluded == {"disco_00038", "disco_00050", "jazz_00033", "jazz_00034"}  # in no manifests/gtzan/*.txt
    assert str(not_gtzan.path.resolve()) not in {c.path for c in clips}
    assert len(clips) == len(tree.files) == 2 * (3 + 2) and report.missing == 1000 - 10


def test_nsynth_keeps_official_splits_family_labels_and_pitch(tmp_path):
    tree = write_nsynth_tree(tmp_path, missing=1)
    clips, report = build_manifest("nsynth", tmp_path)

    assert_matches_tree(clips, tree)
    assert {c.id for c in clips} == {f.key for f in tree.files}  # note_str is already a clean key
    for f in tree.files:
        assert by_id(clips)[f.key].extra["pitch"] == f.extra["pitch"]
        assert by_id(clips)[f.key].extra["velocity"] == f.extra["velocity"]
    assert report.splits == {"train": 3, "valid": 3, "test": 3}
    assert report.missing == 3 and report.missing_examples == tree.missing
    assert len(report.labels) == 11


def test_nsynth_root_may_be_a_single_split_folder(tmp_path):
    tree = write_nsynth_tree(tmp_path)
    clips, _ = build_manifest("nsynth", tmp_path / "nsynth-valid")
    assert {c.split for c in clips} == {"valid"}
    assert len(clips) == sum(f.split == "valid" for f in tree.files)


@pytest.mark.parametrize("layout", ["nested", "flat", "short"])
def test_music_speech_split_is_stratified_80_10_10_in_every_layout(tmp_path, layout):
    tree = write_music_speech_tree(tmp_path, per_class=10, layout=layout)
    clips, report = build_manifest("music_speech", tmp_path)

    assert_matches_tree(clips, tree)
    for label in ("music", "speech"):
        splits = [c.split for c in clips if c.labels == [label]]
        assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (8, 1, 1)
    assert report.splits == {"train": 16, "valid": 2, "test": 2}
    assert "speech_talk_03" in by_id(clips)  # speech_wav/talk.03.wav: dots become underscores


def test_music_speech_split_depends_on_the_seed_only(tmp_path):
    write_music_speech_tree(tmp_path, per_class=10)
    splits = lambda seed: {c.id: c.split for c in build_manifest("music_speech", tmp_path, seed=seed)[0]}  # noqa: E731
    assert splits(0) == splits(0)
    assert splits(0) != splits(1)


def test_audioset_parses_quoted_multi_mid_labels_and_both_filename_conventions(tmp_path):
    tree = write_audioset_tree(tmp_path, subsets=("balanced_train", "unbalanced_train", "eval"), per_subset=4)
    clips, report = build_manifest("audioset", tmp_path)

    assert_matches_tree(clips, tree)  # labels are display names, in CSV order
    assert {c.id for c in clips} == {f.key for f in tree.files}  # YTIDs, from <YTID>.ext and Y<YTID>_s_e.ext alike
    assert any(Path(c.path).name.startswith("Y" + c.id + "_") for c in clips)
    assert any(Path(c.path).stem == c.id for c in clips)
    assert any(c.id.startswith("--") for c in clips)
    multi = [c for c in clips if len(c.labels) > 1]
    assert multi and any("," in label for c in multi for label in c.labels)  # "Male speech, man speaking"
    for f in tree.files:
        assert by_id(clips)[f.key].extra == f.extra  # mids, start, end
    assert report.splits == {"balanced_train": 4, "unbalanced_train": 4, "eval": 4}
    assert report.missing == 3 and report.missing_examples == tree.missing
    assert report.labels == [name for _, name in audioset_classes()]


def test_audioset_subsets_option_selects_csvs_and_names_missing_ones(tmp_path):
    write_audioset_tree(tmp_path, subsets=("balanced_train", "eval"))
    clips, _ = build_manifest("audioset", tmp_path, subsets="eval")
    assert {c.split for c in clips} == {"eval"}
    with pytest.raises(ManifestError, match="unbalanced_train_segments.csv"):
        build_manifest("audioset", tmp_path, subsets=["unbalanced_train"])


def test_folder_tree_reads_durations_of_wav_flac_ogg_at_every_rate_mono_and_stereo(tmp_path):
    tree = write_folder_tree(tmp_path, per_label=6, seconds=0.75)
    clips, report = build_manifest("folder", tmp_path)

    assert_matches_tree(clips, tree)
    assert {(f.path.suffix, f.sample_rate, f.channels) for f in tree.files} >= {
        (".wav", 16000, 1), (".flac", 22050, 2), (".ogg", 44100, 1), (".wav", 44100, 2)}
    assert report.labels == ["bird", "cat", "dog"] and report.unreadable == 0
    for label in report.labels:
        assert {c.split for c in clips if c.labels == [label]} == {"train", "valid", "test"}
    assert "cat_takes_cat1" in by_id(clips) and "dog_dog_take_2" in by_id(clips)  # subfolder and dotted names


def test_folder_split_fractions_are_configurable(tmp_path):
    write_folder_tree(tmp_path, per_label=10)
    clips, report = build_manifest("folder", tmp_path, fractions="0.6,0.2,0.2")
    assert report.splits == {"train": 18, "valid": 6, "test": 6}
    with pytest.raises(ManifestError, match="summing to 1"):
        build_manifest("folder", tmp_path, fractions=(0.5, 0.1, 0.1))


def test_report_counts_unreadable_headers_and_keeps_broken_files_listed(tmp_path):
    tree = write_folder_tree(tmp_path, faulty=True)
    clips, report = build_manifest("folder", tmp_path)
    found = by_path(clips)

    assert found[tree.faulty["corrupt"].resolve()].duration is None
    assert found[tree.faulty["empty"].resolve()].duration == 0.0  # readable header; the tokenizer rejects it
    assert found[tree.faulty["nan"].resolve()].duration == pytest.approx(1.0)
    assert report.unreadable == 1 and report.unreadable_examples == ["broken_corrupt.wav"]
    assert "1 unreadable header" in report.summary()


def test_m4a_duration_comes_from_the_container_header(tmp_path):
    pytest.importorskip("av")
    write_folder_tree(tmp_path, labels=("music",), per_label=3)
    m4a = write_m4a(tmp_path / "music" / "youtube.m4a", seconds=1.0)
    clips, report = build_manifest("folder", tmp_path)
    assert by_path(clips)[m4a.resolve()].duration == pytest.approx(1.0, abs=0.05)  # AAC adds a frame of padding
    assert report.unreadable == 0


def test_split_counts_give_every_class_every_split_when_it_has_enough_files():
    for n in range(3, 70):
        counts = split_counts(n, (0.8, 0.1, 0.1))
        assert sum(counts) == n and min(counts) >= 1
        assert abs(counts[0] - 0.8 * n) <= 2
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]
    assert split_counts(64, (0.8, 0.1, 0.1)) == [51, 7, 6]


def test_stratified_split_is_seeded_and_a_class_keeps_its_split_when_others_change():
    keys = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)]
    labels = ["a"] * 10 + ["b"] * 5
    split = stratified_split(keys, labels, seed=3)
    assert split == stratified_split(list(reversed(keys)), list(reversed(labels)), seed=3)  # input order is irrelevant
    assert {split[k] for k in keys if k.startswith("b")} == {"train", "valid", "test"}
    only_a = stratified_split(keys[:10], labels[:10], seed=3)
    assert only_a == {k: split[k] for k in keys[:10]}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_ids_have_no_dots_are_unique_and_manifests_are_byte_identical_across_builds(tmp_path, dataset):
    WRITERS[dataset](tmp_path / "data")
    first, _ = build_manifest(dataset, tmp_path / "data")
    second, _ = build_manifest(dataset, tmp_path / "data")
    write_manifest(tmp_path / "a.jsonl", first)
    write_manifest(tmp_path / "b.jsonl", second)

    assert all("." not in c.id for c in first)
    assert len({c.id for c in first}) == len(first)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert [c.to_dict() for c in read_manifest(tmp_path / "a.jsonl")] == [c.to_dict() for c in first]
    assert not list(tmp_path.glob("*.tmp"))


def test_clashing_ids_are_made_unique(tmp_path):
    write_folder_tree(tmp_path, per_label=3)
    write_tone(tmp_path / "cat" / "cat0.flac")  # cat/cat0.wav exists too: both map to cat_cat0
    clips, report = build_manifest("folder", tmp_path)
    ids = [c.id for c in clips if c.id.startswith("cat_cat0")]
    assert sorted(ids) == ["cat_cat0", "cat_cat0-2"]
    assert "renamed" in report.summary()


def test_clip_round_trips_through_dict_and_rejects_dotted_ids():
    clip = Clip("x_1", "/a/x.1.wav", "train", ["Speech", "Male speech, man speaking"], 10.0, {"mids": ["/m/09x0r"]})
    assert Clip.from_dict(clip.to_dict()) == clip
    with pytest.raises(ValueError, match="dot"):
        Clip("x.1", "/a/x.1.wav", "train", [], None)


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ManifestError, match="choose one of"):
        build_manifest("librispeech", tmp_path)
    with pytest.raises(ManifestError, match="genres"):
        build_manifest("gtzan", tmp_path)
    write_folder_tree(tmp_path)
    with pytest.raises(ManifestError, match="fractions"):
        build_manifest("folder", tmp_path, subsets="eval")


def test_a_manifest_line_that_is_not_a_clip_names_its_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "path": "/a.wav", "split": "train", "labels": [], "duration": 1.0}\n{"id": "b"}\n')
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(path)
