"""Audio codecs that turn 24 kHz mono waveforms into int16 token grids (T, n_q) at 75 Hz."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BITRATE_TO_NQ = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
DEFAULT_ENCODEC = "facebook/encodec_24khz"
SAMPLE_RATE, HOP, CODEBOOK_SIZE = 24_000, 320, 1024


class CodecWeightsError(RuntimeError):
    """The codec's weights could not be found or do not fit the model."""


class Codec:
    """One interface for every codec: encode(waves) -> [int16 (ceil(len/320), n_q)]."""

    name: str
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP
    frame_rate: float = SAMPLE_RATE / HOP
    codebook_size: int = CODEBOOK_SIZE
    bandwidth: float
    n_q: int
    fingerprint: str

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_length)

    def params(self) -> dict:
        """Codec-specific fields for the store card."""
        return {}

    def card(self) -> dict:
        return dict(name=self.name, fingerprint=self.fingerprint, sample_rate=self.sample_rate,
                    frame_rate=self.frame_rate, hop_length=self.hop_length, bandwidth=self.bandwidth,
                    n_q=self.n_q, codebook_size=self.codebook_size, **self.params())


def load_codec(name: str, bitrate: float, weights: str | None = None, device: str | None = None) -> Codec:
    """Build a codec by name ("encodec" or "bestrq") at a bitrate in BITRATE_TO_NQ (kbps)."""
    if float(bitrate) not in BITRATE_TO_NQ:
        raise ValueError(f"bitrate {bitrate} kbps is not one of {sorted(BITRATE_TO_NQ)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        _use_available_cores()
    if name == "encodec":
        return EncodecCodec(load_encodec_model(weights or DEFAULT_ENCODEC), float(bitrate), device,
                            source=weights or DEFAULT_ENCODEC)
    if name == "bestrq":
        return BestRQCodec(float(bitrate), device=device)
    raise ValueError(f"unknown codec {name!r}: use 'encodec' or 'bestrq'")


def _use_available_cores() -> None:
    # torch counts the host's cores; in a container or under taskset fewer may be ours (oversubscription
    # makes matmuls several times slower).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


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
        return EncodecModel.from_pretrained(path, local_files_only=True)
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


META_TO_HF = [  # Meta's encodec package layout -> transformers' layout (DESIGN 2)
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
      on tiles of `tile_seconds` (cache-sized: ~2x faster on CPU than whole 10 s clips) that start on a
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

    def __init__(self, model, bandwidth: float, device: str = "cpu", source: str = DEFAULT_ENCODEC,
                 tile_seconds: float | None = None, lstm_frames: int = 2250, max_batch_samples: int = 600 * SAMPLE_RATE):
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
        # CPU: tiles of ~2 s of batch audio stay in cache; GPU: big tiles keep the device busy.
        self.tile_seconds = tile_seconds or (2.0 if device == "cpu" else 60.0)
        self.lstm_frames, self.max_batch_samples = lstm_frames, max_batch_samples

    def params(self) -> dict:
        return dict(weights=self.source)

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
        tile = HOP * max(1, int(self.tile_seconds * SAMPLE_RATE / batch) // HOP)
        frames = []
        for start in range(0, length, tile):
            lo = max(0, start - self.context)  # real left audio, never padding
            h = _run_conv_stack(self.conv_stack, x[..., lo : start + tile])
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
    """Give a randomly initialised EncodecModel usable codebooks (HF zero-inits them, so every code is 0).

    Level k's 1024 codes are random residuals (left by levels < k on the encoder frames of `waves`) plus
    jitter of 0.3 per-dimension std, so no frame is its own code and later levels keep a residual.
    For tests and benchmarks only: real weights come with trained codebooks.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        residual = torch.cat([model.encoder(torch.as_tensor(w, dtype=torch.float32)[None, None])[0].T
                              for w in waves])  # (N frames, 128)
        for layer in model.quantizer.layers:
            book = layer.codebook
            pick = torch.randint(len(residual), (book.embed.shape[0],), generator=g)
            jitter = 0.3 * residual.std(0) * torch.randn(book.embed.shape, generator=g)
            book.embed.copy_(residual[pick] + jitter)
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
            residual = residual - book.embed[book.quantize(residual)]


# ---------------------------------------------------------------- BEST-RQ

class BestRQCodec(Codec):
    """BEST-RQ random-projection quantizer (Chiu et al. 2022): weight-free, seeded, same token grid as Encodec.

    log-mel frames centred on each 320-sample hop -> per-clip normalisation -> `stack` neighbouring
    frames -> n_q frozen Xavier projections -> nearest of 1024 frozen standard-normal codes (both
    L2-normalised). Level k is the same at every bitrate, so 1.5 kbps codes are a prefix of 12 kbps ones.
    """

    name = "bestrq"
    VERSION = 1  # bump when the recipe changes: it is part of the fingerprint

    def __init__(self, bandwidth: float, seed: int = 0, n_mels: int = 80, n_fft: int = 1024, stack: int = 3,
                 codebook_dim: int = 16, device: str = "cpu", block_frames: int = 4096):
        self.bandwidth, self.n_q, self.device = bandwidth, BITRATE_TO_NQ[bandwidth], device
        self.seed, self.n_mels, self.n_fft, self.stack, self.codebook_dim = seed, n_mels, n_fft, stack, codebook_dim
        self.block_frames = block_frames
        self.fingerprint = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()
        projections, codebooks = self._random_params()
        self.projections = projections[: self.n_q].float().to(device)  # (n_q, n_mels * stack, dim)
        self.codebooks_t = codebooks[: self.n_q].mT.float().contiguous().to(device)  # (n_q, dim, 1024), unit columns
        self.score_frames = 64 if device == "cpu" else 4096
        self.window = torch.hann_window(n_fft, dtype=torch.float64).float().to(device)
        self.mel = mel_filterbank(n_mels, n_fft, SAMPLE_RATE).to(device)  # (n_fft // 2 + 1, n_mels)

    def params(self) -> dict:
        return dict(version=self.VERSION, seed=self.seed, n_mels=self.n_mels, n_fft=self.n_fft,
                    stack=self.stack, codebook_dim=self.codebook_dim)

    def _random_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn on the CPU in float64 from one seeded generator, for all 32 levels: same values on any machine.
        g = torch.Generator().manual_seed(self.seed)
        levels, fan_in = max(BITRATE_TO_NQ.values()), self.n_mels * self.stack
        bound = math.sqrt(6.0 / (fan_in + self.codebook_dim))  # Xavier uniform
        projections = (2 * torch.rand(levels, fan_in, self.codebook_dim, generator=g, dtype=torch.float64) - 1) * bound
        codebooks = torch.randn(levels, CODEBOOK_SIZE, self.codebook_dim, generator=g, dtype=torch.float64)
        return projections, F.normalize(codebooks, dim=-1)

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [self._encode_one(torch.as_tensor(w, dtype=torch.float32).to(self.device)) for w in waves]

    def _encode_one(self, wave: torch.Tensor) -> np.ndarray:
        n_frames = self.n_frames(len(wave))
        if n_frames == 0:
            return np.zeros((0, self.n_q), np.int16)
        feats = self._log_mel(wave, n_frames)  # (T, n_mels)
        feats = (feats - feats.mean(0)) / (feats.std(0, unbiased=False) + 1e-5)
        half = self.stack // 2
        padded = F.pad(feats.T[None], (half, self.stack - 1 - half), mode="replicate")[0].T  # (T + stack - 1, n_mels)
        stacked = padded.unfold(0, self.stack, 1).transpose(1, 2).reshape(n_frames, -1)  # (T, stack * n_mels)
        z = F.normalize(torch.einsum("tf,qfd->qtd", stacked, self.projections), dim=-1)  # (n_q, T, dim)
        codes = torch.empty(self.n_q, n_frames, dtype=torch.int64, device=self.device)
        step = self.score_frames  # small blocks keep the (n_q, step, 1024) scores in cache
        for t in range(0, n_frames, step):
            codes[:, t : t + step] = torch.bmm(z[:, t : t + step], self.codebooks_t).argmax(-1)
        return codes.T.to(torch.int16).cpu().numpy()  # (T, n_q)

    def _log_mel(self, wave: torch.Tensor, n_frames: int) -> torch.Tensor:
        # Frame t is centred on the middle of hop t, samples [t*320, (t+1)*320); zeros beyond the clip.
        left = self.n_fft // 2 - HOP // 2
        right = (n_frames - 1) * HOP + self.n_fft - left - len(wave)
        padded = F.pad(wave, (left, right))
        out = []
        for t in range(0, n_frames, self.block_frames):  # blocks bound the spectrogram's memory
            n = min(self.block_frames, n_frames - t)
            segment = padded[t * HOP : (t + n - 1) * HOP + self.n_fft]
            spec = torch.stft(segment, self.n_fft, HOP, window=self.window, center=False, return_complex=True)
            out.append(torch.log(spec.abs().square().T @ self.mel + 1e-6))  # (n, n_mels)
        return torch.cat(out)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels), each normalised to unit area (Slaney)."""
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))  # (n_mels + 2,)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)[:, None]  # (F, 1)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return torch.from_numpy(filters.astype(np.float32))
