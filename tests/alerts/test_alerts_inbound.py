"""Inbound SMS commands: Twilio's keyword rules, JOIN/LANG/REPORT arguments, and replies."""

from __future__ import annotations

import dataclasses

import pytest

from alerts.inbound import (
    HELP_WORDS,
    MAX_REPORT_CHARS,
    OUTCOMES,
    PROBLEMS,
    START_WORDS,
    STOP_WORDS,
    InboundCommand,
    parse_inbound,
    reply_language,
    reply_text,
)
from alerts.messages import sms_segments

# Twilio's default opt-out / opt-in / help keywords (Advanced Opt-Out doc, 2025).
TWILIO_STOP = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
TWILIO_START = ["START", "YES", "UNSTOP"]
TWILIO_HELP = ["HELP", "INFO"]

SENDER = "Millbrook Flood Warnings"  # 24 characters
VALUES = {
    "sender": SENDER,
    "zone_name": "Millbrook town centre (MB-TOWN)",
    "zone_names": "Millbrook town centre, Westford",
    "zone_codes": "HILLTOP, MB-TOWN, MB-WESTFORD, SB-LANE",
    "languages": "en, es",
    "zone_example": "HILLTOP",
}


def variants(word: str) -> list[str]:
    """Case and surrounding whitespace/punctuation variants Twilio still matches."""
    return [word, word.lower(), word.title(), f"  {word.lower()}  ", f"{word}.", f"{word.lower()}!",
            f"\t{word.title()}\n", f'"{word}"']


def test_keyword_sets_are_twilios():
    assert STOP_WORDS == set(TWILIO_STOP)
    assert START_WORDS == set(TWILIO_START)
    assert HELP_WORDS == set(TWILIO_HELP)


@pytest.mark.parametrize("word", TWILIO_STOP)
def test_every_stop_synonym_in_any_case(word):
    for text in variants(word):
        assert parse_inbound(text) == InboundCommand("stop"), repr(text)


@pytest.mark.parametrize("word,kind", [(w, "start") for w in TWILIO_START]
                         + [(w, "help") for w in TWILIO_HELP])
def test_start_and_help_synonyms(word, kind):
    for text in variants(word):
        assert parse_inbound(text).kind == kind, repr(text)


def test_full_width_letters_are_folded():
    assert parse_inbound("ＳＴＯＰ").kind == "stop"


@pytest.mark.parametrize("text", ["stop please", "STOP STOP", "help me", "yes please"])
def test_keyword_must_be_alone(text):
    cmd = parse_inbound(text)
    assert cmd.kind == "unknown"
    assert cmd.problem_code == "not_alone"
    assert cmd.word == text.split()[0].upper()
    assert "on its own" in cmd.problem


def test_stopping_is_not_stop():
    cmd = parse_inbound("stopping")
    assert (cmd.kind, cmd.problem_code, cmd.word) == ("unknown", "unknown_word", "stopping")


def test_join_takes_a_zone_code():
    assert parse_inbound("join mb-town") == InboundCommand("join", argument="mb-town")
    assert parse_inbound(" JOIN:  MB-TOWN. ") == InboundCommand("join", argument="MB-TOWN")
    assert parse_inbound("Join\nHILLTOP").argument == "HILLTOP"


@pytest.mark.parametrize("text,code", [("JOIN", "join_no_zone"), ("join   ", "join_no_zone"),
                                       ("JOIN ...", "join_no_zone"),
                                       ("JOIN MB TOWN", "extra_words")])
def test_join_problems(text, code):
    cmd = parse_inbound(text)
    assert (cmd.kind, cmd.problem_code) == ("unknown", code)
    assert cmd.problem.startswith("JOIN")


def test_lang_codes_are_validated():
    assert parse_inbound("LANG ES") == InboundCommand("lang", argument="es")
    assert parse_inbound("lang fr.") == InboundCommand("lang", argument="fr")
    bad = parse_inbound("LANG french")
    assert (bad.kind, bad.problem_code, bad.word) == ("unknown", "lang_bad_code", "french")
    assert "2-letter" in bad.problem and "'french'" in bad.problem
    assert parse_inbound("LANG 12").problem_code == "lang_bad_code"
    assert parse_inbound("LANG").problem_code == "lang_no_code"
    assert parse_inbound("LANG es en").problem_code == "extra_words"


def test_report_keeps_the_text_trimmed():
    cmd = parse_inbound("  report   Water over the road at  Mill Lane bridge, 30 cm deep \n")
    assert cmd == InboundCommand(
        "report", argument="Water over the road at  Mill Lane bridge, 30 cm deep")
    assert parse_inbound("REPORT: car park flooded").argument == "car park flooded"


def test_report_needs_text_and_is_limited():
    for text in ("REPORT", "report   ", "REPORT ..."):
        assert parse_inbound(text).problem_code == "report_no_text", text
    long = parse_inbound("REPORT " + "x" * (MAX_REPORT_CHARS + 500))
    assert long.kind == "report" and len(long.argument) == MAX_REPORT_CHARS


@pytest.mark.parametrize("text", ["", "   ", "...", "\u200b", None])
def test_empty_messages(text):
    cmd = parse_inbound(text)
    assert (cmd.kind, cmd.problem_code) == ("unknown", "empty")
    assert "empty" in cmd.problem


def test_unknown_word_is_named_and_phone_numbers_are_masked():
    cmd = parse_inbound("hello there")
    assert (cmd.kind, cmd.problem_code, cmd.word) == ("unknown", "unknown_word", "hello")
    assert "'hello'" in cmd.problem and "JOIN" in cmd.problem
    number = parse_inbound("+447700900123 call me")
    assert "7700900123" not in number.problem and "7700900123" not in number.word
    assert "*" in number.word  # masked like mask_phone: country code, 2 + 2 digits kept
    assert len(parse_inbound("x" * 200).word) <= 20


def test_command_is_frozen_and_checked():
    cmd = parse_inbound("STOP")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.kind = "start"  # type: ignore[misc]
    with pytest.raises(ValueError, match="expected one of"):
        InboundCommand("subscribe")
    with pytest.raises(ValueError, match="problem_code"):
        InboundCommand("unknown", problem_code="nope")


# --------------------------------------------------------------------------- replies

def every_reply(language: str):
    """(kind, outcome, text) for every reply with typical values."""
    commands = {"stop": InboundCommand("stop"), "start": InboundCommand("start"),
                "help": InboundCommand("help"), "delete": InboundCommand("delete"),
                "join": InboundCommand("join", argument="XX-9"),
                "lang": InboundCommand("lang", argument="fr"),
                "report": InboundCommand("report", argument="x")}
    for kind, outcomes in OUTCOMES.items():
        if kind == "unknown":
            continue
        for outcome in outcomes:
            yield kind, outcome, reply_text(commands[kind], outcome, language, **VALUES)
    for code in PROBLEMS:
        cmd = InboundCommand("unknown", problem="p", problem_code=code, word="HELLO")
        yield "unknown", code, reply_text(cmd, "ok", language, **VALUES)


def test_english_replies_fit_one_segment():
    for kind, outcome, text in every_reply("en"):
        if kind == "stop":
            assert text == ""
            continue
        size = sms_segments(text)
        assert (size.encoding, size.segments) == ("GSM-7", 1), (kind, outcome, text)


def test_spanish_replies_are_spanish_and_short():
    english = {(k, o): t for k, o, t in every_reply("en")}
    for kind, outcome, text in every_reply("es"):
        if kind == "stop":
            assert text == ""
            continue
        assert text != english[kind, outcome], (kind, outcome)
        assert sms_segments(text).segments <= 2, (kind, outcome, text)


def test_help_says_who_sends_and_how_to_stop():
    for lang in ("en", "es"):
        text = reply_text(parse_inbound("HELP"), "ok", lang, sender=SENDER)
        assert SENDER in text and "STOP" in text and "JOIN" in text


def test_unknown_reply_names_the_commands():
    cmd = parse_inbound("hello")
    for lang in ("en", "es"):
        text = reply_text(cmd, "ok", lang, **VALUES)
        assert "HELLO".lower() in text.lower()
        for word in ("JOIN", "LANG", "REPORT", "HELP", "STOP"):
            assert word in text, (lang, word, text)


def test_join_replies_name_the_zone():
    ok = reply_text(parse_inbound("JOIN mb-town"), "ok", "en", **VALUES)
    assert "Millbrook town centre (MB-TOWN)" in ok and "STOP" in ok
    bad = reply_text(parse_inbound("JOIN nowhere"), "unknown_zone", "en", **VALUES)
    assert "nowhere" in bad and VALUES["zone_codes"] in bad


def test_reply_language_falls_back_to_english():
    assert reply_language("es") == "es"
    assert reply_language("es-MX") == "es"
    assert reply_language("ES_es") == "es"
    assert reply_language("fr") == "en"
    assert reply_language(None) == "en"
    assert reply_text(parse_inbound("HELP"), "ok", "fr", sender=SENDER) == \
        reply_text(parse_inbound("HELP"), "ok", "en", sender=SENDER)


def test_reply_text_reports_misuse():
    with pytest.raises(ValueError, match="outcome 'rejoined' for 'help'"):
        reply_text(parse_inbound("HELP"), "rejoined", "en", sender=SENDER)
    with pytest.raises(ValueError, match="needs sender"):
        reply_text(parse_inbound("HELP"), "ok", "en")
    with pytest.raises(ValueError, match="zone_name"):
        reply_text(parse_inbound("JOIN A"), "ok", "en", sender=SENDER)
