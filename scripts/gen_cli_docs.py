"""Write docs/cli.md from the commands' --help, so the reference never drifts from the code.

Run: python scripts/gen_cli_docs.py          (tests/test_docs.py checks the file is current)
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [[], ["estimate"], ["trace"], ["profile"], ["serve"], ["fit"], ["report"], ["validate"], ["calibrate"], ["check"], ["models"], ["gpus"], ["inspect"]]


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from lorasize.cli import main

    parts = ["# Command-line reference", "",
             "Generated from `--help` by `scripts/gen_cli_docs.py`; do not edit by hand.", ""]
    for command in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main([*command, "--help"])
        parts += [f"## lorasize {' '.join(command)}".rstrip(), "", "```", out.getvalue().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
