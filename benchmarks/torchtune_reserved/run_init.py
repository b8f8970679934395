"""torchtune@fef3ed10d Llama-2-7B LoRA / QLoRA model init, replayed (see README.md)."""
import sys, time
import setup_paths  # noqa: F401 (torchtune and torchao first on sys.path)
import torch
from torch import nn
import replay
from lorasize.memory.caching_allocator import CachingAllocator
import torchtune
from torchtune import utils, modules
from torchtune.models.llama2 import lora_llama2_7b
from torchtune.modules.peft.peft_utils import get_adapter_params, set_trainable_params
import torchao.dtypes.nf4tensor as nf4mod
import torchtune.utils._register_nf4_dispatch_ops as reg
from torchao.dtypes.nf4tensor import to_nf4

GB = 1e9
def patched_inplace_copy(func, *args, **kwargs):
    dest_tensor = args[0][0]
    # real code: args[0][1].to(dest_tensor.device)  (CPU->GPU copy, same dtype)
    ref_tensor = to_nf4(args[0][1].clone())
    dest_tensor.block_size = ref_tensor.block_size
    dest_tensor.n_blocks = ref_tensor.n_blocks
    dest_tensor.scaler_block_size = ref_tensor.scaler_block_size
    dest_tensor.quantized_scalers = ref_tensor.quantized_scalers
    dest_tensor.quantization_factor = ref_tensor.quantization_factor
    dest_tensor.scaler_mean = ref_tensor.scaler_mean
    dest_tensor.quantized_data = ref_tensor.quantized_data
    dest_tensor.nf4 = ref_tensor.nf4
nf4mod.NF4_OPS_TABLE[torch.ops.aten.copy_.default] = patched_inplace_copy

def build(cfg, ckpt_dtype=torch.float16, with_ac=True):
    sim = CachingAllocator()
    tr = replay.Tracker(sim)
    mode = replay.FakeCompute(tr, nf4mod.NF4_OPS_TABLE, nf4mod.NF4Tensor)
    # host-side checkpoint (meta tensors: never touched except by the patched copy)
    t0 = time.time()
    with mode:
        with utils.set_default_dtype(torch.bfloat16), torch.device("cpu"):
            model = lora_llama2_7b(**cfg)
        stage = {"after_build": (sim.allocated, sim.reserved, sim.peak_allocated, sim.peak_reserved)}
        adapter_params = get_adapter_params(model)
        set_trainable_params(model, adapter_params)
        if with_ac:
            utils.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerDecoderLayer})
        # state dict in torchtune format, fp16 like Llama-2-7b-hf .bin
        sd = {}
        for k, v in model.state_dict().items() if False else []:
            pass
    # build the host state dict outside the mode, on meta
    names = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    sd = {}
    for n, shp in names:
        n2 = n.replace("._checkpoint_wrapped_module", "")
        if "lora_" in n2:
            continue
        sd[n2] = torch.empty(shp, dtype=ckpt_dtype, device="meta")
    with mode:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected[:5]
    stage["after_load"] = (sim.allocated, sim.reserved, sim.peak_allocated, sim.peak_reserved)
    return model, sim, tr, mode, stage, time.time() - t0

def report(name, sim, stage):
    print(f"== {name}")
    for k, (a, r, pa, pr) in stage.items():
        print(f"  {k:12s} alloc={a/GB:.3f} reserved={r/GB:.3f} peak_alloc={pa/GB:.3f} "
              f"peak_reserved={pr/GB:.3f} GB")
    print("  segments:", sim.segments)


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "lora":
        cfg = dict(lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=False, apply_lora_to_output=False, lora_rank=8, lora_alpha=16)
    elif which == "qlora":
        cfg = dict(lora_attn_modules=["q_proj", "v_proj", "k_proj", "output_proj"], apply_lora_to_mlp=True, apply_lora_to_output=False, lora_rank=8, lora_alpha=16, quantize_base=True)
    model, sim, tr, mode, stage, dt = build(cfg)
    report(which, sim, stage)
    print("time", dt)
