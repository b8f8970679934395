"""Hugging Face ``TrainingArguments`` and TRL ``SFTConfig`` (JSON or YAML), with TRL's
``ModelConfig`` keys where a script's YAML holds them (TRL's ``trl sft --config``, the
alignment-handbook recipes).

A plain ``TrainingArguments`` file says nothing of the model or the adapter: give ``--model`` and
``--adapter`` (a PEFT adapter folder) beside ``--recipe``. Defaults where a file is silent are
transformers 5.23.0's (``training_args.py``) and, for a TRL file (one with a TRL-only key such as
``max_length``, ``packing`` or ``use_peft``), TRL's, which differ: gradient checkpointing on,
bf16 on unless fp16, sequences of 1,024 tokens.
"""

from __future__ import annotations

from pathlib import Path

from .optimizers import read_optimizer
from .recipe import Recipe, RecipeBuilder, deepspeed_sharding, json_beside, padded

TF = "transformers 5.23.0 training_args.py"
TRL = "trl@f2cd577 trl/trainer/sft_config.py"
TRL_BASE = "trl@f2cd577 trl/trainer/base_config.py"
TRL_TRAINER = "trl@f2cd577 trl/trainer/sft_trainer.py"
TRL_MODEL = "trl@f2cd577 trl/trainer/model_config.py"  # lora_r 107-110, lora_alpha 111-114,
# lora_dropout 115-118, bnb_4bit_quant_type 160-163, use_bnb_nested_quant 164-167
# Keys only TRL's SFTConfig, ModelConfig or ScriptArguments has (TrainingArguments names no model
# or dataset): a file with one is a TRL file (`trl sft --config`, the alignment-handbook recipes).
TRL_KEYS = frozenset("""max_length max_seq_length packing packing_strategy padding_free
dataset_text_field dataset_kwargs completion_only_loss assistant_only_loss loss_type
activation_offloading model_init_kwargs use_peft lora_r lora_alpha lora_dropout
lora_target_modules load_in_4bit load_in_8bit use_bnb_nested_quant bnb_4bit_quant_type
chat_template_path eval_packing model_name_or_path dataset_name""".split())
# TRL ModelConfig LoRA defaults (lora_r 16, lora_alpha 32, lora_dropout 0.05)
TRL_LORA = {"lora_r": ("r", 16), "lora_alpha": ("alpha", 32.0), "lora_dropout": ("lora_dropout", 0.05)}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16",
          "fp16": "fp16", "fp32": "fp32"}
ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash",
             "flash_attention_3": "flash", "kernels-community/flash-attn": "flash"}
INERT = frozenset("""output_dir overwrite_output_dir do_train do_eval do_predict eval_strategy
evaluation_strategy eval_steps per_device_eval_batch_size learning_rate weight_decay adam_beta1
adam_beta2 adam_epsilon max_grad_norm lr_scheduler_type lr_scheduler_kwargs warmup_ratio
warmup_steps log_level logging_dir logging_strategy logging_first_step logging_steps save_strategy
save_steps save_total_limit save_only_model seed data_seed run_name report_to push_to_hub
hub_model_id hub_strategy hub_private_repo remove_unused_columns label_names load_best_model_at_end
metric_for_best_model greater_is_better dataloader_num_workers dataloader_pin_memory
dataloader_drop_last disable_tqdm ddp_timeout ddp_find_unused_parameters max_steps
resume_from_checkpoint dataset_name dataset_config dataset_mixer dataset_splits dataset_train_split
dataset_test_split dataset_num_proc preprocessing_num_workers chat_template tokenizer_name_or_path
model_revision trust_remote_code truncation_mode shuffle_dataset eos_token pad_token hub_token
hub_revision optim_args group_by_length length_column_name include_tokens_per_second
include_num_input_tokens_seen neftune_noise_alpha gradient_checkpointing_kwargs
lora_task_type auto_find_batch_size full_determinism callbacks wandb_entity wandb_project
benchmarks ignore_data_skip save_safetensors local_rank prediction_loss_only logging_nan_inf_filter
dataloader_persistent_workers torch_empty_cache_steps average_tokens_across_devices
label_smoothing_factor bf16_full_eval fp16_full_eval use_cache log_on_each_node log_level_replica
project eval_delay eval_on_start eval_do_concat_batches eval_use_gather_object include_for_metrics
batch_eval_metrics save_on_each_node enable_jit_checkpoint hub_always_push
restore_callback_states_from_checkpoint use_cpu accelerator_config dataloader_in_order
train_sampling_strategy debug skip_memory_metrics activation_checkpointing_kwargs trackio_space_id
hub_revision parallelism_config""".split())


def read(data: dict, path: str) -> Recipe:
    """Read Trainer / TRL arguments."""
    b = RecipeBuilder(path, "hf", data)
    trl = any(key in data for key in TRL_KEYS)
    b.read("stack", "hf-peft", "transformers Trainer")
    model = b.get("model_name_or_path")
    if model:
        b.read("model", str(model), "model_name_or_path")
    else:
        b.note("the arguments name no model: give --model (and --adapter for a PEFT adapter "
               "folder's r, alpha and targets)")
    _adapter(b, trl)
    _precision(b, trl)
    _batch(b, trl)
    _optimizer(b)
    _kernels(b)
    _sharding(b, Path(path).parent)
    return b.build(INERT)


def _adapter(b: RecipeBuilder, trl: bool) -> None:
    """TRL ModelConfig: use_peft, lora_*, load_in_4bit/8bit (trl/trainer/model_config.py)."""
    if b.get("load_in_4bit"):
        b.read("method", "qlora", "load_in_4bit")
        quant = str(b.get("bnb_4bit_quant_type", "nf4")).lower()
        (b.read if b.given("bnb_4bit_quant_type") else b.assume)(
            "quant", quant, "bnb_4bit_quant_type" if b.given("bnb_4bit_quant_type")
            else f"{TRL_MODEL} bnb_4bit_quant_type='nf4'")
        (b.read if b.given("use_bnb_nested_quant") else b.assume)(
            "double_quant", bool(b.get("use_bnb_nested_quant", False)),
            "use_bnb_nested_quant" if b.given("use_bnb_nested_quant")
            else f"{TRL_MODEL} use_bnb_nested_quant=False")
    elif b.get("load_in_8bit"):
        b.read("method", "qlora", "load_in_8bit")
        b.read("quant", "int8", "load_in_8bit")
    if b.has("method"):
        b.assume("kbit_prep", False, f"{TRL_TRAINER}: SFTTrainer does not call "
                 "prepare_model_for_kbit_training (only experimental trainers do)")
        b.assume("adapter_train_dtype", "bf16", f"{TRL_TRAINER}:1123-1130 (the adapter weights of "
                 "a quantized model are cast to bf16)")
    if not trl:
        return  # TrainingArguments alone: the adapter is --adapter's (or the flags')
    for key in TRL_LORA:
        b.given(key)  # read below, or meaningless without use_peft
    if not b.get("use_peft", False):
        if not b.has("method"):
            (b.read if b.given("use_peft") else b.assume)(
                "method", "full", "use_peft: false" if b.given("use_peft")
                else f"{TRL_MODEL} use_peft=False (every weight trains)")
        return
    if not b.has("method"):
        b.read("method", "lora", "use_peft")
    for key, (option, default) in TRL_LORA.items():
        if b.given(key):
            b.read(option, b.get(key), key)
        else:
            b.assume(option, default, f"{TRL_MODEL} {key}={default}")
    targets = b.get("lora_target_modules")
    if targets:
        text = targets if isinstance(targets, str) else ",".join(map(str, targets))
        b.read("targets", "all" if text == "all-linear" else text, "lora_target_modules")
    else:
        b.note("lora_target_modules not set: PEFT takes the model type's default targets "
               "(q_proj, v_proj for Llama-like models), as lorasize's default qv")
    if b.get("use_dora"):
        b.read("dora", True, "use_dora")
    if b.get("use_rslora"):
        b.read("variant", "rslora", "use_rslora")
    if b.given("lora_modules_to_save"):
        b.skip("lora_modules_to_save", "trainable copies of these modules (with gradients and "
               "optimizer state) are not modelled from a recipe")


def _precision(b: RecipeBuilder, trl: bool) -> None:
    """The weights' dtype (torch_dtype / dtype / model_init_kwargs) and autocast (bf16 / fp16;
    TRL turns bf16 on unless fp16)."""
    kwargs = b.get("model_init_kwargs", {}) if isinstance(b.get("model_init_kwargs", {}), dict) else {}
    for key in ("torch_dtype", "dtype"):
        value = b.get(key) or kwargs.get(key)
        if value and str(value).lower() in DTYPES:
            b.read("dtype", DTYPES[str(value).lower()], key)
            break
    fp16 = bool(b.get("fp16", False))
    bf16 = b.get("bf16")
    if fp16:
        if not b.has("dtype"):
            b.read("dtype", "fp16", "fp16")
        b.read("autocast", True, "fp16")
    elif bf16 is None and trl:
        b.assume("autocast", True, f"{TRL_BASE}:67-105 (bf16 defaults to True unless fp16)")
    elif not bf16:
        b.read("autocast", False, "bf16 false" if b.given("bf16")
               else f"{TF}: bf16 and fp16 default to False (no mixed precision)")
    if not b.has("dtype"):
        if trl:
            b.assume("dtype", "fp32", f"{TRL_TRAINER}:816-822 (a model SFTTrainer loads without "
                     "a dtype in model_init_kwargs is float32)")
        else:
            b.assume("dtype", "bf16", "the checkpoint's dtype (lorasize assumes bf16)")
    attn = b.get("attn_implementation") or kwargs.get("attn_implementation")
    if attn:
        if str(attn) in ATTENTION:
            b.read("attn", ATTENTION[str(attn)], "attn_implementation")
        else:
            b.skip("attn_implementation", f"'{attn}' is not an attention lorasize models")
    if b.get("use_flash_attention_2"):
        b.read("attn", "flash", "use_flash_attention_2")


def _batch(b: RecipeBuilder, trl: bool) -> None:
    for key, option, default, where in (
            ("per_device_train_batch_size", "batch_size", 8, f"{TF}:777"),
            ("gradient_accumulation_steps", "grad_accum", 1, f"{TF}:849"),
            ("num_train_epochs", "epochs", 3.0, f"{TF}:778")):
        if b.given(key):
            b.read(option, type(default)(b.get(key)), key)
        else:
            b.assume(option, default, where)
    # transformers 5 spells it activation_checkpointing (training_args.py:908), the old name
    # still works; either on turns it on
    given = [k for k in ("activation_checkpointing", "gradient_checkpointing") if b.given(k)]
    if given:
        on = any(bool(b.get(k)) for k in given)
        b.read("grad_checkpointing", on, " / ".join(given))
    elif trl:
        b.assume("grad_checkpointing", True, f"{TRL_BASE}:61-66 (gradient_checkpointing "
                 "defaults to True)")
    else:
        b.assume("grad_checkpointing", False, f"{TF}:926")
    length = b.get("max_length") if b.given("max_length") else b.get("max_seq_length")
    if length:
        b.read("seq_len", int(length), "max_length" if b.given("max_length") else "max_seq_length")
    elif trl and not b.given("max_length"):
        b.assume("seq_len", 1024, f"{TRL}:205-206 (max_length=1024)")
    else:
        b.skip("sequence length", "the arguments do not fix it: give --seq-len")
    if b.get("packing"):
        b.note("packing: every sequence is max_length tokens")
    elif trl and not b.get("padding_free"):
        b.note("max_length is a ceiling: without packing, batches pad to their longest sample; "
               "the estimate is the worst case")
        padded(b, f"{TRL_TRAINER}:504-505 (the collator pads each batch's attention_mask "
               "with zeros to its longest sample)")
    liger = b.get("use_liger_kernel") or b.get("use_liger")
    if trl and str(b.get("loss_type", "chunked_nll")) == "chunked_nll" and not liger:
        b.skip("loss_type", "TRL's default chunked_nll (trl@f2cd577 sft_config.py:334-336) computes the output head on non-ignored tokens in "
               "chunks; the estimate counts whole logits (an overestimate of the logits peak)")
    if b.get("activation_offloading"):
        b.skip("activation_offloading", "activations offloaded to the CPU are not modelled")
    if b.get("padding_free"):
        b.note("padding_free: sequences are flattened into one; the estimate keeps batch x length")


def _optimizer(b: RecipeBuilder) -> None:
    read_optimizer(b, "optim", f"{TF}:806-811 (adamw_torch_fused)")


def _kernels(b: RecipeBuilder) -> None:
    # use_liger is the older name of use_liger_kernel
    key = next((k for k in ("use_liger_kernel", "use_liger", "torch_compile") if b.get(k)), None)
    if key:
        b.read("kernels", "fused", key)
    b.get("liger_kernel_config")
    b.get("torch_compile_backend")
    b.get("torch_compile_mode")
    b.get("tf32")


def _sharding(b: RecipeBuilder, folder: Path) -> None:
    """``fsdp`` (a string or list: full_shard / shard_grad_op, offload) and ``deepspeed`` (a
    config path or the config itself)."""
    fsdp = b.get("fsdp")
    words = (fsdp.split() if isinstance(fsdp, str) else list(fsdp or []))
    if words:
        sharding = "fsdp-grad-op" if "shard_grad_op" in words else "fsdp"
        b.read("sharding", sharding, "fsdp")
        if "offload" in words:
            b.read("offload", "params", "fsdp: offload")
        b.note("the number of GPUs is the launch's: give --gpus N for the per-GPU figure")
    b.get("fsdp_config")
    ds = b.get("deepspeed")
    if ds:
        found = (ds, "deepspeed") if isinstance(ds, dict) else json_beside(folder, str(ds))
        if found is None:
            b.skip("deepspeed", f"{ds} is not beside the arguments: give --sharding zero1/2/3")
            return
        sharding, offload = deepspeed_sharding(found[0])
        b.read("sharding", sharding, f"deepspeed ({found[1]})")
        if offload != "none":
            b.read("offload", offload, f"deepspeed ({found[1]})")
        b.note("the number of GPUs is the launch's: give --gpus N for the per-GPU figure")
