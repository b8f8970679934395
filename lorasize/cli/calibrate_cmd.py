"""``lorasize calibrate``: fit the overhead terms from measurements."""

from __future__ import annotations

import json

import click

from ..calibration import calibrate_from_measurements, write_calibration
from ..units import format_bytes


@click.command()
@click.option("--measurements", "-m", required=True, metavar="CSV",
              help="A measurement CSV in the format of measurements/measured.csv.")
@click.option("--out", "-o", required=True, metavar="FILE", help="Calibration file to write.")
def calibrate(measurements: str, out: str) -> int:
    """Fit the CUDA context and allocator-reserve terms from measurements and write a
    calibration file that `estimate --calibration` reads.

    \b
    Example:
      lorasize calibrate -m ../shared/measurements/measured.csv -o lorasize/data/calibration.json
    """
    calibration, report = calibrate_from_measurements(measurements)
    write_calibration(calibration, out, report)
    click.echo(f"wrote {out}: reserve_fraction {calibration.reserve_fraction:g} "
               f"({report['reserved_rows']} rows), cuda_context {format_bytes(calibration.cuda_context_bytes)} "
               f"({report['device_rows']} rows)")
    click.echo(json.dumps({"rows": report["rows"]}))
    return 0
