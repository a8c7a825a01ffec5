"""Public notices on the web: an Atom 1.0 feed of current notices and HTML pages.

Three outputs, all plain functions of their arguments (no clock, no I/O):

- :func:`atom_feed`: an Atom 1.0 (RFC 4287) feed, as CAP aggregators read them (OASIS
  "CAP Feeds" practice, Google Public Alerts, WMO Alert Hub): one entry per current CAP
  notice, each linking to the CAP file and to the notice's HTML page;
- :func:`notice_html`: one accessible HTML5 page per notice, every language of the
  notice as its own section, and a "why this notice" part with the model run and
  thresholds behind it;
- :func:`index_html`: the public list of current notices.

Links of a feed entry: RFC 4287 (sections 4.1.1 and 4.1.2) forbids two ``rel="alternate"``
links with the same ``type`` and ``hreflang``, and allows alternates of different types.
So an entry has exactly one ``alternate`` of type ``text/html`` (the HTML page) and exactly
one of type ``application/cap+xml`` (the CAP file, which is where CAP aggregators look).

HTML is rendered with Jinja2 templates in ``alerts/templates/public/`` with autoescaping
on: zone names, headlines and every other text are escaped. Pages have no JavaScript and
load nothing from elsewhere (the CSS is inline).
"""

from __future__ import annotations

import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from alerts.cap import CAP_NS, CapAlert, CapInfo, format_cap_time
from alerts.errors import TemplateError

log = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
"""XML namespace of Atom 1.0 (RFC 4287)."""
ATOM_MEDIA_TYPE = "application/atom+xml"
CAP_MEDIA_TYPE = "application/cap+xml"
HTML_MEDIA_TYPE = "text/html"
LEVEL_SCHEME = "floodwarn:level"
"""``atom:category`` scheme of level names: the CAP ``<parameter>`` that carries them."""
SEVERITY_SCHEME = f"{CAP_NS}#severity"
"""``atom:category`` scheme of CAP ``<severity>`` values."""
FEED_SIZE_WARNING = 900_000
"""Bytes above which aggregators may refuse a feed (Google Public Alerts: at most 900 KB)."""

TEMPLATE_DIR = Path(__file__).parent / "templates" / "public"
"""Where the HTML templates live."""

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_EMAIL_RE = re.compile(r"^[A-Za-z0-9._-]+@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                       r"[A-Za-z][A-Za-z0-9-]*)$")
_DNS_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]*$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_TAG_SAFE = "-._~!$'()*+;=:@/"

# Texts of the pages' own chrome, per base language. Level titles, headlines,
# descriptions and instructions come from the notice itself.
PAGE_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "level": "Level",
        "severity": "Severity",
        "urgency": "Urgency",
        "certainty": "Certainty",
        "response": "Advised response",
        "area": "Area",
        "zone": "Zone code",
        "sent": "Issued",
        "onset": "Expected from",
        "expires": "Valid until",
        "issued_by": "Issued by",
        "contact": "Contact",
        "what_to_do": "What to do",
        "details": "Details",
        "why": "Why this notice",
        "why_intro": "The data, model run and thresholds behind this notice.",
        "decision": "Full decision record",
        "message": "About this message",
        "identifier": "Identifier",
        "msg_type": "Message type",
        "status": "Status",
        "note": "Note",
        "references": "Replaces earlier messages",
        "languages": "Languages",
        "links": "Machine-readable versions",
        "cap_file": "CAP 1.2 file of this notice",
        "feed": "Atom feed of current notices",
        "exercise": "EXERCISE: this is a drill, not a real warning.",
        "test": "TEST: this is a technical test, not a real warning.",
        "current": "Current flood notices",
        "none_in_force": "No flood warnings or alerts are in force.",
        "updated": "Updated",
        "read_more": "Full notice",
        "all_notices": "All current notices",
        "Alert": "New notice",
        "Update": "Update",
        "Cancel": "All clear (cancels earlier notices)",
        "Actual": "Actual",
        "Exercise": "Exercise (drill)",
        "Test": "Test",
        "System": "System",
        "Draft": "Draft",
    },
    "es": {
        "level": "Nivel",
        "severity": "Gravedad",
        "urgency": "Urgencia",
        "certainty": "Certeza",
        "response": "Respuesta recomendada",
        "area": "Zona",
        "zone": "Código de zona",
        "sent": "Emitido",
        "onset": "Previsto desde",
        "expires": "Válido hasta",
        "issued_by": "Emitido por",
        "contact": "Contacto",
        "what_to_do": "Qué hacer",
        "details": "Detalles",
        "why": "Por qué este aviso",
        "why_intro": "Los datos, la ejecución del modelo y los umbrales en que se basa este aviso.",
        "decision": "Registro completo de la decisión",
        "message": "Sobre este mensaje",
        "identifier": "Identificador",
        "msg_type": "Tipo de mensaje",
        "status": "Estado",
        "note": "Nota",
        "references": "Sustituye a mensajes anteriores",
        "languages": "Idiomas",
        "links": "Versiones para máquinas",
        "cap_file": "Archivo CAP 1.2 de este aviso",
        "feed": "Canal Atom de los avisos vigentes",
        "exercise": "SIMULACRO: esto es un simulacro, no un aviso real.",
        "test": "PRUEBA: esto es una prueba técnica, no un aviso real.",
        "current": "Avisos de inundación vigentes",
        "none_in_force": "No hay avisos ni alertas de inundación en vigor.",
        "updated": "Actualizado",
        "read_more": "Aviso completo",
        "all_notices": "Todos los avisos vigentes",
        "Alert": "Aviso nuevo",
        "Update": "Actualización",
        "Cancel": "Fin del aviso (anula los anteriores)",
        "Actual": "Real",
        "Exercise": "Simulacro",
        "Test": "Prueba",
        "System": "Sistema",
        "Draft": "Borrador",
        # CAP values
        "Extreme": "Extrema",
        "Severe": "Grave",
        "Moderate": "Moderada",
        "Minor": "Menor",
        "Unknown": "Desconocida",
        "Immediate": "Inmediata",
        "Expected": "Prevista",
        "Future": "Futura",
        "Past": "Pasada",
        "Observed": "Observada",
        "Likely": "Probable",
        "Possible": "Posible",
        "Unlikely": "Improbable",
        "Shelter": "Refugiarse",
        "Evacuate": "Evacuar",
        "Prepare": "Prepararse",
        "Execute": "Actuar",
        "Avoid": "Evitar la zona",
        "Monitor": "Estar atento",
        "Assess": "Evaluar",
        "AllClear": "Fin del peligro",
        "None": "Ninguna",
    },
}
"""Page texts per base language; CAP values not listed are shown as they are."""

PARAMETER_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "floodwarn:modelRun": "Model run",
        "floodwarn:forecastIssued": "Forecast issued",
        "floodwarn:dataSources": "Data sources",
        "floodwarn:thresholds": "Thresholds of this level",
        "floodwarn:peakDepth_m": "Expected peak depth (m)",
        "floodwarn:peakTime": "Expected peak time",
        "floodwarn:onset": "Expected onset",
        "floodwarn:zone": "Zone code",
        "floodwarn:level": "Level",
        "floodwarn:action": "Decision",
    },
    "es": {
        "floodwarn:modelRun": "Ejecución del modelo",
        "floodwarn:forecastIssued": "Pronóstico emitido",
        "floodwarn:dataSources": "Fuentes de datos",
        "floodwarn:thresholds": "Umbrales de este nivel",
        "floodwarn:peakDepth_m": "Profundidad máxima prevista (m)",
        "floodwarn:peakTime": "Hora prevista del máximo",
        "floodwarn:onset": "Inicio previsto",
        "floodwarn:zone": "Código de zona",
        "floodwarn:level": "Nivel",
        "floodwarn:action": "Decisión",
    },
}
"""Readable names of floodwarn's CAP parameters; others are shown by their name."""


def _base_language(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


def page_labels(language: str) -> dict[str, str]:
    """The page texts in ``language`` (or its base), English for anything missing."""
    return {**PAGE_LABELS["en"], **PAGE_LABELS.get(_base_language(language), {})}


# --------------------------------------------------------------------------- ids and times


def rfc3339(dt: datetime) -> str:
    """Format an aware datetime as an RFC 3339 timestamp, e.g. ``2026-03-14T06:00:00+00:00``.

    Raises
    ------
    ValueError
        If ``dt`` is naive: Atom dates need a time zone.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"feed times must be datetimes, got {type(dt).__name__}")
    if dt.utcoffset() is None:
        raise ValueError(
            f"feed times need a time zone, got the naive datetime {dt.isoformat()}; "
            "use e.g. datetime.now(timezone.utc)"
        )
    return dt.isoformat(timespec="seconds")


def entry_id(sender: str, identifier: str, sent: datetime) -> str:
    """A stable, globally unique Atom id for a CAP message.

    CAP makes ``identifier`` unique per ``sender``, so the pair names the message. When the
    sender is an e-mail address or a domain name (``floodwarn@riverside.example.org``),
    the id is a ``tag:`` URI (RFC 4151) dated by the message's UTC send date, e.g.
    ``tag:floodwarn@riverside.example.org,2026-03-14:cap/RIV1.20260314T0600``; otherwise
    (e.g. ``urn:oid:...`` senders) a name-based ``urn:uuid:`` (RFC 4122, version 5).
    """
    if _EMAIL_RE.match(sender) or _DNS_RE.match(sender):
        day = sent.astimezone(UTC).date().isoformat()
        return f"tag:{sender.lower()},{day}:cap/{quote(identifier, safe=_TAG_SAFE)}"
    return uuid.uuid5(uuid.NAMESPACE_URL, f"cap:{sender},{identifier}").urn


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class FeedEntry:
    """One notice as a feed entry and as a line of the public index.

    Parameters
    ----------
    identifier : str
        The CAP ``<identifier>``.
    sender : str
        The CAP ``<sender>``; with ``identifier`` and ``sent`` it gives :attr:`atom_id`.
    sent : datetime
        The CAP ``<sent>`` time (aware); the entry's ``<published>``.
    title : str
        Usually the headline of the notice's first ``<info>``.
    summary : str
        Plain text, e.g. the first ``<info>``'s description.
    updated : datetime
        Aware; the entry's ``<updated>``.
    cap_url : str
        Public URL of the CAP file (``alternate`` link of type ``application/cap+xml``).
    html_url : str
        Public URL of the notice's HTML page (``alternate`` link of type ``text/html``).
    level : str, optional
        Level name (``floodwarn:level``), an ``atom:category`` with scheme
        :data:`LEVEL_SCHEME`.
    severity : str, optional
        CAP severity, an ``atom:category`` with scheme :data:`SEVERITY_SCHEME`.
    language : str, optional
        RFC 3066 language of ``title`` and ``summary`` (``xml:lang`` of the entry).
    """

    identifier: str
    sender: str
    sent: datetime
    title: str
    summary: str
    updated: datetime
    cap_url: str
    html_url: str
    level: str | None = None
    severity: str | None = None
    language: str | None = None

    @property
    def atom_id(self) -> str:
        """The entry's ``<id>``: see :func:`entry_id`."""
        return entry_id(self.sender, self.identifier, self.sent)

    @classmethod
    def from_alert(cls, alert: CapAlert, *, cap_url: str, html_url: str) -> FeedEntry:
        """The entry of a CAP notice, in the language of its first ``<info>``.

        ``updated`` is the notice's ``sent``: a CAP message never changes once sent; a
        change is a new message (an Update or Cancel), hence a new entry.
        """
        if not alert.infos:
            raise ValueError(f"CAP message {alert.identifier!r} has no <info> to show in a feed")
        info = alert.infos[0]
        level = info.parameters.get(LEVEL_SCHEME)
        return cls(
            identifier=alert.identifier,
            sender=alert.sender,
            sent=alert.sent,
            title=info.headline or info.event,
            summary=info.description or "",
            updated=alert.sent,
            cap_url=cap_url,
            html_url=html_url,
            level=level if level and level != "none" else None,
            severity=info.severity,
            language=info.language,
        )


def _expires(alert: CapAlert) -> datetime | None:
    times = [info.expires for info in alert.infos if info.expires is not None]
    return max(times) if times else None


def current_notices(
    alerts: Iterable[CapAlert], now: datetime, *, statuses: Sequence[str] = ("Actual",)
) -> list[CapAlert]:
    """The notices a public feed should list now, newest first.

    A notice is current when its status is one of ``statuses`` (drills and tests stay
    out of the public feed by default), no later message of the given ones references
    it (an Update or Cancel replaces it), and it has not expired. An all-clear
    (``Cancel``) stays listed until its own ``expires``, so people see the warning end.

    Parameters
    ----------
    alerts : iterable of CapAlert
        Every notice that may still matter (e.g. those of the last few days).
    now : datetime
        Aware; the caller's clock (wall clock or a replay's).
    statuses : sequence of str
        CAP statuses to keep.
    """
    if now.utcoffset() is None:
        raise ValueError("current_notices() needs a timezone-aware 'now'")
    alerts = list(alerts)
    replaced = {(sender, identifier) for a in alerts for sender, identifier, _ in a.references}
    current = [
        a for a in alerts
        if a.status in statuses
        and (a.sender, a.identifier) not in replaced
        and (_expires(a) is None or _expires(a) > now)
    ]
    return sorted(current, key=lambda a: a.sent, reverse=True)


# --------------------------------------------------------------------------- Atom


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    # Tags stay unqualified under the root's xmlns (ElementTree's default_namespace option
    # refuses the unqualified attributes Atom uses).
    element = ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v})
    if text is not None:
        element.text = text
    return element


def _check_iri(what: str, value: str) -> None:
    if not _SCHEME_RE.match(value or ""):
        raise ValueError(f"{what} {value!r} must be an absolute IRI such as https://... or tag:...")


def atom_feed(
    entries: Sequence[FeedEntry],
    *,
    feed_id: str,
    title: str,
    self_url: str,
    updated: datetime,
    author: str,
    html_url: str | None = None,
    language: str | None = None,
    subtitle: str | None = None,
) -> bytes:
    """An Atom 1.0 (RFC 4287) feed of current notices.

    Parameters
    ----------
    entries : sequence of FeedEntry
        The current notices (see :func:`current_notices`); written newest first.
    feed_id : str
        Permanent IRI of the feed, e.g. ``tag:floodwarn@riverside.example.org,2026:notices``
        or its URL; never change it once published.
    title : str
        Feed title.
    self_url : str
        Where the feed itself is served (``rel="self"``).
    updated : datetime
        Aware; when the feed last changed (e.g. the newest entry's ``updated``, or the
        cycle time).
    author : str
        Name of the issuing authority (feed-level ``<author><name>``).
    html_url : str, optional
        The public index page (``rel="alternate"`` of type ``text/html``).
    language : str, optional
        ``xml:lang`` of the feed.
    subtitle : str, optional

    Returns
    -------
    bytes
        UTF-8 XML with a declaration and the Atom default namespace. Times are RFC 3339
        with an offset and no fraction.

    Raises
    ------
    ValueError
        For a naive time, a relative id or URL, an empty title or author, or two entries
        with the same id.
    """
    _check_iri("feed_id", feed_id)
    _check_iri("self_url", self_url)
    if not title.strip() or not author.strip():
        raise ValueError("an Atom feed needs a non-empty title and author")
    root = ET.Element("feed", {"xmlns": ATOM_NS})
    if language:
        root.set(_XML_LANG, language)
    _add(root, "id", feed_id)
    _add(root, "title", title, type="text")
    if subtitle:
        _add(root, "subtitle", subtitle, type="text")
    _add(root, "updated", rfc3339(updated))
    _add(_add(root, "author"), "name", author)
    _add(root, "link", rel="self", type=ATOM_MEDIA_TYPE, href=self_url)
    if html_url:
        _check_iri("html_url", html_url)
        _add(root, "link", rel="alternate", type=HTML_MEDIA_TYPE, href=html_url)
    _add(root, "generator", "floodwarn")
    seen: set[str] = set()
    for entry in sorted(entries, key=lambda e: e.updated, reverse=True):
        atom_id = entry.atom_id
        if atom_id in seen:
            raise ValueError(f"two feed entries share the id {atom_id!r} ({entry.identifier})")
        seen.add(atom_id)
        _check_iri(f"entry {entry.identifier} cap_url", entry.cap_url)
        _check_iri(f"entry {entry.identifier} html_url", entry.html_url)
        el = _add(root, "entry")
        if entry.language:
            el.set(_XML_LANG, entry.language)
        _add(el, "id", atom_id)
        _add(el, "title", entry.title, type="text")
        _add(el, "updated", rfc3339(entry.updated))
        _add(el, "published", rfc3339(entry.sent))
        # One alternate per media type (RFC 4287 4.1.2): the page for people, the CAP
        # file for aggregators.
        _add(el, "link", rel="alternate", type=HTML_MEDIA_TYPE, href=entry.html_url,
             hreflang=entry.language or "")
        _add(el, "link", rel="alternate", type=CAP_MEDIA_TYPE, href=entry.cap_url)
        if entry.level:
            _add(el, "category", term=entry.level, scheme=LEVEL_SCHEME)
        if entry.severity:
            _add(el, "category", term=entry.severity, scheme=SEVERITY_SCHEME)
        _add(el, "summary", entry.summary, type="text")
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    data = ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")
    if len(data) > FEED_SIZE_WARNING:
        log.warning("Atom feed is %d bytes; aggregators may refuse feeds over %d bytes: "
                    "list only current notices", len(data), FEED_SIZE_WARNING)
    return data


# --------------------------------------------------------------------------- HTML

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def _render(name: str, **context: Any) -> str:
    try:
        return _environment.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"page template {name!r} not found in {TEMPLATE_DIR}") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"page template {name}: {exc.message}") from exc


def _time(dt: datetime | None) -> dict[str, str] | None:
    """A time for ``<time datetime=...>``: machine value and a plain, locale-free text."""
    if dt is None:
        return None
    offset = format_cap_time(dt)[-6:]
    zone = " UTC" if offset in ("+00:00", "-00:00") else f" (UTC{offset})"
    text = f"{dt:%Y-%m-%d %H:%M}{zone}"
    return {"value": rfc3339(dt), "text": text}


def _parameter_rows(parameters: Mapping[str, str], language: str) -> list[dict[str, str]]:
    labels = {**PARAMETER_LABELS["en"], **PARAMETER_LABELS.get(_base_language(language), {})}
    return [{"name": name, "label": labels.get(name, name), "value": value}
            for name, value in parameters.items()]


def _tree(value: Any, depth: int = 0) -> dict[str, Any]:
    """Normalise an explanation value for the template: text, a list, or labelled items."""
    if isinstance(value, Mapping) and depth < 4:
        return {"kind": "map", "items": [
            {"label": str(k), **_tree(v, depth + 1)} for k, v in value.items()
        ]}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and depth < 4:
        return {"kind": "list", "items": [_tree(v, depth + 1) for v in value]}
    if isinstance(value, datetime):
        return {"kind": "time", "time": _time(value)}
    if isinstance(value, float):
        return {"kind": "text", "text": f"{value:.6g}"}
    return {"kind": "text", "text": "" if value is None else str(value)}


def _info_view(info: CapInfo) -> dict[str, Any]:
    labels = page_labels(info.language)
    level = info.parameters.get(LEVEL_SCHEME)
    return {
        "language": info.language,
        "anchor": "info-" + re.sub(r"[^A-Za-z0-9-]", "-", info.language),
        "labels": labels,
        "headline": info.headline or info.event,
        "level": level if level and level != "none" else None,
        "severity": info.severity,
        "severity_text": labels.get(info.severity, info.severity),
        "urgency_text": labels.get(info.urgency, info.urgency),
        "certainty_text": labels.get(info.certainty, info.certainty),
        "responses": [labels.get(r, r) for r in info.response_types],
        "areas": [
            {"desc": area.desc, "zone": area.geocodes.get("floodwarn:zone")}
            for area in info.areas
        ],
        "onset": _time(info.onset),
        "expires": _time(info.expires),
        "description": info.description,
        "instruction": info.instruction,
        "sender_name": info.sender_name,
        "contact": info.contact,
    }


def notice_html(
    alert: CapAlert,
    *,
    cap_url: str,
    feed_url: str,
    decision_url: str | None = None,
    explanation: Mapping[str, Any] | None = None,
    index_url: str | None = None,
) -> str:
    """A plain, accessible HTML5 page for one notice.

    Parameters
    ----------
    alert : CapAlert
        The notice (e.g. from :func:`alerts.notices.build_notice` or
        :func:`alerts.cap.parse_cap`). The page's ``lang`` is its first ``<info>``'s
        language; every ``<info>`` is a ``<section lang=...>`` of its own.
    cap_url : str
        Public URL of the notice's CAP file.
    feed_url : str
        Public URL of the Atom feed.
    decision_url : str, optional
        Link to the full decision record (metrics, reasons, thresholds) behind it.
    explanation : mapping, optional
        Extra facts for "why this notice", e.g. ``{"Reasons": [...], "Metrics": {...}}``:
        texts, numbers and datetimes are shown as they are, sequences as lists, mappings
        as labelled lists (nested up to four levels).
    index_url : str, optional
        Link back to the list of current notices.

    Returns
    -------
    str
        The HTML document. Every text from the notice is escaped.
    """
    if not alert.infos:
        raise ValueError(f"CAP message {alert.identifier!r} has no <info> to show")
    primary = alert.infos[0]
    labels = page_labels(primary.language)
    return _render(
        "notice.html.j2",
        lang=primary.language,
        labels=labels,
        title=primary.headline or primary.event,
        status=alert.status,
        status_text=labels.get(alert.status, alert.status),
        note=alert.note,
        identifier=alert.identifier,
        msg_type=alert.msg_type,
        msg_type_text=labels.get(alert.msg_type, alert.msg_type),
        sent=_time(alert.sent),
        references=[{"identifier": i, "sent": _time(t)} for _, i, t in alert.references],
        infos=[_info_view(info) for info in alert.infos],
        parameters=_parameter_rows(primary.parameters, primary.language),
        explanation=_tree(explanation) if explanation else None,
        cap_url=cap_url,
        feed_url=feed_url,
        decision_url=decision_url,
        index_url=index_url,
        cap_media_type=CAP_MEDIA_TYPE,
        atom_media_type=ATOM_MEDIA_TYPE,
    )


def index_html(
    entries: Sequence[FeedEntry],
    *,
    feed_url: str,
    updated: datetime,
    title: str | None = None,
    language: str = "en",
    sender_name: str | None = None,
) -> str:
    """The public page listing current notices, newest first, each linking its page.

    Parameters
    ----------
    entries : sequence of FeedEntry
        The same entries as the feed (see :func:`current_notices`).
    feed_url : str
        Public URL of the Atom feed (linked, and announced for feed readers).
    updated : datetime
        Aware; when the list was made.
    title : str, optional
        Page title; by default "Current flood notices" in ``language``.
    language : str
        RFC 3066 language of the page's own texts.
    sender_name : str, optional
        The issuing authority, shown under the title.
    """
    labels = page_labels(language)
    rows = [
        {
            "title": e.title,
            "summary": e.summary,
            "language": e.language,
            "html_url": e.html_url,
            "cap_url": e.cap_url,
            "updated": _time(e.updated),
            "severity": e.severity,
            "severity_text": labels.get(e.severity or "", e.severity),
            "level": e.level,
        }
        for e in sorted(entries, key=lambda e: e.updated, reverse=True)
    ]
    return _render(
        "index.html.j2",
        lang=language,
        labels=labels,
        title=title or labels["current"],
        sender_name=sender_name,
        updated=_time(updated),
        entries=rows,
        feed_url=feed_url,
        cap_media_type=CAP_MEDIA_TYPE,
        atom_media_type=ATOM_MEDIA_TYPE,
    )
