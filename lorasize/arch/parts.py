"""Frameworks that adapt the parts of a fused module apart: litgpt's and torchtune's layouts.

litgpt and torchtune build their own models, not transformers', and put LoRA on them module by
module. Where Hugging Face keeps q, k and v (or gate and up) as separate linears, their adapters
and PEFT's hold the same parameters; they part where Hugging Face fuses what these frameworks
adapt part by part, and (litgpt) around mixtures of experts:

- litgpt ``LoRAQKVLinear`` (``attn.qkv``, litgpt@2685705 ``litgpt/lora.py``:232-244): one A of
  ``(r * enabled, n_embd)`` -- an r-row block per enabled q, k, v -- and one B of
  ``(enabled rows, r)``: one rank-r adapter per part, in one module. ``LLaMAMLP`` / ``GemmaMLP``
  build ``fc_1``, ``fc_2`` and ``proj`` as separate ``LoRALinear`` (lora.py:615-643).
  ``LLaMAMoE`` (lora.py:646-652): under ``lora_mlp`` the router ``gate`` is a ``LoRALinear``
  too, and each expert's ``fc_1``, ``fc_2`` and ``proj`` has its own rank-r adapter (PEFT's
  all-linear gives the fused expert gate/up rank 2r instead). Only ``lora_*`` parameters train
  (``mark_only_lora_as_trainable``, bias ``"none"``, lora.py:431).
- torchtune's Phi-3 (pytorch/torchtune@bd2a0fc ``torchtune/models/phi3/_component_builders.py``
  311-430, the checkpoint split by ``_convert_weights.py``): separate ``q_proj``, ``k_proj``,
  ``v_proj`` and ``w1`` / ``w3`` modules, each with its own ``LoRALinear``.

So on Phi-3 (``qkv_proj``, ``gate_up_proj``), GPT-NeoX, StableLM and Falcon
(``query_key_value``) each part gets its own adapter under these stacks, and the names
``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj`` (and ``qv``) select parts, as
litgpt's ``lora_query`` / ``lora_key`` / ``lora_value`` / ``lora_mlp`` switches and torchtune's
``lora_attn_modules`` do. litgpt's counts are checked against litgpt's own code on the meta
device (``tests/data/litgpt/lora_counts.json``, ``scripts/litgpt_counts.py``).
"""

from __future__ import annotations

from dataclasses import replace

from .layout import Linear, block_linears, copies, is_router

# Stacks that adapt the parts of a fused module apart.
PART_STACKS = ("litgpt", "torchtune")
# Hugging Face's fused projections and the parts these stacks adapt separately, in row order.
FUSED_QKV = ("query_key_value", "qkv_proj", "c_attn")
FUSED_GATE_UP = ("gate_up_proj",)
QKV_PARTS = ("q_proj", "k_proj", "v_proj")
GATE_UP_PARTS = ("gate_proj", "up_proj")


def split_linear(spec, linear: Linear, parts: tuple[str, ...]) -> tuple[Linear, ...]:
    """The parts of a fused linear, each a linear of its own (``self_attn.qkv_proj.q_proj``)."""
    if linear.name in FUSED_QKV:
        widths = dict(zip(QKV_PARTS, (spec.q_dim, spec.kv_dim, spec.kv_dim)))
    else:
        widths = dict.fromkeys(GATE_UP_PARTS, linear.out_features // 2)
    return tuple(replace(linear, path=f"{linear.path}.{part}", out_features=widths[part],
                         rank_multiplier=1) for part in parts)


def is_part(linear: Linear) -> bool:
    """Whether ``linear`` is a part :func:`split_linear` made."""
    parent = linear.path.rsplit(".", 1)[0] if "." in linear.path else ""
    return parent.rsplit(".", 1)[-1] in FUSED_QKV + FUSED_GATE_UP


def base_path(linear: Linear) -> str:
    """The path of the model's own module that holds ``linear`` (a part's fused module)."""
    return linear.path.rsplit(".", 1)[0] if is_part(linear) else linear.path


def fused_part(spec, name: str) -> tuple[Linear, str] | None:
    """``(fused linear, part)`` when ``name`` is a part (``q_proj``, ``gate_proj``...) that this
    model holds only inside a fused linear; None otherwise."""
    linears = block_linears(spec)
    if any(linear.name == name for linear in linears):
        return None
    holders = FUSED_QKV if name in QKV_PARTS else FUSED_GATE_UP if name in GATE_UP_PARTS else ()
    found = [linear for linear in linears if linear.name in holders]
    return (found[0], name) if len(found) == 1 else None


def part_targets(spec, lora, stack: str, resolve) -> tuple:
    """The adapted matrices on ``stack``'s modules: part names select parts of a fused linear,
    a fused linear named whole is all its parts, and (litgpt) a mixture of experts' router is
    adapted with its experts. ``resolve`` resolves names on Hugging Face's modules."""
    from .lora import Target

    wanted = [n.strip() for n in lora.targets]
    if "qv" in wanted and fused_part(spec, "q_proj") is not None:
        wanted = [m for n in wanted for m in (("q_proj", "v_proj") if n == "qv" else (n,))]
    chosen: dict[str, tuple[Linear, list[str]]] = {}
    names = []
    for name in wanted:
        found = fused_part(spec, name)
        if found is None:
            names.append(name)
        else:
            chosen.setdefault(found[0].path, (found[0], []))[1].append(found[1])
    targets = []
    for target in resolve(replace(lora, targets=tuple(names))) if names else ():
        linear = target.linear
        if linear.name in FUSED_QKV + FUSED_GATE_UP and not is_part(linear):
            parts = QKV_PARTS if linear.name in FUSED_QKV else GATE_UP_PARTS
            targets += [Target(part, target.copies, lora.r, target.variant)
                        for part in split_linear(spec, linear, parts)]
        else:
            targets.append(target)
    taken = {t.linear.path for t in targets}
    for fused, parts in chosen.values():
        targets += [Target(part, copies(spec, fused), lora.r, lora.variant)
                    for part in split_linear(spec, fused, tuple(parts)) if part.path not in taken]
    if stack == "litgpt":
        targets += _routers(spec, targets, lora)
    return tuple(targets)


def _routers(spec, targets: list, lora) -> list:
    """litgpt ``LLaMAMoE``: ``self.gate = LoRALinear(..., r=(config.lora_r if config.lora_mlp
    else 0))``: the router is adapted whenever the experts are."""
    from .lora import Target

    experts = [t for t in targets if t.linear.experts]
    if not experts:
        return []
    return [Target(linear, max(t.copies for t in experts), lora.r, lora.variant)
            for linear in block_linears(spec)
            if is_router(spec, linear) and all(t.linear.path != linear.path for t in targets)]


def adapter_modules(targets, stack: str) -> int:
    """Adapter modules across the model's copies. litgpt fuses q, k and v into one projection
    for every architecture (``CausalSelfAttention.attn``), whose adapters are one module
    (``LoRAQKVLinear``: one stacked A, one B) launching its kernels once; every other adapter
    is a module of its own."""
    seen, total = set(), 0
    for target in targets:
        linear = target.linear
        if linear.prefix:
            continue
        key = (base_path(linear).rsplit(".", 1)[0] + ".attn"
               if stack == "litgpt" and linear.name in QKV_PARTS else linear.path)
        if key not in seen:
            seen.add(key)
            total += target.copies
    return total
