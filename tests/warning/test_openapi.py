"""The OpenAPI document at /openapi.json tells the truth about the whole API: schemathesis
sends every operation in it (the Twilio webhooks included) valid and invalid requests, and
every answer must be documented (status, media type, headers) and match its schema; no
request is a server error (bar a 503 the operation documents), and a request that breaks
the document is refused.

The app runs on the demo site after one forecast cycle of the demo storm, so the happy
paths answer with data: zones at a warning level, published notices, gauge readings, a
healthy service. Webhook requests are signed with the app's Auth Token at the public URL
Twilio would call, so their bodies are checked, not only their signatures.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import parse_qsl

import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from tests.conftest import DEMO_CONFIG, Clock, prepared_demo_site
from warning.config import load_config
from warning.service import Service
from warning.storage import Store
from warning.web import create_app
from warning.webhooks import INBOUND_PATH, STATUS_PATH

TOKEN = "openapi-test-auth-token"
PUBLIC = "https://alerts.example.org"
STORM = datetime(2025, 11, 14, 15, 0, tzinfo=UTC)  # the demo's storm: the town at a warning level
ENV = {"TWILIO_AUTH_TOKEN": TOKEN, "FLOODWARN_PUBLIC_URL": PUBLIC, "FLOODWARN_SECRET_KEY": "openapi-test-key"}


def document_app():
    """The demo site's app with the webhooks mounted and an empty database: the OpenAPI
    document (which depends on the configuration only) built cheaply when the tests are
    collected; ``served`` checks that it is the one the tested app serves."""
    with mock.patch.dict(os.environ, ENV):
        for name in ENV:
            os.environ.pop(f"{name}_FILE", None)
        return create_app(load_config(DEMO_CONFIG), store=Store("sqlite://"))


DOCUMENT_APP = document_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", DOCUMENT_APP)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo site's app after one forecast cycle of its storm, webhooks mounted."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
            mp.delenv(f"{name}_FILE", raising=False)
        mp.delenv("TWILIO_ACCOUNT_SID", raising=False)
        _, cfg = prepared_demo_site(tmp_path_factory.mktemp("openapi"))
        s = Service(cfg, clock=Clock(STORM))
        s.state.running = True  # its jobs are run by hand here
        assert s.cycle(force=True).ok
        app = create_app(cfg, store=s.store, service=s)
        assert app.openapi() == schema.raw_schema, "the document tested is not the one served"
        yield app
        s.shutdown()


def not_an_undocumented_server_error(ctx, response, case):
    """schemathesis' not_a_server_error, except for a 503 the operation documents (gauge
    readings unavailable, a failing /health): that is an answer, not a crash."""
    if response.status_code == 503 and "503" in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_an_undocumented_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection]


def sign(case) -> None:
    """Sign a webhook request as Twilio does: the form as it will be sent, at the public
    URL. A request generated without the signature header (or with an empty one) is left
    so, to be refused."""
    if not (case.headers or {}).get("X-Twilio-Signature"):
        return
    kwargs = case.as_transport_kwargs(base_url=PUBLIC)
    sent = requests.Request(method=kwargs["method"], url=kwargs["url"], params=kwargs.get("params"),
                            data=kwargs.get("data"), headers=kwargs.get("headers")).prepare()
    body = sent.body or b""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    form = FormData(parse_qsl(body, keep_blank_values=True))
    case.headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(sent.url, form)


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_operation_answers_as_its_openapi_document_says(case, served):
    if case.operation.path.startswith("/twilio/"):
        sign(case)
    case.call_and_validate(app=served, checks=CHECKS)


# --------------------------------------------------------------------------- the document itself

def operation(path: str, method: str = "get") -> dict:
    return schema.raw_schema["paths"][path][method]


def test_the_webhooks_document_their_signed_form_and_every_answer():
    for path, required, ok in ((STATUS_PATH, {"MessageSid", "MessageStatus"}, "204"),
                               (INBOUND_PATH, {"MessageSid", "From"}, "200")):
        op = operation(path, "post")
        form = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
        assert set(form["required"]) == required and op["requestBody"]["required"]
        assert {"MessageSid", "From", "To", "AccountSid"} <= set(form["properties"])
        [signature] = [p for p in op["parameters"] if p["name"] == "X-Twilio-Signature"]
        assert signature["in"] == "header" and signature["required"]
        assert set(op["responses"]) == {ok, "400", "403"}
        for code in ("400", "403"):
            assert set(op["responses"][code]["content"]) == {"text/plain"}
    assert set(operation(INBOUND_PATH, "post")["responses"]["200"]["content"]) == {"application/xml"}
    assert "content" not in operation(STATUS_PATH, "post")["responses"]["204"]


def test_times_are_iso_8601_with_a_zone_never_numbers():
    """Refused before any data is read (the document's app has an empty database)."""
    with TestClient(DOCUMENT_APP) as client:
        for number in ("0.5", "1700000000"):
            res = client.get("/api/gauges/MB-TOWN/readings", params={"until": number})
            assert res.status_code == 422, res.text
            assert [e["loc"] for e in res.json()["detail"]] == [["query", "until"]]
        res = client.get("/api/gauges/MB-TOWN/readings", params={"since": "2025-11-14T06:00"})
        assert res.status_code == 400 and "give a time zone" in res.json()["detail"]
        assert client.get("/api/gauges/NOPE/readings").status_code == 404
        assert client.get("/api/zones", params={"scope": "drill"}).status_code == 422  # drill:<name>
        assert client.get("/api/alerts", params={"zone": "MB TOWN"}).status_code == 422
    readings = operation("/api/gauges/{gauge_id}/readings")
    assert {"400", "404", "422", "503"} <= set(readings["responses"])
    assert {p["name"]: p["schema"].get("maximum") for p in readings["parameters"]}["limit"] == 100_000
    for path in ("/health", "/health/live", "/health/ready"):
        responses = operation(path)["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == \
            responses["503"]["content"]["application/json"]["schema"]
