import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_reduced_make_demo_runs_every_stage_and_prints_the_report(tmp_path):
    """`make demo` at toy sizes: synth audio -> make tokenize -> accelerate launch pretrain -> 3 fine-tunes -> report."""
    venv = Path(sys.prefix)
    demo = tmp_path / "demo"
    cmd = ["make", "-C", str(REPO), "--no-print-directory", "-o", f"{venv}/.installed", "demo", f"VENV={venv}",
           f"DEMO={demo}", "DEMO_CLIPS=8", "DEMO_STEPS=6", "DEMO_EPOCHS=2", "DEMO_CODEC=bestrq"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "demo: tokenizing with the bestrq codec" in out.stdout
    table, _, epilogue = out.stdout[out.stdout.index("| model |"):].partition("\ndemo: ")
    assert "at that size pre-training is not expected to beat training from scratch" in " ".join(
        line.removeprefix("demo: ") for line in ("demo: " + epilogue).splitlines())  # the demo says what it can show
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["scratch", "fine-tuned", "fine-tuned + augmentation"]
    assert (demo / "table1.md").read_text().strip() == table.strip()
    pretrain = json.loads((demo / "pretrain" / "model" / "config.json").read_text())
    assert pretrain["metadata"]["codec"]["name"] == "bestrq"
    for run in ("finetune-scratch", "finetune-pretrained", "finetune-pretrained-aug"):
        results = json.loads((demo / run / "results.json").read_text())
        assert results["n"]["test"] > 0 and 0.0 <= results["metrics"]["test"]["accuracy"] <= 1.0
    assert json.loads((demo / "finetune-pretrained" / "results.json").read_text())["init"] is not None
