"""The lorasize specs of a live model: what a running job actually built, read from the objects.

A callback inside a training run knows more than any recipe: the model's config, the LoRA layers
PEFT inserted, the dtype every weight ended up in, whether the base is quantized and whether
``prepare_model_for_kbit_training`` upcast it. This module reads those into the
:class:`~lorasize.arch.model.ModelSpec`, :class:`~lorasize.arch.lora.LoraSpec` and
:class:`~lorasize.specs.TrainSpec` the estimate takes. It needs torch (the objects are torch's)
but imports it only inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LorasizeError

# torch dtype name -> lorasize dtype name
_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}
# transformers' config._attn_implementation -> --attn
_ATTN = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash",
         "flash_attention_3": "flash", "kernels-community/flash-attn": "flash"}
# PEFT LoraConfig flags that make a LoRA-family variant (the rest is plain LoRA)
_PEFT_TYPES = {"LORA": "lora", "ADALORA": "adalora", "LOHA": "loha", "LOKR": "lokr",
               "VERA": "vera", "IA3": "ia3"}


@dataclass(frozen=True)
class LiveSpecs:
    """The specs of a live run, and what could not be read from it (said, not guessed)."""

    model: object
    lora: object
    train: object
    notes: tuple[str, ...] = ()


def _dtype(dtype) -> str:
    return _DTYPES.get(str(dtype), "fp32")


def _model_name(config) -> str:
    """The Hub id the model was loaded from, or the last part of a local path (a profile is
    meant to be shared: it should not carry a user's folders)."""
    from pathlib import PurePath

    name = str(getattr(config, "_name_or_path", "") or "")
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        name = PurePath(name).name
    return name or config.model_type


def _lora_layers(model) -> list[tuple[str, object]]:
    """(module name, module) of every PEFT LoRA-family layer in the model."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no PEFT: no adapter
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _lora_spec(model, layers):
    from ..arch.lora import LoraSpec

    config = next(iter(getattr(model, "peft_config", {}).values()), None)
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name, _ in layers}))
    peft_type = str(getattr(config, "peft_type", "LORA")).split(".")[-1].upper()
    variant = _PEFT_TYPES.get(peft_type, "lora")
    if variant == "lora" and getattr(config, "use_rslora", False):
        variant = "rslora"
    r = getattr(config, "init_r", None) if variant == "adalora" else getattr(config, "r", None)
    alpha = getattr(config, "lora_alpha", None)
    return LoraSpec(r=int(r or 8), alpha=float(alpha if alpha is not None else 2 * (r or 8)),
                    targets=targets, dropout=float(getattr(config, "lora_dropout", 0.0) or 0.0),
                    dora=bool(getattr(config, "use_dora", False)), variant=variant)


def _quant(model) -> tuple[str, bool]:
    """(quant, double_quant) of the base weights: nf4/fp4/int8 from the quantization config."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    q = getattr(getattr(base, "config", None), "quantization_config", None)
    if q is None:
        return "none", False
    q = q if isinstance(q, dict) else q.to_dict()
    if q.get("load_in_4bit"):
        return str(q.get("bnb_4bit_quant_type", "fp4")).lower(), bool(q.get("bnb_4bit_use_double_quant"))
    if q.get("load_in_8bit"):
        return "int8", False
    raise LorasizeError(f"the model is quantized with {q.get('quant_method', 'an unknown method')}; "
                        f"lorasize models bitsandbytes 4-bit and 8-bit bases", source="model")


def specs_from_model(model, batch_size: int, seq_len: int, optimizer: str = "adamw",
                     grad_accum: int = 1, mixed_precision: bool = True) -> LiveSpecs:
    """The specs of ``model`` (a transformers model, PEFT-wrapped or not) as it is now.

    Args:
        model: the model the run trains.
        batch_size, seq_len: the micro-batch's shape.
        optimizer: a lorasize optimizer name.
        grad_accum: micro-batches per optimizer step.
        mixed_precision: the run computes under autocast (the Trainer's bf16/fp16).

    Raises:
        LorasizeError: an architecture or quantization lorasize cannot model.
    """
    from ..arch.model import ModelSpec
    from ..specs import TrainSpec

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    spec = ModelSpec.from_hf_config(config.to_dict(), name=_model_name(config), source="model.config")
    layers = _lora_layers(model)
    notes = []
    quant, double_quant = _quant(model)
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad and p.dtype.is_floating_point]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if layers:
        lora = _lora_spec(model, layers)
        method = "qlora" if quant != "none" else "lora"
        adapter_dtype = _dtype(trainable[0].dtype) if trainable else None
    else:
        from ..arch.lora import LoraSpec

        lora, method, adapter_dtype = LoraSpec(), "full", None
        if quant != "none":
            raise LorasizeError("a quantized model without an adapter does not train", source="model")
    # the weights' own dtype: the largest floating dtype share among frozen (else all) weights
    weights = frozen or trainable
    dtype = _dtype(max(weights, key=lambda p: p.numel()).dtype) if weights else "bf16"
    # prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32
    kbit_prep = None
    if quant != "none":
        small = [p for p in frozen if p.ndim == 1]
        kbit_prep = bool(small) and all(str(p.dtype) == "torch.float32" for p in small)
        dtype = _dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
                       or "torch.bfloat16")
    # transformers 5 renames is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    checkpointing = bool(getattr(base, "is_activation_checkpointing", None)
                         if hasattr(base, "is_activation_checkpointing")
                         else getattr(base, "is_gradient_checkpointing", False))
    attn = _ATTN.get(str(getattr(config, "_attn_implementation", "sdpa")), "sdpa")
    train = TrainSpec(method=method, quant=quant, double_quant=double_quant, dtype=dtype,
                      optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                      grad_checkpointing=checkpointing, attn=attn, kbit_prep=kbit_prep,
                      stack="hf-peft", adapter_train_dtype=adapter_dtype, grad_accum=grad_accum,
                      autocast=mixed_precision)
    return LiveSpecs(spec, lora, train, tuple(notes))
