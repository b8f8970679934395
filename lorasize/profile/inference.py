"""Inference profiling: adapter load, swap and memory, and generation latency.

On the real stack (PEFT's ``load_adapter``, ``set_adapter``, ``delete_adapter``, transformers'
``generate``): the base loads, one adapter is saved with ``save_pretrained`` and loaded K times
under different names; the memory after each load gives the per-adapter slope (least squares),
which the serving model (``lorasize.serving.serve.adapter_resident_bytes``) predicts. Generation latency
for N new tokens is taken on the base alone, with the adapter unmerged, and merged (the published
measurement found unmerged LoRA 45% slower than merged), with the prompt's forward (prefill)
timed apart, so the decode time per token is (generate - prefill) / (N - 1), and one request's
throughput is N / generate: the quantities ``serve`` predicts (``lorasize.perf.inference``).
"""

from __future__ import annotations

import tempfile
import time

from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..specs import TrainSpec


def _slope(points: list[tuple[int, int]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / denominator if denominator else 0.0


def _timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def _prefill_seconds(model, ids) -> float:
    """One forward of the prompt, without gradients, the device synchronised around it."""
    import torch

    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        sync()
        start = time.perf_counter()
        model(input_ids=ids)
        sync()
    return time.perf_counter() - start


def profile_inference(model: ModelSpec, lora: LoraSpec, train: TrainSpec, adapters: int = 4,
                      new_tokens: int = 8, prompt_tokens: int = 16, backend=None) -> dict:
    """Measure adapter loading and generation; ``backend`` reports live bytes (CPU tracker or
    torch.cuda), see :mod:`lorasize.profile.backends`."""
    import torch
    from peft import PeftModel, get_peft_model

    from ..trace.build import _peft_config, build, quiet

    torch.manual_seed(0)
    with quiet():
        base_seconds, base = _timed(build, model, lora, TrainSpec(method="full", dtype=train.dtype))
        base.eval()
        for param in base.parameters():
            param.requires_grad_(False)
        with tempfile.TemporaryDirectory(prefix="lorasize-adapter-") as folder:
            donor = build(model, lora, TrainSpec(method="full", dtype=train.dtype))
            get_peft_model(donor, _peft_config(model, lora)).save_pretrained(folder)
            del donor
            live = backend.live_bytes
            with backend.context():
                before = live()
                first_seconds, peft_model = _timed(PeftModel.from_pretrained, base, folder,
                                                   adapter_name="a0")
                points = [(1, live() - before)]
                load_seconds = []
                for index in range(1, adapters):
                    seconds, _ = _timed(peft_model.load_adapter, folder, adapter_name=f"a{index}")
                    load_seconds.append(seconds)
                    points.append((index + 1, live() - before))
                set_seconds, _ = _timed(peft_model.set_adapter, "a1" if adapters > 1 else "a0")
                ids = torch.randint(0, model.vocab_size, (1, prompt_tokens))
                generate = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                peft_model.generate(input_ids=ids, **generate)  # warm-up
                unmerged, _ = _timed(peft_model.generate, input_ids=ids, **generate)
                prefill = {"unmerged": _prefill_seconds(peft_model, ids)}
                with peft_model.disable_adapter():
                    base_only, _ = _timed(peft_model.generate, input_ids=ids, **generate)
                    prefill["base"] = _prefill_seconds(peft_model, ids)
                if adapters > 1:
                    delete_seconds, _ = _timed(peft_model.delete_adapter, f"a{adapters - 1}")
                else:
                    delete_seconds = None
                merged_model = peft_model.merge_and_unload()
                merged, _ = _timed(merged_model.generate, input_ids=ids, **generate)
                prefill["merged"] = _prefill_seconds(merged_model, ids)
    return {
        "adapters_loaded": adapters, "base_load_seconds": round(base_seconds, 4),
        "first_adapter_load_seconds": round(first_seconds, 4),
        "adapter_load_seconds": [round(s, 4) for s in load_seconds],
        "set_adapter_seconds": round(set_seconds, 6),
        "delete_adapter_seconds": None if delete_seconds is None else round(delete_seconds, 6),
        "bytes_after_each_adapter": [b for _, b in points],
        "bytes_per_adapter": int(round(_slope(points))) if len(points) > 1 else points[0][1],
        "generate_new_tokens": new_tokens,
        "generate_seconds": {"base": round(base_only, 4), "unmerged": round(unmerged, 4),
                             "merged": round(merged, 4)},
        "prompt_tokens": prompt_tokens,
        "prefill_seconds": {k: round(v, 5) for k, v in prefill.items()},
        "decode_ms_per_token": {
            k: round(1e3 * max(total - prefill[k], 0.0) / max(new_tokens - 1, 1), 4)
            for k, total in (("base", base_only), ("unmerged", unmerged), ("merged", merged))},
        # serve's throughput at --concurrency 1: tokens generated a second, the prefill included
        "throughput_tokens_per_s": {"base": round(new_tokens / base_only, 3),
                                    "adapters": round(new_tokens / unmerged, 3)},
    }
