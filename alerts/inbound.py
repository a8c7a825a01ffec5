"""Text messages from residents: keyword commands and the short replies they get.

Pure functions, no database and no web framework; ``warning.webhooks`` does the I/O.

Commands (the first word is matched case-insensitively, surrounding whitespace and
punctuation ignored, so ``" Stop. "`` is STOP):

==========  ===========================================================  ==============
kind        what the resident sends                                      argument
==========  ===========================================================  ==============
``stop``    STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE,        ""
            OPTOUT (alone, as Twilio requires)
``start``   START, YES, UNSTOP (alone)                                   ""
``help``    HELP, INFO (alone)                                           ""
``delete``  DELETE, BORRAR (alone): erase my number                      ""
``join``    ``JOIN <zone code>``                                         the zone code
``lang``    ``LANG <2-letter code>``                                     code, lower case
``report``  ``REPORT <what you see>``                                    the text, with
                                                                         phone numbers
                                                                         removed
``unknown`` anything else (see :attr:`InboundCommand.problem`)           ""
==========  ===========================================================  ==============

The opt-out, opt-in and help words are those Twilio handles itself on long codes and
toll-free numbers: it matches the *whole* message as a single word, so ``"stop please"``
is not an opt-out there, and it is not one here either (the reply says to send STOP on
its own). Keeping the same rule keeps our subscriber list and Twilio's block list in step.
DELETE (or BORRAR) must be alone too: it erases the resident's number for good, so
``"delete the last message"`` is not taken for it.

A report is kept, so a phone number typed into one (the resident's, a neighbour's) is
replaced by :data:`NUMBER_REMOVED` (:func:`redact_numbers`) before anything stores it.

:func:`reply_text` gives the answer to send back, in English or Spanish
(:data:`REPLY_LANGUAGES`). English replies fit one GSM-7 segment (160 characters) with
a sender name of up to about 30 characters; Spanish needs letters outside GSM-7 (á, í,
ó, ú), so Spanish replies go as UCS-2 and take one or two segments (HELP, which names
every command, with a sender name of up to about 25 characters).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from alerts.channels import mask_phones_in

KINDS = ("stop", "start", "help", "delete", "join", "lang", "report", "unknown")
"""Every value :attr:`InboundCommand.kind` can take."""

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                        "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
DELETE_WORDS = frozenset({"DELETE", "BORRAR"})
"""Erase my number (English and Spanish); not a Twilio keyword, so it reaches us."""
_ALONE_WORDS = {**dict.fromkeys(STOP_WORDS, "stop"), **dict.fromkeys(START_WORDS, "start"),
                **dict.fromkeys(HELP_WORDS, "help"), **dict.fromkeys(DELETE_WORDS, "delete")}
_ARG_WORDS = {"JOIN": "join", "LANG": "lang", "REPORT": "report"}

MAX_REPORT_CHARS = 1000
"""Longest REPORT text kept, in characters; longer texts are cut (Twilio bodies go to 1600)."""

REPLY_LANGUAGES = ("en", "es")
"""Languages :func:`reply_text` answers in (and that LANG accepts)."""

PROBLEMS = ("empty", "unknown_word", "not_alone", "join_no_zone", "extra_words",
            "lang_no_code", "lang_bad_code", "report_no_text")
"""Every value :attr:`InboundCommand.problem_code` can take (besides "")."""

_WORD_SHOWN = 20  # characters of a resident's unknown word echoed in problems and replies
_LANG_RE = re.compile(r"^[a-z]{2}$")

NUMBER_REMOVED = "[number removed]"
"""What :func:`redact_numbers` puts in place of a phone number."""

# A phone number in free text: an optional + or (, then digits with single spaces, dashes,
# dots or parentheses between them; it counts when it holds 7 digits or more.
_NUMBER_RUN = re.compile(r"\+?\(?\d(?:[ .()-]{0,2}\d)*\)?")
# What must survive although it is made of digits and those separators: dates
# (2025-11-14, 14.11.2025, 14-11-25) and times (14:30) are never part of a number ...
_NOT_A_NUMBER = re.compile(
    r"(?<![\d.])(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}"
    r"|\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})"
    r"|\d{1,2}:\d{2}(?::\d{2})?)(?![\d.])")
# ... and decimals (0.5, 51.5074 -0.1278) are kept unless a number runs into them
_DECIMAL = re.compile(r"\(?[-+]?\d{1,4}\.\d{1,8}\)?")


@dataclass(frozen=True)
class InboundCommand:
    """One parsed text message.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    argument : str
        The zone code for ``join`` (as typed, punctuation around it removed), the
        language code for ``lang`` (lower case), the report text for ``report``
        (trimmed, at most :data:`MAX_REPORT_CHARS` characters, phone numbers replaced
        by :data:`NUMBER_REMOVED`); ``""`` otherwise.
    problem : str
        For ``unknown``: what is wrong, in English, precise enough for the audit log
        (any phone number in the echoed text is masked). ``""`` otherwise.
    problem_code : str
        For ``unknown``: one of :data:`PROBLEMS`, which :func:`reply_text` turns into
        the resident's language. ``""`` otherwise.
    word : str
        For ``unknown``: the word the problem is about (upper case keyword, or the
        resident's first word, shortened and masked), for the reply. ``""`` otherwise.
    """

    kind: str
    argument: str = ""
    problem: str = ""
    problem_code: str = ""
    word: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"InboundCommand kind {self.kind!r}: expected one of "
                             f"{', '.join(KINDS)}")
        if self.kind == "unknown" and self.problem_code not in PROBLEMS:
            raise ValueError(f"InboundCommand problem_code {self.problem_code!r}: expected one of "
                             f"{', '.join(PROBLEMS)}")


def redact_numbers(text: str) -> str:
    """``text`` with every phone number replaced by :data:`NUMBER_REMOVED`.

    A phone number is a run of 7 or more digits, with an optional leading ``+`` and
    spaces, dashes, dots or parentheses between the digits. Dates and times are kept,
    and so are decimals (depths, coordinates) unless they are written on to a number
    (``07700 900.123`` is one).

    Examples
    --------
    >>> redact_numbers("water 0.5 m deep at 14:30 on 2025-11-14, call me on 07700 900123")
    'water 0.5 m deep at 14:30 on 2025-11-14, call me on [number removed]'
    >>> redact_numbers("ring +44 (0)20 7946-0958 or 555.867.5309")
    'ring [number removed] or [number removed]'
    """
    out = []
    pos = 0
    for kept in _NOT_A_NUMBER.finditer(text):
        out.append(_redact_run(text[pos:kept.start()]))
        out.append(kept.group())
        pos = kept.end()
    out.append(_redact_run(text[pos:]))
    return "".join(out)


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _redact_run(text: str) -> str:
    return _NUMBER_RUN.sub(_redact_match, text)


def _redact_match(m: re.Match[str]) -> str:
    """A run of digits and separators: kept if under 7 digits or made of decimals only;
    otherwise removed, except for decimals at its ends that leave 7 digits or more."""
    run = m.group()
    if _digits(run) < 7:
        return run
    words = [(w.start(), w.end()) for w in re.finditer(r"\S+", run)]
    decimal = [bool(_DECIMAL.fullmatch(run[a:b])) for a, b in words]
    if all(decimal):
        return run
    first, last = 0, len(words) - 1
    while decimal[first] and _digits(run[words[first + 1][0]:words[last][1]]) >= 7:
        first += 1
    while decimal[last] and _digits(run[words[first][0]:words[last - 1][1]]) >= 7:
        last -= 1
    return run[:words[first][0]] + NUMBER_REMOVED + run[words[last][1]:]


def _is_trim(ch: str) -> bool:
    """Whitespace, punctuation, symbols and invisible format characters around a word."""
    return ch.isspace() or unicodedata.category(ch)[0] in "PSZC"


def _trim(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _is_trim(text[start]):
        start += 1
    while end > start and _is_trim(text[end - 1]):
        end -= 1
    return text[start:end]


def _keyword(word: str) -> str:
    """``word`` as a keyword: compatibility forms folded (full-width letters), trimmed, upper."""
    return _trim(unicodedata.normalize("NFKC", word)).upper()


def _shown(word: str) -> str:
    """A resident's word, safe to echo in a reply and the audit log."""
    word = _trim(word)
    if len(word) > _WORD_SHOWN:
        word = word[:_WORD_SHOWN - 3] + "..."
    return mask_phones_in(word)


def _unknown(code: str, problem: str, word: str = "") -> InboundCommand:
    return InboundCommand("unknown", problem=problem, problem_code=code, word=word)


_COMMANDS_HINT = ("send STOP, START, HELP, JOIN <zone code>, LANG <language code>, REPORT <text> "
                  "or DELETE")


def parse_inbound(body: str) -> InboundCommand:
    """Parse the text of an inbound SMS into a command.

    Parameters
    ----------
    body : str
        The message text as received (Twilio's ``Body``); ``None`` counts as empty.

    Returns
    -------
    InboundCommand
        Never raises for any text: what cannot be understood is ``kind="unknown"`` with
        a :attr:`~InboundCommand.problem` saying why.

    Examples
    --------
    >>> parse_inbound(" stop. ").kind
    'stop'
    >>> parse_inbound("join mb-town")
    InboundCommand(kind='join', argument='mb-town', problem='', problem_code='', word='')
    >>> parse_inbound("LANG french").problem
    "LANG needs a 2-letter language code such as 'en' or 'es', not 'french'"
    """
    text = (body or "").strip()
    words = text.split(None, 1)
    if not words or not _keyword(words[0]):
        return _unknown("empty", f"the message is empty; {_COMMANDS_HINT}")
    keyword = _keyword(words[0])
    rest = words[1].strip() if len(words) > 1 else ""

    if keyword in _ALONE_WORDS:
        if _trim(rest):
            return _unknown("not_alone", f"{keyword} must be sent on its own, as a single word "
                            f"(got more words after it)", keyword)
        return InboundCommand(_ALONE_WORDS[keyword])

    kind = _ARG_WORDS.get(keyword)
    if kind == "report":
        report = redact_numbers(rest[:MAX_REPORT_CHARS].strip())
        if not _trim(report):
            return _unknown("report_no_text", "REPORT needs a description of what you see, "
                            "e.g. REPORT water over the road at the bridge", "REPORT")
        return InboundCommand("report", argument=report)
    if kind is not None:  # JOIN or LANG: exactly one word after the keyword
        args = [_trim(unicodedata.normalize("NFKC", w)) for w in rest.split()]
        args = [a for a in args if a]
        if not args:
            if kind == "join":
                return _unknown("join_no_zone", "JOIN needs a zone code, e.g. JOIN <zone code>",
                                "JOIN")
            return _unknown("lang_no_code", "LANG needs a 2-letter language code, e.g. LANG es",
                            "LANG")
        if len(args) > 1:
            return _unknown("extra_words", f"{keyword} takes one word after it, got {len(args)}",
                            keyword)
        if kind == "join":
            return InboundCommand("join", argument=args[0])
        code = args[0].lower()
        if not _LANG_RE.match(code):
            shown = _shown(args[0])
            return _unknown("lang_bad_code", f"LANG needs a 2-letter language code such as "
                            f"'en' or 'es', not {shown!r}", shown)
        return InboundCommand("lang", argument=code)

    shown = _shown(words[0])
    return _unknown("unknown_word", f"unknown command {shown!r}; {_COMMANDS_HINT}", shown)


# --------------------------------------------------------------------------- replies

# Replies by language, then (kind, outcome). ``{name}`` fields come from reply_text's
# ``values``; ``{argument}`` and ``{word}`` from the command. Keywords stay in English
# in every language: they are what Twilio and the parser recognise (DELETE's Spanish
# twin BORRAR is the one exception, named in the Spanish replies).
_REPLIES: dict[str, dict[tuple[str, str], str]] = {
    "en": {
        ("stop", "ok"): "",  # Twilio sends the opt-out confirmation itself
        ("start", "ok"): "{sender}: flood warnings for {zone_names} will reach you again. "
                         "Text STOP to stop, HELP for help.",
        ("start", "not_subscribed"): "{sender}: this number gets no flood warnings yet. "
                                     "Text JOIN and your zone code to subscribe.",
        ("help", "ok"): "Flood warnings from {sender}. Text JOIN <zone>, LANG en or es, "
                        "REPORT <what you see>, STOP to stop, DELETE to erase your number.",
        ("delete", "ok"): "{sender}: your number is deleted. You will get no more flood "
                          "warnings. Text JOIN and your zone code to subscribe again.",
        ("delete", "not_subscribed"): "{sender}: this number is not on our list, so there is "
                                      "nothing to delete.",
        ("join", "ok"): "{sender}: you will get flood warnings for {zone_name}. "
                        "Text STOP to stop, HELP for help.",
        ("join", "rejoined"): "{sender}: you will get flood warnings for {zone_name}. "
                              "If you had texted STOP, text START too.",
        ("join", "unknown_zone"): "No zone {argument}. Zones: {zone_codes}. "
                                  "Text JOIN and one of these.",
        ("lang", "ok"): "{sender}: messages will now be in English. Text HELP for help.",
        ("lang", "unsupported"): "Language {argument} is not available. "
                                 "Text LANG and one of: {languages}.",
        ("lang", "not_subscribed"): "This number gets no flood warnings yet. "
                                    "Text JOIN and your zone code first.",
        ("report", "ok"): "Thank you, {sender} got your flood report. "
                          "If life is at risk, call the emergency services.",
        ("unknown", "empty"): "Your message was empty. {commands}",
        ("unknown", "unknown_word"): "Unknown command {word}. {commands}",
        ("unknown", "not_alone"): "Send {word} on its own. {commands}",
        ("unknown", "join_no_zone"): "JOIN needs a zone code, e.g. JOIN {zone_example}.",
        ("unknown", "extra_words"): "Send {word} and one word after it. {commands}",
        ("unknown", "lang_no_code"): "LANG needs a language code: LANG en or LANG es.",
        ("unknown", "lang_bad_code"): "{word} is not a language code. Text LANG en or LANG es.",
        ("unknown", "report_no_text"): "Say what you see, e.g. REPORT water over the road "
                                       "at the bridge.",
        ("commands", ""): "Text JOIN <zone>, LANG <en|es>, REPORT <what you see>, HELP, "
                          "STOP or DELETE.",
    },
    "es": {
        ("stop", "ok"): "",
        ("start", "ok"): "{sender}: volverá a recibir avisos de inundación para "
                         "{zone_names}. STOP para darse de baja.",
        ("start", "not_subscribed"): "{sender}: este número no recibe avisos. Envíe JOIN y "
                                     "el código de su zona.",
        ("help", "ok"): "Avisos de inundación de {sender}. JOIN <zona>, LANG en|es, "
                        "REPORT <lo que ve>, STOP (baja), BORRAR (borra su número).",
        ("delete", "ok"): "{sender}: hemos borrado su número; no recibirá más avisos. Envíe "
                          "JOIN y el código de su zona para volver.",
        ("delete", "not_subscribed"): "{sender}: este número no está en nuestra lista; no hay "
                                      "nada que borrar.",
        ("join", "ok"): "{sender}: recibirá avisos de inundación para {zone_name}. "
                        "STOP para darse de baja.",
        ("join", "rejoined"): "{sender}: recibirá avisos de inundación para {zone_name}. "
                              "Si envió STOP, envíe también START.",
        ("join", "unknown_zone"): "No existe la zona {argument}. Zonas: {zone_codes}. "
                                  "Envíe JOIN y una de ellas.",
        ("lang", "ok"): "{sender}: los mensajes llegarán en español. HELP para ayuda.",
        ("lang", "unsupported"): "El idioma {argument} no está disponible. Envíe LANG y "
                                 "uno de: {languages}.",
        ("lang", "not_subscribed"): "Este número no recibe avisos. Envíe antes JOIN y el "
                                    "código de su zona.",
        ("report", "ok"): "Gracias, {sender} recibió su aviso. Si hay vidas en peligro, "
                          "llame a emergencias.",
        ("unknown", "empty"): "Su mensaje estaba vacío. {commands}",
        ("unknown", "unknown_word"): "Orden desconocida: {word}. {commands}",
        ("unknown", "not_alone"): "Envíe {word} sin nada más. {commands}",
        ("unknown", "join_no_zone"): "JOIN necesita un código de zona, "
                                     "p. ej. JOIN {zone_example}.",
        ("unknown", "extra_words"): "Envíe {word} y una sola palabra más. {commands}",
        ("unknown", "lang_no_code"): "LANG necesita un código de idioma: LANG en o LANG es.",
        ("unknown", "lang_bad_code"): "{word} no es un código de idioma. "
                                      "Envíe LANG en o LANG es.",
        ("unknown", "report_no_text"): "Diga lo que ve, p. ej. REPORT agua en la calle "
                                       "junto al puente.",
        ("commands", ""): "Envíe JOIN <zona>, LANG <en|es>, REPORT <lo que ve>, HELP, STOP "
                          "o BORRAR.",
    },
}

OUTCOMES: dict[str, tuple[str, ...]] = {
    "stop": ("ok",),
    "start": ("ok", "not_subscribed"),
    "help": ("ok",),
    "delete": ("ok", "not_subscribed"),
    "join": ("ok", "rejoined", "unknown_zone"),
    "lang": ("ok", "unsupported", "not_subscribed"),
    "report": ("ok",),
    "unknown": ("ok",),
}
"""The outcomes :func:`reply_text` knows for each command kind."""

_FIELD_RE = re.compile(r"{(\w+)}")


def reply_language(language: str | None) -> str:
    """The reply language for a subscriber's ``language``: ``"es-MX"`` -> ``"es"``; else "en"."""
    base = (language or "").replace("_", "-").split("-")[0].lower()
    return base if base in REPLY_LANGUAGES else REPLY_LANGUAGES[0]


def reply_text(command: InboundCommand, outcome: str = "ok", language: str = "en",
               **values: str) -> str:
    """The plain-text reply to ``command``, in ``language`` (English if not available).

    Parameters
    ----------
    command : InboundCommand
        What the resident sent.
    outcome : str
        What came of it, one of :data:`OUTCOMES` ``[command.kind]``; for ``unknown``
        the reply follows ``command.problem_code``.
    language : str
        The resident's language; see :func:`reply_language`.
    **values : str
        Fields the reply names: ``sender`` (who sends the warnings), ``zone_name``
        (join ok/rejoined), ``zone_names`` (start ok), ``zone_codes`` (join
        unknown_zone), ``languages`` (lang unsupported), ``zone_example``
        (unknown join_no_zone).

    Returns
    -------
    str
        The reply, ``""`` for STOP (Twilio confirms opt-outs itself).

    Raises
    ------
    ValueError
        An unknown outcome for the command's kind, or a field the reply needs is missing.
    """
    if outcome not in OUTCOMES[command.kind]:
        raise ValueError(f"reply_text: outcome {outcome!r} for {command.kind!r}: expected one of "
                         f"{', '.join(OUTCOMES[command.kind])}")
    table = _REPLIES[reply_language(language)]
    if command.kind == "unknown":
        key = ("unknown", command.problem_code)
    else:
        key = (command.kind, outcome)
    template = table[key]
    fields: dict[str, str] = {"argument": command.argument, "word": command.word,
                              "commands": table[("commands", "")], **values}
    missing = sorted(set(_FIELD_RE.findall(template)) - set(fields))
    if missing:
        raise ValueError(f"reply_text: the {command.kind}/{outcome} reply needs "
                         f"{', '.join(missing)}; pass them as keyword arguments")
    return template.format_map(fields).strip()

