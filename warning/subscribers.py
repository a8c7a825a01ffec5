"""Residents who subscribe by SMS: numbers normalised to E.164, encrypted at rest.

The key comes from ``FLOODWARN_SECRET_KEY`` (or ``FLOODWARN_SECRET_KEY_FILE``): any
string; a Fernet key is derived from it. Lookups use an HMAC of the number, so a
number can be found or deleted without decrypting every row. Numbers are masked
(``alerts.channels.mask_phone``) in every log line.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import phonenumbers
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, select

from alerts.channels import mask_phone

from .errors import ConfigError, FloodwarnError
from .secrets import env_secret
from .storage import Store, Subscriber, utcnow

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
    def from_env(cls) -> "PhoneVault":
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
        return self.vault.lookup_hash(e164 if self.roster == "public" else f"{self.roster}:{e164}")

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

        Every row is checked first (number, zones, language); if any is wrong nothing is
        imported and the error lists every bad row by line number (numbers masked).
        Returns the number of rows imported.
        """
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                missing = {"phone", "zones"} - set(reader.fieldnames or ())
                if missing:
                    raise FloodwarnError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected "
                                         "phone, zones, language, consent_source")
                rows = list(reader)
        except OSError as exc:
            raise FloodwarnError(f"cannot read {path}: {exc.strerror}") from None
        zones_ok = {z.lower(): z for z in known_zones} if known_zones is not None else None
        good, problems = [], []
        for line, row in enumerate(rows, start=2):
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

    def delete(self, phone: str) -> bool:
        """Remove the number for good (its encrypted copy and lookup hash); the audit log
        keeps only that a subscriber was deleted, by id."""
        h = self._hash(normalise_phone(phone, self.region))
        with self.store.session.begin() as s:
            row = s.scalar(select(Subscriber).where(Subscriber.phone_hash == h))
            if row is None:
                return False
            self.store.audit(s, "subscriber_deleted", {"subscriber_id": row.id})
            s.execute(delete(Subscriber).where(Subscriber.id == row.id))
            return True

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
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["phone", "zones", "language", "consent_source", "consent_time", "opted_out_at"])
            for r in rows:
                w.writerow([self.vault.decrypt(r.phone_enc), ";".join(r.zones), r.language, r.consent_source,
                            r.consent_time.isoformat(), r.opted_out_at.isoformat() if r.opted_out_at else ""])
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
