"""Frozen probes (`mega-audio finetune --freeze`): the encoder runs once per clip, the head trains on cached features.

A frozen encoder gives a clip the same features in every epoch, so running it again at each step (as fine-tuning
must) only burns compute: caching makes a probe cost one pass over the data. A mean- or stats-pooling probe caches
every layer's pooled clip embedding in that one pass, which makes `--probe-layer best` (the layer that scores best on
valid) nearly free. An attention-pooling probe (`--probe-pool attention`) learns how to pool, so it caches the frame
states themselves, one layer at a time (one pass per candidate layer, and the memory of one layer's frames). Clips
longer than the window are read as consecutive windows (`--eval-mode chunks`), at training time too: their pooled
embeddings are averaged, their frames are joined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from ..data.store import Sample
from ..data.tasks import Task, split_samples
from ..models.classifier import AudioClassifier, layer_index
from .inference import encode_clips, split_result
from .loop import cosine_lr, set_lr

class ClipSet:
    """A probe head's cached inputs: per clip its pooled embedding (width,), or for an attention pool, which learns
    from the frames, its (T, D) frame states."""

    def __init__(self, clips: list[torch.Tensor]):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def head_inputs(self, model: AudioClassifier, idx: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """-> (B, width) what the head reads: the cached embeddings, or the attention pool of the cached frames."""
        items = [self.clips[i] for i in idx.tolist()]
        if model.attention_pool is None:  # the cache holds pooled embeddings
            return torch.stack(items).float().to(device)
        lengths = torch.tensor([len(c) for c in items])
        frames = pad_sequence(items, batch_first=True).float()
        return model.pool(frames.to(device), (torch.arange(frames.shape[1])[None] < lengths[:, None]).to(device))


def layer_features(model: AudioClassifier, samples: Iterable[Sample], max_frames: int | None, mode: str,
                   batch_size: int, accelerator=None, desc: str | None = None) -> tuple[list[dict], torch.Tensor]:
    """(metas, pooled features (N, 2 + n_layers, width)) of every clip, per `layer_index` (layers 0..n, their mean)."""
    fn = lambda codes, mask: model.layer_embeddings(codes, mask).flatten(1)  # noqa: E731  (B, (2 + n_layers) * width)
    metas, features = encode_clips(model, fn, samples, max_frames, mode, batch_size, accelerator, desc)
    shape = (2 + model.config.n_global_layers, model.pooled_width)
    features = torch.from_numpy(np.stack(features)) if features else torch.zeros(0, *shape)
    return metas, features.float().view(len(metas), *shape)


def frame_features(model: AudioClassifier, samples: Iterable[Sample], max_frames: int | None, mode: str,
                   batch_size: int, accelerator=None, desc: str | None = None) -> tuple[list[dict], list[torch.Tensor]]:
    """(metas, per clip the probe layer's frame states (T, d_global) float16, its windows' frames joined)."""
    join = lambda outputs, pieces: np.concatenate([o[: len(w)] for o, w in zip(outputs, pieces)])  # noqa: E731
    metas, frames = encode_clips(model, model.frame_states, samples, max_frames, mode, batch_size, accelerator, desc,
                                 reduce=join)
    return metas, [torch.from_numpy(f).half() for f in frames]


def candidate_layers(choice: str, n_layers: int) -> list[str]:
    """best: the encoder's layers and their mean. Not layer 0: of a random-init encoder it is a random projection of
    the code histogram, a bag of tokens, which would blur what a frozen random-init probe measures."""
    return ["mean", *(str(i) for i in range(1, n_layers + 1))] if choice == "best" else [choice]


def probe_logits(model: AudioClassifier, clips: ClipSet, batch_size: int = 256) -> torch.Tensor:
    device = next(model.head.parameters()).device
    return torch.cat([model.head(clips.head_inputs(model, idx, device))
                      for idx in torch.arange(len(clips)).split(batch_size)]) if len(clips) else \
        torch.zeros(0, model.n_classes, device=device)


def train_head(model: AudioClassifier, train: ClipSet, y: torch.Tensor, valid: ClipSet,
               valid_value: Callable[[torch.Tensor], tuple], epochs: int, batch_size: int, lr: float,
               weight_decay: float, seed: int, desc: str | None = None) -> tuple[dict, list[dict]]:
    """Train model.head (and the attention pool, if any) from fresh weights on cached clips; keep the epoch whose valid
    logits valid_value ranks highest. Returns (best {'value', 'epoch', 'state'}, history)."""
    head, pool, trained = model.head, model.attention_pool, probe_modules(model)
    torch.manual_seed(seed)
    for m in head.modules():
        if m is not head and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if pool is not None:
        pool.reset_parameters()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(head.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch, best, history = math.ceil(len(train) / batch_size), None, []
    total = epochs * steps_per_epoch
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=desc is None, leave=False):
        trained.train()
        for i, idx in enumerate(torch.randperm(len(train), generator=generator).split(batch_size)):
            set_lr(optimizer, cosine_lr((epoch - 1) * steps_per_epoch + i, lr, max(1, total // 10), total, 0.0))
            logits = head(train.head_inputs(model, idx, device))
            targets = y[idx.to(y.device)]
            loss = F.binary_cross_entropy_with_logits(logits, targets.float()) if model.multi_label else \
                F.cross_entropy(logits, targets, ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        trained.eval()
        with torch.no_grad():
            value = valid_value(probe_logits(model, valid))
        history.append({"epoch": epoch, "train_loss": loss.item(), "valid_value": list(value)})
        if best is None or value > best["value"]:
            best = {"value": value, "epoch": epoch, "state": {k: v.clone() for k, v in trained.state_dict().items()}}
    trained.load_state_dict(best["state"])
    return best, history


def probe_modules(model: AudioClassifier) -> nn.ModuleList:
    """What a frozen probe trains: the head, and the attention pool if it has one."""
    return nn.ModuleList(m for m in (model.head, model.attention_pool) if m is not None)


def frozen_probe(model: AudioClassifier, store, task: Task, vocab: list[str], read_split: dict, keep: dict,
                 max_frames: int, eval_mode: str, layer_choice: str, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int, eval_batch_size: int = 32, accelerator=None,
                 roles: tuple[str, ...] = ("train", "valid", "test")) -> dict:
    """Encode every clip of train/valid/test, train the head (and the attention pool, if any) on each candidate layer,
    keep the layer and epoch best on valid; sets model.probe_layer and the head. Returns {'layer', 'epoch', 'history',
    'valid_by_layer', 'valid', 'test'} (valid/test as `split_result`; test only when in `roles`)."""
    model.eval()
    is_main = accelerator is None or accelerator.is_main_process
    metas, encode = {}, dict(max_frames=max_frames, mode=eval_mode, batch_size=eval_batch_size, accelerator=accelerator)
    samples = lambda role: split_samples(store, read_split[role], keep[role])  # noqa: E731
    if model.attention_pool is None:  # one pass: every layer's pooled embedding (mean, or mean and std)
        pooled = {}
        for role in roles:
            metas[role], pooled[role] = layer_features(model, samples(role), desc=f"features {role}", **encode)

        def inputs(layer: str) -> dict[str, ClipSet]:
            i = layer_index(layer, model.config.n_global_layers)
            return {role: ClipSet(list(f[:, i])) for role, f in pooled.items()}
    else:  # one pass per layer: its frame states
        def inputs(layer: str) -> dict[str, ClipSet]:
            model.probe_layer = layer
            clips = {}
            for role in roles:
                metas[role], frames = frame_features(model, samples(role), desc=f"frames {role} (layer {layer})",
                                                     **encode)
                clips[role] = ClipSet(frames)
            return clips

    def valid_value(logits: torch.Tensor) -> tuple[float, float]:
        r = split_result(model, task, metas["valid"], logits.float().cpu().numpy(), vocab)
        return tuple(-math.inf if math.isnan(v) else v for v in (r["metrics"][task.main_metric], -r["loss"]))

    fits, kept = {}, None  # kept: the best layer so far and its inputs, for the final scores
    for layer in candidate_layers(layer_choice, model.config.n_global_layers):
        clips = inputs(layer)
        y = torch.from_numpy(task.encode(metas["train"], vocab)).to(next(model.head.parameters()).device)
        fits[layer] = train_head(model, clips["train"], y, clips["valid"], valid_value, epochs, batch_size, lr,
                                 weight_decay, seed, desc=f"probe (layer {layer})" if is_main else None)
        if kept is None or fits[layer][0]["value"] > fits[kept[0]][0]["value"]:
            kept = layer, clips
    layer, clips = kept
    best, history = fits[layer]
    model.probe_layer = layer
    probe_modules(model).load_state_dict(best["state"])
    with torch.no_grad():
        results = {role: split_result(model, task, metas[role], probe_logits(model, clips[role]).float().cpu().numpy(),
                                      vocab)
                   for role in roles if role != "train"}
    return {"layer": layer, "epoch": best["epoch"], "history": history, **results,
            "valid_by_layer": {k: fit[0]["value"][0] for k, fit in fits.items()}}
