"""What the user asked to train and serve: :class:`TrainSpec` and :class:`ServeSpec`.

Each validates itself on construction and names the flag at fault, so the CLI and the library
give the same messages.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

from .memory.activations import ATTN_IMPLEMENTATIONS
from .errors import LorasizeError
from .memory.optimizers import OPTIMIZERS
from .memory.quant import QUANT_TYPES

METHODS = ("lora", "qlora", "full")
# Training stacks whose memory behaviour differs (DESIGN.md, "Frameworks differ"):
# - hf-peft: Hugging Face transformers + PEFT + bitsandbytes (Trainer or a plain loop).
# - torchtune: QLoRA quantizes only the linears that carry LoRA (LoRALinear(quantize_base=True));
#   the model, adapters included, is built in the training dtype; the loss is
#   CEWithChunkedOutputLoss over 8 chunks of the output.
# - litgpt: lit-gpt finetune/lora.py: bf16-true precision (adapters in bf16), the head computed
#   in chunks of 128 tokens that Fabric hands back in fp32 (chunked_cross_entropy), every linear
#   quantized by Lightning's BitsandbytesPrecision. Each rule: lorasize/memory/stacks.py.
STACKS = ("hf-peft", "torchtune", "litgpt")
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
# eager: the model code's ops; fused: fused norm, rope, activation and loss kernels (step time
# only); compile: torch.compile (fused for step time, and what is saved for backward is what
# Inductor's partitioner keeps: lorasize/trace/compiled.py).
KERNELS = ("eager", "fused", "compile")
ADAPTER_DTYPES = ("fp32", "bf16", "fp16")
# PEFT's get_peft_model(autocast_adapter_dtype=True), the default, keeps bf16/fp16 adapter
# weights in fp32 (peft/tuners/tuners_utils.py, _cast_adapter_dtype).
TRAIN_ADAPTER_DTYPE = "fp32"


# What --stack-release names per stack, and the releases lorasize tells apart.
STACK_RELEASES = {"hf-peft": "the transformers release (4.x or 5.x)",
                  "litgpt": "a litgpt release (0.3.1, 0.4 ...; 0.0 for lit-gpt's 2023 code)",
                  "torchtune": "a torchtune release (0.1, 0.2, 0.3 ...)"}


def _release(stack: str, release: str) -> None:
    major = int(release.split(".")[0])
    ok = {"hf-peft": major >= 4, "torchtune": major == 0, "litgpt": major == 0}.get(stack, False)
    if stack not in STACK_RELEASES:
        raise LorasizeError(f"{stack}'s rules do not change between releases: drop it",
                            source="--stack-release")
    if not ok:
        raise LorasizeError(f"under --stack {stack} it is {STACK_RELEASES[stack]}, got {release!r}",
                            source="--stack-release")


def _positive(value: int, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LorasizeError(f"must be a positive integer, got {value!r}", source=flag)


@dataclass(frozen=True)
class TrainSpec:
    """One training step's setup.

    Attributes:
        method: ``lora`` (16-bit base), ``qlora`` (quantized base) or ``full`` fine-tuning.
        quant: ``nf4``, ``fp4``, ``int8`` or ``none``; ``None`` picks ``nf4`` for qlora, else none.
        double_quant: bitsandbytes double quantization of the 4-bit constants.
        dtype: compute and base-weight dtype.
        optimizer: one of :data:`lorasize.memory.optimizers.OPTIMIZERS`.
        batch_size: sequences per micro-batch.
        seq_len: tokens per sequence.
        grad_checkpointing: recompute each layer in backward; ``None`` means on exactly when
            ``prepare_model_for_kbit_training`` runs (its ``use_gradient_checkpointing=True``
            default turns it on).
        attn: ``sdpa`` (flash or memory-efficient kernels), ``flash`` (flash-attn 2: same memory)
            or ``eager``.
        kbit_prep: PEFT's ``prepare_model_for_kbit_training`` (upcasts every non-quantized
            parameter to fp32); ``None`` means on for qlora with the hf-peft stack, as PEFT's
            QLoRA recipes do.
        stack: the training framework, one of :data:`STACKS`.
        adapter_train_dtype: dtype of the trainable adapter weights (and so of their gradients
            and of AdamW's state, which is ``zeros_like`` the parameter); ``None``: the stack's
            (fp32 for hf-peft, whose ``autocast_adapter_dtype=True`` upcasts them; the compute
            dtype for torchtune and litgpt). bf16 with PEFT is
            ``get_peft_model(model, config, autocast_adapter_dtype=False)`` on a bf16 base.
        grad_accum: micro-batches per optimizer step (gradient accumulation); the effective
            batch is ``batch_size * grad_accum``.
        first_micro_batch: the peak micro-batch is the run's first, so nothing of an earlier one
            is alive (lit-gpt 2023 put its longest sample first); only stacks whose rules keep
            the previous micro-batch's tensors (``StackRules.previous_inputs_alive``) read it.
        kernels: ``eager`` (the model code's own PyTorch ops) or ``fused`` (fused norm, rope,
            activation and cross-entropy kernels: Liger, fms-acceleration, Transformer Engine,
            torch.compile). Step time only; memory is counted for the model code's ops.
            ``compile``: torch.compile of each decoder layer and of the loss (torchtune's
            ``compile: True``): fused for step time, and the activations are what Inductor's
            partitioner saves, measured on the real layer under fake tensors (needs torch).
        autocast: mixed-precision autocast runs the matmuls (transformers' Trainer with
            ``bf16=True``); False: a plain loop on a 16-bit model, where fp32 adapter weights
            (PEFT's default) compute in fp32, and after kbit preparation SDPA gets fp32 inputs.
            Step time, and the attention kernel's memory (autocast casts SDPA's inputs to 16
            bits: :func:`lorasize.memory.activations.sdpa_input_bytes`); the rest of the memory
            model is the step without it, as the trace runs it.
        recast_embeddings: after ``prepare_model_for_kbit_training``, the embeddings and the head
            go back to the compute dtype and the norms stay fp32, and autocast runs the head in
            the compute dtype: TRL's ``SFTTrainer`` with ``bf16=True`` up to its 0.1x releases
            (``peft_module_casting_to_bf16``, trl 0.13.0 ``trainer/sft_trainer.py`` lines
            224-233 and ``trainer/utils.py`` lines 872-879; later releases no longer prepare
            the model). Only with ``kbit_prep``.
        stack_release: the stack's release where its behaviour changed between releases
            (torchtune's: ``StackRules.quantize_only_targets_releases``; hf-peft's is the
            transformers release: before 5.0 a mixture of experts is one ``nn.Linear`` per
            expert, ``StackRules.expert_modules_before``; litgpt's before 0.3.1 rebuilt the fused
            q/k/v adapter's index every forward, ``StackRules.lora_index_rebuilt_before``);
            empty: its current release. Set by
            ``validate`` and the timing fit from a measurement's date, and by ``--stack-release``.
        bnb_release: the bitsandbytes release, where it changes the step: before 0.47 a 4-bit
            layer computes in its input's dtype when that is fp32 or bf16, whatever compute
            dtype it was given (:func:`lorasize.memory.quant.computes_in_input_dtype`); empty:
            the current release. Set by the timing fit from a measurement's stated release or
            date, and by ``--bnb-release``.
        padded: each micro-batch carries an attention mask with padding in it (a collator that
            pads to the sequence length): under SDPA every layer gets an explicit mask
            (:func:`lorasize.memory.activations.sdpa_mask`). Off: packed or equal-length
            sequences, whose all-ones mask transformers drops.
    """

    method: str = "lora"
    quant: str | None = None
    double_quant: bool = False
    dtype: str = "bf16"
    optimizer: str = "adamw"
    batch_size: int = 1
    seq_len: int = 512
    grad_checkpointing: bool | None = None
    attn: str = "sdpa"
    kbit_prep: bool | None = None
    stack: str = "hf-peft"
    adapter_train_dtype: str | None = None
    grad_accum: int = 1
    first_micro_batch: bool = False
    kernels: str = "eager"
    autocast: bool = True
    stack_release: str = ""
    recast_embeddings: bool = False
    bnb_release: str = ""
    padded: bool = False

    def __post_init__(self) -> None:
        _choice(self.stack, STACKS, "--stack")
        _choice(self.kernels, KERNELS, "--kernels")
        _choice(self.method, METHODS, "--method")
        _choice(self.dtype, COMPUTE_DTYPES, "--dtype")
        _choice(self.optimizer, OPTIMIZERS, "--optimizer")
        _choice(self.attn, ATTN_IMPLEMENTATIONS, "--attn")
        _positive(self.batch_size, "--batch-size")
        _positive(self.seq_len, "--seq-len")
        _positive(self.grad_accum, "--grad-accum")
        if self.stack_release and not re.fullmatch(r"\d+(\.\d+){0,2}", self.stack_release):
            raise LorasizeError(f"expected a release number such as 0.2.1, got "
                                f"{self.stack_release!r}", source="--stack-release")
        if self.stack_release:
            _release(self.stack, self.stack_release)
        if self.padded and self.stack != "hf-peft":
            raise LorasizeError("is for --stack hf-peft (transformers' attention masks); "
                                "torchtune and litgpt mask padding in their own code",
                                source="--padded")
        if self.bnb_release and not re.fullmatch(r"0(\.\d+){1,2}", self.bnb_release):
            raise LorasizeError(f"expected a bitsandbytes release such as 0.45.0, got "
                                f"{self.bnb_release!r}", source="--bnb-release")
        if self.adapter_train_dtype is not None:
            _choice(self.adapter_train_dtype, ADAPTER_DTYPES, "--adapter-train-dtype")
        quant = self.quant_type
        if quant != "none":
            _choice(quant, QUANT_TYPES, "--quant")
        if self.method == "qlora" and quant == "none":
            raise LorasizeError("qlora needs a quantized base (nf4, fp4 or int8)", source="--quant")
        if self.method == "full" and quant != "none":
            raise LorasizeError("full fine-tuning cannot train quantized weights; use --quant none "
                                "or --method qlora", source="--quant")

    @property
    def quant_type(self) -> str:
        """The quantization in effect: the one given, else nf4 for qlora, else none."""
        if self.quant is not None:
            return self.quant
        return "nf4" if self.method == "qlora" else "none"

    @property
    def fused_kernels(self) -> bool:
        """Fused kernels run the norms, rope, activations and loss (``fused`` or ``compile``)."""
        return self.kernels in ("fused", "compile")

    @property
    def quantized(self) -> bool:
        return self.quant_type != "none"

    @property
    def upcasts_to_fp32(self) -> bool:
        """Whether ``prepare_model_for_kbit_training`` runs (non-quantized params to fp32)."""
        if self.kbit_prep is None:
            return self.quantized and self.stack == "hf-peft"
        return self.kbit_prep and self.quantized

    @property
    def dequantizes_to_fp32(self) -> bool:
        """Whether each 4-bit base weight is dequantized to fp32: bitsandbytes before 0.47
        follows its fp32 input (:func:`lorasize.memory.quant.computes_in_input_dtype`), which
        kbit preparation's fp32 residual stream hands it (``MatMul4Bit.forward``:
        ``dequantize_4bit(B).to(A.dtype)``, a 16-bit weight and its fp32 copy at once). Under
        autocast the GEMM itself still runs in 16 bits. torchtune's NF4 is torchao's, which
        dequantizes to the weight's dtype; on an fp32 model the compute dtype is fp32 anyway."""
        from .memory.quant import computes_in_input_dtype

        return (self.quant_type in ("nf4", "fp4") and self.stack != "torchtune"
                and self.upcasts_to_fp32 and self.dtype != "fp32"
                and computes_in_input_dtype(self.bnb_release))

    @property
    def head_dtype(self) -> str:
        """Dtype of the unquantized embeddings and head: fp32 after kbit preparation unless
        recast to the compute dtype (``recast_embeddings``)."""
        if self.upcasts_to_fp32 and not self.recast_embeddings:
            return "fp32"
        return self.dtype

    @property
    def adapter_dtype(self) -> str:
        """Dtype of the trainable adapter weights during training."""
        if self.adapter_train_dtype is not None:
            return self.adapter_train_dtype
        return TRAIN_ADAPTER_DTYPE if self.stack == "hf-peft" else self.dtype

    @property
    def checkpointing(self) -> bool:
        """Whether gradient checkpointing is on, after the kbit-prep default."""
        if self.grad_checkpointing is None:
            return self.upcasts_to_fp32
        return self.grad_checkpointing

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch (what the memory peak depends on)."""
        return self.batch_size * self.seq_len

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step: micro-batch times gradient accumulation."""
        return self.batch_size * self.grad_accum


ENGINES = ("peft", "vllm", "sglang", "lorax")


@dataclass(frozen=True)
class ServeSpec:
    """Serving many adapters next to one base model.

    Attributes:
        engine: ``peft``, ``vllm``, ``sglang`` or ``lorax`` (see :mod:`lorasize.serving.serve`).
        dtype: dtype each resident adapter is held in with PEFT (``load_adapter`` keeps fp32);
            the other engines hold adapters in the model dtype.
        kv_tokens: KV-cache budget in tokens (all sequences together).
        max_lora_rank: the rank vLLM/SGLang slots are preallocated at; ``None``: the adapter's
            (rounded up to a rank vLLM accepts).
        gpu_memory_utilization: share of the GPU vLLM/SGLang may use.
        adapter_memory_fraction: share of the GPU LoRAX keeps for adapters.
    """

    dtype: str = "fp32"
    kv_tokens: int = 0
    engine: str = "peft"
    max_lora_rank: int | None = None
    gpu_memory_utilization: float = 0.9
    adapter_memory_fraction: float = 0.1

    def __post_init__(self) -> None:
        _choice(self.dtype, ADAPTER_DTYPES, "--serve-dtype")
        _choice(self.engine, ENGINES, "--engine")
        if isinstance(self.kv_tokens, bool) or not isinstance(self.kv_tokens, int) or self.kv_tokens < 0:
            raise LorasizeError(f"must be 0 or more, got {self.kv_tokens!r}", source="--serve-tokens")
        if self.max_lora_rank is not None:
            _positive(self.max_lora_rank, "--max-lora-rank")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise LorasizeError(f"must be in (0, 1], got {self.gpu_memory_utilization}",
                                source="--gpu-memory-utilization")
        if not 0 < self.adapter_memory_fraction <= 1:
            raise LorasizeError(f"must be in (0, 1], got {self.adapter_memory_fraction}",
                                source="--adapter-memory-fraction")


def _choice(value: str, allowed: tuple[str, ...], flag: str) -> None:
    if value not in allowed:
        raise LorasizeError(f"'{value}' is not one of {', '.join(allowed)}", source=flag)
