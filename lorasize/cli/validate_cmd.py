"""``lorasize validate``: predictions against published measurements."""

from __future__ import annotations

import json

import click

from ..plan.render import table
from ..calibrate.validate import summary, validate as run_validate
from .options import output_options


@click.command()
@click.option("--measurements", "-m", metavar="CSV",
              help="A measurement CSV in the format of measurements/measured.csv (default: the "
                   "published measurements shipped with lorasize).")
@output_options
def validate(measurements: str | None, as_json: bool) -> int:
    """Compare lorasize's predictions with published measurements, row by row.

    Prints predicted vs measured with the signed error, the median and 90th-percentile absolute
    error per source, method and metric, and every row skipped with the reason.

    \b
    Examples:
      lorasize validate
      lorasize validate --measurements my-runs.csv --json
    """
    from ..measurements import MEMORY

    rows = run_validate(measurements or MEMORY)
    stats = summary(rows)
    if as_json:
        click.echo(json.dumps({"rows": [r.to_dict() for r in rows], "summary": stats}, indent=2))
        return 0
    compared = [r for r in rows if r.rel_error is not None]
    click.echo(table([(r.id, r.method, r.metric, f"{r.predicted:,}", f"{r.measured:,}",
                       f"{100 * r.rel_error:+.1f}%") for r in compared],
                     ("id", "method", "metric", "predicted", "measured", "error"), "lllrrr"))
    if "overall" in stats:
        o = stats["overall"]
        click.echo(f"\n{o['rows']} rows compared: median absolute error {100 * o['median_abs_error']:.1f}%, "
                   f"90th percentile {100 * o['p90_abs_error']:.1f}%")
        click.echo(table([(k, str(v["rows"]), f"{100 * v['median_abs_error']:.1f}%",
                           f"{100 * v['p90_abs_error']:.1f}%") for k, v in stats["groups"].items()],
                         ("source | method | metric", "rows", "median", "p90"), "lrrr"))
    if "bar" in stats:
        b = stats["bar"]
        click.echo(f"\nbar (single-GPU training rows, confidence high): {b['rows']} rows, median "
                   f"{100 * b['median_abs_error']:.1f}% (limit {100 * b['median_limit']:.0f}%), "
                   f"90th percentile {100 * b['p90_abs_error']:.1f}% "
                   f"(limit {100 * b['p90_limit']:.0f}%): {'met' if b['met'] else 'NOT met'}; "
                   f"{len(b['skipped'])} rows of the set skipped")
    skipped = [r for r in rows if r.skipped]
    if skipped:
        click.echo(f"\n{len(skipped)} rows skipped:")
        click.echo(table([(r.id, r.skipped) for r in skipped]))
    return 0
