"""Data-path figures for an image folder (default: CIFAR-10, JPEG q75 copy): load times, resident memory, DM step.

    OMP_NUM_THREADS=1 python benchmarks/data_load.py --dataset imagefolder:cifar10-jpg \
        --out benchmarks/results/data_load_cifar10_jpg.json

Each figure comes from a fresh process: (1) the first load, which decodes every image into a new cache folder
(``--cache``, default a temporary one, removed after); (2) the second load from that cache; (3) the resident
memory of the loaded dataset (RSS after loading, and after reading every training image once, against the uint8
store's size and the 4x a float32 copy would take); (4) DM's step time at IPC 10 (ConvNet-3, batch_real 256,
after one warm-up step) and the process's peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(field: str = "VmRSS") -> float:
    """Resident MB of this process: ``VmRSS`` (all), ``RssFile`` (mapped files: a memory-mapped store's pages)
    or ``RssAnon`` (heap; glibc keeps freed blocks, see runtime.tune_cpu_allocator)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """Peak resident memory of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, a: argparse.Namespace) -> dict:
    """One measured phase: load the dataset and record time and memory; ``memory`` adds one pass over the batches,
    ``dm`` a few timed DM steps."""
    import torch

    import distill_apps as da

    base, base_file = rss_mb(), rss_mb("RssFile")
    t0 = time.perf_counter()
    real = da.load_dataset(a.dataset, a.data_root, progress=False)
    t_load = time.perf_counter() - t0
    out = {"phase": name, "seconds": round(t_load, 2), "images": real.size("train") + real.size("test"),
           "store_mb": round(real.nbytes() / 2**20, 1), "float32_copy_mb": round(4 * real.nbytes() / 2**20, 1),
           "train_store_mb": round(real.stored("train").numel() / 2**20, 1),
           "rss_after_load_mb": round(rss_mb() - base, 1), "memory_mapped": real.memory_mapped}
    if name == "memory":
        n = 0
        for x, _ in real.batches("train", 2048):
            n += x.shape[0]
        out["rss_after_one_pass_mb"] = round(rss_mb() - base, 1)
        out["rss_file_after_one_pass_mb"] = round(rss_mb("RssFile") - base_file, 1)  # the store's mapped pages
    if name == "dm":
        d = da.engine.make_distiller("dm", real, a.ipc, {}, device=a.device, model="convnet")
        from distill_apps.runtime import generator

        state = d.init(generator("init", 0))
        times = []
        for t in range(a.dm_steps + 1):
            t1 = time.perf_counter()
            d.step(state, generator("step", 0, t))
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t1)
        out.update(dm_ipc=a.ipc, dm_step_seconds=round(sum(times[1:]) / len(times[1:]), 3),
                   dm_first_step_seconds=round(times[0], 3), peak_rss_mb=round(peak_mb(), 1),
                   device=str(d.device), threads=torch.get_num_threads())
        if d.device.type == "cuda":
            out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: the load phases (time, memory, a few DM steps), printed and written as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="imagefolder:cifar10-jpg")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default=None, help="cache root (default: a fresh temporary folder, removed after)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dm-steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/data_load.json")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.phase:
        print(json.dumps(phase(a.phase, a)))
        return 0
    cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix="distill_apps_data_load_"))
    env = {**os.environ, "DISTILL_APPS_CACHE": str(cache), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rows = []
    try:
        for name in ("first", "second", "memory", "dm"):
            cmd = [sys.executable, __file__, "--phase", name, "--dataset", a.dataset, "--ipc", str(a.ipc),
                   "--dm-steps", str(a.dm_steps), "--device", a.device] + (["--data-root", a.data_root] if a.data_root else [])
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not a.cache:
            shutil.rmtree(cache, ignore_errors=True)
    label = "CIFAR-10 (JPEG q75 copy)" if "cifar10-jpg" in a.dataset else a.dataset
    summary = {"dataset": label, "source": a.dataset, "first_load_s": rows[0]["seconds"],
               "second_load_s": rows[1]["seconds"], "store_mb": rows[0]["store_mb"],
               "train_store_mb": rows[0]["train_store_mb"],
               "float32_copy_mb": rows[0]["float32_copy_mb"], "rss_after_load_mb": rows[2]["rss_after_load_mb"],
               "rss_after_one_pass_mb": rows[2]["rss_after_one_pass_mb"],
               "rss_file_after_one_pass_mb": rows[2]["rss_file_after_one_pass_mb"], "dm_ipc": a.ipc,
               "dm_step_s": rows[3]["dm_step_seconds"], "dm_peak_rss_mb": rows[3]["peak_rss_mb"],
               "device": rows[3]["device"], "threads": rows[3]["threads"],
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "phases": rows}, indent=1))
    print(f"\n{label}: first load {summary['first_load_s']} s, second {summary['second_load_s']} s; store "
          f"{summary['store_mb']} MiB, train split {summary['train_store_mb']} MiB (a float32 copy: "
          f"{summary['float32_copy_mb']} MiB); resident after load {summary['rss_after_load_mb']} MiB, after reading "
          f"every training image once {summary['rss_file_after_one_pass_mb']} MiB of mapped store "
          f"({summary['rss_after_one_pass_mb']} MiB in all, with batch buffers); DM IPC {a.ipc} "
          f"step {summary['dm_step_s']} s on {summary['device']} ({summary['threads']} threads), peak RSS "
          f"{summary['dm_peak_rss_mb']} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
