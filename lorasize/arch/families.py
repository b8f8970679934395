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
  (GPT-NeoX with ``use_parallel_residual``).
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
    """

    layout: str
    tie_default: bool
    qkv_bias_default: bool = False
    norm: str = "rms"
    traits: dict[str, Any] = field(default_factory=dict)


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
    "stablelm": Family("stablelm", False, norm="layer", traits={**_GATED, "cat_rope": True}),
    "gpt_neox": Family("gpt_neox", False, qkv_bias_default=True, norm="layer",
                       traits={**_PLAIN, "cat_rope": True, "parallel_shared_input": True}),
    "falcon": Family("falcon", True, norm="layer",
                     traits={**_PLAIN, "softmax_in_compute_dtype": True}),
    "gpt2": Family("gpt2", True, qkv_bias_default=True, norm="layer",
                   traits={"mlp": "plain", "act": "gelu_new"}),
}
