"""``distill-apps recipe textures``: tileable textures from one class (circular padding, random circular shifts),
tiles and a 3x3 preview as PNG, a report with the seam gaps."""
from __future__ import annotations

import json
import os

import torch

import distill_apps as da
from distill_apps.textures import seam_gaps, tile


def test_circular_convnet_sees_the_image_as_a_torus():
    """The mechanism: every convolution of ``convnet-circular`` wraps around, so shifting the input circularly
    shifts the feature map (zero padding does not), and the opposite edges are neighbours like any others."""
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for name, wraps in (("convnet-circular-d1-w8-nopool", True), ("convnet-d1-w8-nopool", False)):
        net = da.build_model(name, 1, 2, 16, generator=torch.Generator().manual_seed(0)).eval()
        f = net.features
        same = torch.allclose(f(torch.roll(x, (5, 3), (2, 3))), torch.roll(f(x), (5, 3), (2, 3)), atol=1e-5)
        assert same == wraps, name


def test_tileable_crops_have_no_seam():
    """The real data a texture is matched to: mirrored crops are periodic (wrap gap 0), plain crops are not."""
    from distill_apps.textures import texture_data

    real = da.load_dataset("fashion_mnist")
    tiled = texture_data(real, "Coat", 16, crops=64, seed=0)
    g = seam_gaps(tiled.x_train)
    assert g["wrap_columns"] == 0.0 and g["wrap_rows"] == 0.0 and g["inside_columns"] > 0
    plain = seam_gaps(texture_data(real, "Coat", 16, crops=64, seed=0, tileable=False).x_train)
    assert plain["wrap_columns"] > plain["inside_columns"]


def test_seam_gaps_and_tiling():
    ramp = torch.arange(8.).view(1, 1, 8).expand(1, 8, 8)  # columns 0..7: a seam of 7 at the wrap
    g = seam_gaps(ramp)
    assert g["inside_columns"] == 1.0 and g["wrap_columns"] == 7.0 and g["wrap_rows"] == g["inside_rows"] == 0.0
    t = tile(ramp)
    assert t.shape == (1, 24, 24) and torch.equal(t[:, 8:16, 16:24], ramp)


def test_textures_recipe_writes_tiles_preview_and_report(tmp_path, capsys):
    from PIL import Image

    from distill_apps.cli import main

    out = tmp_path / "tex"
    old = os.umask(0o022)
    try:
        assert main(["recipe", "textures", "--size", "12", "--tiles", "4", "--crops", "256", "--steps", "30",
                     "--model", "convnet-circular-d2-w8", "--scale", "4", "--out", str(out), "--json"]) == 0
    finally:
        os.umask(old)
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["class"] == "Coat" and res["tiles"] == 4 and len(res["tile_pngs"]) == 4
    assert Image.open(res["tile_pngs"][0]).size == (48, 48)
    w, h = Image.open(res["preview"]).size
    assert (w, h) == (4 * 3 * 12 * 2, 2 * 3 * 12 * 2)  # 4 tiles side by side, 3x3 each; circular over plain
    s = da.load_summary(res["summary"])
    assert s.meta["config"]["roll"] is True and s.meta["model"] == "convnet-circular-d2-w8"
    g = res["circular"]["seam"]
    assert g == seam_gaps(s.x)  # the report's figures are the saved textures' own
    seamless = g["wrap_columns"] <= g["inside_columns"] and g["wrap_rows"] <= g["inside_rows"]
    assert res["circular"]["seamless"] == seamless
    # the distilled tiles join without a seam: across the wrap-around edges they differ no more than inside
    assert seamless, g
    for t in s.x:
        gt = seam_gaps(t)
        assert gt["wrap_columns"] <= gt["inside_columns"] and gt["wrap_rows"] <= gt["inside_rows"], gt
    assert res["plain"]["model"] == "convnet-d2-w8"
    md = (out / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("4 texture tiles of 12x12 pixels were distilled with dm")
    assert "*Figure: each texture repeated 3 x 3" in md
    for f in (out / "report.md", out / "preview_3x3.png", out / "tile_0.png", out / "texture.safetensors"):
        assert oct(f.stat().st_mode & 0o777) == "0o644"
