"""The thin xarray edge of the kernels.

``@grid_function`` lets a public function that works on numpy arrays also take an
``xarray.DataArray`` as its first argument: the values go to the kernel, the cell sizes
``dx``/``dy`` come from the coordinates when the function has such parameters and the
caller did not give them, a ``_FillValue``/``nodata`` attribute becomes ``nodata``, and a
result with the input's shape comes back as a DataArray with the input's dims and
coordinates (other results come back as numpy). numpy in, numpy out stays the rule;
xarray is only accepted at the edge, as in pysheds' ``sgrid.py`` around ``_sgrid.py``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

import numpy as np

from .errors import ModelError

F = TypeVar("F", bound=Callable[..., Any])


def _spacing(da: Any, dim: str) -> float:
    coord = np.asarray(da[dim].values, dtype=np.float64)
    if coord.size < 2:
        raise ModelError(f"cannot take the cell size from coordinate {dim!r} with fewer than 2 "
                         f"values; pass dx/dy explicitly.")
    steps = np.diff(coord)
    if not np.allclose(steps, steps[0], rtol=1e-6):
        raise ModelError(f"coordinate {dim!r} is not evenly spaced; the kernels need a regular grid.")
    return float(abs(steps[0]))


def grid_function(units: str | None = None) -> Callable[[F], F]:
    """Decorate a numpy kernel wrapper so it also accepts and returns DataArrays.

    Parameters
    ----------
    units : str, optional
        ``units`` attribute to put on a DataArray result.
    """

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        takes = set(sig.parameters)

        @functools.wraps(fn)
        def wrapper(data: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                import xarray as xr
            except ImportError:  # pragma: no cover - xarray is a dependency
                return fn(data, *args, **kwargs)
            if not isinstance(data, xr.DataArray):
                return fn(data, *args, **kwargs)
            if data.ndim < 2:
                raise ModelError(f"{fn.__name__}: a DataArray input needs (y, x) as its last two "
                                 f"dims; got dims {data.dims}.")
            bound = sig.bind_partial(data, *args, **kwargs)
            ydim, xdim = data.dims[-2:]
            if "dx" in takes and "dx" not in bound.arguments:
                kwargs["dx"] = _spacing(data, xdim)
                if "dy" in takes and "dy" not in bound.arguments:
                    kwargs["dy"] = _spacing(data, ydim)
            if "nodata" in takes and "nodata" not in bound.arguments:
                nd = data.attrs.get("_FillValue", data.attrs.get("nodata"))
                if nd is not None:
                    kwargs["nodata"] = nd
            out = fn(data.values, *args, **kwargs)
            if isinstance(out, np.ndarray) and out.shape == data.shape:
                attrs = {"units": units} if units else {}
                return xr.DataArray(out, dims=data.dims, coords=data.coords, attrs=attrs,
                                    name=fn.__name__)
            return out

        return wrapper  # type: ignore[return-value]

    return decorate
