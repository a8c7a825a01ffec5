"""Ingest sources, chosen by name from a registry.

``get_source("netcdf", **settings)`` returns a forecast source; ``get_source("gauge_csv",
**settings)`` a gauge source (also ``usgs_iv``, ``ea_flood_monitoring``, ``sensorthings``
and the archived records ``nwis_csv`` and ``peq``). An unknown name raises ``ValueError`` listing the valid
ones. Units are converted here, at the edge; kernels only ever see mm/h and metres.
"""

from __future__ import annotations

from typing import Any, Callable

from .forecast_netcdf import NetcdfForecastSource
from .gauge_csv import GaugeCsvSource
from .gauge_feeds import EaFloodMonitoringSource, SensorThingsSource, UsgsIvSource
from .grid_sources import GeotiffSequenceSource, Grib2Source, KnmiRadarSource
from .nwis_csv import NwisCsvSource
from .peq import PeqSource

_REGISTRY: dict[str, Callable[..., Any]] = {
    "netcdf": NetcdfForecastSource,
    "gauge_csv": GaugeCsvSource,
    "usgs_iv": UsgsIvSource,
    "ea_flood_monitoring": EaFloodMonitoringSource,
    "sensorthings": SensorThingsSource,
    "odim_h5": KnmiRadarSource,
    "geotiff": GeotiffSequenceSource,
    "grib": Grib2Source,
    "nwis_csv": NwisCsvSource,
    "peq": PeqSource,
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
