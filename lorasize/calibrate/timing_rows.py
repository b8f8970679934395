"""Published training-throughput rows (``timing.csv``) as lorasize setups.

Each row's ``lorasize_args`` column names the ``estimate`` flags it maps to; they are parsed by
the ``estimate`` command itself, so a row means what a user typing those flags would get. The
framework column adds what no flag says: fused kernels (Liger, fms-acceleration's fused ops,
Transformer Engine, torch.compile) set ``kernels="fused"``. Rows without flags (methods lorasize
does not model: OFT, BOFT, prefix and prompt tuning) are skipped with the reason.
"""

from __future__ import annotations

import csv
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import LorasizeError
from ..gpu import GpuSpec

# Words in the framework column (or the notes' list of techniques) that mean fused kernels.
# llm-foundry's MPT computes its loss with flash-attn's fused cross-entropy kernel by default
# (llmfoundry/models/mpt/modeling_mpt.py @b2a43a1477: ``om_model_config.get('loss_fn',
# 'fused_crossentropy')``) and its benchmarks set ``norm_type: low_precision_layernorm`` (one
# bf16 kernel) and Triton attention (scripts/train/benchmarking/submit_benchmarks.py @same).
FUSED_MARKERS = ("fused ops", "liger", "te,", "torch.compile", "+ torch.compile", "llm-foundry")
# Frameworks that load the quantized base themselves, without PEFT's
# prepare_model_for_kbit_training upcast: fms-acceleration's accelerated-peft plugins ("fix
# upcasting (resulting in slowdown)", plugins/accelerated-peft/README.md) and Answer.AI's
# fsdp_qlora (train.py @05ed9f2 calls get_peft_model on its own quantized model, no kbit prep).
NO_KBIT_PREP_MARKERS = ("accelerated-peft", "fsdp_qlora train.py")
# lit-gpt's finetune scripts run FSDP with FSDPStrategy(activation_checkpointing_policy={Block})
# (finetune/lora.py, 2023-24): checkpointing is on whenever FSDP is.
CHECKPOINTED_FSDP_MARKERS = ("lit-gpt finetune/lora.py, FSDP",)
# LoRA dropout a framework applies when a row's flags do not set it (each stack's own default
# is memory.stacks.STACK_DEFAULT_DROPOUT): Answer.AI's fsdp_qlora ``train.py`` @05ed9f2
# ``lora_dropout: float = 0.1`` (the same since January 2024; its benchmark commands do not
# override it).
FRAMEWORK_DROPOUT = {"fsdp_qlora train.py": 0.1}
# Micro-batches per optimizer step a framework runs when a row's flags do not say: lit-gpt's
# finetune/lora.py @8641822 ``batch_size = 128``, ``gradient_accumulation_iters = batch_size //
# micro_batch_size`` on every device (its resource tables and Raschka's runs kept the default).
FRAMEWORK_GLOBAL_BATCH = {"lit-gpt finetune/lora.py": 128}
# Sources whose rows apply techniques cumulatively, so a row inherits what the rows before it
# added, which no flag of its own says:
# - torchtune's optimisation-flags table (README.md @bd2a0fc7c3): packed, + compile, + chunked
#   cross-entropy, + activation checkpointing, + 8-bit AdamW: compiled from "+ Compile" on;
# - Raschka's LLMs-from-scratch ch05/10_llm-training-speed (README.md @28c65cdfbc): section 5
#   bf16, 7 FlashAttention, 8 torch.compile, 9 vocabulary padded to 50,304, 10 batch 32:
#   compiled and padded from section 9 on.
ROW_FACTS = {
    "tt-32-full-compile": {"kernels": "fused"}, "tt-32-full-chunkedce": {"kernels": "fused"},
    "tt-32-full-ac": {"kernels": "fused"}, "tt-32-full-adamw8bit": {"kernels": "fused"},
    "lfs-gpt2-vocabpad": {"kernels": "fused", "vocab_size": 50304},
    "lfs-gpt2-bs32": {"kernels": "fused", "vocab_size": 50304},
}
# The transformers release an hf-peft source ran, where its own files say so
# (lorasize.memory.stacks: before 5.0 a mixture of experts is an nn.Linear per expert):
# fms-acceleration scripts/benchmarks/refs/requirements.txt @876e2ed6fc, "transformers==4.48.1".
SOURCE_RELEASES = {"IBM fms-acceleration benchmark refs": "4.48.1"}
CONFIDENCES = ("high", "medium")
ALL_CONFIDENCES = ("high", "medium", "low")


@dataclass(frozen=True)
class TimingRow:
    """One published throughput figure and the setup it measures."""

    id: str
    source: str
    confidence: str
    measured_tps: float  # tokens/s per GPU
    model: object
    targets: tuple
    train: object
    gpu: GpuSpec
    shard: object
    dropout: float
    dora: bool
    paged_out_bytes: int = 0  # paged optimizer state that cannot stay on the GPU


def _fused(row: dict) -> bool:
    if "kernels" in ROW_FACTS.get(row["id"], {}):
        return ROW_FACTS[row["id"]]["kernels"] == "fused"
    text = (row.get("framework", "") + " " + row.get("notes", "").split(";")[0]).lower()
    return any(m in text for m in FUSED_MARKERS)


def _framework_default(row: dict, defaults: dict):
    """The value of ``defaults`` whose marker the row's framework column names, or None."""
    return next((v for m, v in defaults.items() if m in row.get("framework", "")), None)


def _dropout(row: dict, given: float, stack: str, stated: bool) -> float:
    """The row's LoRA dropout: its flag's, else its framework's default, else its stack's."""
    from ..memory.stacks import STACK_DEFAULT_DROPOUT

    if stated or row["method"] == "full":
        return given
    framework = _framework_default(row, FRAMEWORK_DROPOUT)
    return framework if framework is not None else STACK_DEFAULT_DROPOUT.get(stack, given)


def _stack_release(row: dict, stack: str) -> str:
    """The release a row's stack ran, where it changes the step: for hf-peft the transformers
    release, its source's stated one, else "4" for a row dated before transformers 5 (2026);
    for litgpt "0.0" (lit-gpt's code before its releases) for a row dated before v0.3.1, which
    stopped rebuilding the q/k/v adapter's index every forward; else the current one."""
    from ..memory.stacks import LITGPT_INDEX_CACHED_RELEASED
    from .validate import TRANSFORMERS_5_YEAR, _date, _year

    if row["source"] in SOURCE_RELEASES:
        return SOURCE_RELEASES[row["source"]]
    dated = {**row, "notes": f"{row['source']} {row.get('notes', '')}"}
    if stack == "hf-peft":
        return "4" if _year(dated) < TRANSFORMERS_5_YEAR else ""
    if stack == "litgpt":
        return "0.0" if _date(dated) < LITGPT_INDEX_CACHED_RELEASED else ""
    return ""


def _models_beside(argv: list[str], folder: Path) -> list[str]:
    """``argv`` with a relative ``-m``/``--model`` path that exists beside the file made absolute
    (a row may name a config.json kept next to it, e.g. ``-m configs/mpt-7b-foundry``)."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in ("-m", "--model") and not Path(out[i + 1]).is_absolute() \
                and (folder / out[i + 1]).exists():
            out[i + 1] = str(folder / out[i + 1])
    return out


def load_rows(path: str | Path, confidences: tuple[str, ...] = CONFIDENCES
              ) -> tuple[list[TimingRow], list[tuple[str, str]]]:
    """The rows of ``path`` lorasize can express, and (id, reason) for those it skips."""
    from ..cli.estimate_cmd import _given, build_gpu, build_shard, build_specs, estimate
    from ..arch.lora import resolve_targets

    rows, skipped = [], []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            if raw["confidence"] not in confidences:
                continue
            args = (raw.get("lorasize_args") or "").strip()
            if not args or args == "nan":
                skipped.append((raw["id"], f"no lorasize flags ({raw['method']})"))
                continue
            try:
                tps = float(raw["tps_per_gpu"])
                # the group's own context settings: click caches the help option on the command
                # from the first context made, which docs/cli.md renders
                argv = _models_beside(shlex.split(args), Path(path).resolve().parent)
                ctx = estimate.make_context("estimate", argv,
                                            help_option_names=["-h", "--help"])
                model, lora, train = build_specs(ctx, ctx.params)
                if not _given(ctx, "kernels"):  # a row's own flag says it; else its framework
                    train = replace(train, kernels="fused" if _fused(raw) else "eager")
                vocab = ROW_FACTS.get(raw["id"], {}).get("vocab_size")
                if vocab:
                    model = replace(model, vocab_size=vocab)
                if any(m in raw.get("framework", "") for m in CHECKPOINTED_FSDP_MARKERS):
                    train = replace(train, grad_checkpointing=True)
                if "no AMP" in raw.get("notes", ""):
                    train = replace(train, autocast=False)
                if train.stack in ("hf-peft", "litgpt") and not train.stack_release:
                    train = replace(train, stack_release=_stack_release(raw, train.stack))
                if any(m in raw.get("framework", "") for m in NO_KBIT_PREP_MARKERS):
                    train = replace(train, kbit_prep=False, grad_checkpointing=train.checkpointing)
                lora = replace(lora, dropout=_dropout(raw, lora.dropout, train.stack,
                                                      _given(ctx, "lora_dropout")))
                batch = _framework_default(raw, FRAMEWORK_GLOBAL_BATCH)
                if batch and not _given(ctx, "grad_accum"):
                    train = replace(train, grad_accum=max(batch // train.batch_size, 1))
                gpu = build_gpu(ctx.params)
                targets = resolve_targets(model, lora, train.stack) if train.method != "full" else ()
            except (LorasizeError, ValueError) as exc:
                skipped.append((raw["id"], str(exc)))
                continue
            shard = build_shard(ctx.params)
            paged = 0
            if "paged" in train.optimizer:
                from ..estimate import estimate as run_estimate
                from ..perf.timing import paged_out_bytes

                paged = paged_out_bytes(run_estimate(model, lora, train, gpu=gpu, shard=shard))
            rows.append(TimingRow(raw["id"], raw["source"], raw["confidence"], tps, model,
                                  targets, train, gpu, shard, lora.dropout, lora.dora, paged))
    return rows, skipped
