"""Transformer building blocks shared by the Mega-AudioFormer encoders, the flat baseline and the classifier, and
their initialisation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (L, head_dim)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): q·k then depends only on the position offset."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}: change width or heads")
        self.head_dim, self.base = head_dim, base

    def forward(self, positions: torch.Tensor) -> Rope:
        # computed in fp32 on every call (cheap), so no buffer is cast to bf16 or saved in checkpoints
        exponents = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=torch.float32) / self.head_dim
        freqs = torch.outer(positions.float(), self.base**-exponents)  # (L, head_dim / 2)
        freqs = torch.cat([freqs, freqs], dim=-1)  # (L, head_dim)
        return freqs.cos(), freqs.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """x: (..., L, head_dim), rotated by the angles of its L positions."""
    cos, sin = (r.to(x.dtype) for r in rope)
    return x * cos + rotate_half(x) * sin


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of x: (B, L, D) counting only valid: (B, L) positions -> (B, D)."""
    if valid is None:
        return x.mean(dim=1)
    weights = valid.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_mean_std(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) over valid (B, L) positions -> (B, 2D): the mean and the standard deviation of every feature."""
    mean = masked_mean(x, valid)
    variance = masked_mean((x - mean[:, None]) ** 2, valid)
    return torch.cat([mean, (variance + 1e-6).sqrt()], dim=-1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention; padded keys are hidden from every query."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"width {dim} is not divisible by {n_heads} heads: pick a head count that divides it")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: Rope, valid: torch.Tensor | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        # None keeps SDPA on its fused (flash) kernel; a bool mask (B, 1, 1, L) hides padded keys.
        attn_mask = None if valid is None else valid[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = rearrange(y, "b h l d -> b l (h d)")
        return self.resid_dropout(self.out_proj(y))


class SummaryMixing(nn.Module):
    """Linear-time SummaryMixing (Parcollet et al. 2023): each frame sees itself and the mean of all
    valid frames, so cost grows linearly with length and padded frames change nothing.

    A mean is blind to order: alone, this mixer is a set function (it takes `rope` only to share the mixers'
    signature). Both blocks that use it therefore carry a depthwise convolution over frames."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.local = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.summary = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.out_proj = nn.Linear(2 * dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: Rope, valid: torch.Tensor | None) -> torch.Tensor:
        summary = masked_mean(self.summary(x), valid)  # (B, D)
        summary = summary.unsqueeze(1).expand_as(x)  # (B, L, D)
        return self.resid_dropout(self.out_proj(torch.cat([self.local(x), summary], dim=-1)))


def make_mixer(mixer: str, dim: int, n_heads: int, dropout: float) -> nn.Module:
    if mixer == "attention":
        return SelfAttention(dim, n_heads, dropout)
    if mixer == "summary_mixing":
        return SummaryMixing(dim, dropout)
    raise ValueError(f"unknown mixer {mixer!r}: use 'attention' or 'summary_mixing'")


class DepthwiseConv(nn.Module):
    """One filter per channel over the sequence, x (B, L, C) -> (B, L, C). Padded positions are zeroed first, so
    a valid frame next to padding sees exactly the zeros it would see at the end of the same clip unpadded."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv kernel {kernel} must be odd, so that it is centred on its frame")
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if valid is not None:
            x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class ConvModule(nn.Module):
    """Conformer's convolution module (Gulati et al. 2020) without its BatchNorm, whose statistics would mix in
    padded frames: pointwise to 2D + GLU -> depthwise conv over frames -> GELU -> pointwise back to D."""

    def __init__(self, dim: int, kernel: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, 2 * dim)
        self.depthwise = DepthwiseConv(dim, kernel)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.dropout(self.out_proj(F.gelu(self.depthwise(F.glu(self.fc(x), dim=-1), valid))))


class ConvGatingMLP(nn.Module):
    """cgMLP (Sakuma et al. 2021; Branchformer's local branch): channel up-projection + GELU, then convolutional
    spatial gating (half of the channels, normed and filtered over frames by a depthwise conv, gate the other
    half), then down-projection."""

    def __init__(self, dim: int, ratio: int, kernel: int, dropout: float = 0.0):
        super().__init__()
        hidden = ratio * dim
        self.fc = nn.Linear(dim, hidden)
        self.gate_norm = nn.LayerNorm(hidden // 2)
        self.gate_conv = DepthwiseConv(hidden // 2, kernel)
        self.out_proj = nn.Linear(hidden // 2, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        content, gate = F.gelu(self.fc(x)).chunk(2, dim=-1)
        gate = self.gate_conv(self.gate_norm(gate), valid)
        return self.dropout(self.out_proj(content * gate))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim, bias=False)
        self.out_proj = nn.Linear(ratio * dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out_proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block whose token mixer is attention or SummaryMixing.

    With SummaryMixing the block also gets a convolution module after the mixer, as in the Conformer that
    SummaryMixing was introduced in (Parcollet et al. 2023) and the Conformer / Branchformer encoders of every
    SummaryMixing paper since: the summary carries global context, the depthwise convolution carries local order,
    which a mean over frames cannot (without it, shuffling the frames of a clip left its embedding unchanged)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0, mixer: str = "attention",
                 conv_kernel: int = 31):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = make_mixer(mixer, dim, n_heads, dropout)
        self.conv = None
        if mixer == "summary_mixing":
            self.conv_norm, self.conv = nn.LayerNorm(dim), ConvModule(dim, conv_kernel, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, rope: Rope, valid: torch.Tensor | None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), rope, valid)
        if self.conv is not None:
            x = x + self.conv(self.conv_norm(x), valid)
        return x + self.mlp(self.norm2(x))


class BranchformerBlock(nn.Module):
    """Branchformer (Peng et al. 2022): a global branch (attention or SummaryMixing) and a local cgMLP branch run in
    parallel on the pre-normed input, concatenated and projected back (the paper's concat merge), one residual.
    The cgMLP is the block's feed-forward part and its depthwise convolution carries local order."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0, mixer: str = "attention",
                 conv_kernel: int = 31):
        super().__init__()
        self.global_norm, self.local_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = make_mixer(mixer, dim, n_heads, dropout)
        self.cgmlp = ConvGatingMLP(dim, mlp_ratio, conv_kernel, dropout)
        self.merge = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: Rope, valid: torch.Tensor | None) -> torch.Tensor:
        global_branch = self.mixer(self.global_norm(x), rope, valid)
        local_branch = self.cgmlp(self.local_norm(x), valid)
        return x + self.dropout(self.merge(torch.cat([global_branch, local_branch], dim=-1)))


BLOCKS = {"transformer": Block, "branchformer": BranchformerBlock}


class Encoder(nn.Module):
    """A stack of blocks with rotary positions 0..L-1 and a final norm: x (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, depth: int, n_heads: int, mlp_ratio: int, dropout: float, mixer: str = "attention",
                 block: str = "transformer", conv_kernel: int = 31):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}: use one of {sorted(BLOCKS)}")
        self.rotary = Rotary(dim // n_heads)
        self.blocks = nn.ModuleList(BLOCKS[block](dim, n_heads, mlp_ratio, dropout, mixer, conv_kernel)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, all_layers: bool = False):
        """-> the final normed states (B, L, D); with all_layers, a list of every block's output (the last normed)."""
        rope = self.rotary(torch.arange(x.shape[1], device=x.device))
        states = []
        for block in self.blocks:
            x = block(x, rope, valid)
            states.append(x)
        states[-1] = self.norm(x)
        return states if all_layers else states[-1]


class LevelEmbedding(nn.Module):
    """A separate embedding table per codebook level, stored as one table: codes (..., n_q) -> (..., n_q, D)."""

    def __init__(self, n_q: int, vocab: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(n_q * vocab, dim)
        self.register_buffer("offsets", torch.arange(n_q) * vocab, persistent=False)  # level l starts at l*vocab

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table(codes + self.offsets)


class LevelHeads(nn.Module):
    """One output projection per codebook level: x (N, n_q, D) -> logits (N, n_q, V); `loss` scores selected
    tokens without ever holding all their logits."""

    def __init__(self, n_q: int, dim: int, vocab: int, chunk_rows: int = 4096):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_q, dim, vocab))
        self.chunk_rows = chunk_rows  # logits rows alive at once in `loss` (4096 x 1024 fp32 = 16 MB)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nqd,qdv->nqv", x, self.weight)

    def loss(self, x: torch.Tensor, select: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and accuracy (detached) of the selected tokens. x: (N, n_q, D), select: (N, n_q) bool,
        labels: (n_selected,) level by level: every selected level-0 token in order of N, then level 1, ...

        The logits are computed chunk_rows at a time, one level's weight per chunk, and each chunk is checkpointed:
        backward recomputes its logits instead of keeping them, so the (n_selected, V) logits, their log-softmax
        and their gradient are never all alive at once (at 12 kbps they were ~25% of a training step's peak)."""
        rows = x.transpose(0, 1)[select.T]  # (n_selected, D), grouped by level
        if rows.shape[0] == 0:  # nothing selected: a zero that still backpropagates
            zero = rows.sum() * 0.0 + self.weight.sum() * 0.0
            return zero, zero.detach()
        sizes, weights = [], []
        for weight, count in zip(self.weight.unbind(0), select.sum(dim=0).tolist()):
            full, rest = divmod(count, self.chunk_rows)
            pieces = [self.chunk_rows] * full + ([rest] if rest else [])
            sizes += pieces
            weights += [weight] * len(pieces)
        recompute = torch.is_grad_enabled() and (rows.requires_grad or self.weight.requires_grad)
        loss_sum, correct = rows.new_zeros((), dtype=torch.float32), 0
        # split (not slicing) so that backward assembles the gradient of rows once, not once per chunk
        for chunk, weight, chunk_labels in zip(rows.split(sizes), weights, labels.split(sizes)):
            if recompute:
                chunk_loss, chunk_correct = checkpoint(chunk_scores, chunk, weight, chunk_labels, use_reentrant=False)
            else:
                chunk_loss, chunk_correct = chunk_scores(chunk, weight, chunk_labels)
            loss_sum, correct = loss_sum + chunk_loss, correct + chunk_correct
        return loss_sum / len(labels), (correct / len(labels)).float().detach()


def chunk_scores(rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows: (n, D) @ weight: (D, V) -> (summed cross-entropy in fp32, number of correct argmax predictions)."""
    logits = (rows @ weight).float()  # (n, V)
    return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(dim=-1) == labels).sum()


def attention_valid_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask the blocks get: None when nothing is padded (flash path), else (B, L) bool.

    A sequence with no valid position at all would turn its softmax rows into NaN; it is treated
    as fully valid instead (its outputs are meaningless, and never used)."""
    if padding_mask is None or bool(padding_mask.all()):
        return None
    return padding_mask | ~padding_mask.any(dim=1, keepdim=True)


def init_weights(module: nn.Module, depth: int) -> None:
    """nanoGPT init: N(0, 0.02), residual projections scaled down by sqrt(2 * depth)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith("out_proj.weight"):
            nn.init.normal_(p, std=0.02 / (2 * depth) ** 0.5)
