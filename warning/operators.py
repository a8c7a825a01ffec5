"""Telling the operators: one function every part of the service uses when something needs
a person (a feed late or failing, a cycle or a zone that failed, messages whose fate the
SMS provider cannot confirm).

Each notice goes to three places: the log (a warning), the audit table (the console's
alert log lists it), and, with ``[service] operator_phones``, an SMS to each operator sent
straight through the channel (not through the outbox: the outbox may be what is broken).
Callers decide how often to tell (once per gap, once per episode); this module only tells.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from alerts.channels import Channel, OutgoingMessage, get_channel, mask_phone
from alerts.errors import DeliveryError

from .config import Config
from .errors import USER_ERRORS, ConfigError
from .secrets import env_secret
from .storage import Store, utcnow
from .subscribers import normalise_phone

log = logging.getLogger(__name__)


def make_channel(cfg: Config) -> Channel:
    """The SMS channel the config asks for: Twilio when credentials are set ("auto")."""
    sid = env_secret("TWILIO_ACCOUNT_SID")
    token = env_secret("TWILIO_AUTH_TOKEN")
    choice = cfg.channels.sms
    if choice == "auto":
        choice = "twilio" if sid and token else "file"
    if choice == "twilio":
        if not (sid and token):
            raise ConfigError("channels.sms: 'twilio' needs TWILIO_ACCOUNT_SID and "
                              "TWILIO_AUTH_TOKEN in the environment")
        tw = cfg.channels.twilio
        try:
            return get_channel("twilio", account_sid=sid, auth_token=token,
                               from_number=tw.from_number,
                               messaging_service_sid=tw.messaging_service_sid,
                               base_url=env_secret("FLOODWARN_TWILIO_BASE_URL"),
                               status_callback=tw.status_callback,
                               validity_period=tw.validity_period_s)
        except ValueError as exc:
            raise ConfigError(f"channels.twilio: {exc}") from None
    return get_channel("file", path=cfg.output_dir / cfg.channels.sms_log)


def tell_operators(cfg: Config, store: Store, problem: str, *, at: datetime | None = None,
                   event: str = "data_problem", channel: Channel | None = None,
                   detail: dict[str, Any] | None = None, run_id: str | None = None,
                   zone: str | None = None, audit: bool = True) -> int:
    """Tell the operators about ``problem``: log it, audit it as ``event`` (shown in the
    console's log), and text it to ``[service] operator_phones``.

    Parameters
    ----------
    problem : str
        One plain sentence that says what happened and what stands meanwhile.
    at : datetime, optional
        The time to record (a replay's simulated clock); default now.
    event : str
        Audit event name: ``data_problem``, ``zone_failed``, ``cycle_failed``,
        ``delivery_in_doubt``, ...
    channel : Channel, optional
        Where the SMS go; by default the config's channel (:func:`make_channel`).
    detail : dict, optional
        More fields for the audit row (never phone numbers).
    audit : bool
        False when the caller has already recorded the event (the cycle records a failed
        zone with its run): then only the log and the SMS.

    Returns
    -------
    int
        How many operators were texted.
    """
    at = at or utcnow()
    log.warning("%s: %s", event.replace("_", " "), problem)
    if audit:
        with store.session.begin() as s:
            store.audit(s, event, {"problem": problem, **(detail or {})}, time=at, run_id=run_id,
                        zone=zone)
    roster = cfg.service.operator_phones
    if not roster:
        return 0
    body = f"floodwarn {cfg.site.name}: {problem}"[:300]
    texted = 0
    try:
        channel = channel or make_channel(cfg)
    except USER_ERRORS as exc:
        log.error("could not text the operators (%s): %s", exc, problem)
        return 0
    for i, phone in enumerate(roster):
        try:
            to = normalise_phone(phone, cfg.subscribers.default_region)
            channel.send(OutgoingMessage(to=to, body=body, key=f"ops:{event}:{at:%Y%m%dT%H%M%S}:{i}"))
            texted += 1
        except (DeliveryError, *USER_ERRORS) as exc:
            log.error("could not text operator %s: %s", mask_phone(phone), exc)
    return texted


def zone_failed_text(failure: dict[str, str], at: datetime) -> str:
    """What operators are told about a zone whose alert stage failed in the cycle at ``at``."""
    return (f"zone {failure['zone']} failed in the cycle at {at:%Y-%m-%d %H:%M}Z and kept its level "
            f"and notices; the other zones went on. Error: {failure['error']}")
