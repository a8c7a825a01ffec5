"""Residents who subscribe by SMS: numbers normalised to E.164, encrypted at rest.

The key comes from ``FLOODWARN_SECRET_KEY`` (or ``FLOODWARN_SECRET_KEY_FILE``): any
string; a Fernet key is derived from it. Lookups use an HMAC of the number, so a
number can be found or deleted without decrypting every row. Numbers are masked
(``alerts.channels.mask_phone``) in every log line, and deleted on request with every
trace of them (:func:`erase_number`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import phonenumbers
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Text, cast, delete, or_, select, update

from alerts.channels import mask_phone
from alerts.inbound import NUMBER_REMOVED, redact_numbers

from .config import undecodable_at
from .errors import ConfigError, FloodwarnError
from .secrets import env_secret
from .storage import AuditRow, OutboxRow, ReportRow, Store, Subscriber, utcnow

log = logging.getLogger(__name__)
_PHONE_CHARS = re.compile(r"\+?[\d\s().-]+")


def normalise_phone(number: str, region: str = "GB") -> str:
    """E.164 form of ``number`` (``"07700 900100"`` in GB -> ``"+447700900100"``)."""
    if not _PHONE_CHARS.fullmatch(number.strip() or "x"):
        raise FloodwarnError(f"not a phone number: {mask_phone(number)} (only digits, spaces, "
                             "+, -, ( and ) are allowed)")
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as exc:
        raise FloodwarnError(f"not a phone number: {mask_phone(number)} ({exc})") from None
    if not phonenumbers.is_possible_number(parsed):
        raise FloodwarnError(f"not a possible phone number: {mask_phone(number)}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class Recipient:
    id: int
    phone: str  # E.164, decrypted; never log it, use mask_phone
    language: str


class PhoneVault:
    """Encrypts, decrypts and hashes phone numbers with a key from the environment."""

    def __init__(self, secret: str):
        digest = hashlib.sha256(("floodwarn-fernet:" + secret).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._hmac_key = hashlib.sha256(("floodwarn-lookup:" + secret).encode()).digest()

    @classmethod
    def from_env(cls) -> PhoneVault:
        secret = env_secret("FLOODWARN_SECRET_KEY")
        if not secret:
            raise ConfigError("FLOODWARN_SECRET_KEY: not set; subscribers' phone numbers are "
                              "encrypted with it. export FLOODWARN_SECRET_KEY=<a long random "
                              "string> (or FLOODWARN_SECRET_KEY_FILE=/path/to/file)")
        return cls(secret)

    def lookup_hash(self, e164: str) -> str:
        return hmac.new(self._hmac_key, e164.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, e164: str) -> str:
        return self._fernet.encrypt(e164.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError("FLOODWARN_SECRET_KEY: cannot decrypt stored phone numbers; the key "
                              "differs from the one they were stored with") from None


ROSTERS = ("public", "drill")
#: in a drill roster's ``zones``: every zone of the site
ALL_ZONES = "*"


def roster_hash(vault: PhoneVault, e164: str, roster: str) -> str:
    """The lookup hash of ``e164`` on ``roster``: a drill entry's is domain-separated, so one
    number can be on both lists without the two rows sharing a hash."""
    return vault.lookup_hash(e164 if roster == "public" else f"{roster}:{e164}")


class SubscriberRegistry:
    """The residents who subscribed (``roster="public"``), or the drill roster
    (``roster="drill"``): the separate list of numbers, e.g. the emergency team's, that
    drills text instead of the public. The two lists share a table but never a row: a
    drill entry's lookup hash is domain-separated, so one number can be on both lists,
    and queueing picks recipients by roster from the alert's scope."""

    def __init__(self, store: Store, vault: PhoneVault, region: str = "GB", roster: str = "public"):
        if roster not in ROSTERS:
            raise FloodwarnError(f"unknown roster {roster!r}; valid: {', '.join(ROSTERS)}")
        self.store = store
        self.vault = vault
        self.region = region
        self.roster = roster

    def _hash(self, e164: str) -> str:
        return roster_hash(self.vault, e164, self.roster)

    def add(self, phone: str, zones: list[str], language: str | None = None,
            consent_source: str = "unknown", consent_time: datetime | None = None) -> int:
        """Subscribe ``phone`` to ``zones`` (an existing number gets them added; its
        language changes only when one is given). Returns the subscriber id."""
        e164 = normalise_phone(phone, self.region)
        h = self._hash(e164)
        with self.store.session.begin() as s:
            row = s.scalar(select(Subscriber).where(Subscriber.phone_hash == h))
            if row is None:
                row = Subscriber(phone_hash=h, phone_enc=self.vault.encrypt(e164), zones=zones,
                                 language=language or "en", consent_source=consent_source,
                                 consent_time=consent_time or utcnow(), roster=self.roster)
                s.add(row)
            else:
                row.zones = sorted(set(row.zones) | set(zones))
                row.language = language or row.language
            s.flush()
            log.info("subscriber %s added to %s", mask_phone(e164), ",".join(zones))
            return row.id

    def import_csv(self, path: Path, known_zones: list[str] | None = None) -> int:
        """Import ``phone, zones (;-separated), language, consent_source`` rows.

        The file is UTF-8 (a byte-order mark, as Excel's "CSV UTF-8" writes, is accepted);
        column names are read without surrounding spaces and letter case. Every row is
        checked first (number, zones, language, no more fields than columns); if any is
        wrong nothing is imported and the error lists every bad row by line number
        (numbers masked). Returns the number of rows imported.
        """
        rows = _read_csv_rows(path)
        zones_ok = {z.lower(): z for z in known_zones} if known_zones is not None else None
        good, problems = [], []
        for line, row in rows:
            if None in row:  # DictReader puts the fields beyond the header under None
                problems.append(f"line {line}: {len(row) - 1 + len(row[None])} fields, more than the "
                                f"{len(row) - 1} columns; separate zones with ';', not ','")
                continue
            phone = (row.get("phone") or "").strip()
            try:
                e164 = normalise_phone(phone, self.region)
            except FloodwarnError as exc:
                problems.append(f"line {line}: {exc}")
                continue
            zones = [z.strip() for z in (row.get("zones") or "").split(";") if z.strip()]
            if not zones and self.roster == "drill":
                zones = [ALL_ZONES]
            if not zones:
                problems.append(f"line {line}: no zones for {mask_phone(e164)}")
                continue
            if zones_ok is not None and zones != [ALL_ZONES]:
                bad = [z for z in zones if z.lower() not in zones_ok]
                if bad:
                    problems.append(f"line {line}: unknown zone(s) {', '.join(bad)}")
                    continue
                zones = [zones_ok[z.lower()] for z in zones]
            lang = (row.get("language") or "en").strip().lower()
            if not (2 <= len(lang) <= 8 and lang.replace("-", "").isalpha()):
                problems.append(f"line {line}: language {lang!r} is not a language code like en or es")
                continue
            good.append((e164, zones, lang, (row.get("consent_source") or "").strip() or f"import {path.name}"))
        if problems:
            raise FloodwarnError(f"{path}: {len(problems)} bad row(s), nothing imported:\n  "
                                 + "\n  ".join(problems[:50]))
        for e164, zones, lang, source in good:
            self.add(e164, zones, lang, source)
        return len(good)

    def delete(self, phone: str, source: str = "operator") -> bool:
        """Remove the number from this roster for good, with every trace of it
        (:func:`erase_number`); False if it is not on this roster."""
        return bool(erase_number(self.store, self.vault, phone, region=self.region,
                                 rosters=(self.roster,), source=source))

    def find(self, phone: str) -> Subscriber | None:
        """The subscriber row for ``phone`` (any format), or None."""
        h = self._hash(normalise_phone(phone, self.region))
        with self.store.session() as s:
            return s.scalar(select(Subscriber).where(Subscriber.phone_hash == h))

    def _update(self, phone: str, event: str, detail: dict, **values) -> bool:
        h = self._hash(normalise_phone(phone, self.region))
        with self.store.session.begin() as s:
            row = s.scalar(select(Subscriber).where(Subscriber.phone_hash == h))
            if row is None:
                return False
            for k, v in values.items():
                setattr(row, k, v)
            self.store.audit(s, event, {"subscriber_id": row.id, **detail})
            return True

    def opt_out(self, phone: str, source: str, at: datetime | None = None) -> bool:
        """Mark the number opted out (STOP, or the provider's 21610); False if unknown."""
        row = self.find(phone)
        if row is not None and row.opted_out_at is not None:
            return True  # already out: keep the first time
        return self._update(phone, "opt_out", {"source": source}, opted_out_at=at or utcnow())

    def opt_in(self, phone: str, source: str) -> bool:
        """Clear an opt-out (START); False if the number is unknown."""
        return self._update(phone, "opt_in", {"source": source}, opted_out_at=None, unreachable=None)

    def set_language(self, phone: str, language: str) -> bool:
        return self._update(phone, "language", {"language": language}, language=language)

    def export_csv(self, path: Path) -> int:
        """Write every subscriber as ``phone, zones, language, consent_source, consent_time,
        opted_out_at`` (the same columns :meth:`import_csv` reads, plus state). The file
        holds phone numbers in clear: personal data, handle it as such."""
        with self.store.session() as s:
            rows = s.scalars(select(Subscriber).where(Subscriber.roster == self.roster)
                             .order_by(Subscriber.id)).all()
        try:
            with open(path, "w", newline="", encoding="utf-8") as fh:  # what import_csv reads
                w = csv.writer(fh)
                w.writerow(["phone", "zones", "language", "consent_source", "consent_time", "opted_out_at"])
                for r in rows:
                    w.writerow([self.vault.decrypt(r.phone_enc), ";".join(r.zones), r.language,
                                r.consent_source, r.consent_time.isoformat(),
                                r.opted_out_at.isoformat() if r.opted_out_at else ""])
        except OSError as exc:
            raise FloodwarnError(f"cannot write {path}: {exc.strerror or exc}") from None
        return len(rows)

    def for_zone(self, zone: str) -> list[Recipient]:
        with self.store.session() as s:
            rows = s.scalars(select(Subscriber).where(Subscriber.opted_out_at.is_(None),
                                                      Subscriber.unreachable.is_(None),
                                                      Subscriber.roster == self.roster)
                             .order_by(Subscriber.id)).all()
        return [Recipient(r.id, self.vault.decrypt(r.phone_enc), r.language)
                for r in rows if zone in r.zones or ALL_ZONES in r.zones]

    def count(self) -> int:
        with self.store.session() as s:
            return len(s.scalars(select(Subscriber.id).where(Subscriber.roster == self.roster)).all())


def _read_csv_rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of a subscribers CSV with the line each ends on, or a FloodwarnError naming
    the file and what is wrong: unreadable, not UTF-8 (the byte and line), not CSV, or
    without the phone and zones columns."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FloodwarnError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FloodwarnError(f"{path}: not UTF-8 text ({undecodable_at(data, exc)}); save it as UTF-8 "
                             "(in Excel: CSV UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        if reader.fieldnames is not None:
            reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames]
        missing = {"phone", "zones"} - set(reader.fieldnames or ())
        if missing:
            raise FloodwarnError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected "
                                 "phone, zones, language, consent_source")
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise FloodwarnError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None
    return rows


# --------------------------------------------------------------------------- erasure
@dataclass(frozen=True)
class Erasure:
    """What :func:`erase_number` removed; false when the number was on no roster asked."""

    #: (id, roster) of each subscriber row deleted
    subscribers: tuple[tuple[int, str], ...] = ()
    #: the deleted entry's language (the public one's if there were two), for a reply
    language: str | None = None
    #: queued messages to the number that will not be sent
    messages_cancelled: int = 0
    #: reports and audit entries whose text named the number, cleaned of it
    texts_cleaned: int = 0

    def __bool__(self) -> bool:
        return bool(self.subscribers)


def erase_number(store: Store, vault: PhoneVault, phone: str, *, region: str = "GB",
                 rosters: tuple[str, ...] = ROSTERS, source: str,
                 at: datetime | None = None) -> Erasure:
    """Delete ``phone`` for good, with every trace of it, in one transaction: a resident's
    DELETE by SMS and ``floodwarn subscribers delete`` both come here.

    - ``subscribers``: its row on each of ``rosters`` (encrypted number, lookup hash,
      zones, consent) is deleted;
    - ``outbox``: messages still queued for it (held, pending or in doubt) are cancelled, and its
      rows lose their link to it (``subscriber_id`` NULL; they never held the number). A
      message a dispatcher is sending at that very moment can still go out;
    - ``reports``: its reports lose their link, and any report whose text names the number
      (its own or another resident's) has its phone numbers removed
      (:func:`alerts.inbound.redact_numbers`);
    - ``audit``: floodwarn writes no numbers there, but an entry whose detail holds the
      number, its hash or its encrypted form has them removed. One ``subscriber_deleted``
      entry per deleted row records the id, roster and ``source``, never the number.

    ``deliveries`` hold provider message ids and statuses only. When the number is on
    none of ``rosters`` nothing changes and the :class:`Erasure` is empty (false).

    Parameters
    ----------
    phone : str
        The number, E.164 or national in ``region``.
    rosters : tuple of str
        The lists to delete it from (default every one: public and drill).
    source : str
        Who asked, for the audit log, e.g. ``"sms DELETE"``.
    """
    unknown = [r for r in rosters if r not in ROSTERS]
    if unknown:
        raise FloodwarnError(f"unknown roster {unknown[0]!r}; valid: {', '.join(ROSTERS)}")
    e164 = normalise_phone(phone, region)
    national = str(phonenumbers.parse(e164).national_number)
    hashes = [roster_hash(vault, e164, r) for r in rosters]
    at = at or utcnow()
    with store.session.begin() as s:
        rows = s.scalars(select(Subscriber).where(Subscriber.phone_hash.in_(hashes),
                                                  Subscriber.roster.in_(rosters))
                         .order_by(Subscriber.id).with_for_update()).all()
        if not rows:
            return Erasure()
        ids = [r.id for r in rows]
        traces = set(hashes) | {r.phone_enc for r in rows}
        language = next((r.language for r in rows if r.roster == "public"), rows[0].language)
        cancelled = s.execute(update(OutboxRow).where(OutboxRow.subscriber_id.in_(ids),
                                                      OutboxRow.state.in_(("held", "pending", "in_doubt")))
                              .values(state="cancelled", error="subscriber deleted")).rowcount
        s.execute(update(OutboxRow).where(OutboxRow.subscriber_id.in_(ids)).values(subscriber_id=None))
        cleaned = 0
        for report in s.scalars(select(ReportRow)):
            mine = report.subscriber_id in ids
            if mine or national in re.sub(r"\D", "", report.text):
                text = redact_numbers(report.text)
                if national in re.sub(r"\D", "", text):  # written in a way no rule sees as a number
                    text = NUMBER_REMOVED
                cleaned += text != report.text
                report.text = text
            if mine:
                report.subscriber_id = None
        named = or_(*(cast(AuditRow.detail, Text).contains(n, autoescape=True)
                      for n in (national, *traces)))
        for entry in s.scalars(select(AuditRow).where(named)):
            detail = _without_number(entry.detail, national, traces)
            if detail != entry.detail:
                entry.detail = detail
                cleaned += 1
        s.execute(delete(Subscriber).where(Subscriber.id.in_(ids)))
        for r in rows:
            store.audit(s, "subscriber_deleted", {"subscriber_id": r.id, "roster": r.roster,
                                                  "source": source}, time=at)
    log.info("number %s erased (%s; %d queued message(s) cancelled, %d text(s) cleaned), "
             "asked by %s", mask_phone(e164), ", ".join(f"{r.roster} subscriber {r.id}" for r in rows),
             cancelled, cleaned, source)
    return Erasure(tuple((r.id, r.roster) for r in rows), language, cancelled, cleaned)


def _without_number(value, national: str, traces: set[str]):
    """``value`` (JSON) with every string holding the number, its hash or its encrypted form
    cleaned of it (a new object: the ORM sees the change)."""
    if isinstance(value, dict):
        return {k: _without_number(v, national, traces) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_number(v, national, traces) for v in value]
    if isinstance(value, str):
        if any(x in value for x in traces):
            return "[removed]"
        if national in value:
            value = redact_numbers(value)
            return NUMBER_REMOVED if national in value else value
        return value
    if isinstance(value, int) and not isinstance(value, bool) and national in str(value):
        return NUMBER_REMOVED
    return value
