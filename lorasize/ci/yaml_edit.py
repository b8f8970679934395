"""Read YAML with line numbers, and change values in a YAML text without re-dumping it.

``yaml.safe_load`` forgets where each value was, and ``yaml.safe_dump`` forgets comments and
formatting. Budgets files are written by people and edited by ``--update-baseline``, so both
matter: :func:`compose` keeps PyYAML's node tree (every node has a ``start_mark`` with its line),
and :class:`TextEdits` replaces or inserts text at node positions, leaving every other character
of the file as it was.
"""

from __future__ import annotations

import re

from ..errors import LorasizeError

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _yaml():
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a base dependency
        from ..errors import MissingExtraError
        raise MissingExtraError("reading YAML", "report", "pyyaml") from None
    return yaml


def compose(text: str, source: str):
    """The YAML node tree of ``text`` (``None`` for an empty document).

    Raises:
        LorasizeError: not YAML; the message names ``source``, the line and the column.
    """
    yaml = _yaml()
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LorasizeError(f"not valid YAML: {problem}", source=where) from None
    finally:
        loader.dispose()


def line(node) -> int:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1


def value(node):
    """The Python value of a node (scalars, lists and mappings, as ``yaml.safe_load`` gives)."""
    yaml = _yaml()
    return yaml.SafeLoader("").construct_object(node, deep=True)


def is_mapping(node) -> bool:
    return type(node).__name__ == "MappingNode"


def is_scalar(node) -> bool:
    return type(node).__name__ == "ScalarNode"


def mapping_items(node, source: str, what: str) -> list[tuple[str, object, object]]:
    """``(key, key_node, value_node)`` of a mapping node, in file order.

    Raises:
        LorasizeError: not a mapping, a key that is not a string, or a key given twice (which
            ``yaml.safe_load`` would silently resolve by keeping the last).
    """
    if not is_mapping(node):
        raise LorasizeError(f"{what} must be a mapping of 'key: value' lines",
                            source=f"{source}:{line(node)}")
    items, seen = [], {}
    for key_node, value_node in node.value:
        key = value(key_node) if is_scalar(key_node) else None
        if not isinstance(key, str):
            raise LorasizeError(f"{what}: keys must be names, got {key!r}",
                                source=f"{source}:{line(key_node)}")
        if key in seen:
            raise LorasizeError(f"{what}: '{key}' is given twice (first on line {seen[key]})",
                                source=f"{source}:{line(key_node)}")
        seen[key] = line(key_node)
        items.append((key, key_node, value_node))
    return items


def render_scalar(item) -> str:
    """A scalar or flat mapping as YAML flow text (``12``, ``0.5%``, ``{a: 1, b: 2}``)."""
    if isinstance(item, dict):
        return "{" + ", ".join(f"{_key_text(k)}: {render_scalar(v)}" for k, v in item.items()) + "}"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float)):
        return repr(item)
    text = str(item)
    yaml = _yaml()
    plain = yaml.safe_load(text) == text if text and text.strip() == text else False
    return text if plain and not any(c in text for c in ",{}[]#:") else _quoted(text)


def _key_text(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else _quoted(key)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _block_lines(key: str, item, indent: str, nested_block: bool) -> list[str]:
    if isinstance(item, dict) and nested_block and item:
        lines = [f"{indent}{_key_text(key)}:"]
        for k, v in item.items():
            lines += _block_lines(k, v, indent + "  ", nested_block)
        return lines
    return [f"{indent}{_key_text(key)}: {render_scalar(item)}"]


def _last_end(node) -> int:
    """Character index just after the last character of a node's own text (a block collection's
    end mark lies on the following line, past comments and blank lines; its last leaf's does not)."""
    if getattr(node, "flow_style", None) is False and node.value:
        last = node.value[-1]
        return _last_end(last[1] if isinstance(last, tuple) else last)
    return node.end_mark.index


class TextEdits:
    """Edits to a YAML text at node positions, applied together (last first, so indices hold)."""

    def __init__(self, text: str):
        self.text = text
        self._edits: list[tuple[int, int, str]] = []

    def replace(self, node, new_text: str) -> None:
        """Replace the text of a scalar or flow-style node."""
        self._edits.append((node.start_mark.index, node.end_mark.index, new_text))

    def set_items(self, mapping, items: dict, nested_block: bool = False) -> None:
        """Set ``key: value`` pairs in a mapping node: values of existing keys are replaced in
        place (a nested mapping value key by key), missing keys are added after the last one.
        Keys of the node that ``items`` lacks are left as they are."""
        existing = {value(k): (k, v) for k, v in mapping.value if is_scalar(k)}
        missing = {}
        for key, new in items.items():
            if key not in existing:
                missing[key] = new
                continue
            _, node = existing[key]
            if isinstance(new, dict) and is_mapping(node):
                self.set_items(node, new)
            else:
                self.replace(node, render_scalar(new))
        if missing:
            self.add_items(mapping, missing, nested_block)

    def add_items(self, mapping, items: dict, nested_block: bool = False) -> None:
        """Add ``key: value`` pairs at the end of a mapping node, in its style."""
        if mapping.flow_style or not mapping.value:
            body = ", ".join(f"{_key_text(k)}: {render_scalar(v)}" for k, v in items.items())
            if not mapping.value:
                self.replace(mapping, "{" + body + "}")
                return
            end = mapping.end_mark.index - 1  # the closing brace
            self._edits.append((end, end, ", " + body))
            return
        indent = " " * mapping.value[0][0].start_mark.column
        lines = []
        for key, new in items.items():
            lines += _block_lines(key, new, indent, nested_block)
        at = _last_end(mapping.value[-1][1])
        newline = self.text.find("\n", at)
        at = len(self.text) if newline < 0 else newline
        self._edits.append((at, at, "\n" + "\n".join(lines) + ("\n" if newline < 0 else "")))

    def apply(self) -> str:
        """The text with every edit made."""
        text = self.text
        # Last first, so earlier indices hold; of two inserts at one place, the first-made is
        # applied last and so comes first.
        order = sorted(range(len(self._edits)), key=lambda i: (self._edits[i][:2], i), reverse=True)
        for start, end, new in (self._edits[i] for i in order):
            text = text[:start] + new + text[end:]
        return text
