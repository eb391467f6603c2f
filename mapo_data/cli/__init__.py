"""The `mapo-data` command line. Each command group lives in its own module and only parses
arguments and calls typed functions; this module assembles them and turns user errors into a
one-line message with a non-zero exit."""

from __future__ import annotations

import sys

from mapo_data.quiet import quiet_libraries

# Library chatter (torchvision fallbacks, Hub-connection retries) would bury our one-line
# messages; users can still raise it with TRANSFORMERS_VERBOSITY=warning.
quiet_libraries()

import typer  # noqa: E402

from mapo_data.cli.app import app  # noqa: E402

# Importing a command module registers its commands on `app`.
from mapo_data.cli import build as _build  # noqa: F401,E402  isort: skip
from mapo_data.cli import prompts as _prompts  # noqa: F401,E402  isort: skip
from mapo_data.cli import curate as _curate  # noqa: F401,E402  isort: skip
from mapo_data.cli import inspect as _inspect  # noqa: F401,E402  isort: skip
from mapo_data.cli import publish as _publish  # noqa: F401,E402  isort: skip
from mapo_data.cli import importing as _importing  # noqa: F401,E402  isort: skip


def main(argv: list[str] | None = None) -> None:
    from mapo_data.errors import MapoError

    try:
        code = app(args=argv, prog_name="mapo-data", standalone_mode=False)
    except MapoError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo(interrupted_message(sys.argv[1:] if argv is None else argv), err=True)
        sys.exit(_INTERRUPTED)
    except typer.Exit as ex:  # raised by --help and explicit exits
        sys.exit(ex.exit_code)
    except Exception as err:  # click usage errors arrive here with standalone_mode=False
        # typer vendors its own click: its usage errors are TyperExceptions, not click's classes.
        if isinstance(err, typer.TyperException) and hasattr(err, "show"):
            err.show()
            sys.exit(err.exit_code)
        raise
    # Without standalone mode click returns a command's `typer.Exit(code)` instead of exiting;
    # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130) before the handler above can see it.
    if code == _INTERRUPTED:
        typer.echo(interrupted_message(sys.argv[1:] if argv is None else argv), err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


# The shell's code for a process stopped by SIGINT (128 + 2).
_INTERRUPTED = 130
# Commands that keep their finished shards and resume when rerun with the same arguments.
_RESUMABLE = ("build", "curate", "import")


def interrupted_message(argv: list[str]) -> str:
    """What Ctrl-C prints: for a resumable command, how to carry on from where it stopped."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in _RESUMABLE:
        return "interrupted: completed shards are kept; rerun the same command to resume"
    return "interrupted"
