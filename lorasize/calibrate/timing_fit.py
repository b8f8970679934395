"""Fit the step-time model's figures (:class:`lorasize.perf.steptime.TimeParams`) to published
throughput, and measure it honestly: leave-one-source-out.

The objective is the mean absolute log error of tokens/s per GPU over every row lorasize can
express (low confidence included: they inform the fit, never a reported error), plus a weak pull towards the unfitted defaults (so a figure no row informs stays
where physics put it). Efficiencies are fitted through a logistic (0 to 1), the rest through
a logarithm; the minimiser is Nelder-Mead (pure Python, deterministic).

Run ``python -m lorasize.calibrate.timing_fit`` to refit ``lorasize/data/timing_params.json``
from the shipped ``timing.csv``; ``--report`` prints the leave-one-source-out table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from ..perf.steptime import PARAMS_FILE, TimeParams, combine, terms
from ..perf.work import step_work
from .timing_rows import ALL_CONFIDENCES, CONFIDENCES, TimingRow, load_rows

# Sources never used by the shipped fit: their rows are the "not seen" check.
HELD_OUT_SOURCES = (
    "NVIDIA NeMo AutoModel performance summary",
    "LLaMA-Factory wiki Performance-Comparison (quoted in unsloth README)",
    "Raschka, 'Practical Tips for Finetuning LLMs Using LoRA' (Ahead of AI, Nov 2023)",
)
PRIOR_WEIGHT = 0.002
_EFFICIENCIES = ("gemm_efficiency", "attention_efficiency", "bandwidth_efficiency", "overlap",
                 "comm_overlap")


@dataclass(frozen=True)
class Sample:
    """A row ready to predict: its terms on its GPU and what was measured."""

    id: str
    source: str
    tokens: int
    measured: float
    terms: object


def samples(rows: list[TimingRow]) -> list[Sample]:
    out = []
    for r in rows:
        work = step_work(r.model, r.targets, r.train, r.shard, r.dropout, r.dora,
                         r.paged_out_bytes)
        out.append(Sample(r.id, r.source, r.train.tokens, r.measured_tps, terms(work, r.gpu)))
    return out


def predict(s: Sample, p: TimeParams) -> float:
    """Tokens per second per GPU."""
    return s.tokens / combine(s.terms, p).seconds


def _keys(p: TimeParams) -> list[tuple[str, str | None]]:
    # gemm_efficiency stays at its definition (TimeParams): the data cannot tell it from gemm_k0
    keys = [(k, None) for k in ("attention_efficiency", "bandwidth_efficiency",
                                "dequant_bytes", "gather_us", "comm_overlap", "overlap",
                                "launch_us", "gemm_k0")]
    keys += [("comm_efficiency", k) for k in sorted(p.comm_efficiency)]
    return keys


def _encode(p: TimeParams, keys) -> list[float]:
    out = []
    for name, sub in keys:
        v = getattr(p, name)[sub] if sub else getattr(p, name)
        bounded = name in _EFFICIENCIES or name == "comm_efficiency"
        v = min(max(v, 1e-6), 1 - 1e-6) if bounded else max(v, 1e-9)
        out.append(math.log(v / (1 - v)) if bounded else math.log(v))
    return out


def _decode(x: list[float], base: TimeParams, keys) -> TimeParams:
    values, dicts = {}, {"comm_efficiency": dict(base.comm_efficiency)}
    for (name, sub), xi in zip(keys, x):
        bounded = name in _EFFICIENCIES or name == "comm_efficiency"
        v = 1 / (1 + math.exp(-xi)) if bounded else math.exp(xi)
        if sub:
            dicts[name][sub] = v
        else:
            values[name] = v
    return replace(base, **values, **dicts)


def loss(batch: list[Sample], p: TimeParams) -> float:
    return statistics.fmean(abs(math.log(predict(s, p) / s.measured)) for s in batch)


class _Batch:
    """:func:`combine`'s seconds for a whole batch at once with numpy: the fit's loss in
    microseconds instead of milliseconds. The same arithmetic as :func:`combine` (a test holds
    them equal); two rewrites: the per-component sums become one sum, and a class of collectives
    that hide behind the same pass hides ``min(their sum, what that pass can hide)``, which is
    what :func:`combine`'s one-at-a-time loop adds up to."""

    _CLASSES = ("forward", "backward", "none")

    def __init__(self, batch: list[Sample]):
        import numpy as np

        self.np, n = np, len(batch)
        gemms = [(i, g) for i, s in enumerate(batch) for g in s.terms.gemms]
        self.index = np.array([i for i, _ in gemms], dtype=np.int64)
        self.gemm_compute, self.gemm_memory, self.gemm_k = (
            np.array([g[j] for _, g in gemms], dtype=float) for j in (1, 2, 3))
        column = lambda name: np.array([getattr(s.terms, name) for s in batch], dtype=float)
        self.attention, self.memory, self.dequant, self.optimizer = (
            column(k) for k in ("attention", "memory", "dequant", "optimizer"))
        self.gathers, self.kernels, self.forward_share, self.host = (
            column(k) for k in ("gathers", "kernels", "forward_share", "host_seconds"))
        self.syncs = np.array([s.terms.syncs for s in batch], dtype=bool)
        self.kinds = sorted({c[0] for s in batch for c in s.terms.comms})
        self.comms = np.zeros((n, len(self._CLASSES), len(self.kinds)))
        for i, s in enumerate(batch):
            for kind, seconds, hidden_by in s.terms.comms:
                self.comms[i, self._CLASSES.index(hidden_by), self.kinds.index(kind)] += seconds
        self.log_measured = np.log(np.array([s.measured / s.tokens for s in batch]))

    def seconds(self, p: TimeParams):
        np = self.np
        gemm = np.maximum(self.gemm_compute * (1 + p.gemm_k0 / self.gemm_k) / p.gemm_efficiency,
                          self.gemm_memory / p.bandwidth_efficiency)
        compute = (np.bincount(self.index, gemm, minlength=len(self.attention))
                   + self.attention / p.attention_efficiency
                   + (self.memory + self.optimizer) / p.bandwidth_efficiency
                   + self.dequant * p.dequant_bytes)
        efficiency = np.array([p.comm_efficiency.get(k, 1.0) for k in self.kinds])
        offered = (self.comms / efficiency).sum(axis=2) if self.kinds else 0.0
        forward = compute * self.forward_share
        hideable = np.stack([forward, compute - forward, np.zeros_like(compute)], axis=1)
        hideable = np.where(self.syncs[:, None], 0.0, hideable * p.comm_overlap)
        exposed = (offered - np.minimum(offered, hideable)).sum(axis=1) if self.kinds else 0.0
        cpu = (self.kernels * p.launch_us + self.gathers * p.gather_us) * 1e-6 + self.host
        busy = np.where(self.syncs, compute, compute + exposed)
        return compute + exposed + cpu - p.overlap * np.minimum(cpu, busy)

    def loss(self, p: TimeParams) -> float:
        """:func:`loss` over the batch."""
        np = self.np
        return float(np.mean(np.abs(-np.log(self.seconds(p)) - self.log_measured)))


def _batch_loss(batch: list[Sample]):
    """The fastest exact loss over ``batch``: numpy's when it is installed (it comes with
    torch), else :func:`loss` row by row."""
    try:
        vectorized = _Batch(batch)
    except ImportError:
        return lambda p: loss(batch, p)
    return vectorized.loss


def nelder_mead(f, x0: list[float], step: float = 0.5, iterations: int = 3000,
                tolerance: float = 1e-7) -> list[float]:
    """Minimise ``f`` from ``x0`` (Nelder and Mead 1965, standard coefficients)."""
    n = len(x0)
    simplex = [list(x0)] + [[x + (step if i == j else 0.0) for j, x in enumerate(x0)]
                            for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tolerance:
            break
        centroid = [sum(x[j] for x in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, xs)]
                                    for xs in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def fit(batch: list[Sample], start: TimeParams | None = None, restarts: int = 3) -> TimeParams:
    """The figures that minimise the mean absolute log error over ``batch``."""
    start = start or TimeParams()
    keys = _keys(start)
    x0 = _encode(start, keys)

    batch_loss = _batch_loss(batch)

    def objective(x):
        prior = PRIOR_WEIGHT * sum((a - b) ** 2 for a, b in zip(x, x0))
        return batch_loss(_decode(x, start, keys)) + prior

    x = x0
    for _ in range(restarts):
        x = nelder_mead(objective, x)
    return _decode(x, start, keys)


def errors(batch: list[Sample], p: TimeParams) -> dict[str, float]:
    """Signed relative error of tokens/s per row id."""
    return {s.id: predict(s, p) / s.measured - 1 for s in batch}


def leave_one_source_out(batch: list[Sample], start: TimeParams | None = None
                         ) -> dict[str, float]:
    """Each source's rows predicted by figures fitted without that source."""
    out = {}
    for source in sorted({s.source for s in batch}):
        rest = [s for s in batch if s.source != source]
        fitted = fit(rest, start)
        out.update(errors([s for s in batch if s.source == source], fitted))
    return out


def summary(errs: list[float]) -> dict:
    a = sorted(abs(e) for e in errs)
    if not a:
        return {"rows": 0}
    p90 = a[min(len(a) - 1, math.ceil(0.9 * len(a)) - 1)]
    return {"rows": len(a), "median_abs_error": statistics.median(a), "p90_abs_error": p90}


def rows_from_profiles(profiles: list[dict]) -> list[TimingRow]:
    """Single-GPU CUDA training profiles on catalog GPUs as throughput rows (the profile's own
    setup and measured tokens per second): real runs teach the step-time model."""
    from ..arch.catalog import gpu_from_catalog
    from ..arch.lora import resolve_targets
    from ..errors import LorasizeError
    from ..memory.sharding import ShardSpec
    from .calibration import _profile_specs

    rows = []
    for profile in profiles:
        measured, config, device = profile["measurements"], profile["config"], profile["device"]
        if (device["kind"] != "cuda" or measured["oom"] or "ranks" in profile
                or not measured.get("tokens_per_s")):
            continue
        try:
            gpu = gpu_from_catalog(device["name"])
        except LorasizeError:
            continue
        model, lora, train = _profile_specs(config)
        targets = resolve_targets(model, lora, train.stack) if train.method != "full" else ()
        rows.append(TimingRow(f"profile:{config['model']['name']}", "lorasize profile", "high",
                              measured["tokens_per_s"] / train.grad_accum, model, targets, train,
                              gpu, ShardSpec(), lora.dropout, lora.dora))
    return rows


def fit_rows(rows: list[TimingRow], source: str) -> TimeParams:
    """The figures fitted to ``rows`` (from the shipped fit's figures), with ``source``."""
    from ..perf.steptime import default_params

    return replace(fit(samples(rows), default_params()), source=source)


def write_params(params: TimeParams, path) -> None:
    from ..files import write_atomic

    data = {k: (round(v, 6) if isinstance(v, float) else
                {a: round(b, 6) for a, b in v.items()} if isinstance(v, dict) else v)
            for k, v in params.to_dict().items()}
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def fit_shipped(path) -> tuple[TimeParams, list[Sample]]:
    """The shipped fit: every row of ``path`` outside :data:`HELD_OUT_SOURCES`."""
    rows, _ = load_rows(path, ALL_CONFIDENCES)
    batch = [s for s in samples(rows) if s.source not in HELD_OUT_SOURCES]
    fitted = fit(batch)
    return replace(fitted, source=(
        f"fitted to {len(batch)} rows of {len({s.source for s in batch})} sources of timing.csv; "
        f"held out: {'; '.join(HELD_OUT_SOURCES)}")), batch


# A published figure implying more than this share of the GPU's dense bf16 peak is implausible.
IMPLAUSIBLE_MFU = 0.85


def implied_mfu(row: TimingRow) -> float:
    """The model FLOPs utilisation a row's throughput implies on its GPU."""
    from ..perf.timing import flops_per_token

    return row.measured_tps * flops_per_token(row.model, row.targets, row.train) / (
        row.gpu.bf16_tflops * 1e12)


def report(path, added=None) -> dict:
    """Leave-one-source-out errors on the rows of confidence high and medium (figures fitted to
    every other source, low-confidence rows included), and the never-fitted rows' errors with the
    shipped figures: the held-out sources of ``path`` and every row of ``added`` (rows gathered
    after the fit, :data:`lorasize.measurements.TIMING_ADDED`; none when it is missing)."""
    from ..perf.steptime import default_params

    rows, skipped = load_rows(path, ALL_CONFIDENCES)
    late = []
    if added and Path(added).exists():
        late, late_skipped = load_rows(added, ALL_CONFIDENCES)
        skipped = skipped + late_skipped
    by_id = {r.id: r for r in rows + late}
    if len(by_id) < len(rows) + len(late):
        raise ValueError(f"{added} repeats a row id of {path}")
    if {r.source for r in late} & {r.source for r in rows}:
        raise ValueError(f"{added} has a source of {path}: its rows would not be unseen")
    batch = samples(rows)
    seen = [s for s in batch if s.source not in HELD_OUT_SOURCES]
    loso = leave_one_source_out(seen)
    reported = [s for s in seen if by_id[s.id].confidence in CONFIDENCES]
    held = [s for s in batch if s.source in HELD_OUT_SOURCES] + samples(late)
    held = [s for s in held if by_id[s.id].confidence in CONFIDENCES]
    held_errors = errors(held, default_params())
    sources, held_sources = {}, {}
    for s in reported:
        sources.setdefault(s.source, []).append(loso[s.id])
    for s in held:
        held_sources.setdefault(s.source, []).append(held_errors[s.id])
    return {
        "rows": [{"id": s.id, "source": s.source, "measured": s.measured,
                  "error": loso[s.id], "implied_mfu": implied_mfu(by_id[s.id])}
                 for s in reported],
        "loso": summary([loso[s.id] for s in reported]),
        "sources": {k: summary(v) for k, v in sorted(sources.items())},
        "held_out": {**summary(list(held_errors.values())),
                     "sources": {k: summary(v) for k, v in sorted(held_sources.items())},
                     "errors": [{"id": s.id, "source": s.source, "error": held_errors[s.id]}
                                for s in held]},
        "skipped": skipped,
        "implausible": sorted(r.id for r in rows if implied_mfu(r) > IMPLAUSIBLE_MFU),
    }


def print_report(data: dict) -> None:
    def pct(x):
        return f"{100 * x:.1f}%"

    print("Step-time model against published throughput (tokens/s per GPU, timing.csv)")
    print("leave-one-source-out: each source predicted by figures fitted without it\n")
    print(f"{'source':70s} {'rows':>4s} {'median':>7s} {'p90':>7s}")
    for name, stats in data["sources"].items():
        print(f"{name[:70]:70s} {stats['rows']:4d} {pct(stats['median_abs_error']):>7s} "
              f"{pct(stats['p90_abs_error']):>7s}")
    o = data["loso"]
    print(f"{'all (confidence high and medium)':70s} {o['rows']:4d} "
          f"{pct(o['median_abs_error']):>7s} {pct(o['p90_abs_error']):>7s}")
    h = data["held_out"]
    if h["rows"]:
        print("\nnever fitted: held-out sources and rows gathered after the fit (shipped figures)")
        for name, stats in h.get("sources", {}).items():
            print(f"{name[:70]:70s} {stats['rows']:4d} {pct(stats['median_abs_error']):>7s} "
                  f"{pct(stats['p90_abs_error']):>7s}")
        print(f"{'all never fitted (confidence high and medium)':70s} {h['rows']:4d} "
              f"{pct(h['median_abs_error']):>7s} {pct(h['p90_abs_error']):>7s}")
    print(f"\nimplausible for the hardware (implied MFU > {IMPLAUSIBLE_MFU:g}): "
          f"{', '.join(data['implausible']) or 'none'}")
    import textwrap

    skipped = data["skipped"]
    print(textwrap.fill(f"skipped ({len(skipped)}: no flags, or a setup lorasize cannot express): "
                        + ", ".join(i for i, _ in skipped), width=100))


def main(argv: list[str] | None = None) -> int:
    from ..measurements import TIMING, TIMING_ADDED

    parser = argparse.ArgumentParser(prog="python -m lorasize.calibrate.timing_fit")
    parser.add_argument("--measurements", default=str(TIMING))
    parser.add_argument("--added", default=str(TIMING_ADDED),
                        help="rows gathered after the fit: reported with the held-out sources, "
                             "never fitted")
    parser.add_argument("--out", default=str(PARAMS_FILE))
    parser.add_argument("--report", action="store_true",
                        help="print the leave-one-source-out error table; write nothing")
    args = parser.parse_args(argv)
    if not Path(args.measurements).is_file():
        parser.exit(2, f"{parser.prog}: error: --measurements: no such file: {args.measurements}\n")
    if args.report:
        print_report(report(args.measurements, args.added))
        return 0
    fitted, _ = fit_shipped(args.measurements)
    write_params(fitted, args.out)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
