"""How PyTorch's CUDA caching allocator rounds requests, and the device memory torch never sees.

Sources:
- ``c10/cuda/CUDACachingAllocator.cpp``: every block is rounded up to ``kMinBlockSize`` = 512
  bytes; requests up to 1 MiB come from 2 MiB segments, larger ones from 20 MiB segments or
  their own rounded size (``kSmallBuffer``, ``kLargeBuffer``, ``kRoundLarge`` = 2 MiB).
- cuBLAS workspace: ``CUBLAS_WORKSPACE_CONFIG`` default in ``aten/src/ATen/cuda/CublasHandlePool.cpp``
  is 4096 KiB x 2 + 16 KiB x 8 before Hopper (about 8 MiB) and 32 MiB on Hopper (sm90), one
  per handle and stream; torch allocates it through the caching allocator, so
  ``max_memory_allocated`` includes it (``torch/testing/_internal/common_cuda.py`` warms it
  before memory tests for that reason).
- CUDA context: outside the allocator, "a few hundred MiB" by driver, CUDA version and lazy
  module loading (``CUDA_MODULE_LOADING=LAZY``, default since CUDA 11.7). The default below is
  the middle of the 300-700 MiB range in DESIGN.md; ``lorasize calibrate`` replaces it.
- Reserved over allocated: the caching allocator keeps freed blocks in segments; how much it
  holds above the peak of allocated bytes depends on the allocation pattern. The default
  fraction is a starting point until profiles calibrate it (issue: calibration).
"""

from __future__ import annotations

from ..units import BYTES_PER_MIB, round_up

MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_SEGMENT_BYTES = 2 * BYTES_PER_MIB  # kSmallBuffer
LARGE_SEGMENT_BYTES = 20 * BYTES_PER_MIB  # kLargeBuffer

# cuBLAS workspace per handle: 4096 KiB * 2 + 16 KiB * 8 before Hopper, 32 MiB on Hopper and later.
CUBLAS_WORKSPACE_BYTES = 2 * 4096 * 1024 + 8 * 16 * 1024
CUBLAS_WORKSPACE_BYTES_HOPPER = 32 * BYTES_PER_MIB
HOPPER_AND_LATER = frozenset({"hopper", "blackwell"})

# CUDA context and loaded kernels, outside torch's allocator (DESIGN.md: 300 to 700 MiB).
DEFAULT_CUDA_CONTEXT_BYTES = 500 * BYTES_PER_MIB

# Reserved bytes held above the allocated peak, as a fraction of the bytes that come and go
# within a step (activations, logits, temporaries). Uncalibrated default.
DEFAULT_RESERVE_FRACTION = 0.10


def block(nbytes: int) -> int:
    """Bytes the caching allocator hands out for a request of ``nbytes`` (512-byte blocks)."""
    return round_up(max(int(nbytes), 1), MIN_BLOCK_BYTES) if nbytes else 0


def cublas_workspace_bytes(arch: str | None) -> int:
    """cuBLAS workspace for one handle on a GPU of this architecture."""
    return CUBLAS_WORKSPACE_BYTES_HOPPER if arch in HOPPER_AND_LATER else CUBLAS_WORKSPACE_BYTES
