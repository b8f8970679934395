"""The trace tier: one real training step of the real Hugging Face model with the real PEFT
adapter, under torch's fake tensors, every live byte counted (see docs/trace.md).

``trace(...)`` runs in a subprocess (the trace patches globals) and imports torch there only;
importing this package imports no torch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict

from ..errors import LorasizeError, MissingExtraError
from ..arch.families import require_shipped_code
from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from .result import TraceResult

__all__ = ["TraceResult", "check_available", "compiled_probe", "probe", "trace", "trace_many"]

REQUIRED = ("torch", "transformers", "peft", "bitsandbytes")


def check_available() -> None:
    """Raise :class:`MissingExtraError` naming the missing package and the install command."""
    for module in REQUIRED:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError("lorasize trace", "torch", module)


def _item(model: ModelSpec, lora: LoraSpec, train: TrainSpec, options: dict) -> dict:
    return {"model": {"name": model.name, "hf_config": model.hf_config},
            "lora": asdict(lora), "train": asdict(train), **options}


def trace_many(configs: list[tuple], fake: bool = True, timeout: float = 1800,
               **options) -> list[dict]:
    """Trace several configurations in one subprocess; returns one dict per configuration:
    ``{"ok": True, "result": {...}}`` (:meth:`TraceResult.to_dict`) or
    ``{"ok": False, "error": "..."}``.

    Each configuration is ``(model, lora, train)`` or ``(model, lora, train, options)``.
    ``options`` (for all, or per configuration, which wins) go to
    :func:`lorasize.trace.run.trace_step`: ``fake``, ``round_to``, ``emulate``, ``real_bnb``,
    ``reentrant``."""
    check_available()
    payload = json.dumps([_item(m, lo, t, {**options, "fake": fake, **(rest[0] if rest else {})})
                          for m, lo, t, *rest in configs])
    done = subprocess.run([sys.executable, "-m", "lorasize.trace.worker"], input=payload,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LorasizeError(f"the trace process failed: {last}")
    return json.loads(done.stdout)


def trace(model: ModelSpec, lora: LoraSpec, train: TrainSpec, fake: bool = True) -> TraceResult:
    """Trace one configuration in a subprocess: two training steps, the second reported.

    Raises:
        MissingExtraError: torch, transformers, peft or bitsandbytes is not installed.
        LorasizeError: the architecture or setting cannot be traced (names it and the op).
    """
    if train.recast_embeddings and train.upcasts_to_fp32:
        raise LorasizeError("the trace runs no autocast, which TRL's recast of the embeddings and "
                            "head to bf16 after kbit preparation needs: trace without it")
    require_shipped_code(model, "trace")  # before a subprocess starts
    (outcome,) = trace_many([(model, lora, train)], fake)
    if not outcome["ok"]:
        raise LorasizeError(f"cannot trace {model.name}: {outcome['error']}")
    return TraceResult.from_dict(outcome["result"])


def probe(model: ModelSpec, lora: LoraSpec, train: TrainSpec, timeout: float = 600) -> dict[str, int]:
    """Bytes one decoder layer of each kind of a card model keeps for backward, measured by the
    layer probe (:mod:`lorasize.trace.layer_probe`) in a subprocess.

    Raises:
        MissingExtraError: torch, transformers, peft or bitsandbytes is not installed.
        LorasizeError: the probe failed (names the operation).
    """
    (outcome,) = trace_many([(model, lora, train, {"probe": True})], timeout=timeout)
    if not outcome["ok"]:
        hint = ""
        if model.num_experts and train.upcasts_to_fp32 and "dtype" in outcome["error"]:
            hint = ("; prepare_model_for_kbit_training makes the fused experts fp32, which "
                    "transformers 5's grouped-mm expert kernel refuses, so the real step fails "
                    "too: estimate it with --no-kbit-prep")
        raise LorasizeError(f"cannot probe the layers of {model.name}: {outcome['error']}{hint}")
    return {str(k): int(v) for k, v in outcome["result"].items()}


def compiled_probe(model: ModelSpec, lora: LoraSpec, train: TrainSpec,
                   timeout: float = 600) -> dict:
    """What one decoder layer of each kind and the loss keep for backward under torch.compile,
    decided by Inductor's partitioner (:mod:`lorasize.trace.compiled`), in a subprocess.

    Raises:
        MissingExtraError: torch, transformers, peft or bitsandbytes is not installed.
        LorasizeError: the probe failed (names the operation).
    """
    (outcome,) = trace_many([(model, lora, train, {"compiled": True})], timeout=timeout)
    if not outcome["ok"]:
        raise LorasizeError(f"cannot compile the layers of {model.name} on fake tensors: "
                            f"{outcome['error']}; --kernels fused estimates the eager ops' "
                            f"memory", source="--kernels compile")
    return outcome["result"]
