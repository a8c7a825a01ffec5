"""Twilio webhooks: SMS delivery status callbacks and inbound SMS, as a FastAPI router.

::

    app.include_router(make_router(
        store, auth_token=..., public_base_url="https://alerts.example.org",
        vault=PhoneVault.from_env(), zones={"MB-TOWN": "Millbrook town centre"},
        sender_name="Millbrook Flood Warnings"))

Routes (Twilio POSTs ``application/x-www-form-urlencoded``):

``POST /twilio/sms-status``
    Delivery status callback (``MessageSid``, ``MessageStatus``, ``ErrorCode``, ...).
    Upserts the ``deliveries`` row; statuses only move forward (:data:`STATUS_RANK`), so
    repeated and late callbacks change nothing. A permanent error code marks the
    subscriber (:data:`PERMANENT_ERRORS`). Answers **204** with no body.
``POST /twilio/sms-inbound``
    A resident's text (``From``, ``Body``, ``MessageSid``, ...), parsed by
    :func:`alerts.inbound.parse_inbound`: STOP, START, HELP, JOIN, LANG, REPORT, and
    DELETE (or BORRAR), which erases the number and every trace of it
    (:func:`warning.subscribers.erase_number`).
    Answers **200** with TwiML (``application/xml``): ``<Response><Message>reply
    </Message></Response>``, or an empty ``<Response/>`` for STOP (Twilio sends the
    opt-out confirmation itself).

Both check ``X-Twilio-Signature`` against the **public** URL Twilio called
(``public_base_url`` + path + query), not the URL this process sees behind a proxy:
**403** (plain text) when it is missing or wrong, and nothing is written. Malformed
input (a missing ``From``, ``MessageSid`` or ``MessageStatus``, a ``From`` that is not a
phone number, an unknown status or a non-numeric ``ErrorCode``, whatever the status) gets
**400** (plain text) saying what is wrong. Parameters are read exactly as sent (Twilio
sends them so: not trimmed, not case-folded), as the app's OpenAPI document
(``/openapi.json``) describes them: the form bodies, the signature header and every
answer with its media type. Only POST is served: configure the webhooks in Twilio as
HTTP POST.

Phone numbers never appear in clear in logs, audit details or error messages
(:func:`alerts.channels.mask_phone`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from alerts.channels import mask_phone, mask_phones_in
from alerts.delivery import PERMANENT_ERRORS as DELIVERY_ERRORS
from alerts.inbound import (
    REPLY_LANGUAGES,
    InboundCommand,
    parse_inbound,
    redact_numbers,
    reply_language,
    reply_text,
)

from .errors import ConfigError, FloodwarnError
from .storage import DeliveryRow, InboundRow, OutboxRow, ReportRow, Store, Subscriber, utcnow
from .subscribers import PhoneVault, SubscriberRegistry, erase_number, normalise_phone

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/sms-status"
INBOUND_PATH = "/twilio/sms-inbound"

STATUS_RANK: dict[str, int] = {
    "queued": 0, "accepted": 0, "scheduled": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3, "undelivered": 3, "failed": 3, "canceled": 3,
}
"""Order of outbound SMS statuses. A callback is applied only when its rank is higher
than the stored one, so rank-3 (terminal) statuses never change once reached."""

IGNORED_STATUSES = frozenset({"receiving", "received", "read", "partially_delivered"})
"""Valid Twilio statuses that say nothing about an outbound SMS (inbound messages,
WhatsApp/RCS read receipts, group MMS): acknowledged with 204, nothing stored."""

FAILED_STATUSES = frozenset({"failed", "undelivered"})

PERMANENT_ERRORS: dict[int, str] = {
    code: meaning for code, (meaning, effect) in DELIVERY_ERRORS.items() if effect != "operator"
}
"""Twilio error codes in a failed/undelivered callback that mark the subscriber (the same
table the dispatcher uses, :data:`alerts.delivery.PERMANENT_ERRORS`): 21610 opts the number
out; the others set ``Subscriber.unreachable`` to ``"<code> <meaning>"``."""

_SID_RE = re.compile(r"^[A-Za-z0-9_-]{2,64}$")
_CODE_RE = re.compile(r"^([0-9]{1,9})?$")  # ErrorCode: empty when there is none
# What a phone number may look like before normalise_phone (which would otherwise find a
# number inside free text such as "call 0770 me").
_PHONE_CHARS_RE = re.compile(r"^\+?[0-9][0-9 ()./-]{2,30}$")
_SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

# ---------------------------------------------------------------------- OpenAPI document
# What the handlers read, described from the same patterns and tables they check with. The
# body stays unparsed by FastAPI (the signature is checked on the raw form), so it is given
# to the document as ``openapi_extra`` rather than as Form parameters.

_TEXT: dict[str, Any] = {"type": "string"}
_PLAIN_TEXT = {"text/plain": {"schema": _TEXT}}
_SID = {"type": "string", "pattern": _SID_RE.pattern, "example": "SM" + "0" * 32}


def _form_body(description: str, properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """A signed ``application/x-www-form-urlencoded`` request body; Twilio may add
    parameters, which are ignored."""
    return {"required": True, "description": description, "content": {
        "application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": properties, "required": required,
            "additionalProperties": True}}}}


_SIGNATURE_PARAMETERS = [
    {"name": "X-Twilio-Signature", "in": "header", "required": True,
     "description": "Base64 HMAC-SHA1, with the Auth Token, of the public URL Twilio called "
                    "followed by the form parameters sorted by name (each name then its value)",
     "schema": {"type": "string", "minLength": 1}},
    {"name": _SIGNATURE_SETTINGS_HEADER, "in": "header", "required": False,
     "description": "Only algorithm=HMAC_SHA1 (the default when absent) is accepted",
     "schema": _TEXT},
]

_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed: the body is not a form, or a parameter is missing or not as "
                         "documented; the reason in plain text, nothing is written",
          "content": _PLAIN_TEXT},
    403: {"description": "X-Twilio-Signature missing, of an unsupported algorithm or wrong for the "
                         "public URL and these parameters; nothing is written",
          "content": _PLAIN_TEXT},
}


class _Rejected(Exception):
    """A request answered with a plain-text error (400 or 403) before anything is written."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def response(self) -> PlainTextResponse:
        return PlainTextResponse(self.message + "\n", status_code=self.status_code)


@dataclass(frozen=True)
class _StatusUpdate:
    """What one status callback changed: enough to mark the subscriber afterwards."""

    applied: bool
    subscriber_id: int | None = None


def _signature_algorithm(header: str | None) -> str:
    """The algorithm named in X-Twilio-Webhooks-Signature-Settings (HMAC_SHA1 if absent)."""
    for part in (header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip().lower() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _check_public_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"public_base_url: {url!r} must be the absolute http(s) URL Twilio "
                          "calls, without query or fragment, e.g. https://alerts.example.org")
    return url.rstrip("/")


class TwilioWebhooks:
    """The two webhook handlers and what they share (store, registry, signature check).

    Use :func:`make_router`; this class is exposed for tests and for mounting elsewhere.
    """

    def __init__(self, store: Store, *, auth_token: str, public_base_url: str, vault: PhoneVault,
                 region: str = "GB", zones: Mapping[str, str], sender_name: str,
                 clock: Callable[[], datetime] | None = None):
        if not auth_token:
            raise ConfigError("TWILIO_AUTH_TOKEN: not set; the Twilio webhooks check every "
                              "request's signature with it. export TWILIO_AUTH_TOKEN=... "
                              "(or TWILIO_AUTH_TOKEN_FILE=/path/to/file)")
        if not sender_name or not sender_name.strip():
            raise ConfigError("sender_name: empty; HELP replies must say who sends the warnings")
        self.store = store
        self.registry = SubscriberRegistry(store, vault, region)
        #: the drill roster: a STOP or START from one of its numbers applies to it too
        self.drill_registry = SubscriberRegistry(store, vault, region, roster="drill")
        self.vault = vault
        self.public_base_url = _check_public_base_url(public_base_url)
        self.validator = RequestValidator(auth_token)
        self.zones = dict(zones)
        self._zone_by_folded: dict[str, str] = {}
        for code in self.zones:
            other = self._zone_by_folded.setdefault(code.casefold(), code)
            if other != code:
                raise ConfigError(f"zones: codes {other!r} and {code!r} differ only in case; "
                                  "JOIN matches zone codes case-insensitively")
        self.sender_name = sender_name.strip()
        self.clock = clock or utcnow

    # ------------------------------------------------------------------ request checks

    def public_url(self, request: Request) -> str:
        """The URL Twilio signed: ``public_base_url`` + this request's path and query."""
        query = request.url.query
        return self.public_base_url + request.url.path + (f"?{query}" if query else "")

    async def signed_form(self, request: Request) -> dict[str, str]:
        """The request's form parameters (the last value of each), once the signature is checked.

        Raises
        ------
        _Rejected
            400 when the body cannot be read as a form, 403 when the signature is
            missing, uses an unsupported scheme, or does not match.
        """
        try:
            form = await request.form()
        except (HTTPException, MultiPartException, ValueError) as exc:  # bad multipart or encoding
            raise _Rejected(400, f"cannot read the request body as a form ({type(exc).__name__}); "
                                 "Twilio sends application/x-www-form-urlencoded") from None
        if any(not isinstance(v, str) for _, v in form.multi_items()):
            raise _Rejected(400, "file uploads are not accepted; Twilio sends "
                                 "application/x-www-form-urlencoded")
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            self._refuse(request, "missing X-Twilio-Signature header")
        algorithm = _signature_algorithm(request.headers.get(_SIGNATURE_SETTINGS_HEADER))
        if algorithm != "HMAC_SHA1":
            self._refuse(request, f"signature algorithm {algorithm} is not supported; these "
                                  "webhooks check the Auth Token signature (HMAC_SHA1)")
        if not self.validator.validate(self.public_url(request), form, signature):
            self._refuse(request, "invalid X-Twilio-Signature")
        return {name: value for name, value in form.items() if isinstance(value, str)}

    def _refuse(self, request: Request, reason: str) -> None:
        log.warning("Twilio webhook %s refused: %s (signed URL checked: %s%s)", request.url.path,
                    reason, self.public_base_url, request.url.path)
        raise _Rejected(403, f"forbidden: {reason}")

    @staticmethod
    def _required(form: dict[str, str], name: str) -> str:
        """The parameter as sent (not trimmed: Twilio sends exact values, and the OpenAPI
        document's patterns say what is accepted)."""
        value = form.get(name) or ""
        if not value:
            raise _Rejected(400, f"missing form parameter {name}")
        return value

    def _message_sid(self, form: dict[str, str]) -> str:
        sid = self._required(form, "MessageSid")
        if not _SID_RE.fullmatch(sid):
            raise _Rejected(400, "MessageSid must be 2-64 letters, digits, '_' or '-' "
                                 "(Twilio sends SM followed by 32 hex digits)")
        return sid

    # ------------------------------------------------------------------ status callback

    async def sms_status(self, request: Request) -> Response:
        """Apply one delivery status callback; 204 (also for repeated or late callbacks)."""
        try:
            form = await self.signed_form(request)
            sid = self._message_sid(form)
            status = form.get("MessageStatus") or ""
            if not status:
                raise _Rejected(400, "missing form parameter MessageStatus")
            if status not in STATUS_RANK and status not in IGNORED_STATUSES:
                raise _Rejected(400, f"MessageStatus {status[:30]!r} is not an SMS delivery "
                                     f"status; expected one of {', '.join(STATUS_RANK)}")
            raw_code = form.get("ErrorCode") or ""
            if not _CODE_RE.fullmatch(raw_code):
                raise _Rejected(400, f"ErrorCode must be a whole number, got {raw_code[:12]!r}")
            code = int(raw_code) if raw_code else None
            to = (form.get("To") or "").strip()
        except _Rejected as rej:
            return rej.response()
        if status in IGNORED_STATUSES:  # checked as a whole first: malformed is a 400 whatever the status
            log.info("status callback for %s: %s ignored (not an outbound SMS status)", sid, status)
            return Response(status_code=204)
        await run_in_threadpool(self._apply_status, sid, status, code, to)
        return Response(status_code=204)

    def _apply_status(self, sid: str, status: str, code: int | None, to: str) -> None:
        now = self.clock()
        try:
            update = self._upsert_delivery(sid, status, code, now)
        except IntegrityError:  # a concurrent callback inserted the row first: apply on top
            update = self._upsert_delivery(sid, status, code, now)
        if update.applied and status in FAILED_STATUSES and code in PERMANENT_ERRORS:
            self._mark_subscriber(sid, code, update.subscriber_id, to, now)

    def _upsert_delivery(self, sid: str, status: str, code: int | None,
                         now: datetime) -> _StatusUpdate:
        """Insert or move forward the delivery row for ``sid``, with its audit event."""
        with self.store.session.begin() as s:
            row = s.scalar(select(DeliveryRow).where(DeliveryRow.provider_id == sid)
                           .with_for_update())
            outbox = s.scalar(select(OutboxRow).where(OutboxRow.provider_id == sid)
                              .order_by(OutboxRow.id).limit(1))
            previous = row.status if row is not None else None
            if row is not None and STATUS_RANK.get(row.status, -1) >= STATUS_RANK[status]:
                log.debug("status callback for %s: %s after %s changes nothing",
                          sid, status, row.status)
                if row.outbox_id is None and outbox is not None:
                    row.outbox_id = outbox.id  # link late: the sender recorded the sid after
                return _StatusUpdate(False)
            if row is None:
                row = DeliveryRow(provider_id=sid, status=status, error_code=code, updated=now,
                                  outbox_id=outbox.id if outbox else None)
                s.add(row)
            else:
                row.status, row.error_code, row.updated = status, code, now
                if row.outbox_id is None and outbox is not None:
                    row.outbox_id = outbox.id
            s.flush()
            detail = {"message_sid": sid, "status": status, "previous": previous,
                      "error_code": code, "outbox_id": row.outbox_id}
            self.store.audit(s, "delivery", detail,
                             zone=outbox.zone if outbox and outbox.zone else None, time=now)
        log.info("message %s: %s -> %s%s", sid, previous or "(new)", status,
                 f" (error {code})" if code else "")
        return _StatusUpdate(True, outbox.subscriber_id if outbox else None)

    def _mark_subscriber(self, sid: str, code: int, subscriber_id: int | None, to: str,
                         now: datetime) -> None:
        """Opt out (21610) or mark unreachable the subscriber a failed message went to."""
        with self.store.session() as s:
            sub = s.get(Subscriber, subscriber_id) if subscriber_id is not None else None
        if sub is None and to:
            try:
                sub = self.registry.find(to)
            except FloodwarnError:
                sub = None
        if sub is None:
            log.warning("message %s to %s failed with %s %s, but no subscriber has that number",
                        sid, mask_phone(to), code, PERMANENT_ERRORS[code])
            return
        if code == 21610:
            if sub.opted_out_at is None:
                phone = self.vault.decrypt(sub.phone_enc)
                self.registry.opt_out(phone, source="twilio 21610", at=now)
                log.info("subscriber %d opted out: Twilio 21610 on message %s", sub.id, sid)
            return
        reason = f"{code} {PERMANENT_ERRORS[code]}"
        with self.store.session.begin() as s:
            row = s.get(Subscriber, sub.id)
            if row is None or row.unreachable == reason:
                return
            row.unreachable = reason
            self.store.audit(s, "unreachable", {"subscriber_id": row.id, "reason": reason,
                                                "message_sid": sid}, time=now)
        log.info("subscriber %d marked unreachable (%s) after message %s", sub.id, reason, sid)

    # ------------------------------------------------------------------ inbound SMS

    async def sms_inbound(self, request: Request) -> Response:
        """Act on a resident's text; 200 with the TwiML reply (empty ``<Response/>`` for STOP)."""
        try:
            form = await self.signed_form(request)
            sid = self._message_sid(form)
            raw_from = self._required(form, "From")
            if not _PHONE_CHARS_RE.fullmatch(raw_from):
                raise _Rejected(400, f"From: not a phone number: {mask_phone(raw_from)} (Twilio "
                                     "sends E.164 numbers such as +15005550006)")
            try:
                phone = normalise_phone(raw_from, self.registry.region)
            except FloodwarnError as exc:
                raise _Rejected(400, f"From: {exc}") from None
        except _Rejected as rej:
            return rej.response()
        command = parse_inbound(form.get("Body") or "")
        reply = await run_in_threadpool(self._act_once, command, phone, sid)
        twiml = MessagingResponse()
        if reply:
            twiml.message(reply)
        return Response(str(twiml), media_type="application/xml")

    def _audit(self, event: str, detail: dict[str, Any], *, now: datetime,
               zone: str | None = None) -> None:
        with self.store.session.begin() as s:
            self.store.audit(s, event, detail, zone=zone, time=now)

    def _zone_name(self, code: str) -> str:
        name = self.zones.get(code) or code
        return name if name == code else f"{name} ({code})"

    def _zone_codes(self, limit: int = 300) -> str:
        """The zone codes for a reply, cut with '...' beyond ``limit`` characters."""
        shown: list[str] = []
        for code in sorted(self.zones):
            if sum(len(c) + 2 for c in shown) + len(code) > limit:
                return ", ".join(shown) + ", ..."
            shown.append(code)
        return ", ".join(shown) or "(none yet)"

    def _act_once(self, command: InboundCommand, phone: str, sid: str) -> str:
        """:meth:`_act`, once per ``MessageSid``: a replayed request (same sid) gets the
        reply stored the first time and changes nothing (a replayed STOP cannot opt out a
        resident who has since texted START)."""
        now = self.clock()
        try:
            with self.store.session.begin() as s:
                s.add(InboundRow(sid=sid, received=now, kind=command.kind))
        except IntegrityError:
            with self.store.session() as s:
                row = s.get(InboundRow, sid)
                reply = row.reply if row is not None else None
            log.warning("inbound message %s was already received (%s): replay ignored, nothing "
                        "changed", sid, row.kind if row is not None else "?")
            self._audit("inbound_replay", {"message_sid": sid, "kind": command.kind}, now=now)
            return reply or ""
        try:
            reply = self._act(command, phone, sid)
        except BaseException:
            with self.store.session.begin() as s:  # not acted on: a retry may try again
                row = s.get(InboundRow, sid)
                if row is not None:
                    s.delete(row)
            raise
        with self.store.session.begin() as s:
            row = s.get(InboundRow, sid)
            if row is not None:
                row.reply = reply
        return reply

    def _act(self, command: InboundCommand, phone: str, sid: str) -> str:
        """Carry out ``command`` from ``phone``; return the reply text ("" for none).

        Audit events: the registry writes ``opt_out``, ``opt_in`` and ``language`` when it
        changes a known subscriber; this writes them when it could not (unknown number,
        unsupported language) and writes ``join``, ``report`` and ``inbound_unknown``.
        DELETE writes ``subscriber_deleted`` (by id) for each row it erases, and nothing
        for an unknown number.
        """
        now = self.clock()
        sub = self.registry.find(phone)
        sub_id = sub.id if sub else None
        language = reply_language(sub.language if sub else None)
        sender = self.sender_name
        log.info("inbound %s from %s (subscriber %s, message %s)", command.kind,
                 mask_phone(phone), sub_id if sub_id is not None else "unknown", sid)

        def audit(event: str, zone: str | None = None, **detail: Any) -> None:
            self._audit(event, {"subscriber_id": sub_id, **detail, "message_sid": sid},
                        zone=zone, now=now)

        kind = command.kind
        if kind == "stop":
            drill_entry = self.drill_registry.opt_out(phone, source="sms STOP", at=now)
            if not self.registry.opt_out(phone, source="sms STOP", at=now) and not drill_entry:
                audit("opt_out", source="sms STOP", known=False)
            return reply_text(command, "ok", language, sender=sender)

        if kind == "start":
            self.drill_registry.opt_in(phone, source="sms START")
            if sub is None or not self.registry.opt_in(phone, source="sms START"):
                audit("opt_in", source="sms START", known=False)
                return reply_text(command, "not_subscribed", language, sender=sender)
            names = ", ".join(self.zones.get(z, z) for z in sub.zones) or "-"
            return reply_text(command, "ok", language, sender=sender, zone_names=names)

        if kind == "help":
            return reply_text(command, "ok", language, sender=sender)

        if kind == "delete":  # every roster, every trace; an unknown number changes nothing
            erased = erase_number(self.store, self.vault, phone, region=self.registry.region,
                                  source="sms DELETE", at=now)
            if not erased:
                return reply_text(command, "not_subscribed", language, sender=sender)
            return reply_text(command, "ok", reply_language(erased.language), sender=sender)

        if kind == "join":
            code = self._zone_by_folded.get(command.argument.casefold())
            if code is None:
                audit("join", applied=False, problem="unknown zone",
                      zone_asked=mask_phones_in(command.argument[:64]))
                return reply_text(command, "unknown_zone", language, sender=sender,
                                  zone_codes=self._zone_codes())
            new_id = self.registry.add(phone, [code], language=sub.language if sub else "en",
                                       consent_source="sms JOIN", consent_time=now)
            rejoined = sub is not None and sub.opted_out_at is not None
            if rejoined:
                self.registry.opt_in(phone, source="sms JOIN")
            sub_id = new_id
            audit("join", zone=code, applied=True, consent_source="sms JOIN",
                  new_subscriber=sub is None, cleared_opt_out=rejoined)
            return reply_text(command, "rejoined" if rejoined else "ok", language, sender=sender,
                              zone_name=self._zone_name(code))

        if kind == "lang":
            wanted = command.argument
            if wanted not in REPLY_LANGUAGES:
                audit("language", language=wanted, applied=False, problem="unsupported")
                return reply_text(command, "unsupported", language, sender=sender,
                                  languages=", ".join(REPLY_LANGUAGES))
            if sub is None or not self.registry.set_language(phone, wanted):
                audit("language", language=wanted, applied=False, problem="not subscribed")
                return reply_text(command, "not_subscribed", language, sender=sender)
            return reply_text(command, "ok", wanted, sender=sender)

        if kind == "report":
            zones = list(sub.zones) if sub else []
            with self.store.session.begin() as s:
                # parse_inbound removed any phone number typed in; again here, so that no
                # way of making the command can store one
                report = ReportRow(time=now, subscriber_id=sub_id, zones=zones,
                                   text=redact_numbers(command.argument))
                s.add(report)
                s.flush()
                self.store.audit(s, "report", {"report_id": report.id, "subscriber_id": sub_id,
                                               "zones": zones, "chars": len(command.argument),
                                               "message_sid": sid}, time=now)
            log.info("flood report %d stored (zones %s)", report.id, ",".join(zones) or "-")
            return reply_text(command, "ok", language, sender=sender)

        # unknown: command.problem already masks any phone number the resident typed
        audit("inbound_unknown", problem=command.problem, problem_code=command.problem_code)
        example = min(self.zones) if self.zones else "<zone code>"
        return reply_text(command, "ok", language, sender=sender, zone_example=example)


def make_router(store: Store, *, auth_token: str, public_base_url: str, vault: PhoneVault,
                region: str = "GB", zones: Mapping[str, str], sender_name: str,
                clock: Callable[[], datetime] | None = None) -> APIRouter:
    """A router with ``POST /twilio/sms-status`` and ``POST /twilio/sms-inbound``.

    Parameters
    ----------
    store : Store
        The database.
    auth_token : str
        The Twilio Auth Token that signs the webhooks (``TWILIO_AUTH_TOKEN``).
    public_base_url : str
        Scheme and host (and any path prefix) Twilio calls, e.g.
        ``"https://alerts.example.org"``; the signed URL is this + the request path
        (including any prefix the router is mounted under) + its query string.
    vault : PhoneVault
        Encrypts and hashes phone numbers (``PhoneVault.from_env()``).
    region : str
        ISO country for numbers without a ``+`` country code (Twilio sends E.164).
    zones : Mapping[str, str]
        Zone code -> public name, the zones residents may JOIN (codes matched
        case-insensitively).
    sender_name : str
        Who sends the warnings, named in HELP and confirmation replies.
    clock : callable returning an aware UTC datetime, optional
        "Now" for consent, opt-out, report and audit times; the wall clock by default.

    Raises
    ------
    ConfigError
        Empty ``auth_token`` or ``sender_name``, a ``public_base_url`` that is not an
        absolute http(s) URL, or zone codes that differ only in case.
    """
    hooks = TwilioWebhooks(store, auth_token=auth_token, public_base_url=public_base_url,
                           vault=vault, region=region, zones=zones, sender_name=sender_name,
                           clock=clock)
    router = APIRouter(tags=["twilio"])
    statuses = {"type": "string", "enum": [*STATUS_RANK, *sorted(IGNORED_STATUSES)]}
    status_form = _form_body("A delivery status callback, as Twilio sends it", {
        "MessageSid": _SID, "MessageStatus": statuses,
        "ErrorCode": {"type": "string", "pattern": _CODE_RE.pattern,
                      "description": "Twilio's error code, for failed and undelivered"},
        "To": {**_TEXT, "description": "the recipient; finds the subscriber of a permanent error"},
        **{name: _TEXT for name in ("AccountSid", "From", "SmsSid", "SmsStatus", "MessagingServiceSid",
                                    "ApiVersion", "RawDlrDoneDate", "ErrorMessage")},
    }, ["MessageSid", "MessageStatus"])
    inbound_form = _form_body("A resident's text, as Twilio sends it", {
        "MessageSid": _SID,
        "From": {"type": "string", "pattern": _PHONE_CHARS_RE.pattern, "example": "+447700900123",
                 "description": "the resident's number, E.164 (a national number is read in the "
                                "site's region)"},
        "Body": {**_TEXT, "description": "the text: STOP, START, HELP, JOIN <zone>, LANG <code>, "
                                         "REPORT <text>, DELETE"},
        **{name: _TEXT for name in ("To", "AccountSid", "MessagingServiceSid", "NumSegments", "NumMedia",
                                    "SmsMessageSid", "SmsSid", "SmsStatus", "ApiVersion", "FromCountry",
                                    "ToCountry")},
    }, ["MessageSid", "From"])
    router.add_api_route(STATUS_PATH, hooks.sms_status, methods=["POST"], status_code=204,
                         response_class=Response, summary="Twilio SMS delivery status callback",
                         description="Signed form POST: applies the status (statuses only move "
                                     "forward); 204 with no body, also for a repeated, late or "
                                     "ignored (inbound, read receipt) status.",
                         responses={204: {"description": "Applied, or nothing to change"}, **_REFUSALS},
                         openapi_extra={"parameters": _SIGNATURE_PARAMETERS, "requestBody": status_form})
    router.add_api_route(INBOUND_PATH, hooks.sms_inbound, methods=["POST"], response_class=Response,
                         summary="Twilio inbound SMS webhook",
                         description="Signed form POST: acts on the resident's command once per "
                                     "MessageSid; 200 with the TwiML reply.",
                         responses={200: {"description": "TwiML: <Response><Message>reply</Message>"
                                                         "</Response>, or an empty <Response/> for STOP",
                                          "content": {"application/xml": {"schema": _TEXT}}},
                                    **_REFUSALS},
                         openapi_extra={"parameters": _SIGNATURE_PARAMETERS, "requestBody": inbound_form})
    return router
