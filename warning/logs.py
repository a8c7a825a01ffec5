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
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from typing import Any

from alerts.channels import mask_phone

__all__ = ["PhoneNumberFilter", "install_phone_filter", "redact_phone_numbers", "with_phone_filter"]

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
