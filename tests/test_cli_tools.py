"""The CLI that explains itself: --version, help with defaults, ``info``, ``export`` (PNG folders that load back)
and ``compare`` (results JSON, markdown table, two plots), and bad input as one paragraph with exit status 2."""
from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import distill_apps as da
from distill_apps import __version__
from distill_apps.cli import build_parser, main

TINY = "convnet-d2-w16"


@pytest.fixture(scope="module")
def summary_file(tmp_path_factory):
    """A small DM summary of digits (2 images per class, 2 steps), written by the CLI."""
    out = tmp_path_factory.mktemp("s") / "dm.safetensors"
    assert main(["distill", "--ipc", "2", "--steps", "2", "--model", TINY, "--no-eval", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("distill-apps: error:")
    return lines[-1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"distill-apps {__version__}"


def test_every_command_help_shows_defaults_and_choices():
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        if name == "recipe":
            continue  # its --help lists the recipes (tests/test_recipes_cli.py)
        text = " ".join(p.format_help().split())
        for act in p._actions:
            if not act.option_strings or any(act.default is v for v in (None, False, argparse.SUPPRESS)) \
                    or act.default == []:
                continue
            help_text = " ".join((act.help or "").split())
            assert help_text, f"{name} {act.option_strings[0]} has no help"
            shown = "default" in help_text.lower() or f"(default: {act.default})" in text
            assert shown, f"{name} --help does not show the default of {act.option_strings[0]}"
            if act.choices:
                assert "{" + ",".join(map(str, act.choices)) + "}" in text
    text = " ".join(sub.choices["distill"].format_help().split())
    assert "--method METHOD distillation method (`distill-apps methods` lists them) (default: dm)" in text
    assert "--budget {quick,paper}" in text and "(default: quick)" in text


def test_info_text_and_json(summary_file, capsys):
    assert main(["info", str(summary_file)]) == 0
    text = capsys.readouterr().out
    for needle in ("image summary", "method      dm", "data        digits", "ipc 2, 2 steps", "protocol train",
                   "privacy     none", "x                float32  20x1x8x8"):
        assert needle in text, needle
    assert main(["info", str(summary_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["method"], info["dataset"], info["ipc"], info["steps"]) == (
        "summary", "dm", "digits", 2, 2)
    assert info["evaluation"]["protocol"] == "train" and info["privacy"] is None
    assert info["checksums"]["file_sha256"] == hashlib.sha256(summary_file.read_bytes()).hexdigest()
    assert info["checksums"]["file_sha256"] in text
    tensors = {t["name"]: t for t in info["tensors"]}
    assert tensors["x"]["shape"] == [20, 1, 8, 8] and tensors["x"]["bytes"] == 20 * 64 * 4
    assert info["tensor_bytes"] == sum(t["bytes"] for t in info["tensors"]) < info["file_bytes"]
    assert info["class_names"] == [str(c) for c in range(10)]


def test_info_on_an_interactions_summary(data_root, tmp_path, capsys):
    if not (data_root / "movielens" / "ml-100k" / "u.data").is_file():
        pytest.skip("MovieLens-100K is not in the data root")
    s = da.distill("distill_cf", "ml-100k", ipc=8, steps=1, config={"batch_users": 64}, device="cpu",
                   progress=False)
    path = s.save(tmp_path / "cf.safetensors")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "recsys" and info["method"] == "distill_cf" and info["evaluation"]["protocol"] == "krr"
    assert info["tensor_bytes"] > 0 and info["checksums"]["tensors_sha256"]


def test_export_round_trip_through_imagefolder(summary_file, tmp_path, capsys):
    out = tmp_path / "pngs"
    assert main(["export", str(summary_file), "--png-dir", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 20 and res["per_class"] == {str(c): 2 for c in range(10)}
    s = da.SyntheticSet.load(summary_file)
    want = (s.x * torch.tensor(s.std).view(1, -1, 1, 1) + torch.tensor(s.mean).view(1, -1, 1, 1)).clamp(0, 1)
    for c in range(10):
        files = sorted((out / str(c)).glob("*.png"))
        assert len(files) == 2
        for f, img in zip(files, want[s.y == c]):
            px = np.asarray(Image.open(f))
            assert px.shape == (8, 8) and oct(f.stat().st_mode & 0o777) == "0o644"
            assert np.abs(px / 255.0 - img[0].numpy()).max() <= 0.5 / 255 + 1e-6  # de-normalised pixels
    back = da.from_folder(out, cache_dir=tmp_path / "cache", progress=False)
    assert back.class_names == [str(c) for c in range(10)] and back.image_shape == (1, 8, 8)
    assert back.size("train") + back.size("test") == 20


def test_export_refuses_a_non_empty_folder_unless_asked(summary_file, tmp_path, capsys):
    out = tmp_path / "pngs"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(summary_file), "--png-dir", str(out)]) == 2
    assert "not empty" in _error(capsys) and (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert main(["export", str(summary_file), "--png-dir", str(out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and len(list(out.rglob("*.png"))) == 20


def test_export_undoes_zca_whitening(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--method", "random", "--ipc", "1", "--zca", "--no-eval", "--no-progress",
                 "--out", str(out)]) == 0
    assert main(["export", str(out), "--png-dir", str(tmp_path / "pngs")]) == 0
    real = da.load_dataset("digits")
    train = real.view("train")[torch.arange(real.size("train"))].float()  # normalised, not whitened
    train = (train * real.std[0] + real.mean[0]).clamp(0, 1)
    for c in range(10):
        (f,) = sorted((tmp_path / "pngs" / str(c)).glob("*.png"))
        px = torch.tensor(np.asarray(Image.open(f)), dtype=torch.float32) / 255
        own = train[real.y_train == c][:, 0]
        # a random summary's images are real training images of their class: de-whitened, one of them comes back
        assert (own - px).abs().flatten(1).max(1).values.min() <= 1.5 / 255


def test_compare_writes_json_markdown_and_two_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "random", "dm", "--ipc", "1", "2", "--steps", "2", "--runs", "1", "--epochs",
            "2", "--model", TINY, "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "compare.json").read_text())
    rows = data["rows"]
    assert [(r["method"], r["ipc"]) for r in rows] == [("random", 1), ("dm", 1), ("random", 2), ("dm", 2)]
    assert all(r["model"] == TINY and r["epochs"] == 2 and r["protocol"] == "train" for r in rows)
    assert all(r["steps"] == 2 for r in rows if r["method"] == "dm")
    md = (out / "compare.md").read_text()
    assert md.startswith(data["caption"]) and "Test accuracy (%) on digits of random, dm at IPC 1, 2" in md
    assert md.count("\n| ") == 1 + 4 and "±" not in md  # a header and 4 rows; one run: no std
    for r, line in zip(rows, md.rstrip().splitlines()[-4:]):  # the row's own evaluation augmentation, none: nothing
        assert line.endswith("ep" + ("" if r["augment"] in (None, "none") else f" +{r['augment']}") + " |"), line
    assert {r["augment"] for r in rows} == {"none", "dsa"}  # random subset unaugmented, DM with DSA
    for name in ("accuracy_vs_ipc.png", "accuracy_vs_time.png"):
        w, h = Image.open(out / name).size
        assert w > 400 and h > 300
    assert "wrote" in printed
    assert main(args) == 2  # a second run refuses to overwrite the report
    assert "already holds a comparison" in _error(capsys)


def test_compare_models_gives_the_cross_architecture_table(tmp_path, monkeypatch, capsys):
    from distill_apps import compare as cmp

    monkeypatch.setitem(cmp.PAPER, ("dm", "digits", 1), 55.5)  # a ConvNet figure: shown on ConvNet rows only
    out = tmp_path / "xa"
    assert main(["compare", "--methods", "dm", "--ipc", "1", "--steps", "1", "--runs", "1", "--epochs", "2",
                 "--model", TINY, "--models", f"{TINY},mlp,convnet", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "compare.json").read_text())
    rows = data["rows"]
    # the random subset of the same size is added first as each network's baseline; one distillation per method
    assert [(r["method"], r["model"]) for r in rows] == [(m, n) for m in ("random", "dm")
                                                         for n in (TINY, "mlp", "convnet")]
    assert [r["paper"] for r in rows] == [None] * 5 + [55.5]
    assert len({(r["steps"], r["distill_seconds"]) for r in rows if r["method"] == "dm"}) == 1
    assert data["settings"]["models"] == f"{TINY},mlp,convnet"
    md = (out / "compare.md").read_text().splitlines()
    assert md[0] == data["caption"] and f"each of {TINY}, mlp, convnet trained from scratch" in md[0]
    assert md[2] == f"| method | IPC | steps | protocol | {TINY} | mlp | convnet | paper, convnet (%) |"
    table = [line.split(" | ") for line in md[4:]]
    assert [t[0] for t in table] == ["| random", "| dm"] and table[1][-1] == "55.5 |"
    for t, method in zip(table, ("random", "dm")):
        got = [float(v) for v in t[4:7]]
        assert got == [round(r["accuracy_mean"], 1) for r in rows if r["method"] == method]
    assert main(["compare", "--methods", "dm", "--ipc", "1", "--steps", "1", "--runs", "1", "--epochs", "1",
                 "--model", TINY, "--models", "mlp", "--no-baseline", "--out", str(tmp_path / "nb"),
                 "--no-progress"]) == 0
    assert [r["method"] for r in json.loads((tmp_path / "nb" / "compare.json").read_text())["rows"]] == ["dm"]


@pytest.mark.parametrize("args,needle", [
    (["info", "nosuch.safetensors"], "No such file"),
    (["compare", "--models", "convnet,nosuch"], "nosuch"),
    (["compare", "--no-baseline"], "--no-baseline goes with --models"),
    (["compare", "--methods", "nosuch"], "Known methods"),
    (["compare", "--methods", "gcond"], "image summaries"),
    (["compare", "--methods", "dm,random"], "space-separated"),
    (["compare", "--ipc", "0"], "--ipc"),
    (["compare", "--ipc", "500"], "IPC 500"),
])
def test_bad_input_exits_2_with_one_paragraph(args, needle, tmp_path, capsys):
    assert main(args + (["--out", str(tmp_path / "c")] if args[0] == "compare" else [])) == 2
    assert needle in _error(capsys)
    assert not (tmp_path / "c").exists()


def test_info_and_export_refuse_files_that_are_not_image_summaries(tmp_path, capsys):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a summary")
    assert main(["info", str(bad)]) == 2
    assert "not a readable safetensors file" in _error(capsys)
    from distill_apps.modalities.recsys import SyntheticInteractions

    s = SyntheticInteractions(matrix=torch.rand(4, 6), meta={"method": "distill_cf", "dataset": "ml-100k"})
    path = s.save(tmp_path / "cf.safetensors")
    assert main(["export", str(path), "--png-dir", str(tmp_path / "p")]) == 2
    assert "image summaries" in _error(capsys) and not (tmp_path / "p").exists()
