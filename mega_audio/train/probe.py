"""Frozen probes (`mega-audio finetune --freeze`): the encoder runs once per clip, the head trains on cached features.

A frozen encoder gives a clip the same features in every epoch, so running it again at each step (as fine-tuning
must) only burns compute: caching makes a probe cost one pass over the data. Caching every layer at once also makes
`--probe-layer best` (the layer that scores best on valid) nearly free. Clips longer than the window are read as
consecutive windows whose features are averaged (`--eval-mode chunks`), at training time too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import Sample
from ..data.tasks import Task, split_samples
from ..models.classifier import AudioClassifier, select_layer
from .inference import clip_outputs, split_result
from .loop import cosine_lr, set_lr

PROBE_LAYERS = ("last", "mean", "best")  # or a layer number 1..n_global_layers


def layer_features(model: AudioClassifier, samples: Iterable[Sample], max_frames: int | None, mode: str,
                   batch_size: int, accelerator=None, desc: str | None = None) -> tuple[list[dict], torch.Tensor]:
    """(metas, features (N, n_layers, d_global)) of every clip; with several processes each encodes every
    world_size-th clip and all of them get the gathered result."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    n_layers, dim = model.config.n_global_layers, model.config.d_global
    fn = lambda codes, mask: model.layer_embeddings(codes, mask).flatten(1)  # noqa: E731  (B, n_layers * D)
    mine = list(clip_outputs(fn, (s for i, s in enumerate(samples) if i % world == rank), model.config.pad_id,
                             max_frames, mode, batch_size, device, desc if rank == 0 else None))
    if world > 1:
        from accelerate.utils import gather_object
        mine = gather_object(mine)
    features = torch.from_numpy(np.stack([f for _, f in mine])) if mine else torch.zeros(0, n_layers * dim)
    return [m for m, _ in mine], features.float().view(-1, n_layers, dim)


def candidate_layers(choice: str, n_layers: int) -> list[str]:
    return ["mean", *(str(i) for i in range(1, n_layers + 1))] if choice == "best" else [choice]


def train_head(model: AudioClassifier, x: torch.Tensor, y: torch.Tensor, valid_x: torch.Tensor,
               valid_value: Callable[[torch.Tensor], tuple], epochs: int, batch_size: int, lr: float,
               weight_decay: float, seed: int) -> tuple[dict, list[dict]]:
    """Train model.head from fresh weights on cached clip embeddings x (N, D); keep the epoch whose valid logits
    valid_value ranks highest. Returns (best {'value', 'epoch', 'state'}, history)."""
    head = model.head
    torch.manual_seed(seed)
    for m in head.modules():
        if m is not head and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch, best, history = math.ceil(len(x) / batch_size), None, []
    total = epochs * steps_per_epoch
    for epoch in range(1, epochs + 1):
        head.train()
        for i, idx in enumerate(torch.randperm(len(x), generator=generator).split(batch_size)):
            set_lr(optimizer, cosine_lr((epoch - 1) * steps_per_epoch + i, lr, max(1, total // 10), total, 0.0))
            logits = head(x[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y[idx].float()) if model.multi_label else \
                F.cross_entropy(logits, y[idx], ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            value = valid_value(head(valid_x))
        history.append({"epoch": epoch, "train_loss": loss.item(), "valid_value": list(value)})
        if best is None or value > best["value"]:
            best = {"value": value, "epoch": epoch, "state": {k: v.clone() for k, v in head.state_dict().items()}}
    head.load_state_dict(best["state"])
    return best, history


def frozen_probe(model: AudioClassifier, store, task: Task, vocab: list[str], read_split: dict, keep: dict,
                 max_frames: int, eval_mode: str, layer_choice: str, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int, eval_batch_size: int = 32, accelerator=None,
                 roles: tuple[str, ...] = ("train", "valid", "test")) -> dict:
    """Encode every clip of train/valid/test once (all layers), train the head for each candidate layer, keep the
    layer and epoch best on valid; sets model.probe_layer and the head. Returns {'layer', 'epoch', 'history',
    'valid_by_layer', 'valid', 'test'} (valid/test as `split_result`; test only when in `roles`)."""
    model.eval()
    metas, features = {}, {}
    for role in roles:
        samples = split_samples(store, read_split[role], keep[role])
        metas[role], features[role] = layer_features(model, samples, max_frames, eval_mode, eval_batch_size,
                                                     accelerator, desc=f"features {role}")
    device = next(model.head.parameters()).device
    features = {k: v.to(device) for k, v in features.items()}
    y = torch.from_numpy(task.encode(metas["train"], vocab)).to(device)

    def valid_value(logits: torch.Tensor) -> tuple[float, float]:
        r = split_result(model, task, metas["valid"], logits.float().cpu().numpy(), vocab)
        return tuple(-math.inf if math.isnan(v) else v for v in (r["metrics"][task.main_metric], -r["loss"]))

    fits = {}
    for layer in candidate_layers(layer_choice, model.config.n_global_layers):
        x = {role: select_layer(f, layer) for role, f in features.items()}
        fits[layer] = train_head(model, x["train"], y, x["valid"], valid_value, epochs, batch_size, lr,
                                 weight_decay, seed)
    layer = max(fits, key=lambda k: fits[k][0]["value"])
    best, history = fits[layer]
    model.probe_layer = layer
    model.head.load_state_dict(best["state"])
    with torch.no_grad():
        results = {role: split_result(model, task, metas[role],
                                      model.head(select_layer(features[role], layer)).float().cpu().numpy(), vocab)
                   for role in roles if role != "train"}
    return {"layer": layer, "epoch": best["epoch"], "history": history, **results,
            "valid_by_layer": {k: fit[0]["value"][0] for k, fit in fits.items()}}
