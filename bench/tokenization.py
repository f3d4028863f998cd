"""Tokenizer speed: audio-seconds per wall-second for each codec and batch size, side by side in one run."""

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common import write_json

from mega_audio.codecs import BITRATE_TO_NQ, load_codec
from mega_audio.codecs.encodec import EncodecCodec, seed_codebooks

HERE = Path(__file__).resolve().parent

SR = 24_000


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A new harmonic note every 0.25 s over noisy drum hits: varied enough that no code path is trivially cheap."""
    t = np.arange(int(seconds * SR)) / SR
    pitch = 110 * 2 ** (rng.integers(0, 24, size=int(seconds * 4) + 1)[(t * 4).astype(int)] / 12)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    notes = sum(np.sin(k * phase) / k for k in range(1, 5))
    drums = rng.standard_normal(len(t)) * np.exp(-30 * (t % 0.5))
    return (0.2 * notes + 0.1 * drums).astype(np.float32)


def random_encodec(clips: list[np.ndarray]):
    """The 24 kHz Encodec architecture with random weights and codebooks filled from `clips` (speed ignores values)."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig()).eval()
    seed_codebooks(model, clips)
    return model


def clone(model):
    from transformers import EncodecModel

    copy = EncodecModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


class NaiveHF:
    """The baseline: HF EncodecModel.encode, one clip at a time, weight-norm recomputed on every forward."""

    def __init__(self, model, bandwidth: float, device: str):
        self.model, self.bandwidth, self.device = model.to(device), bandwidth, device

    def encode(self, waves):
        out = []
        with torch.no_grad():
            for w in waves:
                x = torch.from_numpy(w)[None, None].to(self.device)
                codes = self.model.encode(x, bandwidth=self.bandwidth).audio_codes[0, 0]  # (n_q, T)
                out.append(codes.T.to(torch.int16).cpu().numpy())
        return out


def in_batches(encode, clips: list[np.ndarray], batch: int) -> list[np.ndarray]:
    return [codes for i in range(0, len(clips), batch) for codes in encode(clips[i : i + batch])]


def throughput(encode, clips: list[np.ndarray], batch: int) -> float:
    """Audio-seconds per wall-second to encode all clips in batches of `batch`."""
    start = time.perf_counter()
    in_batches(encode, clips, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return sum(len(c) for c in clips) / SR / (time.perf_counter() - start)


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([(x == y).mean() for x, y in zip(a, b)]))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.machine()}, {os.cpu_count()} cores"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=8, help="clips per measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configs; the best round counts")
    parser.add_argument("--bitrates", type=float, nargs="+", default=[1.5, 12.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--long-seconds", type=float, default=40.0, help="clip for the streamed-vs-one-shot check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (~30 s to compile)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tokenization")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clips = [music(args.seconds, rng) for _ in range(args.clips)]
    load_before = load_average()
    model = random_encodec(clips[:2])

    codecs, fidelity, warmup = {}, {}, {}  # label -> (encode, batch sizes); label -> agreement with naive HF
    for bitrate in args.bitrates:
        naive = NaiveHF(clone(model), bitrate, args.device)
        reference = naive.encode(clips)
        codecs[f"naive HF encode @ {bitrate} kbps"] = (naive.encode, [1])
        ours = {f"encodec @ {bitrate} kbps": EncodecCodec(clone(model), bitrate, args.device)}
        if bitrate == args.bitrates[0] and not args.no_compile:  # bitrate only changes the (uncompiled) RVQ
            ours[f"encodec + torch.compile @ {bitrate} kbps"] = EncodecCodec(clone(model), bitrate, args.device,
                                                                             compile=True)
        for label, codec in ours.items():
            codecs[label] = (codec.encode, args.batches)
            start = time.perf_counter()  # warm-up (and compilation) at every batch size
            fidelity[label] = {b: agreement(in_batches(codec.encode, clips, b), reference) for b in args.batches}
            warmup[label] = time.perf_counter() - start
            print(f"{label}: codes equal to naive HF encode {fidelity[label]}; warm-up {warmup[label]:.0f} s")
        codecs[f"bestrq @ {bitrate} kbps"] = (load_codec("bestrq", bitrate, device=args.device).encode, args.batches)

    speeds: dict[str, dict[int, float]] = {label: {} for label in codecs}
    for label, (encode, batches) in codecs.items():  # warm-up: allocator, oneDNN primitives
        if label not in warmup:
            encode(clips[: max(batches)])
    for r in range(args.rounds):  # interleaved rounds: background load hits every config alike
        for label, (encode, batches) in codecs.items():
            for batch in batches:
                speed = throughput(encode, clips, batch)
                speeds[label][batch] = max(speeds[label].get(batch, 0.0), speed)
        print(f"round {r + 1}/{args.rounds}:", ", ".join(f"{k} b{b}={v:.0f}x" for k, d in speeds.items()
                                                         for b, v in d.items()))

    long_clip = music(args.long_seconds, np.random.default_rng(1))
    streamed = {}
    for bitrate in args.bitrates:
        reference = NaiveHF(clone(model), bitrate, args.device).encode([long_clip])
        default = EncodecCodec(clone(model), bitrate, args.device)
        small = EncodecCodec(clone(model), bitrate, args.device, tile_seconds=0.5, lstm_frames=375)
        streamed[bitrate] = {"default": agreement(default.encode([long_clip]), reference),
                             "0.5 s tiles, 5 s LSTM segments": agreement(small.encode([long_clip]), reference)}

    results = {
        "device": args.device, "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "clips": args.clips, "seconds": args.seconds, "rounds": args.rounds,
        "long_seconds": args.long_seconds, "load_before": load_before, "load_after": load_average(),
        "speeds": speeds, "agreement_with_naive": fidelity, "warmup_seconds": warmup, "streamed_agreement": streamed,
        "n_q": {str(b): BITRATE_TO_NQ[b] for b in args.bitrates},
    }
    write(results, args.out)


def write(results: dict, out: Path) -> None:
    out = write_json(results, out)
    batches = sorted({b for d in results["speeds"].values() for b in d})
    lines = [
        "# Tokenizer speed",
        "",
        ("What this measures: audio-seconds encoded per wall-second (x real time) by each codec, on "
        f"{results['clips']} clips of {results['seconds']:.0f} s at 24 kHz, for each batch size, on "
        f"{results['device']} ({results['cpu']}) with {results['threads']} torch threads (torch {results['torch']}). "
        "All configs run "
        f"interleaved in {results['rounds']} rounds and the best round counts, so background load hits them alike "
        "and the ratios are side by side. `naive HF encode` is `transformers.EncodecModel.encode` per clip "
        "with its weight-norm parametrizations (recomputed every forward); `encodec` is `mega_audio.codecs.encodec` "
        "(weight norm folded, inference mode, cache-sized tiles of the convolution stack, batched LSTM) with "
        "the same random weights (codebooks filled from data; speed does not depend on the values). "
        "`+ torch.compile` also compiles the convolution stack (compile time is not in the speed; "
        f"warm-up incl. compilation: {', '.join(f'{k}: {v:.0f} s' for k, v in results['warmup_seconds'].items())}). "
        "Code agreement below 100% at batch > 1 is expected (docs/architecture.md): other kernels sum in another order, and in a "
        "random model's residual quantizer one flipped code changes every later level. "
        f"Load average before/after: {results['load_before']} / {results['load_after']}."),
        "",
        "| codec | " + " | ".join(f"batch {b}" for b in batches)
        + " | speedup over naive (best batch) | codes equal to naive HF (per batch size) |",
        "|---|" + "---|" * (len(batches) + 2),
    ]
    for label, by_batch in results["speeds"].items():
        bitrate = label.split("@")[1]
        naive = results["speeds"][f"naive HF encode @{bitrate}"][1]
        cells = [f"{by_batch[b]:.0f}x" if b in by_batch else "" for b in batches]
        ratio = f"{max(by_batch.values()) / naive:.2f}x" if label.startswith("encodec") else ""
        same = " / ".join(f"{v:.2%}" for v in results["agreement_with_naive"].get(label, {}).values())
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {same} |")
    lines += ["", (f"Streamed encoding of a {results['long_seconds']:.0f} s clip vs one-shot HF encode "
                   "(fraction of equal codes; tiles carry receptive-field context, the LSTM carries its state):"), "",
              "| bitrate | " + " | ".join(next(iter(results["streamed_agreement"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(results["streamed_agreement"].values())))]
    for bitrate, rates in results["streamed_agreement"].items():
        lines.append(f"| {bitrate} kbps | " + " | ".join(f"{v:.4%}" for v in rates.values()) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
