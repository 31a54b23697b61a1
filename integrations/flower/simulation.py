"""Flower's simulation engine (Ray backend): the whole federation in this process, one virtual SuperNode per
client."""
from __future__ import annotations

import os
from typing import Any

from distill_apps.errors import DistillError
from distill_apps.quiet import quieted

from .client import client_app
from .config import FederatedConfig
from .server import make_server_app


@quieted()  # Flower's INFO lines and its run_simulation deprecation, Ray's tips (distill_apps.quiet)
def simulate(cfg: FederatedConfig, *, num_cpus: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run ``cfg`` in Flower's simulation engine and return the server's results."""
    from flwr.simulation import run_simulation

    cpus = num_cpus or max(1, min(os.cpu_count() or 1, cfg.num_clients))
    sink: dict[str, Any] = {}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               # Ray registers its GCS/raylet on the machine's own address whatever is asked (it maps 127.0.0.1
               # to it: ray._private.services.resolve_ip_for_localhost); deploy() is the loopback-only path
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "error", "log_to_driver": verbose}}
    run_simulation(server_app=make_server_app(cfg, sink), client_app=client_app, num_supernodes=cfg.num_clients,
                   backend_config=backend, verbose_logging=verbose)
    if not sink:
        raise DistillError("The Flower simulation ended without results: see the log above for the ServerApp's "
                           "error.")
    return sink
