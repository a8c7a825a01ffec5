"""``floodwarn subscribers ...``, ``floodwarn alerts ...``, ``floodwarn dispatch`` and
``floodwarn outbox ...``.

Phone numbers appear in clear only in ``subscribers export`` (a file the operator asked
for); every listing masks them.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .cli import ConfigOpt, _friendly, _parse_time, _setup_logging, app, console
from .errors import FloodwarnError
from .logins import Passwords

subscribers_app = typer.Typer(help="Residents subscribed by SMS: add, import, export, delete, list.",
                              no_args_is_help=True)
alerts_app = typer.Typer(help="The approval queue and the audit log of alerts.", no_args_is_help=True)
operators_app = typer.Typer(help="Who may sign in to the web console.", no_args_is_help=True)
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(alerts_app, name="alerts")
app.add_typer(operators_app, name="operators")


@operators_app.command("add")
@_friendly
def operators_add(config: ConfigOpt, name: Annotated[str, typer.Argument(help="sign-in name")],
                  role: Annotated[str, typer.Option(help="manager or operator")] = "manager") -> None:
    """Add an operator (or set a new password): asks for the password, stores its argon2id hash.
    The password can also come from FLOODWARN_OPERATOR_PASSWORD or the file named by
    FLOODWARN_OPERATOR_PASSWORD_FILE (scripts)."""
    from .console import add_operator
    from .secrets import env_secret

    password = env_secret("FLOODWARN_OPERATOR_PASSWORD") or typer.prompt(
        "password (at least 10 characters)", hide_input=True, confirmation_prompt=True)
    cfg, store = _open(config)
    add_operator(store, name, password, role, passwords=Passwords.from_config(cfg))
    console.print(f"operator {name} ({role}) can sign in at /console")


@operators_app.command("passwd")
@_friendly
def operators_passwd(config: ConfigOpt, name: Annotated[str, typer.Argument(help="sign-in name")]) -> None:
    """Set a new password for an operator (asked for, or FLOODWARN_OPERATOR_PASSWORD[_FILE]);
    every console session signed in with the old one ends at once."""
    from .console import add_operator
    from .secrets import env_secret
    from .storage import Operator

    cfg, store = _open(config)
    with store.session() as s:
        row = s.get(Operator, name)
        if row is None:
            raise FloodwarnError(f"no operator named {name!r}; add one with 'floodwarn operators add'")
        role = row.role
    password = env_secret("FLOODWARN_OPERATOR_PASSWORD") or typer.prompt(
        "new password (at least 10 characters)", hide_input=True, confirmation_prompt=True)
    add_operator(store, name, password, role, passwords=Passwords.from_config(cfg))
    console.print(f"new password set for {name}; their console sessions have ended")


@operators_app.command("remove")
@_friendly
def operators_remove(config: ConfigOpt, name: Annotated[str, typer.Argument(help="sign-in name")]) -> None:
    """Remove an operator: they can no longer sign in, and their console sessions end at once."""
    from .console import remove_operator

    _cfg, store = _open(config)
    ended = remove_operator(store, name)
    console.print(f"operator {name} removed; {ended} console session(s) ended")


@operators_app.command("list")
@_friendly
def operators_list(config: ConfigOpt) -> None:
    """The operators, their roles and open console sessions (never a password hash)."""
    from .console import list_operators

    _cfg, store = _open(config)
    table = Table("name", "role", "open sessions", title="console operators")
    for op in list_operators(store):
        table.add_row(op["name"], op["role"], str(op["sessions"]))
    console.print(table)


def _open(config: Path):
    from .config import load_config
    from .storage import Store

    cfg = load_config(config)
    return cfg, Store(cfg.db_url)


def _registry(config: Path, drill: bool = False):
    from .subscribers import PhoneVault, SubscriberRegistry

    cfg, store = _open(config)
    return cfg, store, SubscriberRegistry(store, PhoneVault.from_env(), cfg.subscribers.default_region,
                                          roster="drill" if drill else "public")


DrillOpt = Annotated[bool, typer.Option("--drill", help="the drill roster (the numbers drills text), "
                                                       "not the public subscribers")]


def _check_zones(cfg, zones: list[str]) -> list[str]:
    known = {z.code: z.code for z in cfg.zones} | {z.code.lower(): z.code for z in cfg.zones}
    bad = [z for z in zones if z not in known and z.lower() not in known]
    if bad:
        raise typer.BadParameter(f"unknown zone(s) {', '.join(bad)}; zones of this site: "
                                 f"{', '.join(z.code for z in cfg.zones)}")
    return [known.get(z, known.get(z.lower())) for z in zones]


# --------------------------------------------------------------------------- subscribers
@subscribers_app.command("add")
@_friendly
def subscribers_add(
        config: ConfigOpt,
        phone: Annotated[str, typer.Argument(help="phone number (E.164, or national in the site's region)")],
        zone: Annotated[list[str], typer.Option("--zone", "-z", help="zone code (repeat for several); "
                                                "with --drill, default every zone")] = [],
        language: Annotated[str, typer.Option(help="language of the messages (en, es, ...)")] = "en",
        consent_source: Annotated[str, typer.Option(help="how the resident consented, e.g. 'paper form 2025-11'")]
        = "operator (CLI)",
        drill: DrillOpt = False) -> None:
    """Subscribe a resident to one or more zones (recording how they consented), or with
    --drill add a number to the drill roster."""
    from alerts.channels import mask_phone

    from .subscribers import ALL_ZONES

    cfg, _store, reg = _registry(config, drill)
    if not zone and not drill:
        raise typer.BadParameter("give at least one --zone")
    zones = _check_zones(cfg, zone) if zone else [ALL_ZONES]
    sid = reg.add(phone, zones, language, consent_source)
    console.print(f"{'drill roster entry' if drill else 'subscriber'} {sid} ({mask_phone(phone)}) in "
                  f"{'every zone' if zones == [ALL_ZONES] else ', '.join(zones)}, language {language}")


@subscribers_app.command("import")
@_friendly
def subscribers_import(config: ConfigOpt,
                       csv_path: Annotated[Path, typer.Argument(help="CSV: phone, zones (;-separated), "
                                                                     "language, consent_source")],
                       drill: DrillOpt = False) -> None:
    """Import subscribers (or with --drill the drill roster) from a CSV file (existing
    numbers get the new zones added)."""
    cfg, _store, reg = _registry(config, drill)
    n = reg.import_csv(csv_path, known_zones=[z.code for z in cfg.zones])
    what = "drill roster entries" if drill else "subscribers"
    console.print(f"imported {n} rows from {csv_path}; {reg.count()} {what} in all")


@subscribers_app.command("export")
@_friendly
def subscribers_export(config: ConfigOpt,
                       csv_path: Annotated[Path, typer.Argument(help="file to write (holds numbers in clear)")],
                       drill: DrillOpt = False) -> None:
    """Export every subscriber (or the drill roster) to CSV (numbers in clear: personal data)."""
    _cfg, _store, reg = _registry(config, drill)
    n = reg.export_csv(csv_path)
    console.print(f"wrote {n} subscribers to {csv_path} (phone numbers in clear: personal data)")


@subscribers_app.command("delete")
@_friendly
def subscribers_delete(config: ConfigOpt, phone: Annotated[str, typer.Argument(help="the number to remove")],
                       drill: DrillOpt = False) -> None:
    """Delete a number for good, as a resident's DELETE by SMS does: its subscriber and drill
    roster entries (with --drill, only the drill roster entry) and every trace of it
    (messages queued to it, the number in reports)."""
    from alerts.channels import mask_phone

    from .subscribers import ROSTERS, erase_number, normalise_phone

    _cfg, store, reg = _registry(config, drill)
    shown = mask_phone(normalise_phone(phone, reg.region))
    erased = erase_number(store, reg.vault, phone, region=reg.region,
                          rosters=(reg.roster,) if drill else ROSTERS, source="operator (CLI)")
    if not erased:
        console.print(f"no {'drill roster entry' if drill else 'subscriber'} with number {shown}")
        raise typer.Exit(1)
    where = " and ".join("the drill roster" if roster == "drill" else "the subscribers"
                         for _, roster in erased.subscribers)
    console.print(f"deleted {shown} from {where}; {erased.messages_cancelled} queued "
                  f"message(s) to it cancelled, {erased.texts_cleaned} report(s) or log entries "
                  "cleaned of it")


@subscribers_app.command("list")
@_friendly
def subscribers_list(config: ConfigOpt, zone: Annotated[str, typer.Option(help="only this zone")] = "",
                     drill: DrillOpt = False) -> None:
    """List subscribers (or with --drill the drill roster) with masked numbers."""
    from sqlalchemy import select

    from alerts.channels import mask_phone

    from .storage import Subscriber

    _cfg, store, reg = _registry(config, drill)
    table = Table("id", "phone", "zones", "language", "consent", "state",
                  title="drill roster" if drill else "subscribers")
    with store.session() as s:
        for r in s.scalars(select(Subscriber).where(Subscriber.roster == reg.roster).order_by(Subscriber.id)):
            if zone and zone not in r.zones:
                continue
            state = ("opted out" if r.opted_out_at else f"unreachable ({r.unreachable})" if r.unreachable
                     else "active")
            table.add_row(str(r.id), mask_phone(reg.vault.decrypt(r.phone_enc)), ",".join(r.zones), r.language,
                          f"{r.consent_source} {r.consent_time:%Y-%m-%d}", state)
    console.print(table)


# --------------------------------------------------------------------------- alerts
@alerts_app.command("pending")
@_friendly
def alerts_pending(config: ConfigOpt) -> None:
    """Notices waiting for a manager's approval."""
    from .outbox import pending_approvals

    _cfg, store = _open(config)
    items = pending_approvals(store)
    if not items:
        console.print("nothing waits for approval")
        return
    table = Table("id", "zone", "level", "requested (UTC)", "time-out (UTC)", "SMS held", "headline")
    for p in items:
        table.add_row(str(p.id), p.zone, p.level, f"{p.requested_at:%Y-%m-%d %H:%M}",
                      f"{p.release_at:%Y-%m-%d %H:%M}: {p.on_timeout}" if p.release_at else "none",
                      str(p.messages), p.headline)
    console.print(table)


def _decide(config: Path, approval_id: int, approve: bool, by: str, text: str | None, note: str | None) -> None:
    """Approve or reject as manager ``by``, who proves it with their console password
    (asked for, or FLOODWARN_OPERATOR_PASSWORD / _FILE for scripts)."""
    from .alerting import publisher
    from .console import verify_operator
    from .outbox import decide_approval, require_manager
    from .secrets import env_secret

    cfg, store = _open(config)
    require_manager(store, by)
    password = env_secret("FLOODWARN_OPERATOR_PASSWORD") or typer.prompt(f"password of {by}", hide_input=True)
    verify_operator(store, by, password, passwords=Passwords.from_config(cfg))
    a = decide_approval(store, approval_id, approve=approve, by=by, text=text, note=note,
                        publish=publisher(cfg))
    console.print(f"{a.alert_identifier}: {a.state} by {a.decided_by} at {a.decided_at:%Y-%m-%d %H:%M} UTC")


@alerts_app.command("approve")
@_friendly
def alerts_approve(config: ConfigOpt, approval_id: Annotated[int, typer.Argument(help="id from 'alerts pending'")],
                   by: Annotated[str, typer.Option(help="the manager who approves (asked for their password)")],
                   text: Annotated[str, typer.Option(help="SMS text to send instead of the template's")] = "",
                   note: Annotated[str, typer.Option(help="a note for the log")] = "") -> None:
    """Approve a held notice: publish it and release its SMS (optionally with your own text)."""
    _decide(config, approval_id, True, by, text or None, note or None)


@alerts_app.command("reject")
@_friendly
def alerts_reject(config: ConfigOpt, approval_id: Annotated[int, typer.Argument(help="id from 'alerts pending'")],
                  by: Annotated[str, typer.Option(help="the manager who rejects (asked for their password)")],
                  note: Annotated[str, typer.Option(help="why, for the log")] = "") -> None:
    """Reject a held notice: it is never published, its SMS are cancelled and the zone stays at
    its published level; the next cycle decides afresh."""
    _decide(config, approval_id, False, by, None, note or None)


@alerts_app.command("log")
@_friendly
def alerts_log(config: ConfigOpt,
               zone: Annotated[str, typer.Option("--zone", "-z", help="only this zone")] = "",
               event: Annotated[str, typer.Option(help="only this event (decision, sent, approved, ...)")] = "",
               since: Annotated[str, typer.Option(help="ISO 8601 time with zone")] = "",
               limit: Annotated[int, typer.Option(help="newest N entries")] = 50,
               as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False
               ) -> None:
    """The append-only audit log: decisions, approvals, sends, deliveries, opt-outs."""
    from sqlalchemy import select

    from .storage import AuditRow

    _cfg, store = _open(config)
    q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if zone:
        q = q.where(AuditRow.zone == zone)
    if event:
        q = q.where(AuditRow.event == event)
    if since:
        q = q.where(AuditRow.time >= _parse_time(since))
    with store.session() as s:
        rows = list(reversed(s.scalars(q).all()))
    if as_json:
        for r in rows:
            typer.echo(json.dumps({"id": r.id, "time": r.time.isoformat(), "zone": r.zone, "event": r.event,
                                   "run_id": r.run_id, "detail": r.detail}, default=str))
        return
    table = Table("time (UTC)", "zone", "event", "detail")
    for r in rows:
        d = r.detail or {}
        text = "; ".join(d.get("reasons", [])[:2]) if r.event == "decision" else ", ".join(
            f"{k}={v}" for k, v in d.items() if v not in (None, "", []))
        if r.event == "decision":
            text = f"{d.get('action')} -> {d.get('level_name')}: {text}"
        table.add_row(f"{r.time:%Y-%m-%d %H:%M}", r.zone or "", r.event, text[:160])
    console.print(table)


# --------------------------------------------------------------------------- dispatcher
@app.command()
@_friendly
def dispatch(config: ConfigOpt,
             once: Annotated[bool, typer.Option(help="send what is due, then stop (no waiting for retries)")]
             = False,
             forever: Annotated[bool, typer.Option(help="keep polling for new messages until stopped")] = False,
             lease_s: Annotated[float, typer.Option(help="override channels.claim_lease_s")] = 0.0,
             verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Send the SMS outbox: safe to run several at once, and to kill and restart."""
    from .alerting import make_dispatcher
    from .operators import make_channel

    _setup_logging(verbose)
    cfg, store = _open(config)
    d = make_dispatcher(cfg, store, make_channel(cfg))
    if lease_s > 0:
        d.lease = timedelta(seconds=lease_s)
    total = d.drain() if once else d.run(until_empty=not forever)
    console.print(f"sent {total.sent} ({total.segments} segments), retried {total.retried}, "
                  f"failed {total.failed}, cancelled {total.cancelled}, recovered {total.recovered}, "
                  f"requeued {total.requeued}, auto-released {total.released}"
                  + (f"; waited {total.slept_s:.1f} s for the rate limit" if total.slept_s else ""))
    for e in list(dict.fromkeys(total.errors))[:5]:
        console.print(f"[yellow]in doubt:[/] {e}", highlight=False)
    if total.in_doubt:
        console.print(f"[bold red]{total.in_doubt} message(s) in doubt were "
                      + ("sent again (a duplicate is possible)" if d.in_doubt_action == "resend" else
                         "held: see 'floodwarn outbox in-doubt'") + "[/]", highlight=False)
    if total.lost:
        console.print(f"[yellow]{total.lost} claim(s) were found taken over by another dispatcher "
                      "(see 'floodwarn alerts log --event claim_lost')[/]", highlight=False)


# --------------------------------------------------------------------------- the outbox
outbox_app = typer.Typer(help="The SMS outbox: messages whose fate is in doubt, and settling them.",
                         no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")

AlertOpt = Annotated[str, typer.Option("--alert", "-a", help="only this alert (identifier)")]
AllOpt = Annotated[bool, typer.Option("--all", help="every alert's held messages")]
ByOpt = Annotated[str, typer.Option(help="who decides (for the audit log)")]


@outbox_app.command("in-doubt")
@_friendly
def outbox_in_doubt(config: ConfigOpt, alert: AlertOpt = "") -> None:
    """Messages that may or may not have gone out, held or still being asked about (masked)."""
    from collections import Counter

    from .outbox import messages_in_doubt

    _cfg, store = _open(config)
    rows = messages_in_doubt(store, alert or None)
    if not rows:
        console.print("no message is in doubt")
        return
    table = Table("alert", "zone", "id", "to", "status", "in doubt since (UTC)", "why")
    for r in rows:
        table.add_row(r.alert, r.zone, str(r.id), r.to_masked, r.status,
                      f"{r.since:%Y-%m-%d %H:%M:%S}" if r.since else "", (r.error or "")[:100])
    console.print(table)
    for (a, status), n in sorted(Counter((r.alert, r.status) for r in rows).items()):
        console.print(f"{a}: {n} {status}", highlight=False)
    if any(r.status == "held" for r in rows):
        console.print("settle held ones with 'floodwarn outbox resend' (a resident may get it twice) or "
                      "'floodwarn outbox mark-sent' (e.g. the provider's console shows it went out)")


def _settle(config: Path, action: str, alert: str, every: bool, by: str) -> None:
    from .outbox import settle_in_doubt

    if bool(alert) == every:
        raise typer.BadParameter("give --alert ALERT or --all")
    _cfg, store = _open(config)
    done = settle_in_doubt(store, action=action, by=by, alert=alert or None)
    if not done:
        console.print("no message is held in doubt")
    for a, n in sorted(done.items()):
        console.print(f"{a}: {n} message(s) " + ("queued to be sent again; run 'floodwarn dispatch'"
                                                if action == "resend" else "recorded as sent"), highlight=False)


@outbox_app.command("resend")
@_friendly
def outbox_resend(config: ConfigOpt, by: ByOpt, alert: AlertOpt = "", every: AllOpt = False) -> None:
    """Queue held messages in doubt to be sent again (a resident may get one twice)."""
    _settle(config, "resend", alert, every, by)


@outbox_app.command("mark-sent")
@_friendly
def outbox_mark_sent(config: ConfigOpt, by: ByOpt, alert: AlertOpt = "", every: AllOpt = False) -> None:
    """Record held messages in doubt as sent (you checked they went out)."""
    _settle(config, "sent", alert, every, by)

