"""Optimizer names as frameworks write them, mapped to lorasize's optimizers.

Two spellings cover the frameworks read here: transformers' ``OptimizerNames`` (``optim`` in
``TrainingArguments``; axolotl's ``optimizer`` and LLaMA-Factory's ``optim`` pass it through), and
class paths (torchtune's ``optimizer._component_``, litgpt's ``optimizer.class_path``). A name not
here is said to be unmodelled by the reader that meets it, never guessed.
"""

from __future__ import annotations

# transformers 5.23.0 training_args.py OptimizerNames (lines 113-158) -> lorasize optimizer.
# adamw_torch_fused is the default where torch >= 2.8 (training_args.py:806-811): the same two
# moments as foreach AdamW, without its step's temporary.
HF_OPTIM = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw-fused", "adamw_torch_xla": "adamw",
    "adamw_torch_npu_fused": "adamw", "adamw_apex_fused": "adamw", "adamw_hf": "adamw",
    "adamw_anyprecision": "adamw",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit",
    "adamw_torch_8bit": "adamw-8bit",  # torchao AdamW8bit: 8-bit moments, as bitsandbytes
    "paged_adamw_32bit": "paged-adamw", "paged_adamw_8bit": "paged-adamw-8bit",
    "lion_32bit": "lion", "lion_8bit": "lion-8bit",
    "paged_lion_32bit": "paged-lion", "paged_lion_8bit": "paged-lion-8bit",
    "adafactor": "adafactor", "sgd": "sgd",
}

# Class paths (torchtune, litgpt) -> lorasize optimizer.
CLASS_OPTIM = {
    "torch.optim.AdamW": "adamw", "torch.optim.Adam": "adamw",
    "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.AdamW8bit": "adamw-8bit", "bitsandbytes.optim.Adam8bit": "adamw-8bit",
    "bitsandbytes.optim.PagedAdamW": "paged-adamw",
    "bitsandbytes.optim.PagedAdamW32bit": "paged-adamw",
    "bitsandbytes.optim.PagedAdamW8bit": "paged-adamw-8bit",
    "bitsandbytes.optim.Lion8bit": "lion-8bit", "bitsandbytes.optim.PagedLion8bit": "paged-lion-8bit",
    "torchao.prototype.low_bit_optim.AdamW8bit": "adamw-8bit",
    "torchao.optim.AdamW8bit": "adamw-8bit",
}
# litgpt accepts a bare class name of torch.optim ("AdamW") as class_path.
CLASS_OPTIM.update({"AdamW": "adamw", "Adam": "adamw", "SGD": "sgd"})


def optimizer_of(name: str) -> str | None:
    """The lorasize optimizer of a framework's optimizer name or class path, or None."""
    text = str(name).strip()
    return HF_OPTIM.get(text.lower()) or CLASS_OPTIM.get(text)


def read_optimizer(b, key: str, default_source: str) -> None:
    """Set ``optimizer`` on the recipe builder ``b`` from transformers-style name ``key``
    (``optim``, axolotl's ``optimizer``), or transformers' default from ``default_source`` where
    it is absent (``adamw_torch_fused`` with torch >= 2.8, the torch lorasize's range allows
    almost all of). A name lorasize does not model is named, and AdamW's state assumed."""
    if not b.given(key):
        b.assume("optimizer", HF_OPTIM["adamw_torch_fused"], default_source)
        return
    name = str(b.get(key))
    found = optimizer_of(name)
    if found is None:
        b.skip(key, f"{name} is not an optimizer lorasize models; adamw assumed")
    else:
        b.read("optimizer", found, key)
    b.get("optim_args")
