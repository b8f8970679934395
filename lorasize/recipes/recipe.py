"""What a recipe file says, as ``lorasize estimate`` options, and where each value came from.

A :class:`Recipe` holds one :class:`Setting` per estimate option it fixes: read from a key of
the file, or assumed from the framework's own default (with the file and version of the
framework code that sets it). Keys that change memory or time but that no option expresses are
kept in ``unread`` with the reason, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LorasizeError

# A recipe is a few kilobytes; anything far larger is not one (and reading it whole would not be
# bounded).
MAX_RECIPE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Setting:
    """One estimate option a recipe fixes.

    Attributes:
        option: the estimate parameter (``batch_size``), as ``lorasize estimate --json`` and the
            budgets file spell it; the flag is ``--batch-size``.
        value: the value as the flag takes it (``"q_proj,v_proj"``, ``4``, ``True``).
        origin: the recipe key it was read from (``micro_batch_size``), or for an assumed value
            the framework code that sets it (``axolotl default: src/.../training.py``).
        assumed: True when the recipe leaves the setting out and the framework default fills it.
    """

    option: str
    value: object
    origin: str
    assumed: bool = False

    @property
    def flag(self) -> str:
        return flag_of(self.option, self.value)

    def to_dict(self) -> dict:
        return {"option": self.option, "value": self.value, "flag": self.flag,
                "from": self.origin, "assumed": self.assumed}


@dataclass(frozen=True)
class Recipe:
    """A training recipe read as estimate options.

    Attributes:
        path: the file.
        framework: ``axolotl``, ``llama-factory``, ``torchtune``, ``litgpt`` or ``hf``.
        settings: what the recipe fixes, in the order it was read.
        unread: ``(key, why)`` for keys that change memory or time and that no option expresses.
        notes: what a reader should know (a sequence length taken as the padded worst case).
    """

    path: str
    framework: str
    settings: tuple[Setting, ...]
    unread: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def options(self) -> dict[str, object]:
        """Option name to value, as the command line would give them."""
        return {s.option: s.value for s in self.settings}

    def to_dict(self, given: tuple[str, ...] = ()) -> dict:
        """JSON form; ``given`` names the options the command line set over the recipe."""
        return {"path": self.path, "framework": self.framework,
                "settings": [{**s.to_dict(), "overridden": s.option in given}
                             for s in self.settings],
                "not_read": [{"key": k, "why": w} for k, w in self.unread],
                "notes": list(self.notes)}


def flag_of(option: str, value: object) -> str:
    """The command-line form of one option: ``--batch-size 4``, ``--grad-checkpointing``."""
    name = "--" + option.replace("_", "-")
    if isinstance(value, bool):
        return name if value else "--no-" + option.replace("_", "-")
    return f"{name} {value}"


@dataclass
class RecipeBuilder:
    """Collects a recipe's settings while a reader walks the file (readers are small and linear;
    the result is the frozen :class:`Recipe`)."""

    path: str
    framework: str
    data: dict = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)
    unread: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def get(self, key: str, default: object = None) -> object:
        """The recipe's value of top-level ``key`` (``default`` when absent or null), marking the
        key as read."""
        self.seen.add(key)
        value = self.data.get(key)
        return default if value is None else value

    def given(self, key: str) -> bool:
        """Whether the recipe sets ``key`` (to something other than null)."""
        self.seen.add(key)
        return self.data.get(key) is not None

    def read(self, option: str, value: object, key: str) -> None:
        """``option`` is ``value``, read from the recipe's ``key``."""
        self.settings[option] = Setting(option, value, key)

    def assume(self, option: str, value: object, source: str) -> None:
        """``option`` is the framework default ``value`` (unless the recipe already set it)."""
        if option not in self.settings:
            self.settings[option] = Setting(option, value, source, assumed=True)

    def has(self, option: str) -> bool:
        return option in self.settings

    def skip(self, key: str, why: str) -> None:
        """A key that changes memory or time and that no option expresses."""
        self.unread.append((key, why))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def build(self, inert: frozenset[str] = frozenset()) -> Recipe:
        """The recipe; top-level keys neither read nor ``inert`` (known not to change memory or
        time: learning rates, logging, paths) are listed as unknown, never dropped silently."""
        unknown = [k for k in self.data if k not in self.seen and k not in inert
                   and self.data[k] is not None]
        unread = list(self.unread) + [
            (k, "not a setting lorasize knows: if it changes memory or time, the estimate leaves "
                "it out") for k in unknown]
        return Recipe(self.path, self.framework, tuple(self.settings.values()), tuple(unread),
                      tuple(self.notes))


def load_mapping(path: str | Path, source: str = "--recipe") -> dict:
    """The top-level mapping of a YAML or JSON file (JSON is YAML), bounded in size.

    Raises:
        LorasizeError: the file is missing, too large, not YAML, or not a mapping.
    """
    import yaml

    p = Path(path)
    try:
        if p.is_dir():
            raise LorasizeError(f"{path} is a folder; give the recipe file", source=source)
        size = p.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise LorasizeError(f"{path} has {size:,} bytes; a recipe is a small YAML or JSON file",
                                source=source)
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LorasizeError(f"no such file: {path}", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LorasizeError(f"cannot read {path}: {exc}", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LorasizeError(f"{path} is not valid YAML or JSON{where}", source=source) from None
    if not isinstance(data, dict):
        raise LorasizeError(f"{path} holds no mapping of settings", source=source)
    return data


def render_recipe(recipe: Recipe, given: tuple[str, ...] = (), used: set[str] | None = None,
                  values: dict | None = None) -> str:
    """What the recipe set, as the flags it stands for, each with where it came from.

    Args:
        recipe: the recipe read.
        given: options the command line set (they win; the recipe's flag is shown beside).
        used: the options the command has; the others are listed as not used here.
        values: the command's option values, to print a given flag as it was given.
    """
    rows = []
    for s in recipe.settings:
        if used is not None and s.option not in used:
            continue
        origin = ("assumed: " if s.assumed else "") + s.origin
        if s.option in given:
            origin = f"command line wins over the recipe's {s.flag}, {origin}"
            flag = flag_of(s.option, values[s.option]) if values and s.option in values \
                else "--" + s.option.replace("_", "-")
            rows.append((flag + " (given)", origin))
        else:
            rows.append((s.flag, origin))
    width = max((len(flag) for flag, _ in rows), default=0)
    out = [f"Recipe {recipe.path} ({recipe.framework}):"]
    out += [f"  {flag:<{width}}  {origin}" for flag, origin in rows]
    unused = [s.flag for s in recipe.settings if used is not None and s.option not in used]
    if unused:
        out.append(f"  not used by this command: {', '.join(unused)}")
    out += [f"  not read: {key}: {why}" for key, why in recipe.unread]
    out += [f"  note: {text}" for text in recipe.notes]
    return "\n".join(out)


# Where a model fuses what a framework adapts by role (litgpt's lora_query, torchtune's
# lora_attn_modules), the Hugging Face module that holds that role, in order of preference:
# Phi-3's qkv_proj and gate_up_proj, GPT-NeoX's and Falcon's query_key_value and dense_*,
# Phi-2's dense and fc1/fc2.
ROLE_MODULES = {
    "q_proj": ("q_proj", "qkv_proj", "query_key_value"),
    "k_proj": ("k_proj", "qkv_proj", "query_key_value"),
    "v_proj": ("v_proj", "qkv_proj", "query_key_value"),
    "o_proj": ("o_proj", "dense"),
    "gate_proj": ("gate_proj", "gate_up_proj"),
    "up_proj": ("up_proj", "gate_up_proj", "dense_h_to_4h", "fc1"),
    "down_proj": ("down_proj", "dense_4h_to_h", "fc2"),
    "lm_head": ("lm_head", "embed_out"),
}


def model_modules(model_text: str, roles: list[str],
                  parts: bool = False) -> tuple[list[str], bool]:
    """The model's own module names for ``roles`` (Hugging Face Llama names), and whether a role
    fell on a fused module. With ``parts`` (a stack that adapts the parts of a fused module apart,
    as ``--stack litgpt`` does), a role the model holds inside a fused module keeps its part name,
    and a role the model has no module for (the gate of a two-matrix MLP) is left out.
    Unresolvable models keep the role names (the estimate then says which names the model has).
    """
    from ..arch.parts import fused_part
    from ..arch.lora import target_names
    from ..arch.resolve import resolve_model

    try:
        spec = resolve_model(model_text)
    except LorasizeError:
        return list(roles), False
    names = set(target_names(spec))
    found, fused = [], False
    for role in roles:
        if parts and role not in names and fused_part(spec, role) is not None:
            module, fused = role, True
        else:
            module = next((m for m in ROLE_MODULES.get(role, (role,)) if m in names), None)
            if module is None and parts:
                continue
            module = module or role
            fused |= module != role
        if module not in found:
            found.append(module)
    return found, fused


# DeepSpeed zero_optimization.stage -> --sharding (stage 0 is plain data parallelism)
ZERO_STAGES = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}


def json_beside(folder: Path, text: str) -> tuple[dict, str] | None:
    """A small JSON file a recipe names (a DeepSpeed config), as given, beside the recipe, or by
    its name beside the recipe; with the path it was read from. None when none is there."""
    import json

    for candidate in (Path(text), folder / text, folder / Path(text).name):
        try:
            if candidate.is_file() and candidate.stat().st_size < 2**20:
                return json.loads(candidate.read_text(encoding="utf-8")), str(candidate)
        except (OSError, ValueError):
            continue
    return None


def deepspeed_sharding(config: dict) -> tuple[str, str]:
    """(--sharding, --offload) of a DeepSpeed config: the ZeRO stage, and parameters or the
    optimizer offloaded to the CPU."""
    zero = config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))

    def device(key: str) -> str:
        return str((zero.get(key) or {}).get("device", "none")).lower()

    offload = "params" if device("offload_param") == "cpu" else (
        "optimizer" if device("offload_optimizer") == "cpu" else "none")
    return ZERO_STAGES.get(stage, "zero3"), offload


def padded(b: RecipeBuilder, source: str, single: bool = False) -> None:
    """The framework's collator pads each batch with a zero-padded attention mask (``source``):
    SDPA then gets a mask in every layer (``--padded``). Padding to the longest sample leaves one
    sample a batch unpadded, so a batch size of 1 (read or assumed before this) sets nothing;
    ``single``: the collator also pads to a multiple of a length, so one sample is padded too."""
    batch = b.settings.get("batch_size")
    if single or (batch is not None and int(batch.value) > 1):
        b.assume("padded", True, source)
