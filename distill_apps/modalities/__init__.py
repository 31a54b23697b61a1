"""Other modalities (graph, recommender, text). Each module registers its methods on import; optional
dependencies such as torch_geometric are imported inside the functions that need them."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
