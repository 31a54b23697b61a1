"""Method families. Every module in this package registers its methods on import (see ``engine.METHODS``)."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
