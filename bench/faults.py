"""Torture run: bad audio, SIGKILLs, racing writers, damaged shards and pre-training kills against real stores and the
real commands, and one table of what went in and what came out. The goal row reads 0 duplicated / 0 lost / 0 wrong
results / 0 tracebacks. bestrq codec and short clips, so it runs in a few minutes on 2 CPU cores."""

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from mega_audio.data.manifest import read_manifest  # noqa: E402
from mega_audio.data.store import ShardError, TokenStore, list_shards, read_failures  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
ENV.pop("MEGA_AUDIO_DEBUG", None)
SR = 16_000
# kind of bad input -> the failure reason it must get (a prefix)
BAD_KINDS = {
    "missing": "missing", "broken symlink": "broken symlink", "permission denied": "permission denied",
    "text as .wav": "not audio / unknown format", "random bytes as .flac": "not audio / unknown format",
    "zero-byte file": "empty: 0 bytes", "truncated WAV": "truncated (header 2.00 s, data 0.50 s)",
    "truncated FLAC": "decoder error", "garbled FLAC": "decoder error", "empty WAV": "empty: 0 samples",
    "too short": "too short", "NaN samples": "non-finite samples", "Inf samples": "non-finite samples",
}
TRACEBACK = "Traceback (most recent call last)"


def no_root_file_access() -> None:
    """Root reads every file; without these two capabilities it gets EACCES like any user (for `permission denied`)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP


class Commands:
    """Runs the real commands (stdout to LOG.out, stderr to LOG.err); keeps every stderr to count the tracebacks a user
    would have seen."""

    def __init__(self, logs: Path):
        self.logs, self.stderrs = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        out, err = open(self.logs / f"{name}.out", "w"), open(self.logs / f"{name}.err", "w")
        proc = subprocess.Popen(argv, env=ENV, stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=no_root_file_access)
        proc.name = name
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 600) -> int:
        code = proc.wait(timeout=timeout)
        self.stderrs.append((self.logs / f"{proc.name}.err").read_text())
        return code

    def run(self, argv: list[str], name: str) -> int:
        return self.finish(self.start(argv, name))

    def stdout(self, name: str) -> str:
        return (self.logs / f"{name}.out").read_text()

    def tracebacks(self, since: int = 0) -> int:
        return sum(err.count(TRACEBACK) for err in self.stderrs[since:])


def tokenize_argv(audio: Path, store: Path, nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "mega_audio.cli", "tokenize", "--dataset", "folder", "--data-root", str(audio),
            "--out", str(store), "--codec", "bestrq", "--device", "cpu", "--num-workers", "1", "--batch-size", "2",
            "--shard-size", "4", "--nproc", str(nproc)]


# ---------------------------------------------------------------------------------------------
# the audio tree


def signal_clip(seconds: float, label: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 110 * (label + 2) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write_tree(root: Path, n_clips: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    """n_clips files under root/<label>/: two of each bad kind, the rest good. Returns kind -> paths ('good' too);
    `missing` and `broken symlink` are broken later, after the manifest lists them."""
    bad_folder = root / "l0"
    kinds: dict[str, list[Path]] = {kind: [] for kind in BAD_KINDS}
    for kind in BAD_KINDS:
        for i in range(2):
            name = kind.replace(" ", "_").replace(".", "").replace("-", "_")
            path = bad_folder / f"bad_{name}_{i}{'.flac' if 'FLAC' in kind or 'flac' in kind else '.wav'}"
            write_bad(path, kind, rng)
            kinds[kind].append(path)
    good = []
    for i in range(n_clips - 2 * len(BAD_KINDS)):
        label = i % 4
        path = root / f"l{label}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, signal_clip(float(rng.uniform(0.5, 1.5)), label, rng), SR)
        good.append(path)
    kinds["good"] = good
    return kinds


def write_bad(path: Path, kind: str, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clip = signal_clip(2.0, 0, rng)
    if kind in ("missing", "permission denied"):
        sf.write(path, clip, SR)
        if kind == "permission denied":
            path.chmod(0)
    elif kind == "broken symlink":
        target = path.with_name(path.stem + "_target.wav")
        sf.write(target, clip, SR)
        path.symlink_to(target.name)
        os.replace(target, path.parent.parent / target.name)  # the target leaves the tree: the link dangles
    elif kind == "text as .wav":
        path.write_text("not audio at all\n" * 30)
    elif kind == "random bytes as .flac":
        path.write_bytes(rng.bytes(5000))
    elif kind == "zero-byte file":
        path.write_bytes(b"")
    elif kind == "truncated WAV":
        sf.write(path, clip, SR, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[: 44 + 2 * SR // 2])
    elif kind in ("truncated FLAC", "garbled FLAC"):
        sf.write(path, clip, SR)
        data = bytearray(path.read_bytes())
        if kind == "truncated FLAC":
            data = data[: len(data) // 3]
        else:
            data[len(data) // 2: len(data) // 2 + 2000] = b"\x55" * 2000
        path.write_bytes(bytes(data))
    elif kind == "empty WAV":
        sf.write(path, np.zeros(0, np.float32), SR)
    elif kind == "too short":
        sf.write(path, clip[:40], SR)
    elif kind in ("NaN samples", "Inf samples"):
        sf.write(path, np.full(SR, np.nan if kind == "NaN samples" else np.inf, np.float32), SR, subtype="FLOAT")


def build_manifest(cmds: Commands, audio: Path, kinds: dict[str, list[Path]], work: Path) -> None:
    """The manifest is built while every file exists; then `missing` files are deleted (listed, then gone)."""
    code = cmds.run([sys.executable, "-c", "import sys; from mega_audio.data.recipes import build_manifest; "
                     "from mega_audio.data.manifest import write_manifest; "
                     "write_manifest(sys.argv[2], build_manifest('folder', sys.argv[1])[0])", str(audio),
                     str(work / "manifest.jsonl")], "manifest")
    assert code == 0, cmds.stderrs[-1]
    for path in kinds["missing"]:
        path.unlink()


# ---------------------------------------------------------------------------------------------
# checking a store


def check_store(store: Path, kinds: dict[str, list[Path]]) -> dict[str, int]:
    """Read every shard back; compare with the good and bad files; `wrong` counts any clip in the wrong place or with
    the wrong reason, and a card that says complete when it is not (or the reverse)."""
    manifest = {c.path: c.id for c in read_manifest(store / "manifest.jsonl")}
    good = {manifest[str(p)] for p in kinds["good"]}
    bad = {manifest[str(p)]: BAD_KINDS[kind] for kind in BAD_KINDS for p in kinds[kind]}
    counts, unreadable = Counter(), 0
    for shard in list_shards(store):
        try:
            counts.update(meta["id"] for _, meta in TokenStore(store).iter_samples(shards=[shard]))
        except ShardError:
            unreadable += 1
    failures = read_failures(store)
    wrong = unreadable + sum(1 for i in bad if i in counts or not failures.get(i, {}).get("reason", "").startswith(bad[i]))
    wrong += sum(1 for i in good if i in failures)
    complete = set(good) <= set(counts) and max(counts.values(), default=1) == 1
    wrong += TokenStore(store).card.get("complete") != complete
    return {"expected": len(good), "stored": len(set(counts) & good), "duplicated": sum(counts.values()) - len(counts),
            "lost": len(good - set(counts)), "wrong": wrong}


def fresh_store(work: Path, name: str) -> Path:
    """A new store that starts from the shared manifest (which lists the files deleted since)."""
    store = work / "stores" / name
    store.mkdir(parents=True)
    shutil.copy(work / "manifest.jsonl", store / "manifest.jsonl")
    return store


def add(row: dict, counts: dict[str, int]) -> None:
    for k, v in counts.items():
        row[k] = row.get(k, 0) + v


# ---------------------------------------------------------------------------------------------
# the scenarios


def bad_input(cmds: Commands, audio, kinds, work) -> dict:
    store = fresh_store(work, "bad-input")
    code = cmds.run(tokenize_argv(audio, store), "bad-input")
    row = {"scenario": f"bad input: {len(BAD_KINDS)} kinds x 2 in a {sum(map(len, kinds.values()))}-clip tree",
           "faults": 2 * len(BAD_KINDS), "wrong": int(code != 0)}
    add(row, check_store(store, kinds))
    return row


def n_indexes(store: Path) -> int:
    return len(list((store / "shards").glob("*.json")))


def wait_for_progress(store: Path, proc: subprocess.Popen, before: int, timeout: float = 60) -> None:
    """Until the run has written a new shard index (or ended): a kill then lands while it writes."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and n_indexes(store) <= before:
        time.sleep(0.005)


def kills(cmds: Commands, audio, kinds, work, nproc: int, n_kills: int, rng: random.Random) -> dict:
    """n_kills SIGKILLs, each at a random moment after a run made progress, at most 5 per store (a new store when one
    got finished between kills); for --nproc 2 only the launcher is killed (its ranks must die with it). Then the same
    command finishes each store."""
    row = {"scenario": f"SIGKILL of {'1-process' if nproc == 1 else '2-process (launcher only)'} tokenize, then re-run",
           "faults": 0, "wrong": 0, "orphans": 0}
    stores: list[Path] = []
    for attempt in range(4 * n_kills):
        if row["faults"] == n_kills:
            break
        if not stores or attempt % 5 == 0 or store_complete(stores[-1]):
            stores.append(fresh_store(work, f"kill{nproc}-{len(stores)}"))
        store = stores[-1]
        proc = cmds.start(tokenize_argv(audio, store, nproc), f"{store.name}-{attempt}")
        wait_for_progress(store, proc, n_indexes(store))
        time.sleep(rng.uniform(0, 0.3))
        ranks = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None:
            row["faults"] += 1
            if nproc > 1:
                proc.kill()  # the launcher alone
            else:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and its DataLoader workers
        cmds.finish(proc)
        _, alive = psutil.wait_procs(ranks, timeout=30)
        row["orphans"] += len(alive)
        for p in alive:
            p.kill()
    for store in stores:
        row["wrong"] += cmds.run(tokenize_argv(audio, store, nproc), f"{store.name}-final") != 0
        add(row, check_store(store, kinds))
    row["wrong"] += row["orphans"]
    return row


def store_complete(store: Path) -> bool:
    return (store / "dataset.json").exists() and TokenStore(store).card.get("complete", False)


def races(cmds: Commands, audio, kinds, work, n: int, rng: random.Random) -> dict:
    """Two identical commands 0-2 s apart on one store (the second a 2-process run every other time). A loser must stop
    at once with a one-line error; the user then re-runs the command. Nothing may be duplicated or lost."""
    row = {"scenario": "two writers racing on one store, then re-run", "faults": n, "wrong": 0, "refused": 0}
    for r in range(n):
        store = fresh_store(work, f"race-{r}")
        first = cmds.start(tokenize_argv(audio, store), f"race-{r}-a")
        time.sleep(rng.uniform(0, 2))
        second = cmds.start(tokenize_argv(audio, store, 1 + r % 2), f"race-{r}-b")
        codes = [cmds.finish(first), cmds.finish(second)]
        refused = [c for c in codes if c == 2]
        row["refused"] += len(refused)
        if refused:
            row["wrong"] += cmds.run(tokenize_argv(audio, store), f"race-{r}-rerun") != 0
        row["wrong"] += any(c not in (0, 2) for c in codes)
        add(row, check_store(store, kinds))
    return row


def damaged_shards(cmds: Commands, audio, kinds, work, n: int, rng: random.Random) -> dict:
    """Damage n shards of a complete store at random offsets (cut there, or bytes overwritten there). Readers must
    refuse every cut shard naming it, verify must name every damaged one, and verify --repair + the same tokenize
    command must give back the complete store."""
    store = work / "stores" / "damaged"
    shutil.copytree(work / "stores" / "bad-input", store)
    row = {"scenario": "shards damaged at random offsets, verify --repair, re-run", "faults": n, "wrong": 0}
    victims = rng.sample(list_shards(store), n)
    for i, shard in enumerate(victims):
        data = bytearray(Path(shard.path).read_bytes())
        offset = rng.randrange(len(data))
        if i % 2 == 0:
            data = data[:offset]
        else:
            end = min(len(data), offset + rng.randint(16, 256))
            data[offset:end] = bytes(b ^ 0xFF for b in data[offset:end])
        Path(shard.path).write_bytes(bytes(data))
        try:
            clips = sum(1 for _ in TokenStore(store).iter_samples(shards=[shard]))
            row["wrong"] += i % 2 == 0 or clips != shard.n  # a cut shard read without an error is a silent loss
        except ShardError as e:
            row["wrong"] += shard.name not in str(e)
    verify = [sys.executable, "-m", "mega_audio.cli", "verify", str(store)]
    row["wrong"] += cmds.run(verify, "verify") != 1
    row["wrong"] += sum(f"damaged: {s.name}" not in cmds.stdout("verify") for s in victims)
    cmds.run([*verify, "--repair"], "verify-repair")
    row["wrong"] += cmds.run(tokenize_argv(audio, store), "damaged-rerun") != 0
    row["wrong"] += cmds.run(verify, "verify-after") != 0
    add(row, check_store(store, kinds))
    return row


def final_digest(run: Path) -> str | None:
    log = run / "debug" / "rank0.jsonl"
    finals = [json.loads(line) for line in log.read_text().splitlines() if '"final"' in line] if log.exists() else []
    return finals[-1]["weights"] if finals else None


def pretrain_kills(cmds: Commands, work: Path, rng: random.Random, steps: int = 30) -> dict:
    """A reference run, then runs SIGKILLed at a random step (twice) and during a checkpoint write (once), resumed with
    --resume; one resume also meets a damaged newest checkpoint. Each must end with the reference run's exact weights."""
    store = work / "stores" / "bad-input"

    def argv(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "train" / "pretrain.py"), "--cpu", "--data", str(store), "--output-dir",
                str(out), "--max-steps", str(steps), "--save-every", "3", "--batch-size", "4", "--max-seconds", "1",
                "--num-workers", "0", "--eval-every", "-1", "--log-every", "1", "--debug-log", *extra]

    row = {"scenario": "pre-training SIGKILLed (at a random step x2, in a checkpoint write x1), --resume; one resume "
                       "meets a damaged newest checkpoint", "faults": 0, "wrong": 0}
    reference = work / "runs" / "reference"
    row["wrong"] += cmds.run(argv(reference), "pretrain-reference") != 0
    for victim, when in enumerate(("step", "step", "checkpoint write")):
        out = work / "runs" / f"victim{victim}"
        proc = cmds.start(argv(out), f"pretrain-victim{victim}")
        target = rng.randint(10, steps - 4)  # past a few checkpoints: one of them gets damaged below
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            ckpts = out / "checkpoints"
            writing = list(ckpts.glob("step_*.tmp")) if ckpts.exists() else []
            if when == "checkpoint write" and any(int(p.name[5:12]) >= 9 for p in writing):  # a good one exists
                break
            done = (out / "debug" / "rank0.jsonl")
            if when == "step" and done.exists() and done.read_text().count('"step"') >= target:
                break
            time.sleep(0.002)
        landed = proc.poll() is None
        if landed:
            os.killpg(proc.pid, signal.SIGKILL)
        cmds.finish(proc)
        row["faults"] += landed
        if victim == 1:  # also damage the newest checkpoint: the resume must fall back to the one before
            newest = sorted((out / "checkpoints").glob("step_???????"))
            if len(newest) >= 2:
                weights = newest[-1] / "model.safetensors"
                weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
                row["faults"] += 1
        row["wrong"] += cmds.run(argv(out, "--resume"), f"pretrain-resume{victim}") != 0
        row["wrong"] += final_digest(out) is None or final_digest(out) != final_digest(reference)
    return row


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20, help="tokenize SIGKILLs, half 1-process, half 2-process")
    parser.add_argument("--races", type=int, default=5)
    parser.add_argument("--damaged", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep the stores and logs here (default: a temporary folder)")
    parser.add_argument("--out", default=str(HERE / "results" / "faults"))
    args = parser.parse_args()

    rng, np_rng = random.Random(args.seed), np.random.default_rng(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-faults-"))
    audio, cmds, start = work / "audio", Commands(work / "logs"), time.time()
    kinds = write_tree(audio, args.clips, np_rng)
    (work / "stores").mkdir(parents=True, exist_ok=True)
    build_manifest(cmds, audio, kinds, work)
    scenarios = [lambda: bad_input(cmds, audio, kinds, work),
                 lambda: kills(cmds, audio, kinds, work, 1, args.kills // 2, rng),
                 lambda: kills(cmds, audio, kinds, work, 2, args.kills - args.kills // 2, rng),
                 lambda: races(cmds, audio, kinds, work, args.races, rng),
                 lambda: damaged_shards(cmds, audio, kinds, work, args.damaged, rng),
                 lambda: pretrain_kills(cmds, work, rng)]
    rows = []
    for scenario in scenarios:
        since = len(cmds.stderrs)
        rows.append(scenario())
        rows[-1]["tracebacks"] = cmds.tracebacks(since)
        rows[-1]["commands"] = len(cmds.stderrs) - since
        print(rows[-1], flush=True)
    write_results(Path(args.out), rows, len(cmds.stderrs), time.time() - start)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def write_results(out: Path, rows: list[dict], commands: int, wall: float) -> None:
    keys = ("faults", "expected", "stored", "duplicated", "lost", "wrong", "tracebacks")
    total = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    lines = [
        "# Fault torture run",
        "",
        "**What this measures.** `bench/faults.py` injects real faults into real stores and runs the real commands "
        f"({commands} of them, bestrq codec, 0.5-1.5 s clips, 2 CPU cores, {wall:.0f} s): bad audio, SIGKILLs, two "
        "writers on one store, damaged shards and killed pre-training runs. *Clips* are the good clips each store must "
        "end up holding, counted by reading every shard back. *Wrong results* counts: a bad file stored or a good one "
        "failed, a failure logged with the wrong reason, a card whose `complete` is false when the store is complete "
        "(or the reverse), a damaged shard a reader or `verify` does not name, a command that fails where it should "
        "succeed, a rank left running after its launcher was killed, and a resumed pre-training run whose final "
        "weights differ from an uninterrupted run. *Tracebacks* are those on any command's stderr.",
        "",
        "| scenario | faults injected | clips expected | stored | duplicated | lost | wrong results | tracebacks shown |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        clips = [f"{r[k]:,}" if k in r else "-" for k in ("expected", "stored", "duplicated", "lost")]
        lines.append(f"| {r['scenario']} | {r['faults']} | {' | '.join(clips)} | {r['wrong']} | {r['tracebacks']} |")
    lines += [f"| **all** | **{total['faults']}** | {total['expected']:,} | {total['stored']:,} | "
              f"**{total['duplicated']}** | **{total['lost']}** | **{total['wrong']}** | **{total['tracebacks']}** |",
              "", f"Races: {sum(r.get('refused', 0) for r in rows)} writers were refused with a one-line error (the "
              f"user then re-ran the command); ranks left running after a killed launcher: "
              f"{sum(r.get('orphans', 0) for r in rows)}.", "",
              "Reproduce: `python bench/faults.py` (`--work-dir DIR` keeps the stores and every command's stderr)."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "commands": commands, "wall_s": round(wall, 1)},
                                                   indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
