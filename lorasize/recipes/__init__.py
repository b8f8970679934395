"""Training recipes in: a framework's own config file read as ``lorasize estimate`` options.

One module per framework, each a reader from the file's mapping to a :class:`Recipe`:
axolotl YAML, LLaMA-Factory YAML, torchtune recipe configs, litgpt ``config_hub`` YAML, and
Hugging Face ``TrainingArguments`` / TRL ``SFTConfig`` (JSON or YAML, the alignment-handbook
recipes included). Where a recipe leaves a setting out, the framework's own default fills it,
named with the framework file and version that sets it. No framework is imported: the readers
know each framework's keys and defaults as data.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LorasizeError
from .recipe import Recipe, Setting, flag_of, load_mapping, render_recipe

FRAMEWORKS = ("axolotl", "llama-factory", "torchtune", "litgpt", "hf")

__all__ = ["FRAMEWORKS", "Recipe", "Setting", "detect_framework", "flag_of", "read_recipe", "render_recipe"]


def detect_framework(data: dict) -> str | None:
    """The framework whose recipe ``data`` is, from the keys only that framework uses."""
    model = data.get("model")
    if isinstance(model, dict) and "_component_" in model:
        return "torchtune"
    if "checkpoint_dir" in data and isinstance(data.get("train", {}), dict):
        return "litgpt"
    if "finetuning_type" in data or ("stage" in data and "model_name_or_path" in data):
        return "llama-factory"
    if "base_model" in data:
        return "axolotl"
    if any(key in data for key in ("per_device_train_batch_size", "model_name_or_path",
                                   "gradient_accumulation_steps", "optim", "output_dir")):
        return "hf"
    return None


def read_recipe(path: str | Path, source: str = "--recipe") -> Recipe:
    """Read a recipe file of any supported framework.

    Raises:
        LorasizeError: the file cannot be read, is a PEFT adapter config (that is ``--adapter``),
            or is of no framework lorasize reads.
    """
    data = load_mapping(path, source)
    if "peft_type" in data:
        raise LorasizeError(f"{path} is a PEFT adapter_config.json: give its folder as "
                            f"--adapter (with --recipe for the training arguments)", source=source)
    framework = detect_framework(data)
    if framework is None:
        raise LorasizeError(
            f"{path} is not a recipe lorasize reads: expected an axolotl (base_model), "
            f"LLaMA-Factory (finetuning_type), torchtune (model: _component_), litgpt "
            f"(checkpoint_dir) or Hugging Face TrainingArguments (per_device_train_batch_size) "
            f"file", source=source)
    from importlib import import_module

    module = import_module(f"{__name__}.{framework.replace('-', '')}")
    return module.read(data, str(path))
