"""CAP times through the user's path: ``floodwarn run`` writes notices whose every time is
UTC written ``-00:00`` (CAP 1.2 section 3.3.2), valid against the OASIS schema, and the
next cycle reads them back (references, the public feed)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from alerts.cap import CAP_NS, parse_cap
from tests.conftest import demo_config_text, shared_path
from warning.cli import app

CAP = f"{{{CAP_NS}}}"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?[+-]\d\d:\d\d")


def test_run_writes_cap_times_in_utc_as_minus_zero(tmp_path, monkeypatch):
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(shared_path("standards", "cap", "CAP-v1.2.xsd")))
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "cap-times-test")
    cfg = tmp_path / "site.toml"
    cfg.write_text(demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1))
    runner = CliRunner()
    for at in ("2025-11-14T15:00Z", "2025-11-14T16:00Z"):  # warnings, then updates referencing them
        res = runner.invoke(app, ["run", "--config", str(cfg), "--at", at])
        assert res.exit_code in (0, 1), res.output  # 1: a zone failed (told to operators), times still apply
    files = sorted((tmp_path / "out" / "cap").glob("*.xml"))
    assert files
    kinds, seen = set(), set()
    for f in files:
        data = f.read_bytes()
        errors = list(schema.iter_errors(data.decode()))
        assert not errors, (f.name, [e.reason for e in errors[:3]])
        root = ET.fromstring(data)
        kinds.add(root.findtext(f"{CAP}msgType"))
        values = [("sent", root.findtext(f"{CAP}sent"))]
        values += [("references", t.split(",")[2]) for t in (root.findtext(f"{CAP}references") or "").split()]
        for info in root.findall(f"{CAP}info"):
            values += [(tag, info.findtext(f"{CAP}{tag}")) for tag in ("effective", "onset", "expires")
                       if info.findtext(f"{CAP}{tag}") is not None]
            values += [(p.findtext(f"{CAP}valueName"), p.findtext(f"{CAP}value"))
                       for p in info.findall(f"{CAP}parameter") if TIME.search(p.findtext(f"{CAP}value") or "")]
        for where, value in values:
            seen.add(where)
            assert value.endswith("-00:00") and "+00:00" not in value, (f.name, where, value)
        assert parse_cap(data).sent.utcoffset().total_seconds() == 0
    assert kinds == {"Alert", "Update"}
    assert {"sent", "references", "onset", "expires", "floodwarn:peakTime", "floodwarn:forecastIssued"} <= seen
