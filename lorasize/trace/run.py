"""Trace training steps of the real model under fake tensors and report what the tracker saw."""

from __future__ import annotations

import time

import torch

from ..memory.allocator import MIN_BLOCK_BYTES
from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from .build import build, quiet
from .emulation import cuda_emulation, fake_tensor_fixes, host_state, workspace
from .result import TraceResult
from ..memory.caching_allocator import CachingAllocator
from .tracker import LiveBytesTracker

TRACED_STEPS = 2  # optimizer state appears in step 1; step 2 is the steady state reported


def _optimizer(train: TrainSpec, params):
    name = train.optimizer
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)  # torch's CUDA default
    if name == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(params)
    from ..errors import LorasizeError
    raise LorasizeError(f"the trace runs torch and transformers optimizers; '{name}' is not traced "
                        f"yet", source="--optimizer")


def step_inputs(ids, train: TrainSpec) -> dict:
    """A micro-batch's keyword arguments: the tokens as labels too, and for a padded batch
    (``TrainSpec.padded``) an attention mask whose second half is padding."""
    inputs = {"input_ids": ids, "labels": ids}
    if train.padded:
        mask = torch.ones_like(ids)
        mask[:, train.seq_len // 2:] = 0
        inputs["attention_mask"] = mask
    return inputs


def trace_step(model: ModelSpec, lora: LoraSpec, train: TrainSpec, fake: bool = True,
               round_to: int = MIN_BLOCK_BYTES, emulate: bool = True,
               real_bnb: bool = False, reentrant: bool = False) -> TraceResult:
    """Run ``TRACED_STEPS`` real training steps (fake tensors unless ``fake=False``) in this
    process and return the last step's peak. Patches globals: call it in a subprocess.

    ``emulate=False`` keeps the CPU's own kernels (to compare real and fake runs of the same
    code); ``real_bnb`` quantizes with bitsandbytes' own ``Params4bit`` (real tensors only);
    ``reentrant`` checkpoints with ``use_reentrant=True`` (PEFT's kbit preparation default).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    start = time.perf_counter()
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    with (cuda_emulation() if emulate else fake_tensor_fixes()):
        network = build(model, lora, train, mode, real_bnb=real_bnb, reentrant=reentrant)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        context = mode if mode is not None else _null()
        with context, quiet():
            generator = None if fake else torch.Generator().manual_seed(0)
            ids = torch.randint(0, model.vocab_size, (train.batch_size, train.seq_len),
                                generator=generator)
            optimizer = _optimizer(train, [p for p in network.parameters() if p.requires_grad])
            tracker = LiveBytesTracker(round_to=round_to, workspace=workspace if emulate else None,
                                       allocator=CachingAllocator())
            tracker.track_model(network)
            inputs = step_inputs(ids, train)
            for tensor in {id(t): t for t in inputs.values()}.values():
                tracker.add(tensor, "inputs")
            steps = []
            with tracker:
                for _ in range(TRACED_STEPS):
                    tracker.reset_peak()
                    for _ in range(train.grad_accum):  # gradients accumulate across micro-batches
                        tracker.phase = "forward"
                        loss = network(**inputs).loss  # outputs dropped, as Trainer does
                        tracker.phase = "backward"
                        loss.backward()
                        del loss
                    tracker.phase = "optimizer"
                    gradient_bytes = tracker.live["gradients"]  # every gradient, before the step
                    optimizer.step()
                    _adalora_update(network, len(steps), tracker)
                    optimizer.zero_grad(set_to_none=True)
                    tracker.track_optimizer(optimizer)
                    if emulate:
                        for tensor in host_state(optimizer):
                            tracker.forget(tensor)
                    tracker.phase = "setup"
                    steps.append({"peak_bytes": tracker.peak, "peak_op": tracker.peak_op,
                                  "reserved_bytes": tracker.allocator.reserved,
                                  "gradient_bytes": gradient_bytes,
                                  "breakdown": dict(tracker.peak_breakdown),
                                  "phase_peaks": dict(tracker.phase_peaks)})
    last = steps[-1]
    return TraceResult(peak_bytes=last["peak_bytes"], breakdown=last["breakdown"],
                       peak_op=last["peak_op"], phase_peaks=last["phase_peaks"],
                       trainable_params=trainable, seconds=round(time.perf_counter() - start, 3),
                       ops=tracker.ops, steps=steps, reserved_bytes=last["reserved_bytes"],
                       gradient_bytes=last["gradient_bytes"])


def _adalora_update(network, step: int, tracker) -> None:
    """AdaLoRA's ``update_and_allocate``, where its training loop calls it (after the optimizer
    step, before ``zero_grad``); its importance scores are state like the optimizer's."""
    allocate = getattr(getattr(network, "base_model", None), "update_and_allocate", None)
    if allocate is None or not hasattr(network.base_model, "rankallocator"):
        return
    allocate(step)
    allocator = network.base_model.rankallocator
    for scores in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc):
        for tensor in scores.values():
            tracker.recategorize(tensor, "optimizer")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
