"""The models' exception and the small argument checks that raise it.

Every public function in ``models`` validates its arrays before handing them to a
Numba kernel and raises :class:`ModelError` with a message that says what to change.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ModelError"]


class ModelError(ValueError):
    """Invalid input to a model kernel (shape, dtype, range or nodata).

    The message names the argument and says how to fix it.
    """


def as_2d(name: str, a, *, kinds: str = "fiub") -> np.ndarray:
    """Return ``a`` as a 2-D ndarray (no copy when possible) or raise ModelError."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ModelError(
            f"{name} must be a 2-D array (y, x); got shape {arr.shape}. "
            f"Pass a single band/time slice, e.g. {name}[0] or {name}.squeeze()."
        )
    if arr.size == 0:
        raise ModelError(f"{name} is empty (shape {arr.shape}); pass a grid with at least one cell.")
    if arr.dtype.kind not in kinds:
        raise ModelError(
            f"{name} has dtype {arr.dtype}; expected a numeric array "
            f"(kinds {kinds!r}). Convert it with {name}.astype(np.float64)."
        )
    return arr


def same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ModelError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ModelError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
            "both must be on the same grid (reproject or crop one of them)."
        )


def positive_scalar(name: str, value) -> float:
    """Return ``value`` as a finite float > 0 or raise ModelError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a number > 0; got {value!r}.") from None
    if not np.isfinite(v) or v <= 0.0:
        raise ModelError(f"{name} must be a finite number > 0; got {value!r}.")
    return v


def grid_parameter(name: str, value, shape: tuple, valid: np.ndarray, unit: str) -> np.ndarray:
    """Broadcast a scalar or (y, x) parameter to a float64 grid, checked > 0 on valid cells."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        if not np.isfinite(arr) or arr <= 0.0:
            raise ModelError(f"{name} must be > 0 {unit}; got {float(arr)!r}.")
        return np.full(shape, float(arr), dtype=np.float64)
    if arr.shape != shape:
        raise ModelError(
            f"{name} must be a scalar or a (y, x) array of shape {shape}; got shape {arr.shape}."
        )
    bad = valid & ~(np.isfinite(arr) & (arr > 0.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ModelError(
            f"{name} must be finite and > 0 {unit} on every valid cell; {int(bad.sum())} cells "
            f"are not (first at row {r}, col {c}, value {arr[r, c]!r}). Fill the gaps or clip it."
        )
    return np.ascontiguousarray(arr)
