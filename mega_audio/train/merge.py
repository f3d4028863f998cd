"""Task arithmetic over exported models: theta = theta_base + sum_i lambda_i (theta_i - theta_base).

`mega-audio merge --base B --models M1 M2 --lambdas 0.5 0.5 --out DIR` merges Mega-AudioFormer exports (or classifier
checkpoints) of one architecture and one codec, e.g. a model continually pre-trained on several corpora, into one
model that serves them all. The output is a normal export (config.json + model.safetensors + the codec card)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option
from ..data.store import CODEC_KEYS
from ..models.checkpoint import load_weights, read_checkpoint_config
from ..models.classifier import AudioClassifier
from ..models.mega import MegaAudioFormer
from .loop import describe_codec

MODEL_CLASSES = {cls.model_type: cls for cls in (MegaAudioFormer, AudioClassifier)}
LABEL_KEYS = ("task", "labels", "multi_label")  # a classifier's outputs: merged classifiers must share them
TRAINING_KEYS = ("pretrain", "finetune", "best_epoch")  # how the base was trained: not true of the merge


@dataclass
class MergeConfig:
    base: str = option("", "the exported model the others were trained from (theta_base)", required=True)
    models: list[str] = option([], "exported models of the same architecture and codec (theta_i)", required=True)
    lambdas: list[float] = option([], "one scale per --models entry (lambda_i); 1 0 gives the first model back",
                                  required=True)
    out: str = option("", "directory of the merged export (must not hold a model yet)", required=True)


def first_difference(a: dict, b: dict) -> str | None:
    """`key: a vs b` for the first key whose values differ (nested dicts as dotted keys), else None."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = first_difference(x, y)
            if inner:
                return f"{key}.{inner}"
        elif x != y:
            return f"{key}: {x} vs {y}"
    return None


def architecture(header: dict) -> dict:
    """What makes two checkpoints the same network: everything in config.json but the metadata."""
    return {k: v for k, v in header.items() if k != "metadata"}


def check_mergeable(base: str, base_header: dict, other: str, header: dict) -> None:
    """One line naming the mismatch, if `other` cannot be merged with `base`."""
    diff = first_difference(architecture(base_header), architecture(header))
    if diff:
        raise ValueError(f"cannot merge {other} with base {base}: the architecture differs ({diff}); task arithmetic "
                         f"needs models fine-tuned or continually pre-trained from the base")
    meta, base_meta = header.get("metadata", {}), base_header.get("metadata", {})
    codec, base_codec = meta.get("codec") or {}, base_meta.get("codec") or {}
    if any(codec.get(k) != base_codec.get(k) for k in CODEC_KEYS):
        raise ValueError(f"cannot merge {other} with base {base}: different codecs ({describe_codec_or_none(codec)} vs "
                         f"{describe_codec_or_none(base_codec)}); merge only models trained on one codec and bitrate")
    diff = first_difference({k: meta.get(k) for k in LABEL_KEYS}, {k: base_meta.get(k) for k in LABEL_KEYS})
    if diff:
        raise ValueError(f"cannot merge {other} with base {base}: the classifier outputs differ ({diff})")


def describe_codec_or_none(codec: dict) -> str:
    return describe_codec(codec) if codec else "no codec card"


def task_arithmetic(base: dict[str, torch.Tensor], models: list[dict[str, torch.Tensor]],
                    lambdas: list[float]) -> dict[str, torch.Tensor]:
    """theta_base + sum_i lambda_i (theta_i - theta_base) per tensor, summed in float64 and cast back, so lambdas
    (1, 0, ...) give the first model back bit for bit. Integer tensors (counters) are the base's."""
    merged = {}
    for name, theta in base.items():
        if not theta.is_floating_point():
            merged[name] = theta.clone()
            continue
        theta64 = theta.double()
        total = theta64
        for model, lam in zip(models, lambdas):
            total = total + lam * (model[name].double() - theta64)
        merged[name] = total.to(theta.dtype)
    return merged


def merge(cfg: MergeConfig) -> dict:
    """Check every model against the base, merge their weights and write the export to cfg.out (atomically)."""
    if len(cfg.lambdas) != len(cfg.models):
        raise ValueError(f"{len(cfg.models)} --models but {len(cfg.lambdas)} --lambdas: pass one lambda per model")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: choose a new directory for the merged model")
    base_header = read_checkpoint_config(cfg.base)
    model_class = MODEL_CLASSES.get(base_header.get("model_type"))
    if model_class is None:
        raise ValueError(f"{cfg.base} holds a {base_header.get('model_type')!r} checkpoint: merge takes "
                         f"{' or '.join(MODEL_CLASSES)} checkpoints")
    for path in cfg.models:
        check_mergeable(cfg.base, base_header, path, read_checkpoint_config(path))

    base = load_weights(cfg.base)
    models = [load_weights(path) for path in cfg.models]
    for path, weights in zip(cfg.models, models):
        if weights.keys() != base.keys() or any(weights[k].shape != base[k].shape for k in base):
            raise ValueError(f"cannot merge {path} with base {cfg.base}: its tensors differ from the base's although "
                             f"its config.json matches; re-export it")
    model = model_class.from_pretrained(cfg.base)  # the base's class and extras (head size, probe) built as usual
    model.load_state_dict(task_arithmetic(base, models, cfg.lambdas))

    metadata = {k: v for k, v in base_header.get("metadata", {}).items() if k not in TRAINING_KEYS}
    metadata["merge"] = {"base": cfg.base, "models": cfg.models, "lambdas": cfg.lambdas}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, metadata=metadata)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)  # the export appears whole or not at all
    return {"out": str(out), "model_type": model_class.model_type, "models": len(cfg.models),
            "lambdas": cfg.lambdas, "parameters": sum(t.numel() for t in base.values() if t.is_floating_point())}


def merge_summary(result: dict) -> str:
    lambdas = " ".join(f"{lam:g}" for lam in result["lambdas"])
    return (f"merge: base + {result['models']} task vector(s) with lambdas {lambdas} over {result['parameters']:,} "
            f"weights ({result['model_type']}) -> {result['out']}")
