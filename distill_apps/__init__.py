"""distill-apps: dataset distillation behind one API.

>>> import distill_apps as da
>>> summary = da.distill("dm", "digits", ipc=10, budget="quick")
>>> da.evaluate(summary).accuracy_mean
"""
__version__ = "0.1.0"

from .runtime import tune_cpu_allocator as _tune  # noqa: E402

_tune()

from . import methods as _methods  # noqa: F401,E402  (registers every method)
from . import modalities as _modalities  # noqa: F401,E402  (graph, recommender and text methods)
from .augment import DSA  # noqa: E402
from .config import MethodConfig  # noqa: E402
from .data import RealData, list_datasets, load_dataset  # noqa: E402
from .engine import METHODS, Distiller, DistillState, distill, list_methods, register_method  # noqa: E402
from .errors import DistillError  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .nets import build_model, list_models  # noqa: E402
from .summary import SyntheticSet  # noqa: E402
from .teachers import Teacher, load_teacher, train_teacher  # noqa: E402

__all__ = [
    "__version__", "DSA", "MethodConfig", "RealData", "list_datasets", "load_dataset", "METHODS", "Distiller",
    "DistillState", "distill", "list_methods", "register_method", "DistillError", "EvalResult", "evaluate",
    "build_model", "list_models", "SyntheticSet", "Teacher", "train_teacher", "load_teacher",
]
