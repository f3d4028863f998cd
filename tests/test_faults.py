"""Specifications of the store and the commands under real-world faults: a second writer, damaged shards, the umask,
bad audio, a re-run that contradicts the card, user errors, a damaged checkpoint and a killed launcher."""

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
from audio_trees import tone, write_empty_wav, write_folder_tree, write_nan_wav, write_too_short

from mega_audio.cli import main
from mega_audio.data.manifest import read_manifest, write_manifest
from mega_audio.data.recipes import build_manifest
from mega_audio.data.store import TokenStore, list_shards
from mega_audio.data.tokenize import TokenizeConfig, tokenize

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
ENV.pop("MEGA_AUDIO_DEBUG", None)


def config(tmp_path, **kw):
    base = dict(dataset="folder", data_root=str(tmp_path / "audio"), out=str(tmp_path / "store"), codec="bestrq",
                shard_size=4, batch_size=4, num_workers=0, device="cpu")
    return TokenizeConfig(**{**base, **kw})


def cli_args(tmp_path, *extra):
    return ["tokenize", "--dataset", "folder", "--data-root", str(tmp_path / "audio"), "--out", str(tmp_path / "store"),
            "--codec", "bestrq", "--num-workers", "0", "--device", "cpu", "--shard-size", "4", *extra]


def mega(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mega_audio.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=300, **kw)


def pretrain(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train" / "pretrain.py"), *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(returncode: int, stderr: str, *words: str) -> str:
    """Exit code 2, no traceback, exactly one `error:` line (the last), naming `words`."""
    lines = stderr.strip().splitlines()
    assert returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], stderr[-2000:]
    assert all(w in lines[-1] for w in words), lines[-1]
    return lines[-1]


def stored_ids(store) -> Counter:
    """Clip ids as the shards really hold them (read back, not taken from the indexes)."""
    return Counter(meta["id"] for _, meta in TokenStore(store).iter_samples())


def manifest_ids(store) -> set[str]:
    return {c.id for c in read_manifest(Path(store) / "manifest.jsonl")}


# ---------------------------------------------------------------------------------------------
# 1. two writers on one slice


def test_a_second_writer_of_a_slice_stops_at_once_naming_the_holder(tmp_path):
    write_folder_tree(tmp_path / "audio", labels=("a", "b", "c"), per_label=10, seconds=0.5)
    args = cli_args(tmp_path, "--batch-size", "1", "--shard-size", "1")
    first = subprocess.Popen([sys.executable, "-m", "mega_audio.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    shards = tmp_path / "store" / "shards"
    deadline = time.time() + 120
    while not list(shards.glob("*.json")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # the first writer is mid-way through its slice, and holds it
    try:
        assert len(list_shards(tmp_path / "store")) < 30, "the first writer finished before it could be paused"
        second = mega(*args)
        assert_one_line_error(second.returncode, second.stderr, f"pid {first.pid}", "slice 0 of 1")
        with pytest.raises(ValueError, match="another world size"):  # slice 1 of 2 overlaps slice 0 of 1
            tokenize(config(tmp_path, rank=1, world_size=2))
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0
    assert stored_ids(tmp_path / "store") == Counter(manifest_ids(tmp_path / "store"))
    assert TokenStore(tmp_path / "store").card["complete"]


# ---------------------------------------------------------------------------------------------
# 2. damaged shards


def test_a_truncated_shard_is_named_by_readers_and_verify_repair_lets_tokenize_recreate_its_clips(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=4, seconds=0.5)
    store = tmp_path / "store"
    tokenize(config(tmp_path))
    cut, mid, flipped = list_shards(store)[:3]
    data = Path(cut.path).read_bytes()
    Path(cut.path).write_bytes(data[: len(data) // 1024 * 512])  # at a tar block boundary, as a failed copy leaves it
    data = Path(mid.path).read_bytes()
    Path(mid.path).write_bytes(data[: len(data) // 2 + 77])  # mid-member
    data = bytearray(Path(flipped.path).read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 3: len(data) // 3 + 64])
    Path(flipped.path).write_bytes(bytes(data))

    for shard in (cut, mid):
        with pytest.raises(ValueError, match=f"{shard.name}.*verify") as error:
            list(TokenStore(store).iter_samples(shards=[shard]))
        assert "\n" not in str(error.value)
    report = mega("verify", str(store))
    assert report.returncode == 1 and all(f"damaged: {s.name}" in report.stdout for s in (cut, mid, flipped))
    assert "checksum" in report.stdout
    repaired = mega("verify", str(store), "--repair")
    moved = {p.name for p in (store / "quarantine").rglob("*")}
    assert {cut.name, mid.name, flipped.name} <= moved and "tokenize" in repaired.stdout.splitlines()[-1]
    assert not TokenStore(store).card["complete"]

    tokenize(config(tmp_path))
    assert stored_ids(store) == Counter(manifest_ids(store))
    assert mega("verify", str(store)).returncode == 0 and TokenStore(store).card["complete"]


def test_pretraining_on_a_truncated_shard_stops_with_one_line_naming_it(small_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    shard = list_shards(store, "train")[0]
    Path(shard.path).write_bytes(Path(shard.path).read_bytes()[:1024])
    result = pretrain("--cpu", "--data", str(store), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                      "--batch-size", "2", "--num-workers", "0", "--eval-every", "-1")
    assert_one_line_error(result.returncode, result.stderr, shard.name, "verify")


# ---------------------------------------------------------------------------------------------
# 3. the umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_store_and_checkpoint_files_respect_the_umask(tmp_path, umask, mode):
    from mega_audio.models.config import model_config
    from mega_audio.models.mega import MegaAudioFormer

    write_folder_tree(tmp_path / "audio", per_label=1, seconds=0.5)
    previous = os.umask(umask)
    try:
        tokenize(config(tmp_path))
        MegaAudioFormer(model_config("tiny", 2, 1024)).save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    files = [p for p in [*(tmp_path / "store").rglob("*"), *(tmp_path / "model").iterdir()] if p.is_file()]
    names = {p.name for p in files}
    assert {"dataset.json", "manifest.jsonl", "model.safetensors", "config.json"} <= names
    assert any(n.endswith(".tar") for n in names) and any(n.endswith(".json") and "-r000-" in n for n in names)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}


# ---------------------------------------------------------------------------------------------
# 4. bad audio: distinct reasons, and --retry-failed


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind of bad input (before `break_after_manifest` breaks two more): kind -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "cut.wav"
    sf.write(truncated, tone(2.0, 16000)[:, 0], 16000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[: 44 + 2 * 8000])  # header says 2.00 s, data holds 0.50 s
    flac = folder / "garbled.flac"
    sf.write(flac, tone(2.0, 16000)[:, 0], 16000)
    data = bytearray(flac.read_bytes())
    data[len(data) // 2: len(data) // 2 + 3000] = b"\x55" * 3000
    flac.write_bytes(bytes(data))
    (folder / "notes.wav").write_text("these are my field notes, not audio\n" * 20)
    (folder / "zero.wav").write_bytes(b"")
    (folder / "gone.wav").symlink_to(folder / "cut.wav")
    sf.write(folder / "vanishes.wav", tone(1.0, 16000)[:, 0], 16000)
    return {"truncated": truncated, "decoder error": flac, "not audio": folder / "notes.wav",
            "empty file": folder / "zero.wav", "empty audio": write_empty_wav(folder / "silent.wav"),
            "too short": write_too_short(folder / "blip.wav"), "non-finite": write_nan_wav(folder / "nan.wav"),
            "broken symlink": folder / "gone.wav", "missing": folder / "vanishes.wav"}


def test_bad_inputs_fail_with_distinct_reasons_and_retry_failed_picks_up_a_fixed_file(tmp_path):
    write_folder_tree(tmp_path / "audio", labels=("cat", "dog"), per_label=2, seconds=0.5)
    bad = write_bad_files(tmp_path / "audio" / "cat")
    clips, _ = build_manifest("folder", tmp_path / "audio")
    write_manifest(tmp_path / "store" / "manifest.jsonl", clips)
    bad["broken symlink"].unlink()
    bad["broken symlink"].symlink_to(tmp_path / "nowhere.wav")  # dangling, after the manifest listed it
    bad["missing"].unlink()  # listed, then deleted

    first = tokenize(config(tmp_path))
    reasons = {Path(r["path"]).name: r["reason"] for r in map(json.loads, (tmp_path / "store" / "failures-r000.jsonl")
                                                               .read_text().splitlines())}
    by_kind = {kind: reasons.get(path.name) for kind, path in bad.items()}
    assert by_kind == {
        "truncated": "truncated (header 2.00 s, data 0.50 s)",
        "decoder error": by_kind["decoder error"], "not audio": "not audio / unknown format",
        "empty file": "empty: 0 bytes", "empty audio": "empty: 0 samples", "too short": by_kind["too short"],
        "non-finite": "non-finite samples (NaN/Inf)", "broken symlink": f"broken symlink (-> {tmp_path / 'nowhere.wav'})",
        "missing": "missing"}
    assert by_kind["decoder error"].startswith("decoder error: ") and by_kind["too short"].startswith("too short: ")
    assert first["failed"] == len(bad) and TokenStore(tmp_path / "store").card["complete"]

    sf.write(bad["truncated"], tone(2.0, 16000)[:, 0], 16000)  # the file is fixed
    retry = mega(*cli_args(tmp_path, "--retry-failed"))
    assert retry.returncode == 0, retry.stderr[-2000:]
    ids = stored_ids(tmp_path / "store")
    assert "cat_cut" in ids and set(ids.values()) == {1}
    failures = [json.loads(line) for line in (tmp_path / "store" / "failures-r000.jsonl").read_text().splitlines()]
    assert sorted(Path(f["path"]).name for f in failures) == sorted(p.name for k, p in bad.items() if k != "truncated")
    card = TokenStore(tmp_path / "store").card
    assert card["complete"] and card["failed"] == len(bad) - 1


def without_root_file_access() -> None:
    """In a child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so even root gets EACCES."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        assert libc.prctl(24, capability, 0, 0, 0) == 0  # PR_CAPBSET_DROP


def test_an_unreadable_file_is_logged_as_permission_denied(tmp_path):
    locked = tmp_path / "locked.wav"
    sf.write(locked, tone(0.5, 16000)[:, 0], 16000)
    locked.chmod(0)
    probe = ("import sys; from mega_audio.data.audio import load_audio, AudioError\n"
             "try: load_audio(sys.argv[1])\nexcept AudioError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", probe, str(locked)], env=ENV, capture_output=True, text=True,
                         preexec_fn=without_root_file_access if os.geteuid() == 0 else None, timeout=60)
    assert out.stdout.strip() == "permission denied", out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# 5. the card cannot lie


def test_a_rerun_with_another_format_dataset_or_data_root_is_refused(tmp_path):
    write_folder_tree(tmp_path / "audio", per_label=1, seconds=0.5)
    tokenize(config(tmp_path))
    card_before = (tmp_path / "store" / "dataset.json").read_bytes()
    shutil.copytree(tmp_path / "audio", tmp_path / "other")
    for change, flag in ((dict(format="zarr"), "--format wds"), (dict(dataset="gtzan"), "--dataset folder"),
                         (dict(data_root=str(tmp_path / "other")), "--data-root")):
        with pytest.raises(ValueError, match=flag):
            tokenize(config(tmp_path, **change))
    assert (tmp_path / "store" / "dataset.json").read_bytes() == card_before
    assert {s.format for s in list_shards(tmp_path / "store")} == {"wds"}


# ---------------------------------------------------------------------------------------------
# 6. user errors are one line


USER_ERRORS = {  # argv (STORE = a real store, AUDIO = its audio, TMP = a fresh folder) -> words the line must hold
    "tokenize with a missing data root": (["tokenize", "--data-root", "TMP/nowhere", "--out", "TMP/out"], "nowhere"),
    "tokenize an unknown dataset": (["tokenize", "--dataset", "nosuch", "--data-root", "TMP", "--out", "TMP/out"],
                                    "nosuch"),
    "tokenize at 7 kbps": (["tokenize", "--bitrate", "7", "--data-root", "AUDIO", "--out", "TMP/out"], "bitrate 7"),
    "tokenize --shard-size 0": (["tokenize", "--shard-size", "0", "--out", "TMP/out"], "--shard-size"),
    "tokenize --nproc 0": (["tokenize", "--nproc", "0", "--out", "TMP/out"], "--nproc"),
    "inspect a missing store": (["inspect", "TMP/nostore"], "nostore"),
    "verify a missing store": (["verify", "TMP/nostore"], "nostore"),
    "pretrain --max-steps -5": (["pretrain", "--data", "STORE", "--max-steps", "-5"], "--max-steps"),
    "pretrain --max-steps 0": (["pretrain", "--data", "STORE", "--max-steps", "0"], "--max-steps"),
    "pretrain --batch-size 0": (["pretrain", "--data", "STORE", "--batch-size", "0"], "--batch-size"),
    "pretrain --mask-ratio 1.5": (["pretrain", "--data", "STORE", "--mask-ratio", "1.5"], "--mask-ratio"),
    "finetune --epochs -1": (["finetune", "--data", "STORE", "--scratch", "--epochs", "-1"], "--epochs"),
    "finetune --batch-size 0": (["finetune", "--data", "STORE", "--scratch", "--batch-size", "0"], "--batch-size"),
    "finetune a missing --init": (["finetune", "--data", "STORE", "--init", "TMP/noinit", "--cpu"], "noinit"),
    "finetune the wrong task": (["finetune", "--task", "gtzan", "--data", "STORE", "--scratch", "--cpu"], "gtzan"),
    "evaluate a missing checkpoint": (["evaluate", "--checkpoint", "TMP/nockpt", "--data", "STORE"], "nockpt"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_line_with_exit_code_2_and_leave_no_store(case, small_store, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("MEGA_AUDIO_DEBUG", "0")  # restored after the test: --debug below sets it
    argv, words = USER_ERRORS[case]
    argv = [a.replace("STORE", str(small_store)).replace("AUDIO", str(small_store.parent / "audio"))
            .replace("TMP", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert_one_line_error(exit_.value.code, capsys.readouterr().err, words)
    assert not (tmp_path / "out").exists()
    with pytest.raises((ValueError, OSError)):
        main([*argv, "--debug"])  # the traceback is there when asked for


def test_the_pretrain_script_reports_a_bad_value_in_one_line(small_store, tmp_path):
    result = pretrain("--data", str(small_store), "--output-dir", str(tmp_path / "run"), "--max-steps", "0")
    assert_one_line_error(result.returncode, result.stderr, "--max-steps")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# 7. a damaged newest checkpoint


def test_resume_skips_a_damaged_newest_checkpoint_naming_it(small_store, tmp_path):
    args = ["--cpu", "--data", str(small_store), "--output-dir", str(tmp_path / "run"), "--batch-size", "2",
            "--max-seconds", "1", "--num-workers", "0", "--eval-every", "-1", "--save-every", "2", "--log-every", "1"]
    first = pretrain(*args, "--max-steps", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    newest = tmp_path / "run" / "checkpoints" / "step_0000004"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resumed = pretrain(*args, "--max-steps", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"skipping damaged checkpoint {newest}: model.safetensors" in resumed.stderr
    assert "resumed from " + str(newest.with_name("step_0000002")) in resumed.stdout + resumed.stderr


# ---------------------------------------------------------------------------------------------
# 8. a killed launcher


def test_killing_the_nproc_launcher_kills_its_ranks_and_their_readers(tmp_path):
    write_folder_tree(tmp_path / "audio", labels=tuple(f"c{i}" for i in range(4)), per_label=16, seconds=2.0)
    args = cli_args(tmp_path, "--nproc", "2", "--batch-size", "1", "--shard-size", "1", "--num-workers", "1")
    launcher = subprocess.Popen([sys.executable, "-m", "mega_audio.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline, frozen = time.time() + 120, {}
    while time.time() < deadline and launcher.poll() is None and len(frozen) < 2:
        try:
            for rank in psutil.Process(launcher.pid).children():
                if rank.pid not in frozen and rank.children():  # its reader is up: it is mid-slice
                    frozen[rank.pid] = [rank, *rank.children(recursive=True)]
                    for p in frozen[rank.pid]:
                        p.suspend()  # frozen there, so the test does not depend on how fast each rank is
        except psutil.NoSuchProcess:  # one ended while we looked (the assert below says if it was too soon)
            pass
        time.sleep(0.002)
    descendants = [p for group in frozen.values() for p in group]
    assert len(frozen) == 2, f"the launcher (exit {launcher.poll()}) did not start 2 ranks with readers"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    for p in descendants:
        p.resume()
    psutil.wait_procs(descendants, timeout=60)
    assert not [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # the ranks died with the launcher instead of finishing the store on their own
    assert not TokenStore(tmp_path / "store").card["complete"]
