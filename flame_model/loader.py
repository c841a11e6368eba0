"""Chumpy-free, restricted loading of FLAME pickles.

The official FLAME files (``generic_model.pkl`` of FLAME 2020, ``flame2023.pkl``) were written
with Python 2 and hold some arrays as ``chumpy.Ch`` objects and ``J_regressor`` as a
``scipy.sparse.csc_matrix``. ``chumpy`` does not import on current NumPy, so this module reads
the files with a :class:`pickle.Unpickler` whose ``find_class``

* maps every ``chumpy.*`` class to :class:`ChumpyStandIn`, which keeps the pickled state and
  rebuilds the ndarray from it (a chumpy ``Ch`` keeps its value under the state key ``'x'``);
* maps the scipy sparse matrix classes to :class:`SparseStandIn`, which rebuilds the matrix
  from its ``data``/``indices``/``indptr`` (or ``row``/``col``) state on the installed scipy;
* allows a short list of numpy / builtins names needed to rebuild arrays;
* refuses everything else with :class:`UnsafePickleError` (a pickle can run arbitrary code,
  e.g. by naming ``os.system``).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import scipy.sparse

FLAME_DOWNLOAD_URL = "https://flame.is.tue.mpg.de/download.php"


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle names a class or function outside the allow list."""


class FlameAssetError(FileNotFoundError):
    """Raised when a FLAME asset file is missing."""


class ChumpyStandIn:
    """Stand-in for any ``chumpy`` class: stores the pickled state, converts to an ndarray.

    (Unpickling may create instances with ``__new__`` only, so defaults are class attributes.)"""

    _args: tuple = ()
    _state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_array(self, name: str = "?") -> np.ndarray:
        """Return the ndarray value of the chumpy object (state key ``'x'``, else a fallback)."""
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if isinstance(state, dict):
            if "x" in state:
                return _as_array(state["x"], name)
            # Fallback: a leaf whose only array-valued entry is the value (e.g. renamed key).
            arrays = {k: v for k, v in state.items()
                      if isinstance(v, (np.ndarray, ChumpyStandIn)) and not str(k).startswith("_")}
            if len(arrays) == 1:
                key, value = next(iter(arrays.items()))
                return _as_array(value, f"{name}.{key}")
            raise pickle.UnpicklingError(
                f"chumpy object for '{name}' has no value under state key 'x' "
                f"(state keys: {sorted(map(str, state))}); cannot rebuild it without chumpy")
        if isinstance(state, np.ndarray):
            return state
        if self._args and isinstance(self._args[0], np.ndarray):
            return self._args[0]
        raise pickle.UnpicklingError(
            f"chumpy object for '{name}' has an unsupported state of type {type(state).__name__}")


class SparseStandIn:
    """Stand-in for scipy sparse matrices: rebuilt from state on the installed scipy version."""

    _fmt = ""
    _state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_dense(self, name: str = "?") -> np.ndarray:
        state = self._state
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"sparse matrix '{name}': unexpected state type {type(state).__name__}")
        shape = state.get("_shape", state.get("shape"))
        if shape is None:
            raise pickle.UnpicklingError(f"sparse matrix '{name}': state has no shape")
        shape = tuple(int(s) for s in shape)
        fmt = state.get("format", self._fmt)
        data = np.asarray(state.get("data"))
        if fmt in ("csc", "csr") or "indptr" in state:
            indices = np.asarray(state["indices"])
            indptr = np.asarray(state["indptr"])
            cls = scipy.sparse.csc_matrix if fmt == "csc" else scipy.sparse.csr_matrix
            mat = cls((data, indices, indptr), shape=shape)
        elif "row" in state and "col" in state:
            mat = scipy.sparse.coo_matrix((data, (np.asarray(state["row"]), np.asarray(state["col"]))),
                                          shape=shape)
        else:
            raise pickle.UnpicklingError(f"sparse matrix '{name}': unsupported format {fmt!r}")
        return np.asarray(mat.toarray())


def _make_sparse_cls(fmt: str) -> type:
    return type(f"SparseStandIn_{fmt}", (SparseStandIn,), {"_fmt": fmt})


_SPARSE_CLASSES = {f"{fmt}_matrix": _make_sparse_cls(fmt) for fmt in ("csc", "csr", "coo")}
_SPARSE_CLASSES.update({f"{fmt}_array": _SPARSE_CLASSES[f"{fmt}_matrix"] for fmt in ("csc", "csr", "coo")})

# numpy names needed to rebuild arrays, dtypes and scalars (numpy.core was renamed numpy._core).
_NUMPY_ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_BUILTINS_ALLOWED = {"object", "set", "frozenset", "list", "dict", "tuple", "slice", "complex",
                     "bytearray", "int", "float", "str", "bool", "bytes"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves numpy / scipy-sparse / builtins / chumpy names."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStandIn
        if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
            return _SPARSE_CLASSES[name]
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                      "numpy.core.numeric", "numpy._core.numeric") and name in _NUMPY_ALLOWED:
            if name == "_reconstruct":
                return _numpy_reconstruct()
            if name == "scalar":
                return _numpy_scalar()
            if name == "_frombuffer":
                return _numpy_frombuffer()
            return getattr(np, name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
            import builtins
            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":  # protocol-2 pickles of bytes written by Python 3
            import _codecs
            return _codecs.encode
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            import copyreg
            return copyreg._reconstructor
        raise UnsafePickleError(
            f"refusing to load '{module}.{name}' from a pickle: only numpy arrays, scipy sparse "
            f"matrices, builtins containers and chumpy arrays are allowed in FLAME files")


def _numpy_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy >= 2) or ``numpy.core...`` (numpy 1.x)."""
    import importlib
    try:
        mod = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        mod = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(mod, name)


def _numpy_reconstruct() -> Any:
    return _numpy_attr("multiarray", "_reconstruct")


def _numpy_scalar() -> Any:
    return _numpy_attr("multiarray", "scalar")


def _numpy_frombuffer() -> Any:
    return _numpy_attr("numeric", "_frombuffer")


def safe_load_pickle(fileobj: Any) -> Any:
    """Unpickle ``fileobj`` (binary file or bytes) with the restricted unpickler, latin1 strings."""
    if isinstance(fileobj, (bytes, bytearray)):
        fileobj = io.BytesIO(fileobj)
    return RestrictedUnpickler(fileobj, encoding="latin1").load()


def _as_array(value: Any, name: str) -> Any:
    """Convert stand-ins to ndarrays; leave other values (strings, numbers) as they are."""
    if isinstance(value, ChumpyStandIn):
        return value.to_array(name)
    if isinstance(value, SparseStandIn):
        return value.to_dense(name)
    if scipy.sparse.issparse(value):
        return np.asarray(value.toarray())
    return value


def missing_asset_message(path: Path, what: str, env_var: str) -> str:
    return (
        f"{what} not found at '{path}'. The FLAME model cannot be shipped: register and download it "
        f"from {FLAME_DOWNLOAD_URL} (FLAME 2023 'flame2023.pkl' or FLAME 2020 'generic_model.pkl', "
        f"and 'FLAME_masks.pkl' from the FLAME vertex masks download), then put it at "
        f"'flame_model/assets/flame/' or point {env_var} at it. Without the real model, generate "
        f"a procedural stand-in head with `python -m flame_model.procedural --out DIR` and set "
        f"FLAME_MODEL_PATH=DIR/flame2023.pkl FLAME_MASKS_PATH=DIR/FLAME_masks.pkl.")


def load_pickle_dict(path: os.PathLike | str, what: str = "FLAME model",
                     env_var: str = "FLAME_MODEL_PATH") -> Dict[str, Any]:
    """Load a FLAME-style pickle into a dict of ndarrays (chumpy and sparse values converted)."""
    path = Path(path)
    if not path.is_file():
        raise FlameAssetError(missing_asset_message(path, what, env_var))
    with open(path, "rb") as fh:
        try:
            obj = safe_load_pickle(fh)
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise pickle.UnpicklingError(f"{path}: not a readable {what} pickle ({err})") from err
    if isinstance(obj, (ChumpyStandIn, SparseStandIn)):
        obj = _as_array(obj, path.name)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in the {what} pickle, got {type(obj).__name__}")
    return {str(k): _as_array(v, f"{path.name}:{k}") for k, v in obj.items()}


REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


def load_flame_arrays(path: os.PathLike | str) -> Dict[str, np.ndarray]:
    """Load and validate the FLAME model arrays (float64 / int64) from ``path``."""
    raw = load_pickle_dict(path, "FLAME model", "FLAME_MODEL_PATH")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: FLAME model is missing key(s) {missing}")
    out: Dict[str, np.ndarray] = {}
    for key in REQUIRED_KEYS:
        try:
            out[key] = np.asarray(raw[key])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: field '{key}' is not an array ({err})") from err
    V = out["v_template"].shape[0]
    checks = {
        "v_template": out["v_template"].shape == (V, 3),
        "f": out["f"].ndim == 2 and out["f"].shape[1] == 3,
        "shapedirs": out["shapedirs"].ndim == 3 and out["shapedirs"].shape[:2] == (V, 3),
        "posedirs": out["posedirs"].ndim == 3 and out["posedirs"].shape[:2] == (V, 3),
        "J_regressor": out["J_regressor"].ndim == 2 and out["J_regressor"].shape[1] == V,
        "weights": out["weights"].ndim == 2 and out["weights"].shape[0] == V,
        "kintree_table": out["kintree_table"].ndim == 2 and out["kintree_table"].shape[0] == 2,
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{path}: field '{key}' has unexpected shape {out[key].shape} (V={V})")
    J = out["J_regressor"].shape[0]
    if out["weights"].shape[1] != J or out["kintree_table"].shape[1] != J:
        raise ValueError(f"{path}: weights {out['weights'].shape} / kintree_table "
                         f"{out['kintree_table'].shape} disagree with J_regressor {out['J_regressor'].shape}")
    if out["posedirs"].shape[2] != 9 * (J - 1):
        raise ValueError(f"{path}: posedirs has {out['posedirs'].shape[2]} components, expected {9 * (J - 1)}")
    out["f"] = out["f"].astype(np.int64)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        out[key] = out[key].astype(np.float64)
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    return out


def load_masks(path: os.PathLike | str) -> Dict[str, np.ndarray]:
    """Load ``FLAME_masks.pkl``: dict region name -> int64 vertex ids."""
    raw = load_pickle_dict(path, "FLAME masks", "FLAME_MASKS_PATH")
    out = {}
    for key, value in raw.items():
        try:
            out[key] = np.asarray(value).astype(np.int64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: mask '{key}' is not a list of vertex ids ({err})") from err
    return out


def parent_array(kintree_table: np.ndarray) -> np.ndarray:
    """Parents from a kintree table (root parent stored as -1 or as a large uint32 value -> -1)."""
    parents = np.asarray(kintree_table[0]).astype(np.int64)
    ids = np.asarray(kintree_table[1]).astype(np.int64)
    J = parents.shape[0]
    if not np.array_equal(ids, np.arange(J)):
        # remap to positions
        pos = {int(j): i for i, j in enumerate(ids)}
        parents = np.array([pos.get(int(p), -1) for p in parents], dtype=np.int64)
    parents = np.where((parents < 0) | (parents >= J), -1, parents)
    return parents


def optional_path(path: Optional[os.PathLike | str], env_var: str, default: Path) -> Path:
    """Argument > environment variable > default."""
    if path:
        return Path(path)
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    return default
