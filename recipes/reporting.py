"""The common ending of a recipe: write ``results.json`` and ``report.md``, then print JSON or the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finish(out: Path, result: dict[str, Any], markdown: str, as_json: bool) -> int:
    """Write the files into ``out``; with ``as_json`` print ONE JSON object on stdout, else the markdown."""
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    result["report"] = str(out / "report.md")
    print(json.dumps(result, default=str) if as_json else markdown)
    return 0
