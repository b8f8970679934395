"""Turn what the user typed into specs: a model name, a config path, a hub id, an adapter folder.

A Hub id whose ``config.json`` is already in huggingface_hub's local cache is read from there
(torch-free, as a path is); other Hub ids go through ``transformers.AutoConfig``.
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
    import importlib.util

    cached = hub_cached_config(repo_id)
    if cached is not None:  # what AutoConfig would read, without importing transformers
        return ModelSpec.from_file(cached, name=repo_id, source=f"hub:{repo_id}")
    if importlib.util.find_spec("transformers") is None:
        raise LorasizeError(
            f"'{repo_id}' is not in the catalog and reading Hub configs needs transformers: "
            f"pip install \"lorasize[torch]\", or pass a config.json path", source=flag)
    if not _in_hub_cache(repo_id):
        _hub_reachable(repo_id, flag)  # before importing transformers (seconds): fail fast
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


# How long to wait for the Hub's host before saying it cannot be reached (huggingface_hub
# would otherwise retry for about half a minute).
HUB_CONNECT_SECONDS = 2.0


def _hub_repo_folder(repo_id: str) -> Path:
    """huggingface_hub's cache folder of a model repository:
    ``<HF_HUB_CACHE>/models--<org>--<name>`` (huggingface_hub ``constants.py``: HF_HOME, then
    HF_HUB_CACHE)."""
    import os

    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "huggingface")
    cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                 or os.path.join(home, "hub"))
    return cache / ("models--" + repo_id.replace("/", "--"))


def _in_hub_cache(repo_id: str) -> bool:
    """Whether huggingface_hub's cache holds a snapshot of ``repo_id``."""
    return (_hub_repo_folder(repo_id) / "snapshots").is_dir()


def hub_cached_config(repo_id: str) -> Path | None:
    """The cached ``config.json`` of ``repo_id``'s main revision (the snapshot ``refs/main``
    names, as ``hf_hub_download`` resolves it offline), or of its only snapshot; None if absent.
    """
    folder = _hub_repo_folder(repo_id)
    try:
        revision = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        revision = ""
    snapshots = folder / "snapshots"
    if revision and (snapshots / revision / "config.json").is_file():
        return snapshots / revision / "config.json"
    try:
        found = [s / "config.json" for s in snapshots.iterdir() if (s / "config.json").is_file()]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def _hub_reachable(repo_id: str, flag: str) -> None:
    """One TCP connection to the Hub's host within :data:`HUB_CONNECT_SECONDS`, or a one-line
    error (offline mode, HF_HUB_OFFLINE=1, says so too)."""
    import os
    import socket
    import threading
    from urllib.parse import urlparse

    advice = "download its config.json and pass the path"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LorasizeError(f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                            f"is set; {advice}", source=flag)
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    failure: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_CONNECT_SECONDS).close()
        except OSError as exc:
            failure.append(exc.strerror or type(exc).__name__)

    # a thread bounds the name lookup too, which create_connection's timeout does not
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(HUB_CONNECT_SECONDS)
    if worker.is_alive() or failure:
        reason = failure[0] if failure else f"no answer in {HUB_CONNECT_SECONDS:g} s"
        raise LorasizeError(f"cannot reach the Hugging Face Hub at {host} ({reason}) to read "
                            f"'{repo_id}'; {advice}", source=flag)


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
