"""From a level decision to a public CAP 1.2 notice.

One warning chain per zone: the first raise is a CAP ``Alert``; every later change (or
re-issue) is an ``Update`` referencing every earlier message of the chain; the all-clear
is a ``Cancel`` referencing them all, with ``responseType`` AllClear. Each notice explains
itself: the description says in words why it was issued, and ``<parameter>``s carry the
model run, forecast issue time, data sources and thresholds behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote

from alerts.cap import STATUSES, CapAlert, CapArea, CapInfo, format_cap_time, validate_alert
from alerts.errors import CapError
from alerts.levels import Decision, LevelSpec

log = logging.getLogger(__name__)

PARAMETER_PREFIX = "floodwarn:"
"""Prefix of floodwarn's CAP ``<parameter>`` names."""

EVENT = "Flood"
ALL_CLEAR_INSTRUCTION = (
    "No further flooding is currently expected. Water levels may stay high for a while: "
    "keep away from flood water."
)
_UNIT_SUFFIXES = ("m", "mm", "h", "s", "km", "km2", "m3s", "mmh")
_AREA_DESC_LIMIT = 50

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
    language : str
        RFC 3066 language of the texts, e.g. ``en`` or ``es``.
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
    language: str = "en"
    run: Mapping[str, str] = field(default_factory=dict, hash=False)
    contact: str | None = None

    def __post_init__(self) -> None:
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
    if isinstance(value, datetime):
        return format_cap_time(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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
            f"2026-03-14T09:00:00+00:00, got {value!r}"
        ) from None


def thresholds_text(level: LevelSpec) -> str:
    """A level's criteria as text, e.g. ``peak_depth_m >= 0.5 or observed_stage_m >= 2.1``."""
    joiner = " or " if level.combine == "any" else " and "
    return joiner.join(f"{c.metric} {c.op} {c.value:g}" for c in level.criteria)


def _describe(
    decision: Decision, zone: ZoneInfo, level: LevelSpec | None, ctx: NoticeContext,
    details: Mapping[str, Detail],
) -> str:
    """The notice's description: what happened, why, and on which data."""
    parts = []
    if ctx.status == "Exercise":
        parts.append(f"EXERCISE ({ctx.exercise_note}): this is a drill, not a real warning.")
    if level is None:
        parts.append(f"The flood warning for {zone.name} is no longer in force.")
    elif decision.action == "raise":
        parts.append(f"{level.title} issued for {zone.name}.")
    elif decision.action == "lower":
        parts.append(f"The flood warning for {zone.name} is lowered to {level.title}.")
    else:
        parts.append(f"{level.title} for {zone.name} remains in force.")
    if decision.reasons:
        parts.append("Why: " + "; ".join(r.rstrip(".") for r in decision.reasons) + ".")
    run = ctx.run
    basis = [
        f"{label}{run[key]}"
        for key, label in (
            ("model_run", "model run "), ("forecast_issued", "forecast issued "),
            ("data_sources", "data: "),
        )
        if run.get(key)
    ]
    if basis:
        parts.append("Based on " + ", ".join(basis) + ".")
    if level is not None:
        parts.append(f"{level.title} thresholds: {thresholds_text(level)}.")
        peak = []
        depth = details.get("peak_depth_m", "")
        if isinstance(depth, float | int | str) and depth != "":
            peak.append(f"{float(depth):.2f} m deep")
        if details.get("peak_time", "") != "":
            peak.append(f"around {_format_value(details['peak_time'])}")
        if peak:
            parts.append("Expected peak: " + " ".join(peak) + ".")
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
) -> CapAlert:
    """Build the CAP notice for a decision.

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

    Returns
    -------
    CapAlert
        ``Alert`` when the chain is empty, ``Update`` otherwise, ``Cancel`` for an
        all-clear; ready for :func:`alerts.cap.to_xml`.

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
        parameters[parameter_name(key)] = str(text)
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

    prefix = "EXERCISE: " if ctx.status == "Exercise" else ""
    instruction: str | None
    if level is None:  # all-clear (checked above)
        headline = f"{prefix}Flood warning no longer in force for {zone.name}"
        response_type, urgency, severity, certainty = "AllClear", "Past", "Minor", "Observed"
        instruction = ALL_CLEAR_INSTRUCTION
    else:
        headline = f"{prefix}{level.title} for {zone.name}"
        response_type, urgency = level.response_type, level.urgency
        severity, certainty = level.severity, level.certainty
        instruction = level.instruction or None
    web = notice_url(ctx.web_base, identifier)
    if not web.startswith(("https://", "http://")):
        raise CapError(f"web_base {ctx.web_base!r} must be an http(s) URL")
    info = CapInfo(
        language=ctx.language,
        category="Met",
        event=EVENT,
        response_type=response_type,
        urgency=urgency,
        severity=severity,
        certainty=certainty,
        headline=headline,
        description=_describe(decision, zone, level, ctx, details),
        instruction=instruction,
        web=web,
        effective=sent,
        onset=None if all_clear else onset,
        expires=expires,
        sender_name=ctx.sender_name,
        contact=ctx.contact,
        parameters=parameters,
        areas=[area],
    )
    alert = CapAlert(
        identifier=identifier,
        sender=ctx.sender,
        sent=sent,
        status=ctx.status,
        msg_type=msg_type,
        scope="Public",
        note=ctx.exercise_note if ctx.status == "Exercise" else None,
        references=list(chain),
        infos=[info],
    )
    validate_alert(alert)
    return alert
