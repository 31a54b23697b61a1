"""The default run's margin check: does ``distill-apps distill`` (no options) beat a random subset, and how fast?

    python benchmarks/default_run.py [--out benchmarks/results/default_run.json]

Runs the literal default command (``distill-apps distill --json``, in a temporary folder so no file of the user's
is touched), times it, and prints the summary's and the random subset's test accuracy, the margin between them,
both standard deviations and the wall time. The default is meant to give a margin larger than both standard
deviations within 2 minutes on a 2-core CPU; the check is printed (and recorded with the process's CPU time and
the machine's load average), never asserted, so a loaded machine cannot fail it. On a machine shared with other
jobs run it with ``OMP_NUM_THREADS=1``: two OpenMP threads competing with other processes for two cores spend
most of their time waiting for each other.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill_apps.options import make_parser
from distill_apps.safe_io import write_json

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = make_parser("python benchmarks/default_run.py", __doc__)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/default_run.json"), help="results JSON")
    a = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="default_run_") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "distill_apps.cli", "distill", "--json"], cwd=tmp, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    acc, rnd = 100 * r["accuracy_mean"], 100 * r["random_accuracy_mean"]
    sd, sd_rnd = 100 * r["accuracy_std"], 100 * r["random_accuracy_std"]
    margin = acc - rnd
    row = {"command": "distill-apps distill", "method": r["method"], "dataset": r["dataset"], "ipc": r["ipc"],
           "steps": r["steps"], "budget": r["budget"], "model": r["model"], "runs": r["runs"], "epochs": r["epochs"],
           "accuracy_mean": round(acc, 2), "accuracy_std": round(sd, 2), "random_accuracy_mean": round(rnd, 2),
           "random_accuracy_std": round(sd_rnd, 2), "margin": round(margin, 2),
           "margin_exceeds_both_stds": bool(margin > max(sd, sd_rnd)), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
           "under_2_minutes": wall < 120, "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()], "default_run_note": r.get("default_run")}
    print(f"{r['method']} ipc {r['ipc']} ({r['steps']} steps): {acc:.2f} ± {sd:.2f} %   random: {rnd:.2f} ± "
          f"{sd_rnd:.2f} %   margin {margin:.2f} points ({'>' if row['margin_exceeds_both_stds'] else '<='} both "
          f"stds)   wall {wall:.1f} s, CPU {cpu:.1f} s   (load average {load_before[0]:.1f} before, {row['load_average_after'][0]:.1f} "
          "after)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, row, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
