"""What the benchmark scripts share: where a result goes and its raw JSON."""

import json
from pathlib import Path


def write_json(results: dict, out: Path) -> Path:
    """Write results to `out`.json (`out`_<device>.json off the CPU) and return the path stem for the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out = out.with_name(out.name + ("" if results["device"] == "cpu" else f"_{results['device']}"))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return out
