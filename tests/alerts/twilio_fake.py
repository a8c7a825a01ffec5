"""A local Twilio-compatible Messages API, for tests (no network, no real credentials).

Usage::

    with FakeTwilio() as fake:
        channel = TwilioChannel(fake.account_sid, fake.auth_token,
                                from_number="+15005550006", base_url=fake.base_url)
        channel.send(...)
        assert fake.messages[0]["To"] == "+15558675310"

It speaks ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form params ``To``,
``From`` or ``MessagingServiceSid``, ``Body``, ``StatusCallback``, ``ValidityPeriod``),
``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`` and the list
``GET .../Messages.json?To=...&PageSize=...`` (newest first), checks HTTP Basic auth,
and answers like Twilio: 201 with a message resource (``sid`` "SM" + 32 hex, ``status``
"queued"), or Twilio's error JSON (``{"code", "message", "more_info", "status"}``):
401/20003 bad credentials, 400/21211 a ``To`` that is not E.164, 400/21610 a number that
replied STOP (:meth:`FakeTwilio.opt_out`), 400/21602-21604 missing fields, or any
failure queued with :meth:`FakeTwilio.fail_next`.

Faults for load tests: ``delay_s`` holds every request that long before answering (a slow
provider), and ``list_fails`` makes every list call (how ``Channel.find_sent`` asks what
went out) answer 500 while sends still work.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "test_auth_token_0123456789abcdef"
STOPPED_NUMBER = "+15005550004"
"""Replied STOP at start-up: sends to it fail with 21610."""

_MESSAGES_RE = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages(?:/(?P<sid>[^/]+))?\.json$"
)
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass(frozen=True)
class FakeRequest:
    """One HTTP request the fake received."""

    method: str
    path: str
    account_sid: str | None
    auth: tuple[str, str] | None
    form: dict[str, str]
    headers: dict[str, str]


class FakeTwilio:
    """Twilio-compatible test server on 127.0.0.1, in a background thread.

    Parameters
    ----------
    account_sid, auth_token : str
        The credentials it accepts.
    unsubscribed : iterable of str
        Numbers that have replied STOP (21610 on send).

    Attributes
    ----------
    base_url : str
        ``http://127.0.0.1:<port>``, for ``TwilioChannel(base_url=...)``.
    messages : list of dict
        Accepted messages, in order, with the form params as sent (``To``, ``From``,
        ``Body``, ...) plus ``sid``, ``AccountSid`` and ``received_at`` (``time.time()``
        when it was accepted, for measuring rates).
    requests : list of FakeRequest
        Every request, accepted or not.
    delay_s : float
        Seconds every request waits before it is handled (0: none); settable any time.
    list_fails : bool
        When true, list calls (``GET Messages.json``) answer 500 (code 20500).
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        unsubscribed: Iterable[str] = (STOPPED_NUMBER,),
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.unsubscribed = set(unsubscribed)
        self.messages: list[dict[str, Any]] = []
        self.requests: list[FakeRequest] = []
        self._failures: list[tuple[int, int | None, str]] = []
        self.delay_s = 0.0
        self.list_fails = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> Self:
        """Start serving on a free port."""
        handler = _make_handler(self)
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-twilio", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeTwilio is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- behaviour
    def opt_out(self, number: str) -> None:
        """Pretend ``number`` replied STOP: later sends to it fail with 21610."""
        with self._lock:
            self.unsubscribed.add(number)

    def fail_next(
        self, status: int = 500, code: int | None = None, message: str = "Internal error"
    ) -> None:
        """Make the next message request fail with this HTTP status and Twilio code."""
        with self._lock:
            self._failures.append((status, code, message))

    # -- request handling (called from server threads)
    def _handle(self, request: FakeRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        match = _MESSAGES_RE.match(request.path.split("?")[0])
        if not match:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        credentials = (self.account_sid, self.auth_token)
        if request.auth != credentials or match["account"] != self.account_sid:
            return _error(401, 20003, "Authenticate")
        with self._lock:
            if self._failures:
                status, code, message = self._failures.pop(0)
                return _error(status, code, message)
        if request.method == "GET" and not match["sid"]:
            if self.list_fails:
                return _error(500, 20500, "Internal Server Error")
            return self._list(request.path)
        if request.method == "GET":
            return self._fetch(match["sid"])
        if request.method != "POST" or match["sid"]:
            return _error(405, 20004, "Method not allowed")
        return self._create(request.form)

    def _fetch(self, sid: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            for message in self.messages:
                if message["sid"] == sid:
                    return 200, self._resource(message)
        return _error(404, 20404, f"The requested resource Message {sid} was not found")

    def _list(self, path: str) -> tuple[int, dict[str, Any]]:
        """``GET Messages.json?To=...&PageSize=...``: newest first, one page."""
        query = {k: v[-1] for k, v in parse_qs(path.partition("?")[2]).items()}
        size = int(query.get("PageSize", 50))
        with self._lock:
            found = [m for m in reversed(self.messages) if "To" not in query or m["To"] == query["To"]]
            page = [self._resource(m) for m in found[:size]]
        uri = path
        return 200, {"messages": page, "first_page_uri": uri, "next_page_uri": None, "page": 0,
                     "page_size": size, "previous_page_uri": None, "uri": uri, "start": 0,
                     "end": max(len(page) - 1, 0)}

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        to = form.get("To", "")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return _error(400, 21602, "Message body is required.")
        if not _E164_RE.match(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        with self._lock:
            if to in self.unsubscribed:
                return _error(400, 21610, "Attempt to send to unsubscribed recipient")
            message = dict(form, sid="SM" + uuid.uuid4().hex, AccountSid=self.account_sid,
                           created=formatdate(usegmt=True), received_at=time.time())
            self.messages.append(message)
        return 201, self._resource(message)

    def _resource(self, message: dict[str, str]) -> dict[str, Any]:
        sid = message["sid"]
        now = message.get("created") or formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": message.get("Body"),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message.get("From"),
            "messaging_service_sid": message.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if message.get("From") else "accepted",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": message.get("To"),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client killed mid-request (the dispatcher crash tests): as Twilio, carry on
        super().handle_error(request, client_address)


def _error(status: int, code: int | None, message: str) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if code is not None:
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    return status, body


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def _make_handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK hold every keep-alive response for ~40 ms
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            match = _MESSAGES_RE.match(self.path.split("?")[0])
            request = FakeRequest(
                method=self.command,
                path=self.path,
                account_sid=match["account"] if match else None,
                auth=_basic_auth(self.headers.get("Authorization")),
                form=form,
                headers={k: v for k, v in self.headers.items() if k.lower() != "authorization"},
            )
            status, body = fake._handle(request)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    return Handler
