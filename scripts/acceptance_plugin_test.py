"""The pytest plugin's memory budget on a real step (scripts/gpu-acceptance.sh): a LoRA linear
forward and backward, measured by the backend given with --lorasize-backend (cuda or tracker)."""

import pytest


@pytest.mark.memory_budget("64 MiB")
def test_a_small_lora_step_fits_its_budget(lorasize_memory):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = torch.nn.Linear(1024, 1024, bias=False, device=device).requires_grad_(False)
    a = torch.nn.Parameter(torch.randn(16, 1024, device=device) * 0.01)
    b = torch.nn.Parameter(torch.zeros(1024, 16, device=device))
    lorasize_memory.track(base, a, b)
    x = torch.randn(8, 128, 1024, device=device)
    out = base(x) + (x @ a.t()) @ b.t()
    out.float().pow(2).mean().backward()
    assert a.grad is not None and b.grad is not None
