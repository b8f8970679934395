"""Training stacks: the framework behaviours that change memory, one named rule each.

``--stack`` (:data:`lorasize.specs.STACKS`) picks the framework that runs the step. Each rule below
applies to every run of that stack, as its code did when the published measurements were taken
(README, "Against published measurements"); each cites the lines it comes from. The Hugging Face +
PEFT stack is the reference the trace tier checks exactly; the other two differ from it only where
a rule says so.

- ``hf-peft``: transformers 5 + PEFT 0.21 + bitsandbytes 0.50 (see docs/memory-model.md).
- ``litgpt``: lit-gpt / litgpt ``finetune/lora.py`` (Oct 2023 to 2024) on Lightning Fabric's
  ``BitsandbytesPrecision`` with the bitsandbytes it pinned (0.41.1 in lit-gpt's resource tables,
  ``bitsandbytes==0.42.0`` in litgpt: "LitGPT only supports bitsandbytes v0.42.0").
- ``torchtune``: torchtune's single-device LoRA/QLoRA and full recipes (torchao NF4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackRules:
    """What a training stack does that changes memory.

    Attributes:
        quantize_head: the output head is quantized with the blocks (Lightning's
            ``BitsandbytesPrecision.init_context`` swaps every ``torch.nn.Linear`` class for a
            bitsandbytes one; litgpt passes no ``ignore_modules``).
        untied_head: the framework's model holds its own output head even when the Hugging Face
            checkpoint ties it to the embeddings (litgpt ``GPT.__init__`` always builds
            ``self.lm_head = nn.Linear(...)``; tying only with ``train.tie_embeddings``).
        quantize_only_targets_releases: the releases in which QLoRA quantizes only the linears
            that carry LoRA (torchtune <= 0.2.1: ``LoRALinear(quantize_base=True)``, the others
            plain ``nn.Linear``). From torchtune 0.3.0 every attention and MLP linear is
            quantized (``FrozenNF4Linear`` where no LoRA sits, pytorch/torchtune@898670f, PR
            #1119, 2024-07-29, first released in v0.3.0 on 2024-09-17); the output projection
            never is ("TODO: quantize_base is not applied to final output_proj currently",
            ``torchtune/models/llama3/_component_builders.py`` @bd2a0fc).
        quantized_saves_input: each quantized linear keeps its input until backward
            (bitsandbytes <= 0.43.1 ``MatMul4Bit.forward``: ``ctx.tensors = (A, B)`` whenever A or B
            needs a gradient; fixed in bitsandbytes PR #1270, 0.43.2, July 2024).
        dequant_bytes_extra: bytes per element of a dequantized weight on top of the compute
            dtype's: Lightning quantizes from ``weight.to(torch.half)``, so ``dequantize_4bit``
            returns fp16 and ``MatMul4Bit`` casts it with ``.to(A.dtype)`` (both live at the cast).
        matmul_copies: beside the weight it dequantizes, a 4-bit matmul holds its product
            (forward) or its input's gradient (backward), and the casts between fp32
            activations and the compute dtype: bitsandbytes 0.50 ``Linear4bit.forward``
            (``x.to(self.compute_dtype)``) and ``MatMul4Bit.backward`` (the trace of the same
            code shows them), torchao 0.1 ``linear_nf4`` (``F.linear(input, weight.to(...))``,
            torchtune's loop replayed shows them).
        fused_qkv_dropout: q, k and v share one LoRA dropout of their common input (litgpt
            ``LoRAQKVLinear`` is one module over the fused ``attn`` projection).
        fused_qkv_saves_lora_output: the fused q/k/v adapter keeps its output: litgpt
            ``LoRAQKVLinear.zero_pad`` scatters it with ``index_copy``, whose derivative
            (``source: grad.index_select(dim, index).expand_as(source)``) saves ``source``; with
            all of q, k and v adapted there is nothing to pad and nothing is saved.
        expands_gqa: k and v are expanded to every query head before attention and saved at
            that width (litgpt ``CausalSelfAttention.forward``: ``k.expand(...)`` "training: flash
            attention requires it"; torchtune ``MultiHeadAttention.forward``, every release from
            v0.2.0 to v0.6.0: ``k.expand(...)`` then a reshape or ``flatten(1, 2)`` that copies,
            ``torchtune/modules/attention.py`` @1814feb17 lines 284-290).
        logits_alive: the chunked logits stay referenced through backward next to the
            log-softmax outputs (litgpt ``fit()`` keeps ``logits`` in scope across
            ``fabric.backward``).
        lm_head_chunk: tokens per output-head chunk (litgpt ``lm_head_chunk_size=128``), 0 for none.
        logits_bytes: bytes per element of the logits the loss sees, 0 for the compute dtype's:
            Lightning Fabric's ``_FabricModule.forward`` returns ``precision.convert_output(output)``,
            and ``HalfPrecision`` / ``BitsandbytesPrecision.convert_output`` cast every float
            output to ``torch.get_default_dtype()``, float32 outside the forward context.
        fused_gelu: the MLP's GELU is torch's ``F.gelu(x, approximate=...)``, which saves only its
            input (litgpt ``GptNeoxMLP.forward``), where transformers' Phi and GPT-2 use the
            Python ``NewGELUActivation`` that saves four tensors.
        previous_inputs_alive: the previous micro-batch's quantized-linear inputs are still alive
            when the next forward ends. bitsandbytes <= 0.43.1 ``MatMul4Bit.forward`` keeps its
            input as a plain attribute (``ctx.tensors = (A, B)``), not through
            ``save_for_backward``, so backward does not release it: it lives as long as the graph
            node, and litgpt ``fit()`` keeps the graph referenced through ``logits`` until the next
            iteration's ``logits = model(input_ids, lm_head_chunk_size=128)`` returns (the old
            fp32 logits live until then too). Only a micro-batch that follows another is affected:
            litgpt 2024 (``CycleIterator`` over a ``DataLoader``) measures its peak at whichever
            iteration draws the longest batch, while lit-gpt 2023 forced the longest sample into
            the first iteration (``get_batch(fabric, train_data, longest_seq_ix if iter_num == 0
            else None)``), so nothing preceded its peak (``TrainSpec.first_micro_batch``).
        expert_modules_before: the first major release that no longer builds a mixture of
            experts from one ``nn.Linear`` per expert matrix (0: every release does as the
            current one): transformers 5.0 fused them into 3-D parameters bitsandbytes leaves in
            16 bits (``MixtralExperts.gate_up_proj``, transformers 5 ``modeling_mixtral.py``;
            the 5.0 release notes, "MoE experts are now fused"), where transformers 4 quantized
            each expert and looped over them (:attr:`lorasize.arch.model.ModelSpec.expert_modules`).
        unchunked_loss_releases: the releases whose recipes compute the loss on whole fp32
            logits: torchtune <= 0.2 (``recipes/lora_finetune_single_device.py`` @fef3ed10d:
            ``logits = self._model(input_ids)`` (the model's ``self.output(h).float()``), ``logits
            = logits[..., :-1, :].contiguous()``, ``torch.nn.CrossEntropyLoss``, and no ``del
            logits``, so the previous micro-batch's are alive); ``CEWithChunkedOutputLoss``
            replaced it in v0.3.0 (pytorch/torchtune@4fba6cd, 2024-08-28).
        device_build_releases: the releases that build the model on the GPU and quantize it
            there with torchao 0.1, whose segments stay reserved and whose dequantization holds
            14 bytes a weight element (torchtune 0.1.x: ``_setup_model`` builds under
            ``self._device``, pyproject pins ``torchao==0.1``; v0.2.0 moved to torchao 0.3.1):
            :mod:`lorasize.memory.init_programs`.
        lora_index_rebuilt_before: the first release that no longer rebuilds the fused q/k/v
            adapter's index tensor in every forward (step time, not memory). lit-gpt and litgpt
            before v0.3.1 ``LoRAQKVLinear.zero_pad``: ``torch.tensor(self.lora_ind,
            device=result.device)`` from a Python list of every adapted output index, whenever
            one of q, k and v has no adapter; the copy to the GPU synchronizes the CPU with it
            (Lightning-AI/litgpt #1374, 2024-04-29: "avoid copying it (and incurring an
            expensive cudaStreamSynchronize) every time this method is called"; #770,
            2024-05-06; both first released in v0.3.1 on 2024-05-08).
    """

    quantize_head: bool = False
    untied_head: bool = False
    quantize_only_targets_releases: tuple[str, ...] = ()
    quantized_saves_input: bool = False
    dequant_bytes_extra: int = 0
    matmul_copies: bool = False
    fused_qkv_dropout: bool = False
    fused_qkv_saves_lora_output: bool = False
    v_views_qkv: bool = False
    expands_gqa: bool = False
    logits_alive: bool = False
    lm_head_chunk: int = 0
    logits_bytes: int = 0
    fused_gelu: bool = False
    previous_inputs_alive: bool = False
    expert_modules_before: int = 0
    unchunked_loss_releases: tuple[str, ...] = ()
    device_build_releases: tuple[str, ...] = ()
    lora_index_rebuilt_before: str = ""


FP16 = 2
FP32 = 4
LITGPT_LM_HEAD_CHUNK = 128  # litgpt finetune/lora.py: model(input_ids, lm_head_chunk_size=128)
# torchtune releases whose QLoRA left the linears without LoRA in bf16 (git tags v0.1.0-v0.2.1)
TORCHTUNE_LORA_ONLY_NF4 = ("0.1", "0.2")
# ... and the day the release that quantizes them all came out (v0.3.0): measurements dated
# before it ran an earlier release (calibrate/validate.py).
TORCHTUNE_ALL_NF4_RELEASED = "2024-09-17"
# v0.2.0 (torchao 0.3.1 instead of 0.1; memory.init_programs models 0.1's build)
TORCHTUNE_02_RELEASED = "2024-07-16"
TORCHTUNE_DEVICE_BUILD = ("0.1",)
# litgpt v0.3.1 (2024-05-08) caches the fused q/k/v adapter's index tensor on each device; lit-gpt
# before it (2023, no release number: "0.0") and litgpt 0.1-0.3.0 rebuilt it every forward.
LITGPT_INDEX_CACHED = "0.3.1"
LITGPT_INDEX_CACHED_RELEASED = "2024-05-08"

# transformers 5.0 (first release candidate December 2025) fused the MoE experts; the hf-peft
# stack's release is the transformers one (``--stack-release 4.46``).
TRANSFORMERS_5_MAJOR = 5
TRANSFORMERS_FUSED_EXPERTS_MAJOR = TRANSFORMERS_5_MAJOR

# transformers 4.54.0 hands grouped-query k and v to SDPA as they are (``enable_gqa=True`` when
# there is no mask, ``use_gqa_in_sdpa`` in ``integrations/sdpa_attention.py``; huggingface/
# transformers#39412, merged 2025-07-16); 4.53.0 and earlier ``repeat_kv`` them to every query
# head first (both wheels read). Which kernel fp32 attention gets depends on it: the
# memory-efficient kernel takes fp32 but not grouped heads.
TRANSFORMERS_SDPA_GQA = "4.54"

# LoRA dropout a stack's recipes apply when a measurement does not state it: litgpt
# finetune/lora.py ``lora_dropout: float = 0.05`` (lit-gpt's finetune/lora.py @8641822 too; every
# config_hub/finetune/*/lora.yaml and qlora.yaml sets 0.05 or 0.1); torchtune's configs and PEFT's
# LoraConfig 0.0.
STACK_DEFAULT_DROPOUT = {"litgpt": 0.05}

STACK_RULES = {
    "hf-peft": StackRules(expert_modules_before=TRANSFORMERS_FUSED_EXPERTS_MAJOR,
                          matmul_copies=True),
    "litgpt": StackRules(quantize_head=True, untied_head=True, quantized_saves_input=True,
                         dequant_bytes_extra=FP16, fused_qkv_dropout=True,
                         fused_qkv_saves_lora_output=True, v_views_qkv=True, expands_gqa=True,
                         logits_alive=True, lm_head_chunk=LITGPT_LM_HEAD_CHUNK, logits_bytes=FP32,
                         fused_gelu=True, previous_inputs_alive=True,
                         lora_index_rebuilt_before=LITGPT_INDEX_CACHED),
    "torchtune": StackRules(expands_gqa=True, matmul_copies=True,
                           quantize_only_targets_releases=TORCHTUNE_LORA_ONLY_NF4,
                           unchunked_loss_releases=TORCHTUNE_LORA_ONLY_NF4,
                           device_build_releases=TORCHTUNE_DEVICE_BUILD),
}


def stack_rules(stack: str) -> StackRules:
    """The rules of a stack named in :data:`lorasize.specs.STACKS`."""
    return STACK_RULES[stack]


def quantizes_only_targets(stack: str, release: str) -> bool:
    """Whether QLoRA on ``stack`` at ``release`` (``0.2.1``; empty: the current one) quantizes
    only the linears that carry LoRA."""
    return _in_releases(release, stack_rules(stack).quantize_only_targets_releases)


def release_tuple(release: str) -> tuple[int, ...]:
    """``0.47.1`` as ``(0, 47, 1)``: releases compare as tuples."""
    return tuple(int(part) for part in release.split(".") if part.isdigit())


def expands_gqa_for_attention(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` (empty: the current one) repeats grouped-query k and v to
    every query head before SDPA: litgpt and torchtune always (``StackRules.expands_gqa``), the
    transformers releases before :data:`TRANSFORMERS_SDPA_GQA` too (hf-peft's release "4", a
    row dated before transformers 5 without a stated release, counts as one of them)."""
    if stack_rules(stack).expands_gqa:
        return True
    return stack == "hf-peft" and bool(release) and \
        release_tuple(release) < release_tuple(TRANSFORMERS_SDPA_GQA)


def builds_expert_modules(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` (empty: the current one) builds each expert matrix of a
    mixture of experts as its own ``nn.Linear`` (transformers 4)."""
    before = stack_rules(stack).expert_modules_before
    return bool(release and before) and int(release.split(".")[0]) < before


# Model types whose transformers 4 code held each expert as its own module of nn.Linear layers
# (v4.46-4.57: MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock,
# OlmoeSparseMoeBlock, PhimoeSparseMoeBlock and DeepseekV3MoE each hold
# ``experts = nn.ModuleList([...MLP(...) for _ in range(num_experts)])``); gpt-oss, Llama 4 and
# Granite MoE held 3-D expert parameters there too, and newer families never had a 4.x build.
EXPERT_MODULE_MODEL_TYPES = frozenset({"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe",
                                       "deepseek_v2", "deepseek_v3"})


def as_built(model, train):
    """``model`` as the training stack at ``train.stack_release`` builds it: transformers 4's
    per-expert linears where that release had them (:func:`builds_expert_modules`)."""
    from dataclasses import replace

    if (model.num_experts and model.model_type in EXPERT_MODULE_MODEL_TYPES
            and builds_expert_modules(train.stack, train.stack_release)):
        return replace(model, expert_modules=True)
    return model


# Model types whose transformers 4 ``ForCausalLM.forward`` computed the loss itself, with
# ``CrossEntropyLoss()`` on the head's output in the compute dtype and no ``.float()`` upcast
# (transformers 4.48.1 wheel: ``modeling_gpt_bigcode.py`` lines 1177-1186, and the same lines in
# ``modeling_gpt_neox.py``, ``modeling_falcon.py``, ``modeling_stablelm.py``, ``modeling_bloom.py``,
# ``modeling_dbrx.py``); the others call ``self.loss_function`` (``ForCausalLMLoss``, which
# upcasts, ``loss/loss_utils.py`` line 36), as every family does in transformers 5.
UNCAST_LOSS_MODEL_TYPES = frozenset({"gpt_bigcode", "gpt_neox", "falcon", "stablelm", "bloom",
                                     "dbrx"})


def runs_transformers_4(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` is the Hugging Face stack on a transformers 4 release
    (hf-peft's release is the transformers one; empty: the current one, transformers 5)."""
    return stack == "hf-peft" and bool(release) and \
        int(release.split(".")[0]) < TRANSFORMERS_5_MAJOR


def loss_in_compute_dtype(model_type: str, stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` computes this model type's loss on logits in the compute
    dtype (transformers 4's own ``CrossEntropyLoss`` for :data:`UNCAST_LOSS_MODEL_TYPES`)."""
    return model_type in UNCAST_LOSS_MODEL_TYPES and runs_transformers_4(stack, release)


def _in_releases(release: str, releases: tuple[str, ...]) -> bool:
    """Whether ``release`` (``0.2.1``; empty: the current one) is one of ``releases`` (``0.2``)."""
    return bool(release) and ".".join(release.split(".")[:2]) in releases


def unchunked_loss(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` computes the loss on whole fp32 logits."""
    return _in_releases(release, stack_rules(stack).unchunked_loss_releases)


def rebuilds_lora_index(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` (empty: the current one) rebuilds its fused q/k/v
    adapter's index tensor from a Python list in every forward, synchronizing with the GPU
    (``StackRules.lora_index_rebuilt_before``)."""
    before = stack_rules(stack).lora_index_rebuilt_before
    return bool(release and before) and release_tuple(release) < release_tuple(before)


def builds_on_device(stack: str, release: str) -> bool:
    """Whether ``stack`` at ``release`` builds and quantizes the model on the GPU with torchao
    0.1 (``StackRules.device_build_releases``)."""
    return _in_releases(release, stack_rules(stack).device_build_releases)
