"""Warning levels and the per-zone level state machine.

A zone's metrics (plain floats such as ``peak_depth_m`` or ``exceedance_probability``)
are compared with each level's criteria; :func:`decide` turns the comparison and the
zone's previous :class:`ZoneState` into a :class:`Decision`. Everything here is a pure
function of its arguments: no clock, no I/O.

Rules applied by :func:`decide`, in order:

- **Raise** to the highest level whose criteria hold, once that level (or a higher one)
  has been met in ``policy.persistence`` consecutive cycles (EFAS-style persistence).
  With ``policy.escalate_on_observed``, a level met by an ``observed_*`` metric is raised
  at once, skipping persistence: observed flooding is not a forecast.
- **Lower** from level L only when L's criteria fail even with thresholds eased by
  ``policy.hysteresis`` (so values hovering at a threshold do not flap), and L has been
  in force for at least ``policy.min_hold``. The new level is the highest lower level
  that still holds at the eased thresholds. Lowering to 0 while a warning chain is open
  is an ``all_clear``.
- **Renew** a level still in force (no raise or lower) when its last notice is within
  ``policy.renew_before`` of ``policy.expiry``: a fresh notice, no SMS.
- **Missing data** (a metric absent or NaN) makes a criterion false, for raising and
  for lowering alike, and the reasons name it. Bridging short data gaps (last good value,
  flagged) is the ingest's job, before the metrics reach this module.

Metric names carry their unit in the suffix, used when reasons are put into words:
``_m`` metres, ``_share`` and ``_probability`` fractions shown as %, ``_people`` people.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from alerts.cap import CERTAINTIES, RESPONSE_TYPES, SEVERITIES, URGENCIES

log = logging.getLogger(__name__)

OPS = (">=", ">", "<=", "<")
"""Comparison operators a :class:`Criterion` may use."""

ACTIONS = ("none", "raise", "lower", "all_clear", "hold", "renew")
"""Possible :attr:`Decision.action` values."""

_SYMBOL = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}
_NEGATED = {">=": "<", ">": "≤", "<=": ">", "<": "≥"}
_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

# Plain-words names of the metrics floodwarn computes. Other metrics fall back to their
# name without the unit suffix ("max_velocity_ms" -> "max velocity ms").
METRIC_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "peak_depth_m": "forecast peak depth",
        "forecast_peak_depth_m": "forecast peak depth",
        "flooded_share": "forecast flooded share of the zone",
        "exposed_people": "people in the forecast flood area",
        "exceedance_probability": "chance of flooding across forecast runs",
        "forecast_stage_m": "forecast river level",
        "observed_stage_m": "observed river level",
        "observed_depth_m": "observed flood depth",
        "observed_flooded_share": "observed flooded share of the zone",
        "observed_rise_m_per_h": "observed rise of the river",
        "observed_discharge_m3s": "observed river flow",
        "forecast_peak_discharge_m3s": "forecast peak river flow",
        "depth_exceedance_probability": "chance of flooding across forecast runs",
    },
    "es": {
        "peak_depth_m": "profundidad máxima prevista",
        "forecast_peak_depth_m": "profundidad máxima prevista",
        "flooded_share": "parte de la zona que se prevé inundada",
        "exposed_people": "personas en el área que se prevé inundada",
        "exceedance_probability": "probabilidad de inundación según los pronósticos",
        "forecast_stage_m": "nivel previsto del río",
        "observed_stage_m": "nivel observado del río",
        "observed_depth_m": "profundidad de agua observada",
        "observed_flooded_share": "parte de la zona inundada observada",
        "observed_rise_m_per_h": "subida observada del río",
        "observed_discharge_m3s": "caudal observado del río",
        "forecast_peak_discharge_m3s": "caudal máximo previsto del río",
        "depth_exceedance_probability": "probabilidad de inundación según los pronósticos",
    },
}

_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "compare": "{label} {value} {op} {threshold} ({title} threshold)",
        "compare_eased": (
            "{label} {value} {op} {threshold} ({title} threshold {base} eased by {pct} "
            "hysteresis)"
        ),
        "missing": "{label}: no data, so the {title} threshold ({op} {threshold}) was not checked",
        "people": "people",
        "decimal": ".",
    },
    "es": {
        "compare": "{label} {value} {op} {threshold} (umbral de {title})",
        "compare_eased": (
            "{label} {value} {op} {threshold} (umbral de {title} {base} relajado un {pct} "
            "por histéresis)"
        ),
        "missing": (
            "{label}: sin datos, no se pudo comprobar el umbral de {title} ({op} {threshold})"
        ),
        "people": "personas",
        "decimal": ",",
    },
}


def _base_language(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


def _phrases(language: str) -> dict[str, str]:
    return _PHRASES.get(_base_language(language), _PHRASES["en"])


def decimal_separator(language: str) -> str:
    """``"."`` or ``","``: the decimal separator used for numbers in ``language``'s texts."""
    return _phrases(language)["decimal"]


def metric_label(metric: str, language: str = "en") -> str:
    """Plain-words name of a metric, e.g. ``peak_depth_m`` -> ``forecast peak depth``."""
    labels = METRIC_LABELS.get(_base_language(language), {})
    if metric in labels:
        return labels[metric]
    if metric in METRIC_LABELS["en"]:
        return METRIC_LABELS["en"][metric]
    stem = re.sub(r"_(m|people)$", "", metric)
    return stem.replace("_", " ")


def format_metric(metric: str, value: float, language: str = "en") -> str:
    """Format a metric value with the unit its name's suffix implies.

    ``_m`` -> ``0.82 m``; ``_m_per_h`` -> ``0.30 m/h``; ``_m3s`` -> ``38.5 m3/s``;
    ``_share`` / ``_probability`` (fractions 0-1) -> ``35%``;
    ``_people`` -> ``1,200 people``; anything else -> the plain number.
    """
    comma = decimal_separator(language) == ","
    if metric.endswith("_m"):
        text = f"{value:.2f} m"
    elif metric.endswith("_m_per_h"):
        text = f"{value:.2f} m/h"
    elif metric.endswith("_m3s"):
        text = f"{value:.3g} m3/s"  # GSM-7 has no superscript 3
    elif metric.endswith(("_share", "_probability")):
        pct = value * 100.0
        text = f"{pct:.0f}%" if abs(pct) >= 1 or pct == 0 else f"{pct:.1f}%"
    elif metric.endswith("_people"):
        count = f"{value:.0f}" if comma else f"{value:,.0f}"
        return f"{count} {_phrases(language)['people']}"
    else:
        text = f"{value:g}"
    return text.replace(".", ",") if comma else text


def _format_fraction(fraction: float, language: str) -> str:
    return f"{fraction * 100:g}%".replace(".", decimal_separator(language))


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Criterion:
    """One comparison of a zone metric with a threshold.

    Parameters
    ----------
    metric : str
        Zone metric name; its suffix gives the unit (``_m``, ``_share``, ...).
        Names starting with ``observed_`` are observations, not forecasts.
    op : str
        One of ``">="``, ``">"``, ``"<="``, ``"<"``; the criterion holds when
        ``metrics[metric] op value``.
    value : float
        Threshold, in the metric's unit (fractions 0-1 for shares and probabilities).
    label : str, optional
        Plain-words name to use in reasons instead of :func:`metric_label`.
    """

    metric: str
    op: str
    value: float
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("a criterion needs a metric name")
        if self.op not in OPS:
            raise ValueError(
                f"criterion on {self.metric!r}: operator {self.op!r} is not one of {', '.join(OPS)}"
            )
        value = float(self.value)
        if not math.isfinite(value):
            raise ValueError(f"criterion on {self.metric!r}: threshold must be finite, got {value}")
        object.__setattr__(self, "value", value)

    @property
    def observed(self) -> bool:
        """True when the metric is an observation (its name starts with ``observed_``)."""
        return self.metric.startswith("observed_")

    def threshold(self, scale: float = 1.0) -> float:
        """The threshold eased by ``scale`` (``scale < 1`` makes the criterion easier to hold).

        ``>=``/``>`` thresholds move down by ``|value| * (1 - scale)``, ``<=``/``<``
        thresholds move up by the same amount, so easing works for negative thresholds too.
        """
        shift = abs(self.value) * (1.0 - scale)
        return self.value - shift if self.op in (">=", ">") else self.value + shift

    def holds(self, value: float, scale: float = 1.0) -> bool:
        """Compare ``value`` with the (eased) threshold."""
        threshold = self.threshold(scale)
        if self.op == ">=":
            return value >= threshold
        if self.op == ">":
            return value > threshold
        if self.op == "<=":
            return value <= threshold
        return value < threshold


@dataclass(frozen=True)
class LevelSpec:
    """One warning level of a zone.

    Parameters
    ----------
    name : str
        Short machine name, e.g. ``"warning"``.
    rank : int
        1..n, higher is more severe; 0 is reserved for "no level".
    title : str
        Public title, e.g. ``"Flood Warning"``.
    colour : str
        ``#rrggbb`` for maps.
    severity, urgency, certainty, response_type : str
        CAP 1.2 values for notices at this level.
    sms : bool
        Whether residents get an SMS at this level (the CAP notice is always published).
    approval : bool
        Whether an emergency manager must approve before anything goes out. Acting on it
        is the caller's job; :func:`decide` only decides.
    criteria : tuple of Criterion
        When the level is met.
    combine : {"any", "all"}
        Whether one criterion or all of them must hold.
    instruction : str
        What to do, in plain words.
    translations : mapping, optional
        ``{"es": {"title": ..., "instruction": ...}}``: the title and instruction in other
        languages, used by :meth:`title_for` and :meth:`instruction_for`.
    """

    name: str
    rank: int
    title: str
    colour: str
    severity: str
    urgency: str
    certainty: str
    response_type: str
    sms: bool = True
    approval: bool = False
    criteria: tuple[Criterion, ...] = ()
    combine: str = "any"
    instruction: str = ""
    translations: Mapping[str, Mapping[str, str]] = field(
        default_factory=dict, hash=False, compare=True
    )

    def __post_init__(self) -> None:
        where = f"level {self.name!r}"
        if not self.name:
            raise ValueError("a level needs a name")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"{where}: rank must be an integer >= 1 (0 means no level)")
        if not _COLOUR_RE.match(self.colour):
            raise ValueError(f"{where}: colour {self.colour!r} must look like #f5a623")
        for what, value, allowed in (
            ("severity", self.severity, SEVERITIES),
            ("urgency", self.urgency, URGENCIES),
            ("certainty", self.certainty, CERTAINTIES),
            ("response_type", self.response_type, RESPONSE_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"{where}: {what} {value!r} is not one of {', '.join(allowed)}")
        if self.combine not in ("any", "all"):
            raise ValueError(f"{where}: combine must be 'any' or 'all', got {self.combine!r}")
        criteria = tuple(self.criteria)
        if not criteria:
            raise ValueError(f"{where}: needs at least one criterion")
        object.__setattr__(self, "criteria", criteria)

    def title_for(self, language: str) -> str:
        """The title in ``language`` (or its base language), else :attr:`title`."""
        return self._translated("title", language) or self.title

    def instruction_for(self, language: str) -> str:
        """The instruction in ``language`` (or its base language), else :attr:`instruction`."""
        return self._translated("instruction", language) or self.instruction

    def _translated(self, key: str, language: str) -> str | None:
        for lang in (language, _base_language(language)):
            text = self.translations.get(lang, {}).get(key)
            if text:
                return text
        return None


@dataclass(frozen=True)
class ZonePolicy:
    """How a zone moves between levels.

    Parameters
    ----------
    persistence : int
        Consecutive cycles a higher level must be met before it is raised (1 = at once).
    hysteresis : float
        Fraction (0 <= h < 1) by which the current level's thresholds are eased before
        deciding it no longer holds.
    min_hold : timedelta
        Shortest time a level stays in force before it may be lowered.
    escalate_on_observed : bool
        Raise at once, skipping persistence, when an ``observed_*`` metric meets a level.
    expiry : timedelta, optional
        How long a notice stays valid (CAP ``<expires>``). A level still in force is
        renewed (action ``"renew"``: a new notice, no SMS) once its last notice is within
        ``renew_before`` of expiring, so the public never sees a lapsed warning.
    renew_before : timedelta
        How long before expiry a level in force is renewed (at least one cycle).
    """

    persistence: int = 1
    hysteresis: float = 0.1
    min_hold: timedelta = timedelta(0)
    escalate_on_observed: bool = True
    expiry: timedelta | None = None
    renew_before: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if not isinstance(self.persistence, int) or self.persistence < 1:
            raise ValueError(f"persistence must be an integer >= 1, got {self.persistence!r}")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis!r}")
        if self.min_hold < timedelta(0):
            raise ValueError(f"min_hold must not be negative, got {self.min_hold}")
        if self.expiry is not None and self.expiry <= timedelta(0):
            raise ValueError(f"expiry must be positive, got {self.expiry}")
        if self.renew_before < timedelta(0) or (self.expiry is not None and self.renew_before >= self.expiry):
            raise ValueError(f"renew_before must be >= 0 and shorter than expiry, got {self.renew_before}")


@dataclass(frozen=True)
class ZoneState:
    """A zone's level between cycles.

    Parameters
    ----------
    level : int
        Current level rank, 0 for none.
    since : datetime, optional
        When the current level was entered.
    pending_level : int
        Level waiting for persistence (0 when nothing is pending).
    pending_count : int
        Consecutive cycles ``pending_level`` (or higher) has been met.
    active : bool
        Whether a warning chain is open (notices issued and not yet cleared).
    issued : datetime, optional
        When the last notice of the open chain was issued (for renewal before expiry).
    """

    level: int = 0
    since: datetime | None = None
    pending_level: int = 0
    pending_count: int = 0
    active: bool = False
    issued: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded for one zone in one cycle.

    ``action`` is one of ``"none"``, ``"raise"``, ``"lower"``, ``"all_clear"``, ``"hold"``
    (a change held back by persistence, hysteresis, minimum hold or missing data), or
    ``"renew"`` (the level stays, but its notice is about to expire: publish it again).
    ``reasons`` explain it in plain words; ``state`` is the zone's new state.
    """

    zone: str
    at: datetime
    previous: int
    level: int
    action: str
    reasons: tuple[str, ...]
    metrics: Mapping[str, float]
    state: ZoneState

    @property
    def changed(self) -> bool:
        """True when the level changed (raise, lower or all-clear)."""
        return self.action in ("raise", "lower", "all_clear")

    @property
    def publish(self) -> bool:
        """True when a notice goes out: a change, or a renewal before expiry."""
        return self.changed or self.action == "renew"


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Check:
    criterion: Criterion
    value: float | None  # None when missing
    held: bool | None  # None when missing
    text: str


@dataclass(frozen=True)
class _LevelCheck:
    level: LevelSpec
    result: bool
    checks: tuple[_Check, ...]

    def texts(self, *, held: bool | None) -> tuple[str, ...]:
        return tuple(c.text for c in self.checks if c.held is held)

    @property
    def observed(self) -> bool:
        return any(c.held and c.criterion.observed for c in self.checks)


def _metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    raw = metrics.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("metric %s has the non-numeric value %r; treated as missing", name, raw)
        return None
    return None if math.isnan(value) else value


def _check(
    level: LevelSpec, criterion: Criterion, metrics: Mapping[str, float], scale: float,
    language: str,
) -> _Check:
    phrases = _phrases(language)
    metric = criterion.metric
    label = criterion.label or metric_label(metric, language)
    title = level.title_for(language)
    threshold = criterion.threshold(scale)
    value = _metric_value(metrics, metric)
    if value is None:
        text = phrases["missing"].format(
            label=label, title=title, op=_SYMBOL[criterion.op],
            threshold=format_metric(metric, threshold, language),
        )
        return _Check(criterion, None, None, text)
    held = criterion.holds(value, scale)
    fields = {
        "label": label,
        "value": format_metric(metric, value, language),
        "op": _SYMBOL[criterion.op] if held else _NEGATED[criterion.op],
        "threshold": format_metric(metric, threshold, language),
        "title": title,
    }
    if scale != 1.0:
        text = phrases["compare_eased"].format(
            base=format_metric(metric, criterion.value, language),
            pct=_format_fraction(1.0 - scale, language), **fields,
        )
    else:
        text = phrases["compare"].format(**fields)
    return _Check(criterion, value, held, text)


def _evaluate(
    level: LevelSpec, metrics: Mapping[str, float], scale: float = 1.0, language: str = "en"
) -> _LevelCheck:
    checks = tuple(_check(level, c, metrics, scale, language) for c in level.criteria)
    combine = any if level.combine == "any" else all
    return _LevelCheck(level, combine(c.held is True for c in checks), checks)


def _validated(levels: Sequence[LevelSpec]) -> dict[int, LevelSpec]:
    by_rank: dict[int, LevelSpec] = {}
    for level in levels:
        if level.rank in by_rank:
            raise ValueError(
                f"levels {by_rank[level.rank].name!r} and {level.name!r} share rank {level.rank}; "
                "each level needs its own rank"
            )
        by_rank[level.rank] = level
    return by_rank


def _unique(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(texts))


def met_level(
    levels: Sequence[LevelSpec], metrics: Mapping[str, float], scale: float = 1.0
) -> tuple[int, tuple[str, ...]]:
    """Highest level whose criteria hold, and why.

    Parameters
    ----------
    levels : sequence of LevelSpec
    metrics : mapping of str to float
        Zone metrics; a missing or NaN metric makes its criteria false.
    scale : float
        Ease thresholds by ``1 - scale`` (1.0 = as configured); see
        :meth:`Criterion.threshold`.

    Returns
    -------
    rank : int
        0 when no level is met.
    reasons : tuple of str
        The criteria of that level that hold, then any missing metrics, in plain words.
    """
    by_rank = _validated(levels)
    evaluations = [_evaluate(level, metrics, scale) for level in by_rank.values()]
    met = [e for e in evaluations if e.result]
    best = max(met, key=lambda e: e.level.rank, default=None)
    missing = [text for e in evaluations for text in e.texts(held=None)]
    if best is None:
        return 0, _unique(missing)
    return best.level.rank, _unique([*best.texts(held=True), *missing])


def explain(
    levels: Sequence[LevelSpec],
    metrics: Mapping[str, float],
    rank: int,
    *,
    language: str = "en",
    scale: float = 1.0,
) -> tuple[str, ...]:
    """Plain-words reasons why level ``rank`` holds or not, in ``language``.

    When the level holds, the criteria that hold; otherwise the criteria that fail and
    the metrics that are missing. Used for messages in a resident's language (``en``
    and ``es`` phrases are built in; other languages fall back to English).
    """
    level = _validated(levels).get(rank)
    if level is None:
        return ()
    evaluation = _evaluate(level, metrics, scale, language)
    if evaluation.result:
        return evaluation.texts(held=True)
    return (*evaluation.texts(held=False), *evaluation.texts(held=None))


def raised_by(
    levels: Sequence[LevelSpec], metrics: Mapping[str, float], lowest: int, highest: int
) -> str:
    """What raised a zone to ``highest`` from below ``lowest``: ``"forecast"`` when a
    forecast criterion of a level from ``lowest`` to ``highest`` holds in ``metrics``,
    else ``"observed"`` when only ``observed_*`` criteria hold there, else ``"none"``.

    Verification splits forecast lead from detection with it: a warning raised because
    the river is already high detects a flood, it does not forecast one.
    """
    kinds = set()
    for rank, level in _validated(levels).items():
        if lowest <= rank <= highest:
            for check in _evaluate(level, metrics).checks:
                if check.held:
                    kinds.add("observed" if check.criterion.observed else "forecast")
    if "forecast" in kinds:
        return "forecast"
    return "observed" if kinds else "none"


# --------------------------------------------------------------------------- decide


def _duration(td: timedelta) -> str:
    minutes = int(td.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    if hours:
        return f"{hours} h"
    return f"{minutes} min"


def decide(
    prev: ZoneState,
    metrics: Mapping[str, float],
    now: datetime,
    levels: Sequence[LevelSpec],
    policy: ZonePolicy,
    *,
    zone: str = "",
) -> Decision:
    """Decide a zone's level for this cycle.

    Parameters
    ----------
    prev : ZoneState
        The zone's state after the previous cycle (``ZoneState()`` the first time).
    metrics : mapping of str to float
        This cycle's zone metrics.
    now : datetime
        The cycle time (timezone-aware); wall clock or a replay's simulated clock.
    levels : sequence of LevelSpec
        The zone's levels.
    policy : ZonePolicy
    zone : str
        Zone code, copied into the decision.

    Returns
    -------
    Decision
        See the module docstring for the rules.
    """
    if now.utcoffset() is None:
        raise ValueError("decide() needs a timezone-aware 'now', e.g. datetime.now(timezone.utc)")
    by_rank = _validated(levels)
    frozen_metrics = MappingProxyType(dict(metrics))
    evaluations = {rank: _evaluate(level, metrics) for rank, level in by_rank.items()}
    met = [rank for rank, e in evaluations.items() if e.result]
    target = max(met, default=0)
    missing = _unique([t for e in evaluations.values() for t in e.texts(held=None)])
    current = prev.level

    def title(rank: int) -> str:
        return by_rank[rank].title if rank in by_rank else f"level {rank}"

    def decision(action: str, state: ZoneState, reasons: Sequence[str]) -> Decision:
        if action in ("raise", "lower"):
            issued = now
        elif action == "all_clear" or state.level == 0:
            issued = None
        else:
            issued = prev.issued
            expires = (prev.issued + policy.expiry) if (prev.issued and policy.expiry) else None
            if expires is not None and state.active and now >= expires - policy.renew_before:
                action, issued = "renew", now
                reasons = [*reasons, f"{title(state.level)} still in force: notice renewed, the last one "
                                     f"(issued {prev.issued:%d %b %H:%M} UTC) expires {expires:%d %b %H:%M} UTC"]
        state = replace(state, issued=issued)
        result = Decision(
            zone=zone, at=now, previous=current, level=state.level, action=action,
            reasons=_unique(reasons), metrics=frozen_metrics, state=state,
        )
        log.debug("zone %s: %s %s -> %s", zone, action, current, state.level)
        return result

    if target > current:
        pending = prev.pending_level
        if prev.pending_count > 0 and current < pending and pending in by_rank:
            run_level, count = min(pending, target), prev.pending_count + 1
        else:
            run_level, count = target, 1
        new = run_level if count >= policy.persistence else 0
        if policy.persistence <= 1:  # every level met now has met its persistence, the highest too
            new = target
        observed = 0
        if policy.escalate_on_observed:
            observed = max(
                (r for r in met if r > current and evaluations[r].observed), default=0
            )
        new = max(new, observed)
        if new > current:
            reasons = list(evaluations[new if new in met else target].texts(held=True))
            if new == observed and (policy.persistence > 1 and count < policy.persistence):
                reasons.append(
                    f"raised at once because observed data meet the {title(new)} criteria"
                )
            elif policy.persistence > 1:
                reasons.append(
                    f"{title(new)} criteria met in {policy.persistence} consecutive cycles"
                )
            # A higher level still met starts its own persistence run from this cycle.
            next_pending, next_count = (target, 1) if target > new else (0, 0)
            state = ZoneState(
                level=new, since=now, pending_level=next_pending, pending_count=next_count,
                active=True,
            )
            return decision("raise", state, [*reasons, *missing])
        reasons = [
            *evaluations[target].texts(held=True),
            (
                f"{title(run_level)} criteria met in {count} of the {policy.persistence} "
                "consecutive cycles needed before raising"
            ),
            *missing,
        ]
        state = ZoneState(
            level=current, since=prev.since, pending_level=run_level, pending_count=count,
            active=prev.active,
        )
        return decision("hold", state, reasons)

    steady = ZoneState(level=current, since=prev.since, active=prev.active)
    if target == current:
        if current == 0:
            return decision("none", steady, ["no warning threshold is reached", *missing])
        return decision("none", steady, [*evaluations[current].texts(held=True), *missing])

    # target < current: lower unless the current level still holds at eased thresholds.
    scale = 1.0 - policy.hysteresis
    eased = {
        rank: _evaluate(level, metrics, scale)
        for rank, level in by_rank.items() if rank <= current
    }
    here = eased.get(current)
    if here is None:
        log.warning("zone %s is at level %d, which is no longer configured", zone, current)
    elif here.result:
        return decision("hold", steady, [
            *here.texts(held=True),
            f"{title(current)} kept: values are within the hysteresis margin",
            *missing,
        ])
    if prev.since is not None and timedelta(0) <= now - prev.since < policy.min_hold:
        return decision("hold", steady, [
            *(here.texts(held=False) if here else ()),
            (
                f"{title(current)} kept: in force for {_duration(now - prev.since)}, less "
                f"than the minimum of {_duration(policy.min_hold)}"
            ),
            *missing,
        ])
    new = max((rank for rank, e in eased.items() if rank < current and e.result), default=0)
    reasons = list(here.texts(held=False)) if here else [f"{title(current)} is not configured"]
    if new > 0:
        reasons.extend(eased[new].texts(held=True))
        return decision("lower", ZoneState(level=new, since=now, active=True), [*reasons, *missing])
    action = "all_clear" if prev.active else "lower"
    return decision(action, ZoneState(level=0, since=now, active=False), [*reasons, *missing])


# --------------------------------------------------------------------------- approval


def needs_approval(decision: Decision, levels: Sequence[LevelSpec]) -> bool:
    """Whether ``decision`` waits for a manager before anything is published: a raise to a
    level with ``approval``. Lowering, renewing and the all-clear continue or end a chain
    a manager (or the time-out) already let out, and go out at once."""
    if decision.action != "raise":
        return False
    level = _validated(levels).get(decision.level)
    return bool(level is not None and level.approval)


def held_state(prev: ZoneState, decision: Decision, policy: ZonePolicy) -> ZoneState:
    """The zone's published state while ``decision`` (a raise) waits for approval.

    Nothing public changes: level, since, chain and notice times stay those of ``prev``.
    Only the run of cycles that met the raised level is remembered as complete, so that
    while (or after) a manager decides, the next cycle that still meets the criteria
    raises again at once, and one that no longer meets them lowers the pending run as
    usual (:func:`decide` from this state)."""
    return replace(prev, pending_level=decision.level,
                   pending_count=max(policy.persistence, prev.pending_count))

