"""What the pre-training and fine-tuning loops share: the Accelerator set-up (with its experiment trackers), the LR
schedule, one optimizer step (set the LR, backward, clip, step), the progress bar, and the check that data and
checkpoint share a codec."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.store import CODEC_KEYS

REPORT_TO = ("tensorboard", "wandb", "mlflow", "all", "none")


def tracker_kwargs(report_to: str, output_dir: str | Path) -> dict[str, Any]:
    """Accelerator arguments for `--report-to`: accelerate's trackers, TensorBoard events under output_dir/tensorboard.
    A tracker whose package is missing is refused here (accelerate would only warn and log nowhere)."""
    from accelerate.utils import ProjectConfiguration, is_mlflow_available, is_tensorboard_available, is_wandb_available

    if report_to not in REPORT_TO:
        raise ValueError(f"--report-to {report_to!r}: choose one of {', '.join(REPORT_TO)}")
    if report_to == "none":
        return {}
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available(), "mlflow": is_mlflow_available()}
    if report_to != "all" and not available[report_to]:
        raise ValueError(f"--report-to {report_to}: the {report_to} package is not installed (pip install {report_to})")
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "tensorboard"))
    return {"log_with": report_to, "project_config": project}


def start_trackers(accelerator, project: str, config: dict[str, Any], run_name: str, start_step: int = 0) -> None:
    """init_trackers with the run's flags as hyper-parameters (lists and None as text: what every tracker takes);
    a resumed run drops the TensorBoard points it is about to write again."""
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    accelerator.init_trackers(project, config=hparams, init_kwargs={
        "tensorboard": {"purge_step": start_step or None}, "wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})


def make_accelerator(cpu: bool, mixed_precision: str | None, **kwargs: Any):
    """An Accelerator with bf16 by default on a GPU that has it, and CPU threads split between local processes."""
    from accelerate import Accelerator

    gpu = torch.cuda.is_available() and not cpu
    precision = mixed_precision or ("bf16" if gpu and torch.cuda.is_bf16_supported() else "no")
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, **kwargs)
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # several CPU processes on one machine each start one thread per core: oversubscribed OpenMP crawls
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return accelerator


def cosine_lr(step: int, peak: float, warmup_steps: int, decay_steps: int, min_ratio: float = 0.1,
              warmup_from: float = 0.0) -> float:
    """Linear warm-up from `peak * warmup_from` to `peak`, then cosine decay to `peak * min_ratio` at `decay_steps`,
    flat after."""
    if step < warmup_steps:
        return peak * (warmup_from + (1 - warmup_from) * (step + 1) / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   grad_clip: float) -> None:
    """Backward, clip the global gradient norm (0 = off) when gradients are synced, step and clear the gradients.
    Under `accelerator.accumulate` the step is a no-op until the last micro-batch."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def progress_bar(accelerator, total: int, desc: str, initial: int = 0) -> tqdm:
    """A step counter on the main process only (one bar, also under torchrun / accelerate launch)."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not accelerator.is_main_process)


def describe_codec(codec: dict) -> str:
    return f"{codec['name']} (n_q={codec['n_q']}, codebook_size={codec['codebook_size']}, fingerprint {codec['fingerprint'][:12]})"


def check_codec(trained: dict | None, data: dict, checkpoint: str | Path, data_paths: str | list[str]) -> None:
    """Refuse data tokenized by another codec, bitrate or codebook than the checkpoint was trained on."""
    if trained is None:  # a checkpoint that records no codec (built outside mega-audio): nothing to compare
        return
    if any(trained.get(k) != data.get(k) for k in CODEC_KEYS):
        paths = data_paths if isinstance(data_paths, str) else " ".join(data_paths)
        raise ValueError(f"checkpoint {checkpoint} was trained on {describe_codec(trained)} tokens, but {paths} holds "
                         f"{describe_codec(data)} tokens: use data tokenized with the checkpoint's codec and bitrate, "
                         f"or a checkpoint trained on this codec")
