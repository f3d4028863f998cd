"""A teacher's clusters as pre-training targets (`train/pretrain.py --teacher MODEL_DIR`): HuBERT's second iteration.

A masked codec token is a low-level target: at 1.5 kbps two codes per frame, picked to rebuild the waveform. HuBERT
pre-trains twice: the second run predicts, for every masked frame, which k-means cluster the *first* model's state of
that frame falls in. Those clusters group frames by what the first model learnt from their context rather than by
their raw codes, which is the kind of feature a probe wants. The teacher reads the unmasked clip; the student sees it
masked, so it must infer the teacher's view of the hidden frames.

The clusters are fitted when the run starts (k-means++ and Lloyd's iterations over the frame states of clips spread
evenly over the training split), seeded, so a resumed run on the same data fits the same ones (exactly so on CPU).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from ..data.store import TokenStore
from ..models.mega import GlobalEncoder, MegaAudioFormer
from .loop import check_codec


class ClusterTeacher(nn.Module):
    """A frozen global encoder and k centroids of its last layer's frame states: codes -> each frame's cluster."""

    def __init__(self, encoder: GlobalEncoder, centroids: torch.Tensor):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.register_buffer("centroids", centroids.float())

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    @torch.no_grad()
    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) unmasked -> (B, T) cluster ids (padded frames get one too; losses skip them)."""
        states = self.encoder(codes, padding_mask).float()
        return nearest_centroid(states.flatten(0, 1), self.centroids).view(states.shape[:2])


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N,) the index of each row's nearest centroid (squared Euclidean distance)."""
    distances = x.square().sum(-1, keepdim=True) - 2 * x @ centroids.T + centroids.square().sum(-1)
    return distances.argmin(-1)


def kmeans(x: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """(N, D) points -> (k, D) centroids: k-means++ seeding, then Lloyd's iterations (an emptied cluster keeps its
    centroid)."""
    if len(x) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} frames, got {len(x)}: pass fewer --teacher-clusters "
                         "or more data")
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    closest = (x - centroids[0]).square().sum(-1)
    for _ in range(k - 1):  # each next seed drawn with probability proportional to its squared distance
        new = x[torch.multinomial(closest / closest.sum(), 1, generator=generator)]
        centroids = torch.cat([centroids, new])
        closest = torch.minimum(closest, (x - new[0]).square().sum(-1))
    for _ in range(iterations):
        assignment = nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(-1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids.float()


def spread_clips(stores: list[TokenStore], split: str, n_clips: int, max_frames: int) -> list[torch.Tensor]:
    """Up to n_clips clips' codes (each its first max_frames frames), every store's split sampled at an even stride.
    Only the shards that hold a picked clip are read, each up to its last pick: on a store of millions of clips the
    teacher's start-up reads a few hundred clips, not the store."""
    clips = []
    for store in stores:
        shards = store.shards(split)
        stride = max(1, sum(s.n for s in shards) * len(stores) // n_clips)
        first = 0  # the store-wide index of the shard's first clip
        for shard in shards:
            picks = range(-first % stride, shard.n, stride)[:n_clips - len(clips)]  # store-wide multiples of stride
            samples = islice(store.iter_samples(split, [shard]), picks[-1] + 1) if picks else ()
            clips += [torch.from_numpy(codes[:max_frames].astype("int64"))
                      for i, (codes, _) in enumerate(samples) if i in picks]
            first += shard.n
    return clips


def fit_teacher(model_dir: str | Path, stores: list[TokenStore], split: str, n_clusters: int, max_frames: int,
                seed: int, n_clips: int = 256, batch_size: int = 32,
                device: torch.device | str = "cpu") -> ClusterTeacher:
    """The teacher's global encoder (from a pre-trained export) and k-means of its frame states over up to n_clips
    clips of the training split."""
    teacher = MegaAudioFormer.from_pretrained(model_dir)
    check_codec(teacher.metadata.get("codec"), stores[0].card["codec"], model_dir, [str(s.path) for s in stores])
    teacher.config.check_data(stores[0].n_q, stores[0].codebook_size)  # for an export that records no codec
    encoder = teacher.global_encoder.to(device).eval()
    clips, states = spread_clips(stores, split, n_clips, max_frames), []
    with torch.no_grad():
        for i in tqdm(range(0, len(clips), batch_size), desc="teacher states", unit="batch", leave=False):
            batch = clips[i:i + batch_size]
            lengths = torch.tensor([len(c) for c in batch])
            valid = torch.arange(int(lengths.max()))[None] < lengths[:, None]  # (B, T) True = a real frame
            codes = pad_sequence(batch, batch_first=True, padding_value=teacher.config.pad_id)
            frames = encoder(codes.to(device), valid.to(device)).float().cpu()
            states.append(frames[valid])
    return ClusterTeacher(encoder, kmeans(torch.cat(states), n_clusters, seed=seed)).to(device)
