"""Reading data files that come in pickle format without running code from them.

``pickle.load`` calls whatever callables a file names, so a crafted file runs arbitrary code. Some public data
sets only exist as pickles (Planetoid's ``ind.<name>.*`` files: numpy arrays, a scipy CSR matrix, a
``defaultdict`` of lists). :func:`restricted_load` unpickles with an allow-list of (module, name) pairs: each
maps to a harmless constructor (numpy's array reconstruction, ``list``, ``defaultdict``, or an inert record of a
CSR matrix's fields, see :class:`CSRFields`); any other global makes it raise
:class:`~distill_apps.errors.DataError` before anything is called. Callers then check the types of what came
out. This module never unpickles anything of ours: distill-apps' own files are safetensors + JSON.
"""
from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


class CSRFields:
    """What a pickled ``scipy.sparse.csr_matrix`` holds (its ``__dict__``), kept as plain data: nothing of scipy
    runs. :meth:`arrays` checks and returns ``(data, indices, indptr, shape)``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def arrays(self, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        st = getattr(self, "state", None)
        if not isinstance(st, dict):
            raise DataError(f"{what}: the sparse matrix holds no fields; the file is damaged.")
        data, indices, indptr, shape = st.get("data"), st.get("indices"), st.get("indptr"), st.get("_shape")
        ok = (isinstance(data, np.ndarray) and isinstance(indices, np.ndarray) and isinstance(indptr, np.ndarray)
              and data.dtype.kind in "fiub" and indices.dtype.kind in "iu" and indptr.dtype.kind in "iu"
              and data.ndim == indices.ndim == indptr.ndim == 1 and isinstance(shape, tuple) and len(shape) == 2
              and all(isinstance(s, int) and 0 <= s < 1 << 31 for s in shape))
        if ok:
            rows, cols = shape
            ok = (len(indptr) == rows + 1 and len(data) == len(indices) and (len(indptr) == 0 or indptr[0] == 0)
                  and int(indptr[-1]) == len(data) and bool(np.all(np.diff(indptr) >= 0))
                  and (len(indices) == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols)))
        if not ok:
            raise DataError(f"{what}: the sparse matrix's fields are inconsistent; the file is damaged.")
        return data, indices, indptr, shape


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as r  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as r
    return r


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("scipy.sparse.csr", "csr_matrix"): CSRFields,
    ("scipy.sparse._csr", "csr_matrix"): CSRFields,
    ("scipy.sparse", "csr_matrix"): CSRFields,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "list"): list,
    ("__builtin__", "list"): list,
}


class _Restricted(pickle.Unpickler):
    def __init__(self, fh, what: str) -> None:
        super().__init__(fh, encoding="latin1")
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.what} asks to load {module}.{name}, which a data file of this kind never holds: it may be "
                "crafted to run code, so it was not loaded. Replace it with the original file.") from None


def restricted_load(path: str | Path, max_bytes: int = 1 << 30) -> Any:
    """Unpickle ``path`` allowing only the globals in :data:`ALLOWED` (numpy arrays, CSR fields, lists,
    ``defaultdict``); refuse files over ``max_bytes``."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path} is {size} bytes, more than a data file of this kind holds; refusing to read it.")
    data = path.read_bytes()
    try:
        return _Restricted(io.BytesIO(data), str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle
        raise DataError(f"{path} is not a readable data file ({type(exc).__name__}: {exc}); replace it with the "
                        "original file.") from exc
