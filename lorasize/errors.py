"""The one exception type for bad input.

A :class:`LorasizeError` is the user's mistake (an unknown model, r <= 0, a malformed
config.json), not ours: the CLI prints its message on one line and exits 2. ``source`` names the
flag or file the message is about, so the message can say what to fix.
"""

from __future__ import annotations


class LorasizeError(ValueError):
    """Bad input: a flag, file or value that lorasize cannot use.

    Args:
        message: one sentence saying what is wrong and, where possible, what would be right.
        source: the flag (``--r``) or file path the problem is in, if any.
    """

    def __init__(self, message: str, source: str | None = None):
        super().__init__(message)
        self.source = source

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.source}: {message}" if self.source else message


class MissingExtraError(LorasizeError):
    """An optional dependency is missing; the message says which ``pip install`` to run."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(
            f"{feature} needs the '{module}' package: pip install \"lorasize[{extra}]\""
        )
        self.extra = extra
