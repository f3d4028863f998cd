"""Encodec 24 kHz through `transformers.EncodecModel`: weight loading (HF dir, hub id or Meta `.th`), a bounded-memory
streaming encoder that gives HF's codes, and the codebook seeding that makes a random Encodec usable in tests.

Why transformers' port and not Meta's `encodec` package: see docs/architecture.md ("Codecs"). A little over 300
lines: the weight loader, the encoder and its helpers are one job (Encodec in, codes out) and read best together."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import BITRATE_TO_NQ, HOP, SAMPLE_RATE, Codec, CodecWeightsError

DEFAULT_ENCODEC = "facebook/encodec_24khz"


def default_codec() -> str:
    """"encodec" when the default Encodec weights are in the Hugging Face cache (no network needed), else "bestrq"."""
    from huggingface_hub import try_to_load_from_cache

    cached = [try_to_load_from_cache(DEFAULT_ENCODEC, name) for name in ("config.json", "model.safetensors")]
    return "encodec" if all(isinstance(path, str) for path in cached) else "bestrq"


# ---------------------------------------------------------------- Encodec weights

def load_encodec_model(weights: str):
    """An EncodecModel from a Meta `.th` checkpoint, a local HF model dir, or an HF hub id (cache first)."""
    from transformers import EncodecConfig, EncodecModel

    path = Path(weights).expanduser()
    if path.is_file():
        model = EncodecModel(EncodecConfig())  # Meta's 24 kHz checkpoint = the HF default config
        state = _meta_to_hf_state(_read_checkpoint(path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CodecWeightsError(f"{path} is not an encodec_24khz checkpoint: missing keys "
                                    f"{missing[:3]}, unexpected keys {unexpected[:3]}")
        return model
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CodecWeightsError(f"{path} has no config.json: " + _no_weights_message(weights))
        try:
            return EncodecModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CodecWeightsError(f"cannot load an Encodec from {path}: {err}") from err
    if not _is_hub_id(weights):
        raise CodecWeightsError(_no_weights_message(weights))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    try:  # the HF cache first; the hub only when online
        return EncodecModel.from_pretrained(weights, local_files_only=True)
    except OSError as err:
        if offline:
            raise CodecWeightsError(_no_weights_message(weights)) from err
    try:
        return EncodecModel.from_pretrained(weights)
    except OSError as err:
        raise CodecWeightsError(_no_weights_message(weights)) from err


def _is_hub_id(weights: str) -> bool:
    parts = weights.split("/")
    return len(parts) == 2 and all(parts) and not weights.startswith((".", "~"))


def _no_weights_message(weights: str) -> str:
    return (f"no Encodec weights at {weights!r} (offline, or not in the Hugging Face cache?): pass "
            "--codec-weights with a local HF model dir (config.json + model.safetensors) or Meta's "
            "encodec_24khz-*.th checkpoint, or use --codec bestrq (weight-free)")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise CodecWeightsError(f"cannot read {path} as a torch checkpoint: {err}") from err
    for key in ("best_state", "state_dict", "model"):  # some releases nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CodecWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


META_TO_HF = [  # Meta's encodec package layout -> transformers' layout (docs/architecture.md)
    ("quantizer.vq.layers.", "quantizer.layers."), ("._codebook.", ".codebook."),
    ("encoder.model.", "encoder.layers."), ("decoder.model.", "decoder.layers."),
    (".conv.conv.", ".conv."), (".convtr.convtr.", ".conv."),
    (".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"),
]


def _meta_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for old, new in META_TO_HF:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def encodec_fingerprint(model) -> str:
    """sha256 of everything that decides the codes (encoder + codebooks), in the HF layout, before folding."""
    digest = hashlib.sha256(b"encodec")
    state = model.state_dict()
    for key in sorted(k for k in state if k.startswith("encoder.") or k.endswith("codebook.embed")):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def fold_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace weight-norm parametrizations by the plain weights they compute (else every forward recomputes them)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


# ---------------------------------------------------------------- Encodec encoding

class EncodecCodec(Codec):
    """transformers' Encodec, encoder + RVQ only, streamed in time so memory and cache use stay bounded.

    Codes equal HF `EncodecModel.encode` on the same clip (checked in tests) because nothing is cut
    without its context:
    - the convolution stack is causal with a finite receptive field (~480 samples at 24 kHz). It runs
      on tiles of `tile_seconds` (cache-sized: ~1.4x faster on CPU than whole 10 s clips) that start on a
      frame boundary and carry `context` samples of real left audio >= that receptive field; the
      context's frames are dropped, so tile edges change no code;
    - the LSTM runs over `lstm_frames` segments carrying its (h, c) state, so it sees the whole file;
    - the quantizer is per frame.
    A 10-minute song therefore costs ~20 bytes per sample (input, features, codes), not the ~1 KB per
    sample of the full-resolution activations. The only differences to one-shot encoding are float
    summation order (a rare argmax tie flips a code; the measured agreement is in the report/tests)
    and, in a batch, the last partial frame of a clip shorter than the longest: it sees zeros after its
    end instead of Encodec's reflect padding.
    """

    name = "encodec"

    MIN_TILE_SECONDS = 0.5  # the 640-sample context costs 5% here

    def __init__(self, model, bandwidth: float, device: str = "cpu", source: str = DEFAULT_ENCODEC,
                 tile_seconds: float | None = None, lstm_frames: int = 2250,
                 max_batch_samples: int = 600 * SAMPLE_RATE, compile: bool = False):
        from transformers.models.encodec.modeling_encodec import EncodecLSTM

        config = model.config
        if (config.sampling_rate, config.hop_length, config.normalize, config.use_causal_conv, config.norm_type,
                config.pad_mode) != (SAMPLE_RATE, HOP, False, True, "weight_norm", "reflect"):
            raise CodecWeightsError("only the causal 24 kHz Encodec (encodec_24khz's config) is supported")
        self.bandwidth, self.n_q, self.device, self.source = bandwidth, BITRATE_TO_NQ[bandwidth], device, source
        self.fingerprint = encodec_fingerprint(model)
        self.model = fold_weight_norm(model).eval().to(device)
        layers = list(self.model.encoder.layers)
        lstm_at = next(i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM))
        self.conv_stack, self.lstm, self.head = layers[:lstm_at], layers[lstm_at].lstm, layers[lstm_at + 1:]
        self.context = HOP * math.ceil(_causal_history(self.conv_stack) / HOP)
        # Audio per conv-stack call, over the whole batch. CPU: ~2 s keeps activations in cache (measured
        # 35x vs 24x real time for whole 10 s clips); GPU: big calls keep the device busy.
        self.tile_seconds = tile_seconds or (2.0 if device == "cpu" else 300.0)
        self.lstm_frames, self.max_batch_samples = lstm_frames, max_batch_samples
        # torch.compile fuses the ELU/pad/add passes around the convolutions (~1.2x on CPU) but costs
        # 10-30 s per process and may flip rare codes (other float rounding): worth it for long runs only.
        self.conv_stack_fn = _compiled_or_eager(_run_conv_stack) if compile else _run_conv_stack

    def params(self) -> dict:
        return {"weights": self.source}

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        out = [np.zeros((0, self.n_q), np.int16) for _ in waves]
        todo = [i for i, w in enumerate(waves) if len(w)]
        for group in _batches_by_budget([len(waves[i]) for i in todo], self.max_batch_samples):
            batch = [todo[j] for j in group]
            for i, codes in zip(batch, self._encode_batch([waves[i] for i in batch])):
                out[i] = codes
        return out

    def _encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        lengths = [len(w) for w in waves]
        x = torch.zeros(len(waves), 1, max(lengths), device=self.device)  # right-padded: (B, 1, L)
        for b, w in enumerate(waves):
            x[b, 0, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
        features = self._conv_stack_tiled(x)  # (B, 512, T)
        embeddings = self._lstm_and_head(features)  # (B, 128, T)
        codes = torch.cat([self.model.quantizer.encode(embeddings[..., t : t + self.lstm_frames], self.bandwidth)
                           for t in range(0, embeddings.shape[-1], self.lstm_frames)], dim=-1)  # (n_q, B, T)
        codes = codes.permute(1, 2, 0).to(torch.int16).cpu().numpy()  # (B, T, n_q)
        return [codes[b, : self.n_frames(n)] for b, n in enumerate(lengths)]

    def _conv_stack_tiled(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, length = x.shape
        tile = HOP * int(max(self.tile_seconds / batch, self.MIN_TILE_SECONDS) * SAMPLE_RATE / HOP)
        frames = []
        for start in range(0, length, tile):
            lo = max(0, start - self.context)  # real left audio, never padding
            h = self.conv_stack_fn(self.conv_stack, x[..., lo : start + tile])
            frames.append(h[..., (start - lo) // HOP :])  # drop the context's frames
        return torch.cat(frames, dim=-1)

    def _lstm_and_head(self, features: torch.Tensor) -> torch.Tensor:
        seq = features.permute(2, 0, 1)  # (T, B, 512), as EncodecLSTM does
        state, outs = None, []
        for t in range(0, seq.shape[0], self.lstm_frames):
            chunk = seq[t : t + self.lstm_frames]
            y, state = self.lstm(chunk, state)
            outs.append(y + chunk)  # EncodecLSTM's skip connection
        h = torch.cat(outs).permute(1, 2, 0)  # (B, 512, T)
        for layer in self.head:
            h = layer(h)
        return h


def _compiled_or_eager(fn):
    """torch.compile(fn), falling back to fn itself if compilation fails (no C++ compiler, unsupported op)."""
    compiled = torch.compile(fn, dynamic=True)

    def run(*args):
        nonlocal compiled
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 (inductor raises many kinds; eager still gives the codes)
            warnings.warn(f"torch.compile failed, encoding without it: {type(err).__name__}: {err}")
            compiled = fn
            return fn(*args)

    return run


def _run_conv_stack(layers, x: torch.Tensor) -> torch.Tensor:
    """The SEANet layers before the LSTM, computed as HF's modules do (bit for bit) with less overhead."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d

    for layer in layers:
        if isinstance(layer, torch.nn.ELU):
            x = F.elu(x)
        elif isinstance(layer, EncodecConv1d):
            x = _causal_conv(layer.conv, x)
        else:  # EncodecResnetBlock: (ELU, conv) x 2 plus a 1x1 conv shortcut
            h = x
            for sub in layer.block:
                h = F.elu(h) if isinstance(sub, torch.nn.ELU) else _causal_conv(sub.conv, h)
            x = (_causal_conv(layer.shortcut.conv, x) if isinstance(layer.shortcut, EncodecConv1d) else x) + h
    return x


def _causal_conv(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """EncodecConv1d.forward for the causal 24 kHz model: reflect-pad (kernel - stride) on the left, and on the
    right up to a whole number of strides, with int arithmetic and a copy instead of the slower reflect kernel."""
    stride = conv.stride[0]
    left = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1 - stride
    length = x.shape[-1]
    right = -length % stride
    if right == 0 and left < length:
        x = torch.cat([x[..., 1 : left + 1].flip(-1), x], dim=-1) if left else x
    else:  # a ragged end or a very short input: reflect needs length > pad, so zero-extend first (as HF does)
        extra = max(0, max(left, right) - length + 1)
        x = F.pad(F.pad(x, (0, extra)), (left, right), mode="reflect")[..., : left + length + right]
    return F.conv1d(x, conv.weight, conv.bias, stride, 0, conv.dilation[0])


def _causal_history(layers) -> int:
    """Input samples of left context any output of these causal convolutions can depend on."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d

    rate, history = 1, 0
    for layer in layers:
        for conv in (m for m in layer.modules() if isinstance(m, EncodecConv1d)):
            history += int(conv.padding_total) * rate  # (effective kernel - stride) inputs at this rate
            rate *= int(conv.stride)
    return history


def _batches_by_budget(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups whose padded size (count x longest) stays within budget samples."""
    groups, current, longest = [], [], 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > budget:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    return groups + [current] if current else groups


def seed_codebooks(model, waves: list[np.ndarray], seed: int = 0) -> None:
    """Make a randomly initialised EncodecModel a usable stand-in for trained weights (tests, benchmarks).

    HF zero-inits the codebooks, so every code would be 0. A random encoder's frames are also badly
    conditioned (a large offset, tiny variation), so float noise flips codes. On the frames of `waves`:
    standardise the last convolution's outputs, then make level k's 1024 codes random residuals of
    levels < k plus 0.3 per-dimension std of jitter (no frame is its own code; later levels keep a residual).
    """
    from torch.nn.utils import parametrize

    g = torch.Generator().manual_seed(seed)
    last = model.encoder.layers[-1].conv
    with torch.inference_mode():
        frames = torch.cat([model.encoder(torch.as_tensor(w, dtype=torch.float32)[None, None])[0].T
                            for w in waves])  # (N frames, 128)
        mean, std = frames.mean(0), frames.std(0) + 1e-8
        if parametrize.is_parametrized(last, "weight"):  # weight = g * v / |v|, g per output channel
            last.parametrizations.weight.original0.div_(std[:, None, None])
        else:
            last.weight.div_(std[:, None, None])
        last.bias.sub_(mean).div_(std)
        residual = (frames - mean) / std
        for layer in model.quantizer.layers:
            book = layer.codebook
            pick = torch.randint(len(residual), (book.embed.shape[0],), generator=g)
            jitter = 0.3 * residual.std(0) * torch.randn(book.embed.shape, generator=g)
            book.embed.copy_(residual[pick] + jitter)
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
            residual = residual - book.embed[book.quantize(residual)]
