"""A stateful model of what the public and the residents must see, and a hypothesis state
machine that drives the real alert stage, approval queue, dispatcher, webhooks and web app
against it.

The machine (:class:`WarningMachine`) runs random sequences of steps on a site of three
zones and four residents:

- **cycle**: the simulated clock moves on, the service's housekeeping settles approval
  time-outs, then the cycle's alert stage decides every zone from random observed and
  forecast values (``observed_stage_m``, ``forecast_peak_discharge_m3s``; sometimes missing),
  inside a recorded run, exactly as ``run_cycle`` does; then the outbox is dispatched;
- **approve** / **reject** a held raise, as a manager;
- **time-out**: time passes until a held raise's time-out settles it;
- **STOP** / **START** texted by a resident to the signed inbound webhook;
- every dispatch may be **killed** part-way (after a message was handed to the provider and
  before it was recorded); a second dispatcher recovers after the claim lease.

Sending goes through the real Twilio SDK to the local Twilio-compatible server.

The oracle is :class:`Model`, written from the rules a manager reads in the README, not
from the code: with persistence 1, no hysteresis and no minimum hold, a zone's published
level moves to the highest level met, except that a raise to a level with ``approval``
waits for a manager (approve: published; reject: nothing changes) or the level's
time-out (publish or reject); a pending request is refreshed by the same raise and
dropped by anything else. Every published change with SMS reaches each resident who was
subscribed and not opted out when it was queued, and still is when it is sent, exactly once.

After every step the machine checks: no cycle and no zone failed; the published levels and
pending requests are the model's; every zone's published chain can be continued (an
all-clear built on it is valid CAP); nothing held, rejected, withdrawn or superseded is in
the public folder, the feed or the public API; and the provider received exactly the
model's messages, each once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from alerts.channels import TwilioChannel
from alerts.levels import Decision, ZoneState
from alerts.notices import NoticeContext, ZoneInfo, build_notice
from tests.alerts.twilio_fake import FakeTwilio
from warning import alerting
from warning.config import load_config
from warning.console import add_operator
from warning.outbox import Dispatcher, decide_approval, release_due
from warning.site import Site
from warning.storage import AlertRow, ApprovalRow, OutboxRow, Store, ZoneStateRow, finish_run, recorded_run
from warning.subscribers import PhoneVault, SubscriberRegistry
from warning.webhooks import INBOUND_PATH, make_router
from warning.web import create_app

T0 = datetime(2025, 11, 14, tzinfo=UTC)
ZONES = ("Z1", "Z2", "Z3")
RESIDENTS = {"+447700900301": (("Z1",), "en"), "+447700900302": (("Z1", "Z2"), "en"),
             "+447700900303": (("Z2", "Z3"), "es"), "+447700900304": (("Z3",), "en")}
TIMEOUT_MIN = 60
LEASE = timedelta(seconds=30)
BASE = "https://flood.example.org/machine"
SECRET = "machine-test-secret"

LEVELS = """
[[levels]]
name = "advisory"
title = "Flood Advisory"
colour = "#f5c400"
severity = "Minor"
urgency = "Expected"
certainty = "Possible"
response_type = "Monitor"
instruction = "Keep an eye on the brook."

[[levels]]
name = "warning"
title = "Flood Warning"
colour = "#e8770e"
severity = "Severe"
urgency = "Immediate"
certainty = "Likely"
response_type = "Avoid"
instruction = "Move valuables upstairs and keep away from the water."
approval = true
approval_timeout_minutes = {timeout}
on_approval_timeout = "publish"

[[levels]]
name = "severe"
title = "Severe Flood Warning"
colour = "#c8102e"
severity = "Extreme"
urgency = "Immediate"
certainty = "Likely"
response_type = "Evacuate"
instruction = "Leave now for higher ground."
approval = true
approval_timeout_minutes = {timeout}
on_approval_timeout = "reject"
"""
THRESHOLDS = {1: (1.0, 10.0), 2: (2.0, 30.0), 3: (3.0, 80.0)}  # rank: (stage m, flow m3/s)
APPROVAL = {1: None, 2: "publish", 3: "reject"}  # rank: None, or what the time-out does


def site_config(root: Path) -> Path:
    zones = "".join(
        f'\n[[zones]]\ncode = "{z}"\ngauge = "G1"\n[zones.thresholds]\n'
        + "".join(f'{name} = {{ any = ["observed_stage_m >= {s}", "forecast_peak_discharge_m3s >= {d}"] }}\n'
                  for name, (s, d) in zip(("advisory", "warning", "severe"), THRESHOLDS.values(), strict=True))
        for z in ZONES)
    (root / "site.toml").write_text(f"""
[site]
name = "Machine valley"
code = "MV"
zones = "zones.geojson"
output_dir = "out"

[[gauges]]
id = "G1"
name = "Machine brook"
lon = -1.0
lat = 52.0

[sources.gauges]
kind = "gauge_csv"
path = "gauges.csv"

[model.lumped]   # named so the forecast flow metric is valid; the machine gives the metrics
params = {{ s_mm = 100, sa_mm = 20, lp = 0.7, tau_perc_h = 200, quick_fraction = 0.5, n_quick = 2, k_quick_h = 5, k_slow_h = 200 }}
area_km2 = 10

{LEVELS.format(timeout=TIMEOUT_MIN)}

[policy]
persistence = 1
hysteresis = 0.0
min_hold_hours = 0
expiry_hours = 6
renew_before_hours = 1
escalate_on_observed = true
{zones}
[channels]
sms = "file"
max_segments = 4

[notices]
sender = "floodwarn-machine@example.org"
sender_name = "Machine valley flood warnings"
web_base = "{BASE}"
languages = ["en", "es"]
""")
    feats = [{"type": "Feature", "properties": {"code": z, "name": f"Zone {z}"},
              "geometry": {"type": "Polygon", "coordinates": [[[x, 51.99], [x + .02, 51.99], [x + .02, 52.01],
                                                               [x, 52.01], [x, 51.99]]]}}
             for z, x in zip(ZONES, (-1.01, -0.95, -0.9), strict=True)]
    (root / "zones.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    (root / "gauges.csv").write_text("station,time,stage\nG1,2025-11-14T00:00Z,1.0\n")
    return root / "site.toml"


def met(stage: float | None, depth: float | None) -> int:
    """The highest level whose criteria hold (a missing value holds no criterion)."""
    rank = 0
    for r, (s, d) in THRESHOLDS.items():
        if (stage is not None and stage >= s) or (depth is not None and depth >= d):
            rank = r
    return rank


@dataclass
class Request:
    level: int
    release_at: datetime
    alert: str
    recipients: frozenset[str]


@dataclass
class Model:
    """What must be published and delivered, from the README's rules."""

    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ZONES, 0))
    pending: dict[str, Request] = field(default_factory=dict)
    opted_out: set[str] = field(default_factory=set)
    #: (alert identifier, phone) -> messages the provider must have accepted
    expected: Counter = field(default_factory=Counter)
    #: published SMS waiting for the next dispatch: alert -> recipients at queue time
    to_send: dict[str, frozenset[str]] = field(default_factory=dict)

    def recipients(self, zone: str) -> frozenset[str]:
        return frozenset(p for p, (zones, _) in RESIDENTS.items() if zone in zones and p not in self.opted_out)

    def settle_due(self, now: datetime) -> list[str]:
        done = []
        for zone, req in list(self.pending.items()):
            if req.release_at <= now:
                del self.pending[zone]
                if APPROVAL[req.level] == "publish":
                    self.publish(zone, req.level, req.alert, req.recipients)
                done.append(zone)
        return done

    def publish(self, zone: str, level: int, alert: str, recipients: frozenset[str]) -> None:
        self.published[zone] = level
        self.to_send[alert] = recipients

    def dispatched(self) -> None:
        for alert, recipients in self.to_send.items():
            for phone in recipients - self.opted_out:
                self.expected[(alert, phone)] += 1
        self.to_send.clear()


class Killed(BaseException):
    """The dispatcher process dies (SIGKILL): nothing after this runs, nothing is caught."""


class KillAfter:
    """A channel that dies right after the provider accepted its ``n``-th message."""

    def __init__(self, channel: TwilioChannel, n: int):
        self.channel, self.n, self.sent = channel, n, 0
        self.name = channel.name

    def send(self, msg):
        res = self.channel.send(msg)
        self.sent += 1
        if self.sent >= self.n:
            raise Killed
        return res

    def find_sent(self, msg, since):
        return self.channel.find_sent(msg, since)


class WarningMachine(RuleBasedStateMachine):
    """See the module docstring. Counters of what happened are kept in :attr:`counts`
    (class-wide, for the long run in ``benchmarks/bench_warning_machine.py``)."""

    counts: Counter = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="fw-machine-"))
        self._env = {k: os.environ.get(k) for k in ("FLOODWARN_SECRET_KEY", "FLOODWARN_SECRET_KEY_FILE")}
        os.environ["FLOODWARN_SECRET_KEY"] = SECRET
        os.environ.pop("FLOODWARN_SECRET_KEY_FILE", None)
        self.cfg = load_config(site_config(self.root))
        self.store = Store(self.cfg.db_url)
        self.site = Site.load(self.cfg)
        self.now = T0
        add_operator(self.store, "mgr", "manager password", "manager")
        reg = SubscriberRegistry(self.store, PhoneVault.from_env(), "GB")
        for phone, (zones, language) in RESIDENTS.items():
            reg.add(phone, list(zones), language=language, consent_source="machine")
        self.fake = FakeTwilio(unsubscribed=()).start()
        self.channel = TwilioChannel(self.fake.account_sid, self.fake.auth_token, from_number="+15005550006",
                                     base_url=self.fake.base_url)
        hooks = FastAPI()
        hooks.include_router(make_router(self.store, auth_token=self.fake.auth_token, public_base_url=BASE,
                                         vault=PhoneVault.from_env(), zones={z: z for z in ZONES},
                                         sender_name="Machine valley", clock=lambda: self.now))
        self.hooks = TestClient(hooks)
        self.web = TestClient(create_app(self.cfg, store=self.store))
        self.model = Model()
        self.sids = 0

    def teardown(self) -> None:
        self.counts["messages_delivered"] += len(self.fake.messages)
        self.counts["examples"] += 1
        self.hooks.close()
        self.web.close()
        self.fake.stop()
        self.store.dispose()
        shutil.rmtree(self.root, ignore_errors=True)
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # ------------------------------------------------------------------ helpers
    def dispatch(self, kill_after: int | None) -> None:
        """Send what is due; maybe die part-way, then a second dispatcher recovers."""
        publish = alerting.publisher(self.cfg, lambda: self.now)
        if kill_after is not None:
            d = Dispatcher(self.store, KillAfter(self.channel, kill_after), lease=LEASE, clock=lambda: self.now,
                           publish=publish)
            try:
                d.drain()
            except Killed:
                self.counts["dispatcher_killed"] += 1
            self.now += LEASE + timedelta(seconds=1)  # its claims are in doubt once the lease ran out
        stats = Dispatcher(self.store, self.channel, lease=LEASE, clock=lambda: self.now, publish=publish).drain()
        self.counts["recovered_after_kill"] += stats.recovered
        self.counts["requeued_after_kill"] += stats.requeued
        self.model.dispatched()

    def pending_zones(self) -> list[str]:
        return sorted(self.model.pending)

    # ------------------------------------------------------------------ rules
    @rule(minutes=st.sampled_from([15, 30, 60, 120, 240]),
          values=st.lists(st.tuples(st.sampled_from([None, 0.5, 1.5, 2.5, 3.5]),
                                    st.sampled_from([None, 0.0, 20.0, 50.0, 100.0])), min_size=3, max_size=3),
          kill_after=st.integers(1, 3) | st.none())
    def cycle(self, minutes, values, kill_after):
        self.now += timedelta(minutes=minutes)
        at = self.now.replace(second=0, microsecond=0)
        # the service's housekeeping (every minute) settles time-outs before the next cycle
        if release_due(self.store, self.now, alerting.publisher(self.cfg, lambda: self.now)):
            self.counts["timeouts_settled"] += len(self.model.settle_due(self.now))
            self.dispatch(None)  # the dispatcher job runs every few seconds, long before the cycle
        assert not self.model.settle_due(self.now)
        metrics = {z: {"observed_stage_m": float("nan") if s is None else s,
                       "forecast_peak_discharge_m3s": float("nan") if d is None else d}
                   for z, (s, d) in zip(ZONES, values, strict=True)}
        run_id = f"{at:%Y%m%dT%H%MZ}-live"
        with recorded_run(self.store, run_id, at=at, scope="live", forecast_issued=at, forecast_file=None):
            stage = alerting.decide_and_notify(
                self.site, self.cfg, self.store, at, metrics, {z: {} for z in ZONES}, run_id=run_id,
                scope="live", drill=None, run_info={"model_run": run_id}, problems=[])
            finish_run(self.store, run_id, "done", {"decisions": stage.decisions})
        assert stage.failed == [], stage.failed
        self.counts["cycles"] += 1
        records = {d["zone"]: d for d in stage.decisions}
        for zone, (s, d) in zip(ZONES, values, strict=True):
            target, published = met(s, d), self.model.published[zone]
            rec = records[zone]
            req = self.model.pending.get(zone)
            if target > published and APPROVAL[target] is not None:  # held for a manager
                assert rec["action"] == "raise" and rec["held"], rec
                recipients = self.model.recipients(zone)
                if req is not None and req.level == target:  # the same raise: refreshed
                    release = req.release_at
                    self.counts["requests_refreshed"] += 1
                else:
                    release = at + timedelta(minutes=TIMEOUT_MIN)
                    if req is not None:
                        release = min(release, req.release_at)
                    self.counts["requests_opened"] += 1
                self.model.pending[zone] = Request(target, release, rec["identifier"], recipients)
                continue
            if req is not None:
                del self.model.pending[zone]
                self.counts["requests_dropped"] += 1
            if target != published:
                assert rec["action"] in ("raise", "lower", "all_clear") and not rec.get("held"), rec
                self.model.publish(zone, target, rec["identifier"], self.model.recipients(zone))
                self.counts[f"published_{rec['action']}"] += 1
            else:
                assert rec["action"] in ("none", "renew"), rec
                self.counts[f"steady_{rec['action']}"] += 1
        self.dispatch(kill_after)

    @precondition(lambda self: bool(self.model.pending))
    @rule(data=st.data(), approve=st.booleans(), kill_after=st.integers(1, 3) | st.none())
    def decide(self, data, approve, kill_after):
        zone = data.draw(st.sampled_from(self.pending_zones()))
        req = self.model.pending.pop(zone)
        with self.store.session() as s:
            aid = s.scalar(select(ApprovalRow.id).where(ApprovalRow.zone == zone, ApprovalRow.state == "pending"))
        a = decide_approval(self.store, aid, approve=approve, by="mgr", at=self.now,
                            publish=alerting.publisher(self.cfg, lambda: self.now))
        assert a.alert_identifier == req.alert
        if approve:
            self.model.publish(zone, req.level, req.alert, req.recipients)
        self.counts["approved" if approve else "rejected"] += 1
        self.dispatch(kill_after)

    @precondition(lambda self: bool(self.model.pending))
    @rule(kill_after=st.integers(1, 3) | st.none())
    def time_out(self, kill_after):
        self.now = max(r.release_at for r in self.model.pending.values())
        release_due(self.store, self.now, alerting.publisher(self.cfg, lambda: self.now))
        self.counts["timeouts_settled"] += len(self.model.settle_due(self.now))
        self.dispatch(kill_after)

    @rule(phone=st.sampled_from(sorted(RESIDENTS)), word=st.sampled_from(["START", "STOP"]))
    def reply(self, phone, word):
        self.sids += 1
        sid = f"SM{self.sids:032x}"
        params = {"AccountSid": self.fake.account_sid, "MessageSid": sid, "SmsMessageSid": sid, "From": phone,
                  "To": "+15005550006", "Body": word, "NumMedia": "0"}
        sig = RequestValidator(self.fake.auth_token).compute_signature(BASE + INBOUND_PATH, params)
        resp = self.hooks.post(INBOUND_PATH, data=params, headers={"X-Twilio-Signature": sig})
        assert resp.status_code == 200, resp.text
        if word == "STOP":  # the provider blocks the number too, as Twilio does until START
            self.model.opted_out.add(phone)
            self.fake.opt_out(phone)
        else:
            self.model.opted_out.discard(phone)
            with self.fake._lock:
                self.fake.unsubscribed.discard(phone)
        self.counts[f"reply_{word}"] += 1

    # ------------------------------------------------------------------ invariants
    @invariant()
    def published_state_is_the_models_and_can_be_continued(self):
        with self.store.session() as s:
            rows = {r.zone: r for r in s.scalars(select(ZoneStateRow))}
            alerts = {a.identifier: a for a in s.scalars(select(AlertRow))}
            pending = {a.zone: a for a in s.scalars(select(ApprovalRow).where(ApprovalRow.state == "pending"))}
        assert {z: (rows[z].level if z in rows else 0) for z in ZONES} == self.model.published
        assert {z: alerts[a.alert_identifier].level for z, a in pending.items()} == \
            {z: r.level for z, r in self.model.pending.items()}
        ctx = NoticeContext(sender=self.cfg.notices.sender, sender_name="x", web_base=BASE)
        for zone in ZONES:
            row = rows.get(zone)
            if row is None or row.level == 0:
                assert row is None or (not row.active and not row.chain)
                continue
            assert row.active and row.chain
            for _, ident, _ in row.chain:
                assert alerts[ident].state == "published"
                assert (self.cfg.output_dir / "cap" / f"{ident}.xml").is_file()
            chain = [(a, b, datetime.fromisoformat(c)) for a, b, c in row.chain]
            clear = Decision(zone=zone, at=self.now, previous=row.level, level=0, action="all_clear",
                             reasons=("test",), metrics={}, state=ZoneState())
            build_notice(clear, ZoneInfo(zone, zone, [[(52.0, -1.0), (52.0, -0.9), (52.1, -0.9), (52.0, -1.0)]]),
                         None, chain, ctx, identifier=f"{zone}.check", expires=self.now + timedelta(hours=1),
                         details={})

    @invariant()
    def nothing_unpublished_is_public(self):
        with self.store.session() as s:
            states = dict(s.execute(select(AlertRow.identifier, AlertRow.state)).all())
        public_files = {p.stem for p in (self.cfg.output_dir / "cap").glob("*.xml")}
        private = {a for a, state in states.items() if state != "published"}
        assert not public_files & private
        api = {a["identifier"] for a in self.web.get("/api/alerts", params={"limit": 10000}).json()}
        assert api == {a for a, state in states.items() if state == "published"}
        feed = self.cfg.output_dir / "feed.atom"
        if feed.exists():
            text = feed.read_text()
            assert not any(a in text for a in private)
        zones = {z["code"]: z["level"] for z in self.web.get("/api/zones").json()}
        assert zones == self.model.published

    @invariant()
    def every_published_message_reached_each_resident_once(self):
        with self.store.session() as s:
            by_sid = dict(s.execute(select(OutboxRow.provider_id, OutboxRow.alert_identifier)
                                    .where(OutboxRow.provider_id.is_not(None))).all())
        got = Counter((by_sid.get(m["sid"], "?"), m["To"]) for m in self.fake.messages)
        assert got == self.model.expected, (got - self.model.expected, self.model.expected - got)
        self.counts["steps_checked"] += 1
