"""From a level decision to a public CAP 1.2 notice.

One warning chain per zone: the first raise is a CAP ``Alert``; every later change (or
re-issue) is an ``Update`` referencing every earlier message of the chain; the all-clear
is a ``Cancel`` referencing them all, with ``responseType`` AllClear. Each notice explains
itself: the description says in words why it was issued, and ``<parameter>``s carry the
model run, forecast issue time, data sources and thresholds behind it.

A notice carries one ``<info>`` per configured language (``NoticeContext.languages``), in
that order, as CAP 1.2 and the Google Public Alerts profile ask for multilingual alerts.
Every ``<info>`` has the same category, event, CAP values, times, area and parameters;
only the texts differ. Level titles and instructions come from
:meth:`~alerts.levels.LevelSpec.title_for` / ``instruction_for``; floodwarn's own fixed
sentences are built in for English and Spanish; the "why" comes from
:func:`alerts.levels.explain` in the info's language when ``build_notice(levels=...)`` is
given, and is otherwise the decision's English reasons, marked as English. A language
without built-in phrases gets the English sentences (still marked with its own
``<language>``, so that its translated level title and instruction are found).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote

from alerts.cap import STATUSES, CapAlert, CapArea, CapInfo, format_cap_time, validate_alert
from alerts.errors import CapError
from alerts.levels import Decision, LevelSpec, decimal_separator, explain

log = logging.getLogger(__name__)

PARAMETER_PREFIX = "floodwarn:"
"""Prefix of floodwarn's CAP ``<parameter>`` names."""

EVENT = "Flood"
ALL_CLEAR_INSTRUCTION = (
    "No further flooding is currently expected. Water levels may stay high for a while: "
    "keep away from flood water."
)

# floodwarn's own sentences in notices, per base language. Level titles and instructions
# are not here: they come from each LevelSpec (title_for / instruction_for).
NOTICE_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "exercise_prefix": "EXERCISE: ",
        "exercise_lead": "EXERCISE ({note}): this is a drill, not a real warning.",
        "test_prefix": "TEST: ",
        "test_lead": "TEST: this is a technical test, not a real warning.",
        "headline": "{title} for {zone}",
        "headline_all_clear": "Flood warning no longer in force for {zone}",
        "lead_all_clear": "The flood warning for {zone} is no longer in force.",
        "lead_raise": "{title} issued for {zone}.",
        "lead_lower": "The flood warning for {zone} is lowered to {title}.",
        "lead_steady": "{title} for {zone} remains in force.",
        "why": "Why: ",
        "why_in_english": "Why: ",
        "based_on": "Based on ",
        "model_run": "model run ",
        "forecast_issued": "forecast issued ",
        "data_sources": "data: ",
        "thresholds": "{title} thresholds: {text}.",
        "peak": "Expected peak: ",
        "peak_depth": "{depth} m deep",
        "peak_time": "around {time}",
        "all_clear_instruction": ALL_CLEAR_INSTRUCTION,
    },
    "es": {
        "exercise_prefix": "SIMULACRO: ",
        "exercise_lead": "SIMULACRO ({note}): esto es un simulacro, no un aviso real.",
        "test_prefix": "PRUEBA: ",
        "test_lead": "PRUEBA: esto es una prueba técnica, no un aviso real.",
        "headline": "{title} para {zone}",
        "headline_all_clear": "Ya no hay aviso de inundación en vigor para {zone}",
        "lead_all_clear": "El aviso de inundación para {zone} ya no está en vigor.",
        "lead_raise": "Se emite {title} para {zone}.",
        "lead_lower": "El aviso de inundación para {zone} baja a {title}.",
        "lead_steady": "Sigue en vigor: {title} para {zone}.",
        "why": "Motivo: ",
        "why_in_english": "Motivo (en inglés): ",
        "based_on": "Basado en: ",
        "model_run": "ejecución del modelo ",
        "forecast_issued": "pronóstico emitido ",
        "data_sources": "datos: ",
        "thresholds": "Umbrales de {title}: {text}.",
        "peak": "Pico previsto: ",
        "peak_depth": "{depth} m de profundidad",
        "peak_time": "hacia {time}",
        "all_clear_instruction": (
            "Por ahora no se esperan más inundaciones. El nivel del agua puede seguir alto "
            "durante un tiempo: manténgase alejado del agua de la inundación."
        ),
    },
}
"""floodwarn's fixed notice sentences per base language (``en``, ``es``)."""

_LANGUAGE_RE = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")
_UNIT_SUFFIXES = ("m", "mm", "h", "s", "km", "km2", "m3s", "mmh")
_AREA_DESC_LIMIT = 50
# a time given as text (ISO 8601 with an offset or Z), e.g. a run's forecast_issued
_TIME_TEXT = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:[+-]\d\d:\d\d|Z)")

Detail = str | float | datetime
"""A value in ``build_notice(details=...)``."""


@dataclass(frozen=True)
class ZoneInfo:
    """A warning zone as the public sees it.

    Parameters
    ----------
    code : str
        Stable zone code, published as the ``floodwarn:zone`` geocode.
    name : str
        Public name, used as ``<areaDesc>`` (keep it under 50 characters).
    polygons : list of list of (lat, lon)
        Outline(s) in WGS 84 degrees, latitude first.
    """

    code: str
    name: str
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)


@dataclass(frozen=True)
class NoticeContext:
    """Who publishes notices, where, and from which model run.

    Parameters
    ----------
    sender : str
        CAP sender id, e.g. ``floodwarn@riverside.example.org`` (no spaces or commas).
    sender_name : str
        Public name of the issuing authority.
    web_base : str
        Public URL base under which notices are served.
    status : {"Actual", "Exercise", "Test", "System", "Draft"}
    exercise_note : str, optional
        Name of the drill; required for (and only allowed with) status ``Exercise``.
    language : str, optional
        The primary RFC 3066 language, e.g. ``en`` or ``es``. Without ``languages`` it is
        the only one (default ``en``); with ``languages`` it may be left out and becomes
        ``languages[0]``. Always a str once the context is built.
    languages : sequence of str, optional
        Every language to publish, one CAP ``<info>`` each, in this order (primary first),
        e.g. ``("en", "es")``. Default: ``(language,)``.
    run : mapping of str to str
        The model run behind the notice (``model_run``, ``forecast_issued``,
        ``data_sources``, ``thresholds``, ...), published as ``floodwarn:<camelCase>``
        parameters.
    contact : str, optional
        Public contact for questions (phone or URL).
    """

    sender: str
    sender_name: str
    web_base: str
    status: str = "Actual"
    exercise_note: str | None = None
    language: str | None = None
    run: Mapping[str, str] = field(default_factory=dict, hash=False)
    contact: str | None = None
    languages: Sequence[str] = ()

    def __post_init__(self) -> None:
        languages = (self.languages,) if isinstance(self.languages, str) else tuple(self.languages)
        if not languages:
            languages = (self.language or "en",)
        elif self.language is not None and self.language != languages[0]:
            raise ValueError(
                f"language {self.language!r} must be the first of languages {languages!r} "
                "(the primary language), or be left out"
            )
        for lang in languages:
            if not isinstance(lang, str) or not _LANGUAGE_RE.match(lang):
                raise ValueError(
                    f"language {lang!r} is not an RFC 3066 tag such as 'en', 'es' or 'en-GB'"
                )
        if len({lang.lower() for lang in languages}) != len(languages):
            raise ValueError(f"languages {languages!r} lists a language twice")
        object.__setattr__(self, "languages", languages)
        object.__setattr__(self, "language", languages[0])
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.status == "Exercise" and not self.exercise_note:
            raise ValueError("an Exercise notice needs exercise_note naming the drill")
        if self.status != "Exercise" and self.exercise_note:
            raise ValueError(
                f"exercise_note is only for status Exercise, but status is {self.status!r}"
            )
        object.__setattr__(self, "run", MappingProxyType(dict(self.run)))


def notice_url(web_base: str, identifier: str) -> str:
    """Public URL of a notice's CAP file: ``{web_base}/notices/{identifier}.xml``."""
    return f"{web_base.rstrip('/')}/notices/{quote(identifier, safe='')}.xml"


def notice_html_url(web_base: str, identifier: str) -> str:
    """Public URL of a notice's HTML page: ``{web_base}/notices/{identifier}.html``."""
    return f"{web_base.rstrip('/')}/notices/{quote(identifier, safe='')}.html"


def notice_phrases(language: str) -> dict[str, str]:
    """floodwarn's fixed notice sentences in ``language`` (or its base), else English."""
    return NOTICE_PHRASES.get(_base_language(language), NOTICE_PHRASES["en"])


def _base_language(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


def parameter_name(key: str) -> str:
    """``peak_depth_m`` -> ``floodwarn:peakDepth_m``; names with a ``:`` are kept as is.

    A trailing unit (``_m``, ``_mm``, ``_h``, ...) stays after an underscore.
    """
    if ":" in key:
        return key
    words = [w for w in key.split("_") if w]
    unit = ""
    if len(words) > 1 and words[-1] in _UNIT_SUFFIXES:
        unit = "_" + words.pop()
    if not words:
        raise ValueError(f"cannot make a parameter name from {key!r}")
    camel = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return f"{PARAMETER_PREFIX}{camel}{unit}"


def _format_value(value: Detail) -> str:
    """A parameter's value: times (datetimes, or ISO 8601 text with an offset) as CAP
    writes them (UTC as ``-00:00``), floats to 6 significant digits, the rest as text."""
    if isinstance(value, datetime):
        return format_cap_time(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if _TIME_TEXT.fullmatch(text.strip()):
        try:
            return format_cap_time(datetime.fromisoformat(text.strip()))
        except ValueError:  # looks like a time but is none (month 13): kept as written
            pass
    return text


def _onset(value: Detail | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(microsecond=0)
    try:
        return datetime.fromisoformat(str(value)).replace(microsecond=0)
    except ValueError:
        raise CapError(
            f"details['onset'] must be a datetime or ISO 8601 text such as "
            f"2026-03-14T09:00:00-00:00, got {value!r}"
        ) from None


def thresholds_text(level: LevelSpec) -> str:
    """A level's criteria as text, e.g. ``peak_depth_m >= 0.5 or observed_stage_m >= 2.1``."""
    joiner = " or " if level.combine == "any" else " and "
    return joiner.join(f"{c.metric} {c.op} {c.value:g}" for c in level.criteria)


def _status_lead(ctx: NoticeContext, phrases: Mapping[str, str]) -> tuple[str, str | None]:
    """The headline prefix and the description's first sentence for the context's status."""
    if ctx.status == "Exercise":
        return phrases["exercise_prefix"], phrases["exercise_lead"].format(note=ctx.exercise_note)
    if ctx.status == "Test":
        return phrases["test_prefix"], phrases["test_lead"]
    return "", None


def _reasons_for(
    decision: Decision, levels: Sequence[LevelSpec], language: str
) -> tuple[tuple[str, ...], bool]:
    """The "why" sentences in ``language``, and whether they are in that language.

    English-based languages get the decision's own reasons (the audited text). Other
    languages get :func:`alerts.levels.explain` in that language, as SMS do (the new
    level's criteria that hold for a raise, the previous level's that fail for a lower or
    an all-clear), when ``levels`` is given and ``explain`` has phrases for the language;
    otherwise the English reasons.
    """
    base = _base_language(language)
    if base == "en" or not decision.reasons:
        return decision.reasons, True
    if levels and base in NOTICE_PHRASES and decision.action in ("raise", "lower", "all_clear"):
        rank = decision.level if decision.action == "raise" else decision.previous
        translated = explain(levels, decision.metrics, rank, language=language)
        if translated:
            return translated, True
    return decision.reasons, False


def _describe(
    decision: Decision, zone: ZoneInfo, level: LevelSpec | None, ctx: NoticeContext,
    details: Mapping[str, Detail], language: str = "en", levels: Sequence[LevelSpec] = (),
) -> str:
    """The notice's description in ``language``: what happened, why, and on which data."""
    phrases = notice_phrases(language)
    parts = []
    _, status_lead = _status_lead(ctx, phrases)
    if status_lead:
        parts.append(status_lead)
    title = level.title_for(language) if level is not None else ""
    if level is None:
        parts.append(phrases["lead_all_clear"].format(zone=zone.name))
    elif decision.action == "raise":
        parts.append(phrases["lead_raise"].format(title=title, zone=zone.name))
    elif decision.action == "lower":
        parts.append(phrases["lead_lower"].format(title=title, zone=zone.name))
    else:
        parts.append(phrases["lead_steady"].format(title=title, zone=zone.name))
    reasons, in_language = _reasons_for(decision, levels, language)
    if reasons:
        why = phrases["why"] if in_language else phrases["why_in_english"]
        parts.append(why + "; ".join(r.rstrip(".") for r in reasons) + ".")
    run = ctx.run
    basis = [
        f"{phrases[key]}{_format_value(run[key])}"
        for key in ("model_run", "forecast_issued", "data_sources")
        if run.get(key)
    ]
    if basis:
        parts.append(phrases["based_on"] + ", ".join(basis) + ".")
    if level is not None:
        parts.append(phrases["thresholds"].format(title=title, text=thresholds_text(level)))
        peak = []
        depth = details.get("peak_depth_m", "")
        if isinstance(depth, float | int | str) and depth != "":
            text = f"{float(depth):.2f}".replace(".", decimal_separator(language))
            peak.append(phrases["peak_depth"].format(depth=text))
        if details.get("peak_time", "") != "":
            peak.append(phrases["peak_time"].format(time=_format_value(details["peak_time"])))
        if peak:
            parts.append(phrases["peak"] + " ".join(peak) + ".")
    return " ".join(parts)


def build_notice(
    decision: Decision,
    zone: ZoneInfo,
    level: LevelSpec | None,
    chain: Sequence[tuple[str, str, datetime]],
    ctx: NoticeContext,
    *,
    identifier: str,
    expires: datetime,
    details: Mapping[str, Detail],
    levels: Sequence[LevelSpec] = (),
) -> CapAlert:
    """Build the CAP notice for a decision, with one ``<info>`` per ``ctx.languages``.

    Parameters
    ----------
    decision : Decision
        Usually a raise, lower or all-clear; a ``none``/``hold`` decision re-issues the
        current level as an Update (e.g. to extend ``expires``) when a chain is open.
    zone : ZoneInfo
    level : LevelSpec or None
        The decision's new level; None (or anything, ignored) for an all-clear.
    chain : sequence of (sender, identifier, sent)
        Every earlier message of this zone's current chain, oldest first (empty when
        this notice opens the chain).
    ctx : NoticeContext
    identifier : str
        This notice's CAP identifier (no spaces, commas, '<' or '&').
    expires : datetime
        When the notice stops being valid (timezone-aware, after ``decision.at``).
    details : mapping of str to str, float or datetime
        Extra facts to publish as ``floodwarn:`` parameters, e.g. ``peak_depth_m``
        (float, metres) or ``peak_time`` (aware datetime, or text); empty texts are left
        out. ``onset`` (aware datetime or ISO 8601 text) also becomes the CAP ``<onset>``.
    levels : sequence of LevelSpec, optional
        All of the zone's levels. When given, the "why" of each non-English ``<info>`` is
        put into that language with :func:`alerts.levels.explain` (as for SMS); without
        it, such infos carry the decision's English reasons, marked as English.

    Returns
    -------
    CapAlert
        ``Alert`` when the chain is empty, ``Update`` otherwise, ``Cancel`` for an
        all-clear; ready for :func:`alerts.cap.to_xml`. ``infos`` follow
        ``ctx.languages`` in order, each with its ``language`` set.

    Raises
    ------
    CapError
        For an all-clear without an earlier message, a missing level, or any CAP rule
        the result would break.
    """
    all_clear = decision.action == "all_clear"
    if all_clear:
        level = None  # an all-clear has no level, whatever the caller passed
    if all_clear and not chain:
        raise CapError(
            f"zone {zone.code}: an all-clear cancels earlier notices, but the chain is empty"
        )
    if not all_clear and level is None:
        raise CapError(f"zone {zone.code}: a {decision.action} notice needs its LevelSpec")
    if not all_clear and level is not None and level.rank != decision.level:
        raise CapError(
            f"zone {zone.code}: level {level.name!r} has rank {level.rank}, "
            f"but the decision is for level {decision.level}"
        )
    if decision.action in ("none", "hold") and not chain:
        raise CapError(
            f"zone {zone.code}: nothing to publish for a {decision.action!r} decision "
            "without an open warning chain"
        )
    msg_type = "Cancel" if all_clear else ("Update" if chain else "Alert")
    # CAP times carry no fractions: drop them here so the model equals what is published.
    sent = decision.at.replace(microsecond=0)
    expires = expires.replace(microsecond=0)

    parameters: dict[str, str] = {}
    for key, text in ctx.run.items():
        parameters[parameter_name(key)] = _format_value(text)
    if level is not None and parameter_name("thresholds") not in parameters:
        parameters[parameter_name("thresholds")] = thresholds_text(level)
    for key, value in details.items():
        if value != "":
            parameters[parameter_name(key)] = _format_value(value)
    parameters[parameter_name("zone")] = zone.code
    parameters[parameter_name("level")] = level.name if level is not None else "none"
    parameters[parameter_name("action")] = decision.action

    onset = _onset(details.get("onset"))

    if len(zone.name) > _AREA_DESC_LIMIT:
        log.warning(
            "zone %s: name has %d characters; aggregators show areaDesc as a title and "
            "prefer under %d", zone.code, len(zone.name), _AREA_DESC_LIMIT,
        )
    area = CapArea(desc=zone.name, polygons=zone.polygons, geocodes={"floodwarn:zone": zone.code})

    if level is None:  # all-clear (checked above)
        response_type, urgency, severity, certainty = "AllClear", "Past", "Minor", "Observed"
    else:
        response_type, urgency = level.response_type, level.urgency
        severity, certainty = level.severity, level.certainty
    web = notice_url(ctx.web_base, identifier)
    if not web.startswith(("https://", "http://")):
        raise CapError(f"web_base {ctx.web_base!r} must be an http(s) URL")
    infos = []
    for language in ctx.languages:
        phrases = notice_phrases(language)
        if _base_language(language) not in NOTICE_PHRASES:
            log.debug("no notice phrases for %r: its fixed sentences are in English", language)
        prefix, _ = _status_lead(ctx, phrases)
        instruction: str | None
        if level is None:
            headline = prefix + phrases["headline_all_clear"].format(zone=zone.name)
            instruction = phrases["all_clear_instruction"]
        else:
            headline = prefix + phrases["headline"].format(
                title=level.title_for(language), zone=zone.name
            )
            instruction = level.instruction_for(language) or None
        infos.append(CapInfo(
            language=language,
            category="Met",
            event=EVENT,
            response_type=response_type,
            urgency=urgency,
            severity=severity,
            certainty=certainty,
            headline=headline,
            description=_describe(decision, zone, level, ctx, details, language, levels),
            instruction=instruction,
            web=web,
            effective=sent,
            onset=None if all_clear else onset,
            expires=expires,
            sender_name=ctx.sender_name,
            contact=ctx.contact,
            parameters=dict(parameters),
            areas=[area],
        ))
    alert = CapAlert(
        identifier=identifier,
        sender=ctx.sender,
        sent=sent,
        status=ctx.status,
        msg_type=msg_type,
        scope="Public",
        note=ctx.exercise_note if ctx.status == "Exercise" else None,
        references=list(chain),
        infos=infos,
    )
    validate_alert(alert)
    return alert
