"""Delivery channels behind one interface, chosen by name.

``get_channel("twilio", account_sid=..., auth_token=..., from_number=...)`` or
``get_channel("file", path=...)``; an unknown name raises ``ValueError`` listing the valid
ones. A channel sends one :class:`OutgoingMessage` and returns a :class:`SendResult`, or
raises :class:`~alerts.errors.DeliveryError` saying whether a retry can help. Claiming
each message once (idempotency) is the outbox's job; the message ``key`` travels along
for logs and audit.

Residents' phone numbers are personal data: they never appear in clear in logs, files or
error messages written here (see :func:`mask_phone`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from alerts.delivery import PERMANENT_ERRORS
from alerts.errors import DeliveryError
from alerts.messages import sms_segments

log = logging.getLogger(__name__)

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")

# Twilio errors where retrying the same message cannot succeed.
# 21211 invalid To; 21408 region not permitted; 21610 recipient replied STOP;
# 21612 To not reachable by SMS from this sender; 21614 To not SMS-capable;
# 30004 blocked; 30005 unknown or inactive number; 30006 landline / unreachable carrier.
TWILIO_PERMANENT_CODES = frozenset(PERMANENT_ERRORS)

# ITU-T E.164 country calling codes are prefix-free: 1 and 7 have one digit, these have
# two, and every other code has three.
_TWO_DIGIT_CODES = frozenset({
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
    "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
    "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
})
_PHONE_IN_TEXT = re.compile(r"\+?\d[\d ().-]{5,}\d")


def _country_code_length(digits: str) -> int:
    if digits[:1] in ("1", "7"):
        return 1
    if digits[:2] in _TWO_DIGIT_CODES:
        return 2
    return 3


def mask_phone(number: str) -> str:
    """Mask a phone number for logs: ``+447700900121`` -> ``+4477******21``.

    Keeps the country code and the first two and last two digits of the national number
    (fewer for very short numbers, so at least half the digits are always hidden).
    Separators are dropped; anything without digits becomes ``***``.
    """
    digits = re.sub(r"\D", "", number or "")
    if not digits:
        return "***"
    plus = "+" if (number or "").strip().startswith("+") else ""
    cc = digits[: _country_code_length(digits)] if plus else ""
    national = digits[len(cc):]
    keep = 2 if len(national) >= 8 else (1 if len(national) >= 4 else 0)
    if keep == 0:
        return plus + cc + "*" * len(national)
    return plus + cc + national[:keep] + "*" * (len(national) - 2 * keep) + national[-keep:]


def mask_phones_in(text: str) -> str:
    """Mask every phone-number-like run of digits in free text (e.g. provider errors)."""
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to one recipient.

    Parameters
    ----------
    to : str
        Recipient in E.164 (``+`` and 7-15 digits).
    body : str
    key : str
        Idempotency key (e.g. ``alert-version:subscriber``), unique per message.
    """

    to: str
    body: str
    key: str

    def __post_init__(self) -> None:
        if not E164_RE.match(self.to or ""):
            raise ValueError(
                f"recipient {mask_phone(self.to)} is not an E.164 number (+ and 7-15 digits)"
            )
        if not self.body:
            raise ValueError(f"message {self.key!r} has an empty body")
        if not self.key:
            raise ValueError("a message needs an idempotency key")

    def __repr__(self) -> str:  # never show the number in clear, even in tracebacks
        return f"OutgoingMessage(to={mask_phone(self.to)!r}, key={self.key!r}, body={self.body!r})"


@dataclass(frozen=True)
class SendResult:
    """A provider's acceptance of a message: its id and first status (e.g. ``queued``)."""

    provider_id: str
    status: str


@runtime_checkable
class Channel(Protocol):
    """Something that delivers :class:`OutgoingMessage` s."""

    name: str

    def send(self, msg: OutgoingMessage) -> SendResult:
        """Hand one message over, or raise :class:`~alerts.errors.DeliveryError`."""
        ...

    def find_sent(self, msg: OutgoingMessage, since: datetime) -> str | None:
        """The provider id of ``msg`` if it was already handed over at or after ``since``
        (a dispatcher died before recording it), else None. Raises DeliveryError when the
        provider cannot be asked; the message then stays in doubt (the outbox asks again
        with backoff, and after a bounded time resends or holds it and tells operators)."""
        ...


class FileChannel:
    """Append each message as a JSON line to a file (demo, drills, tests).

    Each line is ``{time, key, to_masked, body, segments, encoding}``. The recipient's
    number is masked; it is never written in clear.

    Parameters
    ----------
    path : str or Path
        The file; its folder is created if needed.
    clock : callable, optional
        Returns the current aware datetime (defaults to the UTC wall clock).
    """

    name = "file"

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    def send(self, msg: OutgoingMessage) -> SendResult:
        """Append the message; the provider id is derived from its key."""
        length = sms_segments(msg.body)
        record = {
            "time": self._clock().isoformat(timespec="seconds"),
            "key": msg.key,
            "to_masked": mask_phone(msg.to),
            "body": msg.body,
            "segments": length.segments,
            "encoding": length.encoding,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
        except OSError as exc:
            raise DeliveryError(
                f"cannot append to {self.path}: {exc.strerror}; check the folder exists "
                "and is writable", permanent=False,
            ) from exc
        log.info("message %s to %s written to %s", msg.key, record["to_masked"], self.path)
        return SendResult(provider_id=self._provider_id(msg.key), status="sent")

    @staticmethod
    def _provider_id(key: str) -> str:
        return "FILE" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def find_sent(self, msg: OutgoingMessage, since: datetime) -> str | None:
        """Look for the message's key in the file (every line carries it)."""
        if not self.path.exists():
            return None
        needle = json.dumps(msg.key)
        with self._lock, self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if needle in line and json.loads(line).get("key") == msg.key:
                    return self._provider_id(msg.key)
        return None


class TwilioChannel:
    """Send SMS through the Twilio Messages API with the official SDK.

    Parameters
    ----------
    account_sid, auth_token : str
        Credentials (from the environment, never from config files).
    from_number : str, optional
        Sender number in E.164.
    messaging_service_sid : str, optional
        Messaging Service (sender pool); one of this and ``from_number`` is needed.
    base_url : str, optional
        Another Twilio-compatible API (tests, self-hosted gateways), e.g.
        ``http://127.0.0.1:8099``. Replaces ``https://api.twilio.com``.
    status_callback : str, optional
        URL Twilio posts delivery status to.
    validity_period : int
        Seconds (1-36000) after which Twilio drops a message still queued: stale flood
        warnings should not arrive hours late.
    timeout : float
        Seconds to wait for the API.
    """

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str | None = None,
        status_callback: str | None = None,
        validity_period: int = 3600,
        timeout: float = 15.0,
    ) -> None:
        # Imported here: the SDK takes ~0.5 s to import, which users of other channels
        # (and every CLI command) should not pay.
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        if not account_sid or not auth_token:
            raise ValueError(
                "Twilio needs an account SID and auth token; set TWILIO_ACCOUNT_SID and "
                "TWILIO_AUTH_TOKEN"
            )
        if not from_number and not messaging_service_sid:
            raise ValueError("Twilio needs from_number or messaging_service_sid")
        if from_number and not E164_RE.match(from_number):
            raise ValueError(f"from_number {from_number!r} is not an E.164 number")
        if not 1 <= int(validity_period) <= 36000:
            raise ValueError(f"validity_period must be 1-36000 s, got {validity_period}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.validity_period = int(validity_period)
        # The SDK reads credentials, TWILIO_EDGE and TWILIO_REGION from `environment`
        # and falls back to os.environ when it is empty ({} is falsy). Edge/region rewrite
        # the API host, which would break base_url, so pass them explicitly as unset.
        isolated_env = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}
        self._client = Client(
            account_sid, auth_token, environment=isolated_env,
            http_client=TwilioHttpClient(timeout=timeout),
        )
        if base_url:
            # twilio.base.domain.Domain.absolute_url() joins base_url and the path.
            self._client.api.base_url = base_url.rstrip("/")
        self.base_url = self._client.api.base_url

    def send(self, msg: OutgoingMessage) -> SendResult:
        """Create the message at Twilio.

        Raises
        ------
        DeliveryError
            ``permanent=True`` for errors a retry cannot fix (see
            ``TWILIO_PERMANENT_CODES``), ``permanent=False`` for network trouble, 5xx
            and rate limits.
        """
        import requests
        from twilio.base.exceptions import TwilioException, TwilioRestException

        params: dict[str, Any] = {
            "to": msg.to,
            "body": msg.body,
            "validity_period": self.validity_period,
        }
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        if self.from_number:
            params["from_"] = self.from_number
        if self.status_callback:
            params["status_callback"] = self.status_callback
        masked = mask_phone(msg.to)
        try:
            message = self._client.messages.create(**params)
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            permanent = code in TWILIO_PERMANENT_CODES
            detail = mask_phones_in(str(exc.msg or ""))
            # "from None": the SDK's exception text and URI may hold the number in clear.
            raise DeliveryError(
                f"Twilio refused message {msg.key} to {masked}: HTTP {exc.status}, "
                f"error {code}: {detail}",
                permanent=permanent,
                code=code,
            ) from None
        except (requests.RequestException, TwilioException) as exc:
            raise DeliveryError(
                f"could not reach Twilio at {self.base_url} for message {msg.key} to {masked}: "
                f"{type(exc).__name__}; it will be retried",
                permanent=False,
            ) from None
        log.info("message %s to %s accepted by Twilio as %s (%s)", msg.key, masked,
                 message.sid, message.status)
        return SendResult(provider_id=str(message.sid), status=str(message.status))


    def find_sent(self, msg: OutgoingMessage, since: datetime) -> str | None:
        """Ask Twilio for recent messages to the same number (``GET Messages.json?To=``)
        and match the body and creation time; Twilio has no idempotency key for SMS."""
        import requests
        from twilio.base.exceptions import TwilioException

        since = since - timedelta(seconds=5)  # clock skew between us and the provider
        try:
            for m in self._client.messages.list(to=msg.to, limit=50):
                created = m.date_created
                if m.body == msg.body and (created is None or created >= since):
                    return str(m.sid)
        except (requests.RequestException, TwilioException) as exc:
            raise DeliveryError(
                f"could not ask Twilio at {self.base_url} whether message {msg.key} to "
                f"{mask_phone(msg.to)} went out: {type(exc).__name__}", permanent=False,
            ) from None
        return None


CHANNELS: dict[str, type] = {"file": FileChannel, "twilio": TwilioChannel}
"""Channel classes by name."""


def get_channel(name: str, **settings: Any) -> Channel:
    """Create a channel by name.

    Parameters
    ----------
    name : str
        One of :data:`CHANNELS` (``"file"``, ``"twilio"``).
    **settings
        Passed to the channel's constructor.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    try:
        cls = CHANNELS[name]
    except KeyError:
        raise ValueError(
            f"unknown channel {name!r}; valid channels: {', '.join(sorted(CHANNELS))}"
        ) from None
    return cls(**settings)
