"""Console sign-in: password hashes and login throttling.

Passwords
    Hashed with argon2id (``argon2-cffi``, RFC 9106). The hash string carries its own
    parameters (``$argon2id$v=19$m=19456,t=2,p=1$...``), so when ``[console]`` raises them
    each operator's hash is re-hashed at their next successful sign-in
    (:meth:`Passwords.verify` returns the new hash). Hashes from earlier versions
    (``scrypt$salt$hash``, n = 2**14) are still accepted and re-hashed the same way.
    An unknown name is checked against a dummy hash made with the same parameters, so a
    wrong name and a wrong password take the same time.

Throttling
    Failed sign-ins are counted per account (the name typed, whether or not it exists, so
    throttling tells nothing about which names exist) and per client address, over
    ``[console] login_window_minutes``. Past ``login_free_failures`` (per account, counted
    since its last successful sign-in) or ``login_free_failures_per_address``, each further
    attempt must wait ``login_backoff_seconds * 2**k`` (k = failures past the free ones)
    after the last failure, up to ``login_backoff_max_seconds``: an attempt inside the wait
    is answered "too many attempts" (HTTP 429 with Retry-After) without its password being
    checked. Back-off, not lock-out: the owner of a name an attacker is guessing can sign in
    again once the wait has run, and an address that guesses at many names is slowed by its
    own count.

    The counts come from the audit table (``login_failed`` and ``login`` rows, with the
    operator and address), so every process on the site's database shares them and they
    outlive restarts. The address is the one the web server reports: behind a reverse
    proxy, let uvicorn take it from ``X-Forwarded-For`` (``FORWARDED_ALLOW_IPS`` names the
    proxies it trusts), or every client looks like the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from .errors import FloodwarnError
from .storage import AuditRow, Store, utcnow

MIN_LENGTH = 10

__all__ = ["MIN_LENGTH", "LoginThrottle", "Passwords"]


class Passwords:
    """argon2id hashing with the site's parameters (``[console]`` in the config).

    The defaults are ``[console]``'s (OWASP's minimum for argon2id).

    Parameters
    ----------
    time_cost : int
        Passes over memory (argon2 t).
    memory_kib : int
        Memory per hash, KiB (argon2 m).
    parallelism : int
        Lanes (argon2 p).
    """

    def __init__(self, time_cost: int = 2, memory_kib: int = 19456, parallelism: int = 1) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Passwords:
        c = cfg.console
        return cls(time_cost=c.password_time_cost, memory_kib=c.password_memory_kib,
                   parallelism=c.password_parallelism)

    def hash(self, password: str) -> str:
        if len(password) < MIN_LENGTH:
            raise FloodwarnError(f"a password needs at least {MIN_LENGTH} characters")
        return self.hasher.hash(password)

    def verify(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        """Whether ``password`` matches ``stored``, and the hash to store instead when the
        stored one was made with other (older) parameters or scheme (None: keep it).
        ``stored`` None (no such operator) is checked against a dummy hash, in equal time."""
        if stored is None:
            if self._dummy is None:
                self._dummy = self.hasher.hash("no operator has this password")
            try:
                self.hasher.verify(self._dummy, password)
            except VerificationError:
                pass
            return False, None
        if stored.startswith("scrypt$"):
            ok = _check_scrypt(password, stored)
            return ok, self.hasher.hash(password) if ok else None
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, None
        return True, self.hasher.hash(password) if self.hasher.check_needs_rehash(stored) else None


def _check_scrypt(password: str, stored: str) -> bool:
    """A hash from floodwarn before argon2: ``scrypt$<salt b64>$<hash b64>``, n=2**14, r=8, p=1."""
    try:
        _kind, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=2**14, r=8, p=1, dklen=len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in is not tried now, and for how long."""

    wait_s: float
    by: str  # "account" or "address"

    def message(self) -> str:
        return (f"Too many failed sign-ins from this {'name' if self.by == 'account' else 'address'}: "
                f"try again in {max(1, round(self.wait_s))} s.")


class LoginThrottle:
    """Per-account and per-address back-off of failed sign-ins (see the module docstring).

    Parameters
    ----------
    store : Store
    cfg : ConsoleConfig
        ``login_free_failures``, ``login_free_failures_per_address``,
        ``login_backoff_seconds``, ``login_backoff_max_seconds``, ``login_window_minutes``.
    clock : callable
        UTC now (the tests move it).
    """

    def __init__(self, store: Store, cfg: Any, clock: Any = utcnow) -> None:
        self.store, self.cfg, self.clock = store, cfg, clock

    def _wait(self, failures: list[datetime], free: int, now: datetime) -> float:
        over = len(failures) - free
        if over < 0:
            return 0.0
        backoff = min(self.cfg.login_backoff_max_seconds, self.cfg.login_backoff_seconds * 2.0 ** over)
        return max(0.0, backoff - (now - max(failures)).total_seconds())

    def check(self, name: str, address: str) -> Refusal | None:
        """None when a sign-in as ``name`` from ``address`` may be tried now."""
        now = self.clock()
        since = now - timedelta(minutes=self.cfg.login_window_minutes)
        with self.store.session() as s:
            rows = s.execute(select(AuditRow.time, AuditRow.event, AuditRow.detail)
                             .where(AuditRow.event.in_(("login_failed", "login")), AuditRow.time > since)
                             .order_by(AuditRow.id)).all()
        account: list[datetime] = []
        address_: list[datetime] = []
        for time, event, detail in rows:
            detail = detail or {}
            if event == "login":
                if detail.get("operator") == name:
                    account.clear()  # a success starts the account's count afresh
                continue
            if detail.get("operator") == name:
                account.append(time)
            if detail.get("address") == address:
                address_.append(time)
        waits = [Refusal(self._wait(account, self.cfg.login_free_failures, now), "account"),
                 Refusal(self._wait(address_, self.cfg.login_free_failures_per_address, now), "address")]
        worst = max(waits, key=lambda r: r.wait_s)
        return worst if worst.wait_s > 0 else None

    def failed(self, name: str, address: str) -> None:
        with self.store.session.begin() as s:
            self.store.audit(s, "login_failed", {"operator": name[:120], "address": address}, time=self.clock())

    def succeeded(self, name: str, address: str) -> None:
        with self.store.session.begin() as s:
            self.store.audit(s, "login", {"operator": name, "address": address}, time=self.clock())

