"""Neural architecture search and HPO on distilled proxy sets, through NNI 3.0's own extension points.

Dataset distillation papers use their summaries as NAS proxies (Zhao et al., "Dataset Condensation with
Gradient Matching", ICLR 2021, Sec. 4.3; Zhao & Bilen, DSA, ICML 2021; DM, WACV 2023): every candidate network
trains on the small synthetic set instead of the full data, and the search only needs the *ranking* of
candidates to be right. One module per concern:

* :mod:`.space` -- :class:`ConvNetSpace`, a ``ModelSpace`` over the field's ConvNet (depth, width and pooling
  with ``nni.choice``; normalisation and activation with shared-label ``LayerChoice``), sampling and building
  candidates;
* :mod:`.proxy` -- :class:`ProxyTask` (a summary to train on, held-out *real* images to score on) and
  :func:`proxy_evaluator`, a ``FunctionalEvaluator`` that reports with ``nni.report_final_result``;
* :mod:`.search` -- :func:`search_architecture` (NNI strategies ``random``, ``evolution``, ``tpe``, ``grid`` in
  the sequential engine: no NNI manager, no web server) and :func:`search_hyperparameters` (TPE);
* :mod:`.experiment` -- HPO through NNI's ``Experiment("local")`` and its NNI manager, sandboxed in a child
  process (HOME, config and experiment folders in the working directory, REST server on 127.0.0.1);
* :mod:`.ranking` -- :func:`spearman`, :func:`kendall_tau`, :func:`top_k_overlap` (plain numpy);
* :mod:`.study` -- :func:`rank_correlation_study`: K architectures on full data and on each proxy, the rank
  agreement and the speed-up, resumable;
* :mod:`.host_compat` -- the only places that reach past NNI's public API, each with its reason.

Everything NNI writes goes under the ``workdir`` you pass (a fresh temp dir when omitted), never ``~``.
"""
from distill_apps.quiet import quieted

try:
    with quieted():  # NNI 3.0 warns about every torch.nn class newer than it (distill_apps.quiet.RULES)
        import nni  # noqa: F401
        import nni.nas.evaluator  # noqa: F401
        import nni.nas.experiment  # noqa: F401
        import nni.nas.nn.pytorch  # noqa: F401
        import nni.nas.strategy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distill_apps.integrations.nni needs NNI 3.0 and PyTorch Lightning: "
                      "pip install 'distill-apps[nas]'") from exc

from .proxy import ProxyTask, evaluate_on_proxy, holdout_split, proxy_evaluator, train_and_score  # noqa: E402
from .ranking import kendall_tau, rankdata, spearman, top_k_overlap  # noqa: E402
from .search import (HPO_SPACE, STRATEGIES, SearchResult, search_architecture,  # noqa: E402
                     search_hyperparameters)
from .space import (ConvNetSpace, arch_key, build_candidate, reinit_, sample_architectures,  # noqa: E402
                    space_choices)
from .study import (BASELINE_PROXIES, StudyCheckpoint, StudyResult, proxy_preference,  # noqa: E402
                    rank_correlation_study, train_full)

__all__ = [
    "ConvNetSpace", "space_choices", "arch_key", "sample_architectures", "build_candidate", "reinit_", "ProxyTask",
    "holdout_split", "train_and_score", "evaluate_on_proxy", "proxy_evaluator", "STRATEGIES", "SearchResult",
    "search_architecture", "search_hyperparameters", "HPO_SPACE", "rankdata", "spearman", "kendall_tau",
    "top_k_overlap", "StudyResult", "StudyCheckpoint", "train_full", "rank_correlation_study", "BASELINE_PROXIES",
    "proxy_preference",
]
