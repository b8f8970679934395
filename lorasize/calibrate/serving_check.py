"""Serving speed against published figures lorasize never saw while it was built
(``lorasize/data/measurements/serving_added.csv``): the ratios users decide by and the absolute
figures, each row run through ``lorasize serve`` with its own flags.

How a published metric is read from ``serve --json``'s ``performance`` block (fixed before the
first prediction was read, 2026-12-07):

- output tokens/s of an offline run: ``throughput_tokens_per_s`` (``base`` for a run without
  adapters, ``adapters`` with them);
- input + output tokens/s: the same, times (prompt + output) / output;
- tokens/s of one request at batch 1, prefill included: output / (prefill + output x the batch-1
  decode latency, ``base`` or ``unmerged``);
- a wall time: only its ratio to its pair's (the inverse of the throughputs').

Ratios pair rows of one source and run (:data:`PAIRS`). Reported over confidence high and medium.

Run ``python -m lorasize.calibrate.serving_check`` for the table.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

from .timing_fit import summary

CONFIDENCES = ("high", "medium")
_LEVELS = ("high", "medium", "low")  # a pair is as confident as its less confident row
# (row, row it is divided by): the same source, GPU and load, one with adapters and one without
PAIRS = (("vllm11267-lora1", "vllm11267-base"), ("vllm11267-lora4", "vllm11267-base"),
         ("vllm11267-lora4", "vllm11267-lora1"), ("vllm10062-lora", "vllm10062-base"),
         ("lorax333-lora", "lorax333-base"))


def _flag(argv: list[str], name: str, default: int) -> int:
    return int(argv[argv.index(name) + 1]) if name in argv else default


def _serve(argv: list[str]) -> dict:
    """``serve --json``'s output for ``argv`` (run in this process)."""
    import contextlib
    import io

    from ..cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["serve", *argv, "--json"])
    if code not in (0, 1):  # 1: does not fit, with the figures it could give
        raise ValueError(f"lorasize serve {shlex.join(argv)}: {err.getvalue().strip()}")
    return json.loads(out.getvalue())


def implausible(row: dict, served: dict) -> bool:
    """A batch-1 decode rate that reads the base weights faster than the card's bandwidth."""
    from ..arch.catalog import gpu_from_catalog

    if not row["metric"].lower().startswith("tokens per second per request"):
        return False
    bandwidth = gpu_from_catalog(served["gpu"]).bandwidth_gbps * 1e9
    return served["base_bytes"] * float(row["value"]) > bandwidth


def predicted(row: dict, perf: dict) -> float | None:
    """The row's metric as lorasize predicts it (None: only a ratio reads it)."""
    argv = shlex.split(row["lorasize_cmd"])
    prompt, output = _flag(argv, "--prompt-tokens", 512), _flag(argv, "--output-tokens", 256)
    adapters = not row["adapters_resident"].startswith("0")
    metric = row["metric"].lower()
    throughput = perf["throughput_tokens_per_s"]["adapters" if adapters else "base"]
    if metric.startswith("output token throughput"):
        return throughput
    if metric.startswith("total token throughput"):
        return throughput * (prompt + output) / output
    if metric.startswith("tokens per second per request"):
        decode = perf["decode_ms_per_token"]["batch_1"]["unmerged" if adapters else "base"]
        return output / (perf["prefill_ms"] / 1e3 + output * decode / 1e3)
    if "wall time" in metric:
        return None
    raise ValueError(f"{row['id']}: no reading for metric {row['metric']!r}")


def _inverse(metric: str) -> bool:
    return "wall time" in metric.lower()


def report(path) -> dict:
    """Each expressible row's prediction and error, each pair's ratio, and their summaries."""
    rows = {r["id"]: r for r in csv.DictReader(Path(path).open(newline="", encoding="utf-8"))}
    perfs, values, flagged = {}, {}, []
    for rid, row in rows.items():
        if not row["lorasize_cmd"]:
            continue
        served = _serve(shlex.split(row["lorasize_cmd"])[2:])
        perf = perfs[rid] = served.get("performance")
        if implausible(row, served):
            flagged.append(rid)
        values[rid] = predicted(row, perf) if perf else None
    absolute = [{"id": rid, "confidence": rows[rid]["confidence"],
                 "measured": float(rows[rid]["value"]), "lorasize": v,
                 "error": v / float(rows[rid]["value"]) - 1}
                for rid, v in values.items() if v is not None]
    unanswered = sorted(rid for rid in perfs if perfs[rid] is None)
    ratios = []
    for top, bottom in PAIRS:
        if top not in perfs or bottom not in perfs or not (perfs[top] and perfs[bottom]):
            continue
        measured = float(rows[top]["value"]) / float(rows[bottom]["value"])
        if _inverse(rows[top]["metric"]):  # a time: the throughputs' inverse ratio
            lo = perfs[bottom]["throughput_tokens_per_s"]
            hi = perfs[top]["throughput_tokens_per_s"]
            pick = lambda r: "adapters" if not r["adapters_resident"].startswith("0") else "base"
            model = lo[pick(rows[bottom])] / hi[pick(rows[top])]
        else:
            model = values[top] / values[bottom]
        confidence = max((rows[i]["confidence"] for i in (top, bottom)), key=_LEVELS.index)
        ratios.append({"pair": f"{top} / {bottom}", "confidence": confidence,
                       "measured": measured, "lorasize": model, "error": model / measured - 1})
    return {"absolute": absolute, "ratios": ratios, "unanswered": unanswered,
            "implausible": flagged,
            "absolute_summary": summary([a["error"] for a in absolute
                                         if a["confidence"] in CONFIDENCES]),
            "ratio_summary": summary([r["error"] for r in ratios
                                      if r["confidence"] in CONFIDENCES])}


def print_report(data: dict) -> None:
    def pct(x):
        return f"{100 * x:+.1f}%"

    print("Serving speed against published figures never used to build lorasize "
          "(serving_added.csv)\n")
    print(f"{'ratio':46s} {'conf':6s} {'measured':>9s} {'lorasize':>9s} {'error':>8s}")
    for r in data["ratios"]:
        print(f"{r['pair']:46s} {r['confidence']:6s} {r['measured']:9.3f} {r['lorasize']:9.3f} "
              f"{pct(r['error']):>8s}")
    print(f"\n{'figure':46s} {'conf':6s} {'measured':>9s} {'lorasize':>9s} {'error':>8s}")
    for a in data["absolute"]:
        print(f"{a['id']:46s} {a['confidence']:6s} {a['measured']:9.1f} {a['lorasize']:9.1f} "
              f"{pct(a['error']):>8s}")
    for name, key in (("ratios", "ratio_summary"), ("absolute", "absolute_summary")):
        s = data[key]
        if s["rows"]:
            print(f"{name} (confidence high and medium): {s['rows']} rows, median "
                  f"{100 * s['median_abs_error']:.1f}%, p90 {100 * s['p90_abs_error']:.1f}%")
    if data["implausible"]:
        print("implausible for the hardware (a batch-1 rate that reads the weights faster than "
              "the card's bandwidth): " + ", ".join(data["implausible"]))
    if data["unanswered"]:
        print("not answered (nothing fits): " + ", ".join(data["unanswered"]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..measurements import SERVING_ADDED

    parser = argparse.ArgumentParser(prog="python -m lorasize.calibrate.serving_check")
    parser.add_argument("--measurements", default=str(SERVING_ADDED))
    args = parser.parse_args(argv)
    if not Path(args.measurements).is_file():
        parser.exit(2, f"{parser.prog}: error: --measurements: no such file: {args.measurements}\n")
    print_report(report(args.measurements))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
