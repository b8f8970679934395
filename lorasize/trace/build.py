"""Build the real Hugging Face model with the real PEFT adapter, every tensor fake.

Steps (learned in the trace prototype): build from the config on the meta device; swap the
linears bitsandbytes would quantize for :class:`StandInLinear4bit`; run PEFT's
``prepare_model_for_kbit_training`` when the spec asks for it; wrap with PEFT under
``torch.device("meta")`` (otherwise PEFT materialises adapters in host memory first); then one
``to_empty`` inside ``FakeTensorMode`` turns every parameter and buffer into a fake tensor.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from ..errors import LorasizeError
from ..arch.families import require_shipped_code
from ..arch.lora import LoraSpec, resolve_targets
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from ..memory.quant import computes_in_input_dtype

# bitsandbytes logs a warning at import on CPU-only machines (an optional kernels package);
# lorasize's output stays its own.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ATTN_IMPLEMENTATIONS = {"sdpa": "sdpa", "eager": "eager", "flash": "sdpa"}


@contextlib.contextmanager
def quiet():
    """Silence library chatter (warnings, logs, prints) while building and stepping."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _standin_class():
    import bitsandbytes as bnb

    class StandInLinear4bit(bnb.nn.Linear4bit):
        """``bnb.nn.Linear4bit`` with bitsandbytes' exact storage layout, on any device.

        ``Params4bit`` cannot wrap a fake tensor, so the packed weight is a plain uint8
        parameter made by the real ``quantize_4bit`` and the ``QuantState`` tensors are buffers;
        forward is the real ``bnb.matmul_4bit``. Subclassing ``Linear4bit`` makes PEFT wrap it
        with its bitsandbytes LoRA layer, as it wraps the real one.
        """

        def __init__(self, linear: torch.nn.Linear, compute_dtype, quant_type: str, double_quant: bool):
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = torch.empty(self.out_features, self.in_features, dtype=compute_dtype,
                                 device=linear.weight.device)
            packed, state = bnb.functional.quantize_4bit(
                weight, blocksize=64, compress_statistics=double_quant, quant_type=quant_type,
                quant_storage=torch.uint8)
            self.weight = torch.nn.Parameter(packed, requires_grad=False)
            self.weight.compress_statistics = double_quant
            self.weight.quant_type = quant_type
            self.weight.blocksize = 64
            self.bias = linear.bias
            self.register_buffer("qs_absmax", state.absmax)
            self.register_buffer("qs_code", state.code)
            self._nested = state.state2 is not None
            if self._nested:
                self.register_buffer("qs_state2_absmax", state.state2.absmax)
                self.register_buffer("qs_state2_code", state.state2.code)
                self.register_buffer("qs_offset", state.offset)
            self._meta = dict(shape=state.shape, dtype=state.dtype, quant_type=quant_type,
                              blocksize2=state.state2.blocksize if self._nested else None)
            self.compute_dtype = compute_dtype
            self.compute_type_is_set = True
            self.quant_storage = torch.uint8
            self.support_avx512bf16_for_cpu = False

        def _state(self):
            F = bnb.functional
            nested = None
            if self._nested:
                nested = F.QuantState(absmax=self.qs_state2_absmax, code=self.qs_state2_code,
                                      blocksize=self._meta["blocksize2"], dtype=torch.float32)
            return F.QuantState(absmax=self.qs_absmax, shape=self._meta["shape"], code=self.qs_code,
                                blocksize=64, quant_type=self._meta["quant_type"],
                                dtype=self._meta["dtype"], offset=getattr(self, "qs_offset", None),
                                state2=nested)

        def forward(self, x):
            if not self.compute_type_is_set:  # bitsandbytes before 0.47 (quantize_linears)
                self.set_compute_type(x)
                self.compute_type_is_set = True
            input_dtype = x.dtype
            out = bnb.matmul_4bit(x.to(self.compute_dtype), self.weight, bias=None,
                                  quant_state=self._state())
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
            return out.to(input_dtype)

    return StandInLinear4bit


def _real_linear4bit(linear: torch.nn.Linear, compute_dtype, quant_type: str, double_quant: bool):
    """bitsandbytes' own Linear4bit, quantizing the linear's real weights (CPU tensors)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=double_quant,
                              quant_type=quant_type, quant_storage=torch.uint8)
    layer.weight = bnb.nn.Params4bit(linear.weight.data.to(compute_dtype), requires_grad=False,
                                     quant_type=quant_type, compress_statistics=double_quant,
                                     blocksize=64, module=layer)
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer.to("cpu")


def quantize_linears(model: torch.nn.Module, train: TrainSpec, real_bnb: bool = False,
                     converted_only: bool = False) -> int:
    """Replace what transformers' ``replace_with_bnb_linear`` replaces (``type(m) is nn.Linear``,
    not the head) by 4-bit layers: stand-ins, or bitsandbytes' own with ``real_bnb``. Returns
    how many were replaced."""
    if train.quant_type not in ("nf4", "fp4"):
        raise LorasizeError(f"the trace models 4-bit bases; '{train.quant_type}' is not traced yet",
                            source="--quant")
    standin = _real_linear4bit if real_bnb else _standin_class()
    output = model.get_output_embeddings()
    convert = None
    if converted_only:  # transformers' own rule (lorasize.arch.derive.bnb_converted)
        from ..arch.derive import bnb_converted

        names = bnb_converted(model)
        convert = {id(m) for n, m in model.named_modules() if n in names}
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if convert is not None and id(child) not in convert:
                continue
            if type(child) is torch.nn.Linear and child is not output:
                layer = standin(child, TORCH_DTYPES[train.dtype], train.quant_type,
                                train.double_quant)
                # bitsandbytes before 0.47 set the compute dtype from the first input (fp32 or
                # bf16) whatever it was given: Linear4bit's own set_compute_type runs in forward
                layer.compute_type_is_set = not computes_in_input_dtype(train.bnb_release)
                setattr(parent, name, layer)
                replaced += 1
    model.is_loaded_in_4bit = True
    return replaced


# AdaLoRA's schedule needs a step count; memory does not depend on it (nor on target_r: ranks are
# masked, never shrunk, while training).
ADALORA_TOTAL_STEP = 1000
# The trace's steps fall in AdaLoRA's warm-up (step <= tinit): importance scores are updated (their
# memory is real) but no rank is masked, which would need tensor values (``kthvalue().item()``).
ADALORA_TINIT = 100


def variant_config(variant: str, r: int, alpha: float, modules, **extra):
    """PEFT's config for AdaLoRA, LoHa or LoKr (``--variant``) with PEFT's defaults otherwise;
    ``extra`` goes to the config (e.g. LoKr's ``decompose_factor``)."""
    from peft import AdaLoraConfig, IA3Config, LoHaConfig, LoKrConfig

    if variant == "adalora":
        return AdaLoraConfig(init_r=r, target_r=max(1, r // 2), lora_alpha=alpha,
                             target_modules=modules, total_step=ADALORA_TOTAL_STEP,
                             tinit=ADALORA_TINIT, **extra)
    if variant == "loha":
        return LoHaConfig(r=r, alpha=alpha, target_modules=modules, **extra)
    if variant == "lokr":
        return LoKrConfig(r=r, alpha=alpha, target_modules=modules, **extra)
    if variant == "ia3":  # extra: feedforward_modules
        return IA3Config(target_modules=modules, **extra)
    raise ValueError(variant)


def _peft_config(model: ModelSpec, lora: LoraSpec):
    from peft import LoraConfig, VeraConfig

    targets = resolve_targets(model, lora)
    if lora.targets == ("all",):
        modules, parameters = "all-linear", None
    elif model.card is not None:
        modules, parameters = _card_modules(model, targets)
    else:
        modules = [t.linear.path for t in targets if not t.linear.experts]
        parameters = [t.linear.path for t in targets if t.linear.experts] or None
    if lora.variant == "vera":
        return VeraConfig(r=lora.r, target_modules=modules, vera_dropout=lora.dropout)
    if lora.variant in ("adalora", "loha", "lokr", "ia3"):
        extra = {"lora_dropout": lora.dropout} if lora.variant == "adalora" else {}
        if lora.variant == "ia3":
            extra = {"feedforward_modules": [t.linear.path for t in targets if t.is_feedforward]}
        return variant_config(lora.variant, lora.r, lora.alpha, modules, **extra)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=modules, target_parameters=parameters, use_dora=lora.dora,
                      use_rslora=lora.variant == "rslora")


def _card_modules(model: ModelSpec, targets) -> tuple:
    """PEFT's target_modules (a regular expression over full module paths, so a decoder's
    q_proj does not also pick the vision tower's) and target_parameters for a card model."""
    import re

    from ..arch.layout import copy_layers, module_path

    modules, parameters = [], []
    for target in targets:
        linear = target.linear
        paths = [module_path(model, linear, layer) for layer in copy_layers(linear, target.copies)]
        (parameters if linear.experts else modules).extend(paths)
    pattern = "|".join(re.escape(p) for p in modules) or None
    return (f"^(?:{pattern})$" if pattern else []), (parameters or None)


def build(model: ModelSpec, lora: LoraSpec, train: TrainSpec, fake_mode=None, real_bnb: bool = False,
          reentrant: bool = False, prepare=None):
    """The PEFT-wrapped model, its tensors fake when ``fake_mode`` is given (else real CPU).
    ``prepare`` is called with the wrapped model before any tensor is made (the layer probe
    swaps layers for stubs there)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in model.hf_config.items() if not k.startswith("_")}
    model_type = config.pop("model_type")
    require_shipped_code(model, "build")
    with quiet():
        device = torch.device("meta") if fake_mode is not None else contextlib.nullcontext()
        if model.card is not None:
            # The class the card was derived from (image-text-to-text for a multimodal
            # checkpoint; eager attention where a model has no SDPA path).
            from ..arch.derive import build_meta

            hf_model, _ = build_meta(model.hf_config, model.source or model.name,
                                     attn=ATTN_IMPLEMENTATIONS[train.attn],
                                     meta=fake_mode is not None)
        else:
            from ..memory.activations import runs_attention

            # what transformers runs: a family without an SDPA path falls back to eager
            attn = runs_attention(model, train.attn)
            hf_config = AutoConfig.for_model(model_type, **config)
            with device:
                hf_model = AutoModelForCausalLM.from_config(
                    hf_config, attn_implementation=ATTN_IMPLEMENTATIONS[attn])
        hf_model = hf_model.to(TORCH_DTYPES[train.dtype])
        if train.quantized:
            quantize_linears(hf_model, train, real_bnb, converted_only=model.card is not None)
        if train.upcasts_to_fp32:
            hf_model = prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=False)
        if train.method != "full":
            with device:
                # An explicit adapter dtype: PEFT leaves adapters in the base layer's dtype
                # without autocast; cast them to the one asked for (fp16 on a bf16 base).
                hf_model = get_peft_model(hf_model, _peft_config(model, lora),
                                          autocast_adapter_dtype=train.adapter_train_dtype is None)
            if train.adapter_train_dtype is not None:
                for param in hf_model.parameters():
                    if param.requires_grad:
                        param.data = param.data.to(TORCH_DTYPES[train.adapter_train_dtype])
            if lora.variant == "lora-fa":
                for name, param in hf_model.named_parameters():
                    if "lora_A" in name:
                        param.requires_grad_(False)
            if lora.variant == "adalora":
                # On a real device PEFT's move to the base layer re-wraps ranknum as a trainable
                # Parameter (lorasize.arch.lora.Target.trainable); on meta it is never moved.
                for name, param in hf_model.named_parameters():
                    if ".ranknum." in name:
                        param.requires_grad_(True)
        if train.checkpointing:
            base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            if reentrant:
                base.enable_input_require_grads()  # reentrant checkpoints need an input with grad
        if prepare is not None:
            prepare(hf_model)
        if fake_mode is not None:
            with fake_mode:
                hf_model = hf_model.to_empty(device="cpu")
                # to_empty gives every parameter slot its own storage: tie the embeddings again,
                # as from_pretrained does.
                base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
                base.tie_weights()
    hf_model.train()
    if lora.variant in ("loha", "lokr") and train.method != "full":
        # LyCORIS layers draw ``torch.rand(1) > module_dropout`` in training, a data-dependent
        # branch fake tensors cannot take; with module and rank dropout 0 (PEFT's defaults) the
        # eval-mode path is the same computation.
        for module in hf_model.modules():
            if hasattr(module, "module_dropout") and hasattr(module, "rank_dropout"):
                module.training = False
    return hf_model
