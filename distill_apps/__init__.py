"""distill-apps: dataset distillation behind one API.

>>> import distill_apps as da
>>> summary = da.distill("dm", "digits", ipc=10, budget="quick")
>>> da.evaluate(summary).accuracy_mean
>>> da.evaluate(da.distill("gcond", "cora", ipc=5))   # graphs, interactions and text: the same two calls

The public API is what ``__all__`` below names, plus the names :data:`PUBLIC_SUBMODULES` lists for a few
submodules (errors, data, nets, training helpers, seeded generators, the safe file format, registries, privacy
tools and the ``--set`` option syntax). The adapters (``distill_apps.integrations``, ``distill_apps.recipes``)
use nothing else, and a test holds them to it; everything else may change between versions.
"""
__version__ = "0.1.0"

from .runtime import tune_cpu_allocator as _tune  # noqa: E402

_tune()

from . import methods as _methods  # noqa: F401,E402  (registers every method)
from . import modalities as _modalities  # noqa: F401,E402  (graph, recommender and text methods)
from .augment import DSA  # noqa: E402
from .config import MethodConfig  # noqa: E402
from .data import RealData, from_folder, from_hf, from_tensors, from_torch, list_datasets, load_dataset  # noqa: E402
from .engine import METHODS, Distiller, DistillState, distill, list_methods, register_method  # noqa: E402
from .errors import DistillError  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .reprs import eval_result_repr as _eval_result_repr  # noqa: E402

EvalResult.__repr__ = _eval_result_repr  # one line, not the per-run list (reprs.py; evaluate.py keeps the fields)
from .cross_arch import CrossArchResult, evaluate_cross_arch  # noqa: E402
from .nets import build_model, list_models  # noqa: E402
from .summaries import Privacy, Summary, load_summary  # noqa: E402
from .summary import SyntheticSet  # noqa: E402
from .teachers import Teacher, load_teacher, train_teacher  # noqa: E402
from .fit_summary import score, train_on_summary  # noqa: E402

__all__ = [
    "__version__", "DSA", "MethodConfig", "RealData", "list_datasets", "load_dataset", "from_folder", "from_tensors",
    "from_torch", "from_hf", "METHODS", "Distiller",
    "DistillState", "distill", "list_methods", "register_method", "DistillError", "EvalResult", "evaluate",
    "build_model", "list_models", "SyntheticSet", "Summary", "load_summary", "Privacy",
    "CrossArchResult", "evaluate_cross_arch",
    "Teacher", "train_teacher", "load_teacher", "train_on_summary", "score",
]

#: Public submodules and the names they offer besides ``__all__`` (None: the submodule's own ``__all__``).
#: ``distill_apps.integrations.*`` (the host adapters) are public as a whole.
PUBLIC_SUBMODULES: dict[str, tuple[str, ...] | None] = {
    "errors": ("DistillError", "ConfigError", "DataError", "SummaryFormatError", "CheckpointMismatchError",
               "NonFiniteError", "MemoryBudgetError"),
    "data": None,  # RealData, load_dataset, the dataset registry, class-incremental and federated splits
    "nets": None,  # build_model and the model registry
    "nets.convnet": ("ConvNet", "make_norm", "make_act"),  # the ConvNet's building blocks (NAS spaces)
    "train": ("fit", "predict", "accuracy", "target_loss"),  # training and scoring a fresh model
    "runtime": ("pick_device", "generator", "seeded_global_rng"),  # devices and named, seeded generators
    "safe_io": ("write", "read", "write_json", "write_bytes", "write_png", "checksum"),  # the safetensors + JSON file format
    "registry": ("Registry",),
    "privacy": None,  # Opacus accounting and privacy audits
    "options": None,  # the --set KEY=VALUE / METHOD.KEY=VALUE option syntax of the CLI and recipes
    "summary": ("SyntheticSet",),
    "fit_summary": None,  # train a fresh model on a summary, score it (train_on_summary, score, fresh_model)
    "summaries": ("Summary", "Privacy", "load_summary"),
    "teachers": ("Teacher", "train_teacher", "load_teacher", "resolve_teacher"),  # cached teacher networks
    "robustness": ("robust_evaluate", "robust_accuracy", "check_eps", "fgsm", "pgd"),  # FGSM/PGD on students
    "fair": ("fair_scores", "hlr", "ior", "lrs", "ars"),  # DD-Ranking's label- and augmentation-robust scores
    "figures": None,  # report figures: up-scaled images, labelled nearest-neighbour pairs
    "textures": None,  # tileable textures (the textures recipe)
    "recipes.reporting": None,  # the shared ending of a recipe (results.json, report.md, data cards)
    "quiet": None,  # the host libraries' warnings filtered by the CLI, recipes and adapters (--verbose: all)
    "reprs": ("one_line", "human_bytes", "shape", "tensor_bytes", "field_bytes"),  # one-line reprs
}
