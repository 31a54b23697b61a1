"""Peak memory table: method x IPC x unroll length, one fresh process per cell, the data's footprint separated.

    OMP_NUM_THREADS=1 python benchmarks/memory.py --methods linba haba dd mtt tesla --ipc 10 --unroll 10 20 40 \
        --set unroll_memory=adjoint --tag after
    OMP_NUM_THREADS=1 python benchmarks/memory.py --methods linba --ipc 10 --unroll 10 --code /path/to/old/checkout \
        --tag before            # the same cells measured with another checkout of the package (PYTHONPATH)
    python benchmarks/memory.py --compare before=benchmarks/results/memory_before.json \
        after=benchmarks/results/memory_after.json --tag before_after    # one table from several runs

Each cell runs in its own process (so no cell inherits another's heap) and reports, in MB of resident memory
(``/proc/<pid>/statm``, polled every 2 ms by a separate process; on CUDA also ``torch.cuda.max_memory_allocated``):

* ``data``: what loading the dataset added (RSS after loading minus RSS after the imports);
* ``init``: what the method's set-up added (synthetic tensors, optimisers, experts);
* ``step_peak``: the peak during the measured outer steps above the RSS before them: what distilling adds;
* ``total_peak``: the process's whole peak.

The "unroll length" is the number of inner steps back-propagated through: ``unroll_steps`` (LinBa), ``syn_steps``
(MTT, TESLA, HaBa), ``inner_steps`` with one epoch and full BPTT (DD); methods without an unroll get one cell.
Trajectory methods get one expert trained for 2 epochs on a 2,000-image class-balanced subset (memory does not
depend on what the expert learned); they start at epoch 0 or 1 and match one epoch. HaBa uses every decoded image
per student step (``batch_syn=-1``). A cell whose RSS passes ``--limit-gb`` is killed and reported as such.
Results go to ``benchmarks/results/memory_<tag>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNROLL_KEYS = {"linba": lambda n: {"unroll_steps": n},
               "dd": lambda n: {"inner_steps": n, "inner_epochs": 1, "tbptt_window": 0},
               "mtt": lambda n: {"syn_steps": n}, "tesla": lambda n: {"syn_steps": n},
               "haba": lambda n: {"syn_steps": n, "batch_syn": -1}}
TRAJECTORY = ("mtt", "tesla", "haba")

_POLLER = """
import os, signal, sys, time
pid, stop, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
path, page, peak, killed = f"/proc/{pid}/statm", os.sysconf("SC_PAGE_SIZE"), 0, False
while not os.path.exists(stop):
    try:
        with open(path) as fh:
            rss = int(fh.read().split()[1]) * page
    except (FileNotFoundError, ProcessLookupError):
        break
    peak = max(peak, rss)
    if limit > 0 and rss > limit * 2**30 and not killed:
        killed = True
        print(f"KILLED {rss / 2**20:.0f}", flush=True)
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.002)
print(f"PEAK {peak / 2**20:.1f}", flush=True)
"""


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _experts(real, model: str, device, cache: str):
    """One 2-epoch expert on a class-balanced 2,000-image subset (see the module docstring)."""
    from distill_apps.experts import ExpertConfig, get_or_train_experts
    from distill_apps.runtime import generator

    per = max(1, 2000 // real.num_classes)
    sub = real.subset(real.sample_balanced(per, generator("memory-bench-experts")), name=real.name + "-sub2000")
    cfg = ExpertConfig(num_experts=1, epochs=2, augment=None)
    return get_or_train_experts(sub, model, config=cfg, seed=0, cache_dir=cache, device=device, progress=False)


def cell(method: str, dataset: str, ipc: int, unroll: int | None, steps: int, model: str, device: str,
         config: dict, cache: str) -> dict:
    """Measure one cell in this process; prints marks the parent's poller turns into phases."""
    import torch

    import distill_apps as da
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    out = {"rss_imports": rss_mb()}
    real = da.load_dataset(dataset)
    out["rss_data"] = rss_mb()
    cfg = dict(config)
    if unroll is not None and method in UNROLL_KEYS:
        cfg.update(UNROLL_KEYS[method](unroll))
    if method in TRAJECTORY:
        cfg.update(max_start_epoch=1, expert_epochs=1, num_experts=1)
    d = make_distiller(method, real, ipc, config=cfg, device=device, model=model)
    if method in TRAJECTORY:
        d._experts = _experts(d.real, model, d.device, cache)
    state = d.init(generator("init", 0))
    out["rss_init"] = rss_mb()
    dev = torch.device(d.device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    print("MARK steps", flush=True)
    times = []
    for t in range(steps):
        t0 = time.perf_counter()
        d.step(state, generator("step", 0, t))
        times.append(time.perf_counter() - t0)
    print("MARK done", flush=True)
    out["step_seconds"] = [round(s, 2) for s in times]
    out["config"] = cfg
    if dev.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_step_peak_mb"] = (torch.cuda.max_memory_allocated() - cuda_base) / 2**20
    return out


def run_cell(method: str, ipc: int, unroll: int | None, a: argparse.Namespace, config: dict) -> dict:
    """One cell in a fresh process, with a poller process recording its RSS (and killing it past the limit)."""
    args = [sys.executable, __file__, "--one", method, str(ipc), str(unroll or 0), "--dataset", a.dataset,
            "--model", a.model, "--steps", str(a.steps), "--device", a.device, "--cache", a.cache,
            "--config-json", json.dumps(config)]
    env = dict(os.environ)
    if a.code:
        env["PYTHONPATH"] = os.path.abspath(a.code) + os.pathsep + env.get("PYTHONPATH", "")
    stop = Path(tempfile.mkdtemp()) / "stop"
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    poller = subprocess.Popen([sys.executable, "-c", _POLLER, str(child.pid), str(stop), str(a.limit_gb)],
                              stdout=subprocess.PIPE, text=True)
    out, err = child.communicate()
    stop.touch()
    pol, _ = poller.communicate(timeout=60)
    row = {"method": method, "dataset": a.dataset, "ipc": ipc, "unroll": unroll, "model": a.model,
           "code": a.code or "this checkout", "options": config}
    peak = [float(line.split()[1]) for line in pol.splitlines() if line.startswith("PEAK")]
    killed = [float(line.split()[1]) for line in pol.splitlines() if line.startswith("KILLED")]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if killed or child.returncode == -signal.SIGKILL:
        row.update(status=f"killed above {a.limit_gb} GB", total_peak_mb=killed[0] if killed else None)
        return row
    if child.returncode != 0 or not rows:
        row.update(status="error", error=err.strip().splitlines()[-1:] if err else "")
        return row
    r = rows[0]
    row.update(status="ok", data_mb=round(r["rss_data"] - r["rss_imports"], 1),
               init_mb=round(r["rss_init"] - r["rss_data"], 1),
               step_peak_mb=round(max(peak[0], r["rss_init"]) - r["rss_init"], 1) if peak else None,
               total_peak_mb=round(peak[0], 1) if peak else None, step_seconds=r["step_seconds"],
               config=r["config"], cuda_step_peak_mb=r.get("cuda_step_peak_mb"))
    return row


def table(rows: list[dict], title: str) -> str:
    """The memory cells as a markdown table under ``title``."""
    lines = [title, "", "| method | IPC | unroll | options | data MB | init MB | step peak MB | total peak MB | "
             "s/step | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        secs = r.get("step_seconds")
        lines.append(f"| {r['method']} | {r['ipc']} | {r['unroll'] or '-'} | {opts} | {r.get('data_mb', '-')} | "
                     f"{r.get('init_mb', '-')} | {r.get('step_peak_mb', '-')} | {r.get('total_peak_mb', '-')} | "
                     f"{round(sum(secs) / len(secs), 1) if secs else '-'} | {r['status']} |")
    return "\n".join(lines) + "\n"


def compare(paths: list[str], labels: list[str]) -> str:
    """One table of total peak RSS (MB) per (method, IPC, unroll) across result files (e.g. before / after; several
    files of one column separated by commas), with each column's growth from its shortest to its longest unroll."""
    runs = [{(r["method"], r["ipc"], r["unroll"]): r for p in group.split(",") for r in json.loads(Path(p).read_text())["rows"]}
            for group in paths]
    keys = sorted({k for run in runs for k in run}, key=lambda k: (k[0], k[1], k[2] or 0))
    cell = lambda r: "-" if r is None else (f"{r['total_peak_mb']:.0f}" if r["status"] == "ok"  # noqa: E731
                                              else f"> {r['status'].split()[-2]} GB (killed)")
    lines = ["| method | IPC | unroll | " + " | ".join(f"{lab}: total peak MB" for lab in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for k in keys:
        lines.append(f"| {k[0]} | {k[1]} | {k[2] or '-'} | " + " | ".join(cell(run.get(k)) for run in runs) + " |")
    lines += ["", "| method | IPC | " + " | ".join(f"{lab}: growth shortest -> longest unroll" for lab in labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for m, ipc in sorted({(k[0], k[1]) for k in keys}):
        growth = []
        for run in runs:
            ok = sorted((k[2] or 0, r["total_peak_mb"]) for k, r in run.items()
                        if k[:2] == (m, ipc) and r["status"] == "ok")
            growth.append(f"{100 * (ok[-1][1] / ok[0][1] - 1):+.1f} % ({ok[0][0]} -> {ok[-1][0]})" if len(ok) > 1 else "-")
        lines.append(f"| {m} | {ipc} | " + " | ".join(growth) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: each method x IPC x unroll cell in a fresh process under a memory limit; JSON and markdown."""
    from distill_apps.options import add_set_argument, make_parser, method_options

    ap = make_parser("python benchmarks/memory.py", __doc__)
    ap.add_argument("--methods", nargs="+", default=["linba", "haba", "dd", "mtt", "tesla"])
    ap.add_argument("--ipc", nargs="+", type=int, default=[1, 10, 50])
    ap.add_argument("--unroll", nargs="+", type=int, default=[10, 20, 40])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--steps", type=int, default=1, help="outer steps measured per cell")
    ap.add_argument("--device", default="cpu")
    add_set_argument(ap)
    ap.add_argument("--code", default=None, help="run the cells with this checkout of distill_apps (PYTHONPATH)")
    ap.add_argument("--limit-gb", type=float, default=8.0, help="kill a cell whose RSS passes this (0: no limit)")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("DISTILL_APPS_CACHE", tempfile.gettempdir()),
                                                    "memory_bench_experts"))
    ap.add_argument("--tag", default="table")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--compare", nargs="+", metavar="LABEL=JSON",
                    help="print one before/after table from result files (e.g. before=a.json after=b.json)")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--config-json", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        method, ipc, unroll = a.one[0], int(a.one[1]), int(a.one[2]) or None
        print(json.dumps(cell(method, a.dataset, ipc, unroll, a.steps, a.model, a.device, json.loads(a.config_json),
                              a.cache)), flush=True)
        return 0
    if a.compare:
        labels, paths = zip(*(item.split("=", 1) for item in a.compare))
        md = compare(list(paths), list(labels))
        print(md)
        (Path(a.out_dir) / f"memory_{a.tag}.md").write_text(md)
        return 0
    configs = method_options(a.set, a.methods)
    rows = []
    out = Path(a.out_dir) / f"memory_{a.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for m in a.methods:
        for ipc in a.ipc:
            for n in (a.unroll if m in UNROLL_KEYS else [None]):
                row = run_cell(m, ipc, n, a, configs[m])
                rows.append(row)
                print(json.dumps(row), flush=True)
                meta = {"dataset": a.dataset, "model": a.model, "device": a.device, "steps": a.steps,
                        "code": a.code or "this checkout", "options": a.set, "limit_gb": a.limit_gb,
                        "omp_threads": os.environ.get("OMP_NUM_THREADS")}
                out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, f"Peak memory ({a.dataset}, {a.model}, {a.device}, {a.steps} outer step(s) per cell; "
                     f"code: {a.code or 'this checkout'}; options: {a.set or '-'})")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
