"""torchtune@fef3ed10d Llama-2-7B LoRA / QLoRA init and training micro-batches, replayed
(see README.md): python run_train.py {lora,lora_all8,lora_qv64,qlora} lengths.json N GA."""
import sys, time, random, copy, json
import run_init as R
import torch
from torch import nn
GB = 1e9

def cuda_internal_hooks(mode):
    """Add CUDA-kernel-internal temporaries that a CPU/meta trace cannot see."""
    orig = mode.__class__.__torch_dispatch__
    sim = mode.tr.sim
    cnt = [0]
    def tmp(nbytes):
        cnt[0] += 1
        k = ("tmp", cnt[0])
        sim.malloc(k, nbytes); sim.free(k)
    def disp(self, func, types, args, kwargs=None):
        out = orig(self, func, types, args, kwargs)
        name = func._schema.name
        if name == "aten::_log_softmax" and not args[0].is_contiguous():
            tmp(args[0].numel() * args[0].element_size())      # host_softmax: input.contiguous()
        elif name.startswith("aten::_scaled_dot_product_flash_attention") and name.endswith("backward"):
            q = args[1]
            B, H, S, D = q.shape
            Sr = (S + 127) // 128 * 128
            # flash-attn v2 bwd: dq_accum fp32 [B,Sr,H,D] + softmax_d fp32 [B,H,Sr]
            cnt[0] += 1; k1 = ("tmp", cnt[0]); sim.malloc(k1, B * Sr * H * D * 4)
            cnt[0] += 1; k2 = ("tmp", cnt[0]); sim.malloc(k2, B * H * Sr * 4)
            sim.free(k1); sim.free(k2)
        return out
    mode.__class__ = type("FakeComputeCUDA", (mode.__class__,), {"__torch_dispatch__": disp})

def train(which, lengths, GA, log_every=None, cublas_ws=8519680):
    if which == "qlora":
        cfg = dict(lora_attn_modules=["q_proj","v_proj","k_proj","output_proj"], apply_lora_to_mlp=True, apply_lora_to_output=False, lora_rank=8, lora_alpha=16, quantize_base=True)
    elif which == "lora":
        cfg = dict(lora_attn_modules=["q_proj","v_proj"], lora_rank=8, lora_alpha=16)
    elif which == "lora_all8":
        cfg = dict(lora_attn_modules=["q_proj","k_proj","v_proj","output_proj"], apply_lora_to_mlp=True, apply_lora_to_output=True, lora_rank=8, lora_alpha=16)
    elif which == "lora_qv64":
        cfg = dict(lora_attn_modules=["q_proj","v_proj"], lora_rank=64, lora_alpha=128)
    elif which == "lora_all64":
        cfg = dict(lora_attn_modules=["q_proj","k_proj","v_proj","output_proj"], apply_lora_to_mlp=True, apply_lora_to_output=True, lora_rank=64, lora_alpha=128)
    model, sim, tr, mode, stage, dt = R.build(cfg)
    init = (sim.peak_allocated, sim.peak_reserved)
    sim.reset_peak()  # memory_stats_log(reset_stats=True) after model init
    cuda_internal_hooks(mode)
    sim.tag = "train#0" 
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    total_steps = 0
    hist = []
    logits = labels = loss = input_ids = None
    with mode:
        if cublas_ws:
            ws = torch.empty(cublas_ws, dtype=torch.uint8)  # cuBLAS workspace, lives forever
    for idx, S in enumerate(lengths):
        sim.tag = f"train#{idx}:S={S}"
        with mode:
            input_ids = torch.empty((2, S), dtype=torch.long)
            labels = torch.empty((2, S), dtype=torch.long)
            logits = model(input_ids)
            logits = logits[..., :-1, :].contiguous()
            labels = labels[..., 1:].contiguous()
            logits = logits.transpose(1, 2)
            loss = loss_fn(logits, labels)
            loss = loss / GA
            loss.backward()
            if (idx + 1) % GA == 0:
                opt.step()
                opt.zero_grad(set_to_none=True)
                total_steps += 1
        hist.append((idx, S, sim.allocated, sim.reserved, sim.peak_allocated, sim.peak_reserved))
        if total_steps % 100 == 0:
            pass  # real recipe logs & resets peaks here; reserved is monotone anyway
    return init, stage, sim, hist

if __name__ == "__main__":
    which = sys.argv[1]; mode_len = sys.argv[2]; n = int(sys.argv[3]); GA = int(sys.argv[4])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    rng = random.Random(seed)
    if mode_len.startswith("fixed"):
        lengths = [int(mode_len[5:])] * n
    else:
        lengths = json.load(open(mode_len))[:n] if mode_len.endswith(".json") else None
    t0 = time.time()
    init, stage, sim, hist = train(which, lengths, GA)
    print(f"== {which} lengths={mode_len} n={n} GA={GA}")
    print(f"init: peak_alloc={init[0]/GB:.3f} peak_reserved={init[1]/GB:.3f}")
    mx_a = max(h[4] for h in hist)
    for h in hist[:3] + hist[-2:]:
        print(f"  idx={h[0]} S={h[1]} alloc={h[2]/GB:.3f} reserved={h[3]/GB:.3f} peak_alloc_since_init={h[4]/GB:.3f} peak_reserved={h[5]/GB:.3f}")
    print(f"max peak_alloc(train)={mx_a/GB:.3f} final reserved={sim.reserved/GB:.3f}")
    print("time", time.time() - t0)
    cps = [0,1,2,4,8,16,32,63,64,100,200,300,500,750,1000,1500,2000,3000,5000,6400]
    print("reserved curve:", [(h[0], round(h[3]/GB,3)) for h in hist if h[0] in cps or h[0]==len(hist)-1])
    # running max of peak_alloc
