"""Recipe ``federated``: one-shot distilled FL vs distilled + FedAvg vs FedAvg, on Flower.

N clients hold Dirichlet(alpha) label-skewed (or IID) partitions. The three strategies of
:mod:`distill_apps.integrations.flower` run on the same federation, one after another: ``oneshot`` (each client
sends a distilled summary once; the server trains on their union -- DOSFL / FedDM's one-shot setting),
``distilled_fedavg`` (FedAvg whose clients also train on the union of summaries after round 1) and ``fedavg``
(the baseline) at the same number of rounds. Reported: test accuracy of the global model and total bytes
communicated (uplink + downlink), per round too. Writes ``results.json``, ``report.md`` and ``federated.png``.

    distill-apps recipe federated --dataset digits --clients 5 --alpha 0.5 --rounds 3 --set batch_real=64 --json
    distill-apps recipe federated --mode deployment   # real SuperLink + SuperNodes on 127.0.0.1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from distill_apps.errors import ConfigError
from distill_apps.options import add_set_argument, make_parser, method_options
from distill_apps.recipes.reporting import StageBar, figure_markdown, integer_ticks, save_figure, write_file

#: the one line `distill-apps recipe --help` shows
SUMMARY = "federated learning on Flower: one-shot distilled summaries vs distilled + FedAvg vs FedAvg, bytes counted"

STRATEGY_NAMES = ("oneshot", "distilled_fedavg", "fedavg")


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe federated", __doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--data-root", default="", help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--clients", type=int, default=5, help="number of clients (SuperNodes)")
    ap.add_argument("--partition", choices=("dirichlet", "iid"), default="dirichlet", help="how data is split")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (0.1 strongly non-IID)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of distilled+FedAvg and FedAvg")
    ap.add_argument("--ipc", type=int, default=10, help="synthetic images per class on each client")
    ap.add_argument("--method", default="dm", help="any registered image distillation method")
    ap.add_argument("--steps", type=int, default=50, help="distillation steps on each client")
    add_set_argument(ap)
    ap.add_argument("--model", default="convnet-d2-w32", help="network of the clients and the server")
    ap.add_argument("--local-steps", type=int, default=30, help="local SGD minibatches per FedAvg round")
    ap.add_argument("--local-lr", type=float, default=0.01, help="learning rate of local training")
    ap.add_argument("--batch-size", type=int, default=64, help="minibatch of local training")
    ap.add_argument("--mix", type=float, default=0.5, help="share of summary images in local training")
    ap.add_argument("--server-epochs", type=int, default=100, help="one-shot: epochs on the union")
    ap.add_argument("--strategies", nargs="+", choices=STRATEGY_NAMES, default=list(STRATEGY_NAMES),
                    help="strategies to run, one after another")
    ap.add_argument("--seed", type=int, default=0, help="seed of partition, distillation and training")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--mode", choices=("simulation", "deployment"), default="simulation",
                    help="Flower's simulation engine, or real SuperLink + SuperNodes on 127.0.0.1")
    ap.add_argument("--timeout", type=float, default=1800.0, help="deployment: wall-clock bound in seconds")
    ap.add_argument("--out", default="out/federated", help="folder for results.json, report.md, federated.png")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def _mb(b: float) -> str:
    """Bytes in kB or MB, for the report."""
    return f"{b / 1e6:.3f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def report_markdown(res: dict[str, Any], mode: str, command: str) -> str:
    """The markdown report: settings, command, and accuracy and bytes per strategy."""
    cfg = res["config"]
    lines = [f"# Federated distillation: {cfg['dataset']}, {cfg['num_clients']} clients, "
             f"{cfg['partition']}" + (f" alpha={cfg['alpha']}" if cfg["partition"] == "dirichlet" else ""), "",
             result_paragraph(res), "",
             f"Mode: {mode}. Method {cfg['method']} (IPC {cfg['ipc']}, {cfg['steps']} steps per client), model "
             f"{cfg['model']}, {cfg['local_steps']} local steps per FedAvg round, seed {cfg['seed']}.", "",
             f"Command: `{command}`", "",
             "| strategy | rounds | test accuracy | uplink | downlink | total bytes | summary images |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in res["strategies"].items():
        acc = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f} %"
        lines.append(f"| {name} | {s['rounds']} | {acc} | {_mb(s['bytes_up'])} | {_mb(s['bytes_down'])} | "
                     f"{_mb(s['bytes_total'])} ({s['bytes_total']} B) | {s['summary_images']} |")
    lines += ["", "Accuracy after each round (round 0 = the initial model):", ""]
    for name, s in res["strategies"].items():
        lines.append(f"- {name}: " + ", ".join(f"r{r} {100 * a:.1f}%" for r, a in s["accuracy_by_round"].items()))
    problems = [(n, x) for n, s in res["strategies"].items() for x in s["rejected"] + s["failures"]]
    if problems:
        lines += ["", "Rejected or failed replies:", ""] + [f"- {n}: round {x['round']}, {x['reason']}"
                                                            for n, x in problems]
    lines += ["", "Bytes are Flower record payloads (serialised arrays + config/metric records), counted per client "
              "and per round by the server; see results.json for the breakdown.", ""]
    part = cfg["partition"] + (f" (alpha {cfg['alpha']})" if cfg["partition"] == "dirichlet" else "")
    setting = (f"{cfg['dataset']}, {cfg['num_clients']} clients, {part} partition, {cfg['method']} IPC {cfg['ipc']} "
               f"({cfg['steps']} steps per client), model {cfg['model']}, {cfg['local_steps']} local steps per "
               f"FedAvg round, seed {cfg['seed']}, 1 run")
    lines += [figure_markdown("federated.png", "accuracy and bytes per round", (
        f"left: test accuracy of the global model after each round (round 0 = the initial model); right: "
        f"cumulative bytes sent (uplink + downlink) after each round; one line per strategy. {setting}.")),
        figure_markdown("accuracy_bytes.png", "accuracy against bytes sent", (
            f"test accuracy of the global model (y) against the cumulative bytes sent up to that round (x, MB, "
            f"log scale), one point per round, one line per strategy: further up and left is better. {setting}."))]
    return "\n".join(lines) + "\n"


def _cumulative(s: dict[str, Any]) -> list[int]:
    cum, tot = [0], 0
    for r in s["by_round"]:
        tot += r["up"] + r["down"]
        cum.append(tot)
    return cum


def result_paragraph(res: dict[str, Any]) -> str:
    """The report's opening paragraph: each strategy's final accuracy and bytes, one-shot against FedAvg."""
    st = {n: s for n, s in res["strategies"].items() if s["accuracy"] is not None}
    if not st:
        return "No strategy finished with an accuracy (see the failures below)."
    parts = [f"{n} reached {100 * s['accuracy']:.1f} % after {s['rounds']} round(s) and {_mb(s['bytes_total'])} sent"
             for n, s in st.items()]
    text = "On this federation " + "; ".join(parts) + "."
    if "oneshot" in st and "fedavg" in st:
        o, f = st["oneshot"], st["fedavg"]
        ratio = f["bytes_total"] / max(1, o["bytes_total"])
        gap = 100 * (o["accuracy"] - f["accuracy"])
        text += (f" One-shot distilled learning sent {ratio:.1f}x fewer bytes than FedAvg and ended "
                 f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} it (1 run).")
    return text


def plot(res: dict[str, Any], path: Path) -> Path:
    """Plot accuracy per round and cumulative MB per strategy into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in res["strategies"].items():
        rounds = [int(r) for r in s["accuracy_by_round"]]
        a1.plot(rounds, [100 * v for v in s["accuracy_by_round"].values()], marker="o", label=name)
        cum = _cumulative(s)
        a2.plot(range(len(cum)), [c / 1e6 for c in cum], marker="o", label=name)
    a1.set(xlabel="round", ylabel="test accuracy (%)", title="global model")
    a2.set(xlabel="round", ylabel="cumulative MB (up + down)", title="communication")
    for ax in (a1, a2):
        integer_ticks(ax)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)
    return path


def plot_accuracy_bytes(res: dict[str, Any], path: Path) -> Path:
    """Accuracy of the global model against the cumulative bytes sent, one point per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, s in res["strategies"].items():
        accs = [100 * v for v in s["accuracy_by_round"].values()]
        cum = _cumulative(s)[1:len(accs)]  # bytes sent up to each round after round 0
        if accs[1:]:
            ax.plot([c / 1e6 for c in cum], accs[1:len(cum) + 1], marker="o", label=name)
    ax.set_xscale("log")
    ax.set(xlabel="cumulative MB sent (up + down, log scale)", ylabel="test accuracy (%)",
           title="accuracy against communication")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: the federation in simulation or as a loopback deployment, then the report."""
    a = build_parser().parse_args(argv)
    from distill_apps.integrations import flower

    opts = method_options(a.set, [a.method])[a.method]
    cfg = flower.FederatedConfig(
        dataset=a.dataset, data_root=a.data_root, num_clients=a.clients, partition=a.partition, alpha=a.alpha,
        seed=a.seed, method=a.method, ipc=a.ipc, steps=a.steps, method_config=opts, model=a.model,
        strategies=list(dict.fromkeys(a.strategies)), rounds=a.rounds, local_steps=a.local_steps, local_lr=a.local_lr,
        batch_size=a.batch_size, mix=a.mix, server_epochs=a.server_epochs, device=a.device)
    if a.timeout <= 0:
        raise ConfigError(f"--timeout must be positive; got {a.timeout}.")
    bar = StageBar(2, "federated", disable=a.json)
    with bar(f"{a.mode}: {', '.join(cfg.strategies)}"), contextlib.redirect_stdout(sys.stderr):
        # Flower/Ray chatter must not mix with the --json object
        res = flower.simulate(cfg) if a.mode == "simulation" else flower.deploy(cfg, timeout=a.timeout)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["distill-apps", "recipe", "federated", *(argv if argv is not None else sys.argv[1:])])
    with bar("report"):
        write_file(out / "results.json", json.dumps(res, indent=1, default=str))
        write_file(out / "report.md", report_markdown(res, a.mode, command))
        png = plot(res, out / "federated.png")
        plot_accuracy_bytes(res, out / "accuracy_bytes.png")
    bar.close()
    summary = {
        "dataset": cfg.dataset, "clients": cfg.num_clients, "partition": cfg.partition, "alpha": cfg.alpha,
        "rounds": cfg.rounds, "ipc": cfg.ipc, "method": cfg.method, "steps": cfg.steps, "model": cfg.model,
        "mode": a.mode,
        "strategies": {n: {"rounds": s["rounds"], "accuracy": s["accuracy"], "bytes_total": s["bytes_total"],
                           "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"],
                           "accuracy_by_round": s["accuracy_by_round"], "summary_images": s["summary_images"],
                           "rejected": len(s["rejected"]), "failures": len(s["failures"])}
                       for n, s in res["strategies"].items()},
        "report": str(out / "report.md"), "plot": str(png), "accuracy_bytes_plot": str(out / "accuracy_bytes.png"),
        "results": str(out / "results.json"),
    }
    if a.json:
        print(json.dumps(summary))
    else:
        print(report_markdown(res, a.mode, command))
        print(f"report: {out / 'report.md'}  plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
