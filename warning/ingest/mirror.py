"""Mirror a forecast or radar file published at a URL into the source's folder.

Providers often publish the newest product at a fixed address (``.../latest.nc``). The
ingest job polls it with :class:`~.fetch.Fetcher` (timeouts, retries with backoff,
conditional GET), checks that the body is a whole file of the expected kind, and writes
it into the folder the grid source reads, under a name derived from its content, so the
folder source then treats it like any other issue. A body that is not a whole file is an
``IngestError`` and nothing is written: the last good files stay as they are.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from ..errors import IngestError
from .fetch import Fetcher

__all__ = ["Mirror"]

_MAGIC = {
    ".nc": (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02"),
    ".h5": (b"\x89HDF\r\n\x1a\n",),
    ".grib2": (b"GRIB",),
    ".tif": (b"II*\x00", b"MM\x00*"),
}


class Mirror:
    """Poll ``url`` and keep a copy of each new version in ``folder``.

    Parameters
    ----------
    url : str
        The published file.
    folder : Path
        Where the grid source reads its files.
    suffix : str
        File type: ``.nc``, ``.h5``, ``.grib2`` or ``.tif`` (checked against the body).
    prefix : str
        Start of the copies' names, so they match the source's file pattern.
    **fetch_settings
        Passed to :class:`Fetcher` (``timeout_s``, ``tries``, ``backoff_s``, ...).
    """

    def __init__(self, url: str, folder: Path, suffix: str = ".nc", prefix: str = "", **fetch_settings):
        if suffix not in _MAGIC:
            raise ValueError(f"unknown file type {suffix!r}; valid: {', '.join(_MAGIC)}")
        self.url, self.folder, self.suffix, self.prefix = url, Path(folder), suffix, prefix
        self.fetcher = Fetcher(url, **fetch_settings)

    def poll(self) -> Path | None:
        """Fetch once; returns the new file's path, or None when nothing changed."""
        got = self.fetcher.fetch()
        if got.not_modified:
            return None
        body = got.content
        if not body.startswith(_MAGIC[self.suffix]):
            raise IngestError(f"{self.url}: the body ({len(body)} bytes) is not a {self.suffix} file "
                              f"(starts {body[:8]!r}); kept the files already in {self.folder}")
        if self.suffix in (".nc", ".h5") and body.startswith(b"\x89HDF"):
            self._check_hdf5(body)
        digest = hashlib.sha256(body).hexdigest()[:16]
        path = self.folder / f"{self.prefix}mirror_{digest}{self.suffix}"
        if path.exists():
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(body)
        os.replace(tmp, path)  # readers never see a half-written file
        return path

    def _check_hdf5(self, body: bytes) -> None:
        import h5py

        try:
            with h5py.File(io.BytesIO(body), "r") as f:
                list(f.keys())
        except OSError as exc:
            raise IngestError(f"{self.url}: truncated or corrupt HDF5/NetCDF body ({len(body)} bytes): "
                              f"{exc}; kept the files already in {self.folder}") from None
