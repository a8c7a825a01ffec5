"""Test data shared by the alerts tests: a three-level zone, times, the CAP pack's paths."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alerts.levels import Criterion, LevelSpec

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CAP_DIR = SHARED / "standards" / "cap"
CAP_XSD = CAP_DIR / "CAP-v1.2.xsd"

T0 = datetime(2026, 3, 14, 6, 0, tzinfo=UTC)

ADVISORY = LevelSpec(
    name="advisory", rank=1, title="Flood Alert", colour="#ffd84d",
    severity="Moderate", urgency="Expected", certainty="Possible", response_type="Prepare",
    criteria=(Criterion("peak_depth_m", ">=", 0.10), Criterion("flooded_share", ">=", 0.05)),
    instruction="Be prepared: keep an eye on water levels.",
    translations={"es": {"title": "Alerta por inundación",
                         "instruction": "Esté preparado y vigile el nivel del agua."}},
)
WARNING = LevelSpec(
    name="warning", rank=2, title="Flood Warning", colour="#f5a623",
    severity="Severe", urgency="Expected", certainty="Likely", response_type="Prepare",
    criteria=(Criterion("peak_depth_m", ">=", 0.50), Criterion("observed_stage_m", ">=", 2.0)),
    instruction="Move people, pets and valuables upstairs. Avoid flood water.",
    translations={"es": {
        "title": "Aviso de inundación",
        "instruction": (
            "Suba a personas, mascotas y objetos de valor a un piso alto. Evite el agua."
        ),
    }},
)
SEVERE = LevelSpec(
    name="severe", rank=3, title="Severe Flood Warning", colour="#d0021b",
    severity="Extreme", urgency="Immediate", certainty="Likely", response_type="Evacuate",
    approval=True,
    criteria=(Criterion("peak_depth_m", ">=", 1.0), Criterion("exposed_people", ">=", 100)),
    combine="all",
    instruction="Danger to life. Leave now if told to by the emergency services.",
)
LEVELS = (ADVISORY, WARNING, SEVERE)


def assert_schema_valid(schema, xml: bytes) -> None:
    """Fail with the schema's own reasons when ``xml`` is not valid CAP 1.2."""
    errors = list(schema.iter_errors(xml.decode("utf-8")))
    assert not errors, "\n".join(f"{e.reason} @ {e.path}" for e in errors[:5])
