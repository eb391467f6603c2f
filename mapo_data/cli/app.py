"""The shared Typer application that every command module registers on."""

import typer
from typer.core import TyperCommand


class MapoCommand(TyperCommand):
    """How every mapo-data command's help reads; typer's defaults get two things wrong for us.

    - Help texts are Rich markup, in which a hand-written ``[default: runs/<preset>]`` is a style
      tag and vanishes, leaving "Output folder ." behind. Literal brackets are escaped here, once
      for every command, instead of in each string.
    - Arguments show in the usage line as ``{preset}`` and ``{inputs}...``. Here an argument reads
      as click writes it, in capitals (``PRESET``, ``INPUTS...``, ``[SOURCE]`` when optional), or
      as its ``metavar``, the same in the usage line and in the Arguments panel.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.rich_markup_mode == "rich":  # typer only renders with Rich when it is installed
            from rich.markup import escape

            for attr in ("help", "epilog", "short_help"):
                if getattr(self, attr, None):
                    setattr(self, attr, escape(getattr(self, attr)))
            for param in self.params:
                if getattr(param, "help", None):
                    param.help = escape(param.help)
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                if param.nargs != 1 and not name.endswith("..."):
                    name += "..."
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _Typer(typer.Typer):
    """A Typer whose commands are MapoCommands unless a command asks for another class."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or MapoCommand, **kwargs)


app = _Typer(
    name="mapo-data",
    help=(
        "Build, curate, inspect and publish SDXL preference-pair datasets.\n\n"
        "Example: mapo-data build pick-style --split pixel --model tiny --num-pairs 32 --out runs/pixel"
    ),
    no_args_is_help=True,
    # -h as well as --help, as mapo-train (argparse) and most tools accept.
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)


def split_words(value: str | None) -> tuple[str, ...]:
    """A comma-separated option (``--require-words a,b``) as a tuple, blanks dropped."""
    return tuple(w.strip() for w in value.split(",") if w.strip()) if value else ()
