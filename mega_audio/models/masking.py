"""Masked token modelling: which tokens are masked (`mask_tokens`: single tokens, whole frames or spans of frames),
the losses on them (`masked_token_loss`, which `mlm_loss` defines on full logits; `mel_loss` on stored
log-mel features; `contrastive_loss` between the two halves of a clip) and the seeded generator that makes a
micro-batch's masks reproducible on resume.

One contract for every unit: `mask_tokens` returns (inputs, targets), where inputs carry MASK at the masked
tokens and targets carry the original code there and IGNORE_INDEX everywhere else (unmasked or padded), so
the loss reads only the masked positions.

Why spans: at 75 frames/s a codec token is mostly predictable from its neighbours one frame away, so
masking single tokens teaches copying. Masking whole frames hides all the codebook levels of a moment
(the local encoder can no longer read level 0 to guess level 1), and masking spans of ~400 ms hides
whole events, which forces the global encoder to model context: the recipe of BEST-RQ, HuBERT and BEATs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .layers import LevelHeads, masked_mean

IGNORE_INDEX = -100  # target of a token the loss skips (not masked, or padding); defined here, once
MASK_UNITS = ("token", "frame", "span")


def span_frames(span_ms: float, frame_rate: float) -> int:
    """Frames in a span of span_ms milliseconds (at least one)."""
    return max(1, round(span_ms * frame_rate / 1000))


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws from the generator (on the generator's own device, which may differ from the data's) on
    `like`'s device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _random_count_mask(valid: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """Exactly round(ratio * valid count) (at least one) positions of each row, uniformly at random.
    valid: (B, L) bool -> (B, L) bool."""
    B, L = valid.shape
    scores = _uniform((B, L), generator, valid).masked_fill(~valid, 2.0)  # padding sorts last: never picked
    n_mask = (valid.sum(dim=1) * ratio).round().clamp(min=1)  # (B,)
    first_n = torch.arange(L, device=valid.device) < n_mask[:, None]
    return torch.zeros_like(valid).scatter(1, scores.argsort(dim=1), first_n) & valid


def _span_mask(valid: torch.Tensor, ratio: float, span: int, generator: torch.Generator | None) -> torch.Tensor:
    """Non-overlapping spans of `span` frames covering round(ratio * n / span) spans' worth of each clip's n valid
    frames (at least one span; a clip shorter than a span is masked whole). Spans are placed uniformly: n_spans
    sorted offsets in [0, n - n_spans * span], span i starting at offset_i + i * span. valid: (B, T) -> (B, T).

    Built for the whole batch at once from tensors on the device: reading a length or an offset on the host would
    stall the GPU at every micro-batch."""
    B, T = valid.shape
    n = valid.sum(dim=1)  # (B,) valid frames, a prefix of each row
    n_spans = torch.minimum((n * ratio / span).round().long(), n // span).clamp(min=1)  # (B,)
    free = (n - n_spans * span).clamp(min=0)[:, None]  # (B, 1) frames left unmasked, to place the gaps
    slot = torch.arange(max(1, T // span), device=valid.device)  # room for the most spans any row can hold
    used = slot < n_spans[:, None]  # (B, K)
    offsets = torch.minimum((_uniform(used.shape, generator, valid) * (free + 1)).long(), free)  # uniform in [0, free]
    offsets = offsets.masked_fill(~used, T).sort(dim=1).values  # sorted; unused slots last
    starts = offsets + slot * span  # (B, K)
    # +1 where a span starts, -1 where it ends, summed along time: 1 inside a span (spans never overlap), else 0.
    # Ends and unused slots past the clip land in one spare column, which is dropped.
    edges, weight = torch.zeros(B, T + 1, dtype=torch.long, device=valid.device), used.long()
    edges.scatter_add_(1, starts.clamp(max=T), weight).scatter_add_(1, (starts + span).clamp(max=T), -weight)
    return (edges[:, :T].cumsum(dim=1) > 0) & valid  # a clip shorter than a span: its one span, cut to the clip


def _start_prob_mask(valid: torch.Tensor, start_prob: float, span: int, generator: torch.Generator | None) -> torch.Tensor:
    """BEST-RQ / wav2vec 2.0 style: every valid frame starts a span with probability start_prob; spans may overlap
    and are cut at the clip's end (the masked share is then about 1 - (1 - p)^span). At least one frame is masked."""
    B, T = valid.shape
    starts = (_uniform((B, T), generator, valid) < start_prob) & valid
    # a frame is masked when a span started at most span - 1 frames before it: a running max over the starts
    covered = F.pad(starts.float(), (span - 1, 0))[:, None]  # (B, 1, T + span - 1)
    masked = (F.max_pool1d(covered, span, stride=1)[:, 0] > 0) & valid  # (B, T)
    empty = ~masked.any(dim=1) & valid.any(dim=1)  # rows where no span started: mask one random frame
    return masked | (_random_count_mask(valid, 0.0, generator) & empty[:, None])  # drawn for all: no host sync


def mask_tokens(
    codes: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    ratio: float = 0.25,
    generator: torch.Generator | None = None,
    *,
    mask_id: int,
    unit: str = "token",
    span: int = 30,
    start_prob: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask part of each clip and return (inputs with mask_id there, targets with IGNORE_INDEX elsewhere).

    codes: (B, T, n_q), padding_mask: (B, T) True = valid frame (valid frames first). unit:
      token: round(ratio * valid tokens) single tokens (at least one);
      frame: round(ratio * valid frames) whole frames, all n_q levels;
      span:  non-overlapping spans of `span` frames, ratio of the frames in all (or, with start_prob, every
             frame starts a span with that probability, BEST-RQ style). Padding is never masked."""
    if unit not in MASK_UNITS:
        raise ValueError(f"mask unit {unit!r}: use one of {MASK_UNITS}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} must be in (0, 1] (default 0.25)")
    codes = codes.long()
    B, T, n_q = codes.shape
    valid = torch.ones(B, T, dtype=torch.bool, device=codes.device) if padding_mask is None else padding_mask
    if unit == "token":
        flat = _random_count_mask(repeat(valid, "b t -> b (t q)", q=n_q), ratio, generator)  # (B, T * n_q)
        masked = flat.view(B, T, n_q)
    else:
        if unit == "frame":
            frames = _random_count_mask(valid, ratio, generator)
        elif start_prob:
            frames = _start_prob_mask(valid, start_prob, span, generator)
        else:
            frames = _span_mask(valid, ratio, span, generator)
        masked = repeat(frames, "b t -> b t q", q=n_q)
    return codes.masked_fill(masked, mask_id), codes.masked_fill(~masked, IGNORE_INDEX)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over masked tokens only, from every token's logits (B, T, n_q, V); targets:
    (B, T, n_q). The definition `masked_token_loss` computes without materialising the logits."""
    picked = targets != IGNORE_INDEX
    logits, targets = logits[picked].float(), targets[picked]  # (n_masked, V), (n_masked,)
    if logits.shape[0] == 0:  # nothing masked: a zero that still backpropagates
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return F.cross_entropy(logits, targets), accuracy


def masked_token_loss(heads: LevelHeads, states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy (detached) over the masked tokens, with the output heads run on those tokens only
    (nanoGPT's trick of computing only the logits it needs) and in chunks (`LevelHeads.loss`).
    states: (B * T, n_q, D) the heads' inputs, frame-major; targets: (B, T, n_q) from mask_tokens."""
    targets = rearrange(targets, "b t q -> (b t) q")
    select = targets != IGNORE_INDEX  # (B * T, n_q)
    return heads.loss(states, select, targets.T[select.T])  # labels level by level, the order of the heads' rows


def mel_loss(predicted: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
             padding_mask: torch.Tensor | None) -> torch.Tensor:
    """MSE between predicted and stored log-mel frames at the masked frames (any level masked).

    predicted, features: (B, T, n_mels); targets: (B, T, n_q) from mask_tokens. Each clip's log-mel is
    standardised by one mean and one std over its valid frames first: loudness drops out, the spectral
    envelope stays, and the loss is about 1 for a model that predicts the clip's mean."""
    features = features.float()
    mean = masked_mean(features, padding_mask).mean(-1)[:, None, None]  # one per clip, over valid frames and bins
    std = masked_mean((features - mean).square(), padding_mask).mean(-1).sqrt()[:, None, None]
    error = (predicted.float() - (features - mean) / (std + 1e-5)).square().mean(-1)  # (B, T)
    return masked_frame_mean(error, targets)


def masked_frame_mean(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean of per-frame values (B, T) over the masked frames (any level masked); targets: (B, T, n_q) from
    mask_tokens. Padded frames are never masked, so they never count."""
    masked = (targets != IGNORE_INDEX).any(dim=-1).float()  # (B, T); no host sync, 0 when nothing is masked
    return (values * masked).sum() / masked.sum().clamp(min=1.0)


def masked_frame_cross_entropy(logits: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-frame logits (B, T, K) against per-frame classes (B, T) at the masked frames."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), classes.flatten().long(), reduction="none")
    return masked_frame_mean(loss.view(classes.shape), targets)


def clip_halves(x: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (2B, T // 2, ...): every clip's first halves, then its second halves, as clips of their own.
    Two views of one clip for the contrastive loss: row i and row i + B come from the same clip."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, half:2 * half]])


def contrastive_loss(projections: torch.Tensor, padding_mask: torch.Tensor | None,
                     temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between the two halves of each clip (COLA, SimCLR): projections (2B, D) from clip_halves'
    rows, padding_mask (2B, T'). Each half must pick its partner out of the B other clips' halves. A pair with an
    empty half (a clip shorter than half the crop) is left out as anchor and as candidate."""
    first, second = F.normalize(projections.float(), dim=-1).chunk(2)
    kept = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    if padding_mask is not None:
        kept = padding_mask.any(dim=1).view(2, -1).all(dim=0)
    logits = (first @ second.T / temperature).masked_fill(~(kept[:, None] & kept[None, :]), -1e4)
    labels = torch.arange(first.shape[0], device=first.device)
    per_row = F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")
    return (per_row * kept).sum() / (2 * kept.sum().clamp(min=1))


def masking_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The masks of one micro-batch depend on (seed, rank, step, micro) only, so a resumed run masks the same tokens."""
    state = int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)
