"""Teacher-based methods under fair scores: method x IPC with hard- and soft-label accuracy, a random subset under
each, DD-Ranking's HLR / IOR / LRS / ARS, PGD robust accuracy, and the time of teacher, distillation, evaluation.

    OMP_NUM_THREADS=1 python benchmarks/teacher_methods.py --dataset mnist --methods random sre2l rded \
        --ipcs 1 10 --teacher-model convnet-bn --teacher-epochs 1 --out benchmarks/results/teacher_mnist.json

One teacher (cached, :mod:`distill_apps.teachers`) serves every method and the soft-label protocol. Soft-label
students: ``protocol="softlabel"`` (AdamW, cosine, 300 epochs, crop + CutMix relabelled by the teacher);
hard-label students: ``protocol="train"`` on the summary's images and class ids without augmentation (SGD, the
field's schedule, 300 epochs). The random subset (same IPC and seed) is evaluated once per IPC and shared by the
methods. Rows are appended to the JSON after each cell (a stopped run keeps what it measured); ``--markdown``
renders the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import distill_apps as da
from distill_apps.compare import copy_label
from distill_apps.fair import fair_scores
from distill_apps.teachers import train_teacher


def machine() -> str:
    """CPU model, core count, threads used and whether bf16 is fast here (stated with every figure)."""
    from distill_apps.runtime import bf16_fast

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"bf16 {'fast (AMX/AVX-512-BF16, autocast on)' if bf16_fast('cpu') else 'emulated (autocast off)'}")


def run_ipc(real, ipc: int, a: argparse.Namespace, teacher, full_acc: float, full_seconds: float):
    """Yield one row per method at ``ipc`` (the random subset's evaluations shared through one cache)."""
    cache: dict = {}
    for method in a.methods:
        cfg = {"teacher": str(teacher.path)} if method in ("sre2l", "rded") else None
        t0, c0 = time.perf_counter(), time.process_time()
        s = da.distill(method, real, ipc, steps=a.sre2l_steps if method == "sre2l" else None, seed=a.seed,
                       config=cfg, progress=not a.quiet)
        t_distill, c_distill = time.perf_counter() - t0, time.process_time() - c0
        c1 = time.process_time()
        f = fair_scores(s, real, protocol="softlabel", teacher=teacher, model=a.model, runs=a.runs, epochs=a.epochs,
                        seed=a.seed, full_data_acc=full_acc, attack="pgd", eps=a.eps, attack_n=a.attack_n,
                        cache=cache, progress=not a.quiet)
        c_eval = time.process_time() - c1
        acc, rob = f["accuracy"], f["robust"]
        row = {"method": method, "dataset": real.name, "ipc": ipc, "steps": s.meta.get("steps"),
               "teacher": teacher.reference(), "teacher_seconds": teacher.train_seconds,
               "teacher_cpu_seconds": teacher.train_cpu_seconds, "distill_seconds": round(t_distill, 1),
               "distill_cpu_seconds": round(c_distill, 1), "eval_seconds": f["eval_seconds"],
               "eval_cpu_seconds": round(c_eval, 1), "load_average": os.getloadavg(),
               "hard_acc": acc["syn_hard"], "soft_acc": acc["syn"], "random_hard_acc": acc["random_hard"],
               "random_soft_acc": acc["random"], "soft_noaug_acc": acc["syn_noaug"],
               "random_soft_noaug_acc": acc["random_noaug"], "full_data_acc": full_acc,
               "full_data_seconds": full_seconds, "full_data_source": a.full_source, "hlr": f["hlr"], "ior": f["ior"], "lrs": f["lrs"], "ars": f["ars"],
               "robust_soft": rob["syn"], "robust_hard": rob["syn_hard"], "robust_random_soft": rob["random"],
               "attack": {"name": "pgd", "steps": rob["steps"], "step_size": rob["step_size"], "n": rob["n_test"]},
               "model": a.model, "epochs": a.epochs, "runs": a.runs, "machine": machine()}
        print(json.dumps({k: row[k] for k in ("method", "ipc", "hard_acc", "soft_acc", "random_soft_acc", "hlr",
                                              "ior", "distill_seconds", "eval_seconds")}), flush=True)
        yield row


def _t(r: dict, what: str) -> str:
    """Wall (and CPU) seconds of one phase, for the table."""
    wall, cpu = r.get(f"{what}_seconds"), r.get(f"{what}_cpu_seconds")
    return f"{wall:.0f}" + (f" ({cpu:.0f})" if cpu is not None else "") if wall is not None else "-"


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table: accuracies, fair scores, robust accuracy and times."""
    eps = sorted({e for r in rows for e in r["robust_soft"]}, key=float)
    head = ("| method | IPC | hard % | soft % | random hard % | random soft % | HLR | IOR | LRS | ARS | "
            + " | ".join(f"PGD {e} soft / hard %" for e in eps) + " | teacher s (CPU) | distil s (CPU) | eval s (CPU) |")
    names = sorted({r["dataset"] for r in rows})
    title = "Dataset: " + ", ".join(copy_label(n) for n in names) + "."
    lines = [title, "", head, "|" + "---|" * (13 + len(eps))]
    for r in rows:
        pgd = " | ".join(f"{100 * r['robust_soft'][e]:.1f} / {100 * r['robust_hard'][e]:.1f}" for e in eps)
        lines.append(
            f"| {r['method']} | {r['ipc']} | {100 * r['hard_acc']:.2f} | {100 * r['soft_acc']:.2f} | "
            f"{100 * r['random_hard_acc']:.2f} | {100 * r['random_soft_acc']:.2f} | {100 * r['hlr']:.2f} | "
            f"{100 * r['ior']:.2f} | {r['lrs']:.4f} | {r['ars']:.4f} | {pgd} | {_t(r, 'teacher')} | "
            f"{_t(r, 'distill')} | {_t(r, 'eval')} |")
    if rows:
        r = rows[0]
        lines += ["", f"HLR and IOR in accuracy points; LRS/ARS in [0, 1] (DD-Ranking, w = 0.5). Teacher "
                  f"`{r['teacher']['model']}` ({r['teacher']['epochs']} epoch(s), test accuracy "
                  f"{100 * r['teacher']['test_accuracy']:.2f} %); full-data hard-label accuracy "
                  f"{100 * r['full_data_acc']:.2f} % ({r.get('full_data_source', '')}). Students `{r['model']}`, {r['epochs']} "
                  f"epochs, {r['runs']} run(s). PGD: {r['attack']['steps']} steps of {r['attack']['step_size']}, "
                  f"L-inf in pixel units, first {r['attack']['n']} test images. Times: wall-clock seconds, CPU seconds of "
                  f"the process in brackets (the machine is shared: load average {r['load_average'][0]:.1f} when "
                  f"the first row was written). Machine: {r['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: teacher-based methods x IPC with hard- and soft-label accuracy, fair scores and PGD robustness."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--methods", nargs="+", default=["random", "sre2l", "rded"],
                    help="random first: the random subset's evaluations are then charged to its own row")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--teacher-model", default="convnet-bn")
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--sre2l-steps", type=int, default=1000)
    ap.add_argument("--model", default="convnet", help="student network (hard and soft labels)")
    ap.add_argument("--epochs", type=int, default=300, help="student epochs")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--attack-n", type=int, default=1000)
    ap.add_argument("--full-data-epochs", type=int, default=2)
    ap.add_argument("--full-data-acc", type=float, default=None,
                    help="full real data hard-label accuracy in [0, 1] (default: train --model, cached)")
    ap.add_argument("--full-data-source", default=None, help="where --full-data-acc comes from (stated in the table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/teacher_methods.json")
    ap.add_argument("--markdown", default=None, help="write the table here too (default: --out with .md)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    real = da.load_dataset(a.dataset, a.data_root)
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    teacher = train_teacher(real, a.teacher_model, epochs=a.teacher_epochs, seed=a.seed, progress=not a.quiet)
    full_acc, full_seconds, full_source = a.full_data_acc, None, a.full_data_source or "given"
    if full_acc is None:  # the same cached model fair.full_data_accuracy reads
        full = train_teacher(real, a.model, epochs=a.full_data_epochs, seed=a.seed, progress=not a.quiet)
        full_acc, full_seconds = full.test_accuracy, full.train_seconds
        full_source = f"{a.model} trained on the full training split for {a.full_data_epochs} epochs (measured)"
    a.full_source = full_source
    for ipc in a.ipcs:
        for row in run_ipc(real, ipc, a, teacher, full_acc, full_seconds):
            rows = [r for r in rows if (r["method"], r["dataset"], r["ipc"]) != (row["method"], row["dataset"], ipc)]
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=1))
    md = Path(a.markdown) if a.markdown else out.with_suffix(".md")
    md.write_text(markdown(sorted(rows, key=lambda r: (r["ipc"], r["method"]))))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
