"""The common ending of a recipe: write ``results.json`` and ``report.md``, then print JSON or the report; and the
data card that travels with every summary a recipe shares."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["finish", "data_card", "data_card_markdown", "write_data_card"]


def finish(out: Path, result: dict[str, Any], markdown: str, as_json: bool) -> int:
    """Write the files into ``out``; with ``as_json`` print ONE JSON object on stdout, else the markdown."""
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    result["report"] = str(out / "report.md")
    print(json.dumps(result, default=str) if as_json else markdown)
    return 0


def data_card(summary, *, dataset: str, checks: dict[str, Any] | None = None,
              evaluation: dict[str, Any] | None = None, file: str | None = None) -> dict[str, Any]:
    """What a shared summary is, as a JSON-able dict: dataset, method, IPC, images, privacy, check results."""
    m = summary.meta
    privacy = summary.privacy
    return {
        "file": file, "dataset": dataset, "method": m.get("method"), "paper": m.get("paper"), "ipc": m.get("ipc"),
        "class_budget": m.get("class_budget"), "images": len(summary.y), "classes": summary.num_classes,
        "image_shape": list(summary.image_shape), "label_kind": summary.label_kind, "steps": m.get("steps"),
        "seed": m.get("seed"), "config": m.get("config"),
        "privacy": None if privacy is None else {**privacy.as_dict(), "guarantee": str(privacy)},
        "checks": checks or {}, "evaluation": evaluation or {}, "versions": m.get("versions"),
    }


def _cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits, infinity as ``inf``."""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def data_card_markdown(card: dict[str, Any]) -> str:
    """The data card as markdown (one bullet per field; checks and evaluation as sub-lists)."""
    p = card["privacy"]
    lines = [f"# Data card: `{card['method']}` summary of `{card['dataset']}`", "",
             f"- File: `{card['file']}`" if card.get("file") else "- File: not saved",
             f"- Method: `{card['method']}` ({card.get('paper') or 'n/a'}), {card.get('steps')} steps, seed "
             f"{card.get('seed')}",
             f"- Images: {card['images']} ({card.get('ipc')} per class on average, per-class budget "
             f"{card.get('class_budget') or 'equal'}), {card['classes']} classes, shape {tuple(card['image_shape'])}, "
             f"labels {card['label_kind']}",
             "- Privacy: " + ("**none**: not differentially private; its images may reveal training images"
                              if p is None else p["guarantee"])]
    for title, key in (("Checks", "checks"), ("Evaluation", "evaluation")):
        if card.get(key):
            lines.append(f"- {title}:")
            lines += [f"  - {k}: {_cell(v)}" for k, v in card[key].items() if not isinstance(v, (list, dict))]
    lines += [f"- Versions: {card.get('versions')}", ""]
    return "\n".join(lines)


def write_data_card(stem: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``; returns both paths."""
    js, md = stem.parent / f"{stem.name}.json", stem.parent / f"{stem.name}.md"
    js.write_text(json.dumps(card, indent=2, default=str))
    md.write_text(data_card_markdown(card))
    return js, md
