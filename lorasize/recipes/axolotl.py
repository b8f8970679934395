"""axolotl YAML (``axolotl train config.yml``).

Defaults where a recipe is silent are axolotl's pydantic schema's, at
axolotl-ai-cloud/axolotl@067b021 (2026-07-24; ``src/axolotl/utils/schemas/``), and what its model
loader does (``src/axolotl/loaders/``). Two of them differ from plain transformers + PEFT:

- QLoRA (``adapter: qlora`` with ``load_in_4bit``) is nf4 **with** double quantization
  (loaders/model.py:712-720);
- ``prepare_model_for_kbit_training`` runs, but axolotl then casts the norms and the embedding
  and output layers back to the training dtype for flash attention (loaders/model.py:446-480;
  1025-1048), so none of PEFT's fp32 upcast is left: ``--no-kbit-prep``, with checkpointing as
  the recipe says. With QLoRA under FSDP or DeepSpeed ZeRO-3 it is skipped outright
  (loaders/model.py:1001-1013).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LorasizeError
from .optimizers import read_optimizer
from .recipe import (ZERO_STAGES, Recipe, RecipeBuilder, deepspeed_sharding, json_beside,
                     padded)

SRC = "axolotl@067b021"
SCHEMA = f"{SRC} src/axolotl/utils/schemas"
# attn_implementation (and the deprecated switches) -> --attn
ATTENTION = {"flash_attention_2": "flash", "flash_attention_3": "flash", "sdpa": "sdpa",
             "eager": "eager", "kernels-community/flash-attn3": "flash"}
LEGACY_ATTENTION = (("flash_attention", "flash"), ("sdp_attention", "sdpa"), ("eager_attention", "eager"))
# axolotl's deepspeed_configs/ names: zero1.json, zero2.json, zero3.json, zero3_bf16.json,
# zero3_bf16_cpuoffload_params.json, zero3_bf16_cpuoffload_all.json
DS_NAME = re.compile(r"zero(?P<stage>[0-3])(?P<offload>.*cpuoffload)?")
LIGER_KEYS = ("liger_rms_norm", "liger_glu_activation", "liger_rope", "liger_layer_norm",
              "liger_fused_linear_cross_entropy", "liger_cross_entropy")
INERT = frozenset("""model_type tokenizer_type datasets test_datasets dataset_prepared_path
val_set_size output_dir wandb_project wandb_entity wandb_watch wandb_name wandb_log_model
lr_scheduler learning_rate logging_steps warmup_ratio warmup_steps evals_per_epoch saves_per_epoch
eval_steps save_steps weight_decay special_tokens tokens resume_from_checkpoint lora_model_dir
eval_sample_packing tf32 gradient_checkpointing_kwargs strict hub_model_id chat_template seed
trust_remote_code max_grad_norm early_stopping_patience local_rank debug group_by_length
train_on_inputs eval_max_new_tokens eval_table_size save_total_limit save_strategy
eval_strategy logging_dir mlflow_tracking_uri mlflow_experiment_name comet_api_key
comet_project_name dataset_processes shuffle_merged_datasets default_system_message
auto_resume_from_checkpoints use_wandb use_tensorboard max_steps loss_watchdog_threshold
loss_watchdog_patience remove_unused_columns ddp_timeout dataloader_num_workers
dataloader_pin_memory dataloader_prefetch_factor xformers_attention_kwargs sample_packing_eff_est
total_num_tokens deepspeed_config fsdp_version embeddings_skip_upcast ddp_find_unused_parameters
eot_tokens""".split())


def read(data: dict, path: str) -> Recipe:
    """Read an axolotl recipe."""
    b = RecipeBuilder(path, "axolotl", data)
    b.read("model", str(b.get("base_model")), "base_model")
    b.read("stack", "hf-peft", "axolotl trains with transformers and PEFT")
    sharded = _sharding(b, Path(path).parent)
    _ray(b)
    _adapter(b, sharded)
    _precision(b)
    _batch(b)
    _attention(b)
    _kernels(b)
    _optimizer(b)
    for key in ("rl", "reward_model", "process_reward_model"):
        if b.get(key):
            b.skip(key, f"{b.get(key)}: the step holds more than one forward (a reference "
                        f"model or pairs of sequences); estimated as SFT")
    for key in [k for k in data if str(k).startswith("unsloth_")]:
        if b.get(key):
            b.skip(key, "Unsloth's patched kernels are not modelled")
    return b.build(INERT)


def _adapter(b: RecipeBuilder, sharded: str | None) -> None:
    adapter = str(b.get("adapter") or "").lower()
    four, eight = bool(b.get("load_in_4bit")), bool(b.get("load_in_8bit"))
    if adapter not in ("lora", "qlora"):
        if adapter:
            raise LorasizeError(f"{b.path}: adapter {adapter} is not modelled (lora and qlora "
                                f"are; leave it out for full fine-tuning)", source="--recipe")
        b.read("method", "full", "no adapter (full fine-tuning)")
        return
    if adapter == "qlora" and four:
        b.read("method", "qlora", "adapter: qlora, load_in_4bit")
        b.read("quant", "nf4", f"{SRC} src/axolotl/loaders/model.py:712-720 (bnb_4bit_quant_type)")
        b.read("double_quant", True, f"{SRC} src/axolotl/loaders/model.py:712-720 "
                                     "(bnb_4bit_use_double_quant=True)")
    elif eight:
        b.read("method", "qlora", "load_in_8bit")
        b.read("quant", "int8", "load_in_8bit")
    else:
        b.read("method", "lora", "adapter: lora")
        if four:
            b.skip("load_in_4bit", "with adapter: lora axolotl builds no 4-bit config of its own; "
                   "estimated as 16-bit LoRA")
    if b.settings["method"].value == "qlora":
        why = (f"{SRC} src/axolotl/loaders/model.py:1001-1013 (skipped under {sharded})"
               if sharded in ("fsdp", "zero3") else
               f"{SRC} src/axolotl/loaders/model.py:446-480 (norms, embeddings and head cast back "
               f"to the training dtype after prepare_model_for_kbit_training)")
        b.assume("kbit_prep", False, why)
    _lora(b)


def _lora(b: RecipeBuilder) -> None:
    if b.given("lora_r"):
        b.read("r", int(b.get("lora_r")), "lora_r")
    else:
        b.assume("r", 8, "PEFT LoraConfig default r=8 (axolotl passes lora_r=None through)")
    if b.given("lora_alpha"):
        b.read("alpha", float(b.get("lora_alpha")), "lora_alpha")
    else:
        b.assume("alpha", 8.0, "PEFT LoraConfig default lora_alpha=8")
    dropout = b.get("lora_dropout")
    (b.read if dropout is not None else b.assume)(
        "lora_dropout", float(dropout or 0.0), "lora_dropout" if dropout is not None
        else f"{SCHEMA}/peft.py:80")
    modules = b.get("lora_target_modules") or []
    modules = [modules] if isinstance(modules, str) else [str(m) for m in modules]
    if b.get("lora_target_linear"):
        # find_all_linear_names: every linear but the output head (loaders/adapter.py:54-72)
        extra = [m for m in modules if m not in ("lm_head",)]
        b.read("targets", ",".join(["all"] + extra + (["lm_head"] if "lm_head" in modules else [])),
               "lora_target_linear" + (" + lora_target_modules" if modules else ""))
    elif modules:
        b.read("targets", ",".join(modules), "lora_target_modules")
    else:
        b.note("no lora_target_modules: PEFT takes the model type's default targets (q_proj, "
               "v_proj for Llama-like models), as lorasize's default qv")
    if b.get("lora_modules_to_save"):
        b.skip("lora_modules_to_save", f"trainable copies of {', '.join(b.get('lora_modules_to_save'))}"
               " with their gradients and optimizer state are not modelled from a recipe: the "
               "estimate is low by their weights x (2 + optimizer state)")
    if b.get("peft_use_dora"):
        b.read("dora", True, "peft_use_dora")
    if b.get("peft_use_rslora"):
        b.read("variant", "rslora", "peft_use_rslora")
    if b.get("unfrozen_parameters"):
        b.skip("unfrozen_parameters", "the parameters matching these patterns train in full "
               "(with gradients and optimizer state): not modelled from a recipe")
    for key in ("peft_layers_to_transform", "lora_rank_pattern", "lora_target_parameters"):
        if b.get(key):
            b.skip(key, "per-layer or per-parameter adapters are not modelled from a recipe")


def _precision(b: RecipeBuilder) -> None:
    """bf16 "auto" (the schema default, config.py:559-563) is bf16 on a GPU that has it."""
    if b.get("fp16"):
        b.read("dtype", "fp16", "fp16")
        return
    bf16 = b.get("bf16", "auto")
    if bf16 is False:
        b.read("autocast", False, "bf16: false (no mixed precision)")
        b.assume("dtype", "bf16", "the checkpoint's dtype (lorasize assumes bf16)")
    elif b.given("bf16"):
        b.read("dtype", "bf16", f"bf16: {bf16}")
    else:
        b.assume("dtype", "bf16", f"{SCHEMA}/config.py:559-563 (bf16: auto)")


def _batch(b: RecipeBuilder) -> None:
    micro = int(b.get("micro_batch_size", 1))
    (b.read if b.given("micro_batch_size") else b.assume)(
        "batch_size", micro, "micro_batch_size" if b.given("micro_batch_size")
        else f"{SCHEMA}/training.py:77-82")
    if b.given("gradient_accumulation_steps"):
        b.read("grad_accum", int(b.get("gradient_accumulation_steps")), "gradient_accumulation_steps")
    elif b.given("batch_size"):
        b.read("grad_accum", max(1, int(b.get("batch_size")) // micro),
               "batch_size / micro_batch_size (one GPU)")
    else:
        b.assume("grad_accum", 1, f"{SCHEMA}/training.py:71-76")
    (b.read if b.given("sequence_len") else b.assume)(
        "seq_len", int(b.get("sequence_len", 512)), "sequence_len" if b.given("sequence_len")
        else f"{SCHEMA}/config.py:665-670")
    pad_to_length = b.get("pad_to_sequence_len")  # read whatever sample_packing says
    if b.get("sample_packing") or pad_to_length:
        b.note("sample_packing / pad_to_sequence_len: every row is sequence_len tokens")
    else:
        b.note("sequence_len is a ceiling without sample_packing: batches pad to their longest "
               "sample; the estimate is the worst case")
    if not b.get("sample_packing") and not b.get("batch_flattening"):
        # pad_to_sequence_len unset pads to a multiple of 64, set to the sequence length: one
        # sample is padded too; only pad_to_sequence_len: false pads to the batch's longest
        collator = (f"{SRC} src/axolotl/core/builders/causal.py:383-393, 598-600 "
                    "(DataCollatorForSeq2Seq pads the attention_mask with zeros, "
                    "utils/collators/batching.py:104)")
        if pad_to_length:
            b.read("padded", True, f"pad_to_sequence_len ({collator})")
        else:
            padded(b, collator, single=pad_to_length is None)
    (b.read if b.given("num_epochs") else b.assume)(
        "epochs", float(b.get("num_epochs", 1.0)), "num_epochs" if b.given("num_epochs")
        else f"{SCHEMA}/training.py:267")
    checkpointing = b.get("gradient_checkpointing", False)
    if checkpointing in ("offload", "offload_disk"):
        b.read("grad_checkpointing", True, f"gradient_checkpointing: {checkpointing}")
        b.skip("gradient_checkpointing", f"{checkpointing}: checkpoints offloaded off the GPU are "
               "not modelled (the estimate keeps them on the GPU)")
    elif b.given("gradient_checkpointing"):
        b.read("grad_checkpointing", bool(checkpointing), "gradient_checkpointing")
    else:
        b.assume("grad_checkpointing", False, f"{SCHEMA}/config.py:600-605")


def _attention(b: RecipeBuilder) -> None:
    attn = b.get("attn_implementation")
    if attn:
        if str(attn) in ATTENTION:
            b.read("attn", ATTENTION[str(attn)], "attn_implementation")
        else:
            b.skip("attn_implementation", f"'{attn}' is not an attention lorasize models")
        return
    for key, value in LEGACY_ATTENTION:
        if b.get(key):
            b.read("attn", value, key)
            return
    if b.get("xformers_attention"):
        b.skip("xformers_attention", "xformers attention is not modelled (sdpa's memory assumed)")
    b.assume("attn", "sdpa", "transformers' default attention (sdpa)")


def _kernels(b: RecipeBuilder) -> None:
    plugins = " ".join(map(str, b.get("plugins", []) or []))
    liger = "liger" in plugins.lower() and any(b.get(k) for k in LIGER_KEYS)
    if liger or b.get("torch_compile") is True:
        b.read("kernels", "fused", "liger plugin" if liger else "torch_compile")
    if "cut_cross_entropy" in plugins.lower() or b.get("cut_cross_entropy"):
        b.skip("cut_cross_entropy", "the fused linear cross-entropy never builds the logits; "
               "the estimate counts them (an overestimate of the loss peak)")
    if b.get("liger_fused_linear_cross_entropy"):
        b.skip("liger_fused_linear_cross_entropy", "the fused linear cross-entropy never builds "
               "the logits; the estimate counts them (an overestimate of the loss peak)")


def _optimizer(b: RecipeBuilder) -> None:
    read_optimizer(b, "optimizer", f"{SCHEMA}/training.py:122-125 (adamw_torch_fused)")


def _ray(b: RecipeBuilder) -> None:
    """With Ray the recipe fixes the GPU count: workers x GPUs per worker
    (src/axolotl/utils/schemas/integrations.py:160-178; cli/train.py:117-129)."""
    if not b.get("use_ray"):
        return
    per_worker = (b.get("resources_per_worker", {}) or {}).get("GPU", 1)
    gpus = int(b.get("ray_num_workers", 1)) * int(per_worker)
    if gpus > 1:
        b.read("gpus", gpus, "ray_num_workers x resources_per_worker.GPU")


def _sharding(b: RecipeBuilder, folder: Path) -> str | None:
    """``deepspeed: FILE`` or ``fsdp`` / ``fsdp_config``; returns the sharding read."""
    ds = b.get("deepspeed")
    if ds:
        found = json_beside(folder, str(ds))
        if found is not None:
            sharding, offload = deepspeed_sharding(found[0])
            where = found[1]
        else:
            match = DS_NAME.search(Path(str(ds)).name)
            if not match:
                raise LorasizeError(f"deepspeed: {ds} is not beside the recipe and its name does "
                                    f"not say the ZeRO stage (zero3.json does)", source="--recipe")
            sharding = ZERO_STAGES[int(match.group("stage"))]
            offload = "params" if match.group("offload") else "none"
            where = f"its file name {Path(str(ds)).name}"
        b.read("sharding", sharding, f"deepspeed ({where})")
        if offload != "none":
            b.read("offload", offload, f"deepspeed ({where})")
        b.note("the number of GPUs is the launch's: give --gpus N for the per-GPU figure")
        return sharding
    fsdp, config = b.get("fsdp"), b.get("fsdp_config")
    if fsdp or config:
        words = fsdp.split() if isinstance(fsdp, str) else [str(w) for w in fsdp or []]
        config = config if isinstance(config, dict) else {}
        strategy = str(config.get("fsdp_sharding_strategy", config.get("sharding_strategy", ""))).upper()
        grad_op = "shard_grad_op" in words or strategy == "SHARD_GRAD_OP" or \
            config.get("reshard_after_forward") is False
        b.read("sharding", "fsdp-grad-op" if grad_op else "fsdp", "fsdp / fsdp_config")
        if config.get("fsdp_offload_params") or config.get("offload_params"):
            b.read("offload", "params", "fsdp_config.fsdp_offload_params")
        b.note("the number of GPUs is the launch's: give --gpus N for the per-GPU figure")
        return "fsdp"
    return None
