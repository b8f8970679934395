"""lorasize: what LoRA and QLoRA fine-tuning and multi-adapter serving cost in memory.

The analytic core imports no torch. Typical use::

    from lorasize import estimate, resolve_model, LoraSpec, TrainSpec
    result = estimate(resolve_model("llama2-7b"), LoraSpec(r=64, targets=("all",)), TrainSpec())
    result.allocated_bytes
"""

__version__ = "0.1.0"

from .arch.catalog import gpu_from_catalog, model_from_catalog  # noqa: E402
from .errors import LorasizeError  # noqa: E402
from .estimate import Calibration, Estimate, adapter_file_bytes, estimate  # noqa: E402
from .gpu import GpuSpec  # noqa: E402
from .arch.lora import LoraSpec  # noqa: E402
from .arch.model import ModelSpec  # noqa: E402
from .arch.resolve import resolve_model  # noqa: E402
from .specs import ServeSpec, TrainSpec  # noqa: E402
from .units import format_bytes, parse_bytes  # noqa: E402

__all__ = [
    "Calibration", "Estimate", "GpuSpec", "LoraSpec", "LorasizeError", "ModelSpec", "ServeSpec",
    "TrainSpec", "adapter_file_bytes", "estimate", "format_bytes", "gpu_from_catalog",
    "model_from_catalog", "parse_bytes", "resolve_model",
]
