"""SMS text: templates per action and language, and segment counting.

Templates live in ``alerts/templates/sms/<lang>/<action>.txt.j2`` (actions ``raise``,
``lower``, ``all_clear``); a language without a template falls back to English.
:func:`render_sms` keeps the required parts of a message (exercise marker, level, zone,
what to do, link) and shortens or drops the optional ones (detailed reasons, sender,
expected peak) until the text fits the allowed number of segments.
"""

from __future__ import annotations

import functools

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from alerts.errors import TemplateError
from alerts.levels import Decision, LevelSpec, decimal_separator, explain

log = logging.getLogger(__name__)

SMS_ACTIONS = ("raise", "lower", "all_clear")
"""Actions that have an SMS template."""

DEFAULT_LANGUAGE = "en"

# GSM 03.38 default alphabet (without the ESC code) and its extension table.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

# Typographic characters our own texts produce that would force a whole SMS into UCS-2
# (70 instead of 160 characters per segment), with GSM-7 equivalents of the same meaning.
_GSM_FRIENDLY = str.maketrans({
    "≥": ">=", "≤": "<=", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"',
    "…": "...", "\u00a0": " ", "•": "-",
})

_REQUIRED = {
    "raise": ("zone", "level_title", "instruction", "link"),
    "lower": ("zone", "level_title", "instruction", "link"),
    "all_clear": ("zone", "link"),
}
_OPTIONAL = (
    "reasons", "peak_depth", "peak_time", "sender_name", "previous_level_title",
    "instruction", "exercise_marker",
)

_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": (
        "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
        "septiembre", "octubre", "noviembre", "diciembre",
    ),
}
_WEEKDAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class SmsLength:
    """Size of an SMS body.

    Attributes
    ----------
    encoding : {"GSM-7", "UCS-2"}
    units : int
        Septets for GSM-7 (extension characters count 2), UTF-16 code units for UCS-2.
    segments : int
        Message parts once concatenated (0 for an empty text).
    """

    encoding: str
    units: int
    segments: int


def sms_segments(text: str) -> SmsLength:
    """Count the encoding, units and segments of an SMS body.

    GSM-7 holds 160 septets in one segment, 153 per segment when concatenated; UCS-2
    holds 70 UTF-16 code units, 67 when concatenated. A character is never split between
    two segments (a GSM-7 escape pair or a UTF-16 surrogate pair moves whole to the next).

    Examples
    --------
    >>> sms_segments("a" * 160)
    SmsLength(encoding='GSM-7', units=160, segments=1)
    >>> sms_segments("€")
    SmsLength(encoding='GSM-7', units=2, segments=1)
    """
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        encoding, single, part = "GSM-7", 160, 153
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    else:
        encoding, single, part = "UCS-2", 70, 67
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    units = sum(costs)
    if units == 0:
        return SmsLength(encoding, 0, 0)
    if units <= single:
        return SmsLength(encoding, units, 1)
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:
            segments, used = segments + 1, 0
        used += cost
    return SmsLength(encoding, units, segments)


def gsm_friendly(text: str) -> str:
    """Replace typographic characters (≥, –, …, curly quotes) by GSM-7 equivalents."""
    return text.translate(_GSM_FRIENDLY)


def format_sms_time(dt: datetime, language: str = DEFAULT_LANGUAGE) -> str:
    """A time readers understand without a time-zone table, in UTC.

    ``en``: ``Sat 14 Mar 06:00 UTC``; ``es``: ``14 de marzo, 06:00 UTC``.
    """
    if dt.utcoffset() is None:
        raise ValueError("format_sms_time needs a timezone-aware datetime")
    utc = dt.astimezone(UTC)
    if _base(language) == "es":
        return f"{utc.day} de {_MONTHS['es'][utc.month - 1]}, {utc:%H:%M} UTC"
    return f"{_WEEKDAYS_EN[utc.weekday()]} {utc.day} {_MONTHS['en'][utc.month - 1]} {utc:%H:%M} UTC"


def format_depth(depth_m: float, language: str = DEFAULT_LANGUAGE) -> str:
    """A depth for the public: ``0.8 m`` (``0,8 m`` in languages with a decimal comma)."""
    text = f"{depth_m:.1f} m" if depth_m >= 0.1 else f"{depth_m:.2f} m"
    return text.replace(".", decimal_separator(language))


def _base(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


TEMPLATE_DIR = Path(__file__).parent / "templates"
"""Where the message templates live: ``sms/<lang>/<action>.txt.j2``, and optionally
``sms/<lang>/<level>/<action>.txt.j2`` for a level's own wording."""


@functools.lru_cache(maxsize=16)
def _environment(extra_dirs: tuple[str, ...] = ()) -> jinja2.Environment:
    """Templates from ``extra_dirs`` (a site's own, same layout) first, then ours.

    FileSystemLoaders, not a PackageLoader: the latter fails at import time when the
    templates are missing, which would take every channel down with it.
    """
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([*extra_dirs, str(TEMPLATE_DIR)]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _template(action: str, language: str, level: str | None = None,
              template_dirs: Sequence[str] = ()) -> jinja2.Template:
    """The most specific template: language (then its base, then English), and within a
    language the level's own before the action's."""
    env = _environment(tuple(str(d) for d in template_dirs))
    tried = []
    for lang in dict.fromkeys((language, _base(language), DEFAULT_LANGUAGE)):
        names = ([f"sms/{lang}/{level}/{action}.txt.j2"] if level else []) + [f"sms/{lang}/{action}.txt.j2"]
        for name in names:
            tried.append(name)
            try:
                template = env.get_template(name)
            except jinja2.TemplateNotFound:
                continue
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"SMS template {name} line {exc.lineno}: {exc.message}") from exc
            if lang != language:
                log.info("no %s SMS template for %r; using %r", action, language, lang)
            return template
    raise TemplateError(f"no SMS template found; looked for {', '.join(tried)}")


def _join_reasons(reasons: Sequence[str]) -> str | None:
    text = "; ".join(r.strip().rstrip(".") for r in reasons if r and r.strip())
    return f"{text}." if text else None


def _without_aside(reason: str) -> str:
    """``"depth 0.8 m >= 0.5 m (Flood Warning threshold)"`` -> ``"depth 0.8 m >= 0.5 m"``."""
    return re.sub(r"\s*\([^()]*\)\s*$", "", reason.strip().rstrip("."))


def _normalise(context: Mapping[str, Any], language: str) -> dict[str, Any]:
    ctx: dict[str, Any] = {key: None for key in _OPTIONAL}
    ctx.update(context)
    reasons = ctx.get("reasons")
    if isinstance(reasons, str):
        reasons = [reasons]
    ctx["reasons"] = list(reasons or [])
    peak_time = ctx.get("peak_time")
    if isinstance(peak_time, datetime):
        ctx["peak_time"] = format_sms_time(peak_time, language)
    depth = ctx.pop("peak_depth_m", None)
    # a forecast of no flooding says nothing about the peak (a level raised on an observed
    # river level, say): leave the depth out rather than text "peak depth 0.00 m"
    if ctx.get("peak_depth") is None and depth is not None and math.isfinite(float(depth)) \
            and float(depth) > 0:
        ctx["peak_depth"] = format_depth(float(depth), language)
    return ctx


# Optional parts, most wanted first: (why, peak, sender). "why" is every reason ("all"),
# the first ("first"), the first without its bracketed aside ("short"), the template's
# one-line "why" sentence ("generic") or nothing; "peak" is depth and time, time only,
# or nothing. A short "why" outranks the peak, and the peak outranks detail in the why.
_PREFERENCES = (
    ("all", "both", True), ("first", "both", True), ("all", "both", False),
    ("first", "both", False), ("short", "both", False), ("generic", "both", False),
    ("first", "time", False), ("short", "time", False), ("generic", "time", False),
    ("first", "none", False), ("short", "none", False), ("generic", "none", False),
    ("none", "none", False),
)


def _variants(ctx: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield contexts from the most to the least detailed (see :func:`render_sms`)."""
    reasons: list[str] = ctx["reasons"]
    whys = {
        "all": _join_reasons(reasons),
        "first": _join_reasons(reasons[:1]),
        "short": _join_reasons([_without_aside(r) for r in reasons[:1]]),
        "generic": None,
        "none": None,
    }
    seen = set()
    for why, peak, sender in _PREFERENCES:
        variant = dict(
            ctx,
            reasons=whys[why],
            generic_why=why != "none",
            peak_depth=ctx["peak_depth"] if peak == "both" else None,
            peak_time=ctx["peak_time"] if peak in ("both", "time") else None,
            sender_name=ctx["sender_name"] if sender else None,
        )
        key = tuple(sorted((k, repr(v)) for k, v in variant.items()))
        if key not in seen:
            seen.add(key)
            yield variant
    if ctx.get("previous_level_title"):
        # last resort before going over: drop the previous level of a lowering
        yield dict(variant, previous_level_title=None)


def render_sms(
    action: str,
    language: str,
    context: Mapping[str, Any],
    *,
    max_segments: int = 3,
    exercise_marker: str | None = None,
    level: str | None = None,
    template_dirs: Sequence[str] = (),
) -> str:
    """Render an SMS body that fits ``max_segments``.

    Parameters
    ----------
    action : {"raise", "lower", "all_clear"}
    language : str
        e.g. ``"es"`` or ``"es-MX"``; falls back to the base language, then English.
    context : mapping
        Required: ``zone``, ``link``, and for raise/lower ``level_title`` and
        ``instruction``. Optional: ``reasons`` (str or list of str, in ``language``),
        ``peak_time`` (aware datetime or text), ``peak_depth_m`` (float, metres) or
        ``peak_depth`` (text), ``previous_level_title``, ``sender_name``.
    max_segments : int
        Most segments the body may take.
    exercise_marker : str, optional
        Put first, e.g. ``"EXERCISE EXERCISE EXERCISE:"``; always kept.
    level : str, optional
        Level name: ``sms/<lang>/<level>/<action>.txt.j2`` is used when it exists.
    template_dirs : sequence of str
        A site's own template folders (same layout), searched before ours.

    Returns
    -------
    str
        The body, with as many optional parts as fit (see ``_PREFERENCES``): extra
        reasons and the sender go first, then the first reason's bracketed aside, then
        the detailed reason gives way to the template's one-line "why" sentence, then
        peak depth, peak time, and last the "why" sentence itself. If the required parts alone
        exceed ``max_segments`` they are sent anyway, and a warning is logged.

    Raises
    ------
    TemplateError
        For a missing required context key or a broken template.
    ValueError
        For an unknown action.
    """
    if action not in SMS_ACTIONS:
        raise ValueError(f"no SMS for action {action!r}; valid actions: {', '.join(SMS_ACTIONS)}")
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    missing = [k for k in _REQUIRED[action] if not context.get(k)]
    if missing:
        raise TemplateError(f"SMS {action} context lacks {', '.join(missing)}")
    template = _template(action, language, level, template_dirs)
    ctx = _normalise(context, language)
    ctx["exercise_marker"] = exercise_marker
    body = ""
    for variant in _variants(ctx):
        try:
            body = gsm_friendly(template.render(**variant).strip())
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"SMS template {template.name}: {exc.message}") from exc
        if sms_segments(body).segments <= max_segments:
            break
    else:
        length = sms_segments(body)
        log.warning(
            "%s SMS for %s needs %d %s segments even without optional parts (max %d)",
            action, context.get("zone"), length.segments, length.encoding, max_segments,
        )
    if exercise_marker and not body.startswith(gsm_friendly(exercise_marker)):
        raise TemplateError(f"SMS template {template.name} does not start with the exercise marker")
    return body


def sms_context(
    decision: Decision,
    levels: Sequence[LevelSpec],
    *,
    zone_name: str,
    link: str,
    language: str = DEFAULT_LANGUAGE,
    peak_time: datetime | None = None,
    peak_depth_m: float | None = None,
    sender_name: str | None = None,
) -> dict[str, Any]:
    """Build the :func:`render_sms` context for a decision, in ``language``.

    Reasons are the new level's criteria that hold (raise), or the previous level's
    criteria that no longer hold (lower, all-clear), in ``language`` where it has phrases.
    """
    by_rank = {level.rank: level for level in levels}
    level = by_rank.get(decision.level)
    previous = by_rank.get(decision.previous)
    if decision.action == "raise":
        reasons = explain(levels, decision.metrics, decision.level, language=language)
    else:
        reasons = explain(levels, decision.metrics, decision.previous, language=language)
    return {
        "zone": zone_name,
        "level_title": level.title_for(language) if level else None,
        "previous_level_title": previous.title_for(language) if previous else None,
        "instruction": level.instruction_for(language) if level else None,
        "reasons": list(reasons),
        "peak_time": peak_time,
        "peak_depth_m": peak_depth_m,
        "link": link,
        "sender_name": sender_name,
    }
