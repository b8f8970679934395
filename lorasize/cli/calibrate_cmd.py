"""``lorasize calibrate``: fit the overhead terms from measurements."""

from __future__ import annotations

import json
from dataclasses import replace

import click

from pathlib import Path

from ..calibrate.calibration import (calibrate_from_measurements, fit, fit_mfu, mfu_points, profile_points,
                           write_calibration)
from ..errors import LorasizeError
from ..units import format_bytes


def _calibrate_timing(timing: str, profiles: tuple[str, ...], merged, out: str) -> int:
    from ..calibrate.timing_fit import fit_rows, rows_from_profiles, write_params
    from ..calibrate.timing_rows import ALL_CONFIDENCES, load_rows
    from ..measurements import TIMING

    path = TIMING if timing == "shipped" else timing
    if not Path(path).is_file():
        raise LorasizeError("no such throughput CSV", source="--timing")
    try:
        rows, _ = load_rows(path, ALL_CONFIDENCES)
    except (KeyError, ValueError) as exc:
        raise LorasizeError(f"not a throughput CSV in the format of timing.csv ({exc})",
                            source="--timing") from None
    if merged is not None:
        rows += rows_from_profiles(list(merged.profiles))
    if not rows:
        raise LorasizeError("no usable row: nothing to fit; no file written", source="--timing")
    params = fit_rows(rows, f"fitted to {len(rows)} rows ({Path(path).name}"
                            + (f" and {', '.join(profiles)}" if profiles else "") + ")")
    write_params(params, out)
    click.echo(f"wrote {out}: step-time figures fitted to {len(rows)} rows (gemm efficiency "
               f"{params.gemm_efficiency:.3f}, bandwidth efficiency "
               f"{params.bandwidth_efficiency:.3f})")
    return 0


@click.command()
@click.option("--measurements", "-m", metavar="CSV",
              help="A measurement CSV in the format of measurements/measured.csv (default, without "
                   "--profiles: the published measurements shipped with lorasize).")
@click.option("--profiles", "-p", metavar="DIR", multiple=True,
              help="A folder of profile files (lorasize profile, the Trainer callback), read "
                   "recursively; repeat for folders from several machines. Duplicates are "
                   "counted once and outliers named and left out.")
@click.option("--summary", is_flag=True,
              help="Only merge and check the --profiles (one line per file: used, duplicate, "
                   "outlier, rejected; the estimate beside each); write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --summary: one JSON object.")
@click.option("--timing", "timing", metavar="CSV", is_flag=False, flag_value="shipped",
              default=None,
              help="Fit the step-time model's figures instead, from a throughput CSV in the format "
                   "of measurements/timing.csv (alone: the shipped one) and the GPU profiles of "
                   "--profiles; `estimate --timing-params` reads the file.")
@click.option("--out", "-o", metavar="FILE", help="Calibration file to write (needed unless --summary).")
def calibrate(measurements: str | None, profiles: tuple[str, ...], summary: bool, as_json: bool,
              timing: str | None, out: str | None) -> int:
    """Fit the CUDA context and allocator-reserve terms from measurements, and the model FLOPs
    utilisation from GPU profiles, and write a calibration file that `estimate --calibration`
    reads. With --timing, fit the step-time model's figures instead.

    \b
    Example:
      lorasize calibrate -o my-calibration.json
      lorasize calibrate --profiles profiles/ -o my-calibration.json
      lorasize calibrate --timing my-runs.csv --profiles profiles/ -o my-timing.json
      lorasize calibrate --profiles team-a/ --profiles team-b/ --summary
    """
    from ..calibrate.merge import merge_profiles, render_merge
    from ..files import check_writable

    if summary:
        if not profiles:
            raise LorasizeError("--summary checks profiles: give --profiles DIR", source="--summary")
        merged = merge_profiles(list(profiles))
        click.echo(json.dumps(merged.to_dict(), indent=2) if as_json else render_merge(merged))
        return 0
    if not out:
        raise LorasizeError("where to write the calibration? give --out FILE (or --summary to "
                            "only check the profiles)", source="--out")
    check_writable(out, "--out")
    merged = merge_profiles(list(profiles)) if profiles else None
    if merged is not None:
        for row in merged.rows:
            if row.status in ("duplicate", "outlier", "rejected"):
                click.echo(f"note: {row.path}: {row.status}: {row.detail}", err=True)
    if timing is not None:
        return _calibrate_timing(timing, profiles, merged, out)
    if not measurements and not profiles:
        from ..measurements import MEMORY

        measurements = str(MEMORY)
    reserved, device, rows, times = [], [], [], []
    if measurements:
        _, report = calibrate_from_measurements(measurements)
        reserved += report["points_reserved"]
        device += report["points_device"]
        rows += report["rows"]
    if merged is not None:
        loaded = list(merged.profiles)
        more_reserved, more_device, names = profile_points(loaded)
        times, timed = mfu_points(loaded)
        rows += [f"profile-time:{n}" for n in timed]
        reserved += more_reserved
        device += more_device
        rows += [f"profile:{n}" for n in names]
    sources = " and ".join(x for x in (measurements and Path(measurements).name,
                                       ", ".join(profiles)) if x)
    if not (reserved or device or times):
        raise LorasizeError("no usable row: nothing to fit (GPU profiles of training steps, or "
                            "measurement rows of peak_reserved / nvidia_smi on one GPU, are "
                            "needed); no file written",
                            source=", ".join(profiles) or measurements)
    calibration, report = fit(reserved, device, f"fitted from {sources}")
    calibration = replace(calibration, mfu=fit_mfu(times))
    report["rows"] = rows
    report["mfu_rows"] = len(times)
    if merged is not None:
        report["profiles"] = {k: v for k, v in merged.to_dict().items() if k != "profiles"}
    write_calibration(calibration, out, report)
    click.echo(f"wrote {out}: reserve_fraction {calibration.reserve_fraction:g} "
               f"({report['reserved_rows']} rows), cuda_context {format_bytes(calibration.cuda_context_bytes)} "
               f"({report['device_rows']} rows), mfu "
               f"{'default' if calibration.mfu is None else f'{calibration.mfu:g}'} ({len(times)} rows)")
    click.echo(json.dumps({"rows": report["rows"]}))
    return 0
