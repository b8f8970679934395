"""The capacity-planning report: one self-contained HTML file of plotly charts from a YAML plan.

The plan (see ``examples/plan.yaml``) names a model, GPUs, a training grid and a serving setup;
each chart is computed with the same library calls as the commands (``estimate``, ``solve``,
``serve``, the hot-swap simulation), so the report never disagrees with them. plotly.js is
embedded, so the file opens offline. A small script counts the charts that rendered and any
JavaScript error into ``<body data-plots-rendered=... data-js-errors=...>``, which the tests read
from a real headless Chromium.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..arch.catalog import gpu_from_catalog
from ..errors import LorasizeError, MissingExtraError
from ..estimate import BREAKDOWN_KEYS, estimate
from ..gpu import GpuSpec
from ..serving.hotswap import parse_traffic, simulate_lru
from ..arch.lora import LoraSpec, split_targets
from ..arch.model import ModelSpec
from ..arch.resolve import resolve_model
from .solve import solve
from ..specs import ServeSpec, TrainSpec
from ..files import read_yaml, write_atomic
from ..units import BYTES_PER_GIB, format_bytes

_TRAIN_KEYS = {"method", "quant", "double_quant", "dtype", "optimizer", "batch_size", "seq_len",
               "grad_checkpointing", "attn", "kbit_prep", "stack", "stack_release", "bnb_release",
               "padded", "autocast", "kernels", "adapter_train_dtype", "grad_accum"}


@dataclass(frozen=True)
class Plan:
    """A parsed report plan."""

    title: str
    model: ModelSpec
    gpus: tuple[GpuSpec, ...]
    train: TrainSpec
    ranks: tuple[int, ...]
    target_sets: tuple[tuple[str, ...], ...]
    seq_lens: tuple[int, ...]
    serve_lora: LoraSpec
    serve: ServeSpec
    adapters: int
    traffic: str
    slots: tuple[int, ...]
    validation: tuple[dict, ...] = field(default_factory=tuple)
    dataset_tokens: int | None = None
    usd_per_gpu_hour: dict = field(default_factory=dict)


def _require(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise LorasizeError(f"plan is missing '{where}{key}'")
    return mapping[key]


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise LorasizeError(f"'{where}' must be a positive integer or a list of them")
    return tuple(values)


def load_plan(path: str | Path) -> Plan:
    """Read and check a YAML plan.

    Raises:
        LorasizeError: the file is missing, empty, not YAML, or a field is wrong (named).
    """
    path = Path(path)
    data = read_yaml(path)
    if not data:
        raise LorasizeError("the plan is empty", source=str(path))
    if not isinstance(data, dict):
        raise LorasizeError("the plan must be a mapping", source=str(path))
    try:
        return _parse_plan(_with_recipe(data, path.parent))
    except LorasizeError as exc:
        raise LorasizeError(str(exc), source=str(path)) from None


def _validation_rows(value) -> tuple[dict, ...]:
    """The estimate-against-measurement points: measurement ids of the shipped measured.csv (or
    ``bar``: the rows of the accuracy bar), each predicted now by ``validate``'s own code."""
    if not value:
        return ()
    from ..calibrate.validate import in_bar, validate
    from ..measurements import MEMORY

    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise LorasizeError("'validation' must list measurement ids of measured.csv (e.g. "
                            "[mc-01, mc-03]) or be 'bar'; lorasize computes the estimates")
    # only the rows the chart plots are predicted (all of measured.csv takes some 20 s)
    wanted = None if ids == ["bar"] else set(ids)
    rows = {r.id: r for r in validate(MEMORY, only=lambda raw: (
        in_bar(raw) if wanted is None else raw["id"] in wanted))}
    if ids == ["bar"]:
        chosen = [r for r in rows.values() if r.in_bar and r.rel_error is not None]
    else:
        unknown = [i for i in ids if i not in rows]
        if unknown:
            raise LorasizeError(f"'validation': no measurement '{unknown[0]}' in measured.csv")
        chosen = [rows[i] for i in ids]
        skipped = [r for r in chosen if r.rel_error is None]
        if skipped:
            raise LorasizeError(f"'validation': lorasize cannot predict '{skipped[0].id}' "
                                f"({skipped[0].skipped})")
    return tuple({"name": f"{r.id} ({r.metric})", "estimate_bytes": r.predicted,
                  "measured_bytes": r.measured} for r in chosen)


def _with_recipe(data: dict, folder: Path) -> dict:
    """The plan with its ``recipe:`` (a training recipe, relative to the plan) filling what the
    plan leaves out: the model, the training settings, and one rank and target set."""
    if not data.get("recipe"):
        return data
    from ..recipes import read_recipe

    text = str(data["recipe"])
    options = read_recipe(Path(text) if Path(text).is_absolute() else folder / text,
                          source="recipe").options()
    data = {k: v for k, v in data.items() if k != "recipe"}
    if "model" in options:
        data.setdefault("model", options["model"])
    training = dict(data.get("training") or {})
    for key in _TRAIN_KEYS:
        if key in options and key not in training:
            training[key] = options[key]
    if "r" in options:
        training.setdefault("ranks", [options["r"]])
    if "targets" in options:
        training.setdefault("targets", [options["targets"]])
    data["training"] = training
    return data


def _parse_plan(data: dict) -> Plan:
    model = resolve_model(str(_require(data, "model", "")), "model")
    gpus = tuple(gpu_from_catalog(str(g), "gpus") for g in (_require(data, "gpus", "") or []))
    if not gpus:
        raise LorasizeError("'gpus' must list at least one GPU")
    training = dict(data.get("training") or {})
    ranks = _int_list(training.pop("ranks", [8, 16, 64]), "training.ranks")
    target_sets = tuple(split_targets(t) for t in training.pop("targets", ["qv", "all"]))
    seq_lens = _int_list(training.pop("seq_lens", [512, 1024, 2048, 4096]), "training.seq_lens")
    unknown = set(training) - _TRAIN_KEYS
    if unknown:
        raise LorasizeError(f"unknown key 'training.{sorted(unknown)[0]}'")
    from ..ci.check import release_text, value_problem  # the scenarios' type rule

    for key, value in list(training.items()):
        training[key] = value = release_text(key, value)
        problem = value_problem(key, value)
        if problem:
            raise LorasizeError(f"'training.{key}': {problem}, got {value!r}")
    train = TrainSpec(**training)
    serving = dict(data.get("serving") or {})
    serve_lora = LoraSpec(r=int(serving.get("r", 16)), targets=split_targets(serving.get("targets", "all")))
    serve = ServeSpec(engine=str(serving.get("engine", "peft")),
                      kv_tokens=int(serving.get("kv_tokens", 0)))
    adapters = int(serving.get("adapters", 1000))
    if adapters <= 0:
        raise LorasizeError("'serving.adapters' must be above 0")
    validation = _validation_rows(data.get("validation"))
    dataset_tokens = data.get("dataset_tokens")
    if dataset_tokens is not None and (not isinstance(dataset_tokens, int)
                                       or isinstance(dataset_tokens, bool) or dataset_tokens <= 0):
        raise LorasizeError("'dataset_tokens' must be a positive integer")
    prices = data.get("usd_per_gpu_hour") or {}
    if not isinstance(prices, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for v in prices.values()):
        raise LorasizeError("'usd_per_gpu_hour' must map GPU names to prices above 0")
    prices = {gpu_from_catalog(str(k), "usd_per_gpu_hour").name: float(v) for k, v in prices.items()}
    return Plan(
        dataset_tokens=dataset_tokens, usd_per_gpu_hour=prices,
        title=str(data.get("title", f"{model.name} capacity plan")), model=model, gpus=gpus,
        train=train, ranks=ranks, target_sets=target_sets, seq_lens=seq_lens,
        serve_lora=serve_lora, serve=serve, adapters=adapters,
        traffic=str(serving.get("traffic", "zipf:1.1")),
        slots=_int_list(serving.get("slots", [10, 50, 100, 200, 400]), "serving.slots"),
        validation=validation,
    )


def _gib(n: int) -> float:
    return n / BYTES_PER_GIB


def _hover(e) -> str:
    return "<br>".join(f"{k}: {format_bytes(v)}" for k, v in e.breakdown.items() if v)


def build_figures(plan: Plan, progress: Callable[[int], None] = lambda n: None,
                  rows: list[dict] | None = None) -> list:
    """The report's plotly figures, computed from the plan (``rows``: its :func:`summary`,
    computed here when not given)."""
    import plotly.graph_objects as go

    figures = []
    labels, estimates = [], []
    for targets in plan.target_sets:
        for r in plan.ranks:
            estimates.append(estimate(plan.model, LoraSpec(r=r, targets=targets), plan.train))
            labels.append(f"r={r} {'+'.join(targets)}")
            progress(1)
    bars = go.Figure()
    for key in BREAKDOWN_KEYS:
        values = [_gib(e.breakdown[key]) for e in estimates]
        if any(values):
            bars.add_bar(name=key, x=labels, y=values, hovertext=[_hover(e) for e in estimates])
    bars.update_layout(barmode="stack", title=f"Training memory by component ({plan.model.name})",
                       xaxis_title="rank and targets", yaxis_title="device memory (GiB)")
    bars.update_xaxes(tickangle=-35, automargin=True)  # many rank x target labels: no overlap
    figures.append(bars)

    lora = LoraSpec(r=plan.ranks[0], targets=plan.target_sets[0])
    seq_fig = go.Figure()
    peaks = []
    for seq in plan.seq_lens:
        peaks.append(estimate(plan.model, lora, replace(plan.train, seq_len=seq)))
        progress(1)
    seq_fig.add_scatter(x=list(plan.seq_lens), y=[_gib(e.peak_bytes) for e in peaks],
                        mode="lines+markers", name="device total",
                        hovertext=[_hover(e) for e in peaks])
    for gpu in plan.gpus:
        seq_fig.add_hline(y=_gib(gpu.memory_bytes), line_dash="dash", annotation_text=gpu.name)
    limit = plan.model.max_positions
    if limit and max(plan.seq_lens) > limit:
        # beyond what the model was trained for (max_position_embeddings): the memory is real,
        # the model's quality there is not promised
        scaled = "; its rope_scaling may stretch that" if plan.model.hf_config.get("rope_scaling") \
            else ""
        seq_fig.add_vline(x=limit, line_dash="dot", annotation_text=(
            f"{plan.model.name} was trained for {limit:,} positions{scaled}"))
    seq_fig.update_layout(title="Memory against sequence length", xaxis_title="sequence length (tokens)",
                          yaxis_title="device memory (GiB)", xaxis_type="log")
    figures.append(seq_fig)

    names = [g.name for g in plan.gpus]
    rows = rows if rows is not None else summary(plan, lora)
    progress(2 * len(plan.gpus))
    for key, title, axis in (("largest_batch", f"Largest batch at {plan.train.seq_len} tokens",
                              "sequences per micro-batch"),
                             ("largest_seq_len", f"Largest sequence at batch {plan.train.batch_size}",
                              "tokens")):
        chart = go.Figure(go.Bar(x=names, y=[r[key] or 0 for r in rows],
                                 text=[f"{r[key] or 0:,}" for r in rows], textposition="outside"))
        chart.update_layout(title=title + " per GPU", xaxis_title="GPU", yaxis_title=axis)
        figures.append(chart)
    if any(r["tokens_per_s"] for r in rows):
        speed = go.Figure(go.Bar(x=names, y=[r["tokens_per_s"] or 0 for r in rows],
                                 text=[f"{r['tokens_per_s'] or 0:,.0f}" for r in rows],
                                 textposition="outside"))
        speed.update_layout(title=f"Training throughput per GPU (batch {plan.train.batch_size} x "
                                  f"{plan.train.seq_len} tokens)", xaxis_title="GPU",
                            yaxis_title="tokens per second")
        figures.append(speed)

    adapters = go.Figure(go.Bar(x=names, y=[r["adapters_fit"] for r in rows],
                                hovertext=[f"{format_bytes(r['adapter_serve_bytes'])} each"
                                           for r in rows]))
    adapters.update_layout(title=f"Adapters resident per GPU ({plan.serve.engine}, r={plan.serve_lora.r})",
                           xaxis_title="GPU", yaxis_title="adapters")
    figures.append(adapters)

    popularity = parse_traffic(plan.traffic, plan.adapters)
    rates = []
    for k in plan.slots:
        rates.append(simulate_lru(popularity, k, requests=50_000).hit_rate)
        progress(1)
    hits = go.Figure(go.Scatter(x=list(plan.slots), y=rates, mode="lines+markers"))
    hits.update_layout(title=f"Hit rate against resident slots ({plan.adapters} adapters, {plan.traffic})",
                       xaxis_title="resident slots (adapters)", yaxis_title="hit rate",
                       yaxis_range=[0, 1])
    figures.append(hits)

    if plan.validation:
        scatter = go.Figure()
        est = [_gib(int(r["estimate_bytes"])) for r in plan.validation]
        meas = [_gib(int(r["measured_bytes"])) for r in plan.validation]
        scatter.add_scatter(x=meas, y=est, mode="markers", text=[str(r["name"]) for r in plan.validation],
                            name="estimate")
        top = max(est + meas) * 1.05
        scatter.add_scatter(x=[0, top], y=[0, top], mode="lines", name="identity",
                            line={"dash": "dot"})
        scatter.update_layout(title="Estimate against measurement", xaxis_title="measured (GiB)",
                              yaxis_title="estimated (GiB)")
        figures.append(scatter)
    return figures


# Counts JavaScript errors from the start, and the charts that rendered once the page has loaded.
_ERRORS = ("<script>window.lorasizeErrors = 0; window.addEventListener('error', function () "
           "{ window.lorasizeErrors += 1; });</script>")
_WATCH = """<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var plots = document.querySelectorAll('.plotly-graph-div');
    var rendered = 0;
    plots.forEach(function (p) { if (p.querySelector('.main-svg')) { rendered += 1; } });
    document.body.dataset.plots = plots.length;
    document.body.dataset.plotsRendered = rendered;
    document.body.dataset.jsErrors = window.lorasizeErrors;
  }, 200);
});
</script>"""


def summary(plan: Plan, lora: LoraSpec) -> list[dict]:
    """One row per GPU: the verdict at the plan's training setup (its first rank and targets),
    headroom, the largest batch and sequence, adapters resident, throughput, hours and cost."""
    from ..perf.timing import estimate_time

    rows = []
    for gpu in plan.gpus:
        e = estimate(plan.model, lora, plan.train, gpu, plan.serve)
        served = estimate(plan.model, plan.serve_lora, plan.train, gpu, plan.serve)
        timed = estimate_time(e, dataset_tokens=plan.dataset_tokens,
                              usd_per_gpu_hour=plan.usd_per_gpu_hour.get(gpu.name))
        rows.append({
            "gpu": gpu.name, "memory_bytes": gpu.memory_bytes, "fits": e.fits,
            "peak_bytes": e.peak_bytes, "headroom_bytes": e.headroom_bytes,
            "largest_batch": solve(plan.model, lora, plan.train, gpu, "batch-size")[0],
            "largest_seq_len": solve(plan.model, lora, plan.train, gpu, "seq-len")[0],
            "adapters_fit": served.adapters_fit, "adapter_serve_bytes": served.adapter_serve_bytes,
            "tokens_per_s": timed.tokens_per_s if timed else None,
            "bound": timed.bound if timed else None,
            "hours": timed.hours if timed else None, "usd": timed.usd if timed else None})
    return rows


def _summary_table(plan: Plan, rows: list[dict]) -> str:
    def cell(v):
        return f"<td>{html.escape(str(v))}</td>"

    head = ("GPU", "fits", "peak", "headroom", "largest batch", "largest sequence",
            "adapters resident", "tokens/s", "hours", "cost")
    body = []
    for r in rows:
        body.append("<tr>" + "".join(cell(v) for v in (
            r["gpu"], "yes" if r["fits"] else "no", format_bytes(r["peak_bytes"], "GiB"),
            format_bytes(r["headroom_bytes"], "GiB"), f"{r['largest_batch'] or 0:,}",
            f"{r['largest_seq_len'] or 0:,}", f"{r['adapters_fit'] or 0:,}",
            "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f} ({r['bound']}-bound)",
            "-" if r["hours"] is None else f"{r['hours']:,.1f}",
            "-" if r["usd"] is None else f"${r['usd']:,.0f}")) + "</tr>")
    return ("<table id='summary' border='1' cellpadding='4' style='border-collapse:collapse'>"
            "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body)
            + "</table>")


def _assumptions(plan: Plan) -> str:
    from .. import __version__

    t, first = plan.train, plan.target_sets[0]
    items = [
        f"model {plan.model.name} ({plan.model.source or 'catalog'})",
        f"training: {t.method}, {t.quant_type} base, {t.dtype}, {t.optimizer}, batch {t.batch_size} "
        f"x {t.seq_len} tokens{' (padded batches)' if t.padded else ''}, {t.attn} attention, "
        f"checkpointing {'on' if t.checkpointing else 'off'}, "
        f"{'autocast' if t.autocast else 'no autocast'}, "
        f"stack {' '.join(filter(None, (t.stack, t.stack_release)))}; "
        f"verdicts at r={plan.ranks[0]} on {'+'.join(first)}",
        f"serving: {plan.serve.engine}, r={plan.serve_lora.r} on {'+'.join(plan.serve_lora.targets)}, "
        f"{plan.serve.kv_tokens:,} KV-cache tokens",
        "hours: " + (f"{plan.dataset_tokens:,} tokens, one epoch, one GPU" if plan.dataset_tokens
                     else "give dataset_tokens in the plan"),
        "cost: " + (", ".join(f"{k} ${v:g}/h" for k, v in plan.usd_per_gpu_hour.items())
                    or "give usd_per_gpu_hour in the plan"),
        f"lorasize {__version__}; memory from the analytic model (docs/memory-model.md), time "
        f"from the step-time model (docs/performance.md)"]
    return "<ul id='assumptions'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def render_html(plan: Plan, figures: list, rows: list[dict] | None = None) -> str:
    """One self-contained page: the per-GPU table and assumptions, plotly.js embedded once,
    then every chart."""
    import plotly.io as pio

    rows = rows if rows is not None else summary(
        plan, LoraSpec(r=plan.ranks[0], targets=plan.target_sets[0]))
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), default_width="100%")
             for i, fig in enumerate(figures)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(plan.title)}</title>{_ERRORS}</head><body>"
            f"<h1>{html.escape(plan.title)}</h1>"
            f"<p>lorasize capacity plan for {html.escape(plan.model.name)} "
            f"on {', '.join(html.escape(g.name) for g in plan.gpus)}.</p>"
            + _summary_table(plan, rows) + "<h2>Assumptions</h2>" + _assumptions(plan)
            + "".join(f"<section>{p}</section>" for p in parts) + _WATCH + "</body></html>")


def steps(plan: Plan) -> int:
    """How many computations the report makes (for a progress bar)."""
    return (len(plan.ranks) * len(plan.target_sets) + len(plan.seq_lens) + 2 * len(plan.gpus)
            + len(plan.slots))


def write_report(plan: Plan, out: str | Path, progress: Callable[[int], None] = lambda n: None) -> int:
    """Build the report and write it atomically; returns the number of charts."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise MissingExtraError("lorasize report", "report", "plotly") from None
    rows = summary(plan, LoraSpec(r=plan.ranks[0], targets=plan.target_sets[0]))
    figures = build_figures(plan, progress, rows)
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise LorasizeError("the folder does not exist", source=str(out.parent))
    write_atomic(out, render_html(plan, figures, rows))
    return len(figures)
