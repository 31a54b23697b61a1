"""Federated learning with distilled summaries on Flower 1.41's message API (``ClientApp`` / ``ServerApp``).

Clients share a distilled summary of their local data instead of (or besides) model updates, as in one-shot
federated distillation (Zhou et al. 2020, "Distilled One-Shot Federated Learning", DOSFL) and FedDM (Xiong et
al., CVPR 2023, "FedDM: Iterative Distribution Matching for Communication-Efficient Federated Learning").

One module per concern:

* :mod:`.config` -- :class:`FederatedConfig`, which travels as a ``ConfigRecord`` and as the run config;
* :mod:`.partition` -- :data:`PARTITIONERS` (``dirichlet``, ``iid``) and :func:`client_partition`;
* :mod:`.wire` -- a summary as records (:func:`summary_to_records`), its validation on arrival
  (:func:`summary_from_records`: shapes, dtypes, label range, NaN/Inf, SHA-256) and :func:`record_bytes`;
* :mod:`.client` -- :data:`client_app`, whose ``@train`` handler distils the node's partition with any
  registered method (:func:`distill_partition`; optionally DP) and/or trains the global model locally;
* :mod:`.strategies` -- :data:`STRATEGIES`: ``oneshot``, ``distilled_fedavg`` and ``fedavg``, each counting the
  bytes of every message per client and per round, skipping failed clients and rejecting malformed summaries;
* :mod:`.server` -- :data:`server_app` and :func:`run_server`;
* :mod:`.simulation` -- :func:`simulate` in Flower's simulation engine;
* :mod:`.deployment` -- :func:`deploy`: ``flower-superlink`` + one ``flower-supernode`` per client on 127.0.0.1,
  driven by ``flwr run``, every process stopped by its pid.
"""
try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distill_apps.integrations.flower needs Flower (flwr>=1.41): "
                      "pip install 'distill-apps[flower]'") from exc

from .client import client_app, client_train, distill_partition, union_training_set
from .config import FederatedConfig
from .deployment import CLIENT_COMPONENT, SERVER_COMPONENT, deploy, free_port, write_app
from .partition import PARTITIONERS, client_partition, federated_dataset
from .server import make_server_app, run_server, server_app
from .simulation import simulate
from .strategies import STRATEGIES, DistilledFedAvg, OneShot, PlainFedAvg, SummaryStrategy
from .wire import record_bytes, summary_digest, summary_from_records, summary_tensors, summary_to_records

__all__ = [
    "FederatedConfig", "client_app", "client_train", "server_app", "client_partition", "federated_dataset",
    "distill_partition", "union_training_set", "summary_to_records", "summary_from_records", "summary_digest",
    "summary_tensors", "record_bytes", "STRATEGIES", "SummaryStrategy", "OneShot", "DistilledFedAvg",
    "PlainFedAvg", "run_server", "make_server_app", "simulate", "deploy", "write_app", "free_port", "PARTITIONERS",
    "SERVER_COMPONENT", "CLIENT_COMPONENT",
]
