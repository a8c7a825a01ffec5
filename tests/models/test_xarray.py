"""xarray at the edge: DataArrays in, the same coordinates out, cell sizes from coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from models import runoff, terrain
from models.errors import ModelError


def _dem(ny=40, nx=50, dx=30.0, dy=20.0):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:ny, 0:nx]
    z = (0.02 * xx * dx + 0.01 * yy * dy + rng.random((ny, nx))).astype(np.float32)
    return xr.DataArray(z, dims=("y", "x"),
                        coords={"y": 5000.0 - dy * (np.arange(ny) + 0.5),
                                "x": 1000.0 + dx * (np.arange(nx) + 0.5)},
                        attrs={"units": "m"})


def test_terrain_chain_keeps_coordinates_and_reads_cell_size():
    da = _dem()
    filled = terrain.fill_depressions(da, epsilon=True)
    assert isinstance(filled, xr.DataArray)
    xr.testing.assert_identical(filled.coords.to_dataset(), da.coords.to_dataset())
    fd = terrain.flow_direction_d8(filled)  # dx=30, dy=20 taken from the coordinates
    expected = terrain.flow_direction_d8(filled.values, dx=30.0, dy=20.0)
    np.testing.assert_array_equal(fd.values, expected)
    # anisotropic cells matter: with dx=dy the answer differs somewhere
    assert (terrain.flow_direction_d8(filled.values, dx=1.0, dy=1.0) != expected).any()
    acc = terrain.flow_accumulation_d8(fd)
    assert isinstance(acc, xr.DataArray) and acc.dims == ("y", "x")
    np.testing.assert_array_equal(acc.values, terrain.flow_accumulation_d8(expected))


def test_nodata_attribute_is_used():
    da = _dem()
    da[0:5, 0:5] = -9999.0
    da.attrs["_FillValue"] = -9999.0
    filled = terrain.fill_depressions(da)
    assert np.all(filled.values[0:5, 0:5] == -9999.0)
    np.testing.assert_array_equal(
        filled.values, terrain.fill_depressions(da.values, nodata=-9999.0))


def test_rain_cube_keeps_its_time_coordinate():
    da = _dem(10, 12)
    times = np.array(["2025-11-14T00", "2025-11-14T01", "2025-11-14T02"], dtype="datetime64[ns]")
    rain = xr.DataArray(np.full((3, 10, 12), 20.0, np.float32), dims=("time", "y", "x"),
                        coords={"time": times, "y": da.y, "x": da.x})
    ex = runoff.scs_excess_rate(rain, 1.0, np.full((10, 12), 80.0, np.float32))
    assert isinstance(ex, xr.DataArray) and ex.attrs["units"] == "mm/h"
    np.testing.assert_array_equal(ex["time"].values, times)
    total = float(ex.sum("time")[0, 0])  # 60 mm on CN 80: TR-55 in mm
    np.testing.assert_allclose(total, runoff.scs_runoff_depth(60.0, 80.0), rtol=1e-5)


def test_uneven_coordinates_are_refused():
    da = _dem()
    da = da.assign_coords(x=np.r_[da.x.values[:-1], da.x.values[-1] + 5.0])
    with pytest.raises(ModelError, match="not evenly spaced"):
        terrain.flow_direction_d8(da)
