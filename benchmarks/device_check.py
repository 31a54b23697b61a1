"""GPU check for CIFAR-10 (JPEG q75 copy): step times of DM, DC, DSA and MTT at IPC 10 and 50, and DM's IPC-10
accuracy after 2,000 steps. Run it through ``benchmarks/device_check.sh`` (a hard 8-minute limit).

On a machine without CUDA it says so and exits 0. Step times are the mean of ``--steps`` steps after one warm-up
step (CUDA synchronised), with bf16 autocast where ``runtime.bf16_fast`` allows it; DM at IPC 10 is also timed
with channels-last (``DISTILL_APPS_CHANNELS_LAST=1``) to decide that default. MTT's step time uses one expert
trained for the few epochs its schedule needs on 100 images per class (a step's cost depends on the IPC, the
unroll and the network, not on how the expert was trained).
The DM accuracy follows the DM paper's protocol (ConvNet-3, DSA augmentation, 1,000 epochs), ``--eval-runs`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def timed_steps(method: str, real, ipc: int, steps: int, config: dict | None = None) -> dict:
    """Time ``steps`` distillation steps of ``method`` on CUDA (after one warm-up) and record peak GPU memory."""
    import torch

    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    torch.cuda.reset_peak_memory_stats()
    d = make_distiller(method, real, ipc, config or {}, device="cuda", model="convnet")
    t0 = time.perf_counter()
    state = d.init(generator("init", 0))
    d.step(state, generator("step", 0, 0))  # warm-up (and, for MTT, training the expert it samples)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t1 = time.perf_counter()
    for t in range(1, steps + 1):
        d.step(state, generator("step", 0, t))
    torch.cuda.synchronize()
    return {"method": method, "ipc": ipc, "step_seconds": round((time.perf_counter() - t1) / steps, 4),
            "warmup_seconds": round(warm, 2), "steps_timed": steps,
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    """Command line: GPU step times and peak memory per method and IPC, plus a short DM run and its evaluation."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="imagefolder:cifar10-jpg")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method and IPC (after one warm-up)")
    ap.add_argument("--dm-steps", type=int, default=2000)
    ap.add_argument("--eval-runs", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file (default: $OUT/device_check.json when $OUT is set)")
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("device_check: no GPU present (torch.cuda.is_available() is False); nothing to measure here. "
              "Run benchmarks/device_check.sh on a machine with a CUDA GPU.")
        return 0
    import distill_apps as da
    from distill_apps.runtime import bf16_fast

    t_start = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "bf16_autocast": bf16_fast("cuda"), "dataset": "CIFAR-10 (JPEG q75 copy)"}
    t0 = time.perf_counter()
    real = da.load_dataset(a.dataset, a.data_root, progress=False)
    report["load_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"loaded {real} in {report['load_seconds']} s", flush=True)
    cache = os.environ.get("DISTILL_APPS_CACHE") or str(Path.home() / ".cache" / "distill_apps")
    rows = []
    plan = [("dm", {}), ("dc", {}), ("dsa", {}),
            ("mtt", {"num_experts": 1, "expert_dir": str(Path(cache) / "device_check_experts")})]
    for method, cfg in plan:
        for ipc in (10, 50):
            c = dict(cfg)
            if method == "mtt":  # the fewest expert epochs the IPC's schedule allows
                from distill_apps.methods.trajectory import schedule_for

                c["expert_train_epochs"] = schedule_for(ipc)[1] + 1
            steps = a.steps if method in ("dm", "mtt") else max(1, a.steps // 2)
            data = real
            if method == "mtt":
                import torch as _t

                data = real.subset(_t.cat([ix[:100] for ix in real.by_class]))
            row = timed_steps(method, data, ipc, steps, c)
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.environ["DISTILL_APPS_CHANNELS_LAST"] = "1"
    row = {**timed_steps("dm", real, 10, a.steps), "channels_last": True}
    os.environ.pop("DISTILL_APPS_CHANNELS_LAST")
    rows.append(row)
    print(json.dumps(row), flush=True)
    report["step_times"] = rows
    t0 = time.perf_counter()
    s = da.distill("dm", real, 10, steps=a.dm_steps, device="cuda", progress=False)
    t_distill = time.perf_counter() - t0
    res = da.evaluate(s, real, runs=a.eval_runs, device="cuda")
    report["dm_ipc10"] = {"steps": a.dm_steps, "distill_seconds": round(t_distill, 1),
                          "accuracy_mean": round(100 * res.accuracy_mean, 2),
                          "accuracy_std": round(100 * res.accuracy_std, 2), "runs": res.runs, "epochs": res.epochs,
                          "augment": res.augment, "eval_seconds": round(res.seconds, 1), "paper_ipc10": 48.9}
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"\n{report['device']} | CIFAR-10 (JPEG q75 copy) | bf16 autocast {report['bf16_autocast']}")
    print("| method | IPC | s / step | peak GPU GB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']}{' (channels-last)' if r.get('channels_last') else ''} | {r['ipc']} | "
              f"{r['step_seconds']} | {r['peak_gpu_gb']} |")
    dm = report["dm_ipc10"]
    print(f"DM IPC 10 after {dm['steps']} steps ({dm['distill_seconds']} s): {dm['accuracy_mean']} +- "
          f"{dm['accuracy_std']} % ({dm['runs']} runs x {dm['epochs']} epochs, {dm['augment']}; paper 48.9)")
    print(f"total {report['total_seconds']} s")
    out = a.out or (str(Path(os.environ["OUT"]) / "device_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
