"""Reports people read (issue 21 item 5): integer ticks on counting axes, a caption under every figure, ``± std``
only with 2 or more runs, a one-paragraph result opening every recipe report, labelled and up-scaled grids and
nearest-neighbour pairs, accuracy-vs-bytes (federated) and accuracy-vs-epsilon (private sharing) plots, files
written 0644. Tiny runs on digits."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import distill_apps as da
from distill_apps.errors import DataError
from distill_apps.recipes import reporting

NET = "convnet-d2-w16"


def _report_checks(md: str, folder: Path) -> list[str]:
    """Every report: a paragraph in words right under the title, a caption under every figure, figures present and
    0644 like the report; returns the figure names."""
    blocks = [b.strip() for b in md.split("\n\n") if b.strip()]
    assert blocks[0].startswith("# ")
    first = blocks[1]
    assert not first.startswith(("|", "!", "-", "*")) and len(first) > 80 and re.search(r"\d", first), first
    figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    for name in figs:
        at = md.index(f"]({name})")
        after = md[at:].split("\n\n")[1]
        assert after.startswith("*Figure: ") and len(after) > 60, (name, after)
        assert (folder / name).stat().st_size > 0
        assert oct((folder / name).stat().st_mode & 0o777) == "0o644", name
    assert oct((folder / "report.md").stat().st_mode & 0o777) == "0o644"
    return figs


def test_plus_minus_only_with_two_runs_and_integer_ticks():
    assert reporting.pm(0.712, 0.0, 1, scale=100) == "71.20 (1 run)"
    assert reporting.pm(0.712, 0.013, 3, scale=100) == "71.20 ± 1.30"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.3, 0.5])  # matplotlib alone would tick 1.0, 1.2, 1.4, ...
    reporting.integer_ticks(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 2]
    assert ticks == [1, 2]
    plt.close(fig)


def test_image_grid_is_upscaled_with_class_names(digits, tmp_path):
    from PIL import Image

    s = da.distill("random", digits, 2, progress=False)
    old = os.umask(0o022)
    try:
        plain = Image.open(s.image_grid(tmp_path / "plain.png", labels=False, scale=1)).size
        big = Image.open(s.image_grid(tmp_path / "big.png", labels=False)).size
        named = s.image_grid(tmp_path / "named.png", labels=[f"digit {c}" for c in range(10)])
    finally:
        os.umask(old)
    assert plain == (2 * 9 + 1, 10 * 9 + 1)  # 8x8 digits, 1 px padding: the old 19x91 sheet
    assert big[1] >= 10 * 64 and big[0] >= 2 * 64  # each image at least 64 px
    img = Image.open(named)
    assert img.size[1] == big[1] and img.size[0] > big[0] + 30  # a margin holding the names
    margin = torch.tensor(np.asarray(img.convert("L").crop((0, 0, img.size[0] - big[0], img.size[1]))))
    assert (margin < 128).any()  # the names are drawn (dark text on white)
    assert oct(named.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(DataError, match="one name per class"):
        s.image_grid(tmp_path / "bad.png", labels=["a", "b"])
    assert not (tmp_path / "bad.png").exists()


def test_nearest_neighbour_pairs_are_readable_and_labelled(digits, tmp_path):
    from PIL import Image

    from distill_apps.privacy import nearest_neighbour_audit

    s = da.distill("random", digits, 1, progress=False)
    nn = nearest_neighbour_audit(s, digits, png=tmp_path / "nn.png", pairs=4)
    w, h = Image.open(nn["png"]).size
    assert w >= 300 and h >= 4 * 150  # was 22 x 102 px: 8x8 images at 1:1


def test_continual_report_single_seed(tmp_path, capsys):
    from distill_apps.cli import main

    out = tmp_path / "c"
    assert main(["recipe", "continual", "--experiences", "2", "--methods", "reservoir", "dm", "--seeds", "0",
                 "--steps", "1", "--epochs", "1", "--model", NET, "--mem-per-class", "2", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    md = (out / "report.md").read_text()
    assert _report_checks(md, out) == ["accuracy.png"]
    assert md.split("\n\n")[1].startswith("Replaying a 2-image-per-class DM summary kept")
    dm = next(m for m in res["memories"] if m["memory"] == "dm")
    assert f"{100 * dm['final_accuracy']['mean']:.1f} %" in md.split("\n\n")[1]
    assert "±" not in md and "(1 run)" in md and "1 run (seed 0)" in md
    assert oct((out / "results.json").stat().st_mode & 0o777) == "0o644"


def test_private_sharing_report_one_run(tmp_path, capsys):
    from distill_apps.recipes import private_sharing

    out = tmp_path / "p"
    assert private_sharing.main(["--dataset", "digits", "--ipc", "1", "--epsilons", "2", "8", "--methods", "dp-dm",
                                 "--steps", "2", "--set", "dp-dm.releases=2", "--eval-epochs", "2", "--runs", "1",
                                 "--dpsgd-epochs", "1", "--audit-n", "30", "--model", NET, "--out", str(out),
                                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    md = (out / "report.md").read_text()
    figs = _report_checks(md, out)
    assert figs[0] == "accuracy_epsilon.png" and "grid_shared.png" in figs
    assert {"nn_dp-dm_eps2.png", "nn_dp-dm_eps8.png", "nn_dp-dm_epsinf.png"} <= set(figs)
    assert "±" not in md and "(1 run)" in md
    first = md.split("\n\n")[1]
    best = max((x for x in res["summaries"] if x["target_epsilon"] == 2), key=lambda x: x["accuracy"])
    assert first.startswith(f"At epsilon {best['epsilon']:.3g}") and "DP-SGD" in first
    cap = md.split("](grid_shared.png)")[1].split("\n\n")[1]
    assert "noise" in cap and "epsilon" in cap.lower() or "differential privacy" in cap


def _fed_result() -> dict:
    """A federated result as flower.simulate returns it (three strategies, two rounds)."""
    def strat(rounds, accs, per_round):
        return {"rounds": rounds, "accuracy": accs[-1], "accuracy_by_round": {str(i): a for i, a in enumerate(accs)},
                "by_round": [{"up": u, "down": d} for u, d in per_round], "bytes_up": sum(u for u, _ in per_round),
                "bytes_down": sum(d for _, d in per_round), "bytes_total": sum(u + d for u, d in per_round),
                "summary_images": 20, "rejected": [], "failures": []}
    return {"config": {"dataset": "digits", "num_clients": 2, "partition": "dirichlet", "alpha": 0.5,
                       "method": "dm", "ipc": 2, "steps": 3, "model": NET, "local_steps": 5, "seed": 0},
            "strategies": {"oneshot": strat(1, [0.1, 0.6], [(30_000, 0)]),
                           "distilled_fedavg": strat(2, [0.1, 0.5, 0.7], [(200_000, 200_000), (200_000, 260_000)]),
                           "fedavg": strat(2, [0.1, 0.4, 0.55], [(200_000, 200_000), (200_000, 200_000)])}}


def test_federated_report_and_accuracy_bytes_plot(tmp_path):
    from distill_apps.recipes import federated_distilled as fed

    res = _fed_result()
    old = os.umask(0o022)
    try:
        fed.plot(res, tmp_path / "federated.png")
        fed.plot_accuracy_bytes(res, tmp_path / "accuracy_bytes.png")
        reporting.write_file(tmp_path / "report.md", fed.report_markdown(res, "simulation", "distill-apps ..."))
    finally:
        os.umask(old)
    md = (tmp_path / "report.md").read_text()
    assert _report_checks(md, tmp_path) == ["federated.png", "accuracy_bytes.png"]
    first = md.split("\n\n")[1]
    # fedavg sent 800 kB, one-shot 30 kB: 26.7x fewer, 5 points above
    assert "26.7x fewer bytes than FedAvg" in first and "5.0 points above" in first


def test_nas_report_opens_with_the_result(tmp_path):
    from distill_apps.integrations import nni as dn
    from distill_apps.recipes import nas_proxy

    row = {"kendall": 0.6, "top_k_overlap": 1.0, "top_k": 2, "mean_proxy_acc": 0.5, "seconds_per_candidate": 0.1,
           "speedup": 12.0, "distill_seconds": 1.0, "amortised_speedup": 5.0}
    st = dn.StudyResult("digits", 10, 3, [{"depth": d} for d in (1, 2, 3)], [0.5, 0.6, 0.7], [1.0] * 3,
                        proxies={"dm": {**row, "spearman": 0.8, "accuracy": [0.3, 0.4, 0.5]},
                                 "random": {**row, "spearman": 0.4, "accuracy": [0.4, 0.3, 0.5]}},
                        settings={"full_epochs": 2, "train_images": 100, "proxy_epochs": 3, "val_per_class": 5,
                                  "device": "cpu", "seed": 0})
    nas_proxy._scatter([st], tmp_path / "scatter.png")
    nas_proxy._report([st], None, ["--k", "3"], tmp_path / "report.md")
    md = (tmp_path / "report.md").read_text()
    assert _report_checks(md, tmp_path) == ["scatter.png"]
    assert md.split("\n\n")[1].startswith("Ranking 3 ConvNet architectures on digits, the best proxy was dm with IPC "
                                          "10: Spearman rho 0.80") and "rho 0.40" in md.split("\n\n")[1]
