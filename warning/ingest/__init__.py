"""Ingest sources, chosen by name from a registry.

``get_source("netcdf", **settings)`` returns a forecast source; ``get_source("gauge_csv",
**settings)`` a gauge source. An unknown name raises ``ValueError`` listing the valid
ones. Units are converted here, at the edge; kernels only ever see mm/h and metres.
"""

from __future__ import annotations

from typing import Any, Callable

from .forecast_netcdf import NetcdfForecastSource
from .gauge_csv import GaugeCsvSource
from .gauge_feeds import EaFloodMonitoringSource, SensorThingsSource, UsgsIvSource
from .grid_sources import GeotiffSequenceSource, Grib2Source, KnmiRadarSource

_REGISTRY: dict[str, Callable[..., Any]] = {
    "netcdf": NetcdfForecastSource,
    "gauge_csv": GaugeCsvSource,
    "usgs_iv": UsgsIvSource,
    "ea_flood_monitoring": EaFloodMonitoringSource,
    "sensorthings": SensorThingsSource,
    "odim_h5": KnmiRadarSource,
    "geotiff": GeotiffSequenceSource,
    "grib": Grib2Source,
}


def source_names() -> list[str]:
    return sorted(_REGISTRY)


def get_source(name: str, **settings: Any) -> Any:
    """Build the ingest source registered as ``name`` with its settings."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown ingest source {name!r}; valid sources: "
                         f"{', '.join(source_names())}") from None
    return factory(**settings)
