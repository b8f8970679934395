"""The docs say what the code does: the CLI reference is generated from --help and current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text() == module.render(), (
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py")


def test_readme_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_command.strip() in readme
    assert "lorasize estimate --model llama2-7b" in readme


def test_readme_marks_commands_and_output_apart():
    """Every fenced block says what it holds: bash (commands to run), console (a transcript
    with $ prompts), text (output), or a file's language."""
    import re

    for name in ("README.md", "docs/performance.md"):
        text = (ROOT / name).read_text()
        blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)
        assert blocks
        for language, body in blocks:
            assert language in ("bash", "console", "text", "python", "yaml", "json"), (name, body[:60])
            if language == "bash":
                assert not any(line.startswith(("$ ", "Throughput", "lorasize:"))
                               for line in body.splitlines())
            if language == "console":
                assert body.startswith("$ ")


def test_performance_transcripts_are_what_the_commands_print():
    spec = importlib.util.spec_from_file_location("gen_doc_transcripts",
                                                  ROOT / "scripts" / "gen_doc_transcripts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.FILES:
        assert module.render(ROOT / name) == (ROOT / name).read_text(), (
            f"{name} is stale: run python scripts/gen_doc_transcripts.py")
