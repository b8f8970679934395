"""``lorasize calibrate``: fit the overhead terms from measurements."""

from __future__ import annotations

import json

import click

from pathlib import Path

from ..calibration import calibrate_from_measurements, fit, profile_points, write_calibration
from ..errors import LorasizeError
from ..profile.schema import load_profiles
from ..units import format_bytes


@click.command()
@click.option("--measurements", "-m", metavar="CSV",
              help="A measurement CSV in the format of measurements/measured.csv.")
@click.option("--profiles", "-p", metavar="DIR", help="A folder of profile files (lorasize profile).")
@click.option("--out", "-o", required=True, metavar="FILE", help="Calibration file to write.")
def calibrate(measurements: str | None, profiles: str | None, out: str) -> int:
    """Fit the CUDA context and allocator-reserve terms from measurements and write a
    calibration file that `estimate --calibration` reads.

    \b
    Example:
      lorasize calibrate -m ../shared/measurements/measured.csv -o lorasize/data/calibration.json
    """
    if not measurements and not profiles:
        raise LorasizeError("give --measurements CSV and/or --profiles DIR", source="--measurements")
    reserved, device, rows = [], [], []
    if measurements:
        _, report = calibrate_from_measurements(measurements)
        reserved += report["points_reserved"]
        device += report["points_device"]
        rows += report["rows"]
    if profiles:
        more_reserved, more_device, names = profile_points(load_profiles(profiles))
        reserved += more_reserved
        device += more_device
        rows += [f"profile:{n}" for n in names]
    sources = " and ".join(x for x in (measurements and Path(measurements).name, profiles) if x)
    calibration, report = fit(reserved, device, f"fitted from {sources}")
    report["rows"] = rows
    write_calibration(calibration, out, report)
    click.echo(f"wrote {out}: reserve_fraction {calibration.reserve_fraction:g} "
               f"({report['reserved_rows']} rows), cuda_context {format_bytes(calibration.cuda_context_bytes)} "
               f"({report['device_rows']} rows)")
    click.echo(json.dumps({"rows": report["rows"]}))
    return 0
