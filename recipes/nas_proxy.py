"""Recipe ``distill-apps recipe nas-proxy``: are distilled sets good NAS proxies?

Samples K ConvNet architectures from :class:`~distill_apps.integrations.nni.ConvNetSpace`, trains each on the
full real data and on every proxy (distilled sets and a random subset of the same size), and reports the
Spearman / Kendall rank correlation and top-k overlap between the proxy ranking and the full-data ranking, and
the wall-clock speed-up per candidate. Then it runs an NNI search (sequential engine, no web server) on the
proxy with the best correlation (a tie goes to the distilled proxy, not to the ``random`` baseline; the report
says so) and trains the architecture it finds on the full data.

Writes ``report.md``, ``scatter.png`` (proxy vs full accuracy) and ``study.json`` under ``--out``;
``--json`` prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from distill_apps.options import add_set_argument, make_parser, method_options, split_list
from distill_apps.recipes.reporting import StageBar, figure_markdown, save_figure, write_file

#: the one line `distill-apps recipe --help` shows
SUMMARY = "are distilled sets good NAS proxies? rank correlation with full-data training, then an NNI search"


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe nas-proxy", __doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--k", type=int, default=20, help="architectures sampled from the space")
    ap.add_argument("--ipc", type=int, nargs="+", default=[10], help="images per class of the proxies (several ok)")
    ap.add_argument("--methods", nargs="+", default=["dm", "dsa", "random"],
                    help="proxy methods; 'random' is the random-subset baseline")
    ap.add_argument("--full-epochs", type=int, default=20, help="epochs of full-data training (ground truth)")
    ap.add_argument("--distill-model", default="convnet",
                    help="network the methods distil with (e.g. convnet-d2-w32 for a cheaper DSA on CPU)")
    ap.add_argument("--proxy-epochs", type=int, default=100, help="epochs of training on a proxy")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: each method's quick preset)")
    add_set_argument(ap)
    ap.add_argument("--val-per-class", type=int, default=30, help="held-out real images per class for scoring")
    ap.add_argument("--augment", default="none", choices=("auto", "dsa", "none"),
                    help="augmentation while training on a proxy (auto: DSA for DSA/DM summaries)")
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3], help="ConvNet depths of the space")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64], help="ConvNet widths of the space")
    ap.add_argument("--strategy", default="evolution", choices=("random", "evolution", "tpe", "grid"),
                    help="NNI strategy for the final search")
    ap.add_argument("--search-trials", type=int, default=10, help="trials of the NNI search (0 skips it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of sampling, distillation and training")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--out", default="out/nas_proxy", help="folder for report.md, scatter.png, study.json")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--resume", action="store_true",
                    help="reuse what a stopped run with the same options saved under OUT/checkpoint "
                         "(without it, that folder is cleared and the study starts afresh)")
    return ap


def choose_search_proxy(studies: list[Any]) -> tuple[Any, str, list[str]]:
    """The (study, proxy) with the best Spearman rho over all IPCs; a tie goes to a distilled proxy over the
    ``random`` baseline (then to the first in the study's order). Also returns the proxies it tied with."""
    from distill_apps.integrations.nni import proxy_preference

    pairs = [(st, n) for st in studies for n in st.proxies]
    key = lambda p: proxy_preference(p[1], p[0].proxies[p[1]]["spearman"])  # noqa: E731
    st, name = max(pairs, key=key)
    rho = key((st, name))[0]
    tied = [f"{n} (IPC {s.ipc})" for s, n in pairs if (s, n) != (st, name) and key((s, n))[0] == rho]
    return st, name, tied


def _scatter(studies: list[Any], path: Path) -> None:
    """Scatter plot of proxy vs full-data accuracy, one panel per study, one colour per proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4.2), squeeze=False)
    for ax, st in zip(axes[0], studies):
        full = [100 * a for a in st.full_accuracy]
        for name, p in st.proxies.items():
            ax.scatter([100 * a for a in p["accuracy"]], full, s=18,
                       label=f"{name} (rho {p['spearman']:.2f})")
        ax.set_xlabel("proxy accuracy on held-out real images (%)")
        ax.set_ylabel("full-data test accuracy (%)")
        ax.set_title(f"{st.dataset}, IPC {st.ipc}, K={st.k}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def result_paragraph(studies: list[Any], search: dict[str, Any] | None) -> str:
    """The report's opening paragraph: the best proxy's rank correlation and speed-up, and what the search found."""
    from distill_apps.integrations.nni import proxy_preference

    rows = [(st, r) for st in studies for r in st.table()]
    st, best = max(rows, key=lambda p: proxy_preference(p[1]["proxy"], p[1]["spearman"]))  # ties: distilled
    text = (f"Ranking {st.k} ConvNet architectures on {st.dataset}, the best proxy was {best['proxy']} with IPC "
            f"{st.ipc}: Spearman rho {best['spearman']:.2f} with the full-data ranking, top-{best['top_k']} overlap "
            f"{best['top_k_overlap']:.2f}, {best['speedup']:.1f}x faster per candidate than full-data training")
    rand = [r for s2, r in rows if r["proxy"] == "random" and s2.ipc == st.ipc]
    if rand and best["proxy"] != "random":
        text += f" (the random subset of the same size: rho {rand[0]['spearman']:.2f})"
    text += "; 1 run."
    if search:
        text += (f" The NNI search on it found an architecture with {100 * search['best_full_accuracy']:.1f} % "
                 f"full-data test accuracy (best of the {st.k} sampled: "
                 f"{100 * search['study_best_full_accuracy']:.1f} %).")
    return text


def _report(studies: list[Any], search: dict[str, Any] | None, argv: list[str], path: Path) -> None:
    """Write the markdown report: rank correlations, speed-ups and the search on the best proxy."""
    lines = ["# NAS on distilled proxy sets", "", result_paragraph(studies, search), "",
             f"Command: `distill-apps recipe nas-proxy {' '.join(argv)}`", ""]
    for st in studies:
        s = st.settings
        lines += [f"## {st.dataset}, IPC {st.ipc}, K = {st.k} architectures", "",
                  f"Ground truth: each architecture trained {s['full_epochs']} epochs on {s['train_images']} real "
                  f"images, tested on the test split. Proxies: {s['proxy_epochs']} epochs on the proxy, scored on "
                  f"{s['val_per_class']} held-out real images per class. Device {s['device']}.", "",
                  "| proxy | Spearman | Kendall | top-k overlap | mean proxy acc | s / candidate | speed-up | "
                  "distill s | amortised speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for r in st.table():
            lines.append(f"| {r['proxy']} | {r['spearman']:.3f} | {r['kendall']:.3f} | "
                         f"{r['top_k_overlap']:.2f} (k={r['top_k']}) | {100 * r['mean_proxy_acc']:.1f} % | "
                         f"{r['seconds_per_candidate']:.2f} | {r['speedup']:.1f}x | {r['distill_seconds']:.1f} | "
                         f"{r['amortised_speedup']:.1f}x |")
        full_s = sum(st.full_seconds) / len(st.full_seconds)
        lines += ["", f"Full-data training: {full_s:.2f} s per candidate; best full-data accuracy "
                      f"{100 * max(st.full_accuracy):.2f} %.", ""]
    if search:
        why = (f"the best Spearman rho ({search['spearman']:.3f}); it tied with {', '.join(search['tied_with'])} "
               "and ties go to the distilled proxy, not to the random baseline" if search["tied_with"]
               else f"the best Spearman rho ({search['spearman']:.3f})")
        lines += ["## NNI search on the best proxy", "",
                  f"Proxy `{search['proxy']}` (IPC {search['ipc']}), chosen for {why}. Strategy "
                  f"`{search['strategy']}`, {search['trials']} trials in {search['seconds']:.1f} s (sequential "
                  "engine, no web server).", "",
                  f"Best architecture: `{search['best']}`: proxy accuracy {100 * search['best_proxy_accuracy']:.2f} %, "
                  f"full-data test accuracy {100 * search['best_full_accuracy']:.2f} % "
                  f"(best of the K sampled: {100 * search['study_best_full_accuracy']:.2f} %).", ""]
    st = studies[0].settings
    lines.append(figure_markdown("scatter.png", "proxy vs full accuracy", (
        "each point is one sampled architecture: its accuracy after training on the proxy (x, scored on "
        f"{st['val_per_class']} held-out real images per class, {st['proxy_epochs']} epochs) against its test "
        f"accuracy after {st['full_epochs']} epochs on the full data (y); one colour per proxy (legend: Spearman rho), "
        f"one panel per IPC; seed {st.get('seed', 'n/a')}, 1 run. Points on a rising line mean the proxy ranks "
        "architectures as the full data does.")))
    write_file(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: rank-correlation studies per IPC, then an NNI search on the best proxy and a full-data check of
    what it found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    import distill_apps as da
    from distill_apps.errors import ConfigError
    from distill_apps.integrations import nni as dn
    from distill_apps.runtime import pick_device

    if a.search_trials < 0:
        raise ConfigError(f"--search-trials must be >= 0; got {a.search_trials}.")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(a.device)
    real = da.load_dataset(a.dataset, a.data_root)
    methods = list(dict.fromkeys(split_list(a.methods, "--methods")))
    configs = method_options(a.set, [m for m in methods if m in da.METHODS])
    space = dn.ConvNetSpace.for_data(real, depths=tuple(a.depths), widths=tuple(a.widths))
    augment = None if a.augment == "none" else a.augment
    ckdir = out / "checkpoint"
    if not a.resume and ckdir.exists():
        shutil.rmtree(ckdir)
    studies = []
    bar = StageBar(len(a.ipc) + (3 if a.search_trials else 0) + 1, "nas-proxy", disable=a.json)
    for ipc in a.ipc:
        with bar(f"rank-correlation study IPC {ipc}"):
            studies.append(dn.rank_correlation_study(
                real, k=a.k, ipc=ipc, methods=tuple(methods), full_epochs=a.full_epochs, proxy_epochs=a.proxy_epochs,
                val_per_class=a.val_per_class, steps=a.steps, method_configs=configs, augment=augment, seed=a.seed,
                device=str(dev), space=space, progress=True, distill_model=a.distill_model,
                ground_truth=studies[0] if studies else None,  # full-data training once for all IPCs
                checkpoint=ckdir))
    search = None
    if a.search_trials:
        # the proxy with the best rank correlation over all IPCs; ties go to the distilled proxy
        st, name, tied = choose_search_proxy(studies)
        rest, x_val, y_val = dn.holdout_split(real, a.val_per_class, a.seed)
        saved = dn.StudyCheckpoint.proxy_file(ckdir, name, st.ipc)  # the study's own proxy, same seed
        with bar(f"proxy {name} IPC {st.ipc}"):
            summary = da.SyntheticSet.load(saved) if saved.exists() else da.distill(
                name, rest, st.ipc, steps=a.steps, budget="quick", model=a.distill_model, seed=a.seed,
                device=str(dev), config=configs.get(name), progress=False)
        task = dn.ProxyTask(summary, x_val, y_val, epochs=a.proxy_epochs, augment=augment,
                            flip_invariant=real.flip_invariant, seed=a.seed, device=str(dev))
        with bar(f"NNI search ({a.strategy}, {a.search_trials} trials)"):
            res = dn.search_architecture(task, space, strategy=a.strategy, trials=a.search_trials, seed=a.seed,
                                         workdir=out / "nni")
        with bar("full-data training of the found architecture"):
            full_acc, _ = dn.train_full(space, res.best, rest, a.full_epochs, a.seed, dev)
        search = {"proxy": name, "ipc": st.ipc, "spearman": st.proxies[name]["spearman"], "tied_with": tied,
                  "tie_break": "distilled proxy over the random baseline", "strategy": a.strategy,
                  "trials": len(res.trials),
                  "seconds": res.seconds, "best": res.best, "best_proxy_accuracy": res.best_accuracy,
                  "best_full_accuracy": full_acc, "study_best_full_accuracy": max(st.full_accuracy),
                  "workdir": res.workdir}
    with bar("report"):
        _scatter(studies, out / "scatter.png")
        _report(studies, search, argv, out / "report.md")
    bar.close()
    payload = {"dataset": real.name, "k": studies[0].k, "settings": studies[0].settings,
               "results": {f"ipc{st.ipc}": {n: {k: v for k, v in r.items() if k != "proxy"}
                                            for n, r in ((r["proxy"], r) for r in st.table())}
                           for st in studies},
               "full_seconds_per_candidate": {f"ipc{st.ipc}": sum(st.full_seconds) / len(st.full_seconds)
                                              for st in studies},
               "search": search, "report": str(out / "report.md"), "scatter": str(out / "scatter.png")}
    write_file(out / "study.json", json.dumps({"summary": payload, "studies": [st.as_dict() for st in studies]},
                                              indent=1, default=str))
    if a.json:
        print(json.dumps(payload, default=str))
    else:
        print(Path(out / "report.md").read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
