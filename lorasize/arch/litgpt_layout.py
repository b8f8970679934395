"""litgpt's own LoRA layout: where its adapters differ from PEFT's on Hugging Face's modules.

litgpt builds its own model (``litgpt/lora.py`` at 2685705, litgpt 0.5.13), not transformers',
and puts LoRA on it module by module. Where Hugging Face keeps q, k and v (or gate and up) as
separate linears, the two layouts hold the same adapter parameters; they part where Hugging Face
fuses what litgpt adapts part by part, and around mixtures of experts:

- ``LoRAQKVLinear`` (``attn.qkv``): one A of ``(r * enabled, n_embd)`` -- an r-row block per
  enabled q, k, v -- and one B of ``(enabled rows, r)`` (lora.py:232-244). On a model Hugging Face
  fuses (Phi-3's ``qkv_proj``, GPT-NeoX's and Falcon's ``query_key_value``) that is one rank-r
  adapter per part, where PEFT puts one rank-r adapter on the fused matrix.
- ``LLaMAMLP`` / ``GemmaMLP`` build ``fc_1``, ``fc_2`` and ``proj`` as separate ``LoRALinear``
  (lora.py:615-643): Phi-3's fused ``gate_up_proj`` is two rank-r adapters in litgpt.
- ``LLaMAMoE`` (lora.py:646-652): under ``lora_mlp`` the router ``gate`` is a ``LoRALinear`` too,
  and each expert's ``fc_1``, ``fc_2`` and ``proj`` has its own rank-r adapter (PEFT's all-linear
  gives the fused expert gate/up rank 2r instead; a named target keeps r on the fused matrix).
- Only ``lora_*`` parameters train (``mark_only_lora_as_trainable``, bias ``"none"``, lora.py:431).

So under ``--stack litgpt`` the names ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj`` and
``up_proj`` select those parts of a fused module, as litgpt's ``lora_query`` / ``lora_key`` /
``lora_value`` / ``lora_mlp`` switches do. Checked against litgpt's own count, built on the meta
device (``tests/data/litgpt_counts.json``, ``scripts/litgpt_counts.py``).
"""

from __future__ import annotations

from dataclasses import replace

from .layout import Linear, block_linears

# Hugging Face's fused projections and the parts litgpt adapts separately, in their row order.
FUSED_QKV = ("query_key_value", "qkv_proj", "c_attn")
FUSED_GATE_UP = ("gate_up_proj",)
QKV_PARTS = ("q_proj", "k_proj", "v_proj")
GATE_UP_PARTS = ("gate_proj", "up_proj")


def split_linear(spec, linear: Linear, parts: tuple[str, ...]) -> tuple[Linear, ...]:
    """The parts of a fused linear as litgpt holds them, each a linear of its own."""
    if linear.name in FUSED_QKV:
        widths = dict(zip(QKV_PARTS, (spec.q_dim, spec.kv_dim, spec.kv_dim)))
    else:
        widths = dict.fromkeys(GATE_UP_PARTS, linear.out_features // 2)
    return tuple(replace(linear, path=f"{linear.path}.{part}", out_features=widths[part],
                         rank_multiplier=1) for part in parts)


def is_part(linear: Linear) -> bool:
    """Whether ``linear`` is a part :func:`split_linear` made (``self_attn.qkv_proj.q_proj``)."""
    parent = linear.path.rsplit(".", 1)[0] if "." in linear.path else ""
    return parent.rsplit(".", 1)[-1] in FUSED_QKV + FUSED_GATE_UP


def adapter_modules(targets) -> int:
    """Adapter modules across the model's copies: the q, k and v parts of one fused projection
    are one litgpt module (``LoRAQKVLinear``: one stacked A, one B), launching its kernels once;
    gate and up are two (``fc_1``, ``fc_2``)."""
    seen, total = set(), 0
    for target in targets:
        linear = target.linear
        if linear.prefix:
            continue
        key = linear.path.rsplit(".", 1)[0] if is_part(linear) and linear.name in QKV_PARTS \
            else linear.path
        if key not in seen:
            seen.add(key)
            total += target.copies
    return total


def fused_part(spec, name: str) -> tuple[Linear, str] | None:
    """``(fused linear, part)`` when ``name`` is a part (``q_proj``, ``gate_proj``...) that this
    model holds only inside a fused linear; None otherwise."""
    linears = block_linears(spec)
    if any(linear.name == name for linear in linears):
        return None
    holders = FUSED_QKV if name in QKV_PARTS else FUSED_GATE_UP if name in GATE_UP_PARTS else ()
    found = [linear for linear in linears if linear.name in holders]
    return (found[0], name) if len(found) == 1 else None


def litgpt_targets(spec, targets, lora) -> tuple:
    """Targets resolved on Hugging Face's modules, turned into litgpt's: fused matrices split into
    their adapted parts, and a mixture of experts' router adapted with its experts."""
    from .lora import Target

    out = []
    for target in targets:
        linear = target.linear
        if linear.name in FUSED_QKV + FUSED_GATE_UP and not is_part(linear):
            parts = QKV_PARTS if linear.name in FUSED_QKV else GATE_UP_PARTS
            out += [Target(part, target.copies, lora.r, target.variant)
                    for part in split_linear(spec, linear, parts)]
        else:
            out.append(target)
    routers = [linear for linear in block_linears(spec)
               if spec.num_experts and linear.out_features == spec.num_experts
               and not linear.experts and linear.group == "mlp"]
    has_experts = any(t.linear.experts for t in out)
    for router in routers:
        if has_experts and all(t.linear.path != router.path for t in out):
            # LLaMAMoE: self.gate = LoRALinear(..., r=(config.lora_r if config.lora_mlp else 0))
            count = max(t.copies for t in out if t.linear.experts)
            out.append(Target(router, count, lora.r, lora.variant))
    return tuple(out)
