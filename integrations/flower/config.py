"""The configuration of one federated run: a dataclass that travels as a Flower ``ConfigRecord`` and as the
deployment's ``run_config`` (``[tool.flwr.app.config]``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

from flwr.app import ConfigRecord

from distill_apps.errors import ConfigError


@dataclass(repr=False)
class FederatedConfig:
    """Everything one federated run needs (data, partition, the clients' distillation, strategies, limits).

    ``method_config`` holds the distillation method's options (the API's ``config=``; ``--set KEY=VALUE`` on the
    command line); Flower records only carry scalars, so it travels as a JSON string in the record.
    """

    dataset: str = "digits"
    data_root: str = ""
    num_clients: int = 2
    partition: str = "dirichlet"  # dirichlet | iid
    alpha: float = 0.5
    seed: int = 0
    method: str = "dm"
    ipc: int = 10
    steps: int = 100  # distillation steps on each client
    method_config: dict[str, Any] = field(default_factory=dict)  # method option overrides
    model: str = "convnet-d2-w32"
    strategies: str = "oneshot,distilled_fedavg,fedavg"
    rounds: int = 3
    local_steps: int = 50
    local_lr: float = 0.01
    batch_size: int = 64
    mix: float = 0.5  # share of the local training set made of the union of summaries (distilled_fedavg)
    server_epochs: int = 100  # one-shot: epochs of global training on the union of summaries
    server_lr: float = 0.01
    dp: bool = False
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    round_timeout: float = 600.0
    connect_timeout: float = 60.0
    max_failure_fraction: float = 0.5
    device: str = "cpu"
    out: str = ""  # results JSON written by the ServerApp (needed for deployments)

    def __post_init__(self) -> None:
        """Accept a list of strategies and check every field."""
        if isinstance(self.strategies, (list, tuple)):
            self.strategies = ",".join(self.strategies)
        self.check()

    def check(self) -> None:
        """Refuse impossible values with a :class:`ConfigError` naming the option."""
        from .partition import PARTITIONERS
        from .strategies import STRATEGIES

        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1; got {self.num_clients}.")
        if self.ipc < 1:
            raise ConfigError(f"ipc must be >= 1; got {self.ipc}.")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1; got {self.rounds}.")
        if not 0.0 <= self.mix < 1.0:
            raise ConfigError(f"mix (share of summary images in local training) must lie in [0, 1); got {self.mix}.")
        if not 0.0 <= self.max_failure_fraction < 1.0:
            raise ConfigError(f"max_failure_fraction must lie in [0, 1); got {self.max_failure_fraction}.")
        PARTITIONERS.get(self.partition)
        for name in self.strategy_names():
            STRATEGIES.get(name)
        if not isinstance(self.method_config, dict):
            raise ConfigError(f"method_config must be a mapping of method options; got {self.method_config!r}.")

    def __repr__(self) -> str:
        """The run in one line (every field: :meth:`as_dict`)."""
        from distill_apps.reprs import one_line

        split = f"dirichlet alpha {self.alpha:g}" if self.partition == "dirichlet" else self.partition
        return one_line("FederatedConfig", [
            f"{self.method} ipc {self.ipc} on {self.dataset}", f"{self.num_clients} clients {split}",
            f"{self.strategies} x {self.rounds} rounds", self.model, f"seed {self.seed}",
            f"dp epsilon {self.dp_epsilon:g}" if self.dp else None, self.device])

    def strategy_names(self) -> list[str]:
        """The strategies to run, in order."""
        names = [s.strip() for s in self.strategies.split(",") if s.strip()]
        if not names:
            raise ConfigError("strategies is empty: name at least one of oneshot, distilled_fedavg, fedavg.")
        return names

    def as_dict(self) -> dict[str, Any]:
        """Plain fields (``method_config`` as a dict)."""
        return dataclasses.asdict(self)

    def as_flat_dict(self) -> dict[str, Any]:
        """Scalars only, as Flower records and the TOML run config hold them (``method_config`` as JSON)."""
        return {**self.as_dict(), "method_config": json.dumps(self.method_config, sort_keys=True)}

    def to_record(self) -> ConfigRecord:
        """The configuration as a Flower ``ConfigRecord``."""
        return ConfigRecord(self.as_flat_dict())

    @classmethod
    def from_mapping(cls, data: Any) -> "FederatedConfig":
        """Build from a dict, a ``ConfigRecord`` or Flower's ``run_config`` (hyphens read as underscores)."""
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in dict(data).items():
            name = str(key).replace("-", "_")
            if name not in known:
                continue  # Flower adds its own keys (server-round, ...)
            typ = known[name].type
            try:
                if name == "method_config":
                    value = json.loads(value) if isinstance(value, str) else dict(value or {})
                elif typ in ("int", int):
                    value = int(value)
                elif typ in ("float", float):
                    value = float(value)
                elif typ in ("bool", bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                else:
                    value = str(value)
            except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
                raise ConfigError(f"Federated option {name}={value!r} must be {typ}.") from exc
            kw[name] = value
        return cls(**kw)
