"""LoRA adapters: which matrices they adapt, how many parameters they train, which tensors they save.

For a target matrix W of shape (out, in), LoRA adds A (r, in) and B (out, r) and trains only
those (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):

    trainable = r * (in + out)                    per adapted matrix
    DoRA adds a magnitude vector of ``out`` values (Liu et al. 2024, "DoRA", eq. 5).

Stacked expert matrices (a 3-D parameter of E experts, transformers 5 MoE layers) are adapted by
PEFT's ``ParamWrapper`` with A (r*E, in) and B (out, r*E): ``r * E * (in + out)``; PEFT gives the
fused gate/up matrix rank 2r so it equals two separate adapters.

Other LoRA-family methods PEFT implements, per adapted matrix W (out, in) and rank r:

- LoRA+ (Hayou et al. 2024, ``peft.optimizers.create_loraplus_optimizer``): LoRA with a larger
  learning rate for B; the same tensors and state.
- AdaLoRA (Zhang et al. 2023, ``peft.AdaLoraConfig``): ``P Lambda Q`` with lora_A (r, in),
  lora_E (r, 1), lora_B (out, r) and a ``ranknum`` scalar (not saved); ``r`` is ``init_r``:
  the budget schedule masks singular values of E to zero but never shrinks a tensor while
  training, so memory follows ``init_r`` whatever ``target_r`` is.
  ``trainable = r * (in + out + 1) + 1`` on a GPU (see :meth:`Target.trainable`).
- LoHa (Hyeon-Woo et al. 2022, ``peft.LoHaConfig``): ``(w1_a w1_b) * (w2_a w2_b)`` (Hadamard
  product), hada_w1_a / hada_w2_a (out, r), hada_w1_b / hada_w2_b (r, in):
  ``trainable = 2 r (in + out)``.
- IA3 (Liu et al. 2022, ``peft.IA3Config``): one learned vector per matrix, ``ia3_l`` of shape
  (1, in) on a feed-forward module (it scales the input), (out, 1) on any other (it scales the
  output); ``r`` does not apply.
- LoKr (Yeh et al. 2024, ``peft.LoKrConfig``): ``kron(w1, w2)`` with out = a*b, in = c*d
  factored by ``factorization`` (LyCORIS, copied by PEFT); w1 (a, c) is full unless
  ``decompose_both`` and ``r < max(a, c) / 2``, w2 (b, d) is full unless ``r < max(b, d) / 2``,
  then each becomes a (x, r) and (r, y) pair.

LoHa and LoKr build the whole delta weight ``dW`` (out x in, the adapter dtype) on every forward
and call ``F.linear(x, dW)``: a weight-sized tensor per adapted matrix, saved for backward when x
requires grad (see :func:`input_grad_saved_bytes`).

Targets follow PEFT's rules: ``all`` is every linear layer in the blocks and not the output head
(PEFT's ``all-linear``, which alone doubles the fused expert rank); a name selects each module
whose path ends with it; ``lm_head`` is the output head in every family.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Iterable

from ..errors import LorasizeError
from .layout import (Linear, block_linears, copies, extra_linears, head_linear, is_router,
                     module_path)
from .model import ModelSpec
from .parts import FUSED_QKV, PART_STACKS, part_targets

TARGET_ALIASES = ("all", "attn", "mlp", "qv")
# LoRA-family methods (PEFT): rsLoRA changes only the scaling (Kalajdzievski 2023); LoRA-FA
# freezes A after its random init (Zhang et al. 2023, peft.optimizers.create_lorafa_optimizer);
# VeRA shares frozen random A and B across layers and trains two scaling vectors per matrix
# (Kopiczko et al. 2024, peft.VeraConfig).
# LoRA+, AdaLoRA, LoHa and LoKr: see the module docstring.
VARIANTS = ("lora", "rslora", "lora-fa", "vera", "loraplus", "adalora", "loha", "lokr", "ia3")
# Variants whose tensors are LoRA's A and B (DoRA's magnitude may be added).
_LORA_LIKE = ("lora", "rslora", "lora-fa", "loraplus")
# Variants that materialise the whole delta weight each forward (PEFT's LyCORIS layers).
DELTA_WEIGHT_VARIANTS = ("loha", "lokr")
# LoKrConfig defaults (peft/tuners/lokr/config.py): search factors near the square root, keep w1
# a full matrix.
LOKR_DECOMPOSE_FACTOR = -1
LOKR_DECOMPOSE_BOTH = False


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
        if self.dora and self.variant not in _LORA_LIKE:
            raise LorasizeError(f"DoRA applies to LoRA adapters, not {self.variant}", source="--dora")
        if self.dropout and self.variant in (*DELTA_WEIGHT_VARIANTS, "ia3"):
            raise LorasizeError(f"{self.variant} has rank and module dropout, not lora_dropout on "
                                "the input; use 0", source="--lora-dropout")
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
        return sum(math.prod(shape) for name, shape in self.tensors(False) if self.trainable(name))

    def tensors(self, dora: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The adapter's tensors on one copy, as PEFT names and shapes them (VeRA's shared
        projections are in :func:`shared_tensors`)."""
        out_f, in_f, r = self.linear.out_features, self.linear.in_features, self.rank
        if self.variant == "vera":
            return (("vera_lambda_b", (out_f,)), ("vera_lambda_d", (r,)))
        if self.variant == "adalora":
            return (("lora_A", (r, in_f)), ("lora_E", (r, 1)), ("lora_B", (out_f, r)),
                    ("ranknum", (1,)))
        if self.variant == "loha":
            return (("hada_w1_a", (out_f, r)), ("hada_w1_b", (r, in_f)),
                    ("hada_w2_a", (out_f, r)), ("hada_w2_b", (r, in_f)))
        if self.variant == "lokr":
            return lokr_tensors(in_f, out_f, r)
        if self.variant == "ia3":
            return (("ia3_l", (1, in_f) if self.is_feedforward else (out_f, 1)),)
        rank = self.rank * max(self.linear.experts, 1)
        shapes = [("lora_A", (rank, self.linear.in_features)),
                  ("lora_B", (self.linear.out_features, rank))]
        if dora:
            shapes.append(("lora_magnitude_vector", (self.linear.out_features,)))
        return tuple(shapes)

    def trainable(self, name: str) -> bool:
        """Whether the tensor called ``name`` trains (LoRA-FA freezes A).

        AdaLoRA creates ``ranknum`` frozen on the CPU, but PEFT then moves it to the base
        layer's device and dtype by assigning ``ranknum.to(...)`` into an ``nn.ParameterDict``,
        which wraps the new tensor as a Parameter with ``requires_grad=True``
        (peft/tuners/tuners_utils.py ``_move_adapter_to_device_of_base_layer``): on a GPU base it
        trains, gets a gradient and optimizer state (on the meta device nothing moves and PEFT
        reports it frozen)."""
        return not (self.variant == "lora-fa" and name == "lora_A")

    @property
    def is_feedforward(self) -> bool:
        """IA3 scales a feed-forward module's input, any other module's output: lorasize passes
        the MLP's output projections as PEFT's ``feedforward_modules`` (as PEFT's own defaults
        do, e.g. ``down_proj`` for Llama)."""
        return self.linear.group == "mlp" and self.linear.path.endswith(_OUTPUT_PROJECTIONS)

    def saved_key(self, name: str) -> str | None:
        """The key suffix ``save_pretrained`` writes for tensor ``name``, or None when PEFT does
        not save it. LoRA's A and B are ``nn.Linear`` modules (``lora_A.weight``); AdaLoRA's,
        LoHa's and LoKr's tensors are ``nn.ParameterDict`` entries (the adapter name dropped);
        AdaLoRA leaves ``ranknum`` out (peft/tuners/adalora/model.py)."""
        if name == "ranknum":
            return None
        if name in ("lora_A", "lora_B") and self.variant != "adalora":
            return f"{name}.weight"
        return name

    @property
    def branch_width(self) -> int:
        """Elements per token the branch saves for backward besides its input: the rank-wide
        product of the input and A (kept by B's matmul). AdaLoRA also divides its out-wide
        output by ``ranknum``, which trains on a GPU (:meth:`trainable`), so the division keeps
        its numerator. LoHa and LoKr multiply the input by the whole delta weight and keep
        nothing rank-wide; IA3 has no rank (its saved tensors are in activations.py)."""
        if self.variant in (*DELTA_WEIGHT_VARIANTS, "ia3"):
            return 0
        if self.variant == "adalora":
            return self.rank + self.linear.out_features
        return self.rank * max(self.linear.experts, 1)

    def input_grad_saved_elements(self) -> int:
        """Elements of the weight-side operand the branch's matmul saves only to compute the
        input's gradient (autograd saves ``mat2`` of ``mm`` only when ``self`` requires grad),
        whatever the token count: LoHa's and LoKr's delta weight (out x in), AdaLoRA's
        ``lora_A * lora_E`` (r x in); LoRA's A is a parameter, so nothing new."""
        if self.variant in DELTA_WEIGHT_VARIANTS:
            return self.linear.out_features * self.linear.in_features
        if self.variant == "adalora":
            return self.rank * self.linear.in_features
        if self.variant == "ia3":  # the scaling vector (1 * ia3_l.flatten(), a new tensor)
            return self.linear.in_features if self.is_feedforward else self.linear.out_features
        return 0

    def factor_product_elements(self) -> int:
        """Elements of LoKr's factored Kronecker factors (``w_a @ w_b``, not parameters) that
        kron's multiply keeps for the other factor's gradient, whatever needs grad upstream."""
        if self.variant != "lokr":
            return 0
        shapes = dict(self.tensors(False))
        return sum(shapes[f"lokr_w{i}_a"][0] * shapes[f"lokr_w{i}_b"][1] for i in (1, 2)
                   if f"lokr_w{i}_a" in shapes)


def factorization(dimension: int, factor: int = LOKR_DECOMPOSE_FACTOR) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m * n == dimension``: with ``factor`` > 0
    dividing it, ``(factor, dimension // factor)``; else the divisor pair nearest the square root
    whose smaller part is at most ``factor`` (all of them for -1). LyCORIS ``lokr.factorization``
    as copied by PEFT (peft/tuners/lokr/layer.py)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


def lokr_tensors(in_features: int, out_features: int, r: int,
                 decompose_factor: int = LOKR_DECOMPOSE_FACTOR,
                 decompose_both: bool = LOKR_DECOMPOSE_BOTH) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """LoKr's tensors for one Linear (peft/tuners/lokr/layer.py ``update_layer`` and
    ``create_adapter_parameters``): out = a*b and in = c*d factored, w1 (a, c), w2 (b, d), each
    replaced by a rank-r pair when r is under half its larger side (w1 only with
    ``decompose_both``)."""
    in_m, in_n = factorization(in_features, decompose_factor)
    out_l, out_k = factorization(out_features, decompose_factor)
    use_w1 = not (decompose_both and r < max(out_l, in_m) / 2)
    use_w2 = not (r < max(out_k, in_n) / 2)
    shapes = [("lokr_w1", (out_l, in_m))] if use_w1 else [("lokr_w1_a", (out_l, r)),
                                                          ("lokr_w1_b", (r, in_m))]
    shapes += [("lokr_w2", (out_k, in_n))] if use_w2 else [("lokr_w2_a", (out_k, r)),
                                                           ("lokr_w2_b", (r, in_n))]
    return tuple(shapes)


def split_targets(text: str) -> tuple[str, ...]:
    """Split ``--targets q_proj,v_proj`` into names (PEFT's spelling ``all-linear`` is ``all``)."""
    names = (t.strip() for t in str(text).split(",") if t.strip())
    return tuple("all" if name == "all-linear" else name for name in names)


def target_names(spec: ModelSpec) -> list[str]:
    """Names a user may pass as targets for this architecture."""
    names = [linear.name for linear in block_linears(spec) + extra_linears(spec)]
    return list(dict.fromkeys(names + [head_linear(spec).name]))


def _select(linears: Iterable[Linear], names: Iterable[str]) -> list[Linear]:
    names = list(names)
    return [linear for linear in linears if any(linear.matches(n) for n in names)]


def _layers_matching(spec: ModelSpec, linear: Linear, name: str) -> int:
    """How many layers' copies of ``linear`` a full or partial module path selects."""
    if linear.matches(name):
        return copies(spec, linear)
    layers = linear.layer_ids or range(copies(spec, linear))
    return sum(1 for layer in layers if _full_path_matches(module_path(spec, linear, layer), name))


def _full_path_matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _key(linear: Linear) -> tuple:
    return (linear.prefix, linear.path, linear.in_features, linear.out_features, linear.layer_ids)


def _expand(spec: ModelSpec, target: str) -> dict[tuple, tuple[Linear, int]]:
    """Linear key -> (linear, copies) selected by one target name or alias.

    For a model an architecture card describes, ``all`` is what PEFT's ``all-linear`` adapted
    when the card was derived (the vision tower's linears included, and for the MoE types PEFT
    rewrites: attention, experts and router), and names match the whole model as PEFT matches
    them (a vision tower's ``q_proj`` too)."""
    blocks = block_linears(spec)
    if spec.card is not None:
        names = FUSED_QKV + ("q_proj", "v_proj") if target == "qv" else (target,)
        for note in spec.card.notes:
            if note.startswith("peft-refuses-name: ") and note.split(": ")[1] in names:
                leaf, cls = note.split(": ")[1:3]
                raise LorasizeError(
                    f"PEFT refuses a target list naming '{leaf}' on {spec.name}: it also names "
                    f"{cls} modules, which LoRA cannot wrap; adapt the language model's layers "
                    f"with 'attn', 'mlp' or 'all' (a regular expression over "
                    f"{spec.card.block_prefix})", source="--targets")
        refusal = next((n for n in spec.card.notes if n.startswith("peft-all-linear-refused")), "")
        if target == "all" and refusal:
            raise LorasizeError(f"PEFT refuses all-linear on {spec.name} ({spec.model_type}): "
                                f"{refusal.split(': ', 1)[1]}; name the modules to adapt",
                                source="--targets")
        blocks = blocks + extra_linears(spec)
    everywhere = lambda linears: {_key(m): (m, copies(spec, m)) for m in linears}  # noqa: E731
    if target == "all":
        return everywhere(m for m in blocks if m.all_linear is not False)
    if target in ("attn", "mlp"):
        return everywhere(m for m in blocks if m.group == target)
    if target == "qv":
        return everywhere(_select(blocks, FUSED_QKV) or _select(blocks, ("q_proj", "v_proj")))
    head = head_linear(spec)
    if target in ("lm_head", "output") or _full_path_matches(head.path, target):
        return {_key(head): (head, 1)}
    selected = {}
    for linear in blocks:
        count = _layers_matching(spec, linear, target)
        if count:
            selected[_key(linear)] = (linear, count)
    if not selected:
        valid = target_names(spec)
        close = difflib.get_close_matches(target, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        from .parts import fused_part

        fused = fused_part(spec, target)
        if fused:
            hint = (f"; {spec.name} fuses it into {fused[0].name}, which PEFT adapts whole "
                    f"(--stack litgpt or torchtune adapt its parts apart)")
        raise LorasizeError(
            f"'{target}' is not a module of {spec.name} ({spec.model_type}); valid names: "
            f"{', '.join(valid)} or {', '.join(TARGET_ALIASES)}{hint}", source="--targets")
    return selected


def resolve_targets(spec: ModelSpec, lora: LoraSpec, stack: str = "hf-peft") -> tuple[Target, ...]:
    """The matrices the adapter covers, with their rank and number of copies, on the modules of
    the model ``stack`` builds (litgpt's and torchtune's adapt a fused module's parts apart:
    :mod:`lorasize.arch.parts`).

    Raises:
        LorasizeError: a target name the architecture lacks, or ``r`` larger than a target's
            smaller dimension (the update could not be low-rank).
    """
    if stack in PART_STACKS:
        return part_targets(spec, lora, stack, lambda named: _resolve(spec, named))
    return _resolve(spec, lora)


def _resolve(spec: ModelSpec, lora: LoraSpec) -> tuple[Target, ...]:
    chosen: dict[tuple, tuple[Linear, int]] = {}
    unmatched: list[LorasizeError] = []
    for name in lora.targets:
        try:
            expanded = _expand(spec, name.strip())
        except LorasizeError as exc:
            if spec.card is None or "is not a module of" not in str(exc):
                raise
            # PEFT's rule for a list of names: an error only when none of them matches
            # (DeepSeek-V2-Lite has q_proj and no v_proj: q,v adapts q_proj alone).
            unmatched.append(exc)
            continue
        for key, (linear, count) in expanded.items():
            # Several full paths (one per layer) add up; an alias covers every layer.
            previous = chosen.get(key, (linear, 0))[1]
            chosen[key] = (linear, min(previous + count, copies(spec, linear))
                           if linear.group != "head" else 1)
    if unmatched and not chosen:
        raise unmatched[0]
    if not chosen:
        raise LorasizeError(f"{','.join(lora.targets)} adapts no module of {spec.name} "
                            f"({spec.model_type}); valid names: {', '.join(target_names(spec))}",
                            source="--targets")
    # PEFT's all-linear gives fused expert gate/up matrices rank 2r; named targets keep r.
    all_linear = "all" in lora.targets
    targets = []
    for linear, count in chosen.values():
        router = is_router(spec, linear)
        if (linear.experts or router) and lora.variant not in _LORA_LIKE:
            # 3-D expert parameters and transformers 5's MoE routers are no nn.Linear: PEFT
            # adapts them for LoRA only (ParamWrapper), and all-linear leaves them out otherwise.
            if all_linear:
                continue
            raise LorasizeError(f"{lora.variant} cannot adapt {linear.name}, which is no "
                                "nn.Linear (PEFT adapts it for LoRA only)", source="--targets")
        if lora.variant in DELTA_WEIGHT_VARIANTS and spec.family == "gpt2" and linear.group != "head":
            # GPT-2's blocks use transformers' Conv1D, which PEFT's LyCORIS layers refuse.
            raise LorasizeError(f"PEFT's {lora.variant} adapts nn.Linear and convolutions, not "
                                f"GPT-2's Conv1D ({linear.name})", source="--variant")
        # PEFT's all-linear doubles the fused gate/up rank through its MoE rewrite; a card
        # records the multiple PEFT applied.
        rank = lora.r * (linear.rank_multiplier if all_linear else 1)
        if lora.variant in ("lokr", "ia3"):
            pass  # LoKr's rank only chooses full or factored Kronecker factors; IA3 has none
        elif lora.r > min(linear.in_features, linear.out_features) and not router \
                and not (all_linear and spec.card is not None):
            # (PEFT itself builds A and B at any rank: all-linear on a derived model reaches
            # one-output gates and narrow vision linears, which it adapts as they are.)
            raise LorasizeError(
                f"r={lora.r} is larger than the smaller dimension of {linear.name} "
                f"({linear.in_features} x {linear.out_features}); LoRA needs r below it",
                source="--r")
        targets.append(Target(linear, count, rank, lora.variant))
    return tuple(targets)


def first_adapted_layer(spec: ModelSpec, targets: Iterable[Target]) -> int | None:
    """The first decoder layer holding an adapter (None when no decoder layer holds one: only
    the head, or a vision tower, is adapted). Before it, nothing needs a gradient."""
    from .layout import copies

    return min((i for t in targets
                if t.linear.group not in ("head", "vision") and not t.linear.prefix
                for i in (t.linear.layer_ids or range(copies(spec, t.linear)))), default=None)


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


# Output projections: their input is the attention output or the MLP's hidden activation, not a
# norm's output.
_OUTPUT_PROJECTIONS = ("o_proj", "dense", "c_proj", "down_proj", "fc2", "dense_4h_to_h", "out_proj")


@dataclass(frozen=True)
class InputGradSaved:
    """Bytes the branches save only for their input's gradient (see
    :meth:`Target.input_grad_saved_elements`), independent of the token count.

    Attributes:
        per_layer: one decoder layer whose input requires grad (every layer but the first, and
            every layer recomputed under checkpointing).
        first_layer_unsaved: what the first layer does not save: its input comes from the frozen
            embeddings, so a branch whose input has no adapter upstream in that layer keeps no
            delta weight.
        head: an adapter on the output head (its input requires grad when any block is adapted).
    """

    per_layer: int = 0
    first_layer_unsaved: int = 0
    head: int = 0


def input_grad_saved_bytes(spec: ModelSpec, targets: Iterable[Target],
                           adapter_bytes: int, dora_dropout: bool = False) -> InputGradSaved:
    """LoHa/LoKr delta weights (and AdaLoRA's ``A * E``) that ``F.linear``/``matmul`` keep for
    backward, per layer, in the adapter dtype (``adapter_bytes`` per element); ``per_layer`` also
    holds LoKr's factored Kronecker factors, which every layer keeps. ``dora_dropout``: DoRA with
    a dropout recomputes the base output as ``F.linear(dropout(x), weight.to(x.dtype))``, which
    keeps that adapter-dtype copy of the weight for the input's gradient
    (peft/tuners/lora/dora.py ``DoraLinearLayer.forward``, PEFT 0.21)."""
    targets = list(targets)
    blocks = [t for t in targets if t.linear.group != "head"]
    per_layer = first_unsaved = head = 0

    def size(target: Target) -> int:
        elements = target.input_grad_saved_elements()
        if dora_dropout and target.variant in ("lora", "rslora", "loraplus"):
            elements += target.linear.weight_numel
        return elements * adapter_bytes

    everywhere = [t for t in blocks if t.copies == spec.num_layers]
    attn_in = [t for t in everywhere if t.linear.group == "attn"
               and not t.linear.path.endswith(_OUTPUT_PROJECTIONS)]
    attn = [t for t in everywhere if t.linear.group == "attn"]
    mlp_in = [t for t in everywhere if t.linear.group == "mlp"
              and not t.linear.path.endswith(_OUTPUT_PROJECTIONS)]
    for target in blocks:
        kept = size(target) + target.factor_product_elements() * adapter_bytes
        per_layer += round(kept * target.copies / spec.num_layers)
        if target.copies != spec.num_layers:
            continue  # which layers a partial target covers is not modelled here
        path = target.linear.path
        if target.linear.group == "attn":
            grad = bool(attn_in) and path.endswith(_OUTPUT_PROJECTIONS)
        elif not path.endswith(_OUTPUT_PROJECTIONS):
            grad = bool(attn) and not spec.parallel_block
        else:
            grad = bool(mlp_in) or (bool(attn) and not spec.parallel_block)
        if not grad:
            first_unsaved += size(target)
    head_target = next((t for t in targets if t.linear.group == "head"), None)
    if head_target is not None and blocks:
        head = size(head_target)
    return InputGradSaved(per_layer=per_layer, first_layer_unsaved=first_unsaved, head=head)


# Weight-sized tensors (adapter dtype) live at once at the peak of one LoHa/LoKr branch's
# backward. LoHa (peft/tuners/loha/layer.py HadaWeight.backward): the delta's gradient from
# F.linear, ``grad * scale``, the old ``temp``, ``w1_a @ w1_b`` and the new ``temp`` = 5. LoKr
# (make_kron: torch.kron is a broadcast multiply): the delta's gradient, ``grad * scale`` and one
# product of the multiply's backward = 3. By then F.linear's backward has released the branch's
# own saved delta weight, so the net increase is one copy less. Counted from the code; the trace
# tier shows the same (tests/test_variant_trace.py).
DELTA_BACKWARD_COPIES = {"loha": 5, "lokr": 3}


def delta_weight_transient_bytes(targets: Iterable[Target], adapter_bytes: int) -> int:
    """The largest net backward transient of a LoHa/LoKr branch (0 for the other methods):
    ``(copies - 1) x`` its weight, the saved delta it replaces taken off."""
    return max(((DELTA_BACKWARD_COPIES[t.variant] - 1) * t.linear.weight_numel * adapter_bytes
                for t in targets if t.variant in DELTA_BACKWARD_COPIES), default=0)


# DoRA's weight norm, each forward (peft/tuners/lora/dora.py, PEFT 0.21): ``get_lora_weight``
# runs B(A(eye(in))) -- the identity and A's output stay alive with the graph of ``lora_weight``
# -- then ``weight.to(x.dtype)``, ``scaling * lora_weight`` and their sum, all weight-sized.
DORA_WEIGHT_COPIES = 3  # lora_weight, scaling * lora_weight, weight + ...
DORA_VARIANTS = ("lora", "rslora", "loraplus")


def dora_forward_transient(targets: Iterable[Target], adapter_bytes: int,
                           base_bytes: int) -> tuple[int, Target | None]:
    """The largest transient of DoRA's weight norm over the adapted matrices, and the matrix (the
    last of equal ones in the block: the most of the layer is made by then): the identity
    (in x in), A's output on it, the weight-sized tensors, and the weight cast to the adapter's
    dtype when the base holds another (a quantized base is dequantized first)."""
    def one(t: Target) -> int:
        lin = t.linear
        copies = DORA_WEIGHT_COPIES + (1 if base_bytes != adapter_bytes else 0)
        return adapter_bytes * (lin.in_features ** 2 + lin.in_features * t.rank
                                + copies * lin.weight_numel)

    best, where = 0, None
    for t in targets:
        if t.variant in DORA_VARIANTS and not t.linear.experts and t.linear.group != "head":
            if one(t) >= best:
                best, where = one(t), t
    return best, where


# AdaLoRA's RankAllocator.update_ipt (peft/tuners/adalora/layer.py), run by
# ``update_and_allocate`` after every optimizer step until ``total_step - tfinal``: for every
# parameter named ``lora_*`` (A, E, B; not ranknum) it keeps ``ipt``, ``exp_avg_ipt`` and
# ``exp_avg_unc``, each ``torch.zeros_like(p)``.
ADALORA_IMPORTANCE_COPIES = 3


def importance_state_shapes(targets: Iterable[Target]) -> list[tuple[tuple[int, ...], int]]:
    """(shape, copies) of AdaLoRA's importance tensors: state beside the optimizer's."""
    return [(shape, target.copies * ADALORA_IMPORTANCE_COPIES) for target in targets
            if target.variant == "adalora"
            for name, shape in target.tensors(False) if name.startswith("lora_")]
