"""Benchmark: rank correlation of distilled NAS proxies vs full-data training (writes benchmarks/results/).

    python benchmarks/nas_proxy.py --dataset digits --k 20 --ipc 10 --methods dm dsa random

Any option of ``distill-apps recipe nas-proxy`` is passed through; the recipe's JSON summary is saved as
``benchmarks/results/nas_proxy_<dataset>.json`` next to its report folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

from distill_apps.recipes import nas_proxy

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    """Run the NAS recipe with its output under ``benchmarks/results`` and keep its JSON with the command."""
    args = nas_proxy.build_parser().parse_args(argv)
    out = RESULTS / f"nas_proxy_{args.dataset.replace(':', '-')}"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = nas_proxy.main([*argv, "--out", str(out), "--json"])
    payload = json.loads(buf.getvalue().strip().splitlines()[-1])
    payload["command"] = "python benchmarks/nas_proxy.py " + " ".join(argv)
    (RESULTS / f"nas_proxy_{args.dataset.replace(':', '-')}.json").write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload["results"], indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
