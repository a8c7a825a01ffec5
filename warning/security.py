"""Security headers on every response of the web app (``floodwarn serve``).

:class:`SecurityHeaders` is a pure ASGI middleware: it only adds headers to the
``http.response.start`` message, so streamed bodies and ``FileResponse`` pass untouched.
Every HTTP response gets, unless the route already set the same header (a route may set a
narrower policy of its own):

- ``Content-Security-Policy``: :data:`POLICY` plus the hashes of the public pages' inline
  ``<style>`` (see below): no script at all, styles only from this origin, images from
  this origin and ``data:``, forms post only to this origin, no framing, no ``<base>``;
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY``, ``Cross-Origin-Opener-Policy: same-origin``,
  ``Permissions-Policy`` denying geolocation, camera and microphone;
- ``Strict-Transport-Security`` only when the request came over https, i.e. when the ASGI
  ``scope["scheme"]`` is ``https``. Behind a reverse proxy that is what uvicorn makes of the
  proxy's ``X-Forwarded-Proto``, which it believes only from the addresses in
  ``--forwarded-allow-ips`` / ``FORWARDED_ALLOW_IPS`` (by default 127.0.0.1, a proxy on the
  same host). The middleware never reads ``X-Forwarded-Proto`` itself: a client cannot
  talk its way into the header.

404s, redirects, the webhooks' 403 and every other error answered by the app's exception
handlers pass through the middleware. An unhandled exception is answered here with a plain
500 that carries the headers too (the exception still propagates, to be logged).

Where each page gets its styles:

- the console's pages link ``/static/console.css`` (``warning/static/``, served by the app),
  and draw each zone's level colour as the ``fill`` attribute of a small ``<svg>``:
  attributes are not styles, so the configurable colours need no ``style=`` and no
  generated stylesheet;
- the published public pages (``index.html`` and ``cap/<id>.html``, rendered from
  ``alerts/templates/public/``) keep their inline ``<style>``, allowed by its SHA-256 hash
  in ``style-src`` (:func:`public_style_sources`). Hashes rather than a published
  stylesheet because these pages are files written to ``output_dir`` that a plain web
  server may host, aggregators mirror and residents save: each stays one self-contained
  file that loads nothing else, pages published before this policy existed pass it (the
  CSS is the same), and nothing has to keep a second file beside them in step. A server
  that hosts ``output_dir`` without this app should send the same header
  (:func:`content_security_policy`). Changing that CSS changes its hash: pages published
  before the change then show unstyled (still readable) until they are written again.

FastAPI's ``/docs`` and ``/redoc`` are switched off in :func:`warning.web.create_app`: they
load their JavaScript from a CDN (which this policy forbids and which fails offline). The
API's OpenAPI document stays at ``/openapi.json``, for any OpenAPI viewer.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.feeds import index_html

POLICY: dict[str, str] = {
    "default-src": "'none'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}
"""The Content-Security-Policy's directives, before the public pages' style hashes."""

HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), camera=(), microphone=()",
}
"""The headers besides the CSP and HSTS that every response gets."""

HSTS = "max-age=31536000"
"""Strict-Transport-Security for requests over https: a year, this host only (a site's
other hosts under the same domain are not ours to pin)."""

_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)


def style_hashes(html: str) -> tuple[str, ...]:
    """The CSP hash sources (``'sha256-...'``) of every inline ``<style>`` in ``html``, in
    order and without repeats: what a browser compares with ``style-src``."""
    found = (hashlib.sha256(body.encode("utf-8")).digest() for body in _STYLE.findall(html))
    return tuple(dict.fromkeys(f"'sha256-{base64.b64encode(d).decode()}'" for d in found))


def public_style_sources() -> tuple[str, ...]:
    """The hash sources of the published public pages' inline ``<style>``, from a page
    rendered by :func:`alerts.feeds.index_html` (the notice pages share its layout)."""
    page = index_html([], feed_url="feed.atom", updated=datetime(2000, 1, 1, tzinfo=UTC))
    return style_hashes(page)


def content_security_policy(style_sources: Iterable[str] = ()) -> str:
    """The header's value: :data:`POLICY` with ``style_sources`` (hash sources) added to
    ``style-src``."""
    directives = dict(POLICY)
    extra = " ".join(style_sources)
    if extra:
        directives["style-src"] += " " + extra
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP response (see the module).

    Parameters
    ----------
    app : ASGI app
    csp : str, optional
        The Content-Security-Policy; by default :func:`content_security_policy` with the
        public pages' style hashes.
    hsts : str
        The Strict-Transport-Security value sent on https requests.
    """

    def __init__(self, app: ASGIApp, *, csp: str | None = None, hsts: str = HSTS) -> None:
        self.app = app
        csp = csp if csp is not None else content_security_policy(public_style_sources())
        self._headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                         for k, v in {"Content-Security-Policy": csp, **HEADERS}.items()]
        self._hsts = (b"strict-transport-security", hsts.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        add = self._headers + ([self._hsts] if scope.get("scheme") == "https" else [])
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                headers += [(name, value) for name, value in add if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:  # Starlette's own 500 would be sent past this middleware
                await send_with_headers({"type": "http.response.start", "status": 500,
                                         "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send_with_headers({"type": "http.response.body", "body": b"Internal Server Error"})
            raise
