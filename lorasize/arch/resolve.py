"""Turn what the user typed into specs: a model name, a config path, a hub id, an adapter folder.

Hub ids go through ``transformers.AutoConfig`` when transformers is installed; everything else
stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import find_model_entry, model_from_catalog
from ..errors import LorasizeError
from ..files import read_json
from .model import ModelSpec

ADAPTER_CONFIG = "adapter_config.json"


def resolve_model(text: str, flag: str = "--model") -> ModelSpec:
    """A catalog name or alias, a ``config.json`` path or its directory, or a Hub id.

    Raises:
        LorasizeError: unknown name (with suggestions), unreadable file, or a Hub id that cannot
            be fetched.
    """
    text = str(text).strip()
    if not text:
        raise LorasizeError("give a model name, a config.json path or a Hub id", source=flag)
    if find_model_entry(text) is not None:
        return model_from_catalog(text, flag)
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name longer than the file system allows, and the like
        raise LorasizeError(f"not a catalog name, and not a readable path ({exc.strerror})",
                            source=flag) from None
    if exists:
        return ModelSpec.from_file(path)
    if text.startswith((".", "/", "~")) or text.endswith(".json") or text.count("/") > 1:
        raise LorasizeError(f"no such file or folder: {text}", source=flag)
    if "/" in text:
        return _from_hub(text, flag)
    return model_from_catalog(text, flag)  # raises with suggestions


def _from_hub(repo_id: str, flag: str) -> ModelSpec:
    try:
        import transformers  # noqa: F401  (heavy: only for Hub ids)
    except ImportError:
        raise LorasizeError(
            f"'{repo_id}' is not in the catalog and reading Hub configs needs transformers: "
            f"pip install \"lorasize[torch]\", or pass a config.json path", source=flag) from None
    from transformers import AutoConfig

    import contextlib
    import io
    import logging

    try:
        # huggingface_hub logs each retry; the user gets one line, below.
        logging.disable(logging.WARNING)
        with contextlib.redirect_stderr(io.StringIO()):
            config = AutoConfig.from_pretrained(repo_id).to_dict()
    except Exception as exc:  # network, auth, missing repo: all mean "cannot read it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LorasizeError(
            f"cannot fetch the config of '{repo_id}' from the Hugging Face Hub ({reason}); "
            f"download its config.json and pass the path", source=flag) from None
    finally:
        logging.disable(logging.NOTSET)
    return ModelSpec.from_hf_config(config, name=repo_id, source=f"hub:{repo_id}")


@dataclass(frozen=True)
class AdapterConfig:
    """What a PEFT ``adapter_config.json`` says about memory."""

    path: str
    r: int | None
    alpha: float | None
    targets: tuple[str, ...] | None
    dropout: float | None
    dora: bool
    base_model: str | None
    variant: str = "lora"


# adapter_config.json fields that change the trainable parameters and are not modelled yet:
# refused by name rather than silently sized as the plain config (issue: hardening).
_UNSIZED_FIELDS = ("layers_to_transform", "rank_pattern", "modules_to_save", "exclude_modules",
                   "target_parameters")

# PEFT's peft_type -> lorasize's --variant (LoRA with use_rslora is rslora).
PEFT_TYPE_VARIANTS = {"LORA": "lora", "ADALORA": "adalora", "LOHA": "loha", "LOKR": "lokr",
                      "IA3": "ia3", "VERA": "vera"}


def read_adapter_config(path: str | Path, flag: str = "--adapter") -> AdapterConfig:
    """Read a PEFT adapter folder's ``adapter_config.json`` (or the file itself).

    Raises:
        LorasizeError: missing or malformed file, or a PEFT type lorasize does not size.
    """
    path = Path(path).expanduser()
    file = path / ADAPTER_CONFIG if path.is_dir() else path
    if not file.is_file():
        raise LorasizeError(f"no {ADAPTER_CONFIG} found", source=str(file))
    data: Any = read_json(file)
    if not isinstance(data, dict):
        raise LorasizeError("expected a JSON object", source=str(file))
    peft_type = str(data.get("peft_type", "LORA")).upper()
    if peft_type not in PEFT_TYPE_VARIANTS:
        raise LorasizeError(f"peft_type {peft_type} is not one lorasize sizes "
                            f"({', '.join(PEFT_TYPE_VARIANTS)})", source=str(file))
    variant = PEFT_TYPE_VARIANTS[peft_type]
    if peft_type == "LORA" and data.get("use_rslora"):
        variant = "rslora"
    if peft_type == "LOKR" and (data.get("decompose_factor", -1) != -1 or data.get("decompose_both")):
        raise LorasizeError("LoKr with decompose_factor or decompose_both other than PEFT's "
                            "defaults is not sized yet", source=str(file))
    for key in _UNSIZED_FIELDS:
        if data.get(key) not in (None, [], {}, ""):
            raise LorasizeError(
                f"{key} is set ({data[key]!r}); it changes what trains (which layers, ranks or "
                f"extra trainable modules), and lorasize does not size it yet: remove it to size "
                f"the plain adapter", source=str(file))
    targets = data.get("target_modules")
    if isinstance(targets, str):
        if targets == "all-linear":
            targets = ("all",)
        else:
            raise LorasizeError(f"target_modules is a regular expression ({targets!r}); pass "
                                f"--targets with module names", source=str(file))
    elif isinstance(targets, list):
        targets = tuple(str(t) for t in targets)
    elif targets is not None:
        raise LorasizeError("target_modules must be a list or a string", source=str(file))
    r = data.get("init_r" if peft_type == "ADALORA" else "r")  # AdaLoRA's memory follows init_r
    if r is not None and (isinstance(r, bool) or not isinstance(r, int)):
        raise LorasizeError(f"r must be an integer, got {r!r}", source=str(file))
    return AdapterConfig(
        path=str(file), r=r, alpha=data.get("lora_alpha", data.get("alpha")), targets=targets,
        dropout=data.get("lora_dropout"), dora=bool(data.get("use_dora", False)),
        base_model=data.get("base_model_name_or_path"), variant=variant,
    )
