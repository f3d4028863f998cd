"""Pre-training throughput: audio-seconds/s and tokens/s per training step; on a GPU, model FLOPs utilisation."""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mega_audio.codecs import BITRATE_TO_NQ
from mega_audio.models.config import ModelConfig, model_config
from mega_audio.models.masking import IGNORE_INDEX, mask_tokens, masking_generator
from mega_audio.models.mega import MegaAudioFormer, parameter_counts
from mega_audio.train.pretrain import PretrainConfig, masking_options

HERE = Path(__file__).resolve().parent

FRAME_RATE = 75.0
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # dense tensor-core FLOP/s
FORMULA = """\
Training FLOPs per clip of T frames and n_q levels (N = T * n_q tokens), counting matrix multiplies only
(embedding lookups, norms, softmax and rotary are left out), fwd + bwd = 3 x fwd, a multiply-add = 2 FLOPs:

    6 * [ T * (n_q * d_token * d_global)                                    patch projection
        + L_g * ( T * (4 + 2 * mlp_ratio) * d_global^2 + 2 * T^2 * d_global )   global blocks: weights + QK^T, AV
        + T * d_global * d_local  +  N * d_token * d_local                    frame / token projections
        + L_l * ( N * (4 + 2 * mlp_ratio) * d_local^2 + 2 * N * n_q * d_local )  local blocks (attention over n_q)
        + mask_ratio * N * d_local * codebook_size ]                          output heads, masked tokens only

(the d_token -> d_local projection is absent when they are equal; a summary_mixing block has 4 * d^2 weights and no
T^2 term.) MFU = FLOPs per step / step time / peak dense bf16 FLOP/s of the GPU."""


def matmul_macs_per_clip(cfg: ModelConfig, T: int, mask_ratio: float = 0.25, attention_scores: bool = True) -> float:
    """Multiply-accumulates of one forward pass over one clip of T frames (the formula above, without the 6)."""
    N, r = T * cfg.n_q, cfg.mlp_ratio
    # attention: qkv 3d^2 + out d^2; summary_mixing: local d^2 + summary d^2 + out 2d^2. Both 4d^2, plus the MLP's 2rd^2.
    global_attention = cfg.global_mixer == "attention" and attention_scores
    global_block = T * (4 + 2 * r) * cfg.d_global ** 2 + (2 * T * T * cfg.d_global if global_attention else 0)
    macs = T * cfg.n_q * cfg.d_token * cfg.d_global + cfg.n_global_layers * global_block
    macs += T * cfg.d_global * cfg.d_local + (N * cfg.d_token * cfg.d_local if cfg.d_token != cfg.d_local else 0)
    local_attention = 2 * N * cfg.n_q * cfg.d_local if attention_scores else 0
    macs += cfg.n_local_layers * (N * (4 + 2 * r) * cfg.d_local ** 2 + local_attention)
    return macs + mask_ratio * N * cfg.d_local * cfg.codebook_size


def training_flops(cfg: ModelConfig, batch: int, T: int, mask_ratio: float = 0.25,
                   attention_scores: bool = True) -> float:
    return 6 * batch * matmul_macs_per_clip(cfg, T, mask_ratio, attention_scores)


def counted_flops(model: MegaAudioFormer, codes: torch.Tensor, targets: torch.Tensor) -> float:
    """torch's own FLOP counter over one forward + backward: a check on the formula."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _, loss = model(codes, None, targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


PAPER_MASKING = "token 25%"


def maskings() -> dict[str, tuple[float, dict]]:
    """The maskings timed side by side, by label: (ratio, mask_tokens options): the paper's 25% of single tokens and
    the shipped recipe's (train/pretrain.py's defaults), so that a GPU row shows what the shipped masks cost."""
    shipped = PretrainConfig()
    return {PAPER_MASKING: (0.25, {"unit": "token"}),
            f"{shipped.mask_unit} {shipped.mask_ratio:.0%} (shipped)": (shipped.mask_ratio,
                                                                         masking_options(shipped, FRAME_RATE))}


def measure(preset: str, kbps: float, seconds: float, batch: int, steps: int, device: str, bf16: bool, compile: bool,
            masking: str = PAPER_MASKING) -> dict:
    """Time the loop's training step (mask, forward, backward, clip, AdamW) on random codes already on the device."""
    mask_ratio, mask_options = maskings()[masking]
    T = round(seconds * FRAME_RATE)
    cfg = model_config(preset, BITRATE_TO_NQ[kbps], 1024)
    torch.manual_seed(0)
    model = MegaAudioFormer(cfg).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4)
    step_model = torch.compile(model) if compile else model
    codes = torch.randint(0, 1024, (batch, T, cfg.n_q), device=device)

    def step(i: int) -> torch.Tensor:
        generator = masking_generator(0, 0, i, 0, torch.device(device))
        inputs, targets = mask_tokens(codes, None, mask_ratio, generator, mask_id=cfg.mask_id, **mask_options)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            _, loss = step_model(inputs, None, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(3 if compile else 1):  # warm-up (and compilation)
        step(i)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    loss.item()
    sync()
    step_s = (time.perf_counter() - start) / steps
    flops = training_flops(cfg, batch, T, mask_ratio)
    row = {"device": device, "preset": preset, "kbps": kbps, "masking": masking, "seconds": seconds, "batch": batch,
           "bf16": bf16, "compile": compile, "params": parameter_counts(model)["total"], "step_s": step_s,
           "audio_s_per_s": batch * seconds / step_s, "tokens_per_s": batch * T * cfg.n_q / step_s,
           "tflops_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12}
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        row.update(gpu=name, mfu=flops / step_s / peak if peak and bf16 else None)
    if device == "cpu" and preset == "tiny" and masking == PAPER_MASKING:  # check the formula against torch's counter
        short = codes[:2, :150]
        inputs, targets = mask_tokens(short, None, 0.25, mask_id=cfg.mask_id)
        # torch's counter has no formula for the CPU attention kernel: compare without the QK^T / AV term. It also
        # counts what backward recomputes: the output heads' logits (checkpointed chunks), one more heads forward
        recomputed = 2 * int((targets != IGNORE_INDEX).sum()) * cfg.d_local * cfg.codebook_size
        counted = counted_flops(model, inputs, targets) - recomputed
        row["flop_counter_ratio"] = counted / training_flops(cfg, 2, 150, attention_scores=False)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="base", help="the GPU row's preset")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the GPU (the default for training)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the GPU model")
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--cpu-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()

    rows = []
    for kbps in (1.5, 12.0):
        for masking in maskings():
            rows.append(measure("tiny", kbps, 10.0, args.cpu_batch, args.steps, "cpu", bf16=False, compile=False,
                                masking=masking))
            print(rows[-1], flush=True)
    if torch.cuda.is_available():
        for kbps in (1.5, 12.0):
            for masking in maskings():
                rows.append(measure(args.preset, kbps, 10.0, args.gpu_batch, max(args.steps, 20), "cuda", args.bf16,
                                    args.compile, masking))
                print(rows[-1], flush=True)
    write_results(Path(args.out), args, rows)


def write_results(out: Path, args, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [
        "# Pre-training throughput",
        "",
        "**What this measures.** The time of one training step as `mega_audio.train.pretrain` runs it (masking, "
        "forward, masked-token loss, backward, gradient clipping, AdamW) on 10 s clips (750 frames) of random codes "
        "already in memory, so the model alone is timed (the input pipeline is `bench/loader.py`, far faster than any "
        "row here), with the paper's masking (25% of single tokens) and the shipped recipe's (`train/pretrain.py`'s "
        "defaults) side by side: its output heads score every masked token, so a higher ratio costs heads FLOPs. "
        "Audio-seconds/s = batch x 10 s / step time; tokens/s counts T x n_q tokens per clip. On a GPU the row also gives "
        f"model FLOPs utilisation from the analytic FLOP count below. CPU: {machine}, shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end), torch threads {torch.get_num_threads()}.",
        "",
        "| device | preset | kbps | masking | batch | precision | params | step (s) | audio-s/s | tokens/s "
        "| TFLOP/step | TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        precision = ("bf16" if r["bf16"] else "fp32") + (" + compile" if r["compile"] else "")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(f"| {r.get('gpu', 'cpu')} | {r['preset']} | {r['kbps']} | {r['masking']} | {r['batch']} | "
                     f"{precision} | {r['params'] / 1e6:.1f} M | {r['step_s']:.3f} | {r['audio_s_per_s']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tflops_per_step']:.3f} | {r['achieved_tflops']:.3f} | {mfu} |")
    if not any(r["device"].startswith("cuda") for r in rows):
        lines.append(f"| GPU | {args.preset} | 1.5 | - | {args.gpu_batch} | bf16 | - | - | - | - | - | - | "
                     "not measured: no GPU lent in this session |")
    check = [r["flop_counter_ratio"] for r in rows if "flop_counter_ratio" in r]
    lines += ["", "**FLOP count.**", "", "```", FORMULA, "```", ""]
    if check:
        lines.append("Check: `torch.utils.flop_counter` over one tiny forward + backward (2 clips of 150 frames) counts "
                     + ", ".join(f"{c:.3f}x" for c in check) + " the formula without its attention-score term (1.5 and "
                     "12 kbps; the counter has no formula for the CPU attention kernel, so it cannot count that term).")
    lines += ["", "Run on a GPU: `python bench/pretrain.py --preset base --bf16 [--compile]` (target: >= 40% MFU on an "
              "H100 for base at 10 s / 1.5 kbps)."]
    (out / "pretrain.md").write_text("\n".join(lines) + "\n")
    (out / "pretrain.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
