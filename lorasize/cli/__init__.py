"""The ``lorasize`` command line: a thin layer over the library.

Each command parses its flags, builds the specs, calls one library function and renders. Bad
input ends in one line on stderr and exit code 2; a failed check (does not fit) in exit code 1.
"""

from __future__ import annotations

import os
import re
import sys

import click

from .. import __version__
from ..errors import LorasizeError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
# Notes a command makes while reading its flags, printed once it has run: a run that ends in a
# usage error prints that one line and nothing else.
_DEFERRED_NOTES: list[str] = []


def defer_note(text: str) -> None:
    """Print ``note: text`` on stderr after the command, unless it ends in a usage error."""
    _DEFERRED_NOTES.append(text)


# The recipe --recipe read in this run (set while the flags are parsed), so that an error about
# a flag the recipe set, and the command line did not, can say where the value came from.
_RECIPES: list = []


def recipe_read(recipe) -> None:
    _RECIPES.append(recipe)


def _recipe_origin(exc: LorasizeError, args: list[str]) -> str:
    """`` (the recipe FILE set --flag: ...)`` where ``exc`` names a flag the recipe set and the
    command line did not give; else empty."""
    flag = exc.source or ""
    if not _RECIPES or not flag.startswith("--"):
        return ""
    recipe, option = _RECIPES[-1], flag[2:].replace("-", "_")
    setting = next((s for s in recipe.settings if s.option == option), None)
    negated = "--no-" + flag[2:]
    if setting is None or any(a in (flag, negated) or a.startswith(flag + "=") for a in args):
        return ""
    fix = negated if setting.value is True else f"{flag} VALUE"
    return f" (the recipe {recipe.path} set {setting.flag}: give {fix} to override it)"


# Each command's module, imported only when that command runs (or help lists them): a cold
# `lorasize estimate` loads none of report, profile, check, calibrate, trace or serve.
COMMANDS = {
    "estimate": ("estimate_cmd", "estimate"), "trace": ("trace_cmd", "trace"),
    "profile": ("profile_cmd", "profile"), "models": ("catalog_cmds", "models"),
    "gpus": ("catalog_cmds", "gpus"), "inspect": ("inspect_cmd", "inspect"),
    "serve": ("serve_cmd", "serve"), "fit": ("serve_cmd", "fit"),
    "report": ("report_cmd", "report"), "validate": ("validate_cmd", "validate"),
    "calibrate": ("calibrate_cmd", "calibrate"), "check": ("check_cmd", "check"),
}


class LazyGroup(click.Group):
    """A group that imports a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        import importlib

        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                               "terminal_width": 100})
@click.version_option(__version__, prog_name="lorasize")
def cli() -> None:
    """Know what LoRA and QLoRA fine-tuning and adapter serving cost before you rent the GPU.

    \b
    Examples:
      lorasize estimate --model llama2-7b --r 64 --targets all
      lorasize estimate -m llama3-8b --method qlora --r 16 -t all -b 4 -s 2048 --grad-checkpointing --gpu rtx-4090
      lorasize models
      lorasize inspect ./my-adapter
    """


def _one_line(message: str) -> str:
    """The message on one line: its own line breaks (click lists choices one a line) become
    spaces, any other control character is escaped."""
    text = re.sub(r"\s*\n\s*", " ", str(message))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; never lets a traceback reach the user."""
    args = sys.argv[1:] if argv is None else list(argv)
    _DEFERRED_NOTES.clear()
    _RECIPES.clear()
    try:
        result = cli.main(args=args, prog_name="lorasize", standalone_mode=False)
        for note in _DEFERRED_NOTES:
            click.echo(f"note: {note}", err=True)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return EXIT_USAGE
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "lorasize"
        click.echo(_one_line(f"{command}: error: {exc.format_message()}"), err=True)
        return EXIT_USAGE
    except LorasizeError as exc:
        click.echo(_one_line(f"lorasize: error: {exc}{_recipe_origin(exc, args)}"), err=True)
        return EXIT_USAGE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return EXIT_INTERRUPTED  # click turns Ctrl-C into Abort
        click.echo("aborted", err=True)
        return EXIT_CHECK_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug of ours: say so in one line, traceback on request
        if os.environ.get("LORASIZE_DEBUG"):
            raise
        click.echo(_one_line(f"lorasize: internal error: {type(exc).__name__}: {exc} "
                             f"(set LORASIZE_DEBUG=1 for the traceback, and please report it)"),
                   err=True)
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK
