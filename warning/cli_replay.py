"""The replay and tuning commands: ``floodwarn replay`` and ``floodwarn tune``."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .cli import ConfigOpt, _friendly, _setup_logging, app, console


def _demo_key(cfg) -> None:
    """The demo site keeps its own key beside its database (as `floodwarn demo` does)."""
    if cfg.demo is None or os.environ.get("FLOODWARN_SECRET_KEY") or os.environ.get("FLOODWARN_SECRET_KEY_FILE"):
        return
    key_file = cfg.output_dir / "demo-secret.key"
    if not key_file.exists():
        import secrets

        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(32) + "\n")
        key_file.chmod(0o600)
    os.environ["FLOODWARN_SECRET_KEY_FILE"] = str(key_file)


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
    _demo_key(cfg)
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
    from .verification import periods_from_levels, scores, verify

    cfg = res.config
    table = Table("zone", "level changes (simulated time)", "verification", title="warnings")
    ranks = {lv.name: r for r, lv in enumerate(cfg.levels, start=1)}
    changes: dict[str, list] = {z.code: [] for z in cfg.zones}
    for c in res.trace.cycles:
        for d in c.decisions:
            if d["action"] in ("raise", "lower", "all_clear"):
                changes[d["zone"]].append((c.at, d["level"], d["level_name"]))
    verified = set(res.event.verified_zones(cfg))
    for zone, ch in changes.items():
        text = "; ".join(f"{t:%d %H:%M} {name}" for t, _lvl, name in ch) or "no warning"
        ver = ""
        if zone in verified:
            parts = []
            for name, rank in ranks.items():
                c = verify(periods_from_levels([(t, lvl) for t, lvl, _ in ch], rank), res.event.observed[zone],
                           tolerance=res.event.tolerance)
                if c.hits or c.misses or c.false_alarms:
                    s = scores(c)
                    lead = f", lead {_fmt_lead(s['median_lead_min'])}" if c.hits else ""
                    parts.append(f"{name}: {c.hits} hit, {c.misses} miss, {c.false_alarms} false{lead}")
            ver = "\n".join(parts) or "dry, no warning: correct"
        table.add_row(zone, text, ver)
    console.print(table)

