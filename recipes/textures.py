"""Recipe ``distill-apps recipe textures``: tileable textures distilled from one class of a dataset.

The real data are random crops of one class (``--class``, e.g. Fashion-MNIST's ``Coat``); a registered method
(``--method``, default DM) distils ``--tiles`` synthetic images from them with a circularly padded network
(``convnet-circular``: every convolution wraps around, so each image is optimised as a torus and its opposite
edges join, as in trajectory matching's tileable textures). For comparison the same setup is distilled with the
ordinary zero-padded twin (``--no-plain`` skips it). Writes under ``--out``: ``tile_<i>.png`` (each texture,
up-scaled), ``preview_3x3.png`` (every tile repeated 3 x 3, the circular run above the plain one),
``texture.safetensors`` (the summary), ``report.md`` (seam gaps: wrap-around edge vs inside differences) and
``results.json``; ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from distill_apps.options import add_set_argument, make_parser, method_options
from distill_apps.recipes.reporting import StageBar, figure_markdown, finish

#: the one line `distill-apps recipe --help` shows
SUMMARY = "tileable textures (circular padding) distilled from one class, with 3x3 previews and a seam check"

#: the recipe's defaults per method (``--set METHOD.KEY=VALUE`` overrides): start from the real (tileable) crops,
#: a random circular shift of every texture each step (``roll``, trajectory matching's texture mode), no DSA (its
#: zero fill would teach the texture an edge), a step size that changes the crops without drowning them in noise
PRESETS: dict[str, dict[str, Any]] = {"dm": {"init": "real", "dsa_strategy": "none", "roll": True, "lr_img": 0.3,
                                             "batch_real": 128}}


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe textures", __doc__.split("\n\n")[0] + f"\n\nPresets: {PRESETS}.")
    ap.add_argument("--dataset", default="fashion_mnist", help="a registered image dataset")
    ap.add_argument("--class", dest="cls", default="Coat", help="the class the textures come from (name or index)")
    ap.add_argument("--size", type=int, default=16, help="side of a texture tile in pixels (even: the real data "
                    "are size/2 crops mirrored to size, so they tile themselves)")
    ap.add_argument("--crops", type=int, default=1024, help="random crops of the class used as real data")
    ap.add_argument("--tiles", type=int, default=4, help="textures to distil")
    ap.add_argument("--method", default="dm", help="a registered image distillation method")
    ap.add_argument("--steps", type=int, default=300, help="distillation steps")
    add_set_argument(ap)
    ap.add_argument("--model", default="convnet-circular-d3-w16",
                    help="circularly padded distillation network (convnet-circular-d<depth>-w<width>)")
    ap.add_argument("--no-plain", action="store_true", help="skip the zero-padded comparison run")
    ap.add_argument("--scale", type=int, default=8, help="pixel up-scaling of the PNGs")
    ap.add_argument("--seed", type=int, default=0, help="seed of crops and distillation")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--out", default="out/textures", help="folder for the tiles, preview, summary and report")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def plain_model(model: str) -> str:
    """The zero-padded twin of a circular model name (``convnet-circular-d3`` -> ``convnet-d3``)."""
    return model.replace("-circular", "", 1)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import torch

    import distill_apps as da
    from distill_apps.safe_io import write_png
    from distill_apps.errors import ConfigError
    from distill_apps.figures import upscale
    from distill_apps.runtime import pick_device
    from distill_apps.textures import seam_gaps, texture_data, tile

    if "circular" not in a.model:
        raise ConfigError(f"--model {a.model!r} does not pad circularly, so its textures would not tile: use a "
                          "convnet-circular-... model (e.g. convnet-circular-d3-w16).")
    if a.tiles < 1 or a.steps < 0 or a.scale < 1:
        raise ConfigError(f"--tiles and --scale must be >= 1 and --steps >= 0; got {a.tiles}, {a.scale}, {a.steps}.")
    opts = method_options(a.set, [a.method], presets=PRESETS)[a.method]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(a.device))
    runs = [("circular", a.model)] + ([] if a.no_plain else [("plain", plain_model(a.model))])
    bar = StageBar(1 + len(runs) + 1, "textures", disable=a.json)
    with bar(f"crops of {a.cls}"):
        real = da.load_dataset(a.dataset, a.data_root)
        data = texture_data(real, a.cls, a.size, a.crops, a.seed)
    results: dict[str, Any] = {}
    previews = []
    for kind, model in runs:
        with bar(f"distil {kind} ({model})"):
            s = da.distill(a.method, data, a.tiles, steps=a.steps, model=model, seed=a.seed, device=dev,
                           config=opts or None, progress=not a.json)
        pix = data.denormalize(s.materialize().x.detach().cpu()).clamp(0, 1)
        x = s.materialize().x.detach().cpu()
        gaps, per_tile = seam_gaps(x), [seam_gaps(t) for t in x]
        results[kind] = {"model": model, "seam": gaps, "per_tile": per_tile,
                         "seamless": gaps["wrap_columns"] <= gaps["inside_columns"]
                         and gaps["wrap_rows"] <= gaps["inside_rows"]}
        previews.append(torch.cat([tile(t) for t in pix], dim=-1))  # the tiles' 3x3 previews side by side
        if kind == "circular":
            results["summary"] = str(s.save(out / "texture.safetensors"))
            results["tile_pngs"] = [str(write_png(out / f"tile_{i}.png", upscale(t, a.scale)))
                                for i, t in enumerate(pix)]
    with bar("report"):
        sheet = upscale(torch.cat(previews, dim=-2), max(1, a.scale // 2))
        results["preview"] = str(write_png(out / "preview_3x3.png", sheet))
    bar.close()
    result = {"recipe": "textures", "dataset": real.name, "class": data.class_names[0], "size": a.size,
              "tiles": a.tiles, "method": a.method, "steps": a.steps, "config": opts, "seed": a.seed,
              "crops": a.crops, **results}
    return finish(out, result, _report(result), a.json)


def _report(r: dict[str, Any]) -> str:
    c = r["circular"]["seam"]
    text = (f"{r['tiles']} texture tiles of {r['size']}x{r['size']} pixels were distilled with {r['method']} from "
            f"{r['crops']} crops of {r['dataset']} class *{r['class']}*. With circular padding their wrap-around edges "
            f"differ by {c['wrap_columns']:.3f} (columns) / {c['wrap_rows']:.3f} (rows) against "
            f"{c['inside_columns']:.3f} / {c['inside_rows']:.3f} between neighbouring pixels inside, so they "
            f"{'tile without a seam' if r['circular']['seamless'] else 'still show a seam when tiled'}")
    if "plain" in r:
        p = r["plain"]["seam"]
        text += (f"; the zero-padded twin's edges differ by {p['wrap_columns']:.3f} / {p['wrap_rows']:.3f} against "
                 f"{p['inside_columns']:.3f} / {p['inside_rows']:.3f} inside")
    text += " (1 run; mean absolute differences in normalised pixel units)."
    lines = [f"# Tileable textures: {r['dataset']} class {r['class']}", "", text, "",
             "| network | wrap columns | inside columns | wrap rows | inside rows | seamless |",
             "|---|---:|---:|---:|---:|---|"]
    for kind in ("circular", "plain"):
        if kind in r:
            g = r[kind]["seam"]
            lines.append(f"| {r[kind]['model']} ({kind}) | {g['wrap_columns']:.3f} | {g['inside_columns']:.3f} | "
                         f"{g['wrap_rows']:.3f} | {g['inside_rows']:.3f} | {'yes' if r[kind]['seamless'] else 'no'} |")
    setting = (f"{r['method']}, {r['steps']} steps, options {r['config']}, seed {r['seed']}, {r['size']}x{r['size']} "
               "tiles up-scaled with nearest pixels")
    lines += ["", figure_markdown(r["preview"], "3x3 tiled preview", (
        "each texture repeated 3 x 3 edge to edge, the textures side by side; top row: circular padding"
        + ("; bottom row: the zero-padded twin of the same setup, for comparison" if "plain" in r else "")
        + f". {setting}."))]
    for i, t in enumerate(r["tile_pngs"]):
        lines.append(figure_markdown(t, f"tile {i}", f"texture {i} alone (circular padding). {setting}."))
    lines.append(f"Summary: `{Path(r['summary']).name}` (load it with `distill_apps.load_summary`).")
    return "\n".join(lines) + "\n"
