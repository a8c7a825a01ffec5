"""Fixtures shared by the alerts tests."""

from __future__ import annotations

import pytest
from alerts_testdata import CAP_XSD


@pytest.fixture(scope="session")
def cap_schema():
    """The OASIS CAP 1.2 XSD from the repository's sibling ``shared`` folder."""
    if not CAP_XSD.is_file():
        pytest.skip(f"CAP 1.2 schema not found at {CAP_XSD} (the ../shared standards pack)")
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is needed to check CAP XML")
    return xmlschema.XMLSchema(str(CAP_XSD))
