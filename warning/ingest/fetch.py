"""Bytes from a file, the newest matching file in a folder, or an HTTP(S) URL.

``Fetcher(location).fetch()`` returns a :class:`Fetched` with the content and whether it
is unchanged since the previous fetch. Over HTTP it retries timeouts, connection errors,
truncated bodies and 5xx/408/429 answers with exponential backoff, and makes conditional
GETs (``If-None-Match`` / ``If-Modified-Since`` from the previous answer's ``ETag`` /
``Last-Modified``); a 304 gives back the previous content marked ``not_modified``. Every
failure is an :class:`~warning.errors.IngestError` naming the URL or file and the problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from ..errors import IngestError

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Fetched:
    """One fetch's result.

    Attributes
    ----------
    content : bytes
        The body (on ``not_modified``, the previous body).
    origin : str
        The URL (with its query) or the file that was read.
    not_modified : bool
        True when the server answered 304 or the file is unchanged since the last fetch.
    etag, last_modified : str or None
        Validators of the content, as the server sent them.
    """

    content: bytes
    origin: str
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None


class _Retryable(Exception):
    """A transient failure worth another try; the message says what went wrong."""


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.lower().startswith(("http://", "https://"))


class Fetcher:
    """Fetch bytes from a file path, a watched folder, or an HTTP(S) URL.

    Parameters
    ----------
    location : str or Path
        A file, a folder (the newest file matching ``pattern`` by modification time is
        read), or an ``http://`` / ``https://`` URL.
    pattern : str
        Glob of the files to consider in a folder.
    timeout_s : float, s
        Connect/read/write timeout of one HTTP attempt.
    tries : int
        HTTP attempts in all (1 = no retry).
    backoff_s : float, s
        Wait before the second attempt; each further wait is ``backoff_factor`` times longer.
    backoff_factor : float
        Growth of the wait between attempts.
    max_backoff_s : float, s
        Upper bound of one wait.
    sleep : callable
        Called with each wait in seconds (inject a recorder in tests).
    headers : mapping, optional
        Extra request headers (e.g. ``User-Agent``, an API key).
    transport : httpx.BaseTransport, optional
        For tests or proxies; the default is httpx's own.
    """

    def __init__(self, location: str | Path, *, pattern: str = "*", timeout_s: float = 10.0,
                 tries: int = 3, backoff_s: float = 1.0, backoff_factor: float = 2.0,
                 max_backoff_s: float = 300.0, sleep: Callable[[float], Any] = time.sleep,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None):
        if tries < 1:
            raise ValueError(f"tries must be at least 1, not {tries}")
        self.location = location if is_url(location) else Path(location)
        self.pattern = pattern
        self.timeout_s = timeout_s
        self.tries = tries
        self.backoff_s = backoff_s
        self.backoff_factor = backoff_factor
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.headers = dict(headers or {})
        self._transport = transport
        self._client: httpx.Client | None = None
        # per URL or file: (validators, previous content)
        self._seen: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    @property
    def is_http(self) -> bool:
        return isinstance(self.location, str)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backoff_delays(self) -> list[float]:
        """The waits between attempts, s (``tries - 1`` of them)."""
        return [min(self.backoff_s * self.backoff_factor ** k, self.max_backoff_s)
                for k in range(self.tries - 1)]

    def fetch(self, url: str | None = None, params: Mapping[str, str] | None = None) -> Fetched:
        """Fetch ``location`` (or another ``url``, e.g. a next-page link) once, with retries.

        ``params`` are added to the query of an HTTP location; files and folders ignore them.
        """
        if url is not None:
            return self._fetch_http(url, params)
        if isinstance(self.location, str):
            return self._fetch_http(self.location, params)
        return self._fetch_file(self.location)

    def _remember(self, key: str, validators: tuple[Any, ...], content: bytes) -> None:
        self._seen.pop(key, None)
        self._seen[key] = (validators, content)
        while len(self._seen) > 64:  # bounded: URLs with a moving ``since`` never repeat
            self._seen.pop(next(iter(self._seen)))

    # ------------------------------------------------------------------ files
    def _fetch_file(self, where: Path) -> Fetched:
        path = where
        if where.is_dir():
            files = [p for p in where.glob(self.pattern) if p.is_file()]
            if not files:
                raise IngestError(f"{where}: no file matching {self.pattern!r} in the folder")
            path = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
        try:
            st = path.stat()
            content = path.read_bytes()
        except OSError as exc:
            raise IngestError(f"{path}: cannot read feed file: {exc.strerror}") from None
        if not content.strip():
            raise IngestError(f"{path}: the feed file is empty")
        key = str(path)
        stamp = (st.st_mtime_ns, st.st_size)
        prev = self._seen.get(key)
        self._remember(key, stamp, content)
        return Fetched(content, key, not_modified=prev is not None and prev[0] == stamp)

    # ------------------------------------------------------------------- http
    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s),
                                        follow_redirects=True, transport=self._transport,
                                        headers=self.headers)
        return self._client

    def _fetch_http(self, url: str, params: Mapping[str, str] | None) -> Fetched:
        request = self._http().build_request("GET", url, params=params)
        key = str(request.url)
        prev = self._seen.get(key)
        if prev is not None:
            etag, modified = prev[0]
            if etag:
                request.headers["If-None-Match"] = etag
            if modified:
                request.headers["If-Modified-Since"] = modified
        delays = self.backoff_delays()
        problem = ""
        for attempt in range(self.tries):
            try:
                return self._attempt(request, key, prev)
            except _Retryable as exc:
                problem = str(exc)
                if attempt < self.tries - 1:
                    log.warning("%s: %s; retry %d of %d in %.1f s", key, problem, attempt + 1,
                                self.tries - 1, delays[attempt])
                    self.sleep(delays[attempt])
        raise IngestError(f"{key}: {problem} after {self.tries} tr{'ies' if self.tries > 1 else 'y'}")

    def _attempt(self, request: httpx.Request, key: str,
                 prev: tuple[tuple[Any, ...], bytes] | None) -> Fetched:
        try:
            resp = self._http().send(request)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__}, limit {self.timeout_s:g} s)") from None
        except httpx.RemoteProtocolError as exc:
            raise _Retryable(f"truncated or broken response: {exc}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed: {exc}") from None
        if resp.status_code == 304:
            if prev is None:
                raise IngestError(f"{key}: HTTP 304 Not Modified to an unconditional request")
            etag, modified = prev[0]
            return Fetched(prev[1], key, not_modified=True,
                           etag=resp.headers.get("ETag", etag),
                           last_modified=resp.headers.get("Last-Modified", modified))
        if resp.status_code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {resp.status_code} {resp.reason_phrase}")
        if resp.status_code != 200:
            raise IngestError(f"{key}: HTTP {resp.status_code} {resp.reason_phrase}")
        content = resp.content
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != len(content) \
                and "Content-Encoding" not in resp.headers:
            raise _Retryable(f"truncated body: {len(content)} of {declared} bytes")
        if not content.strip():
            raise IngestError(f"{key}: empty body (HTTP 200 with no content)")
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if etag or modified:
            self._remember(key, (etag, modified), content)
        return Fetched(content, key, etag=etag, last_modified=modified)
