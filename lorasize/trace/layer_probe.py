"""The layer probe: bytes one decoder layer of each kind keeps for backward, measured on the
real layer code under fake tensors (a layer kind without an analytic formula: Mamba blocks,
gated delta nets, short convolutions, MLA).

Method (the derive prototype, ``shared/prototypes/derive``): build the real model with the real
adapter as the trace does, keep layer 0, the last layer and one representative of each kind
real, and swap every other decoder layer for a pass-through stub *before* any tensor exists, so
the model's own forward still builds every mask and rotary table each real layer receives. One
forward under fake tensors with the live-bytes tracker records the live bytes when each layer
list entry is entered; a representative's bytes are ``live(next entry) - live(its entry)``: what
it saved for backward, its input released once the model's loop rebinds the hidden states.
Measured entry to entry; a representative is neither the first layer (its input, the frozen
embedding's output, needs no gradient) nor the last (its output feeds the final norm) where the
kind has another. Gradient checkpointing is off while probing: the estimate keeps its own
checkpointing model (each layer's input kept, one layer recomputed), which needs these bytes.

The probe counts what the *torch* code paths save. transformers falls back to torch functions
where an optional CUDA kernel package (mamba-ssm, causal-conv1d, flash-linear-attention) is
missing, and those save more than the kernels, which recompute chunk states in backward: the
figure is an upper bound on a GPU that has the kernels installed.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..arch.lora import LoraSpec, first_adapted_layer, resolve_targets
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from .build import build, quiet
from .emulation import cuda_emulation, workspace
from .tracker import LiveBytesTracker


class Stub(torch.nn.Module):
    """Stands in for a decoder layer: returns the hidden states it is given, holds no tensor.
    Where the model's loop unpacks a layer's output (a tuple in older modeling files), it
    returns the first real layer's output with the hidden states in front (``template``)."""

    def __init__(self, template: dict):
        super().__init__()
        self.template = template

    def forward(self, hidden_states, *args, **kwargs):
        rest = self.template.get("rest")
        return hidden_states if rest is None else (hidden_states, *rest)


def representatives(model: ModelSpec) -> dict[str, int]:
    """The layer that stands for each kind: its last one that is neither the first nor the last
    layer of the model, where the kind has one. The latest such layer sees an input that
    needs a gradient whenever any layer of another kind before it holds an adapter (with q,v
    targets on a hybrid model, layers before the first attention layer save nothing)."""
    card = model.card
    ends = {0, card.num_layers - 1}
    return {kind.name: next((i for i in reversed(kind.layers) if i not in ends), kind.layers[0])
            for kind in card.kinds}


def probe_kinds(model: ModelSpec, lora: LoraSpec, train: TrainSpec) -> dict[str, int]:
    """See :func:`_probe`; a hybrid model whose cache the training forward cannot build
    without an attention layer in front ("get_seq_length can only be called on Attention
    layers": Bamba, Jamba, Zamba 2, all-Mamba Granite 4) is probed with ``use_cache=False``, as
    such a model must be trained."""
    try:
        return _probe(model, lora, train, {})
    except (ValueError, RuntimeError, AttributeError) as exc:
        if "get_seq_length" not in str(exc) and "cache" not in str(exc).lower():
            raise
        return _probe(model, lora, train, {"use_cache": False})


def _probe(model: ModelSpec, lora: LoraSpec, train: TrainSpec,
           forward_options: dict) -> dict[str, int]:
    """Bytes one layer of each kind keeps for backward (kind name -> bytes), at the step's
    batch, sequence, dtype, attention, targets and quantization, checkpointing off.

    Patches globals (the CUDA emulation): run it in a subprocess (:func:`lorasize.trace.probe`).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    reps = representatives(model)
    last = model.card.num_layers - 1
    # The first layer holding an adapter stays real too: after it every layer's input needs a
    # gradient, as in the whole model (with q,v targets on a hybrid model, a stubbed first
    # attention layer would leave the representatives after it saving nothing).
    first = 0 if train.method == "full" else first_adapted_layer(model, resolve_targets(model, lora))
    keep = set(reps.values()) | {0, last, first or 0}
    entered: dict[int, int] = {}
    holder: dict[str, LiveBytesTracker] = {}

    template: dict = {}

    def prepare(network) -> None:
        base = network.get_base_model() if hasattr(network, "get_base_model") else network
        layers = base.get_submodule(model.card.block_prefix)
        # Only what follows the hidden states is kept: holding the first layer's output would
        # keep it alive past the point the model's loop frees it.
        def keep_rest(module, args, output) -> None:  # (a hook returning a value replaces
            template.setdefault(                      # the output: this one returns None)
                "rest", tuple(output[1:]) if isinstance(output, tuple) else None)

        layers[0].register_forward_hook(keep_rest)
        for index in range(len(layers)):
            if index not in keep:
                layers[index] = Stub(template)
        for index, layer in enumerate(layers):
            def hook(module, args, index=index):
                tracker = holder.get("tracker")
                if tracker is not None and tracker.phase == "forward" and index not in entered:
                    entered[index] = tracker.total
            layer.register_forward_pre_hook(hook)

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    step = replace(train, grad_checkpointing=False)
    with cuda_emulation():
        network = build(model, lora, step, mode, prepare=prepare)
        with mode, quiet():
            ids = torch.randint(0, model.vocab_size, (train.batch_size, train.seq_len))
            tracker = LiveBytesTracker(workspace=workspace)
            tracker.track_model(network)
            tracker.add(ids, "inputs")
            holder["tracker"] = tracker
            with tracker:
                tracker.phase = "forward"
                network(input_ids=ids, labels=ids, **forward_options)
    return {name: entered[i + 1] - entered[i] for name, i in reps.items()
            if i in entered and i + 1 in entered}
