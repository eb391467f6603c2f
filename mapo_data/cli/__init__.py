"""The `mapo-data` command line. Each command group lives in its own module and only parses
arguments and calls typed functions; this module assembles them and turns user errors into a
one-line message with a non-zero exit."""

from __future__ import annotations

import os
import sys

# Library chatter (torchvision fallbacks, Hub-connection retries) would bury our one-line
# messages; users can still raise it with TRANSFORMERS_VERBOSITY=warning.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402

from mapo_data.cli.app import app

# Importing a command module registers its commands on `app`.
from mapo_data.cli import build as _build  # noqa: F401,E402  isort: skip
from mapo_data.cli import prompts as _prompts  # noqa: F401,E402  isort: skip
from mapo_data.cli import curate as _curate  # noqa: F401,E402  isort: skip
from mapo_data.cli import inspect as _inspect  # noqa: F401,E402  isort: skip
from mapo_data.cli import publish as _publish  # noqa: F401,E402  isort: skip


def main(argv: list[str] | None = None) -> None:
    from mapo_data.errors import MapoError

    try:
        code = app(args=argv, prog_name="mapo-data", standalone_mode=False)
    except MapoError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as ex:  # raised by --help and explicit exits
        sys.exit(ex.exit_code)
    except Exception as err:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
    # Without standalone mode click returns a command's `typer.Exit(code)` instead of exiting.
    if isinstance(code, int) and code:
        sys.exit(code)
