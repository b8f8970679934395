"""What a trace reports, importable without torch (the CLI and ``lorasize check`` read it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

EMULATION_VERSION = "torch-2.13/sm80/bnb-0.50/3"  # see lorasize/trace/emulation.py


@dataclass(frozen=True)
class TraceResult:
    """The peak of allocated bytes of one steady-state training step, as traced.

    Attributes:
        peak_bytes: the most tensor bytes live at once in the reported step, rounded as the CUDA
            caching allocator rounds (what ``torch.cuda.max_memory_allocated`` would report,
            without cuBLAS workspaces).
        breakdown: those bytes by category (``weights``, ``trainable``, ``gradients``,
            ``optimizer``, ``activations``, ``temporaries``, ``inputs``, ``workspace``).
        peak_op: ``phase:aten op`` at which the peak happened.
        phase_peaks: the peak of each phase (``forward``, ``backward``, ``optimizer``).
        trainable_params: parameters that require grad.
        seconds: wall time of build and steps in the worker.
        ops: aten ops dispatched over all traced steps.
        emulation: the CUDA-emulation version the numbers were made with.
        steps: peak, op, breakdown and phase peaks of every traced step.
        reserved_bytes: the bytes the CUDA caching allocator would hold reserved after the
            traced steps (their allocations replayed through
            :class:`lorasize.memory.caching_allocator.CachingAllocator`: what
            ``torch.cuda.max_memory_reserved`` would say over these steps, with the weights
            allocated first); 0 in results made before it was recorded.
        gradient_bytes: every gradient's bytes, as backward leaves them for the optimizer step
            (what is alive at the peak depends on which op inside a layer's backward it is).
    """

    peak_bytes: int
    breakdown: dict[str, int]
    peak_op: str
    phase_peaks: dict[str, int]
    trainable_params: int
    seconds: float = 0.0
    ops: int = 0
    emulation: str = EMULATION_VERSION
    steps: list = field(default_factory=list)
    reserved_bytes: int = 0
    gradient_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TraceResult":
        """The result from :meth:`to_dict`'s output (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
