"""The hand-written families, as data: one row per ``model_type`` lorasize reads without torch.

Each row says what the config means where a key is absent (transformers' config-class
defaults, transformers 5.23.0 ``configuration_<type>.py``) and carries the activation traits the
formulas of :mod:`lorasize.memory.activations` read, the same keys an architecture card's layer
kinds carry (:func:`lorasize.arch.derive.kind_traits`), so one set of formulas serves both.
Module structure (paths and shapes) is :mod:`lorasize.arch.layout`'s; every other family is
derived from transformers (docs/architectures.md).

Trait keys beyond a card's (each read from the family's modeling file):

- ``cat_rope``: partial rotary concatenates rotated and pass-through halves, so the attention
  output needs a contiguous copy for the output projection (Phi-3, GPT-NeoX, StableLM);
- ``softmax_in_compute_dtype``: eager attention's softmax runs in the compute dtype, not fp32
  (``FalconAttention``);
- ``parallel_shared_input``: a parallel residual normalises one input twice and saves it once
  (GPT-NeoX with ``use_parallel_residual``);
- ``flash_ops``: with flash-attn installed the model code calls its fused RMSNorm and rotary
  kernels and ``flash_attn_func`` on (batch, seq, heads, dim) tensors (Qwen-1's remote
  ``modeling_qwen.py``); the step time reads it (:func:`lorasize.perf.work.runs_flash_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    """One hand-written ``model_type``.

    Attributes:
        layout: the structure key :mod:`lorasize.arch.layout` builds modules by.
        tie_default: ``tie_word_embeddings`` when the config leaves it out.
        qkv_bias_default: q/k/v biases when the config says nothing.
        norm: ``rms`` or ``layer`` (weight and bias).
        traits: activation traits (see the module docstring).
        remote_code: the checkpoint's own modeling code (``trust_remote_code``), which
            transformers does not ship: lorasize reads the layout, nothing can build the model.
    """

    layout: str
    tie_default: bool
    qkv_bias_default: bool = False
    norm: str = "rms"
    traits: dict[str, Any] = field(default_factory=dict)
    remote_code: str = ""


_GATED = {"mlp": "gated", "act": "silu"}
_PLAIN = {"mlp": "plain", "act": "gelu"}

FAMILY_TABLE: dict[str, Family] = {
    "llama": Family("llama", False, traits=_GATED),
    "mistral": Family("llama", False, traits=_GATED),
    "qwen2": Family("llama", False, qkv_bias_default=True, traits=_GATED),
    "qwen3": Family("qwen3", False, traits=_GATED),
    # Gemma's RMSNorm scales by (1 + w) (its fp32 normalised input is what the multiply saves).
    "gemma": Family("llama", True, traits={**_GATED, "norm_plus_one": True}),
    # Gemma 2 soft-caps its attention logits, which SDPA cannot: transformers 5 has no SDPA path
    # for it (Gemma2PreTrainedModel, _supports_sdpa = False) and runs eager attention by default;
    # transformers 4 ran SDPA without the soft-capping (_supports_sdpa = True in the 4.49.0 and
    # 4.57.0 wheels).
    "gemma2": Family("gemma2", True, traits={**_GATED, "norm_plus_one": True, "softcap": True,
                                             "no_sdpa_since": 5}),
    "mixtral": Family("mixtral", False, traits={"mlp": "moe", "act": "silu"}),
    # GPT-2's and Phi-2's "gelu_new" is Python (NewGELUActivation): it saves four tensors.
    "phi": Family("phi", False, qkv_bias_default=True, norm="layer",
                  traits={"mlp": "plain", "act": "gelu_new"}),
    "phi3": Family("phi3", False, traits={**_GATED, "cat_rope": True}),
    # Qwen-1 (Qwen/Qwen-7B and its sizes; remote code, ``QWenLMHeadModel``): q, k and v in one
    # ``c_attn`` with a bias, an MLP of ``w1 * silu(w2)`` at half the config's intermediate_size.
    "qwen": Family("qwen", False, qkv_bias_default=True, traits={**_GATED, "flash_ops": True},
                   remote_code="Qwen-1 (QWenLMHeadModel, the Hub's modeling_qwen.py)"),
    "stablelm": Family("stablelm", False, norm="layer", traits={**_GATED, "cat_rope": True}),
    "gpt_neox": Family("gpt_neox", False, qkv_bias_default=True, norm="layer",
                       traits={**_PLAIN, "cat_rope": True, "parallel_shared_input": True}),
    "falcon": Family("falcon", True, norm="layer",
                     traits={**_PLAIN, "softmax_in_compute_dtype": True}),
    "gpt2": Family("gpt2", True, qkv_bias_default=True, norm="layer",
                   traits={"mlp": "plain", "act": "gelu_new"}),
}


def require_shipped_code(model, what: str) -> None:
    """Refuse to build a model (a :class:`~lorasize.arch.model.ModelSpec`) whose code only its
    checkpoint carries; a card model's code is transformers' own.

    Raises:
        LorasizeError: its family is a :attr:`Family.remote_code` one (names ``what``).
    """
    family = FAMILY_TABLE.get(model.model_type) if model.card is None else None
    if family is not None and family.remote_code:
        from ..errors import LorasizeError

        raise LorasizeError(f"cannot {what} {model.name}: model_type '{model.model_type}' is "
                            f"{family.remote_code}, whose code transformers does not ship (the "
                            f"estimate reads its layout)")
