"""Memory budgets for CI: evaluate the scenarios of a budgets file against budgets and baselines.

A budgets file names scenarios; each is a training setup (the flags of ``lorasize estimate``
as keys), one or more budgets, and optionally a stored baseline per tier::

    tolerance: 0.5%                 # default tolerance of the baselines below (else 1%)
    scenarios:
      llama3-8b-qlora:
        model: llama3-8b
        method: qlora
        r: 16
        targets: all
        budget: fits rtx-4090 with 10% headroom   # or: train_peak <= 14 GiB
        baseline:                   # written by --update-baseline
          train_peak_bytes: 28074573824
          breakdown: {weights: 7693418496, ...}

A budget is ``fits [GPU] [with N% | SIZE headroom]`` (on ``train_peak``, the whole device) or
``FIGURE <= SIZE`` with FIGURE one of :data:`FIGURES`. A baseline pins the figures it holds:
a number that moves either way by more than the tolerance fails, so an improvement is recorded
in the same change that makes it (``baseline`` holds the estimate's numbers, ``baseline_trace``
the trace's). The breakdown stored beside it names the component that moved most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import yaml_edit as ye
from ..errors import LorasizeError
from ..units import format_bytes, parse_bytes

MODES = ("estimate", "trace")
BASELINE_MODES = MODES + ("profiles",)  # baselines a file may hold: baseline, baseline_trace, ...
# Figures a budget or baseline may name, each the ``estimate --json`` key without ``_bytes``.
FIGURES = ("train_peak", "train_allocated", "train_reserved")
# The example ("no more than 1% above baseline"); a file's top-level ``tolerance`` wins.
DEFAULT_TOLERANCE = 0.01

# Scenario keys -> (kind, default); the kinds are checked before the specs see them.
_SPEC_KEYS: dict[str, tuple[str, object]] = {
    "model": ("str", None), "r": ("int", 8), "alpha": ("number", None), "targets": ("str", "qv"),
    "lora_dropout": ("number", 0.0), "dora": ("bool", False), "variant": ("str", "lora"),
    "method": ("str", "lora"), "quant": ("str", None), "double_quant": ("bool", False),
    "dtype": ("str", "bf16"), "optimizer": ("str", "adamw"), "batch_size": ("int", 1),
    "seq_len": ("int", 512), "grad_checkpointing": ("bool", None), "attn": ("str", "sdpa"),
    "stack": ("str", "hf-peft"), "kbit_prep": ("bool", None), "gpu": ("str", None),
    "gpu_mem": ("str", None), "adapter_train_dtype": ("str", None), "grad_accum": ("int", 1),
    "gpus": ("int", 1), "sharding": ("str", "none"), "offload": ("str", "none"),
    "stack_release": ("str", ""), "bnb_release": ("str", ""), "padded": ("bool", False),
    "autocast": ("bool", True), "kernels": ("str", "eager"),
}
_OTHER_KEYS = ("budget", "baseline", "baseline_trace", "description", "recipe")
_FITS = re.compile(r"^fits(?:\s+(?P<gpu>[\w.\-]+?))?(?:\s+with\s+(?P<headroom>.+?)\s+headroom)?$",
                   re.IGNORECASE)
_BOUND = re.compile(r"^(?P<figure>[a-z_]+?)(?:_bytes)?\s*(?P<op><=|<)\s*(?P<size>.+)$")


def baseline_key(mode: str) -> str:
    """The scenario key holding ``mode``'s baseline."""
    return "baseline" if mode == "estimate" else f"baseline_{mode}"


@dataclass(frozen=True)
class Budget:
    """One budget: ``figure`` must stay at or under ``limit_bytes`` (under, if ``strict``)."""

    figure: str
    limit_bytes: int
    text: str
    strict: bool = False
    gpu: object | None = None  # the GpuSpec a 'fits' budget names

    def exceeded(self, value: int) -> bool:
        return value >= self.limit_bytes if self.strict else value > self.limit_bytes


@dataclass(frozen=True)
class Baseline:
    """Stored figures (bytes), the breakdown beside them and the tolerance (a fraction)."""

    figures: dict[str, int]
    breakdown: dict[str, int]
    tolerance: float
    node: object = field(compare=False, repr=False)


@dataclass(frozen=True)
class Scenario:
    name: str
    line: int
    model: object
    lora: object
    train: object
    gpu: object | None
    budgets: tuple[Budget, ...]
    baselines: dict[str, Baseline]
    node: object = field(compare=False, repr=False)
    lines: dict[str, int] = field(default_factory=dict)  # field -> line, for messages
    shard: object | None = None  # lorasize.memory.sharding.ShardSpec; None: one GPU


@dataclass(frozen=True)
class BudgetsFile:
    path: str
    text: str
    scenarios: tuple[Scenario, ...]
    tolerance: float | None  # the file's default, if it sets one


@dataclass(frozen=True)
class Measured:
    """A scenario's figures (bytes) and the breakdown at the peak, from one tier."""

    figures: dict[str, int]
    breakdown: dict[str, int]


@dataclass(frozen=True)
class Row:
    """One line of the result table: a figure of a scenario against a budget and/or baseline."""

    scenario: str
    figure: str
    value_bytes: int
    budget: str | None = None
    limit_bytes: int | None = None
    baseline_bytes: int | None = None
    tolerance: float | None = None
    over_budget: bool = False
    moved: str | None = None  # "above" / "below" the baseline beyond the tolerance
    note: str = ""

    @property
    def delta_bytes(self) -> int | None:
        return None if self.baseline_bytes is None else self.value_bytes - self.baseline_bytes

    @property
    def delta_percent(self) -> float | None:
        if self.baseline_bytes is None or self.baseline_bytes == 0:
            return None
        return 100.0 * self.delta_bytes / self.baseline_bytes

    @property
    def failed(self) -> bool:
        return self.over_budget or self.moved is not None

    @property
    def verdict(self) -> str:
        words = ["over budget"] if self.over_budget else []
        if self.moved == "above":
            words.append("regressed")
        elif self.moved == "below":
            words.append("below baseline (update it)")
        return ", ".join(words) or "ok"

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "figure": self.figure, "value_bytes": self.value_bytes,
                "budget": self.budget, "limit_bytes": self.limit_bytes,
                "baseline_bytes": self.baseline_bytes, "delta_bytes": self.delta_bytes,
                "delta_percent": None if self.delta_percent is None else round(self.delta_percent, 4),
                "tolerance_percent": None if self.tolerance is None else self.tolerance * 100,
                "verdict": self.verdict, "failed": self.failed, "note": self.note}


@dataclass(frozen=True)
class CheckResult:
    """Every row, failing rows first; ``ok`` when none failed."""

    path: str
    mode: str
    rows: tuple[Row, ...]
    measured: dict[str, Measured]
    updated: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(row.failed for row in self.rows)

    def to_dict(self) -> dict:
        return {"file": self.path, "mode": self.mode, "ok": self.ok,
                "failed": sum(row.failed for row in self.rows),
                "updated_baselines": list(self.updated),
                "results": [row.to_dict() for row in self.rows]}


# --- reading the file -------------------------------------------------------------------------

def load_budgets(path: str | Path) -> BudgetsFile:
    """Read and check a budgets file; build every scenario's specs.

    Raises:
        LorasizeError: unreadable, not YAML, or a bad field; the message names the file, the
            line and the field.
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LorasizeError(f"cannot read the budgets file: {exc.strerror}", source=path) from None
    root = ye.compose(text, path)
    if root is None:
        raise LorasizeError("the budgets file is empty; it needs a 'scenarios:' mapping", source=path)
    top = {key: (k, v) for key, k, v in ye.mapping_items(root, path, "the budgets file")}
    for key, (knode, _) in top.items():
        if key not in ("scenarios", "tolerance"):
            raise LorasizeError(f"unknown top-level key '{key}' (expected scenarios, tolerance)",
                                source=f"{path}:{ye.line(knode)}")
    if "scenarios" not in top:
        raise LorasizeError("no 'scenarios:' mapping", source=f"{path}:1")
    tolerance = None
    if "tolerance" in top:
        tolerance = _tolerance(top["tolerance"][1], path, "tolerance")
    scenarios_node = top["scenarios"][1]
    items = ye.mapping_items(scenarios_node, path, "scenarios") if not (
        ye.is_scalar(scenarios_node) and scenarios_node.value == "") else []
    if not items:
        raise LorasizeError("'scenarios' names no scenario", source=f"{path}:{ye.line(scenarios_node)}")
    scenarios = tuple(_scenario(name, knode, vnode, path, tolerance) for name, knode, vnode in items)
    return BudgetsFile(path=path, text=text, scenarios=scenarios, tolerance=tolerance)


def _where(path: str, node) -> str:
    return f"{path}:{ye.line(node)}"


def _tolerance(node, path: str, field_name: str) -> float:
    raw = ye.value(node)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*", str(raw)) if isinstance(raw, str) else None
    if not match:
        raise LorasizeError(f"{field_name}: write a percentage such as 0.5%, got {raw!r}",
                            source=_where(path, node))
    return float(match.group(1)) / 100


def value_problem(key: str, raw) -> str | None:
    """What is wrong with ``raw`` as the value of the estimate option ``key`` (``must be an
    integer``), or None: the one type rule of check scenarios and report plans."""
    kind = _SPEC_KEYS[key][0]
    ok = {"str": isinstance(raw, (str, int)) and not isinstance(raw, bool),
          "int": isinstance(raw, int) and not isinstance(raw, bool),
          "number": isinstance(raw, (int, float)) and not isinstance(raw, bool),
          "bool": isinstance(raw, bool)}[kind]
    if ok or (raw is None and _SPEC_KEYS[key][1] is None and kind != "str"):
        return None
    words = {"str": "a name", "int": "an integer", "number": "a number", "bool": "true or false"}
    return f"must be {words[kind]}"


def release_text(key: str, raw, text: str | None = None):
    """A release YAML read as a number (``stack_release: 0.1``) as the text it was written as
    (``text``, where the reader kept it), else as given."""
    if key in ("stack_release", "bnb_release") and isinstance(raw, float):
        return text if text is not None else str(raw)
    return raw


def _typed(key: str, node, path: str, scenario: str):
    kind = _SPEC_KEYS[key][0]
    raw = ye.value(node) if ye.is_scalar(node) else None
    raw = release_text(key, raw, getattr(node, "value", None))
    problem = value_problem(key, raw)
    if problem:
        shown = raw if ye.is_scalar(node) else "a " + type(node).__name__.replace("Node", "").lower()
        raise LorasizeError(f"scenario '{scenario}': {key}: {problem}, got {shown!r}",
                            source=_where(path, node))
    return str(raw) if kind == "str" and raw is not None else raw


def _scenario(name: str, name_node, node, path: str, tolerance: float | None) -> Scenario:
    from ..arch.catalog import gpu_from_catalog
    from ..gpu import with_memory
    from ..arch.lora import LoraSpec, split_targets
    from ..arch.resolve import resolve_model
    from ..memory.sharding import ShardSpec
    from ..specs import TrainSpec

    fields = {}
    for key, knode, vnode in ye.mapping_items(node, path, f"scenario '{name}'"):
        norm = key.replace("-", "_")
        if norm not in _SPEC_KEYS and norm not in _OTHER_KEYS:
            raise LorasizeError(
                f"scenario '{name}': unknown field '{key}' (expected "
                f"{', '.join(list(_SPEC_KEYS) + list(_OTHER_KEYS))})", source=_where(path, knode))
        fields[norm] = (knode, vnode)
    recipe = _recipe_options(fields.get("recipe"), path, name)
    if "model" not in fields and "model" not in recipe:
        raise LorasizeError(f"scenario '{name}': no 'model' field (or 'recipe' naming a model)",
                            source=_where(path, name_node))
    p = {key: _typed(key, fields[key][1], path, name) if key in fields else recipe.get(key, default)
         for key, (_, default) in _SPEC_KEYS.items()}

    lines = {key: ye.line(vnode) for key, (_, vnode) in fields.items()}
    try:
        model = resolve_model(p["model"], "--model")
        lora = LoraSpec(r=p["r"], alpha=float(p["alpha"] if p["alpha"] is not None else 2 * p["r"]),
                        targets=split_targets(p["targets"]), dropout=float(p["lora_dropout"]),
                        dora=p["dora"], variant=p["variant"].lower())
        train = TrainSpec(
            method=p["method"].lower(), quant=p["quant"].lower() if p["quant"] else None,
            double_quant=p["double_quant"], dtype=p["dtype"].lower(),
            optimizer=p["optimizer"].lower(), batch_size=p["batch_size"], seq_len=p["seq_len"],
            grad_checkpointing=p["grad_checkpointing"], attn=p["attn"].lower(),
            kbit_prep=p["kbit_prep"], stack=p["stack"].lower(),
            adapter_train_dtype=p["adapter_train_dtype"].lower() if p["adapter_train_dtype"] else None,
            grad_accum=p["grad_accum"], stack_release=str(p["stack_release"] or "").strip(),
            bnb_release=str(p["bnb_release"] or "").strip(), padded=p["padded"],
            autocast=p["autocast"], kernels=p["kernels"].lower())
        shard = ShardSpec(p["gpus"], p["sharding"].lower(), p["offload"].lower())
        gpu = gpu_from_catalog(p["gpu"]) if p["gpu"] else None
        if p["gpu_mem"]:
            gpu = with_memory(gpu, p["gpu_mem"])
    except LorasizeError as exc:
        raise _located(exc, path, name, ye.line(name_node), lines) from None
    budgets = _budgets(fields.get("budget"), path, name, gpu)
    baselines = {}
    for mode in BASELINE_MODES:
        key = baseline_key(mode)
        if key in fields:
            baselines[mode] = _baseline(fields[key][1], path, name, key, tolerance)
    if not budgets and not baselines:
        raise LorasizeError(f"scenario '{name}': nothing to check: give a 'budget' (or run "
                            f"--update-baseline to store a baseline)", source=_where(path, name_node))
    if gpu is None:  # a 'fits' budget's GPU is the one the estimate reports against
        gpu = next((b.gpu for b in budgets if b.gpu is not None), None)
    return Scenario(name=name, line=ye.line(name_node), model=model, lora=lora, train=train,
                    gpu=gpu, budgets=budgets, baselines=baselines, node=node, lines=lines,
                    shard=shard)


def _recipe_options(entry, path: str, scenario: str) -> dict:
    """The options of a scenario's ``recipe:`` (a path relative to the budgets file); the
    scenario's own keys win over them."""
    if entry is None:
        return {}
    from ..recipes import read_recipe

    _, node = entry
    raw = ye.value(node) if ye.is_scalar(node) else None
    where = _where(path, node)
    if not isinstance(raw, str) or not raw.strip():
        raise LorasizeError(f"scenario '{scenario}': recipe: must be a file path", source=where)
    file = Path(raw) if Path(raw).is_absolute() else Path(path).parent / raw
    try:
        options = read_recipe(file, source=where).options()
    except LorasizeError as exc:
        raise LorasizeError(f"scenario '{scenario}': recipe: {Exception.__str__(exc)}",
                            source=where) from None
    return {k: v for k, v in options.items() if k in _SPEC_KEYS}


def _located(error: LorasizeError, path: str, scenario: str, line: int,
             lines: dict[str, int]) -> LorasizeError:
    """A spec's error (which names a flag, ``--batch-size``) as one naming the file, the line
    and the scenario's field (``batch_size``)."""
    field_name = (error.source or "").lstrip("-").replace("-", "_")
    at = lines.get(field_name, line)
    prefix = f"scenario '{scenario}': " + (f"{field_name}: " if field_name else "")
    return LorasizeError(prefix + Exception.__str__(error), source=f"{path}:{at}")


def _budgets(entry, path: str, name: str, gpu) -> tuple[Budget, ...]:
    if entry is None:
        return ()
    _, node = entry
    nodes = node.value if type(node).__name__ == "SequenceNode" else [node]
    return tuple(_budget(item, path, name, gpu) for item in nodes)


def _budget(node, path: str, name: str, gpu) -> Budget:
    from ..arch.catalog import gpu_from_catalog

    raw = ye.value(node) if ye.is_scalar(node) else None
    if not isinstance(raw, str):
        raise LorasizeError(f"scenario '{name}': budget: write 'fits GPU with 10% headroom' or "
                            f"'train_peak <= 14 GiB', got {raw!r}", source=_where(path, node))
    text = " ".join(raw.split())
    fail = f"scenario '{name}': budget: "
    fits = _FITS.match(text)
    if fits:
        card = gpu
        if fits.group("gpu"):
            try:
                card = gpu_from_catalog(fits.group("gpu"), flag="budget")
            except LorasizeError as exc:
                raise LorasizeError(fail + Exception.__str__(exc), source=_where(path, node)) from None
        if card is None:
            raise LorasizeError(fail + "'fits' needs a GPU: 'fits rtx-4090' or a 'gpu' field",
                                source=_where(path, node))
        limit = card.memory_bytes
        headroom = fits.group("headroom")
        if headroom:
            percent = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*%", headroom)
            try:
                spare = int(card.memory_bytes * float(percent.group(1)) / 100) if percent \
                    else parse_bytes(headroom)
            except ValueError:
                raise LorasizeError(fail + f"headroom '{headroom}' is neither a percentage nor a "
                                    f"size", source=_where(path, node)) from None
            limit -= spare
        return Budget("train_peak", limit, text, gpu=card)
    bound = _BOUND.match(text)
    if not bound:
        raise LorasizeError(fail + f"cannot read '{text}': write 'fits GPU with 10% headroom' or "
                            f"'train_peak <= 14 GiB'", source=_where(path, node))
    figure = bound.group("figure")
    if figure not in FIGURES:
        raise LorasizeError(fail + f"unknown figure '{figure}' (expected {', '.join(FIGURES)})",
                            source=_where(path, node))
    try:
        limit = parse_bytes(bound.group("size"))
    except ValueError as exc:
        raise LorasizeError(fail + str(exc), source=_where(path, node)) from None
    return Budget(figure, limit, text, strict=bound.group("op") == "<")


def _baseline(node, path: str, name: str, key: str, tolerance: float | None) -> Baseline:
    figures, breakdown, own_tolerance = {}, {}, None
    for field_name, knode, vnode in ye.mapping_items(node, path, f"scenario '{name}': {key}"):
        spot = f"scenario '{name}': {key}.{field_name}"
        if field_name == "tolerance":
            own_tolerance = _tolerance(vnode, path, f"{spot}")
        elif field_name == "breakdown":
            for component, cnode, bnode in ye.mapping_items(vnode, path, spot):
                breakdown[component] = _bytes_value(bnode, path, f"{spot}.{component}")
        elif field_name.endswith("_bytes") and field_name[:-6] in FIGURES:
            figures[field_name[:-6]] = _bytes_value(vnode, path, spot)
        else:
            raise LorasizeError(f"{spot}: unknown field (expected tolerance, breakdown, "
                                f"{', '.join(f + '_bytes' for f in FIGURES)})",
                                source=_where(path, knode))
    return Baseline(figures=figures, breakdown=breakdown, node=node,
                    tolerance=own_tolerance if own_tolerance is not None
                    else tolerance if tolerance is not None else DEFAULT_TOLERANCE)


def _bytes_value(node, path: str, spot: str) -> int:
    raw = ye.value(node) if ye.is_scalar(node) else None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise LorasizeError(f"{spot}: must be a whole number of bytes, got {raw!r}",
                            source=_where(path, node))
    return raw


# --- measuring --------------------------------------------------------------------------------

def measure(budgets: BudgetsFile, mode: str = "estimate") -> dict[str, Measured]:
    """Every scenario's figures and breakdown from the estimate or the trace tier.

    The trace sees what ``torch.cuda.max_memory_allocated`` would (``train_allocated``); the
    reserved and device figures add the estimate's allocator reserve and CUDA context to it.

    Raises:
        LorasizeError: an unknown mode, the trace tier missing, or a scenario it cannot trace.
    """
    from ..estimate import ALLOCATED_KEYS, estimate

    if mode not in MODES:
        raise LorasizeError(f"unknown mode '{mode}' (expected {', '.join(MODES)})", source="--mode")
    estimates = {}
    for s in budgets.scenarios:
        try:
            estimates[s.name] = estimate(s.model, s.lora, s.train, gpu=s.gpu, shard=s.shard)
        except LorasizeError as exc:
            raise _located(exc, budgets.path, s.name, s.line, s.lines) from None
    if mode == "estimate":
        return {name: Measured({"train_peak": e.peak_bytes, "train_allocated": e.allocated_bytes,
                                "train_reserved": e.reserved_bytes}, dict(e.breakdown))
                for name, e in estimates.items()}
    traces = _trace(budgets)
    measured = {}
    for scenario, traced in zip(budgets.scenarios, traces):
        e = estimates[scenario.name]
        allocated = int(traced["peak_bytes"])
        overhead = {k: v for k, v in e.breakdown.items() if k not in ALLOCATED_KEYS}
        measured[scenario.name] = Measured(
            {"train_allocated": allocated,
             "train_reserved": allocated + (e.reserved_bytes - e.allocated_bytes),
             "train_peak": allocated + (e.peak_bytes - e.allocated_bytes)},
            {**{k: int(v) for k, v in traced["breakdown"].items()}, **overhead})
    return measured


def _matches(scenario: Scenario, profile: dict) -> bool:
    from dataclasses import asdict

    from ..memory.sharding import ShardSpec
    from ..specs import TrainSpec

    config = profile["config"]
    lora = dict(config["lora"], targets=list(config["lora"]["targets"]))
    wanted = dict(asdict(scenario.lora), targets=list(scenario.lora.targets))
    same_model = (config["model"].get("hf_config") == scenario.model.hf_config
                  or config["model"].get("name") == scenario.model.name)
    same_lora = all(lora.get(k) == wanted[k] for k in ("r", "targets", "dropout", "dora", "variant"))
    # Profiles written before a TrainSpec field existed hold its default.
    train = {**asdict(TrainSpec()), **config["train"]}
    shard = scenario.shard or ShardSpec()
    same_gpus = (config.get("gpus", 1) == shard.gpus
                 and config.get("sharding", "none") == shard.sharding and shard.offload == "none")
    return same_model and same_lora and same_gpus and train == asdict(scenario.train)


def measure_profiles(budgets: BudgetsFile, folder: str) -> dict[str, Measured]:
    """Every scenario's figures from the newest profile of the same configuration.

    A GPU profile gives all three figures as measured; a CPU profile measures allocated bytes
    only, and the reserved and device figures add the estimate's allocator reserve and context.

    Raises:
        LorasizeError: the folder is not readable, or no profile matches a scenario (names it
            and the command that would make one).
    """
    from ..estimate import ALLOCATED_KEYS, estimate
    from ..profile.schema import load_profiles

    try:
        profiles = load_profiles(folder)
    except LorasizeError as exc:
        raise LorasizeError(str(exc).split(": ", 1)[-1], source="--from-profiles") from None
    measured = {}
    for scenario in budgets.scenarios:
        found = [p for p in profiles if _matches(scenario, p) and not p["measurements"]["oom"]]
        if not found:
            raise LorasizeError(f"no profile in {folder} matches scenario '{scenario.name}' (run "
                                f"lorasize profile with its flags)", source="--from-profiles")
        figures = found[-1]["measurements"]
        e = estimate(scenario.model, scenario.lora, scenario.train, gpu=scenario.gpu,
                     shard=scenario.shard)
        allocated = int(figures["peak_allocated_bytes"])
        reserved = figures.get("peak_reserved_bytes")
        device = figures.get("device_peak_bytes")
        if found[-1]["device"]["kind"] != "cuda" or reserved is None:
            reserved = allocated + (e.reserved_bytes - e.allocated_bytes)
        if device is None:
            device = reserved + (e.peak_bytes - e.reserved_bytes)
        overhead = {k: v for k, v in e.breakdown.items() if k not in ALLOCATED_KEYS}
        measured[scenario.name] = Measured(
            {"train_allocated": allocated, "train_reserved": int(reserved), "train_peak": int(device)},
            {"measured_allocated": allocated, **overhead})
    return measured


def _trace(budgets: BudgetsFile) -> list[dict]:
    try:
        from .. import trace as trace_tier
    except ImportError:
        raise LorasizeError("the trace tier is not part of this installation of lorasize; use "
                            "--mode estimate", source="--mode trace") from None
    for scenario in budgets.scenarios:
        if scenario.shard is not None and scenario.shard.gpus > 1:
            raise LorasizeError(f"scenario '{scenario.name}': the trace runs one process; check "
                                f"multi-GPU scenarios with --mode estimate or --from-profiles",
                                source=f"{budgets.path}:{scenario.line}")
    outcomes = trace_tier.trace_many([(s.model, s.lora, s.train) for s in budgets.scenarios])
    for scenario, outcome in zip(budgets.scenarios, outcomes):
        if not outcome["ok"]:
            raise LorasizeError(f"scenario '{scenario.name}' cannot be traced: {outcome['error']}",
                                source=f"{budgets.path}:{scenario.line}")
    return [outcome["result"] for outcome in outcomes]


# --- judging ----------------------------------------------------------------------------------

def evaluate(budgets: BudgetsFile, measured: dict[str, Measured], mode: str = "estimate",
             updated: tuple[str, ...] = ()) -> CheckResult:
    """Rows for every budget and every baselined figure; failing rows first."""
    rows: list[Row] = []
    for scenario in budgets.scenarios:
        got = measured[scenario.name]
        baseline = scenario.baselines.get(mode)
        figures = list(dict.fromkeys([b.figure for b in scenario.budgets]
                                     + list(baseline.figures if baseline else ())))
        for figure in figures:
            value = got.figures[figure]
            stored = baseline.figures.get(figure) if baseline else None
            moved = None
            if stored is not None and abs(value - stored) > baseline.tolerance * stored:
                moved = "above" if value > stored else "below"
            note = _grew_most(got.breakdown, baseline.breakdown) if baseline and baseline.breakdown \
                else ""
            budgets_here = [b for b in scenario.budgets if b.figure == figure] or [None]
            for i, budget in enumerate(budgets_here):
                first = i == 0
                over = budget is not None and budget.exceeded(value)
                if over and not note:
                    note = _largest(got.breakdown)
                rows.append(Row(
                    scenario=scenario.name, figure=figure, value_bytes=value,
                    budget=_budget_text(budget) if budget else None,
                    limit_bytes=budget.limit_bytes if budget else None,
                    baseline_bytes=stored if first else None,
                    tolerance=baseline.tolerance if first and stored is not None else None,
                    over_budget=over, moved=moved if first else None,
                    note=note if (over or (first and moved)) else ""))
    rows.sort(key=lambda row: not row.failed)  # stable: file order within each group
    return CheckResult(path=budgets.path, mode=mode, rows=tuple(rows), measured=measured,
                       updated=updated)


def _budget_text(budget: Budget) -> str:
    if budget.gpu is not None:
        return f"{budget.text} ({format_bytes(budget.limit_bytes)})"
    return budget.text


def _grew_most(now: dict[str, int], before: dict[str, int]) -> str:
    deltas = {k: now.get(k, 0) - before.get(k, 0) for k in dict.fromkeys([*before, *now])}
    if not deltas:
        return ""
    key = max(deltas, key=lambda k: abs(deltas[k]))
    if deltas[key] == 0:
        return ""
    verb = "grew most" if deltas[key] > 0 else "shrank most"
    sign = "+" if deltas[key] > 0 else "-"
    return f"{verb}: {key} {sign}{format_bytes(abs(deltas[key]))}"


def _largest(breakdown: dict[str, int]) -> str:
    if not breakdown:
        return ""
    key = max(breakdown, key=breakdown.get)
    return f"largest: {key} {format_bytes(breakdown[key])}"


def check(path: str | Path, mode: str = "estimate", profiles: str | None = None,
          update_baseline: bool = False) -> CheckResult:
    """Load a budgets file, measure every scenario, optionally store the numbers as the new
    baselines (atomically, comments and order kept), and judge.

    Args:
        path: the budgets YAML file.
        mode: ``estimate`` (analytic) or ``trace`` (fake-tensor trace; needs the torch extra).
        profiles: a folder of profile files (``lorasize profile``) whose measured figures are
            judged instead (their baselines are ``baseline_profiles``).
        update_baseline: rewrite the file's baselines for ``mode`` with the measured numbers.

    Returns:
        The :class:`CheckResult`; ``ok`` is False when a budget or a baseline failed.

    Raises:
        LorasizeError: a bad budgets file (names the line and field), an unknown mode, or a
            tier that is not available.
    """
    if mode not in MODES:
        raise LorasizeError(f"unknown mode '{mode}' (expected {', '.join(MODES)})", source="--mode")
    budgets = load_budgets(path)
    if profiles is not None:
        mode = "profiles"
        measured = measure_profiles(budgets, profiles)
    else:
        measured = measure(budgets, mode)
    updated: tuple[str, ...] = ()
    if update_baseline:
        from ..files import write_atomic

        text = updated_text(budgets, measured, mode)
        updated = tuple(s.name for s in budgets.scenarios)
        if text != budgets.text:
            write_atomic(budgets.path, text)
        budgets = load_budgets(path)
    return evaluate(budgets, measured, mode, updated)


def updated_text(budgets: BudgetsFile, measured: dict[str, Measured], mode: str) -> str:
    """The budgets file's text with ``mode``'s baselines set to ``measured``, every other line
    (comments, order, formatting) as it was."""
    edits = ye.TextEdits(budgets.text)
    key = baseline_key(mode)
    for scenario in budgets.scenarios:
        got = measured[scenario.name]
        old = scenario.baselines.get(mode)
        if old is not None:
            names = [f for f in FIGURES if f in old.figures] or _default_figures(scenario, mode)
            breakdown = {**{k: 0 for k in old.breakdown}, **got.breakdown}
            edits.set_items(old.node, {**{f"{f}_bytes": got.figures[f] for f in names},
                                       "breakdown": breakdown})
            continue
        new: dict = {} if budgets.tolerance is not None else {
            "tolerance": f"{DEFAULT_TOLERANCE * 100:g}%"}
        new.update({f"{f}_bytes": got.figures[f] for f in _default_figures(scenario, mode)})
        new["breakdown"] = dict(got.breakdown)
        edits.add_items(scenario.node, {key: new}, nested_block=True)
    text = edits.apply()
    _verify(budgets, text, measured, mode)
    return text


def _default_figures(scenario: Scenario, mode: str) -> list[str]:
    own = "train_allocated" if mode == "trace" else "train_peak"
    return list(dict.fromkeys([own, *(b.figure for b in scenario.budgets)]))


def _verify(budgets: BudgetsFile, text: str, measured: dict[str, Measured], mode: str) -> None:
    """Re-read the edited text: each baseline must now hold the measured numbers."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / Path(budgets.path).name
        probe.write_text(text, encoding="utf-8")
        again = load_budgets(probe)
    for scenario in again.scenarios:
        stored = scenario.baselines[mode]
        got = measured[scenario.name]
        if any(got.figures[f] != v for f, v in stored.figures.items()) or any(
                got.breakdown.get(k, 0) != v for k, v in stored.breakdown.items()):
            raise RuntimeError(f"updating the baseline of '{scenario.name}' did not round-trip")


# --- rendering --------------------------------------------------------------------------------

def render_table(result: CheckResult) -> str:
    """The result table: failing rows first; then a one-line summary."""
    from ..plan.render import table

    def size(n: int | None) -> str:
        return "-" if n is None else format_bytes(n)

    rows = []
    for row in result.rows:
        delta = "-"
        if row.delta_bytes is not None:
            sign = "+" if row.delta_bytes >= 0 else "-"
            delta = f"{sign}{format_bytes(abs(row.delta_bytes))}"
            if row.delta_percent is not None:
                delta += f" ({row.delta_percent:+.2f}%)"
        baseline = size(row.baseline_bytes)
        if row.tolerance is not None:
            baseline += f" ±{row.tolerance * 100:g}%"
        rows.append((row.scenario, row.figure, size(row.value_bytes), row.budget or "-",
                     baseline, delta, row.verdict.upper() if row.failed else row.verdict,
                     row.note))
    body = table(rows, ("scenario", "figure", "value", "budget", "baseline", "delta", "verdict",
                        "why"), align="llrlrrll")
    failed = sum(row.failed for row in result.rows)
    lines = [body, ""]
    if result.updated:
        lines.append(f"updated the {baseline_key(result.mode)} of {len(result.updated)} "
                     f"scenario(s) in {result.path}")
    lines.append(f"{result.path} ({result.mode}): " + (
        f"all {len(result.rows)} checks within budget" if not failed
        else f"{failed} of {len(result.rows)} checks failed"))
    return "\n".join(lines)
