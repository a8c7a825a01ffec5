"""FLOODWARN_LOG_FORMAT=json: every line a command logs is one JSON object with its time
(UTC, milliseconds), level, logger and message, the cycle's run id and the zone on the
cycle's lines, and phone numbers masked even where a library logs them (the Twilio SDK);
the text format has timestamps; uvicorn's log config takes the same format."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest

from tests.alerts.twilio_fake import FakeTwilio
from tests.conftest import REPO, demo_config_text
from warning.config import load_config
from warning.errors import ConfigError
from warning.logs import (
    ContextFilter,
    JsonFormatter,
    PhoneNumberFilter,
    TextFormatter,
    log_context,
    log_format,
    uvicorn_log_config,
)
from warning.storage import Run, Store
from warning.subscribers import PhoneVault, SubscriberRegistry

SECRET = "logs-json-test-secret"
NUMBER = re.compile(r"\+?447700\d{6}")  # a demo subscriber's number in clear
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_run_logs_json_lines_with_run_id_zone_and_masked_numbers(tmp_path, monkeypatch):
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    path = tmp_path / "site.toml"
    path.write_text(text)
    cfg = load_config(path)
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    monkeypatch.delenv("FLOODWARN_SECRET_KEY_FILE", raising=False)
    store = Store(cfg.db_url)
    SubscriberRegistry(store, PhoneVault.from_env(), "GB").import_csv(cfg.path(cfg.subscribers.import_csv))
    store.dispose()
    with FakeTwilio() as fake:
        # Twilio's error text quotes the number: our log line of the failure carries it
        fake.fail_next(400, 21211, "The 'To' number +447700900100 is not a valid phone number.")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "FLOODWARN_"))}
        env.update(TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                   FLOODWARN_TWILIO_BASE_URL=fake.base_url, FLOODWARN_SECRET_KEY=SECRET,
                   FLOODWARN_LOG_FORMAT="json", PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-c", "from warning.cli import main; main()", "run", "--config",
                               str(path), "--at", "2025-11-14T16:00Z", "-v"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        sent = list(fake.messages)
    assert done.returncode == 0, done.stderr
    assert sent  # the town's residents were texted through the SDK, which logged their numbers
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert lines and all(TIME.match(r["time"]) and {"level", "logger", "message"} <= r.keys() for r in lines)
    # the run id the command reports and stored, on the cycle's lines
    [run_id] = re.findall(r"cycle (\S+): forecast issued", done.stdout)
    store = Store(cfg.db_url)
    with store.session() as s:
        assert [r.id for r in s.query(Run)] == [run_id]
    store.dispose()
    zone_lines = [r for r in lines if "zone" in r]
    assert {r["zone"] for r in zone_lines} >= {"MB-TOWN"}
    assert all(r["run_id"] == run_id for r in zone_lines)
    town = [r for r in zone_lines if r["zone"] == "MB-TOWN" and r["logger"] == "warning.alerting"]
    assert town and town[0]["message"].startswith("zone MB-TOWN: raise")
    # the dispatch's lines (the SDK's too) carry the run id; the number Twilio's error quoted
    # is masked by the filter, in the JSON
    sdk = [r for r in lines if r["logger"].startswith("twilio")]
    assert sdk and all(r.get("run_id") == run_id for r in sdk)
    [refused] = [r for r in lines if "is not a valid phone number" in r["message"]]
    assert "The 'To' number +4477******00 is not" in refused["message"] and refused["run_id"] == run_id
    assert not NUMBER.search(done.stderr) and not NUMBER.search(done.stdout)


def _emit(formatter: logging.Formatter, msg: str, *args, exc: bool = False, **ctx: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    handler.addFilter(PhoneNumberFilter())
    log = logging.getLogger("warning.test")
    log.addHandler(handler)
    try:
        with log_context(**ctx):
            if exc:
                try:
                    raise ValueError(f"no subscriber +447700900123 {msg}")
                except ValueError:
                    log.exception(msg, *args)
            else:
                log.warning(msg, *args)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def test_json_escaping_does_not_defeat_the_phone_filter():
    # a number in quotes, after a backslash and a newline, in an argument, in a traceback,
    # and with non-ASCII text about it: JSON escapes all of these around the number
    out = _emit(JsonFormatter(), 'texted "%s"\\\n\u00e9t\u00e9 %s', "+447700900123", "+44 7700 900124",
                exc=True, run_id="20251114T1600Z-live", zone="MB-TOWN")
    [line] = out.splitlines()  # one object, one line: newlines inside are escaped
    record = json.loads(line)
    assert record["message"] == 'texted "+4477******23"\\\n\u00e9t\u00e9 +4477******24'
    assert record["run_id"] == "20251114T1600Z-live" and record["zone"] == "MB-TOWN"
    assert "ValueError: no subscriber +4477******23" in record["exc"]
    assert not NUMBER.search(line) and not NUMBER.search(json.dumps(record, ensure_ascii=True))
    assert "source" not in record and "job" not in record  # only the fields that are known


def test_text_lines_have_a_utc_timestamp_and_the_context():
    out = _emit(TextFormatter(), "sent to %s", "+447700900123", job="dispatch")
    stamp, rest = out.split(" ", 1)
    assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0
    assert TIME.match(stamp)
    assert rest == "WARNING warning.test: sent to +4477******23 [job=dispatch]\n"


def test_log_format_from_option_or_environment(monkeypatch):
    monkeypatch.delenv("FLOODWARN_LOG_FORMAT", raising=False)
    assert log_format() == "text"
    monkeypatch.setenv("FLOODWARN_LOG_FORMAT", "JSON")
    assert log_format() == "json" and log_format("text") == "text"
    monkeypatch.setenv("FLOODWARN_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="FLOODWARN_LOG_FORMAT must be one of text, json"):
        log_format()


def test_uvicorn_access_lines_come_out_as_json_with_numbers_masked():
    uvicorn_config = pytest.importorskip("uvicorn.config")
    config = uvicorn_log_config(uvicorn_config.LOGGING_CONFIG, "json")
    stream = io.StringIO()
    for handler in config["handlers"].values():
        handler["stream"] = stream
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    logging.config.dictConfig(config)
    try:
        access = logging.getLogger("uvicorn.access")
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/health?to=%2B447700900123", "1.1", 200)
        logging.getLogger("uvicorn.error").info("Started server process")
    finally:  # uvicorn's loggers as they were, for the other tests
        for lg, (handlers, level, propagate, disabled) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["logger"] == "uvicorn.access" and first["message"] == \
        '127.0.0.1:5000 - "GET /health?to=%2B4477******23 HTTP/1.1" 200'
    assert second["logger"] == "uvicorn.error" and second["level"] == "INFO"
