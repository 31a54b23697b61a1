"""The common ending of a recipe: write ``results.json`` and ``report.md``, then print JSON or the report; and the
data card that travels with every summary a recipe shares."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["finish", "data_card", "data_card_markdown", "write_data_card", "write_file", "pm", "integer_ticks",
           "save_figure", "figure_markdown", "grid_caption", "StageBar"]


def finish(out: Path, result: dict[str, Any], markdown: str, as_json: bool) -> int:
    """Write the files into ``out``; with ``as_json`` print ONE JSON object on stdout, else the markdown."""
    write_file(out / "results.json", json.dumps(result, indent=2, default=str))
    write_file(out / "report.md", markdown)
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
    write_file(js, json.dumps(card, indent=2, default=str))
    write_file(md, data_card_markdown(card))
    return js, md


# ---------------------------------------------------------------------- what people read: text, figures, progress
def write_file(path: Path, text: str) -> Path:
    """Write a report or JSON file atomically with the mode a plain ``open`` gives (0644 by default)."""
    from distill_apps.safe_io import write_bytes

    return write_bytes(path, text.encode())


def pm(mean: float, std: float, n: int, fmt: str = ".2f", scale: float = 1.0) -> str:
    """``mean ± std`` when ``n >= 2`` runs back it, else the value and ``(1 run)``: a std of one run is no spread."""
    if n >= 2:
        return f"{scale * mean:{fmt}} ± {scale * std:{fmt}}"
    return f"{scale * mean:{fmt}} (1 run)"


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks at whole numbers only, for axes that count things (experiences, rounds, IPC)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (0644) and close it."""
    import io

    import matplotlib.pyplot as plt

    from distill_apps.safe_io import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def figure_markdown(path: str | Path, alt: str, caption: str) -> str:
    """A figure in report.md: the image, then an italic caption saying what it shows and with what settings."""
    return f"![{alt}]({Path(path).name})\n\n*Figure: {caption}*\n"


def grid_caption(summary, what: str) -> str:
    """Caption of a summary's image grid; a differentially private summary's says why it looks like noise."""
    p = summary.privacy
    text = (f"{what}: the {len(summary.y)} images of the `{summary.meta.get('method')}` summary, one row per class "
            f"(row labels), up-scaled with nearest-neighbour pixels.")
    if p is not None and getattr(p, "epsilon", None) is not None:
        text += (f" The images look like noise because they are: each release was perturbed with Gaussian noise "
                 f"for ({p.epsilon:.3g}, {p.delta:g})-differential privacy; the smaller epsilon, the more noise. What "
                 "matters is what a model learns from them (the accuracy in the table), not how they look.")
    return text


class StageBar:
    """A tqdm bar over a recipe's stages (distil, evaluate, search, ...): ``with bar("distil dm"): ...`` names the
    stage on the bar while it runs and counts it when done. Off with ``disable`` (``--json``)."""

    def __init__(self, total: int, desc: str, disable: bool = False) -> None:
        import sys

        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, unit="stage")

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def stage():
            """Name the stage now running on the bar."""
            self.bar.set_postfix_str(name, refresh=True)
            yield
            self.bar.update(1)
        return stage()

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
