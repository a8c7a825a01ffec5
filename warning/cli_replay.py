"""The replay and tuning commands: ``floodwarn replay`` and ``floodwarn tune``."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .cli import ConfigOpt, _friendly, _setup_logging, app, console
from .secrets import secret_is_set


@contextlib.contextmanager
def _demo_key(cfg):
    """The demo site keeps its own key beside its database (as `floodwarn demo` does), for
    the command's duration."""
    if cfg.demo is None or secret_is_set("FLOODWARN_SECRET_KEY"):
        yield
        return
    key_file = cfg.output_dir / "demo-secret.key"
    if not key_file.exists():
        import secrets

        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(32) + "\n")
        key_file.chmod(0o600)
    os.environ["FLOODWARN_SECRET_KEY_FILE"] = str(key_file)
    try:
        yield
    finally:
        os.environ.pop("FLOODWARN_SECRET_KEY_FILE", None)


def _fmt_lead(minutes: float) -> str:
    sign = "-" if minutes < 0 else ""
    m = abs(int(round(minutes)))
    return f"{sign}{m // 60}h{m % 60:02d}"


@app.command()
@_friendly
def replay(event_file: Annotated[Path, typer.Argument(help="event file (TOML) describing the storm")],
           config: ConfigOpt,
           speed: Annotated[float, typer.Option(help="simulated seconds per wall second (e.g. 360: an hour "
                                                     "every 10 s)")] = 0.0,
           as_fast_as_possible: Annotated[bool, typer.Option("--as-fast-as-possible",
                                                             help="no pacing (the default without --speed)")]
           = False,
           drill: Annotated[bool, typer.Option("--drill", help="run as the config's drill: CAP Exercise, SMS "
                                                               "to the drill roster only")] = False,
           step_minutes: Annotated[float, typer.Option(help="simulated minutes between two polls of the "
                                                            "data")] = 15.0,
           web: Annotated[bool, typer.Option("--console", help="serve the web console and public pages of "
                                                               "the replay while it runs")] = False,
           host: Annotated[str, typer.Option(help="console address")] = "127.0.0.1",
           port: Annotated[int, typer.Option(help="console port")] = 8081,
           linger: Annotated[bool, typer.Option(help="with --console: keep serving after the replay ends "
                                                     "until Ctrl-C")] = True,
           report: Annotated[bool, typer.Option(help="write the HTML and JSON report")] = True,
           out: Annotated[Path | None, typer.Option(help="output folder (default: "
                                                         "<output_dir>/replays/<event>)")] = None,
           verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Replay a past storm through the live pipeline and scheduler jobs on a simulated clock.

    Each forecast is used only after its issue time and each gauge reading only after it
    was observed. The replay has its own folder and database; with --drill its notices
    are CAP Exercise and only the drill roster is texted, never public subscribers."""
    from .config import load_config
    from .events import load_event
    from .replay import replay as run_replay

    _setup_logging(verbose)
    if speed and as_fast_as_possible:
        raise typer.BadParameter("give --speed or --as-fast-as-possible, not both")
    if speed < 0:
        raise typer.BadParameter("--speed must be positive")
    cfg = load_config(config)
    with _demo_key(cfg):
        event = load_event(event_file, cfg)
        pace = speed or None
        console.print(f"[bold]{event.name}[/]: {event.start:%Y-%m-%d %H:%M}Z to {event.end:%Y-%m-%d %H:%M}Z, "
                      f"{'drill ' + repr(cfg.drill.name) if drill else 'replay (no one is texted, CAP status Test)'}, "
                      + (f"{pace:g}x real time" if pace else "as fast as possible"))
        server = None

        def attach(svc) -> None:
            nonlocal server
            if not web:
                return
            import uvicorn

            from .web import create_app

            app_ = create_app(svc.cfg, store=svc.store, service=svc)
            server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning"))
            threading.Thread(target=server.run, name="replay-web", daemon=True).start()
            console.print(f"console of the replay: http://{host}:{port}/console (sign in as a live operator); "
                          f"public pages at http://{host}:{port}/")

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[now]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("replaying", total=None, now="")

            def on_step(now, k, n) -> None:
                bar.update(task, total=n, completed=k, now=f"{now:%d %b %H:%M}Z")

            res = run_replay(cfg, event, speed=pace, drill=drill, step=timedelta(minutes=step_minutes), out_dir=out,
                             on_step=on_step, on_service=attach)
        console.print(f"{res.cycles} forecast cycles over {res.simulated_hours:.0f} simulated hours in "
                      f"{res.wall_seconds:.1f} s ({res.simulated_hours / max(res.wall_seconds, 1e-9):.2f} simulated "
                      f"hours per second)")
        _print_levels(res)
        sent = ", ".join(f"{n} {state}" for state, n in sorted(res.messages.items())) or "none"
        console.print(f"SMS: {sent}" + (f" (drill roster: {res.roster} numbers)" if drill else ""))
        if report:
            from .report import build_report
            from .storage import Store

            store = Store(res.config.db_url)
            try:
                files = build_report(res.config, store, event, scope=res.scope, trace=res.trace, out_dir=res.out_dir,
                                     config_file=config)
            finally:
                store.dispose()
            console.print(f"report: {files.html}\n        {files.json}")
        console.print(f"everything the replay wrote: {res.out_dir}")
        if server is not None:
            if linger:
                console.print("the console stays up; Ctrl-C to stop")
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    pass
            server.should_exit = True


def _print_levels(res) -> None:
    from .tuning import EventSeries, triggered
    from .verification import BASELINES, periods_from_levels, scores

    cfg, ev = res.config, res.event
    table = Table("zone", "level changes (simulated time)", "verification", title="warnings")
    changes: dict[str, list] = {z.code: [] for z in cfg.zones}
    for c in res.trace.cycles:
        for d in c.decisions:
            if d["action"] in ("raise", "lower", "all_clear"):
                changes[d["zone"]].append((c.at, d["level"], d["level_name"], int(d.get("previous") or 0),
                                           c.metrics.get(d["zone"], {})))
    verified = set(ev.verified_zones(cfg))
    cycles = [c.at for c in res.trace.cycles]
    for zone, ch in changes.items():
        text = "; ".join(f"{t:%d %H:%M} {name}" for t, _lvl, name, _p, _m in ch) or "no warning"
        ver = ""
        if zone in verified:
            specs = cfg.level_specs(next(z for z in cfg.zones if z.code == zone))
            series = EventSeries.of(ev, zone, cfg, cycles)
            plain = [(t, lvl, prev, m) for t, lvl, _n, prev, m in ch]
            parts = []
            for spec in specs:
                c = series.verify(periods_from_levels(triggered(plain, specs, spec.rank), spec.rank))
                if not (c.hits or c.late or c.misses or c.false_alarms):
                    continue
                s = scores(c)
                lead = f", lead {_fmt_lead(s['median_lead_min'])}" if c.lead_times else ""
                det = f", {c.detections} detected by observation" if c.detections else ""
                base = " ".join(f"{n} {_num(scores(series.baseline(n))['pss_time'])}" for n in BASELINES)
                parts.append(f"{spec.name}: {c.forecast_hits} in time by forecast{lead}{det}, {c.late} late, "
                             f"{c.misses} missed, {c.false_alarms} false; PSS {_num(s['pss_time'])} "
                             f"(baselines {base})")
            ver = "\n".join(parts) or "dry, no warning: correct"
        table.add_row(zone, text, ver)
    console.print(table)



# --------------------------------------------------------------------------- tune
def _replay_event(config_path: str, event_path: str, out_dir: str, step_minutes: float):
    """One event of a tuning catalogue, replayed as fast as possible (in a worker process)."""
    from .config import load_config
    from .events import load_event
    from .replay import replay as run_replay

    cfg = load_config(config_path)
    event = load_event(event_path, cfg)
    res = run_replay(cfg, event, step=timedelta(minutes=step_minutes), out_dir=Path(out_dir))
    return res.trace, res.wall_seconds


@app.command()
@_friendly
def tune(config: ConfigOpt,
         events: Annotated[Path, typer.Option(help="folder of event files (*.toml) with observed flood onsets")],
         goal: Annotated[str, typer.Option(help="what to optimise, e.g. 'maximise pss; far <= 0.3; lead >= 60' "
                                                "(pss/hss: Peirce/Heidke skill in time; csi, pod, far: by "
                                                "event; lead: median forecast lead, minutes)")]
         = "maximise pss",
         holdout_from: Annotated[str | None, typer.Option(
             help="check out of sample by date: tune on events starting before this date (e.g. 2012-06-01), "
                  "check on the rest (default: leave one event out)")] = None,
         zone: Annotated[list[str], typer.Option("--zone", "-z", help="zone to tune (repeat); default every "
                                                                     "zone the events observe")] = [],
         level: Annotated[list[str], typer.Option("--level", "-l", help="level to tune (repeat); default "
                                                                       "every level")] = [],
         metric: Annotated[str, typer.Option(help="criterion to vary, by metric; default each level's first "
                                                  "forecast criterion")] = "",
         candidates: Annotated[int, typer.Option(help="candidate thresholds per zone and level")] = 50,
         workers: Annotated[int, typer.Option(help="processes (replays run in parallel across events)")]
         = max(1, min(os.cpu_count() or 1, 2)),
         step_minutes: Annotated[float, typer.Option(help="simulated minutes between polls in the "
                                                          "replays")] = 15.0,
         out: Annotated[Path | None, typer.Option(help="folder for the scores and the POD-FAR plot "
                                                       "(default <output_dir>/tuning)")] = None,
         write: Annotated[bool, typer.Option("--write", help="apply the recommended thresholds to the "
                                                             "config file (default: only show the diff)")]
         = False,
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Replay a catalogue of past storms once, score a grid of candidate thresholds per
    zone and level (by event and in time, beside never/always/persistence), and
    recommend thresholds for a goal that beat those baselines out of sample.

    The models do not depend on thresholds, so each event is replayed once and the
    level decisions are re-run for every candidate. Thresholds that warn always or never
    are refused; each choice is checked on events it was not tuned on (leave one event
    out, or --holdout-from a date). Prints the recommended changes as a diff of the
    config file; writes nothing to it unless --write is given."""
    import json
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .config import load_config
    from .events import load_events
    from .tuning import (Goal, TuningError, apply_changes, assess, by_criterion, candidate_grid, config_diff,
                         evaluate, pod_far_plot, scores_table)
    from .verification import scores as event_scores

    _setup_logging(verbose)
    if workers < 1:
        raise typer.BadParameter("--workers must be at least 1")
    cfg = load_config(config)
    split = None
    if holdout_from:
        from datetime import UTC, datetime

        try:
            split = datetime.fromisoformat(holdout_from.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(f"--holdout-from: not a date: {holdout_from!r} (e.g. 2012-06-01)") from None
        split = split if split.tzinfo else split.replace(tzinfo=UTC)
    with _demo_key(cfg):
        wanted = Goal.parse(goal)
        catalog = load_events(events, cfg)
        out_dir = (out or cfg.output_dir / "tuning").resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        zones = zone or [z.code for z in cfg.zones if any(z.code in e.verified_zones(cfg) for e in catalog)]
        if not zones:
            raise typer.BadParameter(f"none of the {len(catalog)} events observes a zone of this site "
                                     "(list flood onsets under [observed])")
        groups = [(z, lv.name) for z in zones for lv in cfg.levels if not level or lv.name in level]
        console.print(f"tuning {len(groups)} zone-level pairs over {len(catalog)} events, goal: {wanted}")
        # the terrain is prepared once, before the workers start (each would otherwise do it)
        from .site import Site

        with console.status("preparing terrain (cached after the first time)"):
            Site.load(cfg).prepare()
        t0 = time.perf_counter()
        traces = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            rep = bar.add_task("replaying events", total=len(catalog))
            if workers == 1 or len(catalog) == 1:
                for e in catalog:
                    traces[e.file], _ = _replay_event(str(config), str(e.file), str(out_dir / "replays" / e.slug),
                                                      step_minutes)
                    bar.advance(rep)
            else:
                # forkserver: the parent has Numba/OpenMP threads, which fork() would copy broken
                with ProcessPoolExecutor(max_workers=min(workers, len(catalog)),
                                         mp_context=multiprocessing.get_context("forkserver")) as pool:
                    futs = {pool.submit(_replay_event, str(config), str(e.file), str(out_dir / "replays" / e.slug),
                                        step_minutes): e for e in catalog}
                    for f in as_completed(futs):
                        traces[futs[f].file], _ = f.result()
                        bar.advance(rep)
            t_replay = time.perf_counter() - t0
            ordered = [traces[e.file] for e in catalog]
            score_task = bar.add_task("scoring candidates", total=len(groups))
            all_scores, skipped = [], []
            for z, lv in groups:
                try:
                    cands = candidate_grid(ordered, cfg, z, lv, metric or None, n=candidates)
                    all_scores += evaluate(ordered, cfg, cands, workers=workers)
                except TuningError as exc:
                    skipped.append(f"{z} {lv}: {exc}")
                bar.advance(score_task)
        t_score = time.perf_counter() - t0 - t_replay
        table = Table("zone", "level", "criterion", "now, in sample", "recommended", "out of sample",
                      "baselines: never / always / persistence", title=f"thresholds for: {wanted}")
        chosen, notes, verdicts = [], [], []

        def fmt(c) -> str:
            """A contingency in a manager's words: in time / late / missed / false, lead, skill."""
            sc = event_scores(c)
            lead = sc["median_lead_min"]
            text = (f"{c.hits} in time ({c.forecast_hits} forecast"
                    + (f", lead {_fmt_lead(lead)}" if not math.isnan(lead) else "")
                    + (f"; {c.detections} detected" if c.detections else "")
                    + f"), {c.late} late, {c.misses} missed, {c.false_alarms} false")
            pss = sc["pss_time"]
            return text + (f"; PSS {pss:.2f}, {c.hours.b:.0f} h warned dry" if not math.isnan(pss) else "")

        def total(s):
            from .verification import Contingency

            return sum(s.per_event, Contingency())

        for key, rows in by_criterion(all_scores).items():
            z, lv, _idx, met, op, _ver = key
            a = assess(rows, wanted, holdout_from=split)
            verdicts.append((key, a))
            base = " / ".join(_pss_text(a.baselines[n]) for n in ("never", "always", "persistence")
                              if n in a.baselines) or "-"
            now = fmt(total(a.current)) if a.current is not None else "-"
            oos = fmt(a.out_of_sample) if a.out_of_sample is not None else "-"
            if a.chosen is None:
                table.add_row(z, lv, f"{met} {op}", now, "none", oos, base)
            else:
                if a.chosen.candidate.value != a.chosen.candidate.current:
                    chosen.append(a.chosen)
                table.add_row(z, lv, f"{met} {op} {a.chosen.candidate.current:g}", now,
                              f"{a.chosen.candidate.value:g}", oos, base)
            notes.append(a.reason)
        console.print(table)
        console.print("in time: a warning raised before the flood by a forecast; detected: raised by an observation; "
                      "PSS: Peirce skill in hours warned and flooded (0 = no skill); baselines: never warn, always "
                      "warn, persistence (warn while flooding is observed)")
        for why in notes:
            console.print(f"- {why}", markup=False, highlight=False)
        for line in _detect_only(cfg, zones, level):
            console.print(f"- {line}", markup=False, highlight=False)
        for s in skipped:
            console.print(f"[yellow]skipped[/] {s}")
        rows = scores_table(all_scores)
        (out_dir / "scores.json").write_text(json.dumps(
            {"goal": str(wanted), "events": [str(e.file) for e in catalog],
             "validation": "leave-one-event-out" if split is None else f"split by date at {split.isoformat()}",
             "recommendations": [_verdict_json(key, a) for key, a in verdicts],
             "scores": rows}, indent=1, allow_nan=False))
        if rows:  # the same table for a spreadsheet: one row per candidate, lead-time quartiles
            import csv

            with open(out_dir / "scores.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        plot = pod_far_plot(all_scores, out_dir / "pod_far.png", recommended=chosen) if all_scores else None
        console.print(f"replays {t_replay:.1f} s, scoring {len(all_scores)} candidates {t_score:.1f} s "
                      f"({workers} process{'es' if workers > 1 else ''})")
        console.print(f"scores of every candidate (POD, FAR, CSI, lead-time quartiles): "
                      f"{out_dir / 'scores.json'} and scores.csv" + (f"\nPOD-FAR plot: {plot}" if plot else ""))
        if not chosen:
            console.print("nothing to change: no threshold other than the configured ones beats the baselines "
                          "out of sample for this goal")
            return
        diff = apply_changes(config, chosen) if write else config_diff(config, chosen)
        console.print(diff, markup=False, highlight=False)
        console.print(f"written to {config}" if write else "nothing written (give --write to apply these changes)")


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _pss_text(c) -> str:
    from .verification import scores as event_scores

    return f"PSS {_num(event_scores(c)['pss_time'])}"


def _detect_only(cfg, zones, levels) -> list[str]:
    """Lines naming each criterion that can only detect a flood, never forecast one."""
    out = []
    for z in cfg.zones:
        if z.code not in zones:
            continue
        for spec in cfg.level_specs(z):
            if levels and spec.name not in levels:
                continue
            for c in spec.criteria:
                if c.observed:
                    out.append(f"{z.code} {spec.name}: '{c.metric} {c.op} {c.value:g}' is an observation: it can "
                               "only detect a flood that is already happening, never forecast one; its warnings "
                               "are counted as detections, not forecast lead")
    return out


def _verdict_json(key, a) -> dict:
    from .verification import scores as event_scores

    def num(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    def block(c):
        if c is None:
            return None
        sc = event_scores(c)
        return {"hits": c.hits, "forecast_hits": c.forecast_hits, "detections": c.detections, "late": c.late,
                "misses": c.misses, "false_alarms": c.false_alarms,
                "hours": {"warned_flooded": c.hours.a, "warned_dry": c.hours.b, "flooded_unwarned": c.hours.c,
                          "quiet": c.hours.d},
                **{k: num(v) for k, v in sc.items()}}

    z, lv, idx, met, op, ver = key
    return {"zone": z, "level": lv, "criterion_index": idx, "metric": met, "op": op, "verified_level": ver,
            "recommended": a.chosen.candidate.value if a.chosen is not None else None,
            "current": a.current.candidate.current if a.current is not None else None,
            "in_sample_best": a.in_sample.candidate.value if a.in_sample is not None else None,
            "reason": a.reason, "validation": a.validation,
            "refused": {k: list(v) for k, v in a.refused.items()},
            "out_of_sample": block(a.out_of_sample),
            "baselines": {n: block(c) for n, c in a.baselines.items()}}
