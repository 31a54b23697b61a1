"""Small CPU-budget benchmark of the graph, recommender and text distillers (docs/graph_recsys_text.md).

    DISTILL_APPS_DATA=/path/to/datasets OMP_NUM_THREADS=1 python benchmarks/modalities.py [--part graph]

Budgets are far below the papers' (see the JSON's "budget" fields); numbers are what this budget gives. Each
method's budget is a set of method options (:data:`BUDGETS`, ``steps`` included); ``--set METHOD.KEY=VALUE``
changes one (e.g. ``--set gcond.steps=100``) and ``--steps N`` sets every method's step count.
Writes benchmarks/results/modalities_<part>.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from distill_apps.options import add_set_argument, make_parser, method_options

OUT = Path(__file__).resolve().parent / "results"
# GCond: 10 matches x 5 inner steps per step (paper: 20 x 15), the structure in 2 of every 10 steps (10 of 50)
_LOOPS = {"outer_loop": 10, "inner_loop": 5}
#: each method's CPU budget as method options (``steps``: distillation steps)
BUDGETS: dict[str, dict] = {
    "gcond": {"steps": 60, **_LOOPS, "alt_cycle": 10, "adj_every": 2}, "gcond-x": {"steps": 60, **_LOOPS},
    "doscond": {"steps": 300}, "gcdm": {"steps": 300}, "distill_cf": {"steps": 60, "gamma": 50},
    "text": {"steps": 60},
}


def _run(args, method: str, **extra) -> dict:
    """The keyword arguments of ``da.distill`` for ``method``: its budget, ``--set`` and ``--steps`` applied."""
    cfg = {**args.configs[method], **extra}
    if args.steps is not None:
        cfg["steps"] = args.steps
    return {"steps": cfg["steps"], "budget": "paper", "config": cfg}


def _flat(ev) -> dict:
    """An EvalResult as the flat dict these JSON files have always held (metric name -> mean, extras)."""
    return {**ev.as_dict(), **({ev.metric: ev.accuracy_mean} if ev.metric != "accuracy" else {}), **ev.extra}


def graph_part(args) -> dict:
    """Distil and evaluate the Planetoid graphs (GCond, GCond-X, DosCond, GCDM vs random and full graph)."""
    import distill_apps as da
    from distill_apps.modalities import graph as G

    res: dict = {}
    for name in args.graphs:
        gd = G.load_planetoid(name, cache_dir=args.cache)
        r: dict = {"nodes": gd.num_nodes, "eval": {"runs": args.runs, "epochs": args.epochs}}
        full = G.full_graph_accuracy(gd, runs=args.runs, epochs=args.epochs)
        r["full"] = _flat(full)
        rnd = G.evaluate_graph(G.random_subgraph(gd, 0.25), gd, runs=args.runs, epochs=args.epochs)
        r["random"] = _flat(rnd)
        for m in ("gcond", "gcond-x", "doscond", "gcdm"):
            b = _run(args, m, reduction=0.25)  # GCond's r = 0.25 (5 nodes per class on the public split)
            t0 = time.perf_counter()
            cg = da.distill(m, gd, 5, **b, device="cpu", progress=False)
            secs = time.perf_counter() - t0
            ev = G.evaluate_graph(cg, gd, runs=args.runs, epochs=args.epochs)
            r[m] = {**_flat(ev), "distill_seconds": secs, "budget": b, "edges": int((cg.adj > 0).sum())}
            print(name, m, ev, f"{secs:.0f}s", flush=True)
        print(name, "full", full, "random", rnd, flush=True)
        res[name] = r
    return res


def recsys_part(args) -> dict:
    """Distil and evaluate MovieLens-100K (Distill-CF vs random users and the full data)."""
    import distill_apps as da
    from distill_apps.modalities import recsys as R

    data = da.load_dataset("ml-100k")
    r = {"full": _flat(R.evaluate_interactions(None, data))}
    for users in args.users:
        b = _run(args, "distill_cf")
        t0 = time.perf_counter()
        s = da.distill("distill_cf", data, users, **b, device="cpu", progress=False)
        r[f"distill_cf_{users}"] = {**_flat(R.evaluate_interactions(s, data)),
                                    "distill_seconds": time.perf_counter() - t0, "budget": b}
        r[f"random_{users}"] = _flat(R.evaluate_interactions(R.random_users(data, users), data))
        print(users, r[f"distill_cf_{users}"], r[f"random_{users}"], flush=True)
    print("full", r["full"], flush=True)
    return r


def text_part(args) -> dict:
    """Distil and evaluate SST-2 (text distillation vs random sentences and the full data)."""
    import distill_apps as da
    from distill_apps.modalities import text as T

    data = T.load_sst2(embedding=args.embedding)
    r: dict = {"embedding": args.embedding, "ipc": args.ipc}
    b = _run(args, "text")
    t0 = time.perf_counter()
    s = da.distill("text", data, args.ipc, **b, device="cpu", progress=False)
    r["text"] = {**_flat(T.evaluate_text(s, data, runs=args.runs)), "distill_seconds": time.perf_counter() - t0,
                 "budget": b, "learned_lr": s.lr}
    r["random"] = _flat(T.train_on_ids(data, T.random_subset(data, args.ipc), runs=args.runs, steps=100))
    r["full"] = _flat(T.train_on_ids(data, None, runs=1, epochs=1))
    print(r, flush=True)
    return r


def main() -> None:
    """Command line: run the chosen modality parts and write one JSON per part."""
    p = make_parser("python benchmarks/modalities.py", __doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["graph", "recsys", "text", "all"], default="all", help="which modality")
    p.add_argument("--graphs", nargs="+", default=["cora", "citeseer"], help="Planetoid graphs")
    p.add_argument("--cache", default=None, help="Planetoid cache folder")
    p.add_argument("--runs", type=int, default=3, help="evaluation runs")
    p.add_argument("--epochs", type=int, default=600, help="graph evaluation epochs (GCond's: 600)")
    p.add_argument("--steps", type=int, default=None, help="distillation steps of every method (default: BUDGETS)")
    add_set_argument(p)
    p.add_argument("--users", type=int, nargs="+", default=[50], help="synthetic users of distill_cf")
    p.add_argument("--embedding", default="bow", help="sentence embedding of the text part")
    p.add_argument("--ipc", type=int, default=10, help="sentences per class of the text part")
    args = p.parse_args()
    args.configs = method_options(args.set, list(BUDGETS), presets=BUDGETS)
    parts = ["graph", "recsys", "text"] if args.part == "all" else [args.part]
    OUT.mkdir(parents=True, exist_ok=True)
    for part in parts:
        res = {"command": "python benchmarks/modalities.py " + " ".join(sys.argv[1:]),
               "result": globals()[f"{part}_part"](args)}
        (OUT / f"modalities_{part}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
