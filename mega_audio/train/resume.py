"""Training state for exact resume: `checkpoints/step_XXXXXXX/` (accelerate's save_state + trainer_state.json, which
records every file's size and checksum), written under a temporary name and renamed, the newest few kept; and finding
the newest sound one to continue from (a damaged checkpoint is skipped with a warning that names it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from ..fileio import atomic_write_text, file_digest, integrity_problem
from .loop import check_codec

STATE_NAME = "trainer_state.json"


def training_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (a `.tmp` directory is one being written), oldest first."""
    root = Path(output_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")) if root.exists() else []


def read_training_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_NAME).read_text())


def save_training_state(accelerator, output_dir: str | Path, state: dict, keep: int) -> Path:
    """accelerator.save_state into step_XXXXXXX.tmp, then one rename: a crash leaves no half checkpoint behind."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{state['step']:07d}"
    tmp = root / (final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every rank writes its RNG state; the main rank the model and optimizer
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: {"bytes": p.stat().st_size, "blake2b": file_digest(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_text(tmp / STATE_NAME, json.dumps({**state, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in training_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor: the debug log records it so a test can check that every rank ends equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint (None: every file matches the size and checksum trainer_state.json recorded)."""
    try:
        state = read_training_state(checkpoint)
    except (OSError, ValueError) as e:
        return f"{STATE_NAME} is unreadable ({type(e).__name__})"
    for name, expected in state.get("files", {}).items():  # checkpoints of older versions record no files
        if problem := integrity_problem(checkpoint / name, expected["bytes"], expected["blake2b"]):
            return f"{name} {problem} ({STATE_NAME})"
    return None


def find_resume(output_dir: str | Path, resume: bool, codec: dict, data: list[str]) -> tuple[Path | None, dict | None]:
    """The newest sound checkpoint to continue from (None for a fresh run), after checking it was trained on this
    codec. A damaged newer checkpoint is skipped with a warning that names it."""
    existing = training_checkpoints(output_dir)
    if existing and not resume:
        raise ValueError(f"{output_dir} already holds checkpoints ({existing[-1].name}): pass --resume to continue "
                         f"that run, or choose a new --output-dir")
    if not (resume and existing):
        return None, None
    for checkpoint in reversed(existing):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            state = read_training_state(checkpoint)
            check_codec(state["codec"], codec, checkpoint, data)
            return checkpoint, state
        print(f"warning: skipping damaged checkpoint {checkpoint}: {problem}", file=sys.stderr)
    raise ValueError(f"every checkpoint in {Path(output_dir) / 'checkpoints'} is damaged (see the warnings above): "
                     f"move them aside to start over, or choose a new --output-dir")
