"""Small CPU-budget benchmark of the graph, recommender and text distillers (docs/graph_recsys_text.md).

    DISTILL_APPS_DATA=/work/shared/datasets OMP_NUM_THREADS=1 python benchmarks/modalities.py [--part graph]

Budgets are far below the papers' (see the JSON's "budget" fields); numbers are what this budget gives.
Writes benchmarks/results/modalities_<part>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def _flat(ev) -> dict:
    """An EvalResult as the flat dict these JSON files have always held (metric name -> mean, extras)."""
    return {**ev.as_dict(), **({ev.metric: ev.accuracy_mean} if ev.metric != "accuracy" else {}), **ev.extra}


def graph_part(args) -> dict:
    import distill_apps as da
    from distill_apps.modalities import graph as G

    res: dict = {}
    # GCond: 10 matches x 5 inner steps per step (paper: 20 x 15), the structure in 2 of every 10 steps (10 of 50)
    loops = {"outer_loop": 10, "inner_loop": 5}
    budgets = {"gcond": {"steps": args.gcond_steps, "config": {**loops, "alt_cycle": 10, "adj_every": 2}},
               "gcond-x": {"steps": args.gcond_steps, "config": loops},
               "doscond": {"steps": args.doscond_steps, "config": {}},
               "gcdm": {"steps": args.gcdm_steps, "config": {}}}
    for name in args.graphs:
        gd = G.load_planetoid(name, cache_dir=args.cache)
        r: dict = {"nodes": gd.num_nodes, "eval": {"runs": args.runs, "epochs": args.epochs}}
        full = G.full_graph_accuracy(gd, runs=args.runs, epochs=args.epochs)
        r["full"] = _flat(full)
        rnd = G.evaluate_graph(G.random_subgraph(gd, 0.25), gd, runs=args.runs, epochs=args.epochs)
        r["random"] = _flat(rnd)
        for m, b in budgets.items():
            t0 = time.perf_counter()
            cg = da.distill(m, gd, 5, steps=b["steps"], config={**b["config"], "reduction": 0.25}, device="cpu",
                            progress=False)  # GCond's r = 0.25 (5 nodes per class on the public split)
            secs = time.perf_counter() - t0
            ev = G.evaluate_graph(cg, gd, runs=args.runs, epochs=args.epochs)
            r[m] = {**_flat(ev), "distill_seconds": secs, "budget": b, "edges": int((cg.adj > 0).sum())}
            print(name, m, ev, f"{secs:.0f}s", flush=True)
        print(name, "full", full, "random", rnd, flush=True)
        res[name] = r
    return res


def recsys_part(args) -> dict:
    import distill_apps as da
    from distill_apps.modalities import recsys as R

    data = da.load_dataset("ml-100k")
    r = {"full": _flat(R.evaluate_interactions(None, data))}
    for users in args.users:
        t0 = time.perf_counter()
        s = da.distill("distill_cf", data, users, steps=args.cf_steps, config={"gamma": 50}, device="cpu",
                       progress=False)
        r[f"distill_cf_{users}"] = {**_flat(R.evaluate_interactions(s, data)),
                                    "distill_seconds": time.perf_counter() - t0,
                                    "budget": {"steps": args.cf_steps, "gamma": 50}}
        r[f"random_{users}"] = _flat(R.evaluate_interactions(R.random_users(data, users), data))
        print(users, r[f"distill_cf_{users}"], r[f"random_{users}"], flush=True)
    print("full", r["full"], flush=True)
    return r


def text_part(args) -> dict:
    import distill_apps as da
    from distill_apps.modalities import text as T

    data = T.load_sst2(embedding=args.embedding)
    r: dict = {"embedding": args.embedding, "ipc": args.ipc}
    t0 = time.perf_counter()
    s = da.distill("text", data, args.ipc, steps=args.text_steps, device="cpu", progress=False)
    r["text"] = {**_flat(T.evaluate_text(s, data, runs=args.runs)), "distill_seconds": time.perf_counter() - t0,
                 "budget": {"steps": args.text_steps}, "learned_lr": s.lr}
    r["random"] = _flat(T.train_on_ids(data, T.random_subset(data, args.ipc), runs=args.runs, steps=100))
    r["full"] = _flat(T.train_on_ids(data, None, runs=1, epochs=1))
    print(r, flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["graph", "recsys", "text", "all"], default="all")
    p.add_argument("--graphs", nargs="+", default=["cora", "citeseer"])
    p.add_argument("--cache", default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=600)  # GCond's evaluation: 600 epochs
    p.add_argument("--gcond-steps", type=int, default=60)
    p.add_argument("--doscond-steps", type=int, default=300)
    p.add_argument("--gcdm-steps", type=int, default=300)
    p.add_argument("--users", type=int, nargs="+", default=[50])
    p.add_argument("--cf-steps", type=int, default=60)
    p.add_argument("--embedding", default="bow")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--text-steps", type=int, default=60)
    args = p.parse_args()
    parts = ["graph", "recsys", "text"] if args.part == "all" else [args.part]
    OUT.mkdir(parents=True, exist_ok=True)
    for part in parts:
        res = {"command": "python benchmarks/modalities.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                         vars(args).items() if v is not None),
               "result": globals()[f"{part}_part"](args)}
        (OUT / f"modalities_{part}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
