"""GPU catalog data: memory, dense bf16 throughput and memory bandwidth per card.

This module holds data only. Each entry of ``GPUS`` is a dict with these keys:

name
    Lowercase catalog name, unique (e.g. ``"a100-40gb"``).
aliases
    Tuple of lowercase alternative names.  Always includes the product name
    that ``nvidia-smi`` / ``torch.cuda.get_device_name()`` (or ``rocm-smi``)
    prints for the card, lowercased, so a detected device can be matched.
vendor
    ``"nvidia"`` or ``"amd"``.
arch
    Architecture family: volta, turing, ampere, ada, hopper, blackwell, cdna3.
memory_mib
    TOTAL device memory in MiB, as ``nvidia-smi`` prints it in the
    "Memory-Usage  used / TOTAL" column (``rocm-smi --showmeminfo vram`` for
    AMD, converted from bytes).  This is what the driver reports as total, not
    the marketing "GB" figure, and not what is free for tensors: the CUDA
    context and driver reservations still come out of it.
    Values are for current drivers (R510 and later).  Older drivers subtracted
    a reserved region first and printed smaller totals for some cards, e.g.
    A100-40GB 40536, A100-80GB 81252, V100-16GB 16160, V100-32GB 32480/32510.
bf16_tflops
    Peak DENSE (no 2:4 sparsity) bf16 tensor-core TFLOP/s from the vendor
    datasheet or architecture whitepaper.  Datasheets usually headline the
    sparse figure; dense is half of it.  For GeForce cards the figure is the
    "bf16 with FP32 accumulate" rate, which is half the fp16-accumulate rate
    on those cards (FP32 accumulate is what training frameworks use).  Cards
    without bf16 (Turing, Volta) carry their fp16 tensor figure; the note says
    so.  Figures are at the vendor's rated boost clock.
matmul_tflops
    MEASURED dense bf16 (fp16 on Turing and Volta) ``torch.matmul`` TFLOP/s: the best square size
    from 1024 to 10240 (zzc0721/torch-performance-test-data) or the best shape found (Stas
    Bekman's MAMF finder), median of the card's public entries. Real clocks differ from the
    rated boost: GeForce cards reach their datasheet figure or more, data-center cards 75-87%
    of it. The step-time model times GEMMs and attention against it; absent where no
    measurement was found.
bandwidth_gbps
    Peak memory bandwidth in GB/s (1e9 bytes/s) from the datasheet.
fp32_tflops
    Peak fp32 throughput without tensor cores (datasheet): what a matmul of fp32 tensors runs
    at under torch's default ``allow_tf32=False`` (PEFT's fp32 adapters outside autocast).
sms
    Streaming multiprocessors (compute units on AMD) from the whitepaper: how many GEMM tiles
    run at once (NVIDIA, "Matrix Multiplication Background User's Guide", wave quantization).
link
    How GPUs of one server talk: ``nvlink`` (SXM boards: every GPU on NVSwitch), ``xgmi``
    (AMD Infinity Fabric), or ``pcie`` (PCIe cards; GeForce cards have no peer-to-peer, so NCCL
    goes through host memory).
link_gbps
    NVLink / Infinity Fabric bandwidth per GPU, one direction, GB/s (datasheet: A100 600 GB/s
    and H100 900 GB/s bidirectional); absent for PCIe cards.
pcie_gbps
    Host link, one direction, GB/s: 16 (PCIe 3 x16), 32 (PCIe 4 x16), 64 (PCIe 5 x16).
source
    Where the figures come from: "specs:" is the datasheet / whitepaper for
    bf16_tflops and bandwidth_gbps, "memory_mib:" is a public nvidia-smi /
    rocm-smi printout showing that total (a GitHub issue or PR where one was
    found).
note
    Caveats for the entry (fp16 instead of bf16, derived figures, variants
    that share the nvidia-smi name, and so on).
"""

GPUS = [
    # ------------------------------------------------------------------ Ampere (datacenter)
    dict(
        name="a100-40gb",
        aliases=(
            "a100",
            "a100-40g",
            "a100-sxm4-40gb",
            "nvidia a100-sxm4-40gb",
            "a100-pcie-40gb",
            "nvidia a100-pcie-40gb",
        ),
        vendor="nvidia",
        arch="ampere",
        memory_mib=40960,
        bf16_tflops=312.0,
        matmul_tflops=264.53,
        bandwidth_gbps=1555.0,
        fp32_tflops=19.5,
        sms=108,
        link="nvlink",
        link_gbps=300.0,
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf ; "
            "memory_mib: https://github.com/bottlerocket-os/bottlerocket-core-kit/pull/834 "
            "(driver 580, 40960MiB) and https://github.com/modal-labs/modal-client/pull/2797"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'A100 "
            "40GB' 246.33, 'A100 SXM4 80GB' 264.53; stas00/ml-engineering "
            "compute/accelerator/README.md @744d01e (MAMF): 'A100 SXM' 271.2 (the same GA100 chip "
            "and clocks in both memory sizes; median)"
        ),
        note=(
            "SXM4 and PCIe 40GB share these figures (PCIe has lower power limit). "
            "Drivers older than R510 print 40536MiB total "
            "(e.g. https://github.com/nanopool/phoenix-miner/issues/17)."
        ),
    ),
    dict(
        name="a100-80gb",
        aliases=(
            "a100-80g",
            "a100-sxm4-80gb",
            "nvidia a100-sxm4-80gb",
            "a100-sxm-80gb",
            "a100-80gb-pcie",
            "nvidia a100 80gb pcie",
        ),
        vendor="nvidia",
        arch="ampere",
        memory_mib=81920,
        bf16_tflops=312.0,
        matmul_tflops=264.53,
        bandwidth_gbps=2039.0,
        fp32_tflops=19.5,
        sms=108,
        link="nvlink",
        link_gbps=300.0,
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf ; "
            "memory_mib: https://github.com/allenai/PeerRead/issues/40 and "
            "https://github.com/NVIDIA/mig-parted/issues/31"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'A100 "
            "40GB' 246.33, 'A100 SXM4 80GB' 264.53; stas00/ml-engineering "
            "compute/accelerator/README.md @744d01e (MAMF): 'A100 SXM' 271.2 (the same GA100 chip "
            "and clocks in both memory sizes; median)"
        ),
        note=(
            "Bandwidth is the SXM4 figure; the 80GB PCIe card (same nvidia-smi total) is "
            "1935 GB/s. Very old drivers (R450) printed 81252MiB "
            "(https://github.com/keyu-tian/SparK/issues/8)."
        ),
    ),
    dict(
        name="a10",
        aliases=("nvidia a10",),
        vendor="nvidia",
        arch="ampere",
        memory_mib=23028,
        bf16_tflops=125.0,
        bandwidth_gbps=600.0,
        fp32_tflops=31.2,
        sms=72,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/"
            "a10-datasheet.pdf ; "
            "memory_mib: https://github.com/mayooot/detect-gpu/issues/3 "
            "(NVML total 24146608128 bytes = 23028 MiB) and "
            "https://github.com/modal-labs/modal-client/pull/2797"
        ),
        note="Datasheet lists 250 TFLOPS bf16 with sparsity; 125 is the dense figure.",
    ),
    dict(
        name="a10g",
        aliases=("nvidia a10g",),
        vendor="nvidia",
        arch="ampere",
        memory_mib=23028,
        bf16_tflops=70.0,
        bandwidth_gbps=600.0,
        fp32_tflops=31.2,
        sms=80,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/ "
            "(no NVIDIA datasheet exists; AWS-only part) ; "
            "memory_mib: https://github.com/NVIDIA/DCGM/issues/232 (8722MiB / 23028MiB)"
        ),
        note=(
            "AWS G5 variant of the A10. Tensor rate is GeForce-style (80 SMs x 1.71 GHz x "
            "512 flop/clk = 70 TFLOPS bf16 with FP32 accumulate), not the A10's 125; a "
            "measured bf16 matmul reached 69.5 TFLOPS "
            "(https://github.com/zzc0721/torch-performance-test-data/issues/126). "
            "Same memory and bandwidth as A10."
        ),
    ),
    # ------------------------------------------------------------------ Hopper
    dict(
        name="h100-80gb",
        aliases=(
            "h100",
            "h100-sxm",
            "h100-sxm5",
            "h100 80gb hbm3",
            "nvidia h100 80gb hbm3",
        ),
        vendor="nvidia",
        arch="hopper",
        memory_mib=81559,
        bf16_tflops=989.0,
        matmul_tflops=794.5,
        bandwidth_gbps=3350.0,
        fp32_tflops=66.9,
        sms=132,
        link="nvlink",
        link_gbps=450.0,
        pcie_gbps=64.0,
        source=(
            "specs: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet ; "
            "memory_mib: https://github.com/NVIDIA/nccl/issues/1264 and "
            "https://github.com/wilicc/gpu-burn/issues/114"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'H100 "
            "80GB HBM3' 797.51, 783.66; stas00/ml-engineering compute/accelerator/README.md "
            "@744d01e (MAMF): 'H100 SXM' 794.5 (median)"
        ),
        note=(
            "SXM5 part; nvidia-smi names it 'NVIDIA H100 80GB HBM3'. Datasheet 1979 TFLOPS "
            "bf16 is with sparsity (989.4 dense)."
        ),
    ),
    dict(
        name="h100-pcie",
        aliases=("h100-pcie-80gb", "h100 pcie", "nvidia h100 pcie"),
        vendor="nvidia",
        arch="hopper",
        memory_mib=81559,
        bf16_tflops=756.0,
        matmul_tflops=495.93,
        bandwidth_gbps=2000.0,
        fp32_tflops=51.2,
        sms=114,
        link="pcie",
        pcie_gbps=64.0,
        source=(
            "specs: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet "
            "(1513 TFLOPS bf16 sparse; dense 756 per "
            "https://github.com/qoofyk/LLM_Sizing_Guide/issues/3) ; "
            "memory_mib: 'NVIDIA H100 PCIe ... / 81559MiB' seen in several nvidia-smi printouts "
            "committed to public GitHub repositories (found by text search, no issue URL)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'H100 "
            "PCIe' 495.93"
        ),
        note="HBM2e, 114 SMs, 350 W. Bandwidth datasheet says 2 TB/s (TechPowerUp lists 2039 GB/s).",
    ),
    dict(
        name="h200",
        aliases=("h200-sxm", "h200-141gb", "nvidia h200"),
        vendor="nvidia",
        arch="hopper",
        memory_mib=143771,
        bf16_tflops=989.0,
        matmul_tflops=792.4,
        bandwidth_gbps=4800.0,
        fp32_tflops=66.9,
        sms=132,
        link="nvlink",
        link_gbps=450.0,
        pcie_gbps=64.0,
        source=(
            "specs: https://www.nvidia.com/en-us/data-center/h200/ ; "
            "memory_mib: 'NVIDIA H200 ... / 143771MiB' seen in many nvidia-smi printouts "
            "committed to public GitHub repositories (found by text search, no issue URL)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'H200' "
            "790.29; stas00/ml-engineering compute/accelerator/README.md @744d01e (MAMF): 'H100 "
            "SXM' 794.5, 'H200 is the same' (median)"
        ),
        note=(
            "SXM part (141 GB HBM3e). Datasheet 1979 TFLOPS bf16 is with sparsity. "
            "The H200 NVL ('NVIDIA H200 NVL') prints the same 143771MiB but is slower "
            "(lower power), so it is not aliased here."
        ),
    ),
    # ------------------------------------------------------------------ Ada (datacenter)
    dict(
        name="l4",
        aliases=("nvidia l4",),
        vendor="nvidia",
        arch="ada",
        memory_mib=23034,
        bf16_tflops=121.0,
        matmul_tflops=70.89,
        bandwidth_gbps=300.0,
        fp32_tflops=30.3,
        sms=58,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/en-us/data-center/l4/ ; "
            "memory_mib: https://github.com/speaches-ai/speaches/pull/438 (0MiB / 23034MiB) and "
            "https://github.com/modal-labs/modal-client/pull/2797"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'L4' 70.89"
        ),
        note="Datasheet 242 TFLOPS bf16 is with sparsity; 121 dense.",
    ),
    dict(
        name="l40s",
        aliases=("nvidia l40s",),
        vendor="nvidia",
        arch="ada",
        memory_mib=46068,
        bf16_tflops=362.05,
        matmul_tflops=269.15,
        bandwidth_gbps=864.0,
        fp32_tflops=91.6,
        sms=142,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/en-us/data-center/l40s/ ; "
            "memory_mib: https://github.com/akash-network/provider-configs/pull/99 "
            "(memory.total 46068 MiB) and https://github.com/wtdcode/vllm-backport/issues/14"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'L40S' "
            "269.15"
        ),
        note="Datasheet 733 TFLOPS bf16 is with sparsity; 362.05 dense.",
    ),
    # ------------------------------------------------------------------ Turing / Volta (no bf16)
    dict(
        name="t4",
        aliases=("tesla t4", "nvidia t4"),
        vendor="nvidia",
        arch="turing",
        memory_mib=15360,
        bf16_tflops=65.0,
        matmul_tflops=41.93,
        bandwidth_gbps=320.0,
        fp32_tflops=8.1,
        sms=40,
        link="pcie",
        pcie_gbps=16.0,
        source=(
            "specs: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/"
            "t4-tensor-core-datasheet-951643.pdf ; "
            "memory_mib: https://github.com/modal-labs/modal-client/pull/2797 "
            "(15360MiB; also in countless Colab/Kaggle nvidia-smi printouts)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'Tesla T4"
            " 16GB' fp16 41.91, 42.71, 41.93 (median; no bf16 on Turing)"
        ),
        note="T4 has no bf16; this is the fp16 (mixed precision) tensor figure.",
    ),
    dict(
        name="v100-16gb",
        aliases=(
            "v100",
            "v100-sxm2-16gb",
            "tesla v100-sxm2-16gb",
            "v100-pcie-16gb",
            "tesla v100-pcie-16gb",
        ),
        vendor="nvidia",
        arch="volta",
        memory_mib=16384,
        bf16_tflops=125.0,
        matmul_tflops=94.84,
        bandwidth_gbps=900.0,
        fp32_tflops=15.7,
        sms=80,
        link="nvlink",
        link_gbps=150.0,
        pcie_gbps=16.0,
        source=(
            "specs: https://images.nvidia.com/content/technologies/volta/pdf/"
            "volta-v100-datasheet-update-us-1165301-r5.pdf ; "
            "memory_mib: 'Tesla V100-SXM2-16GB ... / 16384MiB' seen in many nvidia-smi printouts "
            "(driver 535+) committed to public GitHub repositories (no issue URL); "
            "older drivers print 16160MiB (https://github.com/4paradigm/k8s-vgpu-scheduler/issues/7)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'Tesla "
            "V100-SXM2-16GB' fp16 94.84 (no bf16 on Volta)"
        ),
        note=(
            "V100 has no bf16; this is the fp16 tensor figure for SXM2 (the PCIe card is "
            "112 TFLOPS). Bandwidth 900 GB/s for both."
        ),
    ),
    dict(
        name="v100-32gb",
        aliases=(
            "v100-sxm2-32gb",
            "tesla v100-sxm2-32gb",
            "v100-pcie-32gb",
            "tesla v100-pcie-32gb",
        ),
        vendor="nvidia",
        arch="volta",
        memory_mib=32768,
        bf16_tflops=125.0,
        matmul_tflops=94.84,
        bandwidth_gbps=900.0,
        fp32_tflops=15.7,
        sms=80,
        link="nvlink",
        link_gbps=150.0,
        pcie_gbps=16.0,
        source=(
            "specs: https://images.nvidia.com/content/technologies/volta/pdf/"
            "volta-v100-datasheet-update-us-1165301-r5.pdf ; "
            "memory_mib: https://github.com/Wan-Video/Wan2.1/issues/5 "
            "(driver 525, 308MiB / 32768MiB); older drivers print 32480MiB "
            "(https://github.com/godweiyang/GrabGPU/issues/5)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'Tesla "
            "V100-SXM2-16GB' fp16 94.84 (the same GV100 chip; no bf16 on Volta)"
        ),
        note=(
            "V100 has no bf16; fp16 tensor figure for SXM2 (PCIe 112 TFLOPS). "
            "The V100S ('Tesla V100S-PCIE-32GB', 130 TFLOPS, 1134 GB/s) is not aliased here."
        ),
    ),
    # ------------------------------------------------------------------ workstation / consumer
    dict(
        name="rtx-a6000",
        aliases=("a6000", "rtx a6000", "nvidia rtx a6000"),
        vendor="nvidia",
        arch="ampere",
        memory_mib=49140,
        bf16_tflops=154.8,
        matmul_tflops=123.34,
        bandwidth_gbps=768.0,
        fp32_tflops=38.7,
        sms=84,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf "
            "(RTX A6000: bf16 FP32-accumulate 154.8 / 309.7 sparse) and "
            "https://www.nvidia.com/en-us/design-visualization/rtx-a6000/ ; "
            "memory_mib: https://github.com/noonghunna/club-3090/issues/1047 (49140 MiB)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'RTX "
            "A6000' 123.34"
        ),
        note="Professional card: FP32-accumulate runs at full rate, unlike GeForce.",
    ),
    dict(
        name="rtx-3060",
        aliases=(
            "rtx-3060-12gb",
            "3060",
            "geforce rtx 3060",
            "nvidia geforce rtx 3060",
        ),
        vendor="nvidia",
        arch="ampere",
        memory_mib=12288,
        bf16_tflops=25.5,
        bandwidth_gbps=360.0,
        fp32_tflops=12.7,
        sms=28,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3060-3060ti/ "
            "and https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf "
            "(per-SM GeForce Ampere tensor rates) ; "
            "memory_mib: https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/790 "
            "(1MiB / 12288MiB)"
        ),
        note=(
            "12 GB model. bf16 figure is derived, not printed by NVIDIA: 28 SMs x 1.777 GHz x "
            "512 flop/clk (bf16, FP32 accumulate, GeForce half rate) = 25.5 TFLOPS. "
            "The 8 GB RTX 3060 prints the same product name; check memory_mib before trusting a match."
        ),
    ),
    dict(
        name="rtx-3090",
        aliases=("3090", "geforce rtx 3090", "nvidia geforce rtx 3090"),
        vendor="nvidia",
        arch="ampere",
        memory_mib=24576,
        bf16_tflops=71.0,
        matmul_tflops=76.58,
        bandwidth_gbps=936.2,
        fp32_tflops=35.6,
        sms=82,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf "
            "(RTX 3090: bf16 FP32-accumulate 71 / 142 sparse) ; "
            "memory_mib: https://github.com/noonghunna/club-3090/issues/1127 and "
            "https://github.com/noonghunna/club-3090/issues/751 (24576MiB)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'GeForce "
            "RTX 3090' 76.58, 'GeForce RTX 3090 24GB' 76.68, 'RTX 3090 24GB' 76.34 (median)"
        ),
        note="bf16 with FP32 accumulate (GeForce half rate); fp16 with fp16 accumulate is 142 dense.",
    ),
    dict(
        name="rtx-4080",
        aliases=("4080", "geforce rtx 4080", "nvidia geforce rtx 4080"),
        vendor="nvidia",
        arch="ada",
        memory_mib=16376,
        bf16_tflops=97.5,
        bandwidth_gbps=716.8,
        fp32_tflops=48.7,
        sms=76,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf "
            "(RTX 4080: bf16 FP32-accumulate 97.5 / 194.9 sparse) ; "
            "memory_mib: 'NVIDIA GeForce RTX 4080 ... / 16376MiB' seen in several nvidia-smi "
            "printouts committed to public GitHub repositories (no issue URL)"
        ),
        note=(
            "16 GB model; bf16 with FP32 accumulate (GeForce half rate). 76 SMs x 2.505 GHz x "
            "512 = 97.5. One printout showed 16384MiB (likely another driver/OS); 16376 is the "
            "common value. RTX 4080 SUPER is a different card and is not aliased."
        ),
    ),
    dict(
        name="rtx-4090",
        aliases=("4090", "geforce rtx 4090", "nvidia geforce rtx 4090"),
        vendor="nvidia",
        arch="ada",
        memory_mib=24564,
        bf16_tflops=165.2,
        matmul_tflops=165.26,
        bandwidth_gbps=1008.0,
        fp32_tflops=82.6,
        sms=128,
        link="pcie",
        pcie_gbps=32.0,
        source=(
            "specs: https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf "
            "(RTX 4090: bf16 FP32-accumulate 165.2 / 330.4 sparse) ; "
            "memory_mib: https://github.com/vllm-project/vllm/issues/7553 and "
            "https://github.com/RLinf/RLinf/issues/255 (24564MiB)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: the 24 GB"
            " RTX 4090 entries 165.71, 164.81, 163.09, 170.06, 173.31, 162.39 (median; 48 GB and "
            "4090D variants left out)"
        ),
        note="bf16 with FP32 accumulate (GeForce half rate); fp16 with fp16 accumulate is 330.3 dense.",
    ),
    # ------------------------------------------------------------------ Blackwell
    dict(
        name="rtx-5090",
        aliases=("5090", "geforce rtx 5090", "nvidia geforce rtx 5090"),
        vendor="nvidia",
        arch="blackwell",
        memory_mib=32607,
        bf16_tflops=209.5,
        matmul_tflops=238.04,
        bandwidth_gbps=1792.0,
        fp32_tflops=104.8,
        sms=170,
        link="pcie",
        pcie_gbps=64.0,
        source=(
            "specs: https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/"
            "nvidia-rtx-blackwell-gpu-architecture.pdf ; "
            "memory_mib: https://github.com/noonghunna/club-3090/issues/617 (492MiB / 32607MiB)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'RTX 5090"
            " 32GB' 236.03, 242.18, 'GeForce RTX 5090' 221.65, 240.05 (median)"
        ),
        note=(
            "bf16 with FP32 accumulate (GeForce half rate): 170 SMs x 2.407 GHz x 512 = 209.5 "
            "(fp16 sparse headline is 838). Measured bf16 matmuls reach ~235 TFLOPS because "
            "real boost clocks exceed the rated 2.41 GHz "
            "(https://github.com/zzc0721/torch-performance-test-data/issues/96)."
        ),
    ),
    dict(
        name="b200",
        aliases=("b200-sxm", "nvidia b200"),
        vendor="nvidia",
        arch="blackwell",
        memory_mib=183359,
        bf16_tflops=2250.0,
        matmul_tflops=1720.5,
        bandwidth_gbps=8000.0,
        fp32_tflops=80.0,
        sms=148,
        link="nvlink",
        link_gbps=900.0,
        pcie_gbps=64.0,
        source=(
            "specs: https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200: 4.5 PFLOPS bf16 "
            "sparse per GPU) ; "
            "memory_mib: https://github.com/NVIDIA/TensorRT-LLM/issues/10278 (166593MiB / 183359MiB)"
            " ; matmul_tflops: zzc0721/torch-performance-test-data database.md @9d82827: 'B200 "
            "180GB' 1696.03; stas00/ml-engineering compute/accelerator/README.md @744d01e (MAMF): "
            "'B200 SXM' 1745.0 (median)"
        ),
        note=(
            "Datasheet bandwidth 8 TB/s; the driver-reported bus width gives 7.68 TB/s "
            "(https://github.com/pytorch/ao/pull/4002). Marketed as 192 GB / 180 GB usable."
        ),
    ),
    # ------------------------------------------------------------------ AMD
    dict(
        name="mi300x",
        aliases=("amd instinct mi300x", "amd instinct mi300x oam", "instinct mi300x"),
        vendor="amd",
        arch="cdna3",
        memory_mib=196592,
        bf16_tflops=1307.4,
        matmul_tflops=668.4,
        bandwidth_gbps=5300.0,
        fp32_tflops=163.4,
        sms=304,
        link="xgmi",
        link_gbps=448.0,
        pcie_gbps=64.0,
        source=(
            "specs: https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html ; "
            "memory_mib: https://github.com/ROCm/legacy-rocm-build/issues/4750 "
            "(rocm-smi --showmeminfo vram: 206141652992 bytes = 196592 MiB)"
            " ; matmul_tflops: stas00/ml-engineering compute/accelerator/README.md @744d01e "
            "(MAMF): 'AMD MI300X' 668.4 (ROCm 6.3, PYTORCH_TUNABLEOP_ENABLED=1)"
        ),
        note=(
            "Total from rocm-smi (no nvidia-smi). 192 GiB HBM3 is 196608 MiB; rocm-smi reports "
            "16 MiB less. bf16 1307.4 TFLOPS is dense (2614.9 with sparsity)."
        ),
    ),
]
