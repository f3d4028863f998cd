"""Training-step cost of Mega-AudioFormer vs a flat Transformer of the same width and depth, side by side in one run;
with --encoders, of Mega-AudioFormer with each global encoder (attention, SummaryMixing, Branchformer) instead."""

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch
from common import write_json
from torch.utils.flop_counter import FlopCounterMode

from mega_audio.codecs import BITRATE_TO_NQ
from mega_audio.models.config import PRESETS, model_config
from mega_audio.models.flat import FlatTransformer
from mega_audio.models.masking import mask_tokens
from mega_audio.models.mega import MegaAudioFormer

HERE = Path(__file__).resolve().parent

FRAME_RATE = 75  # Encodec 24 kHz frames per second
CODEBOOK = 1024
# name -> (model class, global encoder overrides)
MODELS = {
    "mega": (MegaAudioFormer, {}),
    "flat": (FlatTransformer, {}),
    "summary": (MegaAudioFormer, dict(global_mixer="summary_mixing")),
    "branchformer": (MegaAudioFormer, dict(global_block="branchformer")),
    "branchformer_summary": (MegaAudioFormer, dict(global_block="branchformer", global_mixer="summary_mixing")),
}
MAIN = ("mega", "flat")  # the default run: results/model
ENCODERS = {"mega": "transformer + attention", "summary": "transformer + SummaryMixing",  # --encoders: results/encoders
            "branchformer": "Branchformer + attention", "branchformer_summary": "Branchformer + SummaryMixing"}
# The base preset's shape at 1/6 of its width and 1/2 of its depth: the global:local ratios of depth (6:1) and
# width (2:1) and the head dim (64) are base's, so the memory ratio tracks base's. A flat base model needs
# ~22 TFLOP per step at 12 kbps / 10 s (~160 at 30 s): hours on a 2-core CPU; this fits the run in minutes.
CPU_SCALED = dict(d_token=64, d_global=128, n_global_heads=2, n_global_layers=6, d_local=64, n_local_heads=1, n_local_layers=1)


def build(spec: dict):
    overrides = CPU_SCALED if spec["preset"] == "cpu-scaled" else {}
    preset = "base" if spec["preset"] == "cpu-scaled" else spec["preset"]
    encoder = MODELS[spec.get("model", "mega")][1]
    return model_config(preset, n_q=spec["n_q"], codebook_size=CODEBOOK, **overrides, **encoder)


def build_model(spec: dict):
    return MODELS[spec["model"]][0](build(spec))


# ---------------------------------------------------------------------------------------------------------
# measuring one training step


def peak_allocated_bytes(prof: torch.profiler.profile) -> int:
    """Peak of live CPU tensor bytes during a profiled region: the running sum of the profiler's signed
    allocation events (what torch.cuda.max_memory_allocated measures on a GPU)."""
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


class Trainee:
    """One model and one batch of masked codes, ready to run a timed training step."""

    def __init__(self, spec: dict):
        torch.manual_seed(0)
        self.device = torch.device(spec["device"])
        config = build(spec)
        self.model = build_model(spec).to(self.device)
        codes = torch.randint(0, CODEBOOK, (spec["batch"], spec["frames"], spec["n_q"]), device=self.device)
        generator = torch.Generator(self.device).manual_seed(0)
        self.inputs, self.targets = mask_tokens(codes, None, generator=generator, mask_id=config.mask_id)
        self.times: list[float] = []

    def step(self) -> float:
        cuda = self.device.type == "cuda"
        self.model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            _, loss = self.model(self.inputs, None, self.targets)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def first_step(self) -> None:
        """Warm-up step; it also measures peak memory."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            self.first = self.step()
            self.peak_bytes = torch.cuda.max_memory_allocated() - before
        else:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
                self.first = self.step()
            self.peak_bytes = peak_allocated_bytes(prof)

    def wants_more(self, repeats: int, min_seconds: float, max_seconds: float) -> bool:
        """At least `repeats` steps and `min_seconds` of them (more chances to catch a quiet moment on a shared
        machine), never past `max_seconds`."""
        spent = self.first + sum(self.times)
        return spent < max_seconds and (len(self.times) < repeats or spent < min_seconds)

    def result(self) -> dict:
        return dict(ms=1000 * (min(self.times) if self.times else self.first), peak_mb=self.peak_bytes / 2**20,
                    timed_steps=len(self.times), params=sum(p.numel() for p in self.model.parameters()))


def compare(spec: dict, names, repeats: int, min_seconds: float, max_seconds: float) -> dict[str, dict]:
    """The models on the same input size, timed steps interleaved so that load from other jobs hits them alike."""
    trainees = {name: Trainee(dict(spec, model=name)) for name in names}
    for trainee in trainees.values():
        trainee.first_step()
    while any(t.wants_more(repeats, min_seconds, max_seconds) for t in trainees.values()):
        for trainee in trainees.values():
            if trainee.wants_more(repeats, min_seconds, max_seconds):
                trainee.times.append(trainee.step())
    return {name: trainee.result() for name, trainee in trainees.items()}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, _transposed,
                        _output_padding, _groups, output_mask, out_shape=None) -> int:
    """torch's formula for a convolution's backward ignores groups: it counts a depthwise conv over C channels C times
    over. Each of the input and weight gradients costs what the forward does: 2 x outputs x (C_in / groups x kernel)."""
    return 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:]) * sum(output_mask[:2])


def count_flops(spec: dict) -> int:
    """fwd+bwd FLOPs counted on meta tensors (no compute), output heads on every token."""
    with torch.device("meta"):
        model = build_model(spec)
        codes = torch.randint(0, CODEBOOK, (spec["batch"], spec["frames"], spec["n_q"]))
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        logits, _ = model(codes)
        logits.float().mean().backward()
    return counter.get_total_flops()


def estimate_peak_bytes(spec: dict) -> int | None:
    """Peak memory of one step above the weights, tracked by torch's MemTracker on fake tensors (no compute).

    Fake tensors cannot take the masked-only output heads (their shapes depend on data), so this step puts
    the loss on every token's logits: a little pessimistic for Mega-AudioFormer, whose encoders are smaller."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # private API: skip the estimate rather than fail the bench
        return None
    with FakeTensorMode():
        model = build_model(spec)
        codes = torch.randint(0, CODEBOOK, (spec["batch"], spec["frames"], spec["n_q"]))
        tracker = MemTracker()
        tracker.track_external(model, codes)
        with tracker:
            logits, _ = model(codes)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), codes.flatten())
            del logits
            loss.backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return sum(v for k, v in peak.items() if k != "Total" and getattr(k, "name", "") != "PARAM")


# ---------------------------------------------------------------------------------------------------------
# driver


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="base" if cuda else "cpu-scaled", choices=[*PRESETS, "cpu-scaled"],
                        help="model size; cpu-scaled = base's shape at 1/6 width, 1/2 depth (default on CPU)")
    parser.add_argument("--encoders", action="store_true",
                        help="time Mega-AudioFormer with each global encoder (default out results/encoders, 10 and 30 s)")
    parser.add_argument("--seconds", type=float, nargs="+", default=None, help="clip lengths (default 2.5 5 10 30)")
    parser.add_argument("--kbps", type=float, nargs="+", default=[1.5, 12.0], choices=sorted(BITRATE_TO_NQ))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after the warm-up step (best one reported)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="keep timing a model until it has run this long")
    parser.add_argument("--max-seconds", type=float, default=15.0,
                        help="no more timed steps once a model has used this long (slow ones report the warm-up step)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="default results/model (results/encoders with --encoders)")
    args = parser.parse_args()
    names = list(ENCODERS) if args.encoders else list(MAIN)
    args.seconds = args.seconds or ([10, 30] if args.encoders else [2.5, 5, 10, 30])
    args.out = args.out or HERE / "results" / ("encoders" if args.encoders else "model")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    rows = []
    for kbps in args.kbps:
        for seconds in args.seconds:
            n_q, frames = BITRATE_TO_NQ[kbps], round(seconds * FRAME_RATE)
            spec = dict(preset=args.preset, n_q=n_q, frames=frames, batch=args.batch, device=args.device)
            row = dict(kbps=kbps, seconds=seconds, frames=frames, n_q=n_q,
                       **compare(spec, names, args.repeats, args.min_seconds, args.max_seconds))
            for name in names:
                flops = dict(spec, model=name)
                base_bytes = None if args.encoders else estimate_peak_bytes(dict(flops, preset="base", device="cpu"))
                row[name].update(tflops=count_flops(flops) / 1e12, base_tflops=count_flops(dict(flops, preset="base")) / 1e12,
                                 base_estimated_mb=None if base_bytes is None else base_bytes / 2**20)
            rows.append(row)
            print(f"{kbps:>4} kbps {seconds:>5} s: " + " | ".join(f"{name} {row[name]['ms']:.0f} ms {row[name]['peak_mb']:.0f} MB"
                                                                for name in names) + f"  ({time.time() - started:.0f} s)",
                  flush=True)
    config = build(dict(preset=args.preset, n_q=16))
    results = dict(
        device=args.device, device_name=torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        threads=torch.get_num_threads(), torch=torch.__version__, preset=args.preset,
        config={k: v for k, v in config.to_dict().items() if k not in ("n_q", "codebook_size")}, batch=args.batch,
        memory_method="torch.cuda.max_memory_allocated" if args.device == "cuda" else "torch.profiler memory events (peak live tensor bytes)",
        wall_seconds=time.time() - started, load_average=os.getloadavg()[0], cores=os.cpu_count(), rows=rows,
    )
    (write_encoders if args.encoders else write)(results, args.out)


def write(results: dict, out: Path) -> None:
    out = write_json(results, out)
    cfg, rows = results["config"], results["rows"]
    memory = (
        "the peak of live tensor bytes during the step, from the signed allocation events of `torch.profiler` "
        "(profile_memory=True), the CPU analogue of `torch.cuda.max_memory_allocated`: activations, gradients and "
        "temporaries, not the weights; scratch memory outside PyTorch's allocator (oneDNN) is not seen."
        if results["device"] == "cpu"
        else "`torch.cuda.max_memory_allocated` over the step minus what was allocated before it (bf16 autocast)."
    )
    lines = [
        "# Mega-AudioFormer vs flat Transformer: one training step",
        "",
        f"**What this measures.** Forward + backward time and peak memory of one masked-token training step (batch "
        f"{results['batch']}, 25% of tokens masked, loss on the masked ones, their logits computed in checkpointed chunks by the "
        "same code in both models) for Mega-AudioFormer (global encoder over "
        "frames + local encoder within frames) and a flat Transformer with the global encoder's width and depth over "
        "all T x n_q tokens, at Encodec's 1.5 kbps (n_q = 2) and 12 kbps (n_q = 16), 75 frames per second. For each "
        "length both models are built and their timed steps interleaved, so load from other jobs hits both alike. "
        "Time: the best timed step after a warm-up step (as `timeit` does; at least 5 steps and 3 s of them, up to 15 s); a model "
        f"whose warm-up step alone passed the time cap reports that step (`timed steps` 0). Peak memory: {memory}",
        "",
        f"Model timed: `{results['preset']}` = global {cfg['n_global_layers']} layers x d={cfg['d_global']} "
        f"({cfg['n_global_heads']} heads), local {cfg['n_local_layers']} layer(s) x d={cfg['d_local']} "
        f"({cfg['n_local_heads']} head(s)), d_token={cfg['d_token']}, mixer {cfg['global_mixer']}. "
        f"Device: {results['device']} ({results['device_name'] or 'unknown CPU'}), {results['threads']} threads, "
        f"torch {results['torch']}. The whole run took {results['wall_seconds'] / 60:.1f} min"
        + (f" (load average {results['load_average']:.1f} at the end: other jobs shared the cores, so times are noisier "
           "than memory, which does not depend on load)." if results.get("load_average") else "."),
    ]
    if results["preset"] == "cpu-scaled":
        lines += [
            "",
            "Why this size: a flat model at base size needs ~22 TFLOP per step at 12 kbps / 10 s and ~160 at 30 s, "
            "hours on this 2-core CPU. `cpu-scaled` keeps base's global:local depth (6:1) and width (2:1) ratios and "
            "its global head dim (64), at 1/6 of the width and 1/2 of the depth. A narrow model spends a larger share "
            "of its time in attention than base does (attention / linear FLOPs ~ tokens / (6 d)), so the time ratio "
            "measured here at 12 kbps overstates base's; the base table below and `python bench/model.py --preset "
            "base` on a GPU give base's. The CPU is shared with other jobs: absolute times are noisy, ratios less so.",
        ]
    if results["device"] == "cpu" and results["threads"] == 1:
        lines += ["", "Run with `--threads 1`: on a CPU shared with other jobs, a 2-thread step stalls whenever another "
                      "job holds one of the cores (we saw the same small step take 3.5 s with 2 threads and 58 ms with 1)."]
    lines += [
        "",
        f"## Measured: `{results['preset']}`",
        "",
        "| kbps | clip | flat tokens | Mega ms | flat ms | speed-up | Mega peak MB | flat peak MB | memory ratio | FLOP ratio | timed steps (Mega / flat) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mega, flat = r["mega"], r["flat"]
        lines.append(
            f"| {r['kbps']:g} | {r['seconds']:g} s ({r['frames']} frames) | {r['frames'] * r['n_q']:,} | {mega['ms']:,.0f} | "
            f"{flat['ms']:,.0f} | **{flat['ms'] / mega['ms']:.1f}x** | {mega['peak_mb']:,.1f} | {flat['peak_mb']:,.1f} | "
            f"**{flat['peak_mb'] / mega['peak_mb']:.1f}x** | {flat['tflops'] / mega['tflops']:.1f}x | "
            f"{mega['timed_steps']} / {flat['timed_steps']} |"
        )
    lines += [
        "",
        "## Base preset (paper size), counted without running it",
        "",
        "FLOPs (fwd + bwd) counted by `torch.utils.flop_counter` on meta tensors, output heads on every token. Peak "
        "memory above the weights tracked by torch's `MemTracker` on fake tensors (no compute; checked on `cpu-scaled`: "
        "fake and real tensors give the same peak, and on real tensors MemTracker agrees with the profiler) for a step whose loss covers every token's logits, since fake tensors cannot "
        "take the masked-only heads: slightly pessimistic for Mega-AudioFormer. Batch as above.",
        "",
        "| kbps | clip | Mega TFLOP | flat TFLOP | FLOP ratio | Mega peak MB (est.) | flat peak MB (est.) | memory ratio (est.) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mega, flat = r["mega"], r["flat"]
        estimated = mega["base_estimated_mb"] is not None and flat["base_estimated_mb"] is not None
        memory_cells = (f"{mega['base_estimated_mb']:,.0f} | {flat['base_estimated_mb']:,.0f} | "
                        f"**{flat['base_estimated_mb'] / mega['base_estimated_mb']:.1f}x**") if estimated else "- | - | -"
        lines.append(
            f"| {r['kbps']:g} | {r['seconds']:g} s | {mega['base_tflops']:.2f} | {flat['base_tflops']:.2f} | "
            f"**{flat['base_tflops'] / mega['base_tflops']:.1f}x** | {memory_cells} |"
        )
    target = next((r for r in rows if r["kbps"] == 12.0 and r["seconds"] == 10), None)
    if target:
        speed = target["flat"]["ms"] / target["mega"]["ms"]
        memory_ratio = target["flat"]["peak_mb"] / target["mega"]["peak_mb"]
        verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        lines += ["", f"**Target (issue 3)** at 12 kbps, 10 s: >= 10x faster and >= 5x less memory than flat. Measured "
                      f"on `{results['preset']}`: {speed:.1f}x faster ({verdict(speed >= 10)}), {memory_ratio:.1f}x less "
                      f"memory ({verdict(memory_ratio >= 5)})."]
        if target["mega"]["base_estimated_mb"]:
            base_memory = target["flat"]["base_estimated_mb"] / target["mega"]["base_estimated_mb"]
            base_flops = target["flat"]["base_tflops"] / target["mega"]["base_tflops"]
            lines[-1] += (f" Base preset: {base_flops:.1f}x fewer FLOPs and an estimated {base_memory:.1f}x less memory "
                          f"({verdict(base_memory >= 5)}).")
    lines += ["", f"Raw numbers (for a cost-vs-length plot): `{out.with_suffix('.json').name}`.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def write_encoders(results: dict, out: Path) -> None:
    """The --encoders table: Mega-AudioFormer with each global encoder, timed side by side."""
    out = write_json(results, out)
    rows, names = results["rows"], list(ENCODERS)
    lines = [
        "# Global encoders: attention, SummaryMixing, Branchformer",
        "",
        "**What this measures.** The training step of the table above (batch "
        f"{results['batch']}, forward + backward, same time and memory method) for Mega-AudioFormer with each global "
        "encoder (`global_block` x `global_mixer`; the local encoder is the same), the four timed side by side, steps "
        "interleaved. SummaryMixing is linear in the number of frames (each frame sees the mean of all frames, plus a "
        "depthwise convolution for order); Branchformer runs the mixer and a convolutional gating MLP in parallel. "
        f"Model: `{results['preset']}` with each encoder; device {results['device']} ({results['device_name'] or 'CPU'}), "
        f"{results['threads']} thread(s), torch {results['torch']}; the run took {results['wall_seconds'] / 60:.1f} min. "
        "Parameters and the base preset's FLOPs (fwd + bwd, heads on every token) are counted, not run. The flat "
        "Transformer at the same lengths is in the table above.",
        "",
        f"Load average when the run ended: {results.get('load_average', float('nan')):.1f} on {results.get('cores')} "
        "cores. Other jobs share this machine: when the load is above the core count, step times are inflated and "
        "noisy (only the ratios of one row mean much, and even they drift), while peak memory and FLOPs do not depend "
        "on load.",
        "",
        "| kbps | clip | " + " | ".join(f"{ENCODERS[n]} ms / MB" for n in names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        lines.append(f"| {r['kbps']:g} | {r['seconds']:g} s | "
                     + " | ".join(f"{r[n]['ms']:,.0f} / {r[n]['peak_mb']:,.1f}" for n in names) + " |")
    lines += ["", "| kbps | clip | " + " | ".join(f"{ENCODERS[n]} base TFLOP" for n in names) + " |",
              "|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['kbps']:g} | {r['seconds']:g} s | " + " | ".join(f"{r[n]['base_tflops']:.2f}" for n in names) + " |")
    last = rows[-1]
    lines += ["", "Parameters (timed preset, " f"n_q = {last['n_q']}): "
              + ", ".join(f"{ENCODERS[n]} {last[n]['params']:,}" for n in names) + ".",
              "", f"Raw numbers: `{out.with_suffix('.json').name}`.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
