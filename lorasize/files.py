"""Writing files the way lorasize promises: atomically, never leaving a half-written file."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _read_only(path: Path) -> bool:
    """The owner's write bit, not only access(): root may write anything, but a file made
    read-only says it is not to be replaced."""
    return not stat.S_IMODE(path.stat().st_mode) & stat.S_IWUSR or not os.access(path, os.W_OK)


def check_writable(path: str | Path, source: str) -> None:
    """Refuse, before any work starts, an output path :func:`write_atomic` could not write: a
    folder, a read-only file, or a missing or unwritable folder.

    Raises:
        LorasizeError: naming ``source`` (the flag or file).
    """
    from .errors import LorasizeError

    given = Path(path)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if target.is_dir():
        raise LorasizeError(f"{given} is a folder, not a file", source=source)
    if target.exists() and _read_only(target):
        raise LorasizeError(f"{given} is read-only", source=source)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise LorasizeError(f"the folder {folder} does not exist", source=source)
    if not os.access(folder, os.W_OK):
        raise LorasizeError(f"the folder {folder} is not writable", source=source)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    readers see the old file or the new one, never a partial one. A symlink is written through
    (its target is replaced, the link stays); an existing file keeps its mode; a read-only one
    is refused.

    Raises:
        LorasizeError: the file is read-only.
    """
    from .errors import LorasizeError

    given = Path(path)
    path = Path(os.path.realpath(given)) if given.is_symlink() else given
    mode = None
    if path.exists():
        if _read_only(path):
            raise LorasizeError("is read-only: not overwritten", source=str(given))
        mode = stat.S_IMODE(path.stat().st_mode)
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp creates 0600; give a new file the usual modes
        os.chmod(temporary, mode)
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
