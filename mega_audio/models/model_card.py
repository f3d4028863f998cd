"""The model card (`README.md`) of a checkpoint, written from its config.json header: what the model is, the codec its
tokens come from (a model only reads tokens of that codec), the data it was trained on, and its results if any."""

from __future__ import annotations

import json
from typing import Any


def augmentation(finetune: dict[str, Any]) -> str:
    """A fine-tuning config's training augmentation in words: `none`, `chunk-drop`, `colour 6 dB`, or both."""
    parts = [] if finetune.get("augment", "none") == "none" else [finetune["augment"]]
    if finetune.get("colour_db"):
        parts.append(f"colour {finetune['colour_db']:g} dB")
    return " + ".join(parts) or "none"


def _front_matter(header: dict) -> str:
    meta = header.get("metadata", {})
    classifier = "labels" in meta
    lines = ["---", "library_name: mega-audio", "tags:", "- audio", "- codec-tokens", "- model_hub_mixin",
             f"pipeline_tag: {'audio-classification' if classifier else 'feature-extraction'}", "---", ""]
    return "\n".join(lines)


def _codec_lines(codec: dict | None) -> list[str]:
    if not codec:
        return ["No codec card was recorded: the model reads `(T, n_q)` tokens of an unknown codec."]
    rows = [("codec", codec.get("name")), ("weights", codec.get("weights")), ("bandwidth (kbps)", codec.get("bandwidth")),
            ("n_q", codec.get("n_q")), ("codebook size", codec.get("codebook_size")),
            ("frame rate (Hz)", codec.get("frame_rate")), ("sample rate (Hz)", codec.get("sample_rate")),
            ("fingerprint", codec.get("fingerprint"))]
    return ["| | |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in rows if v is not None)]


def _metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    names = sorted({name for split in metrics.values() for name in split})
    lines = ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for split, values in metrics.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[n]:.4f}" if n in values else "" for n in names) + " |")
    return lines


def _training_lines(meta: dict) -> list[str]:
    if "merge" in meta:
        m = meta["merge"]
        vectors = " + ".join(f"{lam:g} x (`{path}` - base)" for path, lam in zip(m["models"], m["lambdas"]))
        return [f"Merged by task arithmetic: base `{m['base']}` + {vectors}."]
    if "pretrain" in meta:
        p = meta["pretrain"]
        lines = [f"Masked-token pre-training (mask ratio {p.get('mask_ratio')}) for {p.get('step')} steps on "
                 + ", ".join(f"`{d}`" for d in p.get("data", [])) + "."]
        if p.get("continued_from"):
            rewarmed = " with the learning rate re-warmed" if p.get("lr_schedule", {}).get("rewarm") else ""
            lines[0] += f" Continued from `{p['continued_from']['model']}`{rewarmed}."
        if p.get("eval"):
            lines += ["", "## Results", "", *_metrics_table({"held-out (masked tokens)": p["eval"]})]
        return lines
    if "labels" in meta:
        ft = meta.get("finetune", {})
        lines = [f"Fine-tuned on task `{meta.get('task')}` ({len(meta['labels'])} labels, "
                 f"{'multi-label' if meta.get('multi_label') else 'single-label'}) from the `{meta.get('dataset')}` "
                 f"store `{ft.get('data')}`, initialised from `{ft.get('init') or 'scratch'}`, augmentation "
                 f"`{augmentation(ft)}`; best epoch {meta.get('best_epoch')}."]
        if meta.get("results"):
            lines += ["", "## Results", "", *_metrics_table(meta["results"])]
        return lines
    return ["No training record in the metadata."]


def model_card(header: dict[str, Any]) -> str:
    """Markdown with a Hub front matter, from a checkpoint header (model_type, architecture, config, metadata)."""
    meta = header.get("metadata", {})
    classifier = "labels" in meta
    cls = header.get("architecture")
    module = {"AudioClassifier": "classifier", "FlatTransformer": "flat"}.get(cls, "mega")
    use = f'from mega_audio.models.{module} import {cls}\nmodel = {cls}.from_pretrained("this/repo-or-directory")'

    lines = [_front_matter(header),
             f"# {header.get('architecture')} ({'audio classifier' if classifier else 'pre-trained encoder'})", "",
             "A mega-audio model over neural-codec tokens: it reads `(T, n_q)` int codes of the codec below, never "
             "audio. Tokenize audio with `mega-audio tokenize` (or let `mega-audio predict` do it).", "",
             "```python", use, "```", "", "## Codec", "", *_codec_lines(meta.get("codec")), "",
             "## Training data", "", *_training_lines(meta), "", "## Architecture", "", "```json",
             json.dumps(header.get("config", {}), indent=1), "```", ""]
    if classifier:
        lines += ["## Labels", "", ", ".join(f"`{label}`" for label in meta["labels"]), ""]
    return "\n".join(lines)
