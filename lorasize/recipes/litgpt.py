"""litgpt ``config_hub/finetune`` recipes (``litgpt finetune_lora`` / ``finetune_full`` YAML).

Defaults where a recipe is silent are ``setup()``'s, at Lightning-AI/litgpt@2685705 (2026-06-29;
cited as ``L path:line``, with Lightning Fabric ``PL`` @7f0c343); the evidence, line by line, is
``tests/data/recipes/litgpt/defaults.md``. litgpt trains its own ``GPT`` without PEFT:
``--stack litgpt`` models its layout (fused qkv adapters, quantized and untied head, 128-token
head chunks).
"""

from __future__ import annotations

from .optimizers import optimizer_of
from .recipe import Recipe, RecipeBuilder, model_modules

SRC = "litgpt@2685705"
# setup() defaults (L litgpt/finetune/lora.py:52-78; full.py:44-67)
DEFAULT_PRECISION = "bf16-mixed"  # precision=None -> get_default_supported_precision (utils.py:363-380)
LORA_DEFAULTS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}  # lora.py:56-58
# lora_query/key/value/projection/mlp/head (lora.py:59-64) and the Hugging Face modules each
# adapts (litgpt's qkv is one fused linear with a per-part adapter; L litgpt/lora.py:535-593)
TARGET_SWITCHES = (("lora_query", True, ("q_proj",)), ("lora_key", False, ("k_proj",)),
                   ("lora_value", True, ("v_proj",)), ("lora_projection", False, ("o_proj",)),
                   ("lora_mlp", False, ("gate_proj", "up_proj", "down_proj")),
                   ("lora_head", False, ("lm_head",)))
TRAIN_DEFAULTS = {"global_batch_size": 16, "micro_batch_size": 1, "epochs": 5}  # lora.py:66-75
# precision -> (dtype, autocast): *-true is Fabric's HalfPrecision (weights, adapters and their
# optimizer state in that dtype, no autocast); *-mixed is autocast over fp32 weights.
PRECISIONS = {"bf16-true": ("bf16", False), "16-true": ("fp16", False), "32-true": ("fp32", False),
              "bf16-mixed": ("fp32", True), "16-mixed": ("fp32", True),
              "transformer-engine": ("bf16", True)}
QUANTIZE = {"bnb.nf4": ("nf4", False), "bnb.nf4-dq": ("nf4", True), "bnb.fp4": ("fp4", False),
            "bnb.fp4-dq": ("fp4", True), "bnb.int8-training": ("int8", False)}


# Keys that do not change the memory or time of a training step.
INERT = frozenset("""out_dir data eval logger_name seed resume access_token num_nodes devices
initial_checkpoint_dir""".split())


def _hub_id(checkpoint_dir: str) -> str:
    """``checkpoints/<org>/<name>`` is where ``litgpt download <org>/<name>`` writes
    (L litgpt/utils.py:698-716)."""
    text = str(checkpoint_dir).strip().rstrip("/")
    return text[len("checkpoints/"):] if text.startswith("checkpoints/") else text


def read(data: dict, path: str) -> Recipe:
    """Read a litgpt finetune recipe."""
    b = RecipeBuilder(path, "litgpt", data)
    b.read("stack", "litgpt", "litgpt recipe")
    b.read("model", _hub_id(b.get("checkpoint_dir")), "checkpoint_dir")
    lora = any(str(k).startswith("lora_") for k in data)
    full_src = "finetune_full" if not lora else "finetune_lora"
    train = b.get("train", {})

    precision = b.get("precision")
    key = "precision" if precision else f"{SRC} {full_src} setup(): precision=None -> bf16-mixed"
    precision = str(precision or DEFAULT_PRECISION)
    if precision not in PRECISIONS:
        b.skip("precision", f"'{precision}' is not a precision lorasize models; bf16 assumed")
        precision = "bf16-true"
    dtype, autocast = PRECISIONS[precision]
    b.read("dtype", dtype, key) if data.get("precision") else b.assume("dtype", dtype, key)
    b.read("autocast", autocast, key) if data.get("precision") else b.assume("autocast", autocast, key)
    if precision.endswith("-mixed"):
        b.note(f"{precision}: fp32 weights under autocast; estimated with --dtype fp32, whose "
               f"activations are counted in fp32 (an overestimate)")

    quantize = b.get("quantize")
    if lora:
        if quantize:
            if quantize not in QUANTIZE:
                b.skip("quantize", f"'{quantize}' is not a bitsandbytes mode lorasize models")
            else:
                quant, double = QUANTIZE[quantize]
                b.read("method", "qlora", "quantize")
                b.read("quant", quant, "quantize")
                b.read("double_quant", double, "quantize")
                if precision.endswith("-mixed"):
                    b.note("litgpt refuses quantize with a mixed precision (\"Quantization and "
                           "mixed precision is not supported\", L litgpt/finetune/lora.py:140-150)")
                b.skip("quantize", "litgpt swaps the token embedding for bitsandbytes' "
                       "StableEmbedding after building the optimizer (L litgpt/finetune/"
                       "lora.py:218-229): a trainable vocab x hidden weight outside the "
                       "optimizer keeps its gradient, and the old embedding stays referenced "
                       "(about 2 x vocab x hidden x 2 bytes more)")
        else:
            b.read("method", "lora", "lora_* keys (finetune_lora)")
        b.assume("kbit_prep", False, f"{SRC}: no PEFT, so no prepare_model_for_kbit_training")
        b.assume("adapter_train_dtype", dtype if not autocast else "fp32",
                 f"{SRC}: the adapters are created with the model, in its precision")
        for name, default in LORA_DEFAULTS.items():
            option = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "lora_dropout"}[name]
            if b.given(name):
                b.read(option, b.get(name), name)
            else:
                b.assume(option, default, f"{SRC} finetune_lora setup() {name}={default}")
        roles = [m for name, default, modules in TARGET_SWITCHES if b.get(name, default)
                 for m in modules]
        targets, fused = model_modules(b.settings["model"].value, roles, parts=True)
        b.read("targets", ",".join(targets), "lora_query/key/value/projection/mlp/head")
        if fused:
            b.note("litgpt adapts the parts of the model's fused projections apart (one rank-r "
                   "adapter per enabled q, k, v and per fc_1 / fc_2, L litgpt/lora.py:232-244, "
                   "615-643): --stack litgpt reads the part names so")
    else:
        b.read("method", "full", "no lora_* keys (finetune_full)")

    # optimizer: with quantize litgpt always builds bitsandbytes PagedAdamW (32-bit)
    # (L litgpt/utils.py:619-633, lora.py:218-219)
    if lora and quantize in QUANTIZE:
        b.read("optimizer", "paged-adamw", "quantize (litgpt replaces the optimizer with "
                                           "bitsandbytes PagedAdamW, L litgpt/utils.py:619-633)")
    else:
        _optimizer(b, b.get("optimizer"))

    gpus = _gpus(b)
    micro = train.get("micro_batch_size") or TRAIN_DEFAULTS["micro_batch_size"]
    global_batch = train.get("global_batch_size") or TRAIN_DEFAULTS["global_batch_size"]
    for name in ("micro_batch_size", "global_batch_size"):
        if not train.get(name):
            b.note(f"train.{name} not set: {SRC} setup() default {TRAIN_DEFAULTS[name]}")
    b.read("batch_size", int(micro), "train.micro_batch_size")
    # gradient_accumulation_iters = global // (devices * nodes) // micro (L litgpt/args.py:56-66)
    accum = max(1, int(global_batch) // gpus // int(micro))
    b.read("grad_accum", accum, "train.global_batch_size / (devices x num_nodes) / micro_batch_size")
    seq = train.get("max_seq_length")
    if seq:
        b.read("seq_len", int(seq), "train.max_seq_length")
        b.note("train.max_seq_length is a ceiling: litgpt pads each batch to its longest sample "
               "(no packing, L litgpt/data/base.py:122-136); the estimate is the worst case")
    else:
        b.skip("train.max_seq_length", "not set: the longest sample of the data sets the length; "
               "give --seq-len")
    epochs = train.get("epochs") if train.get("epochs") is not None else (
        None if train.get("max_steps") else TRAIN_DEFAULTS["epochs"])
    if epochs is not None:
        b.read("epochs", float(epochs), "train.epochs") if train.get("epochs") is not None else \
            b.assume("epochs", float(epochs), f"{SRC} setup() epochs=5")
    if gpus > 1:
        # LoRA: ModelParallelStrategy with FSDP2 and every Block checkpointed
        # (L litgpt/finetune/lora.py:158-162,522-543); full: FSDPStrategy FULL_SHARD with
        # activation_checkpointing_policy={Block} (L litgpt/finetune/full.py:107-116)
        b.read("sharding", "fsdp", "devices x num_nodes > 1 (litgpt shards with FSDP)")
        b.read("grad_checkpointing", True, "devices x num_nodes > 1 (litgpt checkpoints every "
                                           "Block under FSDP)")
    else:
        b.assume("grad_checkpointing", False, f"{SRC}: one device, no activation checkpointing")
    b.get("optimizer")
    return b.build(INERT)


def _optimizer(b: RecipeBuilder, value) -> None:
    """``optimizer``: a torch.optim name, a dotted path, or class_path + init_args
    (L litgpt/utils.py:636-668); default "AdamW" (lora.py:78)."""
    if value is None:
        b.assume("optimizer", "adamw", f"{SRC} setup() optimizer='AdamW'")
        return
    name = value.get("class_path") if isinstance(value, dict) else value
    found = optimizer_of(str(name))
    if found is None:
        b.skip("optimizer", f"{name} is not an optimizer lorasize models; adamw assumed")
        b.assume("optimizer", "adamw", "lorasize default")
    else:
        b.read("optimizer", found, "optimizer" + (".class_path" if isinstance(value, dict) else ""))


def _gpus(b: RecipeBuilder) -> int:
    devices, nodes = b.get("devices", 1), b.get("num_nodes", 1)
    if not isinstance(devices, int) or devices < 1:
        b.skip("devices", f"'{devices}' means every visible GPU; give --gpus (1 assumed)")
        return 1
    gpus = devices * int(nodes)
    if gpus > 1:
        b.read("gpus", gpus, "devices x num_nodes")
    return gpus
