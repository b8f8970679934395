"""A callback for Hugging Face ``Trainer`` (and TRL's trainers, which are Trainers): every real
run checks its fit before the first step and leaves a profile that ``lorasize calibrate`` reads.

::

    from lorasize.integrations.transformers import LorasizeCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[LorasizeCallback(gpu="rtx-4090", seq_len=2048)])

At ``on_train_begin`` it reads the live model (config, the LoRA layers PEFT inserted, dtypes,
quantization, checkpointing) and the training arguments, estimates the step and logs the
estimate; when it will not fit it warns, or with ``stop_if_not_fits=True`` raises
:class:`DoesNotFit` before the first step. It then measures ``measure_steps`` optimizer steps
after ``warmup_steps`` ones (``torch.cuda`` peaks and pynvml on a GPU, the live-storage tracker on
a CPU), at the shape the data loader actually fed, and writes a profile (the ``profile``
command's schema, with the prediction beside the measurement) into ``out``.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from ..errors import LorasizeError

logger = logging.getLogger("lorasize")

PHASES = ("forward", "backward", "optimizer")


class DoesNotFit(RuntimeError):
    """The estimate says the run will not fit the GPU (raised before the first step)."""


def lorasize_optimizer(args) -> str:
    """The lorasize optimizer of ``TrainingArguments.optim`` (AdamW for names it does not know,
    with a log line)."""
    from ..recipes.optimizers import optimizer_of

    name = getattr(args.optim, "value", args.optim)
    found = optimizer_of(str(name))
    if found is None:
        logger.warning("lorasize: optimizer %s is not modelled; estimating AdamW", name)
        return "adamw"
    return found


class LorasizeCallback(TrainerCallback):
    """Estimate the run at its start, measure a few steps, write a profile.

    Args:
        gpu: a catalog GPU name to check the fit on; default the GPU the run uses (its
            memory), or no fit check on a CPU.
        seq_len: tokens per sequence for the first estimate; default the arguments'
            ``max_length`` (TRL) or ``max_seq_length``, else 512. The profile records the
            shape the data loader actually fed.
        stop_if_not_fits: raise :class:`DoesNotFit` at ``on_train_begin`` instead of warning.
        warmup_steps, measure_steps: optimizer steps to skip, then to measure (0 measures none).
        out: folder for the profile (created).
    """

    def __init__(self, gpu: str | None = None, seq_len: int | None = None,
                 stop_if_not_fits: bool = False, warmup_steps: int = 1, measure_steps: int = 2,
                 out: str = "profiles"):
        if warmup_steps < 0 or measure_steps < 0:
            raise LorasizeError("warmup_steps and measure_steps must be 0 or more",
                                source="LorasizeCallback")
        self.gpu_name, self.seq_len, self.stop = gpu, seq_len, stop_if_not_fits
        self.warmup, self.steps, self.out = warmup_steps, measure_steps, out
        self.prediction: dict | None = None
        self.profile_path: str | None = None
        self._backend = self._context = None
        self._hooks: list = []
        self._measurements: dict = {"oom": False, "phases": {}}
        self._step_times: list[float] = []
        self._shape: tuple[int, int] | None = None
        self._begin = 0.0

    # -- the estimate ----------------------------------------------------------------------
    def _specs(self, model, args, shape: tuple[int, int] | None = None):
        from .specs_from_model import specs_from_model

        seq_len = (shape[1] if shape else None) or self.seq_len or getattr(args, "max_length", None) \
            or getattr(args, "max_seq_length", None) or 512
        batch = shape[0] if shape else args.per_device_train_batch_size
        return specs_from_model(model, batch_size=int(batch), seq_len=int(seq_len),
                                optimizer=lorasize_optimizer(args),
                                grad_accum=int(args.gradient_accumulation_steps),
                                mixed_precision=bool(args.bf16 or args.fp16))

    def _gpu(self, model):
        import torch

        from ..arch.catalog import gpu_from_catalog
        from ..gpu import with_memory

        if self.gpu_name:
            return gpu_from_catalog(self.gpu_name)
        device = next(model.parameters()).device
        if device.type != "cuda":
            return None
        total = torch.cuda.get_device_properties(device).total_memory
        return with_memory(None, f"{total}B", source="the run's GPU")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ..estimate import estimate
        from ..units import format_bytes

        live = self._specs(model, args)
        gpu = self._gpu(model)
        result = estimate(live.model, live.lora, live.train, gpu=gpu)
        self.prediction = _prediction(result, cpu=gpu is None)
        if gpu is None:
            logger.warning("lorasize: the step allocates %s of tensors at its peak (no GPU to "
                           "check the fit)", format_bytes(self.prediction["allocated_bytes"]))
        else:
            logger.warning("lorasize: the step needs %s at its peak on %s (%s): %s",
                           format_bytes(result.peak_bytes), gpu.name,
                           format_bytes(gpu.memory_bytes), "fits" if result.fits else "does not fit")
        if result.fits is False:
            message = (f"lorasize: this run needs {format_bytes(result.peak_bytes)} and "
                       f"{gpu.name} has {format_bytes(gpu.memory_bytes)}: it will run out of memory "
                       f"(try 'lorasize fit' for the batch or sequence that fits)")
            if self.stop:
                raise DoesNotFit(message)
            logger.warning(message)
        if self.steps:
            self._hooks = [model.register_forward_pre_hook(self._forward_begin, with_kwargs=True),
                           model.register_forward_hook(self._forward_end)]
        return control

    # -- measuring -------------------------------------------------------------------------
    def _measuring(self, state) -> bool:
        return self._backend is not None and self.warmup <= state.global_step < self.warmup + self.steps

    def _forward_begin(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs else None
        if ids is None and args:
            ids = args[0]
        if ids is not None and getattr(ids, "ndim", 0) == 2 and self._backend is not None:
            self._shape = (int(ids.shape[0]), int(ids.shape[1]))
        if self._backend is not None and module.training:
            self._phase_end("backward")  # an accumulated micro-batch's backward ended here
            self._backend.begin_phase("forward")
            self._phase = "forward"

    def _forward_end(self, module, args, output):
        if self._backend is not None and module.training:
            self._phase_end("forward")
            self._backend.begin_phase("backward")
            self._phase = "backward"

    def _phase_end(self, name: str) -> None:
        if getattr(self, "_phase", None) != name:
            return
        figures = self._backend.end_phase(name)
        kept = self._measurements["phases"].setdefault(name, {})
        for key, value in figures.items():
            kept[key] = max(kept.get(key, 0), value)
        self._phase = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.steps and state.global_step == self.warmup and self._backend is None:
            self._start(model, kwargs.get("optimizer"))
        if self._measuring(state):
            self._begin = time.perf_counter()
        return control

    def _start(self, model, optimizer) -> None:
        from ..profile.backends import CudaBackend, TrackerBackend

        device = next(model.parameters()).device
        if device.type == "cuda":
            self._backend = CudaBackend(device.index or 0)
        else:
            self._backend = TrackerBackend(model)
            if optimizer is not None:
                self._backend.tracker.track_optimizer(_inner(optimizer))
        self._backend.start()
        self._context = self._backend.context()
        self._context.__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._measuring(state):
            self._phase_end("backward")
            self._backend.begin_phase("optimizer")
            self._phase = "optimizer"
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._measuring(state):
            self._phase_end("optimizer")
            if self._backend.kind == "cpu" and optimizer is not None:
                self._backend.tracker.track_optimizer(_inner(optimizer))
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # global_step has been counted up: the step that ended is global_step - 1
        if self._backend is not None and self.warmup <= state.global_step - 1 < self.warmup + self.steps:
            self._step_times.append(time.perf_counter() - self._begin)
            if self._backend.kind == "cpu":
                import gc
                gc.collect()
            self._measurements["steady_bytes"] = max(self._measurements.get("steady_bytes", 0),
                                                     int(self._backend.live_bytes()))
            if state.global_step == self.warmup + self.steps:
                self._finish(args, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._backend is not None:  # training ended before the measured steps did
            self._finish(args, model)
        return control

    def _finish(self, args, model) -> None:
        backend, self._backend = self._backend, None
        self._context.__exit__(None, None, None)
        self._measurements.update(backend.stop())
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if not self._step_times:
            return
        self.profile_path = str(self._write(args, model, backend))
        logger.warning("lorasize: wrote %s", self.profile_path)

    def _write(self, args, model, backend):
        import re
        from dataclasses import asdict
        from pathlib import Path

        from ..estimate import estimate
        from ..profile.runner import _device, _versions, finish
        from ..profile.schema import SCHEMA_VERSION, write_profile

        live = self._specs(model, args, self._shape)
        result = estimate(live.model, live.lora, live.train, gpu=self._gpu(model))
        measurements = self._measurements
        finish(measurements, self._step_times, live.train.tokens * live.train.grad_accum)
        phases = measurements["phases"]
        measurements["peak_allocated_bytes"] = max(
            (f.get("peak_allocated_bytes", 0) for f in phases.values()), default=0)
        if backend.kind == "cuda":
            measurements["peak_reserved_bytes"] = max(
                (f.get("peak_reserved_bytes", 0) for f in phases.values()), default=0)
        data = {"schema_version": SCHEMA_VERSION, "versions": _versions(backend),
                "device": _device(backend), "config": {
                    "model": {"name": live.model.name, "hf_config": _shareable_config(model)},
                    "lora": asdict(live.lora), "train": asdict(live.train), "steps": len(self._step_times),
                    "warmup": self.warmup, "gpus": 1, "sharding": "none"},
                "measurements": measurements,
                "prediction": _prediction(result, cpu=backend.kind == "cpu"),
                "source": {"kind": "transformers-callback", "trainer_args": {
                    k: _plain(getattr(args, k, None)) for k in (
                        "per_device_train_batch_size", "gradient_accumulation_steps",
                        "gradient_checkpointing", "bf16", "fp16", "optim")}}}
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{live.model.name}-{live.train.method}-r{live.lora.r}-"
                      f"b{live.train.batch_size}-s{live.train.seq_len}-{data['device']['kind']}-"
                      f"trainer-{int(time.time())}")
        folder = Path(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        write_profile(data, path)
        return path


def _shareable_config(model) -> dict:
    """The model's config for the profile, without the local folder it was loaded from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    if "_name_or_path" in config:
        from .specs_from_model import _model_name

        config["_name_or_path"] = _model_name(base.config)
    return config


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _plain(value):
    return getattr(value, "value", value)


def _prediction(result, cpu: bool = False) -> dict:
    """The estimate's figures a measurement is compared with (on a CPU without the cuBLAS
    workspace, which only a GPU allocates)."""
    from ..memory.allocator import cublas_workspace_bytes

    allocated = result.allocated_bytes - (cublas_workspace_bytes(None) if cpu else 0)
    return {"allocated_bytes": allocated, "reserved_bytes": result.reserved_bytes,
            "peak_bytes": result.peak_bytes, "fits": result.fits,
            "breakdown": dict(result.breakdown), "lorasize_version": _version()}


def _version() -> str:
    from .. import __version__

    return __version__
