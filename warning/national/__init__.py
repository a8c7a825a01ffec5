"""National-scale terrain preparation on Dask: tiled kernels over chunked (Zarr) grids."""
