"""The ``floodwarn`` command line.

Every user-facing error (bad config, unreadable input, a model or delivery problem) is
printed without a traceback and the command exits with status 1.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import USER_ERRORS

app = typer.Typer(help="floodwarn: public-led flood early warning (forecasts -> flood depth -> "
                       "CAP notices and SMS).", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="site configuration (TOML)")]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            # escaped: a message quoting "[limits]" or a file's text is not markup; not
            # wrapped: paths in it stay whole, to copy
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper


def _setup_logging(verbose: bool, log_format: str | None = None) -> str:
    """Log to stderr (INFO with -v) as text or JSON (``log_format``, else the
    ``FLOODWARN_LOG_FORMAT`` environment variable, else text), every handler masking phone
    numbers (see warning.logs); returns the format."""
    from .logs import setup_logging

    return setup_logging(logging.INFO if verbose else logging.WARNING, log_format)


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 time like 2025-11-14T12:00Z") from None
    if t.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no time zone; add Z for UTC")
    return t.astimezone(timezone.utc)


@app.command("check-config")
@_friendly
def check_config(path: Annotated[Path, typer.Argument(help="the TOML file to check")]) -> None:
    """Validate a site configuration and report every problem at once."""
    from .config import load_config

    cfg = load_config(path)
    console.print(f"[green]ok[/]: {path} ({cfg.site.name}: {len(cfg.zones)} zones, "
                  f"{len(cfg.gauges)} gauges, levels {', '.join(lv.name for lv in cfg.levels)})")


@contextlib.contextmanager
def _cluster(cfg: Any) -> Any:
    """The config's Dask client for one command, with where it runs and its dashboard."""
    from .national.cluster import dask_client

    import distributed  # noqa: F401  (sets up its loggers on import; quiet them unless -v)

    from .logs import install_phone_filter

    install_phone_filter()  # distributed's handlers, made on that import, mask numbers too

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("distributed").setLevel(logging.ERROR)
    with dask_client(cfg.compute) as client:
        workers = client.scheduler_info().get("workers", {})
        where = (f"scheduler {cfg.compute.scheduler_address}" if cfg.compute.scheduler_address
                 else "a LocalCluster started for this command")
        console.print(f"Dask: {len(workers)} workers on {where}, tiles of "
                      f"{cfg.compute.tile[0]} x {cfg.compute.tile[1]} cells")
        try:
            import bokeh  # noqa: F401  (the dashboard needs it)

            console.print(f"Dask dashboard (tasks, worker memory): {client.dashboard_link}")
        except ImportError:
            console.print("[dim]no Dask dashboard: install bokeh>=3.1 to get one[/]")
        yield client


@app.command()
@_friendly
def prepare(config: ConfigOpt, force: bool = typer.Option(False, help="recompute even if cached"),
            verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Prepare a site: compute and cache its terrain products, compile the model kernels."""
    from .config import load_config
    from .pipeline import warm_up
    from .site import Site

    _setup_logging(verbose)
    cfg = load_config(config)
    if not cfg.has_grid:
        console.print(f"{cfg.site.name} is a gauge site (no DEM): there is no terrain to prepare; "
                      f"its {len(cfg.zones)} zones are warned from their gauges")
        return
    t0 = time.perf_counter()
    if cfg.compute.engine == "dask":
        from .national.prepare import STAGES

        with _cluster(cfg) as client, Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(),
                MofNCompleteColumn(), console=console) as bar:
            task = bar.add_task("terrain on Dask", total=None)

            def progress(i: int, n: int, name: str, seconds: float) -> None:
                bar.console.print(f"  [{i}/{n}] {name}: {seconds:.1f} s")
                bar.update(task, completed=i, total=n, description=STAGES[i] if i < n else "reaches and rating curves (here)")

            bar.update(task, description=STAGES[0])
            site = Site.load(cfg, client=client, progress=progress, force=force)
    else:
        with console.status("preparing terrain (fill, D8, accumulation, HAND, rating curves)"):
            site = Site.load(cfg, force=force)
    t = site.terrain
    took = time.perf_counter() - t0
    console.print(f"terrain ready in {took:.1f} s: {site.ny} x {site.nx} cells, "
                  f"{int(t.drainage.sum())} channel cells in {t.n_reach} reaches; "
                  f"cached in {site.cache_path()}")
    with console.status("compiling the model kernels (Numba; cached for later runs)"):
        took = warm_up(site, cfg)
    console.print(f"model kernels ready in {took:.1f} s")


@app.command()
@_friendly
def run(config: ConfigOpt,
        at: Annotated[str, typer.Option("--at", help="cycle time, ISO 8601 with zone (default: now)")] = "",
        drill: Annotated[str, typer.Option(help="run as a drill with this name (CAP Exercise)")] = "",
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run one forecast cycle at TIME: forecast in, flood depth and zone levels out, notices sent."""
    from .config import load_config
    from .operators import make_channel, zone_failed_text
    from .pipeline import Inputs, run_cycle
    from .site import Site
    from .storage import Store

    _setup_logging(verbose)
    cfg = load_config(config)
    when = _parse_time(at) if at else datetime.now(timezone.utc).replace(second=0, microsecond=0)
    store = Store(cfg.db_url)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_cluster(cfg)) if cfg.compute.engine == "dask" and cfg.has_grid else None
        site = Site.load(cfg, client=client)  # terrain from the cache, or prepared on that cluster
        with console.status("forecast cycle: rain, runoff, routing, inundation, zone levels"
                            + (" (models on Dask, by basin group)" if client is not None else "")):
            res = run_cycle(site, cfg, store, Inputs(cfg), when, drill=drill or None,
                            channel=make_channel(cfg), client=client)
    issued = f"{res.forecast_issued:%Y-%m-%d %H:%M}Z" if res.forecast_issued else "none"
    if cfg.has_grid:
        console.print(f"cycle {res.run_id}: forecast issued {issued} ({res.forecast_file})")
        shown = {"forecast_peak_depth_m": "peak depth (m)"}
    else:
        console.print(f"cycle {res.run_id}: gauge readings up to {issued} ({res.forecast_file})")
        shown = {k: label for k, label in (("observed_stage_m", "stage (m)"),
                                           ("observed_discharge_m3s", "flow (m3/s)"),
                                           ("forecast_peak_discharge_m3s", "forecast peak flow (m3/s)"))
                 if any(k in m for m in res.metrics.values())}
    table = Table("zone", "level", "action", *shown.values(), "why")
    for d in res.decisions:
        m = res.metrics[d["zone"]]
        values = [m.get(k, float("nan")) for k in shown]
        action = d["action"] + (" (held for approval)" if d.get("held") else "")
        why = d["error"] if d["action"] == "failed" else "; ".join(d["reasons"][:2])
        table.add_row(d["zone"], d.get("level_name", "unchanged"), action,
                      *("-" if v != v else f"{v:.2f}" for v in values), why)
    console.print(table)
    for p in res.problems:
        console.print(f"[yellow]data problem:[/] {p}")
    console.print(f"{len(res.notices)} CAP notices, {res.messages_queued} SMS queued, "
                  f"{res.messages_sent} sent; outputs in {cfg.output_dir}")
    if res.failed_zones:
        from .operators import tell_operators

        for f in res.failed_zones:
            tell_operators(cfg, store, zone_failed_text(f, res.at), at=res.at, audit=False)
        raise typer.Exit(1)


@app.command()
@_friendly
def demo(config: ConfigOpt = Path("config/demo.toml"),
         twilio: bool = typer.Option(False, help="send the drill's SMS through Twilio "
                                                 "(TWILIO_* must be set) instead of the file channel"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the demo storm through the whole chain, cycle by cycle, as a drill."""
    from .config import load_config
    from .demo import run_demo

    _setup_logging(verbose)
    cfg = load_config(config)
    console.rule(f"[bold]floodwarn demo: {cfg.site.name}")
    console.print("A storm crosses the Millbrook valley. Every cycle takes the latest rainfall "
                  "forecast, runs runoff, routing and inundation on the site grid, compares each "
                  "zone with its thresholds and issues notices. This is a [bold]drill[/]: CAP "
                  "status Exercise, SMS marked EXERCISE, sent to a file, not to phones.\n")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("forecast cycles", total=None)

        def progress(done: int, total: int, res: Any) -> None:
            label = "forecast cycles"
            if res is not None:
                changes = [f"{d['zone']}->{d['level_name']}" for d in res.decisions
                           if d["action"] in ("raise", "lower", "all_clear")]
                label = f"cycle {res.at:%d %b %H:%M}Z"
                if changes:
                    bar.console.print(f"  {res.at:%d %b %H:%M}Z  " + ", ".join(changes))
            bar.update(task, total=total, completed=done, description=label)

        result = run_demo(cfg, channel_name="twilio" if twilio else "file", progress=progress,
                          status=lambda msg: bar.console.print(f"[dim]{msg}[/]"))
    _print_timeline(cfg, result)
    events = sorted(cfg.path(cfg.demo.events).glob("*.toml")) if cfg.demo and cfg.demo.events else []
    if events:
        console.print(f"Next: replay the storm through the service, with a report of hits, misses and "
                      f"lead times:\n  floodwarn replay {os.path.relpath(events[0])} --config {config}")


def _print_timeline(cfg: Any, result: Any) -> None:
    titles = {lv.name: lv.title for lv in cfg.levels}
    table = Table(title="Timeline per zone (UTC)", show_lines=True)
    table.add_column("zone")
    table.add_column("levels raised and lowered")
    table.add_column("peak depth", justify="right")
    table.add_column("peak at")
    table.add_column("lead time", justify="right")
    for tl in result.timelines.values():
        changes = "\n".join(f"{t:%d %b %H:%M}  {titles.get(lv, 'all clear')} ({action})"
                            for t, action, lv in tl.changes) or "no warning"
        lead = tl.lead_time_h
        table.add_row(tl.name, changes, f"{tl.peak_depth_m:.2f} m",
                      f"{tl.peak_time:%d %b %H:%M}" if tl.peak_depth_m > 0 and tl.peak_time else "-",
                      f"{lead:+.1f} h" if lead is not None else "-")
    console.print(table)
    console.print("Lead time = time from the first warning to the peak depth (positive: warned "
                  "ahead of the peak). Peak depth is the highest depth outside the river channel "
                  "in the zone, from the model run with the best-estimate rain.\n")
    o = result.outputs
    n_cap = len(list(Path(o["cap"]).glob("*.xml")))
    n_sms = sum(1 for _ in open(o["sms"])) if Path(o["sms"]).exists() else 0
    console.print("[bold]Outputs[/]")
    langs = ", ".join(cfg.notices.languages or [cfg.notices.language])
    console.print(f"  CAP 1.2 notices   {o['cap']}/  ({n_cap} files, status Exercise, languages {langs}; "
                  "each with an .html page beside it)")
    drill_feed = Path(o["cap"]).parent / "feed-exercise.atom"
    if drill_feed.exists():
        console.print(f"  Atom feed         {drill_feed}  (the drill's current notices)")
    console.print(f"  SMS log           {o['sms']}  ({n_sms} messages, numbers masked)")
    console.print(f"  depth GeoTIFFs    {o['depth']}/  (forecast peak depth, one per cycle)")
    console.print(f"  peak depth map    {o['map']}")
    console.print(f"  audit log (SQLite){o['database']}  (every decision and send: "
                  "floodwarn alerts log --config config/demo.toml)")
    console.print(f"{len(result.cycles)} cycles in {result.seconds:.1f} s.")


@app.command()
@_friendly
def serve(config: ConfigOpt,
          host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
          verbose: bool = typer.Option(False, "--verbose", "-v"),
          log_format: Annotated[str | None, typer.Option(
              "--log-format", help="text or json (one object per line); default: $FLOODWARN_LOG_FORMAT, "
                                   "else text")] = None) -> None:
    """Run the service: the scheduler (ingest, forecast cycles, SMS dispatch) and the web app.

    Stops cleanly on Ctrl-C or SIGTERM: the cycle in flight finishes, the outbox stays
    consistent, and the next start carries on from the database."""
    import uvicorn
    import uvicorn.config

    from .config import load_config
    from .logs import install_phone_filter, uvicorn_log_config
    from .secrets import secret_is_set
    from .service import Service
    from .web import create_app

    log_format = _setup_logging(verbose, log_format)
    logging.getLogger("warning").setLevel(logging.INFO)
    if not verbose:  # "skipped: maximum number of running instances" while a cycle runs is expected
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    cfg = load_config(config)
    if cfg.demo is not None and not secret_is_set("FLOODWARN_SECRET_KEY"):
        # the demo site keeps its own key beside its database, as `floodwarn demo` does
        key_file = cfg.output_dir / "demo-secret.key"
        if not key_file.exists():
            import secrets

            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_urlsafe(32) + "\n")
            key_file.chmod(0o600)
        os.environ["FLOODWARN_SECRET_KEY_FILE"] = str(key_file)
        console.print(f"FLOODWARN_SECRET_KEY is not set: the demo site uses its own key, {key_file}")
    with console.status("preparing terrain (cached after the first time)"):
        svc = Service(cfg)
        svc.site.prepare()
    app_ = create_app(cfg, store=svc.store, service=svc)
    svc.start()
    clock = "simulated from " + f"{cfg.service.simulate_from:%Y-%m-%d %H:%M}Z x{cfg.service.speed:g}" \
        if cfg.service.simulate_from else "wall clock"
    console.print(f"floodwarn serving {cfg.site.name} on http://{host}:{port}/ (clock: {clock}); "
                  f"API at /api (OpenAPI: /openapi.json), health at /health. Ctrl-C to stop.")
    # uvicorn runs in a thread so that SIGTERM/SIGINT come here: uvicorn's own handlers
    # re-raise the signal after its shutdown, which would kill the process before the
    # scheduler had finished the cycle in flight
    server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port,
                                           log_level="info" if verbose else "warning",
                                           log_config=uvicorn_log_config(uvicorn.config.LOGGING_CONFIG, log_format)))
    install_phone_filter()  # and on handlers libraries made since _setup_logging (distributed's)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    web = threading.Thread(target=server.run, name="web", daemon=True)
    web.start()
    while web.is_alive() and not stop.wait(0.5):
        pass
    server.should_exit = True
    web.join(30)
    svc.shutdown()
    if not server.started:
        err_console.print(f"[bold red]error:[/] the web app could not listen on {host}:{port} "
                          "(port in use?); the scheduler was stopped")
        raise typer.Exit(1)
    console.print("stopped cleanly.")


from . import cli_alerts  # noqa: E402,F401  (registers the subscribers/alerts/dispatch commands)
from . import cli_replay  # noqa: E402,F401  (registers replay and tune)
from . import cli_calibrate  # noqa: E402,F401  (registers the calibrate command)
from . import cli_db  # noqa: F401  (registers db upgrade/current/backup/restore)


def main() -> None:  # pragma: no cover
    app()
