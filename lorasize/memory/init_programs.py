"""What a training stack allocates while it builds and loads the model, as an event program.

Reserved memory only grows (nothing calls ``torch.cuda.empty_cache``), so a stack that builds its
model on the GPU keeps every segment its build reserved: the training step's ``peak memory
reserved`` includes them. For torchtune 0.1 that is most of the QLoRA figure (README of
``benchmarks/torchtune_reserved``). The program here is replayed through
:class:`lorasize.memory.caching_allocator.CachingAllocator`.

torchtune 0.1 (pytorch/torchtune@fef3ed10d, in v0.1.0 and v0.1.1; torchao 0.1, its pin), read at
that commit:

- ``recipes/lora_finetune_single_device.py`` ``_setup_model``: the model is built on the GPU in
  bf16 (``with utils.set_default_dtype(self._dtype), self._device``), then the checkpoint, loaded
  to the CPU, is copied in (``load_state_dict(..., strict=False)``).
- ``models/llama2/_component_builders.py`` ``lora_llama2``: one template layer (attention q, k, v,
  output projections, their rotary embeddings, the MLP's w1, w2, w3, then the two norms), the
  embeddings, the output projection and the final norm; ``modules/transformer.py``
  ``_get_clones`` deep-copies the template once per layer, and the template is freed when the
  builder returns (so the build peaks at one layer more than the model).
- ``modules/peft/lora.py`` ``LoRALinear``: a bf16 ``nn.Linear`` whose weight, with
  ``quantize_base``, becomes ``to_nf4(weight)`` (the bf16 weight freed after), then ``lora_a`` and
  ``lora_b``; torchtune 0.1 quantizes only the linears that carry LoRA.
- ``modules/position_embeddings.py`` ``RotaryPositionalEmbeddings._rope_init``: ``theta`` and an
  fp32 ``cache`` of ``max_seq_len x head_dim / 2 x 2``, per layer.
- ``utils/_register_nf4_dispatch_ops.py``: deep-copying an NF4 parameter dequantizes and
  quantizes it again; ``copy_`` into one quantizes the checkpoint's tensor anew. torchao 0.1's
  quantization makes transients of 32 bytes a weight element (``quantize_tensor_nearest``); their
  events are data (``lorasize/data/programs/torchao_0.1_nf4.json``), recorded from torchao's own
  code.

Checked against torchtune's own code replayed on fake tensors (``scripts/torchtune_init_events.py``
records it; ``tests/test_init_programs.py``): the same events, in the same order.
"""

from __future__ import annotations

import copy
import itertools
import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from .caching_allocator import CachingAllocator
from .stacks import builds_on_device

NF4_PROGRAMS = Path(__file__).resolve().parent.parent / "data" / "programs" / "torchao_0.1_nf4.json"
BF16 = 2
FP32 = 4
INT64 = 8
ROPE_BASE_EVENTS = 5  # theta: arange (int64), float, / dim, base **, 1 / (...), and its copy
# torchtune 0.1's model builders (lora_llama2, lora_mistral) and the families lorasize reads them as
TORCHTUNE_01_FAMILIES = ("llama", "mistral")
NF4_COMPONENTS = ("scalers", "factor", "mean", "data", "lut")  # the order a replaced one is freed
NF4_LUT_BYTES = 32  # the 16 bf16 NF4 values to_nf4 allocates first


@lru_cache(maxsize=1)
def _nf4_programs() -> dict:
    return json.loads(NF4_PROGRAMS.read_text())


def dequant_peak_per_element() -> Fraction:
    """Bytes per weight element torchao 0.1 holds at once while it dequantizes an NF4 weight
    (``get_original_weight``: two int64 index tensors of half the elements, the looked-up halves,
    the scalers, the stacked bf16 result): the peak of its events, up to where a deep copy starts
    quantizing again (``torchtune``'s ``linear_nf4`` runs it in every forward and backward)."""
    live: dict[int, Fraction] = {}
    current = peak = Fraction(0)
    for event in _nf4_programs()["deepcopy"]["events"]:
        if event[0] == "a":
            if event[2] == "0" and event[3] == NF4_LUT_BYTES:
                break  # to_nf4 begins: the lookup table
            live[event[1]] = Fraction(event[2])
            current += live[event[1]]
            peak = max(peak, current)
        else:
            current -= live.pop(event[1])
    return peak


class Program:
    """Allocation events with fresh keys: ``("a", key, bytes)`` and ``("f", key)``."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._next = 0

    def alloc(self, nbytes: int) -> int:
        self._next += 1
        self.events.append(("a", self._next, int(nbytes)))
        return self._next

    def free(self, key: int) -> None:
        self.events.append(("f", key))

    def nf4(self, name: str, numel: int, outside: dict[str, int]) -> dict[str, int]:
        """Run torchao's ``name`` program (``to_nf4``, ``deepcopy``, ``copy_``) on a weight of
        ``numel`` elements; ``outside``: the keys its frees name (the input, the components being
        replaced). Returns the new NF4 tensor's component keys."""
        program = _nf4_programs()[name]
        local: dict[int, int] = {}
        for event in program["events"]:
            if event[0] == "a":
                _, i, coef, const = event
                local[i] = self.alloc(Fraction(coef) * numel + const)
            else:
                ref = event[1]
                self.free(outside[ref] if isinstance(ref, str) else local[ref])
        return {name: local[i] for name, i in program["keeps"].items()}


def torchtune_01_program(model, lora_targets: set[str], rank: int, quantize: bool,
                         lora_output: bool = False) -> Program:
    """torchtune 0.1's model build and checkpoint load (see the module's docstring).

    ``lora_targets``: torchtune's module names that carry LoRA (``q_proj``, ``k_proj``,
    ``v_proj``, ``output_proj``, ``w1``, ``w2``, ``w3``); ``quantize``: QLoRA (NF4 bases where LoRA
    sits)."""
    prog = Program()
    d, inter, v, head = model.hidden_size, model.intermediate_size, model.vocab_size, model.head_dim
    q_out, kv_out = model.num_heads * head, model.num_kv_heads * head
    linears = [("q_proj", d, q_out), ("k_proj", d, kv_out), ("v_proj", d, kv_out),
               ("output_proj", q_out, d), ("w1", d, inter), ("w2", inter, d), ("w3", d, inter)]

    def build_linear(name, fan_in, fan_out):
        """A (LoRA)Linear: its weight (bf16, or NF4 components) and its adapters' keys."""
        if name not in lora_targets:
            return {"weight": prog.alloc(fan_in * fan_out * BF16)}
        weight = prog.alloc(fan_in * fan_out * BF16)
        out = {}
        if quantize:
            out["nf4"] = prog.nf4("to_nf4", fan_in * fan_out, {"input": weight})
        else:
            out["weight"] = weight
        out["lora_a"] = prog.alloc(rank * fan_in * BF16)
        out["lora_b"] = prog.alloc(fan_out * rank * BF16)
        return out

    def build_rope():
        half = head // 2
        arange = prog.alloc(half * INT64)
        as_float = prog.alloc(half * FP32)
        prog.free(arange)
        scaled = prog.alloc(half * FP32)
        prog.free(as_float)
        power = prog.alloc(half * FP32)
        prog.free(scaled)
        inverse = prog.alloc(half * FP32)
        theta = prog.alloc(half * FP32)
        prog.free(inverse)
        prog.free(power)
        positions = prog.alloc(model.max_positions * FP32)
        outer = prog.alloc(model.max_positions * half * FP32)
        cos = prog.alloc(model.max_positions * half * FP32)
        sin = prog.alloc(model.max_positions * half * FP32)
        cache = prog.alloc(model.max_positions * half * 2 * FP32)
        for key in (sin, cos, positions, outer):
            prog.free(key)
        return {"theta": theta, "cache": cache}

    # the template layer, in construction order
    built = {name: build_linear(name, fi, fo) for name, fi, fo in linears[:4]}
    rope = build_rope()
    built.update({name: build_linear(name, fi, fo) for name, fi, fo in linears[4:]})
    sa_norm, mlp_norm = prog.alloc(d * BF16), prog.alloc(d * BF16)
    prog.alloc(v * d * BF16)  # tok_embeddings
    prog.alloc(v * d * BF16)  # output (never quantized in 0.1: "not applied to final output_proj")
    if lora_output:
        prog.alloc(rank * d * BF16)
        prog.alloc(v * rank * BF16)
    prog.alloc(d * BF16)  # the final norm

    sizes = {name: (fi, fo) for name, fi, fo in linears}

    def copy_buffer(nbytes):
        prog.free(prog.alloc(0))
        key = prog.alloc(nbytes)
        prog.free(prog.alloc(0))
        prog.free(prog.alloc(4))
        return key

    def clone(linear, name):
        fi, fo = sizes[name]
        out = {}
        if "nf4" in linear:
            out["nf4"] = prog.nf4("deepcopy", fi * fo, {})
        else:
            out["weight"] = prog.alloc(fi * fo * BF16)
        if "lora_a" in linear:
            out["lora_a"] = prog.alloc(rank * fi * BF16)
            out["lora_b"] = prog.alloc(fo * rank * BF16)
        return out

    # registration order: sa_norm, attn (q, k, v, output_proj, pos_embeddings), mlp_norm, mlp
    layers = []
    for _ in range(model.num_layers):
        layer = {"sa_norm": prog.alloc(d * BF16)}
        for name, _, _ in linears[:4]:
            layer[name] = clone(built[name], name)
        layer["theta"] = copy_buffer((head // 2) * FP32)
        layer["cache"] = copy_buffer(model.max_positions * (head // 2) * 2 * FP32)
        layer["mlp_norm"] = prog.alloc(d * BF16)
        for name, _, _ in linears[4:]:
            layer[name] = clone(built[name], name)
        layers.append(layer)

    def free_linear(linear):
        if "nf4" in linear:
            for part in NF4_COMPONENTS:
                prog.free(linear["nf4"][part])
        else:
            prog.free(linear["weight"])
        for part in ("lora_a", "lora_b"):
            if part in linear:
                prog.free(linear[part])

    # the template, freed as the builder returns
    prog.free(sa_norm)
    for name, _, _ in linears[:4]:
        free_linear(built[name])
    prog.free(rope["theta"])
    prog.free(rope["cache"])
    prog.free(mlp_norm)
    for name, _, _ in linears[4:]:
        free_linear(built[name])

    # the checkpoint copied in: NF4 weights quantized anew, the old components freed
    if quantize:
        for layer in layers:
            for name, _, _ in linears:
                if "nf4" in layer[name]:
                    fi, fo = sizes[name]
                    layer[name]["nf4"] = prog.nf4("copy_", fi * fo, layer[name]["nf4"])
    return prog


def normalized(events) -> list[tuple]:
    """``events`` with keys renumbered in allocation order (two programs compare equal when they
    allocate and free the same sizes in the same order)."""
    keys: dict = {}
    out = []
    for event in events:
        if event[0] == "a":
            keys[event[1]] = len(keys)
            out.append(("a", keys[event[1]], int(event[2])))
        else:
            out.append(("f", keys[event[1]]))
    return out


def replay(events) -> CachingAllocator:
    """The caching allocator after ``events``."""
    allocator = CachingAllocator()
    for event in events:
        if event[0] == "a":
            allocator.malloc(event[1], event[2])
        else:
            allocator.free(event[1])
    return allocator


# torchtune's module names for the linears lorasize names as Hugging Face does
TORCHTUNE_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
                   "o_proj": "output_proj", "gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
TRAINING_KEYS = 1 << 40  # keys of the training step's tensors, past any build's


def applies(model, targets, train) -> bool:
    """Whether lorasize has the stack's model build as a program: torchtune 0.1's LoRA and QLoRA
    on a Llama-type model (no q/k/v bias, no experts) in bf16, adapters on its linears."""
    names = {t.linear.name for t in targets}
    return (train.stack == "torchtune" and builds_on_device(train.stack, train.stack_release)
            and model.card is None and model.family == "llama" and not model.qkv_bias
            and not model.num_experts and train.method in ("lora", "qlora")
            and train.dtype == "bf16" and bool(targets)
            and names <= set(TORCHTUNE_NAMES) | {"lm_head"})


def build_replay(model, targets, train) -> CachingAllocator:
    """The caching allocator after the stack's model build (:func:`applies` must hold); a fresh
    copy of a cached replay, so a search over batch sizes replays the build once."""
    names = {t.linear.name for t in targets}
    return copy.deepcopy(_after_build(model, frozenset(TORCHTUNE_NAMES[n] for n in names
                                                       if n != "lm_head"),
                                      targets[0].rank, train.quantized, "lm_head" in names))


@lru_cache(maxsize=8)
def _after_build(model, names: frozenset, rank: int, quantize: bool, lora_output: bool):
    return replay(torchtune_01_program(model, set(names), rank, quantize, lora_output).events)


def training_reserved(allocator: CachingAllocator, adapter_tensors: list[int],
                      step_tensors: list[int]) -> int:
    """Reserved bytes once training has run after the build (``allocator``, changed in place):
    the step's tensors at its peak (``step_tensors``, placed by best fit in what the build left
    cached), the adapters' gradients (made by the first backward, kept), AdamW's two states per
    adapter tensor (the first optimizer step), and the step's tensors again."""
    keys = itertools.count(TRAINING_KEYS)
    step = [(next(keys), n) for n in step_tensors]
    for key, nbytes in step:
        allocator.malloc(key, nbytes)
    for nbytes in adapter_tensors:
        allocator.malloc(next(keys), nbytes)
    for key, _ in step:
        allocator.free(key)
    for nbytes in adapter_tensors * 2:
        allocator.malloc(next(keys), nbytes)
    for key, nbytes in step:
        allocator.malloc(key, nbytes)
    return allocator.reserved
