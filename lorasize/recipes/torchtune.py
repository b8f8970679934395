"""torchtune recipe configs (``tune run lora_finetune_single_device --config llama3_1/8B_lora``).

Defaults where a config is silent are torchtune's, at pytorch/torchtune@bd2a0fc (2026-04-23):
``recipes/lora_finetune_single_device.py`` and ``lora_finetune_distributed.py``
(``cfg.get(key, default)``) and the model builders' keyword defaults
(``torchtune/models/<family>/_model_builders.py``). ``--stack torchtune`` models what torchtune does
differently from transformers + PEFT: the whole model in ``dtype`` (no fp32 adapters, no
autocast), the chunked output loss, and QLoRA quantizing only the linears that carry LoRA.

The model is a builder (``torchtune.models.llama3_1.lora_llama3_1_8b``), not a Hub id: the table
:data:`BUILDERS` names the catalog model of each builder's architecture (the checkpoints the
configs download are the Instruct releases, of the same shapes).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..errors import LorasizeError
from .optimizers import optimizer_of
from .recipe import Recipe, RecipeBuilder, model_modules

SRC = "torchtune@bd2a0fc"
SINGLE = f"{SRC} recipes/lora_finetune_single_device.py"
DISTRIBUTED = f"{SRC} recipes/lora_finetune_distributed.py"
# builder architecture (the name without lora_/qlora_) -> catalog model
BUILDERS = {
    "llama2_7b": "llama2-7b", "llama2_13b": "llama2-13b", "llama2_70b": "llama2-70b",
    "llama3_8b": "llama3-8b", "llama3_70b": "llama3-70b",
    "llama3_1_8b": "llama3.1-8b-instruct", "llama3_1_70b": "llama3.1-70b-instruct",
    "llama3_1_405b": "llama3.1-405b",
    "llama3_2_1b": "llama3.2-1b", "llama3_2_3b": "llama3.2-3b-instruct",
    "llama3_3_70b": "llama3.3-70b-instruct",
    "mistral_7b": "mistral-7b", "gemma_2b": "gemma-2b", "gemma_7b": "gemma-7b",
    "gemma2_2b": "gemma2-2b", "gemma2_9b": "gemma2-9b", "gemma2_27b": "gemma2-27b",
    "phi3_mini": "phi3-mini", "phi4_14b": "phi-4",
    "qwen2_5_0_5b": "qwen2.5-0.5b", "qwen2_5_3b": "qwen2.5-3b", "qwen3_32b": "qwen3-32b",
    "qwen2_5_7b_base": "qwen2.5-7b", "qwen2_5_7b_instruct": "qwen2.5-7b-instruct",
    # base and instruct builders of one size build the same shapes
    **{f"{arch}_{kind}": name for arch, name in (
        ("qwen2_5_1_5b", "qwen2.5-1.5b"),
        ("qwen2_5_14b", "qwen2.5-14b"), ("qwen2_5_32b", "qwen2.5-32b"),
        ("qwen2_5_72b", "qwen2.5-72b"), ("qwen3_0_6b", "qwen3-0.6b"),
        ("qwen3_1_7b", "qwen3-1.7b"), ("qwen3_4b", "qwen3-4b-instruct-2507"),
        ("qwen3_8b", "qwen3-8b"), ("qwen3_14b", "qwen3-14b")) for kind in ("base", "instruct")},
}
# torchtune's module names -> the Hugging Face ones (torchtune/models/convert_weights.py:
# output_proj is o_proj; the MLP's w1, w3, w2 are gate, up, down; output is lm_head)
ATTN_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")
# model builder keyword defaults (torchtune/models/llama3_1/_model_builders.py:85-91; the same in
# every family's lora_* builder)
LORA_DEFAULTS = {"lora_rank": ("r", 8), "lora_alpha": ("alpha", 16.0),
                 "lora_dropout": ("lora_dropout", 0.0)}
# Keys that do not change the memory or time of a training step.
INERT = frozenset("""output_dir tokenizer checkpointer resume_from_checkpoint
save_adapter_weights_only seed shuffle lr_scheduler loss epochs max_steps_per_epoch
clip_grad_norm metric_logger log_every_n_steps log_peak_memory_stats log_level device profiler
low_cpu_ram dataset_val batch_size_val run_val_every_n_steps save_every_n_steps
enable_async_checkpointing cudnn_deterministic_mode collate_fn""".split())
_SCRIPT = re.compile(r"\b(lora_finetune_distributed|lora_finetune_single_device|"
                     r"full_finetune_distributed|full_finetune_single_device)\b")
# the header's launch line: "tune run --nnodes 1 --nproc_per_node 2 lora_finetune_distributed ..."
_NPROC = re.compile(r"tune run[^\n]*?--nproc_per_node[ =](\d+)")


def _header(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")[:2000]
    except OSError:
        return ""


def _script(path: str, data: dict) -> str:
    """The recipe script the config is for: its header comment names it (every config in
    recipes/configs/ opens with "Config for ... in lora_finetune_single_device.py"); else the
    file name (``*_single_device.yaml``) or a distributed-only key decides."""
    found = _SCRIPT.search(_header(path))
    if found:
        return found.group(1)
    distributed = Path(path).stem.endswith("single_device") is False and any(
        key in data for key in ("fsdp_cpu_offload", "fsdp_reshard_after_forward",
                                "custom_sharded_layers", "data_parallel_shard_dim"))
    return "lora_finetune_distributed" if distributed else "lora_finetune_single_device"


def read(data: dict, path: str) -> Recipe:
    """Read a torchtune recipe config."""
    b = RecipeBuilder(path, "torchtune", data)
    b.read("stack", "torchtune", "torchtune recipe config")
    script = _script(path, data)
    distributed = script.endswith("distributed")
    source = DISTRIBUTED if distributed else SINGLE
    model = b.get("model", {})
    component = str(model.get("_component_", ""))
    builder = component.rsplit(".", 1)[-1]
    lora = builder.startswith(("lora_", "qlora_"))
    arch = re.sub(r"^(q?lora_)", "", builder)
    if arch not in BUILDERS:
        raise LorasizeError(f"{path}: model builder {component} is not one lorasize maps to a "
                            f"model; give --model (a catalog name or config.json)",
                            source="--recipe")
    b.read("model", BUILDERS[arch], f"model._component_ ({builder})")
    if lora:
        quantized = builder.startswith("qlora_") or bool(model.get("quantize_base"))
        b.read("method", "qlora" if quantized else "lora",
               "model._component_ (qlora_ builder: quantize_base=True)" if quantized
               else "model._component_")
        if quantized:
            b.read("quant", "nf4", "torchao NF4 (torchtune/modules/low_precision/nf4_linear.py)")
            # torchao to_nf4(block_size=64, scaler_block_size=256): the block scalers are
            # themselves quantized to 8 bits, as bitsandbytes' double quantization
            b.assume("double_quant", True, "torchao to_nf4 quantizes the block scalers "
                                           "(scaler_block_size=256)")
        _lora(b, model)
    else:
        b.read("method", "full", f"model._component_ ({builder}: no LoRA)")
    _training(b, source)
    if distributed:
        # FSDP2 fully_shard over every layer; reshard_after_forward=False is SHARD_GRAD_OP
        # (recipes/lora_finetune_distributed.py:324-326)
        reshard = b.get("fsdp_reshard_after_forward", True)
        b.read("sharding", "fsdp" if reshard else "fsdp-grad-op", f"{script} (FSDP2)")
        if b.get("fsdp_cpu_offload"):
            b.read("offload", "params", "fsdp_cpu_offload")
        nproc = _NPROC.search(_header(path))
        if nproc and int(nproc.group(1)) > 1:
            b.assume("gpus", int(nproc.group(1)), f"the config's header: tune run "
                     f"--nproc_per_node {nproc.group(1)} (the launch decides; --gpus wins)")
        else:
            b.note("the number of GPUs is the launch's (tune run --nproc_per_node N): give "
                   "--gpus N for the per-GPU figure")
    return b.build(INERT)


def _lora(b: RecipeBuilder, model: dict) -> None:
    for key, (option, default) in LORA_DEFAULTS.items():
        if model.get(key) is not None:
            b.read(option, type(default)(model[key]), f"model.{key}")
        else:
            b.assume(option, default, f"{SRC} model builder default {key}={default}")
    roles = [ATTN_MODULES.get(m, m) for m in model.get("lora_attn_modules") or []]
    if model.get("apply_lora_to_mlp"):
        roles += MLP
    if model.get("apply_lora_to_output"):
        roles.append("lm_head")
    if not roles:
        raise LorasizeError(f"{b.path}: model.lora_attn_modules names no module", source="--recipe")
    targets, fused = model_modules(b.settings["model"].value, roles, parts=True)
    b.read("targets", ",".join(targets),
           "model.lora_attn_modules / apply_lora_to_mlp / apply_lora_to_output")
    if fused:
        b.note("torchtune builds this model with separate projections where the Hugging Face "
               "model fuses them, and gives each its own adapter (torchtune/models/phi3/"
               "_component_builders.py): --stack torchtune reads the part names so")
    if model.get("use_dora"):
        b.read("dora", True, "model.use_dora")


def _training(b: RecipeBuilder, source: str) -> None:
    dtype = str(b.get("dtype", "bf16")).lower()
    b.read("dtype", {"bf16": "bf16", "fp32": "fp32", "fp16": "fp16"}.get(dtype, "bf16"), "dtype")
    b.read("autocast", False, "torchtune runs the model in dtype (no autocast)")
    if b.given("batch_size"):
        b.read("batch_size", int(b.get("batch_size")), "batch_size")
    b.read("grad_accum", int(b.get("gradient_accumulation_steps", 1)), "gradient_accumulation_steps")
    if b.given("epochs"):
        b.read("epochs", float(b.get("epochs")), "epochs")
    dataset = b.get("dataset", {})
    tokenizer = b.get("tokenizer", {})
    packed = isinstance(dataset, dict) and bool(dataset.get("packed"))
    length = tokenizer.get("max_seq_len") if isinstance(tokenizer, dict) else None
    if length:
        b.read("seq_len", int(length), "tokenizer.max_seq_len")
        b.note("every sequence is tokenizer.max_seq_len tokens (dataset.packed)" if packed else
               "tokenizer.max_seq_len is a ceiling: torchtune pads each batch to its longest "
               "sample (padded_collate_sft); the estimate is the worst case")
    else:
        b.skip("tokenizer.max_seq_len", "null: the longest sample of the data sets the length; "
               "give --seq-len")
    checkpointing = b.get("enable_activation_checkpointing")
    if checkpointing is None:
        b.assume("grad_checkpointing", False, f"{source} (enable_activation_checkpointing "
                                              f"defaults to False)")
    else:
        b.read("grad_checkpointing", bool(checkpointing), "enable_activation_checkpointing")
    if b.get("enable_activation_offloading"):
        b.skip("enable_activation_offloading", "activations offloaded to the CPU are not modelled")
    if b.get("compile"):
        # torchtune compiles each decoder layer and the loss (training/_compile.py): with torch
        # here, what they save is measured (--kernels compile); without it, step time only
        b.read("kernels", "compile" if importlib.util.find_spec("torch") else "fused", "compile")
    optimizer = b.get("optimizer", {})
    name = optimizer.get("_component_") if isinstance(optimizer, dict) else optimizer
    found = optimizer_of(str(name)) if name else None
    fused = isinstance(optimizer, dict) and optimizer.get("fused") is True
    if found == "adamw" and fused:
        b.read("optimizer", "adamw-fused", "optimizer.fused")
    elif found:
        b.read("optimizer", found, "optimizer._component_")
    else:
        b.skip("optimizer", f"{name} is not an optimizer lorasize models; adamw assumed")
    if b.get("optimizer_in_bwd"):
        b.skip("optimizer_in_bwd", "the optimizer steps each parameter in backward and frees its "
               "gradient at once; the estimate keeps every gradient until the step")
