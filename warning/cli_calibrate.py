"""``floodwarn calibrate``: fit the lumped continuous SCS-CN model to a gauged record.

Registered on the main app by importing this module from ``warning/cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .cli import _friendly, _setup_logging, app, console

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "storms" / "hupsel_hourly" / "PEQ_Hupsel.dat"

_PARAM_DOC = {
    "s_mm": ("mm", "SCS retention S above the threshold"),
    "sa_mm": ("mm", "threshold Sa of the soil store (no runoff below)"),
    "lp": ("-", "evaporation at the potential rate above lp (Sa + S)"),
    "tau_perc_h": ("h", "drainage time constant, soil to slow reservoir"),
    "quick_fraction": ("-", "share of runoff to the quick cascade"),
    "n_quick": ("-", "reservoirs in the quick Nash cascade"),
    "k_quick_h": ("h", "constant of each quick reservoir"),
    "k_slow_h": ("h", "constant of the slow reservoir"),
}


@app.command("calibrate")
@_friendly
def calibrate_cmd(
        data: Annotated[Path, typer.Option("--data", help="hourly record: date P ETpot Q (mm/h), "
                                                          "WALRUS PEQ layout, times read as UTC")]
        = DEFAULT_DATA,
        calibration_period: Annotated[str, typer.Option(help="START:END dates, end day included")]
        = "2011-01-01:2012-12-31",
        validation_period: Annotated[str, typer.Option(help="START:END dates, scored only; '' for none")]
        = "2013-01-01:2013-09-10",
        warmup_days: Annotated[float, typer.Option(help="days at the start of the calibration period "
                                                         "that are run but not scored")] = 90.0,
        seed: Annotated[int, typer.Option(help="seed of the differential evolution")] = 1,
        workers: Annotated[int, typer.Option(help="processes evaluating the population (-1: all cores)")]
        = 1,
        popsize: Annotated[int, typer.Option(help="population per parameter")] = 15,
        maxiter: Annotated[int, typer.Option(help="most generations")] = 300,
        write: Annotated[Path | None, typer.Option("--write", help="save the parameters, scores and "
                                                                  "provenance to this .toml or .json file")]
        = None,
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Calibrate the lumped continuous SCS-CN model (runoff and routing parameters) by NSE
    on hourly discharge, then score a later validation period from the warm state."""
    from .calibration import Period, calibrate, read_peq, write_params

    _setup_logging(verbose)
    cal_p = Period.parse(calibration_period)
    val_p = Period.parse(validation_period) if validation_period.strip() else None
    if write is not None and write.suffix.lower() not in (".toml", ".json"):
        raise typer.BadParameter(f"{write}: use a .toml or .json file name", param_hint="--write")
    record = read_peq(data)
    console.print(f"{record.source}: {len(record)} hours, {record.start:%Y-%m-%d %H:%M} to "
                  f"{record.end:%Y-%m-%d %H:%M} (times read as UTC; the file states no zone)")
    with console.status("calibrating (differential evolution)") as status:
        def progress(generation: int, best_nse: float) -> None:
            status.update(f"calibrating: generation {generation}, best NSE {best_nse:.4f}")

        res = calibrate(record, cal_p, val_p, warmup_days=warmup_days, seed=seed, workers=workers,
                        popsize=popsize, maxiter=maxiter, progress=progress)

    table = Table(title="Calibrated parameters (lumped continuous SCS-CN model)")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("meaning")
    for name, value in res.params.to_dict().items():
        unit, doc = _PARAM_DOC.get(name, ("", ""))
        table.add_row(name, str(value) if isinstance(value, int) else f"{value:.4g}", unit, doc)
    table.add_row("(curve number)", f"{res.params.curve_number:.1f}", "-", "25400 / (S + 254)")
    console.print(table)

    scores = Table(title="Hourly discharge scores (UTC)")
    for col in ("period", "hours scored", "n", "NSE", "KGE", "r", "alpha", "beta"):
        scores.add_column(col, justify="left" if col in ("period", "hours scored") else "right")
    rows = [("calibration", res.objective_start, res.calibration_period.end, res.calibration)]
    if res.validation is not None and res.validation_period is not None:
        rows.append(("validation", res.validation_period.start, res.validation_period.end, res.validation))
    for label, start, end, s in rows:
        scores.add_row(label, f"{start:%Y-%m-%d %H}h ..\n{end:%Y-%m-%d %H}h", str(s.n_hours), f"{s.nse:.3f}",
                       f"{s.kge:.3f}", f"{s.r:.3f}", f"{s.alpha:.3f}", f"{s.beta:.3f}")
    console.print(scores)
    console.print(f"{res.n_evaluations} model runs in {res.n_generations} generations, "
                  f"{res.seconds_optimisation:.1f} s ({res.optimiser_message}); seed {res.seed}, "
                  f"workers {workers}. Validation starts from the warm state of one continuous run.")
    if write is not None:
        out = write_params(write, res)
        console.print(f"parameters written to {out}")
