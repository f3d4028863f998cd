"""Training input speed: clips/s from webdataset and zarr token stores vs decoding and encoding audio on the fly."""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mega_audio.codecs import BITRATE_TO_NQ, load_codec
from mega_audio.codecs.encodec import EncodecCodec, seed_codebooks
from mega_audio.data.audio import load_audio
from mega_audio.data.store import ShardWriter, TokenStore, write_card
from mega_audio.data.stream import TokenStream, make_loader

HERE = Path(__file__).resolve().parent

FRAME_RATE, SR = 75.0, 24_000


def build_store(path: Path, fmt: str, kbps: float, clips: int, frames: int, shard_size: int) -> TokenStore:
    """Random codes through the real shard writer: read speed does not depend on the values."""
    rng = np.random.default_rng(0)
    n_q = BITRATE_TO_NQ[kbps]
    writer = ShardWriter(path, fmt, rank=0, shard_size=shard_size)
    for i in range(clips):
        writer.add(rng.integers(0, 1024, (frames, n_q), dtype=np.int16),
                   {"id": f"clip{i:06d}", "split": "train", "labels": ["x"], "duration": frames / FRAME_RATE})
    writer.close()
    write_card(path, {"name": "random", "fingerprint": "0" * 64, "sample_rate": SR, "frame_rate": FRAME_RATE,
                      "bandwidth": kbps, "n_q": n_q, "codebook_size": 1024}, fmt, "bench")
    return TokenStore(path)


def best_of(repeats: int, measure) -> float:
    return max(measure() for _ in range(repeats))  # contention only ever slows a run down: keep the fastest


def read_rate(store: TokenStore) -> float:
    """Clips/s of store.iter_samples in one process (the reader alone, no collate)."""
    start, n = time.perf_counter(), 0
    for _ in store.iter_samples("train"):
        n += 1
    return n / (time.perf_counter() - start)


def tarfile_rate(store: TokenStore) -> float:
    """The previous wds reader: tarfile member by member + np.load (for comparison)."""
    import io
    import tarfile

    start, n = time.perf_counter(), 0
    for shard in store.shards("train"):
        with tarfile.open(shard.path, mode="r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".codes.npy"):
                    np.load(io.BytesIO(data))
                    n += 1
                else:
                    json.loads(data)
    return n / (time.perf_counter() - start)


def loader_rate(store: TokenStore, batch_size: int, workers: int, dtype: torch.dtype, frames: int, clips: int) -> float:
    """Clips/s arriving in the training process: shuffled, cropped, padded, collated batches from `workers` workers."""
    stream = TokenStream([store], "train", batch_size, frames, 1025, seed=0, codes_dtype=dtype)
    batches = iter(make_loader(stream, workers))
    next(batches)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    while n < clips:
        n += len(next(batches)["ids"])
    rate = n / (time.perf_counter() - start)
    del batches
    return rate


class OnTheFly(torch.utils.data.Dataset):
    """What users do without a token store: every step decodes, resamples and encodes the audio again."""

    def __init__(self, paths: list[Path], codec):
        self.paths, self.codec = paths, codec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        torch.set_num_threads(1)  # one thread per worker: 2 workers fill the 2 cores
        wave = load_audio(self.paths[i], SR)
        return wave if self.codec is None else self.codec.encode([wave])[0]


def on_the_fly_rate(paths: list[Path], codec, workers: int) -> float:
    loader = torch.utils.data.DataLoader(OnTheFly(paths, codec), batch_size=None, num_workers=workers)
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / (time.perf_counter() - start)


def write_music(path: Path, seconds: float, rng: np.random.Generator) -> Path:
    """A 44.1 kHz stereo wav of gliding harmonic notes over noise bursts (a typical download)."""
    import soundfile as sf

    sr = 44_100
    t = np.arange(int(seconds * sr)) / sr
    pitch = 110 * 2 ** (rng.integers(0, 24, int(seconds * 4) + 1)[(t * 4).astype(int)] / 12)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    notes = sum(np.sin(k * phase) / k for k in range(1, 5))
    drums = rng.standard_normal(len(t)) * np.exp(-30 * (t % 0.5))
    mono = 0.2 * notes + 0.1 * drums
    sf.write(path, np.stack([mono, 0.9 * mono], axis=1).astype(np.float32), sr)
    return path


def random_encodec(kbps: float, waves: list[np.ndarray]) -> EncodecCodec:
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig()).eval()
    seed_codebooks(model, waves[:2])  # random init zeroes the codebooks (docs/architecture.md); speed ignores the values
    return EncodecCodec(model, kbps, "cpu", source="random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=4000, help="clips per store")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--measure-clips", type=int, default=20_000, help="clips per loader measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--audio-clips", type=int, default=16, help="wav files for the on-the-fly baseline")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    frames = round(args.seconds * FRAME_RATE)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-loader-"))
    rows, reads = [], []

    for kbps in (1.5, 12.0):
        for fmt in ("wds", "zarr"):
            store = build_store(work / f"{fmt}-{kbps}", fmt, kbps, args.clips, frames, shard_size=1000)
            read = {"format": fmt, "kbps": kbps, "reader_clips_per_s": best_of(args.repeats, lambda: read_rate(store))}
            if fmt == "wds":
                read["tarfile_clips_per_s"] = best_of(args.repeats, lambda: tarfile_rate(store))
            reads.append(read)
            print(read, flush=True)
            for batch_size in args.batch_sizes:
                for dtype in (torch.long, torch.int16):
                    rate = best_of(args.repeats, lambda: loader_rate(store, batch_size, args.workers, dtype, frames,
                                                                      args.measure_clips))
                    row = {"source": f"{fmt} store", "kbps": kbps, "batch_size": batch_size, "codes": str(dtype).split(".")[-1],
                           "clips_per_s": rate, "batches_per_s": rate / batch_size, "load_avg": os.getloadavg()[0]}
                    rows.append(row)
                    print(row, flush=True)

    rng = np.random.default_rng(0)
    (work / "audio").mkdir(exist_ok=True)
    paths = [write_music(work / "audio" / f"song{i:03d}.wav", args.seconds, rng) for i in range(args.audio_clips)]
    waves = [load_audio(p, SR) for p in paths[:2]]
    baselines = [("decode + resample only", None, None)]
    for kbps in (1.5, 12.0):
        baselines += [("decode + bestrq encode", kbps, load_codec("bestrq", kbps, device="cpu")),
                      ("decode + encodec encode (random weights)", kbps, random_encodec(kbps, waves))]
    for name, kbps, codec in baselines:
        rate = on_the_fly_rate(paths, codec, args.workers)
        row = {"source": name, "kbps": kbps, "batch_size": 1, "codes": "-", "clips_per_s": rate, "batches_per_s": rate,
               "load_avg": os.getloadavg()[0]}
        rows.append(row)
        print(row, flush=True)

    write_results(Path(args.out), args, rows, reads)


def write_results(out: Path, args, rows: list[dict], reads: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    encodec = {r["kbps"]: r["clips_per_s"] for r in rows if r["source"].startswith("decode + encodec")}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [
        "# Training input: token stores vs encoding on the fly",
        "",
        "**What this measures.** Clips per second that reach the training process, ready to train on: "
        f"{args.seconds:g} s clips ({round(args.seconds * FRAME_RATE)} frames), {args.workers} DataLoader workers, "
        "shard order shuffled, a 1000-clip shuffle buffer, random crop, pad + padding mask, collated inside the workers "
        "(`mega_audio.data.stream.TokenStream` + `make_loader`, exactly what `train/pretrain.py` runs). `codes=int16` is what "
        "pre-training uses (cast to long on the device); `int64` is the `Batch` contract's default. The stores hold "
        f"{args.clips} random-code clips written by the real `ShardWriter` (1000 clips per shard). The baseline is what "
        "users do without a store: decode a 44.1 kHz stereo wav, resample to 24 kHz and encode it, in the same number of "
        "workers. Every number is the best of "
        f"{args.repeats} runs; other jobs shared this machine ({machine}), so the load average at the time is shown.",
        "",
        "| source | kbps | batch | codes | clips/s | batches/s | x Encodec on the fly | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["clips_per_s"] / encodec[r["kbps"]] if r["kbps"] in encodec else None
        lines.append(f"| {r['source']} | {r['kbps'] if r['kbps'] else '-'} | {r['batch_size']} | {r['codes']} | "
                     f"{r['clips_per_s']:,.0f} | {r['batches_per_s']:,.1f} | {f'{ratio:,.0f}x' if ratio else '-'} | "
                     f"{r['load_avg']:.1f} |")
    lines += ["", "Store readers alone (one process, `TokenStore.iter_samples`, no collate), clips/s:", "",
              "| store | kbps | reader | previous reader (tarfile + np.load) |", "|---|---|---|---|"]
    for r in reads:
        previous = f"{r['tarfile_clips_per_s']:,.0f}" if "tarfile_clips_per_s" in r else "-"
        lines.append(f"| {r['format']} | {r['kbps']} | {r['reader_clips_per_s']:,.0f} | {previous} |")
    best = max(r["clips_per_s"] for r in rows if r["source"].endswith("store"))
    lines += ["", f"Target: >= 20,000 clips/s from a store with {args.workers} workers. Best here: {best:,.0f} clips/s."]
    (out / "loader.md").write_text("\n".join(lines) + "\n")
    (out / "loader.json").write_text(json.dumps({"rows": rows, "readers": reads, "args": vars(args)}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
