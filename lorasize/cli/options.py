"""Option groups shared by the commands that compute (estimate now; trace and check later)."""

from __future__ import annotations

import functools

import click

from ..memory.activations import ATTN_IMPLEMENTATIONS
from ..arch.lora import VARIANTS
from ..memory.optimizers import OPTIMIZERS
from ..memory.sharding import OFFLOADS, SHARDINGS
from ..specs import ADAPTER_DTYPES, COMPUTE_DTYPES, KERNELS, METHODS, STACKS

_CHOICE = functools.partial(click.Choice, case_sensitive=False)


class HintedChoice(click.Choice):
    """A choice that points a near miss to the flag that means it (``--method dora``: DoRA is
    ``--dora``, a variant of LoRA)."""

    def __init__(self, choices, hints: dict[str, str]):
        super().__init__(choices, case_sensitive=False)
        self.hints = hints

    def convert(self, value, param, ctx):
        hint = self.hints.get(str(value).lower())
        if hint:
            self.fail(f"'{value}' is not a method: {hint}", param, ctx)
        return super().convert(value, param, ctx)


# Adapters that people name as methods but lorasize (like PEFT) takes as a variant of LoRA.
METHOD_HINTS = {"dora": "give --dora (with --method lora or qlora)",
                **{v: f"give --variant {v} (with --method lora or qlora)"
                   for v in ("rslora", "lora-fa", "vera", "loraplus", "adalora", "loha", "lokr",
                             "ia3")}}


def _apply(options):
    def decorator(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorator


def _read_recipe(ctx: click.Context, param, value):
    """Eager: read the recipe before the other flags, so its values become their defaults and
    a flag given on the command line wins."""
    if not value:
        return value
    from ..recipes import read_recipe
    from . import recipe_read

    recipe = read_recipe(value)
    recipe_read(recipe)
    names = {p.name for p in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}),
                       **{k: v for k, v in recipe.options().items() if k in names}}
    ctx.meta[RECIPE_KEY] = recipe
    return value


RECIPE_KEY = "lorasize.recipe"


def recipe_option(func):
    """--recipe FILE: a framework's training recipe as the defaults of the other flags."""
    return click.option(
        "--recipe", metavar="FILE", is_eager=True, callback=_read_recipe,
        help="A training recipe: axolotl or LLaMA-Factory YAML, torchtune config, litgpt "
             "config_hub YAML, or Trainer/TRL arguments (JSON/YAML). Its settings, and the "
             "framework's defaults where it is silent, become the defaults of these flags "
             "(flags given here win); see docs/recipes.md.")(func)


def recipe_used(ctx: click.Context):
    """The recipe --recipe read, and the options the command line set over it."""
    from click.core import ParameterSource

    recipe = ctx.meta.get(RECIPE_KEY)
    if recipe is None:
        return None, ()
    given = tuple(s.option for s in recipe.settings
                  if ctx.get_parameter_source(s.option) in (ParameterSource.COMMANDLINE,
                                                            ParameterSource.ENVIRONMENT))
    return recipe, given


def model_options(func):
    """--model and --adapter."""
    return _apply([
        click.option("--model", "-m", metavar="NAME|PATH|HUB_ID",
                     help="Catalog name (lorasize models), a config.json or its folder, or a Hub id."),
        click.option("--adapter", metavar="PATH",
                     help="A PEFT adapter folder: method (peft_type), r, alpha, targets, DoRA "
                          "and base model come from its adapter_config.json (flags given here "
                          "win)."),
    ])(func)


def lora_options(func):
    """--r, --alpha, --targets, --lora-dropout, --dora."""
    return _apply([
        click.option("--r", "-r", "r", type=int, default=8, show_default=True, help="LoRA rank."),
        click.option("--alpha", type=float, default=None,
                     help="lora_alpha (scaling only; memory does not depend on it). [default: 2r]"),
        click.option("--targets", "-t", default="qv", show_default=True,
                     help="all (PEFT's all-linear; all-linear also works), attn, mlp, qv, or "
                          "comma-separated module names (q_proj,v_proj); add lm_head by name."),
        click.option("--lora-dropout", type=float, default=0.0, show_default=True,
                     help="lora_dropout; above 0 it saves a mask and a copy of each input."),
        click.option("--dora/--no-dora", default=False, show_default=True,
                     help="Weight-decomposed LoRA (a magnitude vector per adapted matrix)."),
        click.option("--variant", type=_CHOICE(VARIANTS), default="lora", show_default=True,
                     help="LoRA-family method (PEFT): rslora (scaling only), lora-fa (A frozen), "
                          "vera (shared frozen projections, two vectors per matrix), loraplus "
                          "(B's learning rate only), adalora (--r is init_r), loha, lokr (the "
                          "whole delta weight is built and kept each forward), ia3 (a vector "
                          "per matrix)."),
    ])(func)


def _base_model_options() -> list:
    """--quant, --double-quant, --dtype: how the base model's weights are held."""
    return [
        click.option("--quant", type=_CHOICE(("nf4", "fp4", "int8", "none")), default=None,
                     help="Base quantization. [default: nf4 for qlora, none otherwise]"),
        click.option("--double-quant/--no-double-quant", default=False, show_default=True,
                     help="bitsandbytes double quantization of the 4-bit constants."),
        click.option("--dtype", type=_CHOICE(COMPUTE_DTYPES), default="bf16", show_default=True,
                     help="Compute and base-weight dtype."),
    ]


def base_options(func):
    """--method, --quant, --double-quant, --dtype: the base model as served (no training flags)."""
    return _apply([
        click.option("--method", type=HintedChoice(("lora", "qlora"), METHOD_HINTS),
                     default="lora", show_default=True,
                     help="lora (16-bit base) or qlora (quantized base)."),
        *_base_model_options(),
    ])(func)


def train_options(func):
    """--method, --quant, --dtype, --optimizer, batch, sequence, checkpointing, attention."""
    return _apply([
        click.option("--method", type=HintedChoice(METHODS, METHOD_HINTS), default="lora",
                     show_default=True,
                     help="lora (16-bit base), qlora (quantized base) or full fine-tuning."),
        *_base_model_options(),
        click.option("--optimizer", type=_CHOICE(OPTIMIZERS), default="adamw", show_default=True),
        click.option("--batch-size", "-b", type=int, default=1, show_default=True,
                     help="Sequences per micro-batch."),
        click.option("--seq-len", "-s", type=int, default=512, show_default=True,
                     help="Tokens per sequence."),
        click.option("--grad-checkpointing/--no-grad-checkpointing", default=None,
                     help="Recompute each layer in backward. [default: on with --kbit-prep, "
                          "as PEFT's prepare_model_for_kbit_training turns it on; off otherwise]"),
        click.option("--attn", type=_CHOICE(ATTN_IMPLEMENTATIONS), default="sdpa",
                     show_default=True, help="Attention implementation."),
        click.option("--stack", type=_CHOICE(STACKS), default="hf-peft", show_default=True,
                     help="Training framework: hf-peft (transformers + PEFT), torchtune "
                          "(chunked loss, adapters in the model's dtype) or litgpt (bf16-true, "
                          "chunked loss, its own module layout: the parts of a fused q/k/v or "
                          "gate/up each get an adapter)."),
        click.option("--stack-release", default=None, metavar="VERSION",
                     help="The stack's release, where its memory or speed changed between "
                          "releases: torchtune 0.1-0.2 quantized only the linears carrying LoRA "
                          "under QLoRA (0.3 and later quantize every attention and MLP linear), "
                          "and 0.1 built the model on the GPU, whose segments stay reserved; "
                          "under hf-peft, the transformers release: before 5.0 a mixture of "
                          "experts is one nn.Linear per expert, which bitsandbytes quantizes "
                          "(--stack-release 4.46), and before 4.54 grouped-query k and v are "
                          "repeated before SDPA (fp32 attention then takes the memory-efficient "
                          "kernel, not the math one); litgpt before 0.3.1 (0.0: lit-gpt's 2023 "
                          "code) rebuilt the q/k/v adapter's index every forward and waited for "
                          "the GPU there. [default: the current release]"),
        click.option("--padded/--no-padded", default=False, show_default=True,
                     help="Micro-batches carry an attention mask with padding in it (a collator "
                          "that pads to --seq-len, not packing): SDPA then gets a mask in every "
                          "layer, so it runs the memory-efficient kernel over the whole s x s "
                          "and, under transformers 5, keeps a float copy of the mask per layer. "
                          "hf-peft only."),
        click.option("--bnb-release", default=None, metavar="VERSION",
                     help="The bitsandbytes release, where its speed changed: before 0.47 a "
                          "4-bit layer computes in its input's dtype, so after kbit prep "
                          "without autocast every base matmul runs in fp32 (--bnb-release "
                          "0.45.0). [default: the current release]"),
        click.option("--kbit-prep/--no-kbit-prep", default=None,
                     help="PEFT prepare_model_for_kbit_training (fp32 upcast of non-quantized "
                          "parameters). [default: on for qlora]"),
        click.option("--adapter-train-dtype", type=_CHOICE(ADAPTER_DTYPES), default=None,
                     help="Dtype of the adapter weights while training, and so of their "
                          "gradients and AdamW state (bf16: PEFT's autocast_adapter_dtype=False "
                          "on a bf16 base). [default: fp32 for hf-peft, --dtype otherwise]"),
        click.option("--grad-accum", type=int, default=1, show_default=True,
                     help="Micro-batches per optimizer step: the effective batch is batch x N; "
                          "the peak is one micro-batch's (gradients held between them)."),
        click.option("--kernels", type=_CHOICE(KERNELS), default="eager", show_default=True,
                     help="eager: the model code's own PyTorch ops; fused: fused norm, rope, "
                          "activation and loss kernels (Liger, torch.compile, Transformer "
                          "Engine): step time only; compile: torch.compile of the layers and the "
                          "loss, its activations as Inductor's partitioner saves them (needs "
                          "torch; torchtune's compile: True)."),
        click.option("--autocast/--no-autocast", default=True, show_default=True,
                     help="Mixed-precision autocast (the Trainer's bf16=True); without it PEFT's "
                          "fp32 adapters compute in fp32, and after kbit prep attention gets fp32 "
                          "inputs (no flash kernel). Step time, and attention's memory."),
    ])(func)


def gpu_options(func):
    """--gpu, --gpu-mem, serving options."""
    return _apply([
        click.option("--gpu", "-g", metavar="NAME", help="Check the fit on this GPU (lorasize gpus)."),
        click.option("--gpu-mem", metavar="SIZE",
                     help="GPU memory instead of a catalog card, e.g. 24GiB or 81559MiB."),
        click.option("--adapter-dtype", type=_CHOICE(ADAPTER_DTYPES), default="fp32",
                     show_default=True, help="Dtype the adapter file is saved in."),
        click.option("--serve-dtype", type=_CHOICE(ADAPTER_DTYPES), default="fp32",
                     show_default=True,
                     help="Dtype each served adapter is held in (PEFT load_adapter keeps fp32)."),
        click.option("--serve-tokens", type=int, default=0, show_default=True,
                     help="KV-cache budget in tokens when counting adapters that fit."),
        click.option("--dataset-tokens", type=int, default=None,
                     help="Tokens in the training set, for hours and cost (needs --gpu)."),
        click.option("--epochs", type=float, default=1.0, show_default=True),
        click.option("--usd-per-gpu-hour", type=float, default=None,
                     help="Price of one GPU-hour, for the cost of the run."),
        click.option("--mfu", type=float, default=None,
                     help="Time the step as FLOPs / (peak x MFU) instead of the step-time model. "
                     "[default: the calibration's MFU when it has one (fitted from GPU "
                     "profiles), else the step-time model]"),
        click.option("--calibration", metavar="FILE",
                     help="Calibration file from 'lorasize calibrate'. [default: the shipped one]"),
        click.option("--timing-params", metavar="FILE",
                     help="Step-time figures from 'lorasize calibrate --timing'. [default: the "
                          "shipped fit]"),
    ])(func)


def shard_options(func):
    """--gpus, --sharding, --offload."""
    return _apply([
        click.option("--gpus", type=int, default=1, show_default=True,
                     help="Data-parallel GPUs; memory is then reported per GPU."),
        click.option("--sharding", type=_CHOICE(SHARDINGS), default=None,
                     help="How the GPUs share the model: ddp, fsdp (FULL_SHARD), fsdp-grad-op "
                          "(SHARD_GRAD_OP), zero1, zero2, zero3 (DeepSpeed). [default: none; "
                          "needed with --gpus above 1]"),
        click.option("--offload", type=_CHOICE(OFFLOADS), default="none", show_default=True,
                     help="Move to host memory: optimizer (DeepSpeed ZeRO) or params (zero3 or "
                          "fsdp: parameters, gradients and optimizer)."),
    ])(func)


def output_options(func):
    """--json."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object instead of the table.")(func)
