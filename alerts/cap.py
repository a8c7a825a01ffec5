"""Write and read OASIS Common Alerting Protocol (CAP) 1.2 messages.

Only the standard library is used (``xml.etree.ElementTree``). Elements are written in
the order the CAP 1.2 XSD's ``xs:sequence`` demands. On top of the XSD, this module checks
the rules the schema cannot express (CAP 1.2 section 3 and the Google Public Alerts
profile):

- ``identifier`` and ``sender`` contain no spaces, commas, ``<`` or ``&``;
- ``Update`` and ``Cancel`` messages reference earlier messages, and public
  ``Alert``/``Update`` messages carry at least one ``<info>``;
- datetimes have an explicit offset, no fractional seconds and no ``Z``; UTC is written
  ``-00:00`` (CAP 1.2 section 3.3.2), and read in any offset (``+00:00`` too);
- polygons have at least four closed ``lat,lon`` pairs with at most six decimals
  (an open ring is closed for the caller), circles are ``lat,lon radius_km``;
- every enumerated value is one CAP allows, and ``effective`` is not after ``expires``.

Elements floodwarn does not use (``<resource>``, ``<audience>``, ``<altitude>``,
``<ceiling>``, XML signatures) are ignored by :func:`parse_cap`.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from alerts.errors import CapError

log = logging.getLogger(__name__)

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
"""XML namespace of CAP 1.2."""

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = (
    "Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport",
    "Infra", "CBRNE", "Other",
)
RESPONSE_TYPES = (
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear",
    "None",
)
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")

_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d")
_FORBIDDEN_ID_CHARS = re.compile(r"[\s,<&]")
_CIRCLE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$")
_MAX_DECIMALS = 6


# --------------------------------------------------------------------------- times


def format_cap_time(dt: datetime) -> str:
    """Format an aware datetime the way CAP 1.2 requires.

    Parameters
    ----------
    dt : datetime
        Timezone-aware. Microseconds are dropped.

    Returns
    -------
    str
        e.g. ``2026-03-14T06:00:00-00:00``: explicit offset, no fraction, no ``Z``; UTC
        (any zero offset) is ``-00:00``, as CAP 1.2 section 3.3.2 requires, other offsets
        as they are (``2026-03-14T01:00:00-05:00``).

    Raises
    ------
    ValueError
        If ``dt`` is naive or its offset is not a whole number of minutes.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"CAP times must be datetimes, got {type(dt).__name__}")
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(
            f"CAP times need a time zone, got the naive datetime {dt.isoformat()}; "
            "use e.g. datetime.now(timezone.utc)"
        )
    if offset.total_seconds() % 60:
        raise ValueError(f"CAP time offsets must be whole minutes, got {offset}")
    text = dt.replace(microsecond=0).isoformat()
    if not _TIME_RE.fullmatch(text):  # defensive: isoformat of an aware datetime always fits
        raise ValueError(f"cannot format {dt!r} as a CAP time")
    if not offset:
        text = text[:-6] + "-00:00"
    return text


def parse_cap_time(text: str) -> datetime:
    """Parse a CAP 1.2 datetime (``YYYY-MM-DDThh:mm:ss+hh:mm``) strictly.

    Any offset is read, UTC as ``-00:00`` (what CAP requires) or ``+00:00`` (what other
    writers, and floodwarn before, wrote); both give an aware UTC datetime.

    Raises
    ------
    CapError
        If the text has a ``Z``, a fraction, no offset, or is not a date at all.
    """
    value = (text or "").strip()
    if not _TIME_RE.fullmatch(value):
        raise CapError(
            f"CAP time {value!r} must look like 2026-03-14T06:00:00-00:00 "
            "(explicit offset, no fractional seconds, no 'Z')"
        )
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise CapError(f"CAP time {value!r} is not a valid date and time: {exc}") from exc


def reference_string(refs: Iterable[tuple[str, str, datetime]]) -> str:
    """Format earlier messages as a CAP ``<references>`` value.

    Parameters
    ----------
    refs : iterable of (sender, identifier, sent)
        The earlier messages, oldest first.

    Returns
    -------
    str
        Space-separated ``sender,identifier,sent`` triples.
    """
    parts = []
    for sender, identifier, sent in refs:
        for problem in (_token_problem("references sender", sender),
                        _token_problem("references identifier", identifier)):
            if problem:
                raise CapError(problem)
        parts.append(f"{sender},{identifier},{format_cap_time(sent)}")
    return " ".join(parts)


def parse_references(text: str) -> list[tuple[str, str, datetime]]:
    """Parse a ``<references>`` value into ``(sender, identifier, sent)`` triples."""
    refs = []
    for triple in (text or "").split():
        pieces = triple.split(",")
        if len(pieces) != 3:
            raise CapError(
                f"reference {triple!r} must be 'sender,identifier,sent' with no spaces inside"
            )
        refs.append((pieces[0], pieces[1], parse_cap_time(pieces[2])))
    return refs


# --------------------------------------------------------------------------- model


def _token_problem(what: str, value: str) -> str | None:
    """Identifiers and senders: non-empty, no spaces, commas, '<' or '&' (CAP 1.2 3.2.1)."""
    if not value or _FORBIDDEN_ID_CHARS.search(value):
        return f"{what} {value!r} must be non-empty and contain no spaces, commas, '<' or '&'"
    return None


def _fmt_coord(value: float) -> str:
    text = f"{value:.{_MAX_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _normalise_polygon(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    ring: list[tuple[float, float]] = []
    for point in points:
        if len(point) != 2:
            raise CapError(f"polygon points must be (lat, lon) pairs, got {point!r}")
        lat, lon = round(float(point[0]), _MAX_DECIMALS), round(float(point[1]), _MAX_DECIMALS)
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise CapError(
                f"polygon point ({lat}, {lon}) is outside lat -90..90 / lon -180..180; "
                "points must be (lat, lon) in WGS 84, latitude first"
            )
        ring.append((lat, lon))
    if ring and ring[0] != ring[-1]:
        ring.append(ring[0])
    if len(ring) < 4:
        raise CapError(
            f"a CAP polygon needs at least 4 (lat, lon) pairs with the first repeated last; "
            f"got {len(ring)} after closing"
        )
    return ring


@dataclass(frozen=True)
class CapArea:
    """One CAP ``<area>``.

    Parameters
    ----------
    desc : str
        ``<areaDesc>``, shown as the title by aggregators: keep it under 50 characters.
    polygons : list of list of (lat, lon)
        WGS 84 degrees, latitude first. Rings are rounded to six decimals and closed if
        open; each needs at least four pairs once closed. Each ring is one ``<polygon>``,
        and several in one area are their union: CAP 1.2 has no holes, so give outer rings
        only (an area with holes is published as its outer rings, which cover them).
    geocodes : dict of str to str
        ``valueName -> value``, e.g. ``{"TargetAreaCode": "053FWFSTEEP4"}``.
    circles : list of str
        ``"lat,lon radius_km"`` strings.
    """

    desc: str
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    geocodes: dict[str, str] = field(default_factory=dict)
    circles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.desc or not self.desc.strip():
            raise CapError("a CAP area needs a non-empty areaDesc")
        object.__setattr__(self, "polygons", [_normalise_polygon(p) for p in self.polygons])
        for circle in self.circles:
            match = _CIRCLE_RE.match(circle)
            if not match or abs(float(match[1])) > 90 or abs(float(match[2])) > 180:
                raise CapError(f"CAP circle {circle!r} must be 'lat,lon radius_km'")
        object.__setattr__(self, "geocodes", dict(self.geocodes))
        object.__setattr__(self, "circles", list(self.circles))


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class CapInfo:
    """One CAP ``<info>`` block (one per language).

    ``category`` and ``response_type`` take one value or a sequence of values (CAP allows
    several). Times must be timezone-aware. ``event_codes`` and ``parameters`` map
    ``valueName -> value``.
    """

    language: str
    category: str | tuple[str, ...]
    event: str
    urgency: str
    severity: str
    certainty: str
    response_type: str | tuple[str, ...] | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    web: str | None = None
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    sender_name: str | None = None
    contact: str | None = None
    event_codes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    areas: list[CapArea] = field(default_factory=list)

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category, as a tuple."""
        return _as_tuple(self.category)

    @property
    def response_types(self) -> tuple[str, ...]:
        """Every response type, as a tuple (empty when none)."""
        return _as_tuple(self.response_type)


@dataclass(frozen=True)
class CapAlert:
    """A CAP 1.2 ``<alert>``.

    ``references`` lists earlier messages as ``(sender, identifier, sent)``; an Update or
    Cancel must reference every earlier message of its chain.
    """

    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: str
    scope: str = "Public"
    note: str | None = None
    references: list[tuple[str, str, datetime]] = field(default_factory=list)
    infos: list[CapInfo] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    source: str | None = None
    restriction: str | None = None
    addresses: str | None = None
    incidents: str | None = None


# --------------------------------------------------------------------------- validation


def _enum_problem(where: str, value: str | None, allowed: Sequence[str]) -> str | None:
    if value not in allowed:
        return f"{where} {value!r} is not one of {', '.join(allowed)}"
    return None


def _time_problem(where: str, value: datetime | None) -> str | None:
    if value is None:
        return None
    try:
        format_cap_time(value)
    except (TypeError, ValueError) as exc:
        return f"{where}: {exc}"
    return None


def alert_problems(alert: CapAlert) -> list[str]:
    """List every way ``alert`` breaks CAP 1.2 or the rules above (empty when valid)."""
    problems: list[str | None] = []
    problems.append(_token_problem("identifier", alert.identifier))
    problems.append(_token_problem("sender", alert.sender))
    problems.append(_time_problem("sent", alert.sent))
    problems.append(_enum_problem("status", alert.status, STATUSES))
    problems.append(_enum_problem("msgType", alert.msg_type, MSG_TYPES))
    problems.append(_enum_problem("scope", alert.scope, SCOPES))
    if alert.scope == "Restricted" and not alert.restriction:
        problems.append("scope Restricted needs a <restriction>")
    if alert.scope == "Private" and not alert.addresses:
        problems.append("scope Private needs <addresses>")
    if alert.msg_type in ("Update", "Cancel", "Ack", "Error") and not alert.references:
        problems.append(
            f"a {alert.msg_type} message must reference the earlier message(s) it "
            "updates or cancels (sender, identifier, sent)"
        )
    for i, (sender, identifier, sent) in enumerate(alert.references):
        problems.append(_token_problem(f"references[{i}] sender", sender))
        problems.append(_token_problem(f"references[{i}] identifier", identifier))
        problems.append(_time_problem(f"references[{i}] sent", sent))
    if alert.scope == "Public" and alert.msg_type in ("Alert", "Update") and not alert.infos:
        problems.append(f"a public {alert.msg_type} needs at least one <info>")
    for i, info in enumerate(alert.infos):
        where = f"info[{i}]"
        if not info.categories:
            problems.append(f"{where}: at least one category is required")
        for cat in info.categories:
            problems.append(_enum_problem(f"{where} category", cat, CATEGORIES))
        if not info.event:
            problems.append(f"{where}: event is required")
        for rt in info.response_types:
            problems.append(_enum_problem(f"{where} responseType", rt, RESPONSE_TYPES))
        problems.append(_enum_problem(f"{where} urgency", info.urgency, URGENCIES))
        problems.append(_enum_problem(f"{where} severity", info.severity, SEVERITIES))
        problems.append(_enum_problem(f"{where} certainty", info.certainty, CERTAINTIES))
        for name in ("effective", "onset", "expires"):
            problems.append(_time_problem(f"{where} {name}", getattr(info, name)))
        if (
            info.effective is not None
            and info.expires is not None
            and info.effective.utcoffset() is not None
            and info.expires.utcoffset() is not None
            and info.effective > info.expires
        ):
            problems.append(f"{where}: effective is after expires")
    return [p for p in problems if p]


def validate_alert(alert: CapAlert) -> None:
    """Raise :class:`~alerts.errors.CapError` listing every problem, if there are any."""
    problems = alert_problems(alert)
    if problems:
        raise CapError(
            f"CAP message {alert.identifier!r} is invalid:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


# --------------------------------------------------------------------------- writing


def _q(tag: str) -> str:
    return f"{{{CAP_NS}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None) -> ET.Element | None:
    if text is None:
        return None
    element = ET.SubElement(parent, _q(tag))
    element.text = text
    return element


def _pairs(parent: ET.Element, tag: str, pairs: Mapping[str, str]) -> None:
    for name, value in pairs.items():
        element = ET.SubElement(parent, _q(tag))
        _sub(element, "valueName", str(name))
        _sub(element, "value", str(value))


def _time_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_cap_time(value)


def to_xml(alert: CapAlert) -> bytes:
    """Serialise an alert as a CAP 1.2 document.

    Parameters
    ----------
    alert : CapAlert
        Checked with :func:`validate_alert` first.

    Returns
    -------
    bytes
        UTF-8 XML with a declaration, default namespace ``urn:oasis:names:tc:emergency:cap:1.2``.

    Raises
    ------
    CapError
        Listing every rule the alert breaks.
    """
    validate_alert(alert)
    root = ET.Element(_q("alert"))
    _sub(root, "identifier", alert.identifier)
    _sub(root, "sender", alert.sender)
    _sub(root, "sent", format_cap_time(alert.sent))
    _sub(root, "status", alert.status)
    _sub(root, "msgType", alert.msg_type)
    _sub(root, "source", alert.source)
    _sub(root, "scope", alert.scope)
    _sub(root, "restriction", alert.restriction)
    _sub(root, "addresses", alert.addresses)
    for code in alert.codes:
        _sub(root, "code", code)
    _sub(root, "note", alert.note)
    if alert.references:
        _sub(root, "references", reference_string(alert.references))
    _sub(root, "incidents", alert.incidents)
    for info in alert.infos:
        el = ET.SubElement(root, _q("info"))
        _sub(el, "language", info.language)
        for category in info.categories:
            _sub(el, "category", category)
        _sub(el, "event", info.event)
        for response_type in info.response_types:
            _sub(el, "responseType", response_type)
        _sub(el, "urgency", info.urgency)
        _sub(el, "severity", info.severity)
        _sub(el, "certainty", info.certainty)
        _pairs(el, "eventCode", info.event_codes)
        _sub(el, "effective", _time_or_none(info.effective))
        _sub(el, "onset", _time_or_none(info.onset))
        _sub(el, "expires", _time_or_none(info.expires))
        _sub(el, "senderName", info.sender_name)
        _sub(el, "headline", info.headline)
        _sub(el, "description", info.description)
        _sub(el, "instruction", info.instruction)
        _sub(el, "web", info.web)
        _sub(el, "contact", info.contact)
        _pairs(el, "parameter", info.parameters)
        for area in info.areas:
            area_el = ET.SubElement(el, _q("area"))
            _sub(area_el, "areaDesc", area.desc)
            for ring in area.polygons:
                pairs = " ".join(f"{_fmt_coord(lat)},{_fmt_coord(lon)}" for lat, lon in ring)
                _sub(area_el, "polygon", pairs)
            for circle in area.circles:
                _sub(area_el, "circle", circle.strip())
            _pairs(area_el, "geocode", area.geocodes)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode", default_namespace=CAP_NS)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


# --------------------------------------------------------------------------- reading


def _text(parent: ET.Element, tag: str) -> str | None:
    element = parent.find(_q(tag))
    if element is None:
        return None
    return (element.text or "").strip()


def _required(parent: ET.Element, tag: str, where: str) -> str:
    value = _text(parent, tag)
    if value is None:
        raise CapError(f"CAP {where} has no <{tag}>, which CAP 1.2 requires")
    return value


def _all_text(parent: ET.Element, tag: str) -> list[str]:
    return [(e.text or "").strip() for e in parent.findall(_q(tag))]


def _read_pairs(parent: ET.Element, tag: str) -> dict[str, str]:
    pairs = {}
    for element in parent.findall(_q(tag)):
        pairs[_text(element, "valueName") or ""] = _text(element, "value") or ""
    return pairs


def _optional_time(parent: ET.Element, tag: str) -> datetime | None:
    value = _text(parent, tag)
    return None if value is None else parse_cap_time(value)


def _single_or_tuple(values: list[str]) -> str | tuple[str, ...] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _parse_polygon(text: str) -> list[tuple[float, float]]:
    points = []
    for pair in text.split():
        try:
            lat, lon = pair.split(",")
            points.append((float(lat), float(lon)))
        except ValueError as exc:
            raise CapError(f"polygon pair {pair!r} must be 'lat,lon'") from exc
    return points


def parse_cap(xml_bytes: bytes, *, validate: bool = True) -> CapAlert:
    """Read a CAP 1.2 document.

    Parameters
    ----------
    xml_bytes : bytes
        The document.
    validate : bool
        Also apply :func:`validate_alert` (enumerations, tokens, references, ...).

    Returns
    -------
    CapAlert

    Raises
    ------
    CapError
        If the XML is not a CAP 1.2 alert, lacks a required element, has a badly
        formatted time, or (with ``validate``) breaks any other checked rule.
    """
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise CapError(f"not well-formed XML: {exc}") from exc
    if root.tag != _q("alert"):
        raise CapError(f"root element is {root.tag}, expected {{{CAP_NS}}}alert")
    infos = []
    for i, info_el in enumerate(root.findall(_q("info"))):
        where = f"<info> #{i + 1}"
        areas = []
        for area_el in info_el.findall(_q("area")):
            areas.append(
                CapArea(
                    desc=_required(area_el, "areaDesc", f"{where} <area>"),
                    polygons=[_parse_polygon(t) for t in _all_text(area_el, "polygon")],
                    geocodes=_read_pairs(area_el, "geocode"),
                    circles=_all_text(area_el, "circle"),
                )
            )
        categories = _all_text(info_el, "category")
        if not categories:
            raise CapError(f"CAP {where} has no <category>, which CAP 1.2 requires")
        infos.append(
            CapInfo(
                language=_text(info_el, "language") or "en-US",
                category=_single_or_tuple(categories) or "",
                event=_required(info_el, "event", where),
                urgency=_required(info_el, "urgency", where),
                severity=_required(info_el, "severity", where),
                certainty=_required(info_el, "certainty", where),
                response_type=_single_or_tuple(_all_text(info_el, "responseType")),
                headline=_text(info_el, "headline"),
                description=_text(info_el, "description"),
                instruction=_text(info_el, "instruction"),
                web=_text(info_el, "web"),
                effective=_optional_time(info_el, "effective"),
                onset=_optional_time(info_el, "onset"),
                expires=_optional_time(info_el, "expires"),
                sender_name=_text(info_el, "senderName"),
                contact=_text(info_el, "contact"),
                event_codes=_read_pairs(info_el, "eventCode"),
                parameters=_read_pairs(info_el, "parameter"),
                areas=areas,
            )
        )
    references_text = _text(root, "references")
    alert = CapAlert(
        identifier=_required(root, "identifier", "<alert>"),
        sender=_required(root, "sender", "<alert>"),
        sent=parse_cap_time(_required(root, "sent", "<alert>")),
        status=_required(root, "status", "<alert>"),
        msg_type=_required(root, "msgType", "<alert>"),
        scope=_required(root, "scope", "<alert>"),
        note=_text(root, "note") or None,
        references=parse_references(references_text) if references_text else [],
        infos=infos,
        codes=[c for c in _all_text(root, "code") if c],
        source=_text(root, "source") or None,
        restriction=_text(root, "restriction") or None,
        addresses=_text(root, "addresses") or None,
        incidents=_text(root, "incidents") or None,
    )
    if validate:
        validate_alert(alert)
    return alert
