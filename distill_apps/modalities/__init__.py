"""Other modalities (graph, recommender, text). Each module registers, on import, its methods, its datasets
(``cora``, ``citeseer``, ``ml-100k``, ``sst2``, TU sets), its summary class and its :class:`~distill_apps.modality.
Modality` (budget unit, default dataset and model, random baseline); optional dependencies such as
torch_geometric are imported inside the functions that need them."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
