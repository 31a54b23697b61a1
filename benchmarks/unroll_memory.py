"""Peak graph memory of the one unroll (``inner.unroll``) by gradient mode, at several unroll lengths.

Memory is the peak bytes of tensors autograd holds for backward (``SavedTensorMeter``: deterministic, works on
CPU); on CUDA ``torch.cuda.max_memory_allocated`` is reported too. The problem is one MTT outer step: a
ConvNet student (from the expert-shaped template) unrolled ``N`` SGD steps on the whole synthetic set
(``ipc * classes`` images, DSA on), the loss against a target, and the gradient w.r.t. images, step size and
soft labels, computed by ``mtt_loss`` with ``memory`` = autograd (MTT's default), checkpoint (chunks of 5
steps), adjoint (exact, MTT's ``unroll_memory=adjoint`` and TESLA's ``grad_mode=exact``) and by TESLA's
decomposition (``grad_mode=tesla``). The recomputing modes also keep parameter snapshots (no graph), reported
separately. Whole-process peak RSS per method and IPC is ``benchmarks/memory.py``.

    python benchmarks/unroll_memory.py                       # digits-shaped (1x8x8), ConvNet-3 w128, ipc 10
    python benchmarks/unroll_memory.py --shape 3 32 32 --device cuda   # CIFAR-10-shaped, on a GPU

Prints a table and writes ``benchmarks/results/unroll_memory.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distill_apps.augment import DSA
from distill_apps.inner import functional
from distill_apps.methods.trajectory import SavedTensorMeter, UnrollPlan, mtt_loss
from distill_apps.nets import build_model
from distill_apps.options import make_parser
from distill_apps.runtime import generator

MODES = {"autograd": ("autograd", 0, True), "checkpoint-5": ("checkpoint", 5, True),
         "adjoint": ("adjoint", 0, True), "tesla": ("adjoint", 0, False)}


def measure(kind: str, steps: int, shape, classes: int, ipc: int, model: str, device: str) -> dict:
    """Peak memory and time of one unrolled matching step (MTT-style autograd vs TESLA-style) of ``steps`` SGD steps."""
    dev = torch.device(device)
    net = build_model(model, shape[0], classes, shape[1:], generator=generator("bench-net"), device=dev)
    f, start = functional(net)
    g = generator("bench-target")
    target = {k: v + 0.01 * torch.randn(v.shape, generator=g).to(dev) for k, v in start.items()}
    n = ipc * classes
    x = torch.randn(n, *shape, generator=g).to(dev).requires_grad_(True)
    soft = torch.randn(n, classes, generator=g).to(dev).requires_grad_(True)
    lr = torch.tensor(0.01, device=dev, requires_grad=True)
    dsa = DSA()
    plan = UnrollPlan.draw(n, steps, 0, generator("bench-plan"), dsa, tuple(shape[1:]))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    memory, chunk, exact = MODES[kind]
    with SavedTensorMeter() as m:
        mtt_loss(f, start, target, x, soft, lr, plan, dsa, "logits", memory=memory, chunk=chunk,
                 exact=exact).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out = {"method": kind, "unroll": steps, "saved_bytes_peak": m.peak, "seconds": time.perf_counter() - t0}
    if memory != "autograd":  # parameter snapshots (no graph): one per step, or one per chunk
        out["snapshot_bytes"] = -(-steps // (chunk or 1)) * sum(v.numel() * v.element_size() for v in start.values())
    if dev.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() - base
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: unroll memory at each length, printed and written as JSON."""
    ap = make_parser("python benchmarks/unroll_memory.py", __doc__.splitlines()[0])
    ap.add_argument("--unroll", type=int, nargs="+", default=[10, 20, 40], help="SGD steps unrolled (N)")
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 8, 8], metavar=("C", "H", "W"),
                    help="image shape (default: digits)")
    ap.add_argument("--classes", type=int, default=10, help="number of classes")
    ap.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    ap.add_argument("--model", default="convnet", help="student network")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "unroll_memory.json"),
                    help="results JSON")
    a = ap.parse_args(argv)
    shape = tuple(a.shape)
    rows = []
    for n in a.unroll:
        for kind in MODES:
            rows.append(measure(kind, n, shape, a.classes, a.ipc, a.model, a.device))
            r = rows[-1]
            print(f"{r['method']:12s} N={n:3d}  saved {r['saved_bytes_peak'] / 2**20:9.1f} MiB"
                  + (f"  cuda {r['cuda_peak_bytes'] / 2**20:9.1f} MiB" if "cuda_peak_bytes" in r else "")
                  + (f"  +snapshots {r['snapshot_bytes'] / 2**20:6.1f} MiB" if "snapshot_bytes" in r else "")
                  + f"  {r['seconds']:.2f} s", flush=True)
    meta = {"shape": shape, "classes": a.classes, "ipc": a.ipc, "model": a.model, "device": a.device,
            "torch": torch.__version__, "measure": "peak bytes of tensors saved for backward (SavedTensorMeter)"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
