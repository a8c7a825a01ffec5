"""SMS segment counting and rendering."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import jinja2
import pytest
from alerts_testdata import LEVELS, T0

from alerts import messages
from alerts.errors import TemplateError
from alerts.levels import ZonePolicy, ZoneState, decide
from alerts.messages import (
    SmsLength,
    format_sms_time,
    gsm_friendly,
    render_sms,
    sms_context,
    sms_segments,
)

PEAK = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
LINK = "https://floodwarn.example.org/w/RIV1-1"
MARKER = "EXERCISE EXERCISE EXERCISE:"
CONTEXT = {
    "zone": "Riverside",
    "level_title": "Flood Warning",
    "instruction": "Move people, pets and valuables upstairs. Avoid flood water.",
    "link": LINK,
    "reasons": [
        "forecast peak depth 0.82 m ≥ 0.50 m (Flood Warning threshold)",
        "observed river level 2.30 m ≥ 2.00 m (Flood Warning threshold)",
    ],
    "peak_time": PEAK,
    "peak_depth_m": 0.82,
    "sender_name": "Riverside Flood Service",
}


# --------------------------------------------------------------------------- segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsLength("GSM-7", 0, 0)),
        ("a" * 160, SmsLength("GSM-7", 160, 1)),
        ("a" * 161, SmsLength("GSM-7", 161, 2)),
        ("a" * 306, SmsLength("GSM-7", 306, 2)),
        ("a" * 307, SmsLength("GSM-7", 307, 3)),
        ("€", SmsLength("GSM-7", 2, 1)),
        ("€" * 80, SmsLength("GSM-7", 160, 1)),
        ("€" * 80 + "a", SmsLength("GSM-7", 161, 2)),
        ("^{}\\[~]|\f", SmsLength("GSM-7", 18, 1)),
        ("Ñañé¿¡ÄÖÜßà", SmsLength("GSM-7", 11, 1)),
        ("😀", SmsLength("UCS-2", 2, 1)),
        ("a" * 159 + "😀", SmsLength("UCS-2", 161, 3)),
        ("ж" * 70, SmsLength("UCS-2", 70, 1)),
        ("ж" * 71, SmsLength("UCS-2", 71, 2)),
        ("ж" * 134, SmsLength("UCS-2", 134, 2)),
        ("ж" * 135, SmsLength("UCS-2", 135, 3)),
        ("inundación", SmsLength("UCS-2", 10, 1)),
    ],
)
def test_sms_segments(text, expected):
    assert sms_segments(text) == expected


def test_escape_pairs_are_not_split_between_segments():
    # 306 septets would fit two parts, but the euro's two septets cannot straddle them.
    assert sms_segments("a" * 152 + "€" + "a" * 152) == SmsLength("GSM-7", 306, 3)


def test_surrogate_pairs_are_not_split_between_segments():
    assert sms_segments("ж" * 66 + "😀" + "ж" * 66) == SmsLength("UCS-2", 134, 3)


def test_gsm_friendly_keeps_meaning():
    assert gsm_friendly("0.82 m ≥ 0.50 m – “ok” …") == '0.82 m >= 0.50 m - "ok" ...'


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("language", ["en", "es"])
def test_every_action_has_a_template(language):
    for action in messages.SMS_ACTIONS:
        assert (messages.TEMPLATE_DIR / "sms" / language / f"{action}.txt.j2").is_file()


def test_environment_is_strict_and_plain_text():
    env = messages._environment()
    assert env.undefined is jinja2.StrictUndefined
    assert env.autoescape is False


def test_normal_message_says_why_and_what_to_do():
    body = render_sms("raise", "en", CONTEXT)
    assert body.startswith("FLOOD WARNING for Riverside.")
    assert "Why: forecast peak depth 0.82 m >= 0.50 m (Flood Warning threshold)" in body
    assert "Expected peak: 0.8 m around Sat 14 Mar 09:00 UTC." in body
    assert CONTEXT["instruction"] in body
    assert body.rstrip().endswith("- Riverside Flood Service")
    assert LINK in body
    length = sms_segments(body)
    assert length.encoding == "GSM-7" and length.segments <= 3


@pytest.mark.parametrize("action", ["raise", "lower", "all_clear"])
@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("max_segments", [1, 2, 3])
def test_required_parts_always_kept_and_budget_respected(action, language, max_segments):
    body = render_sms(action, language, CONTEXT, max_segments=max_segments, exercise_marker=MARKER)
    assert body.startswith(MARKER)
    assert "Riverside" in body and LINK in body
    if action != "all_clear":
        assert "FLOOD WARNING" in body and CONTEXT["instruction"] in body
    if sms_segments(body).segments > max_segments:
        # Only when the required parts alone are too long, and then nothing else is left.
        for optional in ("Why", "Motivo", "peak", "Pico", "Riverside Flood Service"):
            assert optional not in body


def test_optional_parts_go_before_the_why():
    body = render_sms("raise", "en", CONTEXT, max_segments=2)
    assert sms_segments(body).segments <= 2
    assert "Why: forecast peak depth 0.82 m >= 0.50 m" in body
    assert "observed river level" not in body  # the second reason went first
    assert "Riverside Flood Service" in body


def test_short_why_survives_a_tight_budget():
    context = dict(CONTEXT, instruction="Move to higher ground now.")
    body = render_sms("raise", "en", context, max_segments=1)
    assert sms_segments(body).segments == 1
    assert "Why:" in body


def test_exercise_marker_comes_first():
    body = render_sms("raise", "en", CONTEXT, exercise_marker=MARKER)
    assert body.startswith("EXERCISE EXERCISE EXERCISE: FLOOD WARNING for Riverside.")


def test_spanish_message():
    context = dict(
        CONTEXT, level_title="Aviso de inundación",
        instruction="Suba a un piso alto y evite el agua.",
        reasons=["profundidad máxima prevista 0,82 m ≥ 0,50 m (umbral de Aviso de inundación)"],
    )
    body = render_sms("raise", "es", context, max_segments=4)
    assert body.startswith("AVISO DE INUNDACIÓN en Riverside.")
    assert "Motivo: profundidad máxima prevista 0,82 m >= 0,50 m" in body
    assert "Pico previsto: 0,8 m hacia el 14 de marzo, 09:00 UTC." in body
    assert f"Más información: {LINK}" in body
    assert sms_segments(body).encoding == "UCS-2"


def test_spanish_all_clear_and_lower():
    body = render_sms("all_clear", "es", {"zone": "Riverside", "link": LINK})
    assert body.startswith("El aviso de inundación para Riverside ya no está en vigor.")
    assert "Motivo: ya no se esperan inundaciones aquí." in body
    lower = dict(CONTEXT, level_title="Alerta por inundación",
                 previous_level_title="Aviso de inundación")
    body = render_sms("lower", "es", lower, max_segments=5)
    assert body.startswith(
        "El aviso de inundación para Riverside baja a ALERTA POR INUNDACIÓN "
        "(antes: Aviso de inundación)."
    )
    # when even the shortest wording is too long, the previous level goes before the limit
    tight = render_sms("lower", "es", lower, max_segments=3)
    assert "(antes:" not in tight
    assert sms_segments(tight).segments < sms_segments(body).segments


@pytest.mark.parametrize(
    ("language", "start"), [("es-MX", "FLOOD WARNING en"), ("fr", "FLOOD WARNING for")]
)
def test_language_fallback(language, start):
    assert render_sms("raise", language, CONTEXT).startswith(start)


def test_missing_required_context_is_a_template_error():
    with pytest.raises(TemplateError, match="lacks level_title, link"):
        render_sms("raise", "en", {"zone": "Riverside", "instruction": "Go."})


def test_missing_peak_values_are_left_out():
    context = dict(CONTEXT, peak_depth_m=float("nan"), peak_time="")
    body = render_sms("raise", "en", context)
    assert "Expected peak" not in body and "nan" not in body


def test_unknown_action():
    with pytest.raises(ValueError, match="raise, lower, all_clear"):
        render_sms("hold", "en", CONTEXT)


def test_overlong_required_parts_are_sent_with_a_warning(caplog):
    context = dict(CONTEXT, instruction="Leave now. " * 60)
    with caplog.at_level(logging.WARNING, logger="alerts.messages"):
        body = render_sms("raise", "en", context, max_segments=3)
    assert context["instruction"].strip() in body
    assert "even without optional parts" in caplog.text


def test_format_sms_time():
    assert format_sms_time(T0) == "Sat 14 Mar 06:00 UTC"
    assert format_sms_time(T0, "es") == "14 de marzo, 06:00 UTC"
    with pytest.raises(ValueError):
        format_sms_time(datetime(2026, 3, 14))


def test_sms_context_from_a_decision_in_spanish():
    decision = decide(ZoneState(), {"peak_depth_m": 0.82}, T0, LEVELS, ZonePolicy())
    ctx = sms_context(decision, LEVELS, zone_name="Ribera", link=LINK, language="es",
                      peak_time=PEAK, peak_depth_m=0.82)
    assert ctx["level_title"] == "Aviso de inundación"
    assert ctx["reasons"] == [
        "profundidad máxima prevista 0,82 m ≥ 0,50 m (umbral de Aviso de inundación)"
    ]
    body = render_sms("raise", "es", ctx, max_segments=5)
    assert "Motivo: profundidad máxima prevista 0,82 m >= 0,50 m" in body
    tight = render_sms("raise", "es", ctx, max_segments=4)
    assert "Motivo: el pronóstico alcanza este nivel." in tight  # short "why", peak kept
    assert "Pico previsto: 0,8 m" in tight


def test_sms_context_for_an_all_clear_explains_the_old_level():
    state = ZoneState(level=2, since=T0, active=True)
    decision = decide(state, {"peak_depth_m": 0.1, "observed_stage_m": 1.0}, T0 + (PEAK - T0),
                      LEVELS, ZonePolicy())
    assert decision.action == "lower"  # still at Flood Alert
    ctx = sms_context(decision, LEVELS, zone_name="Riverside", link=LINK)
    assert ctx["previous_level_title"] == "Flood Warning" and ctx["level_title"] == "Flood Alert"
    assert "forecast peak depth 0.10 m < 0.50 m (Flood Warning threshold)" in ctx["reasons"]
    body = render_sms("lower", "en", ctx)
    assert body.startswith(
        "Flood warning for Riverside lowered to FLOOD ALERT (was Flood Warning)."
    )
    assert "Why: forecast peak depth 0.10 m < 0.50 m" in body


def test_no_peak_depth_when_the_forecast_shows_no_flooding():
    """A level raised on an observed river level with a dry forecast: the SMS gives no
    "peak depth 0.00 m"."""
    decision = decide(ZoneState(), {"peak_depth_m": 0.0, "observed_stage_m": 2.6}, T0, LEVELS, ZonePolicy())
    assert decision.action == "raise"
    dry = render_sms("raise", "en", sms_context(decision, LEVELS, zone_name="Riverside", link=LINK,
                                                 peak_depth_m=0.0))
    wet = render_sms("raise", "en", sms_context(decision, LEVELS, zone_name="Riverside", link=LINK,
                                                 peak_depth_m=0.4))
    assert "0.4 m" in wet and "peak depth" in wet.lower()
    assert "peak" not in dry.lower() and "0.0 m" not in dry and "0 m." not in dry


def test_level_and_site_templates_override_the_action_template(tmp_path):
    """A site folder with sms/en/severe/raise.txt.j2 words the severe raise its own way;
    other levels and languages keep ours."""
    own = tmp_path / "sms" / "en" / "severe"
    own.mkdir(parents=True)
    (own / "raise.txt.j2").write_text("SEVERE: {{ zone }} - leave now. {{ link }}")
    body = render_sms("raise", "en", CONTEXT, level="severe", template_dirs=[str(tmp_path)])
    assert body == f"SEVERE: {CONTEXT['zone']} - leave now. {CONTEXT['link']}"
    assert render_sms("raise", "en", CONTEXT, level="warning", template_dirs=[str(tmp_path)]) == \
        render_sms("raise", "en", CONTEXT)
    assert render_sms("raise", "es", CONTEXT, level="severe", template_dirs=[str(tmp_path)]) == \
        render_sms("raise", "es", CONTEXT)
