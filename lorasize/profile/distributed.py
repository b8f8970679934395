"""Multi-GPU profiling: the same training steps on N ranks under torchrun, FSDP2 or DDP.

``lorasize profile --gpus N --sharding fsdp|fsdp-grad-op|ddp`` writes a job file and launches
``python -m torch.distributed.run --standalone --nproc-per-node N -m lorasize.profile.distributed
JOB.json`` (``--standalone``: a rendezvous on a free local port, so runs never clash). Each rank
initialises the process group (nccl on CUDA, gloo on the CPU), builds the same model as the
single-GPU profiler (:func:`lorasize.trace.build.build`, same seed), wraps it with FSDP2
``fully_shard`` on each decoder layer and then the root (or with DDP), and runs the same measured
steps (:func:`lorasize.profile.runner.run_steps`) on its own synthetic batch of batch x seq
tokens. Rank 0 gathers every rank's measurements and writes one profile with a ``ranks`` list.

A rank that runs out of memory or fails writes its own ``rank<i>.json`` and exits non-zero;
torchrun then stops the other ranks (they may be waiting in a collective), and the launcher
assembles the profile from the rank files: an OOM is a result (``"oom": true`` for that rank),
any other failure a one-line error naming the rank.

On the CPU the trace tier's tracker counts each rank's real tensors. Two things differ from the
single-process run: FSDP2's parameters are ``DTensor`` wrappers whose memory is their local
shard (the tracker counts ``_local_tensor``), and FSDP2 frees and re-allocates the unsharded
parameters by resizing their storages (``_fsdp_param.free_storage`` / ``alloc_storage``), which
no aten op shows, so the tracker follows those two functions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import LorasizeError
from ..files import write_atomic
from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..specs import TrainSpec

SHARDINGS = ("fsdp", "fsdp-grad-op", "ddp")
BYTE_FIELDS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_peak_bytes", "context_bytes",
               "steady_bytes")
# The last stderr lines of a failed launch kept in the error message.
ERROR_TAIL_LINES = 1


class RankFailed(Exception):
    """A rank failed other than by running out of memory (or the launch itself failed)."""


class LaunchFailed(RankFailed):
    """torchrun failed and no rank said why (no rank wrote its file): a rendezvous or process
    start-up failure, which a second launch may not meet."""


# Launches tried when torchrun fails before any rank reports (seen once in CI on a loaded
# 2-core machine: ChildFailedError with no rank file; the next launch ran).
LAUNCH_ATTEMPTS = 2


def _sharded_tracker_class():
    import torch
    from torch.distributed.fsdp._fully_shard import _fsdp_param

    from ..trace.tracker import LiveBytesTracker

    def local(tensor):
        inner = getattr(tensor, "_local_tensor", None)  # a DTensor's shard on this rank
        return inner if isinstance(inner, torch.Tensor) else tensor

    class ShardedTracker(LiveBytesTracker):
        """The live-storage tracker for DTensor parameters and FSDP2's storage resizes."""

        def add(self, tensor, category: str) -> None:
            super().add(local(tensor), category)

        def recategorize(self, tensor, category: str) -> None:
            super().recategorize(local(tensor), category)

        def forget(self, tensor) -> None:
            super().forget(local(tensor))

        def _resized(self, tensor) -> None:
            storage = tensor.untyped_storage()
            entry = self._records.get(storage)
            if entry is None:
                self.add(tensor, "activations" if self.phase == "forward" else "temporaries")
                return
            record = entry[0]
            size = self._round(storage.nbytes())
            self.live[record[1]] += size - record[0]
            self.total += size - record[0]
            record[0] = size

        def __enter__(self):
            self._originals = (_fsdp_param.alloc_storage, _fsdp_param.free_storage)
            alloc, free = self._originals

            def alloc_storage(tensor):
                alloc(tensor)
                self._resized(tensor)

            def free_storage(tensor):
                free(tensor)
                self._resized(tensor)

            _fsdp_param.alloc_storage, _fsdp_param.free_storage = alloc_storage, free_storage
            return super().__enter__()

        def __exit__(self, *exc):
            _fsdp_param.alloc_storage, _fsdp_param.free_storage = self._originals
            return super().__exit__(*exc)

    return ShardedTracker


def _decoder_layers(network) -> list:
    """The modules transformers never splits across devices (the decoder layers)."""
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in network.modules() if type(m).__name__ in names]
    if not layers:
        raise LorasizeError(f"no decoder layers found to shard in {type(base).__name__}",
                            source="--sharding")
    return layers


def _quant_storage_as(network, dtype) -> None:
    """Re-type each 4-bit weight's packed bytes as ``dtype`` (bitsandbytes' ``quant_storage``):
    FSDP shards every parameter of a group in one dtype, so QLoRA under FSDP stores the packed
    NF4 bytes as the compute dtype (as transformers does with ``bnb_4bit_quant_storage``)."""
    import torch

    for module in network.modules():
        weight = getattr(module, "weight", None)
        if getattr(weight, "quant_state", None) is not None and weight.dtype == torch.uint8:
            # packed bytes (n, 1) as uint8 -> (n / itemsize, 1) as dtype, bitsandbytes' layout
            weight.data = weight.data.reshape(-1).view(dtype).reshape(-1, 1)
            weight.quant_storage = dtype
            module.quant_storage = dtype


def _wrap(network, sharding: str, cuda: bool, local_rank: int, world: int):
    if sharding == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[local_rank] if cuda else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if cuda else "cpu", (world,))
    # fsdp-grad-op (FSDP1's SHARD_GRAD_OP): the layers stay gathered from forward to backward.
    reshard = sharding == "fsdp"
    for layer in _decoder_layers(network):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(network, mesh=mesh, reshard_after_forward=reshard)
    return network


def _no_sync(network, sharding: str):
    """Gradient accumulation as the training loops do it: gradients are reduced on the last
    micro-batch only (DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync``, which keeps
    unsharded gradients until then)."""
    state: dict = {}

    def ddp(final: bool) -> None:
        if final:
            if state.pop("context", None) is not None:
                state["exit"]()
            return
        if "context" not in state:
            context = network.no_sync()
            context.__enter__()
            state.update(context=context, exit=lambda: context.__exit__(None, None, None))

    def fsdp(final: bool) -> None:
        network.set_requires_gradient_sync(final)

    return ddp if sharding == "ddp" else fsdp


def _rank_measure(job: dict, rank: int, local_rank: int, world: int) -> dict:
    import torch

    from ..trace.build import TORCH_DTYPES, build
    from ..trace.run import _optimizer, step_inputs
    from .backends import CudaBackend, TrackerBackend
    from .runner import _device, finish, run_steps

    model = ModelSpec.from_hf_config(job["model"]["hf_config"], name=job["model"]["name"])
    lora = LoraSpec(**dict(job["lora"], targets=tuple(job["lora"]["targets"])))
    train = TrainSpec(**job["train"])
    cuda = job["device"] == "cuda"
    device = f"cuda:{local_rank}" if cuda else "cpu"
    torch.manual_seed(0)  # every rank builds the same weights
    backend = CudaBackend(local_rank) if cuda else None
    load_start = time.perf_counter()
    network = build(model, lora, train, fake_mode=None, real_bnb=train.quantized)
    if train.quantized and job["sharding"].startswith("fsdp"):
        _quant_storage_as(network, TORCH_DTYPES[train.dtype])
    if cuda:
        network = network.to(device)
    measurements: dict = {"oom": False, "phases": {}}
    if not cuda:
        backend = TrackerBackend(network, tracker_class=_sharded_tracker_class())
    with backend.context():  # DDP's gradient buckets are allocated here: count them
        network = _wrap(network, job["sharding"], cuda, local_rank, world)
        if not cuda:
            backend.tracker.track_model(network)  # the sharded parameters replace the full ones
    measurements["load_seconds"] = round(time.perf_counter() - load_start, 4)
    torch.manual_seed(1 + rank)  # each rank its own batch, as a data-parallel sampler gives
    ids = torch.randint(0, model.vocab_size, (train.batch_size, train.seq_len), device=device)
    optimizer = _optimizer(train, [p for p in network.parameters() if p.requires_grad])
    step_times = run_steps(network, optimizer, step_inputs(ids, train), backend, measurements,
                           job["steps"],
                           job["warmup"], sync=torch.cuda.synchronize if cuda else None,
                           grad_accum=train.grad_accum, no_sync=_no_sync(network, job["sharding"]))
    finish(measurements, step_times, train.tokens * train.grad_accum)
    return {"rank": rank, "local_rank": local_rank, "status": "oom" if measurements["oom"] else "ok",
            "device": _device(backend, local_rank), **measurements}


def _combine(job: dict, ranks: list[dict], versions: dict, device: dict) -> dict:
    """One profile from the ranks: memory is the largest rank's (the one that runs out first),
    throughput the whole job's (every rank's tokens over the slowest rank's step)."""
    from .schema import SCHEMA_VERSION

    ranks = sorted(ranks, key=lambda r: r["rank"])
    oom = any(r["oom"] for r in ranks)
    measurements: dict = {"oom": oom, "phases": {}}
    for name in BYTE_FIELDS:
        values = [r.get(name) for r in ranks if r.get(name) is not None]
        measurements[name] = max(values) if values else None
    for rank in ranks:
        for phase, figures in rank.get("phases", {}).items():
            kept = measurements["phases"].setdefault(phase, {})
            for key, value in figures.items():
                kept[key] = max(kept.get(key, 0), value)
    measurements["load_seconds"] = max(r.get("load_seconds", 0.0) for r in ranks)
    if not oom and all("step_seconds" in r for r in ranks):
        step = max(r["step_seconds"] for r in ranks)
        train = job["train"]
        tokens = train["batch_size"] * train["seq_len"] * train.get("grad_accum", 1) * len(ranks)
        measurements.update(step_seconds=step, tokens_per_s=round(tokens / step, 3))
    config = {k: job[k] for k in ("model", "lora", "train", "steps", "warmup", "gpus", "sharding")}
    return {"schema_version": SCHEMA_VERSION, "versions": versions, "device": device,
            "config": config, "measurements": measurements, "ranks": ranks}


def _worker(job_path: str) -> int:
    """One rank (run by torchrun)."""
    import torch
    import torch.distributed as dist

    from .runner import _device, _versions

    job = json.loads(Path(job_path).read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    cuda = job["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        result = _rank_measure(job, rank, local_rank, world)
    except Exception as exc:  # noqa: BLE001 -- a failing rank is recorded, then torchrun stops the rest
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        bad_input = isinstance(exc, LorasizeError)
        text = str(exc.args[0] if bad_input else exc).strip()
        result = {"rank": rank, "local_rank": local_rank, "oom": oom,
                  "status": "oom" if oom else "error", "kind": type(exc).__name__,
                  "error": text.splitlines()[0] if text else type(exc).__name__,
                  "bad_input": bad_input, "source": getattr(exc, "source", None)}
    if result["status"] != "ok":
        write_atomic(Path(job["rank_dir"]) / f"rank{rank}.json", json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(1)  # peers may be blocked in a collective; torchrun tears them down
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    if rank == 0:
        from .backends import MemoryBackend

        backend = MemoryBackend()
        backend.kind = job["device"]
        if cuda:
            from .backends import nvml_handle
            backend.pynvml, _ = nvml_handle(local_rank)
        profile = _combine(job, gathered, _versions(backend), _device(backend, local_rank))
        write_atomic(job["result"], json.dumps(profile) + "\n")
    dist.destroy_process_group()
    return 0


def profile_distributed(model: ModelSpec, lora: LoraSpec, train: TrainSpec, gpus: int,
                        sharding: str, steps: int = 3, warmup: int = 1, device: str = "cpu",
                        timeout: float | None = None) -> dict:
    """Profile ``gpus`` ranks under torchrun; returns the profile (``ranks`` per rank).

    Raises:
        LorasizeError: bad input found by a rank (a target the model lacks...), naming the flag.
        RankFailed: a rank failed otherwise, or the launch itself failed (names the rank).
    """
    if sharding not in SHARDINGS:
        raise LorasizeError(f"must be one of {', '.join(SHARDINGS)}", source="--sharding")
    work = Path(tempfile.mkdtemp(prefix="lorasize-dist-"))
    job = {"model": {"name": model.name, "hf_config": model.hf_config}, "lora": asdict(lora),
           "train": asdict(train), "steps": steps, "warmup": warmup, "gpus": gpus,
           "sharding": sharding, "device": device, "result": str(work / "profile.json"),
           "rank_dir": str(work)}
    write_atomic(work / "job.json", json.dumps(job))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(gpus), "--max-restarts", "0",
               "-m", "lorasize.profile.distributed", str(work / "job.json")]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    try:
        for attempt in range(1, LAUNCH_ATTEMPTS + 1):
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=env)
            try:
                return collect(job, done.returncode, done.stderr)
            except LaunchFailed:
                if attempt == LAUNCH_ATTEMPTS:
                    raise
    except subprocess.TimeoutExpired:
        raise RankFailed(f"the {gpus} ranks did not finish in {timeout:g} s") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stderr_reason(stderr: str) -> str:
    """The line of torchrun's output that says why: the last naming an error, else the last
    that is not one of its ``=====`` banners."""
    lines = [l.strip() for l in stderr.strip().splitlines() if l.strip().strip("=")]
    # torchrun's summary names each failed rank's exit code or signal: more than its
    # ChildFailedError banner says
    exits = [l for l in lines if l.startswith(("exitcode", "error_file", "Signal"))]
    named = [l for l in lines if ("Error" in l or "error:" in l)
             and not l.rstrip().endswith("ChildFailedError:")]
    return (exits[:1] or named or lines or ["no output"])[-ERROR_TAIL_LINES]


def collect(job: dict, returncode: int, stderr: str) -> dict:
    """The profile a torchrun launch left: rank 0's when every rank finished, else one made
    from the ranks' own files (``rank<i>.json`` in ``job["rank_dir"]``).

    Raises:
        LorasizeError: bad input found by a rank, naming the flag.
        RankFailed: a rank failed other than by running out of memory, or no rank said why.
    """
    from .schema import validate_profile

    work = Path(job["rank_dir"])
    result = Path(job["result"])
    if returncode == 0 and result.is_file():
        return validate_profile(json.loads(result.read_text()), "rank 0")
    failed = sorted((json.loads(p.read_text()) for p in work.glob("rank*.json")),
                    key=lambda r: r["rank"])
    errors = [r for r in failed if r["status"] == "error"]
    if errors and errors[0]["bad_input"]:  # bad input, found by the ranks' build
        raise LorasizeError(errors[0]["error"], source=errors[0]["source"])
    if errors:
        raise RankFailed(f"rank {errors[0]['rank']} failed: {errors[0]['kind']}: "
                         f"{errors[0]['error']}")
    if not failed:
        raise LaunchFailed(f"torchrun failed: {_stderr_reason(stderr)}")
    # Out of memory on some rank: torchrun stopped the others mid-step.
    seen = {r["rank"] for r in failed}
    ranks = failed + [{"rank": i, "local_rank": i, "oom": False, "status": "stopped"}
                      for i in range(job["gpus"]) if i not in seen]
    from .backends import MemoryBackend
    from .runner import _versions

    backend = MemoryBackend()
    backend.kind = "cpu"  # the launcher reads no device; the driver version is left out
    device = {"kind": job["device"], "name": job["device"], "memory_bytes": None}
    return validate_profile(_combine(job, ranks, _versions(backend), device), "launcher")


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
