"""The ``ServerApp``: runs the configured strategies (:mod:`.strategies`) one after another on the grid."""
from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from distill_apps.errors import ConfigError
from distill_apps.safe_io import write_json

from .config import FederatedConfig
from .partition import federated_dataset
from .strategies import STRATEGIES


def run_server(grid: Grid, cfg: FederatedConfig) -> dict[str, Any]:
    """Run every strategy in ``cfg.strategies`` on ``grid``, one after another; returns the results (and
    writes them to ``cfg.out`` when set)."""
    real = federated_dataset(cfg.dataset, cfg.data_root)
    out = {"config": cfg.as_dict(), "strategies": {}}
    for name in cfg.strategy_names():
        out["strategies"][name] = STRATEGIES.get(name)(cfg, real).run(grid)
    if cfg.out:
        write_json(cfg.out, out, indent=1)
    return out


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Deployment entry point: the configuration is the run config (``[tool.flwr.app.config]``)."""
    cfg = FederatedConfig.from_mapping(context.run_config)
    if not cfg.out:
        raise ConfigError("Set out=<path.json> in the run config: the ServerApp writes its results there.")
    run_server(grid, cfg)


def make_server_app(cfg: FederatedConfig, sink: dict[str, Any]) -> ServerApp:
    """A ServerApp running ``cfg`` and putting its results into ``sink`` (for the in-process simulation)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        """The ServerApp's main: run every configured strategy and keep the results."""
        sink.update(run_server(grid, cfg))

    return app
