"""Speed-benchmark adapter: one outer step of a distill_apps method, for ``benchmarks/speed.py --baseline``.

It works with any checkout of this package: ``speed.py`` runs it once with this checkout (our side) and, for
``--baseline DIR`` where ``DIR`` is another checkout (for example the previous commit, ``git worktree add
<old checkout> HEAD~1``), once more with ``DIR`` first on ``sys.path``. It is also the example of the interface a
baseline script must offer (see ``speed.py``): ``setup(**spec) -> state`` untimed, ``step(state)`` timed.
"""
from __future__ import annotations


def setup(method: str, dataset: str, ipc: int, model: str = "convnet", options: dict | None = None,
          device: str = "cpu", seed: int = 0) -> dict:
    """Build the distiller and its initial state (untimed)."""
    import distill_apps as da
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    real = da.load_dataset(dataset)
    d = make_distiller(method, real, ipc, config=options or None, device=device, model=model, seed=seed)
    return {"d": d, "state": d.init(generator("init", seed)), "t": 0, "seed": seed,
            "version": getattr(da, "__version__", "?"), "path": da.__file__}


def step(state: dict) -> None:
    """Run one distillation step (timed)."""
    from distill_apps.runtime import generator

    state["d"].step(state["state"], generator("step", state["seed"], state["t"]))
    state["t"] += 1
