"""``validate``: the estimator against published measurements, row by row.

Reads any CSV in the format of ``lorasize/data/measurements/measured.csv`` (columns documented in its
README), expresses each row it can as lorasize specs, predicts the row's metric
(``peak_allocated`` -> ``max_memory_allocated``, ``peak_reserved`` -> ``max_memory_reserved``,
``nvidia_smi`` -> the device total, ``trainable_params``, ``file_bytes``) and reports the signed
relative error. Rows it cannot express are listed with the reason, never silently dropped.

The accuracy bar (issue #4) is taken over the single-GPU training rows of confidence ``high``
whose metric is a memory figure: median absolute error 5% or less and 90th percentile 12% or
less, with the shipped calibration. :func:`summary` reports it as ``bar``, with the rows of that
set that could not be predicted and why.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..arch.catalog import find_model_entry, gpu_from_catalog
from ..errors import LorasizeError
from ..estimate import Calibration, estimate
from ..arch.lora import LoraSpec, resolve_targets, trainable_params
from ..arch.model import ModelSpec
from ..memory.sharding import grad_accum_from_row, sharding_from_row
from ..memory.stacks import (STACK_DEFAULT_DROPOUT, TORCHTUNE_02_RELEASED,
                             TORCHTUNE_ALL_NF4_RELEASED)
from ..specs import TrainSpec

REQUIRED_COLUMNS = ("id", "source", "model", "task", "stack", "method", "base_precision",
                    "double_quant", "r", "targets", "optimizer", "batch_size", "seq_len",
                    "grad_checkpointing", "flash_attn", "gpu", "num_gpus", "metric", "value",
                    "unit", "confidence")
_UNITS = (("gib", 2**30), ("mib", 2**20), ("gb", 10**9), ("mb", 10**6), ("bytes", 1),
          ("params", 1))
# Published model names -> catalog names, where the catalog's aliases do not already match.
_MODEL_NAMES = {
    "llama-2-7b": "llama2-7b", "llama-2-13b": "llama2-13b", "llama-2-70b": "llama2-70b",
    "llama-2-7b-chat-hf": "llama2-7b", "meta-llama-3-8b": "llama3-8b",
    "meta-llama-3-8b-instruct": "llama3-8b", "llama-3.2-3b": "llama3.2-3b",
    "llama-3.2-1b": "llama3.2-1b", "llama-3.1-8b": "llama3.1-8b",
    "mistral-7b-v0.1": "mistral-7b", "mistral-7b-v0.2": "mistral-7b",
    "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b", "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "tinyllama-1.1b": "tinyllama-1.1b", "gemma-7b": "gemma-7b", "gemma-2b": "gemma-2b",
    "falcon-7b": "falcon-7b",
}
_GPU_NAMES = (("a100-80", "a100-80gb"), ("a100", "a100-40gb"), ("a10g", "a10g"), ("l40s", "l40s"),
              ("4090", "rtx-4090"), ("3090", "rtx-3090"), ("h100", "h100-80gb"), ("t4", "t4"),
              ("l4", "l4"), ("v100", "v100-32gb"))


# The accuracy bar of issue #4 (README, "Against published measurements").
BAR_MEDIAN = 0.05
BAR_P90 = 0.12
MEMORY_METRICS = ("peak_allocated", "peak_reserved", "nvidia_smi")
# transformers 5.0 (first release candidate December 2025) fused the MoE experts into 3-D
# parameters; rows dated earlier were measured with transformers 4's per-expert nn.Linear modules.
TRANSFORMERS_5_YEAR = 2026
# litgpt (2024) iterates a DataLoader; lit-gpt (2023) put the longest sample in the first iteration.
LITGPT_DATALOADER_YEAR = 2024


# torchtune's configs give torch.optim.AdamW ``fused: True`` from pytorch/torchtune@cca50f02e
# ("add fused = true to adam, except pagedAdam", #1575, 2024-09-14): every torch AdamW config at
# @1814feb17 (the README's optimization table) has it, e.g. recipes/configs/llama3_2/3B_full.yaml
# line 57 and 3B_lora_single_device.yaml line 58.
TORCHTUNE_FUSED_ADAMW = "2024-09-14"
NO_DATE = "9999-12-31"

# Rows whose recipe replaced the stack's default loss with a plain cross-entropy: the torchtune
# README @1814feb17 "Optimization flags" table adds "+ Chunked Cross Entropy" only after
# "+ Compile" (row tt-30), so that row's recipe ran torch.nn.CrossEntropyLoss on the model's
# whole fp32 output.
PLAIN_LOSS_ROWS = {"tt-30": "the torchtune README's '+ Compile' row precedes '+ Chunked Cross "
                            "Entropy' (@1814feb17)"}


class Skip(Exception):
    """A row lorasize cannot express; the message is the reason."""


@dataclass(frozen=True)
class Row:
    """One compared row."""

    id: str
    source: str
    method: str
    metric: str
    predicted: int | None
    measured: int | None
    skipped: str | None
    in_bar: bool = False  # a single-GPU training row of confidence high with a memory metric

    @property
    def rel_error(self) -> float | None:
        if self.skipped or not self.measured:
            return None
        return (self.predicted - self.measured) / self.measured

    def to_dict(self) -> dict:
        error = self.rel_error
        return {"id": self.id, "source": self.source, "method": self.method, "metric": self.metric,
                "predicted_bytes": self.predicted, "measured_bytes": self.measured,
                "rel_error": None if error is None else round(error, 5), "skipped": self.skipped,
                "in_bar": self.in_bar}


def measured_bytes(value: str, unit: str) -> int:
    try:
        number = float(value)
    except ValueError:
        raise Skip(f"value '{value}' is not a number") from None
    unit = unit.strip().lower()
    for name, scale in _UNITS:
        if unit.startswith(name):
            return int(round(number * scale))
    raise Skip(f"unit '{unit}' is not one lorasize reads")


def _model(name: str) -> ModelSpec:
    from ..arch.catalog import model_from_catalog

    key = name.strip().lower()
    key = _MODEL_NAMES.get(key, key)
    if find_model_entry(key) is None:
        raise Skip(f"model '{name}' is not in the catalog")
    return model_from_catalog(key)


def _targets(text: str, model: ModelSpec) -> tuple[str, ...]:
    text = text.lower()
    head = ("lm_head",) if re.search(r"lm_head|\boutput\b|\bhead\b", text) and "not output" not in text else ()
    if "all" in text:
        return ("all",) + head
    words = set(re.findall(r"[a-z_]+", text.split("(")[0])) | (
        {"gate", "up", "down"} if "mlp" in text else set())
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
             "up": "up_proj", "down": "down_proj"}
    chosen = [names[w] for w in ("q", "k", "v", "o", "gate", "up", "down") if w in words]
    if not chosen:
        raise Skip(f"targets '{text}' are not ones lorasize reads")
    if set(chosen) == {"q_proj", "v_proj"}:
        return ("qv",) + head
    if model.family in ("phi3", "gpt_neox", "falcon", "gpt2", "phi", "mixtral"):
        groups = []
        if set(chosen) & {"q_proj", "k_proj", "v_proj", "o_proj"}:
            groups.append("attn")
        if set(chosen) & {"gate_proj", "up_proj", "down_proj"}:
            groups.append("mlp")
        return tuple(groups) + head
    return tuple(chosen) + head


def _optimizer(text: str, row: dict) -> str:
    """The row's optimizer. torch's AdamW is fused where the row says so, and in torchtune rows
    dated on or after the day its configs set ``fused: True`` (:data:`TORCHTUNE_FUSED_ADAMW`)."""
    text = text.lower()
    if "sgd" in text:
        return "sgd"
    paged = "paged" in text
    eight = "8bit" in text or "8-bit" in text
    if "adam" not in text:
        raise Skip(f"optimizer '{text}' is not one lorasize models")
    fused = "fused" in text or (row["stack"].strip() == "torchtune"
                                and TORCHTUNE_FUSED_ADAMW <= _date(row) < NO_DATE)
    if fused and not (paged or eight):
        return "adamw-fused"
    return ("paged-" if paged else "") + "adamw" + ("-8bit" if eight else "")


def _flag(text: str, column: str) -> bool:
    text = text.strip().lower()
    if "offload" in text:
        raise Skip("activation offloading is not modelled")
    if text.startswith("yes") or text == "true":
        return True
    if text.startswith("no") or text in ("false", ""):
        return False
    raise Skip(f"{column} '{text}' is unclear")


def _gpu(text: str):
    text = text.lower().replace(" ", "")
    for fragment, name in _GPU_NAMES:
        if fragment in text:
            return gpu_from_catalog(name)
    return None


def predict(row: dict, calibration: Calibration | None = None) -> int:
    """The predicted value of one CSV row, in its metric's base unit (bytes or parameters).

    Raises:
        Skip: the row cannot be expressed.
    """
    result = row_estimate(row, calibration)
    if isinstance(result, int):
        return result
    metric = row["metric"].strip()
    if metric == "peak_allocated":
        return result.allocated_bytes
    if metric == "peak_reserved":
        return result.reserved_bytes
    if metric == "nvidia_smi":
        return result.peak_bytes
    raise Skip(f"metric '{metric}' is not one lorasize predicts")


def row_estimate(row: dict, calibration: Calibration | None = None):
    """The estimate for a training row, or the parameter count for a ``trainable_params`` row.

    Raises:
        Skip: the row cannot be expressed.
    """
    metric = row["metric"].strip()
    if metric in ("estimate", "unknown", ""):
        raise Skip(f"metric '{metric or 'none'}' is not a measurement lorasize predicts")
    try:
        shard = sharding_from_row(row)
    except LorasizeError as error:
        raise Skip(str(error)) from None
    model = _model(row["model"])
    stack = row["stack"].strip()
    if stack not in ("hf-peft", "torchtune", "litgpt"):
        raise Skip(f"stack '{stack}' is not modelled")
    method = row["method"].strip()
    if method not in ("lora", "qlora", "full", "none"):
        raise Skip(f"method '{method}' is not modelled")
    r = int(row["r"]) if row["r"].strip().isdigit() else 8
    notes = row.get("notes") or ""
    stated = re.search(r"(?:lora_)?dropout\s*=?\s*([0-9]*\.?[0-9]+)", notes)
    dropout = float(stated.group(1)) if stated else STACK_DEFAULT_DROPOUT.get(stack, 0.0)
    lora = LoraSpec(r=r, targets=_targets(row["targets"], model) if method in ("lora", "qlora")
                    else ("qv",), dropout=dropout)
    if metric == "trainable_params":
        if method == "none":
            from ..arch.layout import total_params
            return total_params(model)
        return trainable_params(resolve_targets(model, lora, stack))
    if metric == "file_bytes":
        raise Skip("adapter file rows are approximate sizes; tests compare exact files")
    if row["task"].strip() != "train" or method == "none":
        raise Skip(f"task '{row['task']}' is not a training step")
    if not row["batch_size"].strip().isdigit() or not row["seq_len"].strip().isdigit():
        raise Skip("batch size or sequence length not stated")
    precision = row["base_precision"].lower()
    if "mixed" in precision or "autocast" in precision:
        raise Skip("autocast mixed precision (fp32 weights, 16-bit compute) is not modelled")
    quant = "nf4" if "nf4" in precision else "fp4" if "fp4" in precision else None
    attn_text = row["flash_attn"].lower()
    compiled = "compile" in attn_text
    if compiled and row["id"].strip() in PLAIN_LOSS_ROWS:
        raise Skip(f"torch.compile of a plain cross-entropy loss under torchtune >= 0.3 (fp32 "
                   f"logits of the whole output, not CEWithChunkedOutputLoss) is not modelled: "
                   f"{PLAIN_LOSS_ROWS[row['id'].strip()]}")
    attn = "eager" if "eager" in attn_text else "flash" if "fa2" in attn_text else "sdpa"
    # TRL 0.13's SFTTrainer neither prepares a 4-bit model nor upcasts its adapters when the
    # model was loaded sharded (its first Params4bit on the cpu or meta device: "QLoRA + FSDP /
    # DS-Zero3", trainer/sft_trainer.py lines 182-190 and 215-220), as fms-acceleration's FSDP
    # runs load it (accelerate.yaml @24bdadb: fsdp_cpu_ram_efficient_loading: true).
    sharded_qlora = (method == "qlora" and "sft_trainer" in notes and shard is not None
                     and shard.gpus > 1)
    train = TrainSpec(
        method=method, quant=quant if method == "qlora" else None,
        double_quant=row["double_quant"].strip().lower() == "true",
        optimizer=_optimizer(row["optimizer"], row), batch_size=int(row["batch_size"]),
        seq_len=_seq_len(row, model), grad_checkpointing=_flag(row["grad_checkpointing"],
                                                             "grad_checkpointing"),
        attn=attn, stack=stack, kernels="compile" if compiled else "eager",
        # fms-acceleration's accelerated-peft-bnb plugin prepares the model without PEFT's fp32
        # upcasts (its notes say so); every other hf-peft QLoRA row uses the PEFT default.
        kbit_prep=False if "accelerated-peft-bnb" in notes or sharded_qlora else None,
        # its "baseline-peft-bnb" scenario runs TRL 0.13's SFTTrainer with bf16: True
        # (scripts/benchmarks/scenarios.yaml @24bdadb), which prepares the model and then casts
        # the embeddings and head back to bf16 (TrainSpec.recast_embeddings)
        recast_embeddings="baseline-peft-bnb" in notes and not sharded_qlora,
        adapter_train_dtype="bf16" if sharded_qlora else None,
        grad_accum=grad_accum_from_row(row),
        # lit-gpt 2023 forced the longest sample into the first iteration, so its reported peak
        # is the first micro-batch's; litgpt 2024 draws batches from a DataLoader
        # (StackRules.previous_inputs_alive).
        first_micro_batch=stack == "litgpt" and _year(row) < LITGPT_DATALOADER_YEAR,
        # torchtune before v0.3.0 quantized only the linears carrying LoRA (StackRules)
        stack_release=_release(stack, row))
    if metric not in ("peak_allocated", "peak_reserved", "nvidia_smi"):
        raise Skip(f"metric '{metric}' is not one lorasize predicts")
    return estimate(model, lora, train, gpu=_gpu(row["gpu"]), calibration=calibration, shard=shard)


# fms-hf-tuning clamps the sequence length to the tokenizer's: ``max_seq_length =
# min(train_args.max_seq_length, tokenizer.model_max_length)`` (v2.5.0, the release
# fms-acceleration's benchmark pins in scripts/benchmarks/refs/requirements.txt @24bdadb:
# tuning/data/setup_dataprocessor.py lines 336-345; since c23cc9b9, Jan 2024), and TRL's packing
# keeps only chunks of exactly that length. SantaCoder's tokenizer says 2048
# (tokenizer_config.json ``model_max_length``, as its config's n_positions), and the benchmark's
# own throughput confirms it: 17188.262 tokens/s x 47.6604 s over 400 samples is 2048 a sample
# (refs/a100_80gb.csv @24bdadb line 2). The model's positions stand in for the tokenizer's limit.
CLAMPS_TO_MODEL_LENGTH = "fms-acceleration"


def _seq_len(row: dict, model: ModelSpec) -> int:
    """The tokens a row's samples had: its stated length, clamped by fms-hf-tuning to the
    model's."""
    seq_len = int(row["seq_len"])
    if CLAMPS_TO_MODEL_LENGTH in row.get("source_locator", "") and model.max_positions:
        return min(seq_len, model.max_positions)
    return seq_len


def _release(stack: str, row: dict) -> str:
    """The stack release a row ran, where a release changes what lorasize predicts: torchtune
    before v0.3.0 quantized only the linears carrying LoRA, and 0.1 (before v0.2.0) built the
    model on the GPU with torchao 0.1 (:mod:`lorasize.memory.init_programs`); transformers 4 (hf-peft rows dated
    before 2026) built each MoE expert as its own nn.Linear (:mod:`lorasize.memory.stacks`)."""
    if stack == "torchtune" and _date(row) < TORCHTUNE_02_RELEASED:
        return "0.1"
    if stack == "torchtune" and _date(row) < TORCHTUNE_ALL_NF4_RELEASED:
        return "0.2"
    if stack == "hf-peft" and _year(row) < TRANSFORMERS_5_YEAR:
        return "4"
    return ""


_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}


def _date(row: dict) -> str:
    """The latest day a row's locator or notes name (``2024-04-16``; ``Apr 2024`` is the
    month's first day), or ``9999-12-31``."""
    text = f"{row.get('source_locator', '')} {row.get('notes', '')}"
    days = re.findall(r"\b(20[12][0-9]-[01][0-9]-[0-3][0-9])\b", text)
    days += [f"{year}-{_MONTHS[month.lower()]:02d}-01" for month, year in
             re.findall(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* (20[12][0-9])\b",
                        text)]
    return max(days) if days else NO_DATE


def _year(row: dict) -> int:
    """The latest year a row's locator or notes name (a commit or page date), or 9999."""
    years = [int(y) for y in re.findall(r"\b(20[12][0-9])\b",
                                         f"{row.get('source_locator', '')} {row.get('notes', '')}")]
    return max(years) if years else 9999


def in_bar(row: dict) -> bool:
    """Whether a CSV row belongs to the accuracy bar's set (see the module docstring)."""
    return (row["task"].strip() == "train" and row["confidence"].strip() == "high"
            and (row.get("num_gpus") or "1").strip() in ("1", "")
            and row["metric"].strip() in MEMORY_METRICS)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a measurement CSV.

    Raises:
        LorasizeError: missing file or columns.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LorasizeError(f"missing column '{missing[0]}' (see measurements/README.md)",
                                    source=str(path))
            return list(reader)
    except OSError as exc:
        raise LorasizeError(f"cannot read ({exc.strerror})", source=str(path)) from None


def validate(path: str | Path, calibration: Calibration | None = None,
             only=None) -> list[Row]:
    """Predict every row of a measurement CSV that lorasize can express (``only``: a predicate
    on a raw row: the rows it refuses are left out, unpredicted)."""
    rows = []
    for raw in read_rows(path):
        if only is not None and not only(raw):
            continue
        try:
            measured = measured_bytes(raw["value"], raw["unit"])
            predicted = predict(raw, calibration)
            rows.append(Row(raw["id"], raw["source"], raw["method"], raw["metric"], predicted,
                            measured, None, in_bar(raw)))
        except (Skip, LorasizeError, ValueError) as reason:
            rows.append(Row(raw["id"], raw["source"], raw["method"], raw["metric"], None, None,
                            str(reason), in_bar(raw)))
    return rows


def summary(rows: list[Row]) -> dict:
    """Median and 90th-percentile absolute relative error, overall, per source/method/metric, and
    over the accuracy bar's rows (``bar``: the figures, the limits, whether they are met, the
    rows of the bar's set that were skipped and the worst rows)."""
    def stats(errors: list[float]) -> dict:
        errors = sorted(abs(e) for e in errors)
        p90 = errors[min(len(errors) - 1, int(round(0.9 * (len(errors) - 1))))]
        return {"rows": len(errors), "median_abs_error": round(statistics.median(errors), 4),
                "p90_abs_error": round(p90, 4)}

    compared = [r for r in rows if r.rel_error is not None]
    result: dict = {"compared": len(compared), "skipped": len(rows) - len(compared)}
    bar_rows = [r for r in compared if r.in_bar]
    if bar_rows:
        bar = stats([r.rel_error for r in bar_rows])
        worst = sorted(bar_rows, key=lambda r: -abs(r.rel_error))[:5]
        bar.update(median_limit=BAR_MEDIAN, p90_limit=BAR_P90,
                   met=bar["median_abs_error"] <= BAR_MEDIAN and bar["p90_abs_error"] <= BAR_P90,
                   skipped={r.id: r.skipped for r in rows if r.in_bar and r.skipped},
                   worst={r.id: round(r.rel_error, 4) for r in worst})
        result["bar"] = bar
    if compared:
        result["overall"] = stats([r.rel_error for r in compared])
        groups: dict[str, list[float]] = {}
        for r in compared:
            groups.setdefault(f"{r.source} | {r.method} | {r.metric}", []).append(r.rel_error)
        result["groups"] = {k: stats(v) for k, v in sorted(groups.items())}
    return result
