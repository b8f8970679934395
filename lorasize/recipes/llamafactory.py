"""LLaMA-Factory training YAML (``llamafactory-cli train FILE.yaml``).

Defaults where a recipe is silent are LLaMA-Factory's, at hiyouga/LLaMA-Factory@ff6d4d1
(2026-08-18; ``src/llamafactory/`` paths), and transformers' ``TrainingArguments`` it extends;
the evidence, line by line, is ``tests/data/recipes/llamafactory/defaults.md``. Three of them
differ from what a reader of PEFT would expect: gradient checkpointing is on unless
``disable_gradient_checkpointing``, ``double_quantization`` defaults to true, and PEFT's
``prepare_model_for_kbit_training`` is never called (LLaMA-Factory has its own
``prepare_model_for_training``, which upcasts nothing by default).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LorasizeError
from .optimizers import read_optimizer
from .recipe import (ZERO_STAGES, Recipe, RecipeBuilder, deepspeed_sharding, padded,
                     json_beside)

SRC = "LLaMA-Factory@ff6d4d1"
DEFAULTS = {
    "lora_rank": (8, "hparams/finetuning_args.py:77-80"),
    "lora_dropout": (0.0, "hparams/finetuning_args.py:73-76"),
    "lora_target": ("all", "hparams/finetuning_args.py:81-90"),
    "cutoff_len": (2048, "hparams/data_args.py:46-49"),
    "per_device_train_batch_size": (8, "transformers TrainingArguments default"),
    "gradient_accumulation_steps": (1, "transformers TrainingArguments default"),
    "num_train_epochs": (3.0, "transformers TrainingArguments default"),
    "double_quantization": (True, "hparams/model_args.py:291-294"),
    "quantization_type": ("nf4", "hparams/model_args.py:287-290"),
}
# flash_attn -> --attn (hparams/model_args.py:117-120; model/model_utils/attention.py:65-92);
# auto leaves transformers' default, SDPA.
ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash", "fa3": "flash"}
# Switches that replace the optimizer with one lorasize does not model
# (hparams/finetuning_args.py:266,305,356,472,522).
OTHER_OPTIMIZERS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
# DeepSpeed config file names LLaMA-Factory ships (examples/deepspeed/), when the file itself is
# not beside the recipe: stage and offload from the name.
DS_NAME = re.compile(r"ds_z(?P<stage>[0-3])(?P<offload>_offload)?")
# Keys that do not change the memory or time of a training step.
INERT = frozenset("""
trust_remote_code do_train do_eval do_predict dataset eval_dataset template max_samples
overwrite_cache preprocessing_num_workers dataloader_num_workers output_dir logging_steps
save_steps plot_loss overwrite_output_dir save_only_model report_to learning_rate
lr_scheduler_type warmup_ratio warmup_steps ddp_timeout resume_from_checkpoint val_size
per_device_eval_batch_size eval_strategy eval_steps seed weight_decay max_grad_norm
save_strategy save_total_limit run_name logging_dir dataset_dir media_dir tokenized_path
streaming buffer_size mix_strategy interleave_probs ignore_pad_token_for_loss train_on_prompt
mask_history default_system enable_thinking export_dir adapter_name_or_path cache_dir
use_fast_tokenizer resize_vocab split_special_tokens new_special_tokens model_revision hf_hub_token
ms_hub_token om_hub_token print_param_status create_new_adapter pissa_init pissa_iter
pissa_convert lora_alpha_ratio flash_attn_kwargs dataloader_pin_memory push_to_hub
include_num_input_tokens_seen max_steps loraplus_lr_embedding
""".split())


def read(data: dict, path: str) -> Recipe:
    """Read a LLaMA-Factory training recipe."""
    b = RecipeBuilder(path, "llama-factory", data)
    model = b.get("model_name_or_path")
    if not model:
        raise LorasizeError(f"{path}: model_name_or_path is required", source="--recipe")
    b.read("model", str(model), "model_name_or_path")
    b.read("stack", "hf-peft", "LLaMA-Factory trains with transformers and PEFT")
    _stage(b)
    kind = str(b.get("finetuning_type", "lora")).lower()
    if kind not in ("lora", "full"):
        raise LorasizeError(f"{path}: finetuning_type {kind} is not modelled (lora and full are)",
                            source="--recipe")
    quantized = _quantization(b, kind)
    if kind == "lora":
        _lora(b)
    else:
        b.read("method", "full", "finetuning_type: full")
    _precision(b)
    _batch(b)
    _kernels(b)
    _optimizer(b)
    _sharding(b, Path(path).parent, quantized)
    # gradient checkpointing: on unless disable_gradient_checkpointing
    # (hparams/model_args.py:145-148; model/model_utils/checkpointing.py:184-198)
    if b.given("disable_gradient_checkpointing"):
        b.read("grad_checkpointing", not bool(b.get("disable_gradient_checkpointing")),
               "disable_gradient_checkpointing")
    else:
        b.assume("grad_checkpointing", True, f"{SRC} model/model_utils/checkpointing.py:184-198 "
                 "(on unless disable_gradient_checkpointing)")
    b.get("gradient_checkpointing")  # transformers' own key: LLaMA-Factory does not use it
    return b.build(INERT)


def _stage(b: RecipeBuilder) -> None:
    stage = str(b.get("stage", "sft")).lower()
    if stage in ("dpo", "kto", "ppo", "rm"):
        b.skip("stage", f"{stage}: the step holds more than one policy forward (a reference "
                        f"model, pairs of sequences or a value head); estimated as SFT")


def _quantization(b: RecipeBuilder, kind: str) -> bool:
    bits = b.get("quantization_bit")
    method = str(b.get("quantization_method", "bnb")).lower()
    if bits is None:
        return False
    if method != "bnb":
        raise LorasizeError(f"{b.path}: quantization_method {method} is not modelled "
                            f"(bitsandbytes, bnb, is)", source="--recipe")
    if kind != "lora":
        raise LorasizeError(f"{b.path}: LLaMA-Factory quantizes only for LoRA (hparams/parser.py:"
                            f"235-237)", source="--recipe")
    b.read("method", "qlora", "quantization_bit")
    if int(bits) == 4:
        _value(b, "quantization_type", "quant", str)
        _value(b, "double_quantization", "double_quant", bool)
    elif int(bits) == 8:
        b.read("quant", "int8", "quantization_bit: 8")
    else:
        raise LorasizeError(f"{b.path}: quantization_bit {bits} with bitsandbytes: 4 or 8",
                            source="--recipe")
    b.assume("kbit_prep", False, f"{SRC}: PEFT's prepare_model_for_kbit_training is never called "
             "(its own prepare_model_for_training upcasts nothing by default)")
    return True


def _value(b: RecipeBuilder, key: str, option: str, kind) -> None:
    """``option`` from ``key``, or the LLaMA-Factory default."""
    default, where = DEFAULTS[key]
    if b.given(key):
        b.read(option, kind(b.get(key)), key)
    else:
        b.assume(option, default, f"{SRC} {where}")


def _lora(b: RecipeBuilder) -> None:
    if not b.has("method"):
        b.read("method", "lora", "finetuning_type: lora" if b.given("finetuning_type")
               else f"{SRC} default finetuning_type lora")
    _value(b, "lora_rank", "r", int)
    # lora_alpha: None -> 2 x lora_rank (hparams/finetuning_args.py:587)
    rank = b.settings["r"].value
    if b.given("lora_alpha"):
        b.read("alpha", float(b.get("lora_alpha")), "lora_alpha")
    else:
        b.assume("alpha", float(2 * rank), f"{SRC} hparams/finetuning_args.py:587 (2 x lora_rank)")
    _value(b, "lora_dropout", "lora_dropout", float)
    target = str(b.get("lora_target", "all")).replace(" ", "")
    b.read("targets", target, "lora_target") if b.given("lora_target") else \
        b.assume("targets", "all", f"{SRC} hparams/finetuning_args.py:81-90")
    if b.given("additional_target"):
        b.skip("additional_target", "PEFT modules_to_save (trainable copies of "
               f"{b.get('additional_target')}, with gradients and optimizer state) is not "
               "modelled from a recipe")
    if b.get("use_dora"):
        b.read("dora", True, "use_dora")
    if b.get("use_rslora"):
        b.read("variant", "rslora", "use_rslora")
    if b.given("loraplus_lr_ratio"):
        b.read("variant", "loraplus", "loraplus_lr_ratio")


def _precision(b: RecipeBuilder) -> None:
    """Base weights load in the checkpoint's dtype (model/loader.py:154); bf16/fp16 turn on
    autocast; pure_bf16 keeps the adapters in bf16 (model/adapter.py:310-312)."""
    if b.get("fp16"):
        b.read("dtype", "fp16", "fp16")
    elif b.get("bf16") or b.get("pure_bf16"):
        b.read("dtype", "bf16", "bf16" if b.given("bf16") else "pure_bf16")
    else:
        b.assume("dtype", "bf16", f"{SRC} model/loader.py:154 (the checkpoint's dtype)")
        b.read("autocast", False, "neither bf16 nor fp16 (no mixed-precision autocast)")
    if b.get("pure_bf16"):
        b.read("adapter_train_dtype", "bf16", "pure_bf16")
    if b.given("upcast_layernorm") and b.get("upcast_layernorm"):
        b.skip("upcast_layernorm", "1-D norm weights upcast to fp32 (a few MB) are not modelled")
    b.get("tf32")
    b.get("upcast_lmhead_output")


def _batch(b: RecipeBuilder) -> None:
    _value(b, "per_device_train_batch_size", "batch_size", int)
    _value(b, "gradient_accumulation_steps", "grad_accum", int)
    _value(b, "cutoff_len", "seq_len", int)
    _value(b, "num_train_epochs", "epochs", float)
    packing = b.get("packing")
    if packing is None:
        packing = str(b.get("stage", "sft")).lower() == "pt"  # hparams/parser.py:645
    if packing or b.get("neat_packing"):
        b.note("packing: every sequence is cutoff_len tokens")
    else:
        b.note("cutoff_len is a ceiling: LLaMA-Factory pads each SFT batch to its longest sample "
               "(train/sft/workflow.py:62-65); the estimate is the worst case")
        padded(b, f"{SRC} src/llamafactory/train/sft/workflow.py:62-65 (transformers' "
               "DataCollatorForSeq2Seq pads the attention_mask with zeros, to a multiple of 8 "
               "in training)", single=True)


def _kernels(b: RecipeBuilder) -> None:
    attn = str(b.get("flash_attn", "auto")).lower()
    if attn in ATTENTION:
        (b.read if b.given("flash_attn") else b.assume)(
            "attn", ATTENTION[attn], "flash_attn" if b.given("flash_attn")
            else f"{SRC} hparams/model_args.py:117-120 (auto: transformers' sdpa)")
    else:
        b.skip("flash_attn", f"'{attn}' is not an attention lorasize models")
    if b.get("enable_liger_kernel") or b.get("torch_compile"):
        b.read("kernels", "fused", "enable_liger_kernel" if b.get("enable_liger_kernel")
               else "torch_compile")
    if b.get("use_unsloth") or b.get("use_unsloth_gc"):
        b.skip("use_unsloth", "Unsloth's patched kernels and offloaded checkpointing are not "
                              "modelled")


def _optimizer(b: RecipeBuilder) -> None:
    for key in OTHER_OPTIMIZERS:
        if b.get(key):
            b.skip(key, "replaces the optimizer with one lorasize does not model")
    read_optimizer(b, "optim", "transformers TrainingArguments default (adamw_torch_fused)")


def _sharding(b: RecipeBuilder, folder: Path, quantized: bool) -> None:
    """``deepspeed: FILE`` (the ZeRO stage and offload from the JSON, or from LLaMA-Factory's
    file names ds_z{0,2,3}[_offload]_config.json) and transformers' ``fsdp``. The number of GPUs
    is never in the recipe (llamafactory-cli runs torchrun over every visible device)."""
    ds = b.get("deepspeed")
    if ds:
        sharding, offload, where = _deepspeed(str(ds), folder)
        b.read("sharding", sharding, f"deepspeed ({where})")
        if offload != "none":
            b.read("offload", offload, f"deepspeed ({where})")
        # DeepSpeed casts the whole model, adapters included, to bf16 and keeps fp32 masters in
        # its optimizer; accelerate then runs no torch autocast (defaults.md, Dtypes)
        if not quantized and b.settings.get("dtype") and b.settings["dtype"].value == "bf16":
            b.read("adapter_train_dtype", "bf16", "deepspeed with bf16 (the engine casts the "
                                                 "adapters to bf16)")
            b.read("autocast", False, "deepspeed (accelerate runs no torch autocast)")
        b.note("the number of GPUs is the launch's (llamafactory-cli uses every visible one): "
               "give --gpus N for the per-GPU figure")
    elif b.get("fsdp"):
        b.read("sharding", "fsdp", "fsdp")
        b.note("the number of GPUs is the launch's: give --gpus N for the per-GPU figure")
        b.get("fsdp_config")


def _deepspeed(text: str, folder: Path) -> tuple[str, str, str]:
    """(--sharding, --offload, where it was read) of a DeepSpeed config path."""
    found = json_beside(folder, text)
    if found is not None:
        return (*deepspeed_sharding(found[0]), found[1])
    match = DS_NAME.search(Path(text).name)
    if not match:
        raise LorasizeError(f"deepspeed: {text} is not beside the recipe and its name does not "
                            f"say the ZeRO stage (ds_z3_config.json does)", source="--recipe")
    stage = int(match.group("stage"))
    # LLaMA-Factory's ds_z3_offload_config.json offloads parameters and optimizer;
    # ds_z2_offload_config.json the optimizer (examples/deepspeed/)
    offload = ("params" if stage == 3 else "optimizer") if match.group("offload") else "none"
    return ZERO_STAGES[stage], offload, f"its file name {Path(text).name}"
