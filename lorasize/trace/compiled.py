"""The compiled-layer probe: what one decoder layer and the loss keep for backward when
``torch.compile`` runs them, decided by Inductor's own partitioner on fake tensors.

Under ``torch.compile`` AOTAutograd traces a module's forward and backward as one joint graph
and a partitioner splits it. Inductor's (``min_cut_rematerialization_partition`` with
``compiler="inductor"``, over Inductor's decomposition table: ``torch/_inductor/compile_fx.py``)
saves what a min cut of the graph says is cheapest to keep and recomputes cheap pointwise work
(norm statistics, activations, casts) in backward. What a compiled layer keeps is therefore the
partitioner's answer, not the eager ops' saved tensors.

Method: build the real model with the real adapter as the trace does, every decoder layer but
one representative per kind swapped for a pass-through stub; one forward under fake tensors
captures the representative's arguments (hidden states, rotary tables, masks) and stops. Each
representative is then compiled with a backend that runs AOTAutograd with Inductor's partitioner
and decompositions and keeps the forward graph instead of generating code. The layer's bytes are
the forward graph's saved values, each storage once: its own activations and its input hidden
states (kept alive by being saved), not its parameters, rotary tables or masks (which exist once
per model). The loss is probed the same way: ``cross_entropy(logits.float(), labels)`` compiled
over one chunk of bf16 logits (torchtune compiles ``compute_cross_entropy`` per output chunk,
``training/_compile.py``; a compiled Hugging Face model runs the same upcast and loss inside its
forward), giving the bytes it saves per token and the gradient it returns per token.

This is torch's partitioner as installed here; its choices have changed between torch releases.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..memory.activations import TORCHTUNE_OUTPUT_CHUNKS
from ..specs import TrainSpec
from .build import TORCH_DTYPES, build, quiet
from .emulation import cuda_emulation
from .layer_probe import Stub, representatives


class _Captured(Exception):
    """Stops the model's forward once every representative's arguments are captured."""


def _decoder_layers(network, model: ModelSpec):
    """The ModuleList of decoder layers: the card's path, or the list of ``num_layers`` modules."""
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    if model.card is not None:
        return base.get_submodule(model.card.block_prefix)
    return next(m for m in base.modules()
                if isinstance(m, torch.nn.ModuleList) and len(m) == model.num_layers)


def _representatives(model: ModelSpec) -> dict[str, int]:
    """One layer per kind, neither the first nor the last where the kind has another (the layer
    probe's rule); ``layer`` for a model whose layers are all alike."""
    if model.card is not None:
        return representatives(model)
    return {"layer": 1 if model.num_layers > 2 else 0}


def _storage_key(tensor) -> tuple:
    try:
        return ("storage", id(tensor.untyped_storage()))
    except (RuntimeError, NotImplementedError):
        return ("tensor", id(tensor))


def _bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _Partition:
    """A torch.compile backend: AOTAutograd with Inductor's partitioner and decompositions,
    keeping each forward and backward graph (and the inputs it was compiled for) instead of
    generating code. The graphs then run as they are, on the fake tensors."""

    def __init__(self):
        self.graphs: list[tuple] = []  # (forward graph, backward graph, example inputs)

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._functorch.aot_autograd import aot_module_simplified
        from torch._functorch.partitioners import min_cut_rematerialization_partition
        from torch._inductor.decomposition import select_decomp_table

        entry = {"inputs": list(example_inputs)}

        def forward(graph, inputs):
            entry["forward"] = graph
            return make_boxed_func(graph)

        def backward(graph, inputs):
            entry["backward"] = graph
            return make_boxed_func(graph)

        self.graphs.append(entry)
        return aot_module_simplified(
            gm, example_inputs, fw_compiler=forward, bw_compiler=backward,
            partition_fn=functools.partial(min_cut_rematerialization_partition,
                                           compiler="inductor"),
            decompositions=select_decomp_table())

    def saved(self, counted) -> int:
        """Bytes of the values the forward graphs save for backward, each storage once; a saved
        graph input counts only where ``counted(input)`` says so."""
        seen: set = set()
        total = 0
        for entry in self.graphs:
            graph = entry.get("forward")
            backward = entry.get("backward")
            if graph is None or backward is None:
                continue
            placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
            output = next(n for n in graph.graph.nodes if n.op == "output").args[0]
            # the backward graph's inputs are the saved values followed by the outputs' gradients
            saved_count = sum(1 for n in backward.graph.nodes if n.op == "placeholder") - \
                sum(1 for n in backward.graph.nodes if n.op == "placeholder"
                    and n.name.startswith("tangents"))
            for node in output[len(output) - saved_count:]:
                value = node.meta.get("val") if hasattr(node, "meta") else None
                if not isinstance(value, torch.Tensor):
                    continue
                if node.op == "placeholder":
                    index = placeholders.index(node)
                    source = entry["inputs"][index] if index < len(entry["inputs"]) else None
                    if source is None or not counted(source):
                        continue
                key = _storage_key(value)
                if key in seen:
                    continue
                seen.add(key)
                total += _bytes(value)
        return total

    def gradient_bytes(self) -> int:
        """Bytes the backward graphs return (the gradients of the compiled inputs)."""
        total = 0
        for entry in self.graphs:
            graph = entry.get("backward")
            if graph is None:
                continue
            output = next(n for n in graph.graph.nodes if n.op == "output").args[0]
            total += sum(_bytes(n.meta["val"]) for n in output
                         if n is not None and isinstance(n.meta.get("val"), torch.Tensor))
        return total


def _backward(output) -> None:
    """Run backward from the first tensor of an output: AOTAutograd compiles the backward graph
    (and so hands it to the backend) only when backward first runs."""
    first = output if isinstance(output, torch.Tensor) else next(
        o for o in (output.values() if isinstance(output, dict) else output)
        if isinstance(o, torch.Tensor))
    first.float().sum().backward()


def compiled_probe(model: ModelSpec, lora: LoraSpec, train: TrainSpec) -> dict:
    """What a compiled step keeps, at the step's batch, sequence, dtype, attention and targets:
    ``{"kinds": {kind: bytes one layer saves}, "loss_saved_per_token": ...,
    "loss_gradient_per_token": ..., "loss_chunk_tokens": ...}``.

    Patches globals (the CUDA emulation): run it in a subprocess
    (:func:`lorasize.trace.compiled_probe`).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    reps = _representatives(model)
    keep = set(reps.values())
    template: dict = {}
    captured: dict[int, tuple] = {}
    hooks: list = []

    def prepare(network) -> None:
        layers = _decoder_layers(network, model)

        def keep_rest(module, args, output) -> None:
            template.setdefault("rest", tuple(output[1:]) if isinstance(output, tuple) else None)

        for index in range(len(layers)):
            if index not in keep:
                layers[index] = Stub(template)

        def capture(module, args, kwargs, index):
            captured[index] = (module, args, kwargs)
            if len(captured) == len(keep):
                raise _Captured

        for index in keep:
            hooks.append(layers[index].register_forward_pre_hook(
                functools.partial(capture, index=index), with_kwargs=True))

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    step = replace(train, grad_checkpointing=False)
    kinds: dict[str, int] = {}
    with cuda_emulation():
        network = build(model, lora, step, mode, prepare=prepare)
        network.train()
        with mode, quiet():
            ids = torch.randint(0, model.vocab_size, (train.batch_size, train.seq_len))
            try:
                network(input_ids=ids)
            except _Captured:
                pass
            for handle in hooks:
                handle.remove()
            for name, index in reps.items():
                module, args, kwargs = captured[index]
                kwargs = dict(kwargs)
                if args:
                    hidden = args[0].detach().requires_grad_(True)
                    args = (hidden, *args[1:])
                else:
                    hidden = kwargs["hidden_states"].detach().requires_grad_(True)
                    kwargs["hidden_states"] = hidden
                partition = _Partition()
                torch._dynamo.reset()
                compiled = torch.compile(module, backend=partition, dynamic=False)
                _backward(compiled(*args, **kwargs))
                kinds[name] = partition.saved(
                    lambda tensor, hidden=hidden: _storage_key(tensor) == _storage_key(hidden))
            loss = _loss_probe(model, train, mode)
    return {"kinds": kinds, **loss}


def _loss_probe(model: ModelSpec, train: TrainSpec, mode) -> dict:
    """The compiled loss over one chunk of logits in the compute dtype: bytes saved and gradient
    returned per token."""
    import torch.nn.functional as F

    chunks = TORCHTUNE_OUTPUT_CHUNKS if train.stack == "torchtune" else 1
    tokens = max(train.tokens // chunks, 1)
    dtype = TORCH_DTYPES["fp32" if train.upcasts_to_fp32 else train.dtype]

    def cross_entropy(logits, labels):
        return F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=-100)

    partition = _Partition()
    torch._dynamo.reset()
    with mode:
        logits = torch.empty(tokens, model.vocab_size, dtype=dtype).requires_grad_(True)
        labels = torch.randint(0, model.vocab_size, (tokens,))
        _backward(torch.compile(cross_entropy, backend=partition, dynamic=False)(logits, labels))
    saved = partition.saved(lambda tensor: _storage_key(tensor) == _storage_key(logits))
    return {"loss_saved_per_token": saved // tokens,
            "loss_gradient_per_token": partition.gradient_bytes() // tokens,
            "loss_chunk_tokens": tokens}
