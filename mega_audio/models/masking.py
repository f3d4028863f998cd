"""Masked token modelling: which tokens are masked (`mask_tokens`), the loss on them (`mlm_loss`) and the seeded
generator that makes a micro-batch's masks reproducible on resume. `IGNORE_INDEX` is defined here, once."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

IGNORE_INDEX = -100  # targets of tokens that are not masked (or are padding)


def mask_tokens(
    codes: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    ratio: float = 0.25,
    generator: torch.Generator | None = None,
    *,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace round(ratio * valid tokens) tokens of each clip (at least one) by mask_id.

    codes: (B, T, n_q), padding_mask: (B, T) True = valid frame. Returns (inputs, targets) where
    targets hold the original code at masked tokens and IGNORE_INDEX everywhere else."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} must be in (0, 1] (default 0.25)")
    codes = codes.long()
    B, T, n_q = codes.shape
    if padding_mask is None:
        padding_mask = torch.ones(B, T, dtype=torch.bool, device=codes.device)
    valid = repeat(padding_mask, "b t -> b (t q)", q=n_q)  # (B, T * n_q)
    device = generator.device if generator is not None else codes.device
    scores = torch.rand(B, T * n_q, generator=generator, device=device).to(codes.device)
    scores = scores.masked_fill(~valid, 2.0)  # padded tokens sort last and are never picked
    n_mask = (valid.sum(dim=1) * ratio).round().clamp(min=1)  # (B,)
    first_n = torch.arange(T * n_q, device=codes.device) < n_mask[:, None]  # (B, T * n_q)
    masked = torch.zeros_like(valid).scatter(1, scores.argsort(dim=1), first_n) & valid
    masked = rearrange(masked, "b (t q) -> b t q", q=n_q)
    return codes.masked_fill(masked, mask_id), codes.masked_fill(~masked, IGNORE_INDEX)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over masked tokens only. targets: (B, T, n_q); logits: (B, T, n_q, V) for
    every token, or (n_masked, V) for the masked ones level by level (what forward returns with targets)."""
    picked = targets.movedim(-1, 0) != IGNORE_INDEX  # (n_q, B, T): level-major, the order of masked logits
    if logits.dim() == 4:
        logits = logits.movedim(2, 0)[picked]
    logits, targets = logits.float(), targets.movedim(-1, 0)[picked]  # (n_masked, V), (n_masked,)
    if logits.shape[0] == 0:  # nothing masked: a zero that still backpropagates
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return F.cross_entropy(logits, targets), accuracy


def masking_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The masks of one micro-batch depend on (seed, rank, step, micro) only, so a resumed run masks the same tokens."""
    state = int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)
