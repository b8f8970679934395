"""``lorasize check``."""

from __future__ import annotations

import json
import time

import click

from ..ci.check import MODES, check as run_check, render_table
from .options import output_options


@click.command()
@click.argument("budgets", metavar="BUDGETS.yaml", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(MODES, case_sensitive=False), default="estimate",
              show_default=True,
              help="estimate (analytic, no torch) or trace (one real step under fake tensors; "
                   "needs lorasize[torch]).")
@click.option("--from-profiles", "profiles", metavar="DIR",
              help="Judge the measured figures of profiled runs (lorasize profile) in this folder.")
@click.option("--update-baseline", is_flag=True,
              help="Store the numbers measured now as the baselines (the file is rewritten "
                   "atomically; comments and order are kept).")
@click.option("--junit", metavar="FILE", help="Also write a JUnit XML report (one testcase per "
                                              "scenario).")
@output_options
def check(budgets: str, mode: str, profiles: str | None, update_baseline: bool,
          junit: str | None, as_json: bool) -> int:
    """Check training memory against the budgets and baselines of a YAML file, for CI.

    Exits 0 when every scenario is within its budget and its baseline's tolerance, 1 when one
    is not (failing rows first, with the breakdown component that moved most), 2 on a bad file.

    \b
    Example:
      lorasize check memory-budgets.yaml
      lorasize check memory-budgets.yaml --junit report.xml
      lorasize check memory-budgets.yaml --update-baseline
    """
    from ..files import check_writable

    if junit:
        check_writable(junit, "--junit")
    if update_baseline:
        check_writable(budgets, "--update-baseline")
    started = time.perf_counter()
    result = run_check(budgets, mode=mode.lower(), profiles=profiles,
                       update_baseline=update_baseline)
    if junit:
        from ..ci.junit import write_junit

        write_junit(junit, result, started)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else render_table(result))
    return 0 if result.ok else 1
