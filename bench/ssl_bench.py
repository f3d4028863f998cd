"""Does pre-training help? The SSL protocol on real audio, run with the project's own commands.

For every seed: pre-train on the unlabelled pool (`train/pretrain.py`), then on every task fine-tune from scratch,
fine-tune from the pre-trained encoder, probe a frozen random-init encoder and the frozen pre-trained encoder
(`mega-audio finetune --freeze`: a small MLP head; three heads per encoder, `--probe-seed`, averaged), read both
frozen encoders linearly (a logistic regression on `mega-audio embed` features), and fit a bag-of-tokens logistic
regression on the same tokens: the floor any learned model must clear. `--finetune-seeds K` scores each seed of the
arms that train the encoder by the mean of K fine-tuning runs. Writes bench/results/ssl.{json,md}, with the paired
gains (each seed's pre-trained model against its own random-init twin or scratch run) the bars are set on.
`--ablate` instead pre-trains one model per recipe variant (one seed) and scores each with one frozen probe and
fine-tuning: bench/results/ssl_ablation.{json,md}.
`--recipe VARIANT` runs the whole protocol with one of those variants instead of the shipped recipe
(bench/results/ssl_<variant>.{json,md}): what a one-seed ablation row looks like over three seeds. `--seeds` other
than 0 1 2 add a suffix (`--seeds 0 1 2 3 4` writes ssl_5seeds.*). `--finetune-colour-db D` fine-tunes every arm
that trains the encoder (scratch included) with `finetune --colour-db D` (ssl_ftcolour<D>.*). `--bitrate`, `--model`,
`--steps`, `--gpu` and `--lr` name their runs and results by what they change (`--bitrate 12` writes ssl_12kbps.*,
`--gpu` ssl_smallmodel_8000steps_cuda.*), so that no cached run of another setting is taken for one of theirs.
`--bag-statistics` fits only the bag of tokens, on richer statistics of the instrument-family codes than their
histogram (bench/results/ssl_bag_statistics[_<rate>kbps].*): how much more than the bag a linear read-out could find.

    make real-audio          # the audio, from Debian packages (see bench/real_audio.py)
    make bench-ssl           # this script (85-105 min on 2 CPU cores: 2,000 pre-training steps per seed)
    python bench/ssl_bench.py --gpu          # on the GPU: the `small` model and 4x the steps (--jobs 6 on one H100)

Every job is a subprocess writing under --work; a job whose output exists is skipped, so an interrupted run
resumes where it stopped (a pre-training from its last checkpoint). --jobs N runs N jobs side by side with cores / N
threads each. Benches may share a --work (say, 3 and 5 seeds of one recipe): a job another one is running is waited
for and reused, never run twice at once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench/common.py, and this checkout's mega_audio (installed or not)

from common import write_json  # noqa: E402

# task -> (folder under --data-root = store name, `mega-audio tokenize --dataset`, `mega-audio finetune --task`,
# fine-tuning epochs: music vs speech is learnt in one or two, and its clips are 10-30 s long)
TASKS = {
    "instrument_family": ("nsynth", "nsynth", "nsynth", 8),
    "music_speech": ("music_speech", "folder", "folder", 3),
    "genre": ("genre", "folder", "folder", 8),
}
ARMS = ("bag_of_tokens", "frozen_random", "frozen_pretrained", "linear_random", "linear_pretrained", "scratch",
        "finetuned", "finetuned_lpft")
ARM_NAMES = {"bag_of_tokens": "bag-of-tokens logistic regression (no model)",
             "frozen_random": "frozen probe, random-init encoder", "frozen_pretrained": "frozen probe, pre-trained encoder",
             "linear_random": "linear probe, random-init encoder (logistic regression, as the bag)",
             "linear_pretrained": "linear probe, pre-trained encoder (logistic regression, as the bag)",
             "scratch": "fine-tuned from scratch", "finetuned": "fine-tuned from the pre-trained encoder",
             "finetuned_lpft": "fine-tuned from the pre-trained encoder, LP-FT (head fitted on frozen features first)"}
PRETRAINED_ARMS = ("frozen_pretrained", "finetuned", "finetuned_lpft")  # the arms that start from the pre-trained model
FROZEN_ARMS = ("frozen_random", "frozen_pretrained")  # `finetune --freeze`: probes on features computed once
ABLATION_ARMS = ("frozen_random", "frozen_pretrained", "scratch", "finetuned")
# A linear probe reads the encoder its frozen probe froze (that run's checkpoint) with the bag's classifier: the same
# read-out on both sides of "above the bag", and no head size or epoch for a small valid split to pick.
LINEAR_ARMS = {"linear_random": "frozen_random", "linear_pretrained": "frozen_pretrained"}
# the C (inverse L2 strength) valid picks from: the bag's, and the linear probes', down to 1e-4 for their hundreds of
# dense standardised features against about a thousand training clips
BAG_CS, LINEAR_CS = (0.01, 0.1, 1), (1e-4, 1e-3, 1e-2, 1e-1, 1)
# run directory of an arm (format with the recipe variant); the random-init arms do not depend on the recipe. The
# frozen probes' "fzs" names their pooling (stats, the default since it replaced the mean, whose runs were "fz"), so
# that no cached run of the old probe is read as one of the new.
TAGS = {"frozen_random": "fzs-random", "scratch": "ft-scratch", "frozen_pretrained": "fzs-{v}", "finetuned": "ft-{v}",
        "finetuned_lpft": "lpft-{v}"}
# how fine-tuning, the frozen probes and the linear probes' embeddings read a clip: 5 s windows (pre-training's crops),
# a long clip's windows averaged
WINDOWS = ("--max-seconds", "5", "--eval-mode", "chunks")
LP_EPOCHS = 4  # LP-FT: epochs of the linear head on frozen features before fine-tuning (finetune --lp-epochs)
# A frozen arm scores each encoder by the mean of this many MLP probes (`finetune --probe-seed`: the head's init and
# batch order). On one encoder, probe seeds alone move the unseen soundfont's accuracy by up to 9 points (their epoch,
# picked on valid, is often 3 or 4 of 60): one probe per encoder made the frozen gain over random init as noisy as
# the encoders themselves. Probe k > 0 is seeded seed + SEED_STRIDE * k; probe 0 is the run one probe made.
# The arms that train the encoder score each seed by the mean of FINETUNE_SEEDS runs in the same way: run k > 0 is
# `finetune --seed seed + SEED_STRIDE * k` (the head's init and batch order; from scratch also the encoder's init)
# from the same pre-trained model. Three runs from one pre-trained encoder scored up to 7.9 points apart on the unseen
# soundfont, so with one run the spread over seeds was as much the runs' as the pre-trained models'.
PROBE_SEEDS, FINETUNE_SEEDS, SEED_STRIDE = 3, 3, 1000
# The comparisons the README's bars are set on, paired by seed (each seed's pre-trained model against its own
# random-init twin, its own scratch runs, or the bag): (name, arm, baseline)
GAINS = (("frozen pre-trained - frozen random-init", "frozen_pretrained", "frozen_random"),
         ("frozen pre-trained - bag of tokens", "frozen_pretrained", "bag_of_tokens"),
         ("linear pre-trained - linear random-init", "linear_pretrained", "linear_random"),
         ("fine-tuned - scratch", "finetuned", "scratch"),
         ("LP-FT - scratch", "finetuned_lpft", "scratch"))

# Pre-training variants for --ablate and --recipe. What a variant leaves as None comes from --bitrate / --model /
# --steps. A variant with its own model size gets its own random-init arms (frozen random, scratch) of that size.
# The ablation rows were measured at 500 steps (a quarter of the protocol's): they pin it, so that their cached runs
# keep meaning what their row says.
@dataclass(frozen=True)
class Variant:
    flags: tuple[str, ...] = ()  # extra train/pretrain.py flags (masking, loss weights)
    kbps: float | None = None  # the stores' bitrate
    model: str | None = None
    steps: int | None = None  # pre-training steps (warm-up: a tenth of them)
    features: str | None = None  # the pool's stored features (`tokenize --store-features`), e.g. for a mel loss
    teacher: str | None = None  # the variant whose pre-trained model of the same seed is `pretrain.py --teacher`
    init_from: str | None = None  # the variant whose pre-trained model of the same seed this one continues


DEFAULT_SEEDS = [0, 1, 2]
ABLATION_STEPS = 500
DEFAULT_VARIANT = "default"  # train/pretrain.py with no masking flags, for --steps: the shipped recipe
TOKEN25 = ("--mask-unit", "token", "--mask-ratio", "0.25")  # the paper's masking: 25% of single tokens
SPAN25 = ("--mask-unit", "span", "--mask-ratio", "0.25")  # 400 ms spans over 25% of the frames


def continued(parent: str, masking: tuple[str, ...] = ()) -> Variant:
    """A second stage: `parent`'s model of the same seed, pre-trained 500 steps more (with `masking`, else the shipped
    spans) with the LR re-warmed over 50 steps, as `train/pretrain.py --init-from` continues a model."""
    return Variant((*masking, "--rewarm-steps", "50"), steps=ABLATION_STEPS, init_from=parent)


VARIANTS = {
    "token25": Variant(TOKEN25, steps=ABLATION_STEPS),  # the paper's recipe
    "token25-2000": Variant(TOKEN25),  # the same at the protocol's steps
    "token50": Variant(("--mask-unit", "token", "--mask-ratio", "0.5"), steps=ABLATION_STEPS),  # a harder token task
    "frame50": Variant(("--mask-unit", "frame", "--mask-ratio", "0.5"), steps=ABLATION_STEPS),
    "span25": Variant(SPAN25, steps=ABLATION_STEPS),
    "span25-12kbps": Variant(SPAN25, kbps=12.0, steps=ABLATION_STEPS),
    "token25-12kbps": Variant(TOKEN25, kbps=12.0, steps=ABLATION_STEPS),  # the paper's masking with 16 codebooks
    "steps500": Variant(steps=ABLATION_STEPS),  # the shipped masking (spans over 50%) at 500 steps: the rows' reference
    "mini": Variant(model="mini", steps=ABLATION_STEPS),  # the same at the next size up (4 x 256 global layers)
    "mini-token25": Variant(TOKEN25, model="mini", steps=ABLATION_STEPS),  # the paper's masking at that size
    "contrastive": Variant(("--contrastive-weight", "1"), steps=ABLATION_STEPS),  # + halves of a clip must match
    "contrastive0.2": Variant(("--contrastive-weight", "0.2"), steps=ABLATION_STEPS),
    # + predict the standardised log-mel of masked frames: a continuous target with the spectral detail 2 codes lose
    "mel": Variant(("--mel-loss-weight", "1"), features="logmel"),
    # every clip re-tokenized under a random EQ each time it is read (from the pool's stored log-mels): many renderings
    "colour": Variant(("--colour-db", "6"), features="logmel"),
    # the two that each lifted the frozen probe on the unseen soundfont, together: single tokens under a random EQ
    "token25-colour": Variant((*TOKEN25, "--colour-db", "6"), features="logmel", steps=ABLATION_STEPS),
    # HuBERT's second iteration: span25 again, plus each masked frame's cluster (k-means, k = 100) of span25's states
    "hubert": Variant((*SPAN25, "--teacher-clusters", "100"), steps=ABLATION_STEPS, teacher="span25"),
    # the same with a stronger teacher: the shipped recipe's model (2,000 steps), the shipped masking, 500 steps more
    "hubert-default": Variant(("--teacher-clusters", "100"), steps=ABLATION_STEPS, teacher=DEFAULT_VARIANT),
    # two stages: the shipped model (spans, 2,000 steps) continued for 500 steps with single tokens
    "default-token500": continued(DEFAULT_VARIANT, TOKEN25),
    # the other order: the single-token model (2,000 steps) continued for 500 steps with the shipped spans
    "token25-2000-span500": continued("token25-2000"),
    # their control: the shipped model continued for 500 steps with its own spans (what 500 more steps alone give)
    "default-span500": continued(DEFAULT_VARIANT),
}
DEFAULT_BITRATE, DEFAULT_MODEL, DEFAULT_STEPS, DEFAULT_LR = 1.5, "tiny", 2000, 3e-4  # `make bench-ssl`'s settings
GPU_MODEL, GPU_STEP_FACTOR = "small", 4  # --gpu: this model, and this many times the steps


def recipe_of(args, name: str) -> Variant:
    """A variant with every field filled in (the default variant: no flags, --bitrate, --model, --steps)."""
    v = VARIANTS.get(name, Variant())
    return replace(v, kbps=v.kbps or args.bitrate, model=v.model or args.model, steps=v.steps or args.steps)


def parents(r: Variant) -> list[tuple[str, str]]:
    """(train/pretrain.py flag, variant) for each variant whose model of the same seed this one's pre-training reads."""
    return [(flag, v) for flag, v in (("--teacher", r.teacher), ("--init-from", r.init_from)) if v]


def steps_words(args, variant: str) -> str:
    """"2000 pre-training steps", or for a variant that continues another's model, its total and the stages."""
    r = recipe_of(args, variant)
    if not r.init_from:
        return f"{r.steps} pre-training steps"
    before = recipe_of(args, r.init_from).steps
    return f"{before + r.steps} pre-training steps ({r.steps} continuing the `{r.init_from}` model's {before})"


def setting_changes(args, variant: str, fields: tuple[str, ...] = ("model", "steps", "kbps")) -> list[str]:
    """The sizes this invocation changed from the protocol's (--model, --steps, --bitrate, --gpu) and the variant does
    not pin, e.g. ["smallmodel", "8000steps"]: they name its runs and results, so that a cached run or result of another
    setting is never read as this one's."""
    pinned, r = VARIANTS.get(variant, Variant()), recipe_of(args, variant)
    changes = {"model": (pinned.model, r.model, DEFAULT_MODEL, f"{r.model}model"),
               "steps": (pinned.steps, r.steps, DEFAULT_STEPS, f"{r.steps}steps"),
               "kbps": (pinned.kbps, r.kbps, DEFAULT_BITRATE, f"{r.kbps:g}kbps")}
    return [name for f in fields for pin, value, default, name in [changes[f]] if pin is None and value != default]


def setting_flags(args) -> list[str]:
    """--bitrate / --model / --steps / --lr where this invocation changed them; under --gpu, `--gpu` (and the --steps
    it multiplies, if not the protocol's) instead of the model and steps it sets, so that the command shown runs on
    the GPU again."""
    if args.gpu:
        steps = args.steps // GPU_STEP_FACTOR
        size = ["--gpu", *(["--steps", str(steps)] if steps != DEFAULT_STEPS else [])]
    else:
        size = [*(["--model", args.model] if args.model != DEFAULT_MODEL else []),
                *(["--steps", str(args.steps)] if args.steps != DEFAULT_STEPS else [])]
    return [*(["--bitrate", f"{args.bitrate:g}"] if args.bitrate != DEFAULT_BITRATE else []), *size,
            *(["--lr", f"{args.lr:g}"] if args.lr != DEFAULT_LR else []),
            *(["--probe-seeds", str(args.probe_seeds)] if args.probe_seeds != PROBE_SEEDS else []),
            *(["--finetune-seeds", str(args.finetune_seeds)] if args.finetune_seeds != FINETUNE_SEEDS else [])]


SETTING_TITLES = {"--bitrate": "{} kbps", "--model": "{} model", "--steps": "{} steps", "--lr": "fine-tuning lr {}",
                  "--probe-seeds": "probes per frozen encoder: {}", "--finetune-seeds": "fine-tuning runs per seed: {}"}


def setting_titles(summary: dict) -> list[str]:
    """The table title's words for the recorded setting flags, e.g. ["12 kbps", "GPU: small model, 8000 steps"]."""
    flags = list(summary.get("setting_flags", []))
    gpu = "--gpu" in flags
    if gpu:
        flags.remove("--gpu")
    titles = [SETTING_TITLES[flag].format(value) for flag, value in zip(flags[::2], flags[1::2])
              if not (gpu and flag == "--steps")]
    return titles + ([f"GPU: {summary['model']} model, {summary['steps']} steps"] if gpu else [])


def run_flags(recipe: str, seeds: list[int], finetune_colour_db: float = 0.0, settings: list[str] = ()) -> list[str]:
    """The flags that set a protocol run apart from `make bench-ssl`'s: they show in its table and name its files."""
    return [*(["--recipe", recipe] if recipe != DEFAULT_VARIANT else []), *settings,
            *(["--finetune-colour-db", f"{finetune_colour_db:g}"] if finetune_colour_db else []),
            *(["--seeds", *map(str, seeds)] if seeds != DEFAULT_SEEDS else [])]


def shown_flags(args, name: str) -> str:
    """The pre-training flags that make a variant differ from the protocol's defaults."""
    r = recipe_of(args, name)
    flags = [*r.flags, *(word for flag, v in parents(r) for word in (flag, f"<{v} model>")),
             *(["--model", r.model] if r.model != args.model else []),
             *(["--max-steps", str(r.steps)] if r.steps != args.steps else [])]
    return " ".join(flags) or "(defaults)"


def run(cmd: list[str], log: Path, threads: int) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's mega_audio first
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": path}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def run_once(done: Callable[[], bool], cmd: list[str], log: Path, threads: int) -> None:
    """Runs a job unless it is `done`. Under the job's lock, so that a second bench on the same --work waits for a job
    in flight and then reuses its output instead of running it again into the same directory; the kernel drops the
    lock with its holder, so a killed bench leaves none behind."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done():
            run(cmd, log, threads)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mega_audio.cli", *args]


def store_path(args, name: str, kbps: float, features: str | None = None) -> Path:
    return args.work / "stores" / f"{name}-{features + '-' if features else ''}{kbps:g}"


def tokenize(args, name: str, dataset: str, kbps: float, features: str | None = None) -> Path:
    store = store_path(args, name, kbps, features)
    card = store / "dataset.json"
    run_once(lambda: card.exists() and json.loads(card.read_text()).get("complete"),
             cli("tokenize", "--dataset", dataset, "--data-root", str(args.data_root / name), "--out", str(store),
                 "--codec", "bestrq", "--bitrate", f"{kbps:g}", "--num-workers", "1",
                 *(["--store-features", features] if features else [])),
             args.work / "logs" / f"tokenize-{store.name}.log", os.cpu_count() or 2)
    return store


def pretrain_dir(args, variant: str, seed: int) -> Path:
    """pre-<variant>[-<changed settings>][-s<seed>] (seed 0 unsuffixed, as the first runs were named)."""
    seed_suffix = [f"s{seed}"] if seed else []
    return args.work / "runs" / "-".join(["pre", variant, *setting_changes(args, variant), *seed_suffix])


def colour_flags(args, arm: str) -> list[str]:
    """`finetune --colour-db D` for an arm that trains the encoder under --finetune-colour-db (the frozen probes compute
    their features once and cannot colour)."""
    return ["--colour-db", f"{args.finetune_colour_db:g}"] if args.finetune_colour_db and arm not in FROZEN_ARMS else []


def finetune_dir(args, task: str, arm: str, variant: str, seed: int, run: int = 0) -> Path:
    """[c<D>-]<arm>[-lr<lr>]-<task>-<kbps>-s<seed>[-p<k>|-r<k>]: the pre-trained arms name the pre-training (variant and
    changed settings), the random-init arms only their model; c<D> marks fine-tuning under a random EQ, p<k> a frozen
    arm's k-th extra probe of the same encoder, r<k> a trained arm's k-th extra fine-tuning run of the seed."""
    r = recipe_of(args, variant)
    pretrained = "-".join([variant, *setting_changes(args, variant, ("model", "steps"))])
    tag = TAGS[arm].format(v=pretrained) if arm in PRETRAINED_ARMS else \
        TAGS[arm] + ("" if r.model == DEFAULT_MODEL else f"-{r.model}")
    prefix = f"c{args.finetune_colour_db:g}-" if colour_flags(args, arm) else ""
    lr = "" if arm in FROZEN_ARMS or args.lr == DEFAULT_LR else f"-lr{args.lr:g}"  # the probes train at their own lr
    extra = f"-{'p' if arm in FROZEN_ARMS else 'r'}{run}" if run else ""
    return args.work / "runs" / f"{prefix}{tag}{lr}-{task}-{r.kbps:g}-s{seed}{extra}"


def device_flags(args) -> list[str]:
    """`--cpu` except under --gpu: the CPU protocol stays on the CPU (and its timings comparable) on a GPU machine."""
    return [] if args.gpu else ["--cpu"]


def pretrain(args, variant: str, seed: int, threads: int) -> Path:
    r, out = recipe_of(args, variant), pretrain_dir(args, variant, seed)
    model = out / "model"
    models = [word for flag, v in parents(r) for word in (flag, str(pretrain(args, v, seed, threads)))]
    run_once((model / "model.safetensors").exists,
             [sys.executable, "train/pretrain.py", *device_flags(args),
              "--data", str(store_path(args, "pool", r.kbps, r.features)), "--output-dir", str(out),
              "--seed", str(seed), "--model", r.model, "--max-steps", str(r.steps),
              "--batch-size", "16", "--max-seconds", "5", "--warmup-steps", str(max(1, r.steps // 10)),
              "--num-workers", "0", "--eval-every", "0", "--save-every", "250", *r.flags, *models,
              "--resume"],  # a killed job goes on from its last checkpoint (a fresh one starts at step 0)
             args.work / "logs" / f"{out.name}.log", threads)
    return model


def finetune(args, task: str, arm: str, variant: str, seed: int, model_dir: Path | None, threads: int,
             run: int = 0) -> dict:
    """One run of an arm: run 0 is the seed's first (cached runs of one run per seed count), run k > 0 another head
    (frozen: `--probe-seed`, the same encoder) or another fine-tuning run (`--seed`) of the seed's encoder."""
    r = recipe_of(args, variant)
    kbps, model = r.kbps, r.model
    name, _, task_name, epochs = TASKS[task]
    frozen, colour = arm in FROZEN_ARMS, colour_flags(args, arm)
    out = finetune_dir(args, task, arm, variant, seed, run)
    init = ["--init", str(model_dir)] if model_dir else ["--scratch", "--model", model]
    recipe = ["--freeze", "--epochs", "60", "--lr", "1e-3"] if frozen else \
        ["--epochs", str(epochs), "--lr", str(args.lr)]
    run_seed = seed + SEED_STRIDE * run  # a probe's head (the encoder stays --seed's), or the whole fine-tuning run
    if run and frozen:
        recipe += ["--probe-seed", str(run_seed)]
    if arm == "finetuned_lpft":
        recipe += ["--lp-epochs", str(LP_EPOCHS)]
    store = store_path(args, name, kbps, "logmel" if colour else None)  # the same codes, plus their log-mels
    results = out / "results.json"
    run_once(results.exists,
             cli("finetune", *device_flags(args), "--task", task_name, "--data", str(store), "--output-dir", str(out),
                 "--seed", str(seed if frozen else run_seed), "--batch-size", "32", *WINDOWS, *init,
                 *recipe, *colour),
             args.work / "logs" / f"{out.name}.log", threads)
    return json.loads(results.read_text())


def _histograms(codes: np.ndarray, size: int) -> np.ndarray:
    """Each level's code frequencies, side by side."""
    counts = [np.bincount(codes[:, q], minlength=size) for q in range(codes.shape[1])]
    return np.concatenate(counts) / max(len(codes), 1)


def _pair_frequencies(first: np.ndarray, second: np.ndarray, size: int):
    """Frequencies of the code pairs (first[i], second[i]) as one sparse row of size * size (duplicates add up)."""
    from scipy import sparse

    rows = np.zeros(len(first), dtype=np.int64)
    frequencies = np.full(len(first), 1 / max(len(first), 1))
    return sparse.csr_matrix((frequencies, (rows, first * size + second)), shape=(1, size * size))


# What the bag counts per clip. `unigram` is the baseline; the others ask whether the tokens hold more about a class
# than their histogram does, which is the most a learned model could add over the bag with a linear read-out.
BAG_STATISTICS = {
    "unigram": _histograms,
    "segments": lambda c, k: np.concatenate([_histograms(part, k) for part in np.array_split(c, 4)]),  # per quarter
    "joint": lambda c, k: _pair_frequencies(c[:, 0], c[:, 1], k),  # levels 0 and 1 of one frame together
    "bigram": lambda c, k: _pair_frequencies(c[:-1, 0], c[1:, 0], k),  # level 0 of a frame, then of the next
}
BAG_STATISTIC_NAMES = {"unigram": "code histogram per level (the baseline)",
                       "segments": "histograms of the four quarters of the clip (attack, decay)",
                       "joint": "joint codes of levels 0 and 1 per frame",
                       "bigram": "level-0 codes of consecutive frames"}


@lru_cache(maxsize=1)  # --bag-statistics fits one store four times: read it once
def _labelled_codes(store: Path) -> tuple[dict[str, list[tuple[np.ndarray, str]]], int]:
    """({split: [(codes (T, n_q) int64, label)]} for train / valid / test, codebook size) of a labelled store."""
    from mega_audio.data.store import TokenStore

    ts = TokenStore(store)
    clips = {split: [(codes.astype(np.int64), meta["labels"][0]) for codes, meta in ts.iter_samples(split)]
             for split in ("train", "valid", "test")}
    return clips, ts.codebook_size


def bag_of_tokens(store: Path, seed: int, statistic: str = "unigram") -> dict:
    """Logistic regression on each clip's code statistic (square-rooted frequencies), C picked on valid."""
    from scipy import sparse

    clips, size, count = *_labelled_codes(store), BAG_STATISTICS[statistic]
    x, y = {}, {}
    for split, rows in clips.items():
        features = [count(codes, size) for codes, _ in rows]
        x[split] = sparse.vstack(features).tocsr().sqrt() if sparse.issparse(features[0]) \
            else np.sqrt(np.stack(features))
        y[split] = np.array([r[1] for r in rows])
    return logistic_regression(x, y, BAG_CS, seed)


def logistic_regression(x: dict, y: dict, cs: tuple[float, ...], seed: int) -> dict:
    """One L2-regularised logistic regression per C on x["train"]; the one best on valid scores valid and test."""
    from sklearn.linear_model import LogisticRegression

    fits = [LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x["train"], y["train"]) for c in cs]
    accuracy = lambda fit, split: float((fit.predict(x[split]) == y[split]).mean())  # noqa: E731
    best = max(fits, key=lambda fit: accuracy(fit, "valid"))
    return {"metrics": {split: {"accuracy": accuracy(best, split)} for split in ("valid", "test")}, "C": best.C}


def linear_read_out(features: np.ndarray, labels: np.ndarray, splits: np.ndarray, seed: int) -> dict:
    """features (N, layers 0..n + their mean, width) of labelled clips in train/valid/test -> a logistic regression on
    each of the frozen probe's candidate layers, standardised on train; the layer and C best on valid score test."""
    from sklearn.preprocessing import StandardScaler

    from mega_audio.models.classifier import layer_index
    from mega_audio.train.probe import candidate_layers

    n_layers, y = features.shape[1] - 2, {s: labels[splits == s] for s in ("train", "valid", "test")}
    fits = {}
    for layer in candidate_layers("best", n_layers):
        x = {s: features[splits == s, layer_index(layer, n_layers)] for s in y}
        scaler = StandardScaler().fit(x["train"])
        fits[layer] = logistic_regression({s: scaler.transform(v) for s, v in x.items()}, y, LINEAR_CS, seed)
    layer = max(fits, key=lambda k: fits[k]["metrics"]["valid"]["accuracy"])
    return {**fits[layer], "probe_layer": layer,
            "valid_by_layer": {k: fit["metrics"]["valid"]["accuracy"] for k, fit in fits.items()}}


def linear_probe(args, task: str, arm: str, seed: int, threads: int) -> dict:
    """The linear read-out of the encoder that `arm`'s frozen probe froze: its every layer stats-pooled per clip by
    `mega-audio embed --probe-layer all` (read in the probe's WINDOWS), then `linear_read_out`."""
    encoder = finetune_dir(args, task, LINEAR_ARMS[arm], args.recipe, seed)
    store = store_path(args, TASKS[task][0], recipe_of(args, args.recipe).kbps)
    out = args.work / "embeddings" / f"{encoder.name}.npy"
    run_once(out.with_suffix(".json").exists,
             cli("embed", "--checkpoint", str(encoder), "--data", str(store), "--out", str(out), "--probe-layer", "all",
                 "--probe-pool", "stats", *WINDOWS),
             args.work / "logs" / f"embed-{encoder.name}.log", threads)
    index = json.loads(out.with_suffix(".json").read_text())
    labels = np.array([clip_labels[0] for clip_labels in index["labels"]])
    return linear_read_out(np.load(out), labels, np.array(index["splits"]), seed)


def bag_statistics(args) -> None:
    """--bag-statistics: the bag of tokens on each of BAG_STATISTICS, on the instrument-family tokens at --bitrate."""
    from tqdm import tqdm

    start, store = time.time(), tokenize(args, "nsynth", "nsynth", args.bitrate)
    rows = {s: bag_of_tokens(store, DEFAULT_SEEDS[0], s) for s in tqdm(BAG_STATISTICS, desc="bag statistics")}
    flags = ["--bag-statistics", *(["--bitrate", f"{args.bitrate:g}"] if args.bitrate != DEFAULT_BITRATE else [])]
    lines = [f"# Do the tokens hold more than their histogram? (instrument family, BEST-RQ at {args.bitrate:g} kbps)",
             "", f"`python bench/ssl_bench.py {' '.join(flags)}`: logistic regression on one statistic of each clip's "
             "codes (square-rooted frequencies, C picked on valid from 0.01, 0.1 and 1), as the bag of tokens. "
             "Accuracy (%) on held-out programs of the training soundfonts (valid) and on the unseen soundfont (test). "
             "The joint and consecutive codes read levels 0 and 1 only, which BEST-RQ draws the same at every bitrate "
             "(1.5 kbps codes are a prefix of 12 kbps ones): those two rows score alike at either rate.",
             "", "| what the bag counts | valid | test |", "|---|---:|---:|"]
    lines += [f"| {BAG_STATISTIC_NAMES[s]} | {100 * r['metrics']['valid']['accuracy']:.1f} | "
              f"{100 * r['metrics']['test']['accuracy']:.1f} |" for s, r in rows.items()]
    name = "_".join(["ssl_bag_statistics", *setting_changes(args, DEFAULT_VARIANT, ("kbps",))])
    summary = {"statistics": rows, "bitrate": args.bitrate, "device": "cpu"}
    write_json(summary, HERE / "results" / name).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"bench-ssl: wrote bench/results/{name}.json and .md in {(time.time() - start) / 60:.0f} min")


def mean_of_runs(runs: list[dict], key: str = "probe_runs") -> dict:
    """One seed's result from its runs' results.json (a frozen encoder's probes, or a trained arm's fine-tuning runs):
    valid and test accuracy averaged, each run's test accuracy kept under `key` (and each probe's layer)."""
    metrics = {split: {"accuracy": float(np.mean([r["metrics"][split]["accuracy"] for r in runs]))}
               for split in ("valid", "test")}
    layers = {"probe_layer": " ".join(r["probe_layer"] for r in runs)} if "probe_layer" in runs[0] else {}
    return {**runs[0], "metrics": metrics, **layers, key: [100 * r["metrics"]["test"]["accuracy"] for r in runs]}


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(results: dict, tasks: list[str], seeds: list[int], arms) -> dict:
    table = {}
    for task in tasks:
        table[task] = {}
        for arm in arms:
            runs = [results[(task, arm, s)] for s in seeds if (task, arm, s) in results]
            accs = [100 * r["metrics"]["test"]["accuracy"] for r in runs]
            valid = [100 * r["metrics"]["valid"]["accuracy"] for r in runs if "valid" in r["metrics"]]
            table[task][arm] = {"mean": float(np.mean(accs)), "std": _std(accs), "runs": accs,
                                "valid_mean": float(np.mean(valid)) if valid else None, "valid_std": _std(valid)}
            layers = [r.get("probe_layer") for r in runs if r.get("probe_layer")]
            if layers:
                table[task][arm]["probe_layers"] = layers
            for key in ("probe_runs", "finetune_runs"):  # per seed, each run's test accuracy
                if runs and key in runs[0]:
                    table[task][arm][key] = [r[key] for r in runs]
        scratch = next((results[(task, "scratch", s)] for s in seeds if (task, "scratch", s) in results), None)
        if scratch:
            table[task]["n_test"] = scratch["n"]["test"]
        table[task]["gains"] = paired_gains(table[task])
    return table


def paired_gains(arms: dict) -> dict:
    """Each GAINS comparison, seed by seed: mean and std of the differences, and whether the mean clears 2 std."""
    gains = {}
    for name, arm, baseline in GAINS:
        if arm in arms and baseline in arms and len(arms[arm]["runs"]) == len(arms[baseline]["runs"]):
            diffs = [a - b for a, b in zip(arms[arm]["runs"], arms[baseline]["runs"])]
            mean, std = float(np.mean(diffs)), _std(diffs)
            gains[name] = {"mean": mean, "std": std, "runs": diffs, "beyond_2_std": bool(mean > 2 * std)}
    return gains


def protocol(args, pool_hours: float) -> dict:
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    runs = {arm: args.probe_seeds if arm in FROZEN_ARMS else args.finetune_seeds for arm in TAGS}  # per seed
    with ThreadPoolExecutor(args.jobs) as ex:
        models = dict(zip(args.seeds, ex.map(lambda s: pretrain(args, args.recipe, s, threads), args.seeds)))
        jobs = {(t, arm, s, k): ex.submit(finetune, args, t, arm, args.recipe, s,
                                          models[s] if arm in PRETRAINED_ARMS else None, threads, k)
                for k in range(max(runs.values()))  # every seed's first runs first
                for s in args.seeds for t in args.tasks for arm in TAGS if k < runs[arm]}
        results = {(t, arm, s): mean_of_runs([jobs[(t, arm, s, k)].result() for k in range(runs[arm])],
                                             "probe_runs" if arm in FROZEN_ARMS else "finetune_runs")
                   if runs[arm] > 1 else jobs[(t, arm, s, 0)].result()
                   for s in args.seeds for t in args.tasks for arm in TAGS}
        linear = {(t, arm, s): ex.submit(linear_probe, args, t, arm, s, threads)  # after the runs whose encoders they read
                  for s in args.seeds for t in args.tasks for arm in LINEAR_ARMS}
        results |= {k: f.result() for k, f in linear.items()}
    for t in args.tasks:  # lbfgs logistic regression ignores its seed: one fit serves every seed's row
        bag = bag_of_tokens(store_path(args, TASKS[t][0], recipe_of(args, args.recipe).kbps), args.seeds[0])
        for s in args.seeds:
            results[(t, "bag_of_tokens", s)] = bag
    return {"tasks": summarise(results, args.tasks, args.seeds, ARMS), "pool_hours": pool_hours}


def ablation(args, pool_hours: float) -> dict:
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    task, seed = "instrument_family", 0
    with ThreadPoolExecutor(args.jobs) as ex:
        models = dict(zip(args.variants, ex.map(lambda v: pretrain(args, v, seed, threads), args.variants)))
        jobs = {(v, arm): ex.submit(finetune, args, task, arm, v, seed,
                                    models[v] if arm in PRETRAINED_ARMS else None, threads)
                for v in args.variants for arm in ABLATION_ARMS}
        results = {k: f.result() for k, f in jobs.items()}
    rows = {}
    for v in args.variants:
        r = {arm: results[(v, arm)] for arm in ABLATION_ARMS}
        rows[v] = {arm: 100 * x["metrics"]["test"]["accuracy"] for arm, x in r.items()}
        rows[v]["valid_by_layer"] = {k: 100 * (a[0] if isinstance(a, list) else a)  # [accuracy, -loss] in older runs
                                     for k, a in r["frozen_pretrained"]["valid_by_layer"].items()}
        rows[v]["probe_layer"] = r["frozen_pretrained"]["probe_layer"]
        recipe = recipe_of(args, v)
        rows[v].update(kbps=recipe.kbps, model=recipe.model, steps=recipe.steps,
                       flags=" ".join(recipe.flags) or "(shipped masking)")
    return {"task": task, "seed": seed, "variants": rows, "pool_hours": pool_hours}


def markdown(summary: dict) -> str:
    recipe, settings = summary.get("recipe", DEFAULT_VARIANT), summary.get("setting_flags", [])
    if "variants" in summary:
        command, what = ["--ablate", *settings], ""
    else:
        command = run_flags(recipe, summary["seeds"], summary.get("finetune_colour_db", 0.0), settings)
        what = f" (pre-training flags `{summary['recipe_flags']}`)" if recipe in VARIANTS else " (the shipped recipe)"
    flags = "".join(f" {f}" for f in command) + "`" + what
    kbps = summary.get("bitrate", DEFAULT_BITRATE)
    size = "model and pre-training steps per row" if "variants" in summary else \
        f"model `{summary['model']}`, {summary['steps_words']}"
    head = (f"`python bench/ssl_bench.py{flags}: {size}, batches of 16 x 5 s on {summary['pool_hours']:.2f} h of "
            "unlabelled audio, "
            f"BEST-RQ tokens{f' at {kbps:g} kbps' if kbps != DEFAULT_BITRATE and 'variants' not in summary else ''}, "
            f"on {summary['machine']}; fine-tuning {summary.get('finetune', '')}.")
    if "variants" in summary:
        lines = ["# Pre-training recipe ablation (real audio, instrument family, test accuracy %)", "", head,
                 "One seed per row; the frozen probe reads the layer best on valid (its valid accuracy per layer in the "
                 "last column).", "",
                 "| recipe | model | steps | kbps | pre-training flags | frozen random | frozen pre-trained | scratch | "
                 "fine-tuned | valid by layer |",
                 "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
        for v, r in summary["variants"].items():
            layers = ", ".join(f"{k} {a:.0f}" for k, a in r["valid_by_layer"].items())
            lines.append(f"| {v} | {r['model']} | {r['steps']} | {r['kbps']:g} | `{r['flags']}` | "
                         f"{r['frozen_random']:.1f} | {r['frozen_pretrained']:.1f} | {r['scratch']:.1f} | "
                         f"{r['finetuned']:.1f} | {layers} |")
        return "\n".join(lines) + "\n"
    tasks = list(summary["tasks"])
    title = ["real audio", *([f"recipe {recipe}"] if recipe != DEFAULT_VARIANT else []),
             *setting_titles(summary),
             *([f"fine-tuning EQ {summary['finetune_colour_db']:g} dB"] if summary.get("finetune_colour_db") else []),
             *([f"{len(summary['seeds'])} seeds"] if summary["seeds"] != DEFAULT_SEEDS else [])]
    lines = [f"# Does pre-training help? ({', '.join(title)})", "", head,
             f"Test accuracy (%), mean ± std over seeds {summary['seeds']} (each seed pre-trains its own model).", "",
             "| | " + " | ".join(f"{t} (n={summary['tasks'][t].get('n_test', '?')})" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    lines += _arm_rows(summary, tasks, "mean", "std")
    lines += _gain_rows(summary, tasks)
    lines += ["", "The valid split, for comparison (instrument family: GM programs held out of train, from the training "
              "soundfonts). It also picks each run's epoch, probe layer and the logistic regressions' C, so it flatters "
              "every arm a little; test is the measure.", "",
              "| valid accuracy (%) | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    lines += _arm_rows(summary, tasks, "valid_mean", "valid_std")
    return "\n".join(lines) + "\n"


def _gain_rows(summary: dict, tasks: list[str]) -> list[str]:
    """The paired gains, seed by seed; * marks a mean larger than twice its std (the bars are set on these)."""
    names = [name for name, _, _ in GAINS if any(name in summary["tasks"][t].get("gains", {}) for t in tasks)]
    if not names or len(summary["seeds"]) < 2:
        return []
    rows = ["", "Paired gains (test points; each seed's pre-trained model against its own baseline), mean ± std over "
            "seeds, the range in brackets; * where the mean is larger than twice the std.", "",
            "| paired gain | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name in names:
        cells = []
        for t in tasks:
            g = summary["tasks"][t].get("gains", {}).get(name)
            cells.append(f"{_signed(g['mean'])} ± {g['std']:.1f}{' *' if g['beyond_2_std'] else ''} "
                         f"({_signed(min(g['runs']))} to {_signed(max(g['runs']))})" if g else "-")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _signed(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: a difference that rounds to zero reads +0.0, not -0.0


def _arm_rows(summary: dict, tasks: list[str], mean: str, std: str) -> list[str]:
    rows = []
    for arm in ARMS:
        cells = [f"{summary['tasks'][t][arm][mean]:.1f} ± {summary['tasks'][t][arm][std]:.1f}"
                 if summary["tasks"][t].get(arm, {}).get(mean) is not None else "-" for t in tasks]
        rows.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + " |")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "real-audio")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ssl")
    parser.add_argument("--tasks", nargs="*", default=["instrument_family", "music_speech"], choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="*", default=DEFAULT_SEEDS)
    parser.add_argument("--bitrate", type=float, default=DEFAULT_BITRATE)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="pre-training steps per seed (500 leave fine-tuning no better than scratch: see README)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help="fine-tuning peak lr (scratch and fine-tuned alike; the frozen probes use 1e-3)")
    parser.add_argument("--finetune-colour-db", type=float, default=0.0,
                        help="fine-tune (scratch and pre-trained alike) with `finetune --colour-db` on log-mel task "
                             "stores; the frozen probes cannot colour (writes results/ssl[_<recipe>]_ftcolour<D>.*)")
    parser.add_argument("--probe-seeds", type=int, default=PROBE_SEEDS,
                        help="MLP probes per frozen encoder (the arm's score for that encoder is their mean; 1: the "
                             "protocol before they were averaged)")
    parser.add_argument("--finetune-seeds", type=int, default=FINETUNE_SEEDS,
                        help="fine-tuning runs per seed of the arms that train the encoder (scratch, fine-tuned, "
                             "LP-FT; the seed's score is their mean; 1: the protocol before they were averaged)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--gpu", action="store_true",
                        help=f"on the GPU, with the `{GPU_MODEL}` model and {GPU_STEP_FACTOR}x the steps "
                             "(writes *_cuda.*)")
    parser.add_argument("--ablate", action="store_true", help="the recipe ablation instead of the protocol")
    parser.add_argument("--bag-statistics", action="store_true",
                        help="the bag of tokens on richer statistics of the instrument-family codes (time quarters, "
                             "joint levels, bigrams) instead of the protocol: do they hold more than the histogram?")
    parser.add_argument("--variants", nargs="*", default=[*VARIANTS, DEFAULT_VARIANT],
                        choices=[*VARIANTS, DEFAULT_VARIANT])
    parser.add_argument("--recipe", default=DEFAULT_VARIANT, choices=[DEFAULT_VARIANT] + list(VARIANTS),
                        help="pre-training recipe of the protocol (another one writes results/ssl_<recipe>.*)")
    args = parser.parse_args(argv)
    if min(args.probe_seeds, args.finetune_seeds) < 1:
        parser.error("--probe-seeds and --finetune-seeds must be at least 1")
    if args.gpu:
        args.model, args.steps = GPU_MODEL, args.steps * GPU_STEP_FACTOR
    return args


def machine(args) -> str:
    """What the jobs ran on, for the table's head (--gpu: after main() checked that a GPU is visible)."""
    cores = f"{os.cpu_count()} CPU cores"
    if not args.gpu:
        return cores
    import torch

    return f"one {torch.cuda.get_device_name()} GPU and {cores}"


def results_name(args) -> str:
    """bench/results/<name>.*: another recipe, setting, fine-tuning EQ or seeds write their own file (more seeds check
    the 3-seed table, they do not replace it)."""
    if args.ablate:
        return "_".join(["ssl_ablation", *setting_changes(args, DEFAULT_VARIANT)])
    return "_".join(["ssl", *([args.recipe] if args.recipe != DEFAULT_VARIANT else []),
                     *setting_changes(args, args.recipe), *([f"lr{args.lr:g}"] if args.lr != DEFAULT_LR else []),
                     *([f"ftcolour{args.finetune_colour_db:g}"] if args.finetune_colour_db else []),
                     *([f"{args.probe_seeds}probe" + "s" * (args.probe_seeds > 1)]
                       if args.probe_seeds != PROBE_SEEDS else []),
                     *([f"{args.finetune_seeds}finetune" + "s" * (args.finetune_seeds > 1)]
                       if args.finetune_seeds != FINETUNE_SEEDS else []),
                     *([f"{len(args.seeds)}seeds"] if args.seeds != DEFAULT_SEEDS else [])])


def probe_words(k: int) -> str:
    return "one probe per encoder" if k == 1 else f"each encoder scored by the mean of {k} probe seeds"


def finetune_words(k: int) -> str:
    return "" if k == 1 else f", each seed scored by the mean of {k} fine-tuning runs (`--seed` seed + {SEED_STRIDE}k)"


def main() -> None:
    args = parse_args()
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench-ssl: --gpu, but torch sees no GPU (torch.cuda.is_available() is False)")
    if args.bag_statistics:
        bag_statistics(args)
        return
    recipe = recipe_of(args, args.recipe)
    start = time.time()
    for t in args.tasks:
        tokenize(args, TASKS[t][0], TASKS[t][1], recipe.kbps)
        if args.finetune_colour_db:
            tokenize(args, TASKS[t][0], TASKS[t][1], recipe.kbps, "logmel")
    recipes = [recipe_of(args, v) for v in args.variants] if args.ablate else [recipe]
    bitrates = {r.kbps for r in recipes}
    pools = [tokenize(args, "pool", "folder", kbps) for kbps in sorted(bitrates | {args.bitrate})]
    for features, kbps in {(r.features, r.kbps) for r in recipes if r.features}:
        tokenize(args, "pool", "folder", kbps, features)  # the same codes plus the features a variant's loss needs
    if args.ablate:
        for kbps in bitrates:
            tokenize(args, "nsynth", "nsynth", kbps)
    pool_hours = json.loads((pools[0] / "dataset.json").read_text())["splits"]["train"]["hours"]
    summary = ablation(args, pool_hours) if args.ablate else protocol(args, pool_hours)
    colour = f", every training clip under a random EQ (`finetune --colour-db {args.finetune_colour_db:g}`)" \
        if args.finetune_colour_db else ""
    summary.update({"finetune": f"lr {args.lr:g}, " + ", ".join(f"{t} {TASKS[t][3]} epochs" for t in args.tasks) +
                    f", the epoch best on valid{colour}"
                    f"{finetune_words(1 if args.ablate else args.finetune_seeds)}; frozen probes 60 epochs at lr 1e-3, "
                    f"{probe_words(1 if args.ablate else args.probe_seeds)}; linear probes: logistic "
                    "regression on the frozen encoder's stats-pooled layers, layer and C picked on valid",
                    "finetune_colour_db": args.finetune_colour_db,
                    "recipe": args.recipe, "recipe_flags": shown_flags(args, args.recipe),
                    "model": recipe.model, "steps": recipe.steps, "steps_words": steps_words(args, args.recipe),
                    "seeds": args.seeds, "bitrate": recipe.kbps,
                    "setting_flags": setting_flags(args),
                    "device": "cuda" if args.gpu else "cpu",
                    "minutes_this_invocation": (time.time() - start) / 60,  # jobs with outputs are skipped
                    "machine": machine(args)})
    name = results_name(args)
    text = markdown(summary)
    write_json(summary, HERE / "results" / name).with_suffix(".md").write_text(text)
    print(text)
    print(f"bench-ssl: wrote bench/results/{name}.json and .md in {summary['minutes_this_invocation']:.0f} min")


if __name__ == "__main__":
    main()
