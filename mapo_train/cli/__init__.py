"""The `mapo-train` command line. Each command lives in its own module of this package and only
parses arguments and calls typed functions; this module picks the command from the first word and
turns user errors into a one-line message with a non-zero exit.

mapo-train --recipe RECIPE.yaml [section.key=value ...] [--resume latest|PATH]   (cli.train)
mapo-train eval ...                                                              (cli.eval)
mapo-train cache ...                                                             (cli.cache)
mapo-train export RUN --to single-file|kohya-lora                                (cli.export)
"""

from __future__ import annotations

import importlib
import sys

from mapo_data.errors import MapoError

# First-word subcommands, each a module with main(argv); imported only when used.
SUBCOMMANDS = {
    "eval": "mapo_train.cli.eval",
    "cache": "mapo_train.cli.cache",
    "export": "mapo_train.cli.export",
}


def _subcommand(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(SUBCOMMANDS[name])
    except ModuleNotFoundError as err:
        if err.name == SUBCOMMANDS[name]:
            raise MapoError(f"`mapo-train {name}` is not available in this version") from None
        raise
    return module.main(argv) or 0


def run(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    from mapo_train.cli import train

    return train.run(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mapo_data.quiet import exit_on_closed_pipe, quiet_libraries

    quiet_libraries()  # transformers' torchvision-fallback warnings, before any model is loaded
    try:
        code = run(argv)
    except MapoError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"interrupted{_RESUME_HINTS.get(argv[0] if argv else '', _RESUME_HINTS[''])}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `mapo-train --keys | head`: the reader has what it wanted
        exit_on_closed_pipe()
    sys.exit(code)


# What Ctrl-C leaves and how to go on, by command (training is the default command).
_RESUME_HINTS = {
    "": ": checkpoints already written are kept; add --resume latest to the same command to continue",
    "cache": ": completed cache shards are kept; rerun the same command to resume",
    "eval": "",
    "export": "",
}
