"""Logging for the commands: one filter that keeps phone numbers out of every log line.

Residents' numbers are personal data. floodwarn's own log lines mask them
(:func:`alerts.channels.mask_phone`), but libraries' do not: the Twilio SDK logs each API
request at INFO, URL and query parameters included (``GET .../Messages.json?To=%2B4477...``,
``Query Params: {'To': '+4477...'}``, when the dispatcher asks Twilio whether a message went
out), and urllib3 logs URLs at DEBUG. :class:`PhoneNumberFilter` masks, in the style of
``mask_phone`` (country code, two digits either end):

- numbers in international form: ``+447700900123`` -> ``+4477******23`` (also written
  with spaces, dashes, dots or parentheses: ``+44 7700 900123``);
- URL-encoded: ``%2B447700900123`` -> ``%2B4477******23`` (``%252B``, encoded twice, too);
- digits given to a ``To`` or ``From`` key: ``To=447700900123`` -> ``To=4477******23``.

It sits on handlers, not loggers, so it sees every record a handler writes, whichever
logger made it: :func:`install_phone_filter` puts it on every handler there is (the root
logger's, and those libraries such as distributed attach to their own loggers), and
:func:`with_phone_filter` adds it to a :func:`logging.config.dictConfig` configuration,
e.g. uvicorn's, whose handlers are made after ours.

Lines come as text (``2025-11-14T16:00:03.042Z INFO warning.alerting: ... [run_id=...
zone=...]``) or as JSON, one object per line (:class:`JsonFormatter`), as
``FLOODWARN_LOG_FORMAT`` (or ``serve --log-format``) says (:func:`setup_logging`;
:func:`uvicorn_log_config` gives the web server's lines the same format). Where a line
comes from (the cycle's run id, the zone, the feed, the scheduler's job) is set once per
block with :func:`log_context` and copied onto every record by :class:`ContextFilter`, so
log calls need not repeat it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from alerts.channels import mask_phone

from .errors import ConfigError

__all__ = ["CONTEXT_FIELDS", "LOG_FORMATS", "LOG_FORMAT_ENV", "ContextFilter", "JsonFormatter", "PhoneNumberFilter",
           "TextFormatter", "current_log_context", "install_phone_filter", "log_context", "log_format",
           "make_formatter", "redact_phone_numbers", "setup_logging", "uvicorn_log_config", "with_phone_filter"]

# "+" (or "%2B", "%252B") then 7-15 digits: E.164, or groups of digits with single
# separators between them (what _mask keeps to 7-15 digits)
_PLUS_NUMBER = re.compile(r"(?P<prefix>\+|%(?:25)?2[Bb])"
                          r"(?P<number>[1-9]\d{6,14}(?!\d)|[1-9]\d{0,5}(?:[ ().-]\(?\d+\)?){1,6})")
# a To= or From= key (query string, form body) followed by bare digits
_KEYED_NUMBER = re.compile(r"(?P<prefix>\b(?:To|From)=)(?P<number>[1-9]\d{6,14})(?!\d)",
                           re.IGNORECASE)
_MARK = "_floodwarn_phones_masked"


def _mask(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match["number"])
    if not 7 <= len(digits) <= 15:  # "+1 2" or a long run of figures: not a phone number
        return match[0]
    return match["prefix"] + mask_phone("+" + digits)[1:]


def redact_phone_numbers(text: str) -> str:
    """``text`` with every international, URL-encoded or ``To=``/``From=`` phone number masked.

    >>> redact_phone_numbers("GET /Messages.json?To=%2B447700900123&PageSize=50")
    'GET /Messages.json?To=%2B4477******23&PageSize=50'
    """
    return _KEYED_NUMBER.sub(_mask, _PLUS_NUMBER.sub(_mask, text))


def _redact_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact_phone_numbers(value)
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)
    masked = redact_phone_numbers(text)
    if masked != text or redact_phone_numbers(repr(value)) != repr(value):
        return masked  # the object's text held a number: log its masked text instead
    return value


class PhoneNumberFilter(logging.Filter):
    """Masks phone numbers in a record's message, arguments, traceback and stack; drops nothing.

    Arguments are masked one by one, so formatters that read ``record.args`` (uvicorn's
    access log) keep working; a number the message only forms once formatted (``"To=%s"``)
    is masked in the formatted message. A traceback holding a number is kept as masked text
    only (``exc_text``), without the exception object, so no later formatter can print it
    in clear.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):  # seen by another handler's filter already
            return True
        setattr(record, _MARK, True)
        if isinstance(record.msg, str):
            record.msg = redact_phone_numbers(record.msg)
        elif record.msg is not None:
            record.msg = _redact_arg(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_redact_arg(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it (msg and args masked)
            message = None
        if message is not None:
            masked = redact_phone_numbers(message)
            if masked != message:
                record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            masked = redact_phone_numbers(record.exc_text)
            if masked != record.exc_text:
                record.exc_text, record.exc_info = masked, None
        if record.stack_info:
            record.stack_info = redact_phone_numbers(record.stack_info)
        return True


_FILTER = PhoneNumberFilter()


def install_phone_filter() -> int:
    """Put the phone number filter on every handler of every logger (and on logging's
    last-resort handler); returns how many handlers got it. Safe to call again, e.g. after
    importing a library that adds handlers of its own."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    added = 0
    for handler in handlers:
        if not any(isinstance(f, PhoneNumberFilter) for f in handler.filters):
            handler.addFilter(_FILTER)
            added += 1
    return added


def with_phone_filter(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a :func:`logging.config.dictConfig` configuration (e.g.
    ``uvicorn.config.LOGGING_CONFIG``) whose every handler carries :class:`PhoneNumberFilter`."""
    out = copy.deepcopy(dict(config))
    out.setdefault("filters", {})["floodwarn_phone_numbers"] = {"()": PhoneNumberFilter}
    for handler in out.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "floodwarn_phone_numbers"]
    return out


# --------------------------------------------------------------------------- formats and context
#: what a log line may say about where it comes from (set by :func:`log_context`)
CONTEXT_FIELDS = ("run_id", "zone", "source", "job")
#: the log formats: ``FLOODWARN_LOG_FORMAT`` or ``serve --log-format``
LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "FLOODWARN_LOG_FORMAT"

_CONTEXT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("floodwarn_log_context", default=())


@contextlib.contextmanager
def log_context(*, run_id: str | None = None, zone: str | None = None, source: str | None = None,
                job: str | None = None) -> Iterator[None]:
    """Every record logged in this block (this thread or task) carries these fields, on top
    of those of enclosing blocks; None leaves a field as it was.

    >>> with log_context(run_id="20251114T1600Z-live"), log_context(zone="MB-TOWN"):
    ...     dict(current_log_context())
    {'run_id': '20251114T1600Z-live', 'zone': 'MB-TOWN'}
    """
    given = {"run_id": run_id, "zone": zone, "source": source, "job": job}
    fields = dict(_CONTEXT.get())
    fields.update({k: str(v) for k, v in given.items() if v is not None})
    token = _CONTEXT.set(tuple(fields.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_log_context() -> dict[str, str]:
    """The fields :func:`log_context` has set here, in :data:`CONTEXT_FIELDS` order."""
    fields = dict(_CONTEXT.get())
    return {k: fields[k] for k in CONTEXT_FIELDS if k in fields}


class ContextFilter(logging.Filter):
    """Copies the :func:`log_context` fields onto each record (a field the call gave with
    ``extra=`` wins); drops nothing. Sits on handlers, like :class:`PhoneNumberFilter`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _record_context(record: logging.LogRecord) -> dict[str, str]:
    return {k: str(v) for k in CONTEXT_FIELDS if (v := getattr(record, k, None)) is not None}


def _utc_time(record: logging.LogRecord) -> str:
    """The record's time, ISO 8601 UTC with milliseconds: ``2025-11-14T16:00:03.042Z``."""
    t = datetime.fromtimestamp(record.created, UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<time UTC> LEVEL logger: message [run_id=... zone=...]``, traceback below."""

    def __init__(self) -> None:
        super().__init__("%(utc_time)s %(levelname)s %(name)s: %(message)s%(context_text)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = _record_context(record)
        record.utc_time = _utc_time(record)
        record.context_text = (" [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]") if fields else ""
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC, milliseconds), ``level``,
    ``logger``, ``message``, the :data:`CONTEXT_FIELDS` that are known, and ``exc`` (the
    traceback) and ``stack`` when there are any.

    Phone numbers are masked before this runs (:class:`PhoneNumberFilter` on the handler
    works on the record, not on the JSON text), so escaping cannot hide a number from it.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _utc_time(record), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage(), **_record_context(record)}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_format(chosen: str | None = None) -> str:
    """The log format: ``chosen`` (a command's option), else ``FLOODWARN_LOG_FORMAT``, else text."""
    value = (chosen or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if value not in LOG_FORMATS:
        where = "--log-format" if chosen else LOG_FORMAT_ENV
        raise ConfigError(f"{where} must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of a format in :data:`LOG_FORMATS`."""
    return JsonFormatter() if log_format(fmt) == "json" else TextFormatter()


def setup_logging(level: int, fmt: str | None = None) -> str:
    """Log to stderr at ``level`` in format ``fmt`` (see :func:`log_format`), each line with
    its :func:`log_context` fields and phone numbers masked; returns the format used.

    As :func:`logging.basicConfig`, nothing changes when the root logger has handlers
    already (a test's, or a host program's), except that the phone number filter goes on
    every handler there is (:func:`install_phone_filter`).
    """
    fmt = log_format(fmt)
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler])
    install_phone_filter()
    return fmt


def uvicorn_log_config(config: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """``config`` (uvicorn's ``LOGGING_CONFIG``) with :class:`PhoneNumberFilter` and
    :class:`ContextFilter` on every handler and every formatter replaced by the one of
    ``fmt``, so the web server's access and error lines look like the service's."""
    out = with_phone_filter(config)
    out["filters"]["floodwarn_context"] = {"()": ContextFilter}
    for handler in out.get("handlers", {}).values():
        handler["filters"] = ["floodwarn_context", *handler["filters"]]
    kind = JsonFormatter if log_format(fmt) == "json" else TextFormatter
    out["formatters"] = {name: {"()": kind} for name in out.get("formatters", {})}
    return out
