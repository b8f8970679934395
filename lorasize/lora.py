"""LoRA adapters: which matrices they adapt, how many parameters they train, which tensors they save.

For a target matrix W of shape (out, in), LoRA adds A (r, in) and B (out, r) and trains only
those (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):

    trainable = r * (in + out)                    per adapted matrix
    DoRA adds a magnitude vector of ``out`` values (Liu et al. 2024, "DoRA", eq. 5).

Stacked expert matrices (a 3-D parameter of E experts, transformers 5 MoE layers) are adapted by
PEFT's ``ParamWrapper`` with A (r*E, in) and B (out, r*E): ``r * E * (in + out)``; PEFT gives the
fused gate/up matrix rank 2r so it equals two separate adapters.

Targets follow PEFT's rules: ``all`` is every linear layer in the blocks and not the output head
(PEFT's ``all-linear``, which alone doubles the fused expert rank); a name selects each module
whose path ends with it; ``lm_head`` is the output head in every family.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Iterable

from .errors import LorasizeError
from .layout import Linear, block_linears, head_linear, module_path
from .model import ModelSpec

TARGET_ALIASES = ("all", "attn", "mlp", "qv")
# LoRA-family methods (PEFT): rsLoRA changes only the scaling (Kalajdzievski 2023); LoRA-FA
# freezes A after its random init (Zhang et al. 2023, peft.optimizers.create_lorafa_optimizer);
# VeRA shares frozen random A and B across layers and trains two scaling vectors per matrix
# (Kopiczko et al. 2024, peft.VeraConfig).
VARIANTS = ("lora", "rslora", "lora-fa", "vera")
_FUSED_QKV = ("query_key_value", "qkv_proj", "c_attn")


@dataclass(frozen=True)
class LoraSpec:
    """What the user asked for.

    Attributes:
        r: rank of each adapter.
        alpha: scaling numerator (``lora_alpha``); does not change memory.
        targets: aliases (``all``, ``attn``, ``mlp``, ``qv``) or module names.
        dropout: ``lora_dropout``; above 0 it saves a dropout mask and a dropped copy of the input.
        dora: weight-decomposed LoRA (magnitude vector per adapted matrix).
        variant: one of :data:`VARIANTS`.
    """

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("qv",)
    dropout: float = 0.0
    dora: bool = False
    variant: str = "lora"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise LorasizeError(f"'{self.variant}' is not one of {', '.join(VARIANTS)}",
                                source="--variant")
        if self.variant == "vera" and self.dora:
            raise LorasizeError("DoRA applies to LoRA adapters, not VeRA", source="--dora")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise LorasizeError(f"rank must be a positive integer, got {self.r!r}", source="--r")
        if not 0.0 <= self.dropout < 1.0:
            raise LorasizeError(f"must be in [0, 1), got {self.dropout}", source="--lora-dropout")
        if not self.targets:
            raise LorasizeError("name at least one target", source="--targets")


@dataclass(frozen=True)
class Target:
    """One adapted matrix kind: the module, how many copies (layers), and its rank."""

    linear: Linear
    copies: int
    rank: int
    variant: str = "lora"

    @property
    def params_per_copy(self) -> int:
        """Trainable parameters of one adapter on one copy of the module."""
        return self.rank * max(self.linear.experts, 1) * (
            self.linear.in_features + self.linear.out_features)

    def tensors(self, dora: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The adapter's tensors on one copy, as PEFT names and shapes them (VeRA's shared
        projections are in :func:`shared_tensors`)."""
        if self.variant == "vera":
            return (("vera_lambda_b", (self.linear.out_features,)), ("vera_lambda_d", (self.rank,)))
        rank = self.rank * max(self.linear.experts, 1)
        shapes = [("lora_A", (rank, self.linear.in_features)),
                  ("lora_B", (self.linear.out_features, rank))]
        if dora:
            shapes.append(("lora_magnitude_vector", (self.linear.out_features,)))
        return tuple(shapes)

    def trainable(self, name: str) -> bool:
        """Whether the tensor called ``name`` trains (LoRA-FA freezes A)."""
        return not (self.variant == "lora-fa" and name == "lora_A")


def split_targets(text: str) -> tuple[str, ...]:
    """Split ``--targets q_proj,v_proj`` into names."""
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def target_names(spec: ModelSpec) -> list[str]:
    """Names a user may pass as targets for this architecture."""
    names = [linear.name for linear in block_linears(spec)] + [head_linear(spec).name]
    return list(dict.fromkeys(names))


def _select(linears: Iterable[Linear], names: Iterable[str]) -> list[Linear]:
    names = list(names)
    return [linear for linear in linears if any(linear.matches(n) for n in names)]


def _layers_matching(spec: ModelSpec, linear: Linear, name: str) -> int:
    """How many layers' copies of ``linear`` a full or partial module path selects."""
    if linear.matches(name):
        return spec.num_layers
    return sum(1 for layer in range(spec.num_layers)
               if _full_path_matches(module_path(spec, linear, layer), name))


def _full_path_matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _expand(spec: ModelSpec, target: str) -> dict[str, tuple[Linear, int]]:
    """Module path -> (linear, copies) selected by one target name or alias."""
    blocks = block_linears(spec)
    everywhere = lambda linears: {m.path: (m, spec.num_layers) for m in linears}  # noqa: E731
    if target == "all":
        return everywhere(blocks)
    if target in ("attn", "mlp"):
        return everywhere(m for m in blocks if m.group == target)
    if target == "qv":
        return everywhere(_select(blocks, _FUSED_QKV) or _select(blocks, ("q_proj", "v_proj")))
    head = head_linear(spec)
    if target in ("lm_head", "output") or _full_path_matches(head.path, target):
        return {head.path: (head, 1)}
    selected = {}
    for linear in blocks:
        copies = _layers_matching(spec, linear, target)
        if copies:
            selected[linear.path] = (linear, copies)
    if not selected:
        valid = target_names(spec)
        close = difflib.get_close_matches(target, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LorasizeError(
            f"'{target}' is not a module of {spec.name} ({spec.model_type}); valid names: "
            f"{', '.join(valid)} or {', '.join(TARGET_ALIASES)}{hint}", source="--targets")
    return selected


def resolve_targets(spec: ModelSpec, lora: LoraSpec) -> tuple[Target, ...]:
    """The matrices the adapter covers, with their rank and number of copies.

    Raises:
        LorasizeError: a target name the architecture lacks, or ``r`` larger than a target's
            smaller dimension (the update could not be low-rank).
    """
    chosen: dict[str, tuple[Linear, int]] = {}
    for name in lora.targets:
        for path, (linear, copies) in _expand(spec, name.strip()).items():
            # Several full paths (one per layer) add up; an alias covers every layer.
            previous = chosen.get(path, (linear, 0))[1]
            chosen[path] = (linear, min(previous + copies, spec.num_layers)
                            if linear.path != head_linear(spec).path else 1)
    # PEFT's all-linear gives fused expert gate/up matrices rank 2r; named targets keep r.
    all_linear = "all" in lora.targets
    targets = []
    for linear, copies in chosen.values():
        rank = lora.r * (linear.rank_multiplier if all_linear else 1)
        is_router = spec.num_experts and linear.out_features == spec.num_experts
        if lora.r > min(linear.in_features, linear.out_features) and not is_router:
            raise LorasizeError(
                f"r={lora.r} is larger than the smaller dimension of {linear.name} "
                f"({linear.in_features} x {linear.out_features}); LoRA needs r below it",
                source="--r")
        targets.append(Target(linear, copies, rank, lora.variant))
    return tuple(targets)


def trainable_params(targets: Iterable[Target], dora: bool = False) -> int:
    """Trainable parameters of the adapter across all copies."""
    total = 0
    for target in targets:
        for name, shape in target.tensors(dora):
            if target.trainable(name):
                total += math.prod(shape) * target.copies
    return total


def shared_tensors(targets: Iterable[Target]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Frozen tensors shared by every adapted matrix: VeRA's random projections, sized for the
    largest input and output (peft/tuners/vera/model.py ``_init_vera_A_vera_B``)."""
    targets = [t for t in targets if t.variant == "vera"]
    if not targets:
        return ()
    rank = targets[0].rank
    largest_in = max(t.linear.in_features for t in targets)
    largest_out = max(t.linear.out_features for t in targets)
    return (("vera_A", (rank, largest_in)), ("vera_B", (largest_out, rank)))


def adapter_tensors(targets: Iterable[Target], dora: bool = False) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a saved adapter, one entry per tensor."""
    shapes = []
    for target in targets:
        for _, shape in target.tensors(dora):
            shapes.extend([shape] * target.copies)
    return shapes
