"""Writing files the way lorasize promises: atomically, never leaving a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal modes
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: str | Path):
    """Parse a JSON file; a missing or malformed file is a one-line :class:`LorasizeError`
    naming the file (and the line)."""
    import json

    from .errors import LorasizeError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LorasizeError(f"cannot read ({exc.strerror})", source=str(path)) from None
    except UnicodeDecodeError:
        raise LorasizeError("not a readable JSON file (not UTF-8 text)", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise LorasizeError(f"not a readable JSON file (line {exc.lineno}: {exc.msg})",
                            source=str(path)) from None


def read_yaml(path: str | Path):
    """Parse a YAML file, with the same one-line errors as :func:`read_json`."""
    import yaml

    from .errors import LorasizeError

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LorasizeError(f"cannot read ({exc.strerror})", source=str(path)) from None
    except UnicodeDecodeError:
        raise LorasizeError("not valid YAML (not UTF-8 text)", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LorasizeError(f"not valid YAML{where}", source=str(path)) from None
