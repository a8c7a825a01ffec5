"""Security headers and the Content-Security-Policy (warning.security).

Over HTTP: every route of the app, with real path parameters (a published notice, a gauge,
an approval), answers with the headers, and so do 404s, redirects, refused forms, the
webhooks' 403 and an unhandled error; HSTS only over https. In a real browser (Debian's
headless Chromium driven by Playwright): the public index with warnings in force, a notice
page and the console's pages raise no CSP violation, and their styles still apply (the
moved stylesheet's rules, the inline style allowed by its hash, the configured level
colour of each zone's badge)."""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from alerts.feeds import TEMPLATE_DIR
from tests.conftest import Clock, demo_config_text
from warning.config import load_config
from warning.console import add_operator
from warning.outbox import pending_approvals
from warning.security import HEADERS, HSTS, SecurityHeaders, style_hashes
from warning.service import Service
from warning.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"
SECRET = "security-headers-test-secret"
EXPECTED = {k.lower(): v for k, v in HEADERS.items()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo site after a cycle in the storm: warnings published in some zones, a raise
    to the highest level held for approval, a manager, and the Twilio webhooks mounted."""
    tmp = tmp_path_factory.mktemp("security")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOODWARN_SECRET_KEY", SECRET)
        mp.setenv("TWILIO_AUTH_TOKEN", "security-headers-test-token")
        text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp}/out" #', 1)
        for name in ("warning", "severe"):  # the top two levels wait for a manager
            text = text.replace(f'[[levels]]\nname = "{name}"', f'[[levels]]\napproval = true\nname = "{name}"')
        (tmp / "site.toml").write_text(text)
        cfg = load_config(tmp / "site.toml")
        svc = Service(cfg, clock=Clock(datetime(2025, 11, 14, 15, 0, tzinfo=UTC)))
        svc.site.prepare()
        assert svc.cycle(force=True).ok
        add_operator(svc.store, "duty", PASSWORD)
        published = sorted(p.stem for p in (cfg.output_dir / "cap").glob("*.html"))
        pending = pending_approvals(svc.store)
        assert published, "the storm cycle should have published a warning"
        assert pending, "the storm cycle should have held a raise for approval"
        yield SimpleNamespace(cfg=cfg, app=create_app(cfg, store=svc.store, service=svc),
                              published=published, pending=pending)


def assert_secured(r, *, https: bool) -> None:
    what = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    csp = r.headers.get("content-security-policy", "")
    assert csp.startswith("default-src 'none'"), f"{what}: Content-Security-Policy {csp!r}"
    for directive in ("frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'",
                      "img-src 'self' data:"):
        assert directive in csp, f"{what}: {directive} missing from {csp!r}"
    assert "unsafe-inline" not in csp and "script-src" not in csp, f"{what}: {csp!r}"
    for name, value in EXPECTED.items():
        assert r.headers.get_list(name) == [value], f"{what}: {name} {r.headers.get_list(name)}"
    assert r.headers.get("strict-transport-security") == (HSTS if https else None), what


def route_table(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, the routers included under a prefix too; a mount's
    methods are None."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before route contexts: app.routes is flat
        return [(r.path, r.methods) for r in app.routes]
    return [(rc.path, rc.methods) for rc in iter_route_contexts(app.routes)]


def signed_in(client: TestClient) -> None:
    form = client.get("/console/login").text
    token = re.search(r'name="csrf" value="([^"]*)"', form)
    data = {"name": "duty", "password": PASSWORD} | ({"csrf": token.group(1)} if token else {})
    r = client.post("/console/login", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert_secured(r, https=True)


def test_every_route_answers_with_the_security_headers(site):
    cfg, app, published, pending = site.cfg, site.app, site.published, site.pending
    samples = {"name": [f"{published[0]}.html", f"{published[0]}.xml", "not-published.html", "bad..name"],
               "gauge_id": [cfg.gauges[0].id, "no-such-gauge"], "approval_id": [str(pending[0].id)],
               "path": ["console.css", "missing.css"]}
    seen = set()
    with TestClient(app, base_url="https://testserver") as client:
        signed_in(client)
        for path, methods in route_table(app):
            params = re.findall(r"{(\w+)(?::\w+)?}", path)
            missing = [p for p in params if p not in samples]
            assert not missing, f"{path}: give this test sample values for {missing}"
            urls = [path]
            for p in params:
                urls = [re.sub(rf"{{{p}(?::\w+)?}}", v, u) for u in urls for v in samples[p]]
            for url in urls:
                for method in sorted(methods or {"GET"}):
                    if method == "HEAD":
                        continue
                    # a POST without its form: 422, or 403 for a form without its token; /health
                    # answers 503 (this service's scheduler is not started), with the headers too
                    r = client.request(method, url, follow_redirects=False)
                    assert r.status_code != 500, f"{method} {url}: {r.text[:200]}"
                    assert_secured(r, https=True)
                    seen.add((method, url, r.status_code // 100))
        assert {c for *_, c in seen} >= {2, 4}
        assert ("GET", f"/notices/{published[0]}.html", 2) in seen
        assert any(m == "POST" and u.startswith("/twilio/") and c == 4 for m, u, c in seen), seen
        r = client.put("/api/zones")  # a method the route does not take
        assert r.status_code == 405
        assert_secured(r, https=True)
        # console pages: one X-Frame-Options (the middleware's), no inline styles
        page = client.get("/console/approvals")
        assert page.status_code == 200 and page.headers.get_list("x-frame-options") == ["DENY"]
        assert "style=" not in page.text and "<style" not in page.text
        assert 'href="/static/console.css"' in page.text
        dashboard = client.get("/console")
        assert dashboard.status_code == 200 and "style=" not in dashboard.text
        for url in ("/docs", "/redoc", "/no-such-page"):  # /docs would load scripts from a CDN
            r = client.get(url)
            assert r.status_code == 404
            assert_secured(r, https=True)
        assert client.get("/openapi.json").json()["paths"]


def test_redirects_refusals_and_errors_carry_the_headers_hsts_only_over_https(site):
    with TestClient(site.app, base_url="http://testserver") as client:
        for method, url, code in (("GET", "/console", 303), ("GET", "/console/log", 303),
                                  ("GET", "/notices/x.pdf", 404), ("POST", "/twilio/sms-inbound", 403),
                                  ("POST", "/twilio/sms-status", 403), ("GET", "/static/none.css", 404)):
            r = client.request(method, url, follow_redirects=False, data={"Body": "STOP"})
            assert r.status_code == code, (method, url, r.status_code)
            assert_secured(r, https=False)
        # only uvicorn's proxy-headers middleware, for a trusted proxy, turns this into https
        r = client.get("/", headers={"X-Forwarded-Proto": "https"})
        assert_secured(r, https=False)


def test_the_public_pages_inline_style_is_allowed_by_its_hash_and_nothing_else(site):
    with TestClient(site.app, base_url="https://testserver") as client:
        for url in ("/", f"/notices/{site.published[0]}.html"):
            r = client.get(url)
            style_src = re.search(r"style-src ([^;]*)", r.headers["content-security-policy"]).group(1).split()
            hashes = style_hashes(r.text)
            assert hashes and set(hashes) <= set(style_src), (url, hashes, style_src)
            assert style_src == ["'self'", *hashes], "only this origin and the public pages' own style"
            assert "style=" not in r.text and "<script" not in r.text


def test_streams_files_and_unhandled_errors():
    """Pure ASGI: a streamed body arrives whole; an unhandled error is a 500 with the headers."""
    app = FastAPI()
    app.add_middleware(SecurityHeaders, csp="default-src 'none'")

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse((f"part {i}\n".encode() for i in range(1000)), media_type="text/plain")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/own", include_in_schema=False)
    def own() -> StreamingResponse:
        return StreamingResponse(iter([b"x"]), headers={"Content-Security-Policy": "sandbox",
                                                        "Referrer-Policy": "same-origin"})

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/stream")
        assert r.text == "".join(f"part {i}\n" for i in range(1000))
        assert r.headers["content-security-policy"] == "default-src 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        r = client.get("/boom")
        assert r.status_code == 500 and r.headers["x-frame-options"] == "DENY"
        assert r.headers["content-security-policy"] == "default-src 'none'"
        r = client.get("/own")  # a route's own, narrower policy wins
        assert r.headers.get_list("content-security-policy") == ["sandbox"]
        assert r.headers.get_list("referrer-policy") == ["same-origin"]
        assert r.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------- in Chromium
@contextmanager
def serving(app: FastAPI):
    """The app on a free local port, in a thread: its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    e => window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline")));
"""


def rgb(hex_colour: str) -> str:
    """``#f5c400`` (or ``#123``) as a computed style writes it: ``rgb(245, 196, 0)``."""
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return "rgb({}, {}, {})".format(*(int(h[i:i + 2], 16) for i in (0, 2, 4)))


def computed(page, selector: str, prop: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"els => els.map(e => getComputedStyle(e)['{prop}'])")


def test_pages_pass_the_policy_in_headless_chromium_and_keep_their_styles(site):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    cfg, app, published, pending = site.cfg, site.app, site.published, site.pending
    public_css = (TEMPLATE_DIR / "_base.html.j2").read_text()
    severity_colours = dict(re.findall(r"\.severity-(\w+) \{ border-left-color: (#[0-9a-f]+); \}", public_css))
    assert severity_colours, "the public pages' CSS should colour notices by severity"
    level_colours = {lv.name: lv.colour for lv in cfg.levels} | {"none": "#dddddd"}
    console_messages: list[str] = []

    with serving(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            context = browser.new_context()
            context.add_init_script(WATCH_CSP)
            page = context.new_page()
            page.on("console", lambda m: console_messages.append(f"{page.url}: {m.text}"))

            def visit(url: str) -> None:
                r = page.goto(f"{base}{url}")
                assert r is not None and r.ok, f"{url}: {r and r.status}"
                assert r.headers["content-security-policy"].startswith("default-src 'none'")
                page.wait_for_load_state("load")
                assert page.evaluate("window.__csp") == [], f"{url}: CSP violations"

            # public: the index with warnings in force, and a notice page (inline style by hash)
            visit("/")
            notices = page.locator("article.notice")
            assert notices.count() >= 1
            assert computed(page, "body", "maxWidth") == ["736px"]  # 46rem
            for cls, width, colour in zip(notices.evaluate_all("els => els.map(e => e.className)"),
                                          computed(page, "article.notice", "borderLeftWidth"),
                                          computed(page, "article.notice", "borderLeftColor"), strict=True):
                severity = cls.split("severity-")[1]
                assert width == "8px" and colour == rgb(severity_colours[severity]), (cls, width, colour)
            # (the index links notices under the site's public web_base, not this test server)
            visit(f"/notices/{published[0]}.html")
            assert computed(page, "dl.facts", "display")[0] == "grid"
            assert computed(page, "section.notice", "borderLeftWidth")[0] == "8px"
            visit(f"/notices/{published[-1]}.html")
            assert computed(page, "body", "maxWidth") == ["736px"]

            # the console: the stylesheet at /static/console.css, level colours as SVG fills
            visit("/console/login")
            assert computed(page, "header", "backgroundColor") == [rgb("#123")]
            page.fill("input[name=name]", "duty")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/console")
            visit("/console")
            assert computed(page, "body", "margin") == ["0px"] and computed(page, "body", "fontSize") == ["15px"]
            rows = page.locator("#zones tr[data-zone]")
            assert rows.count() == len(cfg.zones)
            shown = set()
            for i in range(rows.count()):
                row = rows.nth(i)
                level = row.get_attribute("data-level")
                fill = row.locator("svg.level rect").evaluate("r => getComputedStyle(r).fill")
                size = row.locator("svg.level").evaluate("s => [s.getBoundingClientRect().width, "
                                                         "getComputedStyle(s).borderTopStyle]")
                assert fill == rgb(level_colours[level]), (row.get_attribute("data-zone"), level, fill)
                assert size == [17, "solid"], size  # 1em of 15px and a 1px border each side
                shown.add(level)
            assert len(shown) >= 2, f"the storm should leave zones at different levels: {shown}"
            assert page.locator("img[src='/console/map.png']").evaluate(
                "i => i.complete && i.naturalWidth > 0")  # img-src 'self'
            visit("/console/approvals")
            section = page.locator(f"section.approval[data-id='{pending[0].id}']")
            width = section.locator("textarea[name=text]").evaluate(
                "t => t.getBoundingClientRect().width / t.closest('p').getBoundingClientRect().width")
            assert width == pytest.approx(1.0, abs=0.01)  # textarea{width:100%}
            visit("/console/log")
            assert computed(page, "#log th", "borderTopColor")[0] == rgb("#ccc")
            visit("/console/reports")
            assert computed(page, "#reports th", "borderTopWidth")[0] == "1px"
            assert computed(page, "header a", "color")[0] == rgb("#fff")

            # the watch itself sees a violation: a style injected into a page under the policy
            before = len(console_messages)
            page.evaluate("""() => { const s = document.createElement('style');
                s.textContent = 'body { margin: 3px }'; document.head.append(s); }""")
            page.wait_for_function("window.__csp.length > 0")
            assert page.evaluate("window.__csp")[0].startswith("style-src")
            assert computed(page, "body", "margin") == ["0px"]
            page.wait_for_timeout(200)  # console messages arrive asynchronously
        finally:
            browser.close()
    refused = [m for m in console_messages[:before] if "Content Security Policy" in m]
    assert not refused, refused
    assert any("Content Security Policy" in m for m in console_messages[before:]), console_messages
