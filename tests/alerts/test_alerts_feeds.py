"""Public web outputs: the Atom feed of current notices, the HTML pages."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
from alerts_testdata import LEVELS, T0, assert_schema_valid

from alerts.cap import to_xml
from alerts.feeds import (
    ATOM_NS,
    CAP_MEDIA_TYPE,
    FeedEntry,
    atom_feed,
    current_notices,
    entry_id,
    index_html,
    notice_html,
    rfc3339,
)
from alerts.levels import ZonePolicy, ZoneState, decide
from alerts.notices import NoticeContext, ZoneInfo, build_notice, notice_html_url, notice_url

HOUR = timedelta(hours=1)
WEB = "https://floodwarn.example.org"
FEED_URL = f"{WEB}/feed.atom"
FEED_ID = "tag:floodwarn@riverside.example.org,2026:notices"
RUN = {"model_run": "2026-03-14T05:00Z-hand-ens", "data_sources": "KNMI radar; USGS gauge"}
SQUARE = [[(32.75, -97.35), (32.75, -97.33), (32.77, -97.33), (32.77, -97.35)]]
RIVERSIDE = ZoneInfo(code="RIV1", name="Riverside", polygons=SQUARE)
HOSTILE = ZoneInfo(code="EVIL", name='Mill <script>alert("x")</script> & Co', polygons=SQUARE)
CTX = NoticeContext(
    sender="floodwarn@riverside.example.org", sender_name="Riverside Flood Service",
    web_base=WEB, run=RUN, languages=("en", "es"),
)
DRILL = NoticeContext(
    sender=CTX.sender, sender_name=CTX.sender_name, web_base=WEB, run=RUN,
    languages=("en", "es"), status="Exercise", exercise_note="Drill March",
)
RFC3339_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
A = f"{{{ATOM_NS}}}"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def chain(zone: ZoneInfo = RIVERSIDE, ctx: NoticeContext = CTX, depths=(0.82, 1.4, 0.0)):
    """Notices of one zone's chain (raise, raise, all-clear by default), oldest first."""
    state, refs, alerts = ZoneState(), [], []
    for i, depth in enumerate(depths):
        now = T0 + i * HOUR
        metrics = {"peak_depth_m": depth, "exposed_people": 300 if depth > 1 else 0}
        if depth == 0.0:
            metrics["flooded_share"] = 0.0
        decision = decide(state, metrics, now, LEVELS, ZonePolicy(), zone=zone.code)
        state = decision.state
        level = next((lv for lv in LEVELS if lv.rank == decision.level), None)
        alert = build_notice(
            decision, zone, level, refs, ctx, identifier=f"{zone.code}.{now:%Y%m%dT%H%M}",
            expires=now + 12 * HOUR, details={"peak_depth_m": depth, "onset": now + HOUR},
            levels=LEVELS,
        )
        alerts.append(alert)
        refs = [*refs, (alert.sender, alert.identifier, alert.sent)]
    return alerts


def entry(alert) -> FeedEntry:
    return FeedEntry.from_alert(
        alert, cap_url=notice_url(WEB, alert.identifier),
        html_url=notice_html_url(WEB, alert.identifier),
    )


def feed(entries) -> bytes:
    return atom_feed(entries, feed_id=FEED_ID, title="Riverside <flood> notices & alerts",
                     self_url=FEED_URL, updated=T0 + 3 * HOUR, author="Riverside Flood Service",
                     html_url=f"{WEB}/", language="en")


# --------------------------------------------------------------------------- current notices


def test_current_notices_keep_the_latest_of_each_chain_until_it_expires():
    riverside = chain(depths=(0.82, 1.4))
    mill = chain(ZoneInfo("MILL", "Mill", SQUARE), depths=(0.82,))
    drill = chain(ZoneInfo("DRL", "Drill zone", SQUARE), DRILL, depths=(0.82,))
    every = [*riverside, *mill, *drill]
    now = T0 + 2 * HOUR
    assert current_notices(every, now) == [riverside[-1], mill[0]]  # newest first
    assert current_notices(every, now, statuses=("Exercise",)) == [drill[0]]
    later = T0 + 12 * HOUR + 30 * timedelta(minutes=1)
    assert current_notices(every, later) == [riverside[-1]]  # mill expired at T0 + 12 h
    with pytest.raises(ValueError, match="timezone-aware"):
        current_notices(every, datetime(2026, 3, 14, 8))


def test_an_all_clear_stays_listed_until_it_expires():
    alerts = chain()
    assert alerts[-1].msg_type == "Cancel"
    assert current_notices(alerts, T0 + 3 * HOUR) == [alerts[-1]]
    assert current_notices(alerts, T0 + 15 * HOUR) == []


# --------------------------------------------------------------------------- ids and times


def test_entry_ids_are_stable_tag_or_uuid_urns():
    one = entry_id("floodwarn@riverside.example.org", "RIV1.20260314T0600", T0)
    assert one == "tag:floodwarn@riverside.example.org,2026-03-14:cap/RIV1.20260314T0600"
    assert entry_id("alerts.example.org", "a/b", T0) == "tag:alerts.example.org,2026-03-14:cap/a/b"
    oid = entry_id("urn:oid:2.49.0.0.578.0", "x1", T0)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", oid)
    assert oid == entry_id("urn:oid:2.49.0.0.578.0", "x1", T0 + HOUR)
    assert oid != entry_id("urn:oid:2.49.0.0.578.0", "x2", T0)
    # the tag date is the UTC date of sent, whatever the offset
    late = datetime(2026, 3, 14, 23, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    assert ",2026-03-14:" in entry_id("a@b.org", "x", late)


def test_rfc3339():
    assert rfc3339(T0.replace(microsecond=5)) == "2026-03-14T06:00:00+00:00"
    with pytest.raises(ValueError, match="time zone"):
        rfc3339(datetime(2026, 3, 14, 6))


def test_entry_from_alert_reads_the_first_info():
    alert = chain()[0]
    e = entry(alert)
    assert e.title == alert.infos[0].headline == "Flood Warning for Riverside"
    assert e.summary == alert.infos[0].description
    assert (e.level, e.severity, e.language) == ("warning", "Severe", "en")
    assert e.updated == e.sent == alert.sent
    assert entry(chain()[-1]).level is None  # an all-clear has no level


# --------------------------------------------------------------------------- Atom


def test_feed_has_rfc4287_required_elements():
    alerts = chain()
    xml = feed([entry(a) for a in alerts])
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert root.tag == f"{A}feed"
    for tag in ("id", "title", "updated"):
        assert len(root.findall(f"{A}{tag}")) == 1, tag
    assert root.findtext(f"{A}id") == FEED_ID
    assert root.findtext(f"{A}title") == "Riverside <flood> notices & alerts"
    assert RFC3339_RE.fullmatch(root.findtext(f"{A}updated"))
    assert root.findtext(f"{A}author/{A}name") == "Riverside Flood Service"
    selfs = [ln for ln in root.findall(f"{A}link") if ln.get("rel") == "self"]
    assert [ln.get("href") for ln in selfs] == [FEED_URL]
    _assert_one_alternate_per_type(root.findall(f"{A}link"))

    entries = root.findall(f"{A}entry")
    assert len(entries) == len(alerts)
    ids = [e.findtext(f"{A}id") for e in entries]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("tag:floodwarn@riverside.example.org,2026-03-14:cap/") for i in ids)
    updated = [e.findtext(f"{A}updated") for e in entries]
    assert updated == sorted(updated, reverse=True)  # newest first
    by_id = {entry(a).atom_id: a for a in alerts}
    for el in entries:
        for tag in ("id", "title", "updated"):
            assert len(el.findall(f"{A}{tag}")) == 1, tag
        assert RFC3339_RE.fullmatch(el.findtext(f"{A}updated"))
        assert RFC3339_RE.fullmatch(el.findtext(f"{A}published"))
        alert = by_id[el.findtext(f"{A}id")]
        assert el.findtext(f"{A}title") == alert.infos[0].headline
        links = el.findall(f"{A}link")
        _assert_one_alternate_per_type(links)
        alternates = {ln.get("type"): ln.get("href") for ln in links}
        assert alternates == {
            "text/html": f"{WEB}/notices/{alert.identifier}.html",
            CAP_MEDIA_TYPE: f"{WEB}/notices/{alert.identifier}.xml",
        }
        schemes = {c.get("scheme"): c.get("term") for c in el.findall(f"{A}category")}
        assert schemes.get("urn:oasis:names:tc:emergency:cap:1.2#severity") == \
            alert.infos[0].severity


def _assert_one_alternate_per_type(links):
    """RFC 4287 4.1.1/4.1.2: no two alternates with the same (type, hreflang)."""
    keys = [(ln.get("type"), ln.get("hreflang")) for ln in links
            if ln.get("rel", "alternate") == "alternate"]
    assert len(keys) == len(set(keys)), keys


def test_feed_links_point_at_schema_valid_cap(cap_schema):
    alerts = chain()
    files = {notice_url(WEB, a.identifier): to_xml(a) for a in alerts}
    root = ET.fromstring(feed([entry(a) for a in alerts]))
    for link in root.iter(f"{A}link"):
        if link.get("type") == CAP_MEDIA_TYPE:
            assert_schema_valid(cap_schema, files[link.get("href")])


def test_feed_escapes_text():
    alert = chain(HOSTILE, depths=(0.82,))[0]
    xml = feed([entry(alert)])
    assert b"<script>" not in xml
    root = ET.fromstring(xml)
    assert root.findtext(f"{A}entry/{A}title") == (
        'Flood Warning for Mill <script>alert("x")</script> & Co'
    )


def test_empty_feed_is_still_valid():
    root = ET.fromstring(feed([]))
    assert root.findall(f"{A}entry") == []
    assert root.findtext(f"{A}id") == FEED_ID


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"updated": datetime(2026, 3, 14, 6)}, "time zone"),
        ({"self_url": "/feed.atom"}, "absolute IRI"),
        ({"feed_id": "notices"}, "absolute IRI"),
        ({"author": " "}, "author"),
    ],
)
def test_feed_refuses_bad_arguments(changes, message):
    kwargs = {"feed_id": FEED_ID, "title": "t", "self_url": FEED_URL, "updated": T0,
              "author": "a", **changes}
    with pytest.raises(ValueError, match=message):
        atom_feed([], **kwargs)


def test_feed_refuses_duplicate_entries():
    e = entry(chain(depths=(0.82,))[0])
    with pytest.raises(ValueError, match="share the id"):
        feed([e, e])


def test_feedparser_reads_the_feed_back():
    feedparser = pytest.importorskip("feedparser", reason="feedparser is the peer Atom parser")
    alerts = [*chain(), *chain(HOSTILE, depths=(0.82,))]
    entries = [entry(a) for a in alerts]
    parsed = feedparser.parse(feed(entries))
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.id == FEED_ID
    assert parsed.feed.title == "Riverside <flood> notices & alerts"
    assert parsed.feed.author == "Riverside Flood Service"
    assert {ln.rel: ln.href for ln in parsed.feed.links}["self"] == FEED_URL
    assert len(parsed.entries) == len(entries)
    expected = {e.atom_id: e for e in entries}
    for got in parsed.entries:
        want = expected.pop(got.id)
        assert got.title == want.title
        links = {(ln.rel, ln.type): ln.href for ln in got.links}
        assert links == {("alternate", "text/html"): want.html_url,
                         ("alternate", CAP_MEDIA_TYPE): want.cap_url}
        assert got.link == want.html_url  # readers open the page, not the XML
        assert got.updated_parsed is not None
    assert not expected


# --------------------------------------------------------------------------- HTML


class Page(HTMLParser):
    """Collects a page's elements and text, and checks that tags are balanced."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = None
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[tuple[str, str, tuple[str | None, ...]]] = []  # (tag, text, langs)
        self.feed(html)
        self.close()
        assert not self.stack, f"unclosed: {[t for t, _ in self.stack]}"

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        if data.strip() and self.stack:
            langs = tuple(a.get("lang") for _, a in self.stack if a.get("lang"))
            self.texts.append((self.stack[-1][0], data.strip(), langs))

    def all(self, tag, **attrs):
        return [a for t, a in self.elements if t == tag
                and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def text_of(self, tag):
        return [text for t, text, _ in self.texts if t == tag]

    def langs_of(self, fragment):
        """The innermost lang in force at each place ``fragment`` appears."""
        return [langs[-1] if langs else None for _, text, langs in self.texts if fragment in text]

    def lang_of(self, fragment):
        """The innermost lang in force where ``fragment`` appears (only once)."""
        (lang,) = self.langs_of(fragment)
        return lang


def _no_scripts_or_external_assets(page: Page) -> None:
    assert not page.all("script") and not page.all("iframe") and not page.all("img")
    assert not any("src" in a for _, a in page.elements)
    assert not any(k.startswith("on") for _, a in page.elements for k in a)  # no handlers
    for link in page.all("link"):
        assert link["rel"] == "alternate"  # no stylesheets or icons from elsewhere


def render(alert, **kwargs) -> str:
    return notice_html(alert, cap_url=notice_url(WEB, alert.identifier), feed_url=FEED_URL,
                       **kwargs)


def test_notice_page_structure_and_languages():
    alert = chain()[1]  # the Severe Update
    html = render(alert, decision_url=f"{WEB}/decisions/42.json", index_url=f"{WEB}/")
    page = Page(html)
    assert page.doctype.lower() == "doctype html"
    assert page.all("html")[0]["lang"] == "en"
    assert page.text_of("h1") == [alert.infos[0].headline]
    assert page.text_of("title") == [alert.infos[0].headline]
    sections = [a for a in page.all("section") if a.get("lang")]
    assert [s["lang"] for s in sections] == ["en", "es"]
    # Severe has no Spanish instruction: the English one shows in both sections
    assert page.langs_of(alert.infos[1].instruction) == ["en", "es"]
    assert page.lang_of(alert.infos[1].description) == "es"
    assert page.lang_of(alert.infos[0].description) == "en"
    assert "Gravedad" in page.text_of("dt") and "Severity" in page.text_of("dt")
    assert page.lang_of("Gravedad") == "es"
    hrefs = {a["href"] for a in page.all("a")}
    assert {notice_url(WEB, alert.identifier), FEED_URL, f"{WEB}/decisions/42.json",
            f"{WEB}/"} <= hrefs
    assert page.all("link", rel="alternate", type=CAP_MEDIA_TYPE)[0]["href"] == notice_url(
        WEB, alert.identifier)
    assert page.all("link", rel="alternate", type="application/atom+xml")[0]["href"] == FEED_URL
    # why this notice: the model run and thresholds parameters
    cells = page.text_of("code")
    assert RUN["model_run"] in cells
    assert alert.infos[0].parameters["floodwarn:thresholds"] in cells
    # an Update lists what it replaces
    assert alert.references[0][1] in cells
    times = [a["datetime"] for a in page.all("time")]
    assert times and all(RFC3339_RE.fullmatch(t) for t in times)
    _no_scripts_or_external_assets(page)


def test_notice_page_escapes_zone_text():
    alert = chain(HOSTILE, depths=(0.82,))[0]
    html = render(alert, explanation={"<b>Reasons</b>": ["<i>deep</i> water"]})
    page = Page(html)
    assert not page.all("script") and not page.all("b") and not page.all("i")
    assert "&lt;script&gt;" in html
    assert 'Flood Warning for Mill <script>alert("x")</script> & Co' in page.text_of("h1")
    assert "<b>Reasons</b>" in page.text_of("dt")
    assert "<i>deep</i> water" in page.text_of("li")
    _no_scripts_or_external_assets(page)


def test_notice_page_explanation_and_optional_links():
    alert = chain(depths=(0.82,))[0]
    explanation = {
        "Reasons": ["forecast peak depth 0.82 m ≥ 0.50 m"],
        "Metrics": {"peak_depth_m": 0.82, "observed_at": T0},
    }
    page = Page(render(alert, explanation=explanation))
    assert "Reasons" in page.text_of("dt") and "peak_depth_m" in page.text_of("dt")
    assert "forecast peak depth 0.82 m ≥ 0.50 m" in page.text_of("li")
    assert "0.82" in page.text_of("dd")
    assert "2026-03-14T06:00:00+00:00" in [a["datetime"] for a in page.all("time")]
    hrefs = {a["href"] for a in page.all("a")}
    assert not any("decisions" in h for h in hrefs)  # no decision_url given, no link
    plain = Page(render(alert))
    assert "Reasons" not in plain.text_of("dt")


def test_drill_page_says_so_and_all_clear_page_lists_the_chain():
    drill = chain(ctx=DRILL, depths=(0.82,))[0]
    page = Page(render(drill))
    banner = [t for t, text, _ in page.texts if text.startswith("EXERCISE")]
    assert banner and "Drill March" in " ".join(text for _, text, _ in page.texts)
    cancel = chain()[-1]
    page = Page(render(cancel))
    cells = page.text_of("code")
    assert [ref[1] for ref in cancel.references] == [
        c for c in cells if c in {r[1] for r in cancel.references}
    ]
    assert cancel.infos[1].instruction in page.text_of("p")
    assert page.lang_of(cancel.infos[1].instruction) == "es"


def test_single_language_page_has_no_language_menu():
    ctx = NoticeContext(sender=CTX.sender, sender_name="x", web_base=WEB, language="es")
    alert = chain(ctx=ctx, depths=(0.82,))[0]
    page = Page(render(alert))
    assert page.all("html")[0]["lang"] == "es"
    assert not page.all("nav")
    assert "Qué hacer" in page.text_of("h3")


def test_index_lists_current_notices_with_links():
    alerts = current_notices(
        [*chain(depths=(0.82, 1.4)), *chain(HOSTILE, depths=(0.82,))], T0 + 2 * HOUR
    )
    entries = [entry(a) for a in alerts]
    html = index_html(entries, feed_url=FEED_URL, updated=T0 + 2 * HOUR,
                      sender_name="Riverside <Flood> Service")
    page = Page(html)
    assert page.all("html")[0]["lang"] == "en"
    headings = page.all("h2")
    assert len(headings) == len(entries)
    links = [a["href"] for a in page.all("a")]
    for e in entries:
        assert e.html_url in links and e.cap_url in links
    assert FEED_URL in links
    assert 'Flood Warning for Mill <script>alert("x")</script> & Co' in page.text_of("a")
    assert "Riverside <Flood> Service" in " ".join(page.text_of("p"))
    assert page.all("link", rel="alternate", type="application/atom+xml")
    _no_scripts_or_external_assets(page)


def test_empty_index_says_nothing_is_in_force():
    page = Page(index_html([], feed_url=FEED_URL, updated=T0, language="es"))
    assert page.all("html")[0]["lang"] == "es"
    assert "No hay avisos ni alertas de inundación en vigor." in page.text_of("p")
    assert page.text_of("h1") == ["Avisos de inundación vigentes"]
