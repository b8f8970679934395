"""``lorasize report``: the capacity-planning report as one HTML file."""

from __future__ import annotations

import click

from ..plan.report import load_plan, steps, write_report


@click.command()
@click.argument("plan", metavar="PLAN.yaml")
@click.option("--out", "-o", default="report.html", show_default=True, metavar="FILE",
              help="Where to write the HTML report (written atomically).")
def report(plan: str, out: str) -> int:
    """Write a self-contained HTML capacity-planning report from a YAML plan.

    The page embeds plotly.js and opens offline: training memory by component across ranks and
    targets, memory against sequence length with each GPU's limit, the largest batch and
    sequence per GPU, adapters resident per GPU, hit rate against resident slots, and estimate
    against measurement. See examples/plan.yaml.

    \b
    Example:
      lorasize report examples/plan.yaml --out report.html
    """
    from ..files import check_writable

    check_writable(out, "--out")  # before the plan: its validation rows take seconds to predict
    parsed = load_plan(plan)
    with click.progressbar(length=steps(parsed), label="computing", file=click.get_text_stream("stderr")) as bar:
        charts = write_report(parsed, out, progress=bar.update)
    click.echo(f"wrote {out} ({charts} charts)")
    return 0
