"""Dataset presets: which prefix goes in front of the context prompt on each side of a pair.

The strings are the MaPO paper's (arXiv 2406.06424), exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from mapo_data.errors import MapoError


@dataclass(frozen=True)
class Preset:
    name: str
    split: str | None
    chosen_prefix: str  # "" means the context prompt alone
    rejected_prefix: str

    @property
    def label(self) -> str:
        return f"{self.name}/{self.split}" if self.split else self.name

    def chosen_prompt(self, context: str) -> str:
        return assemble_prompt(self.chosen_prefix, context)

    def rejected_prompt(self, context: str) -> str:
        return assemble_prompt(self.rejected_prefix, context)


# preset name -> split -> (chosen prefix, rejected prefix); split None means "no splits".
PRESETS: dict[str, dict[str | None, tuple[str, str]]] = {
    "pick-style": {
        "cartoon": ("Disney style animated image.", "Realistic 8k image."),
        "pixel": ("Pixel art style image.", "Realistic 8k image."),
    },
    "pick-safety": {None: ("", "Sexual, nudity, +19 image.")},
}
PRESET_NAMES = (*PRESETS, "custom")


def assemble_prompt(prefix: str, context: str) -> str:
    """prefix + " " + context; no prefix means the context prompt alone."""
    prefix, context = prefix.strip(), context.strip()
    return f"{prefix} {context}" if prefix else context


def get_preset(
    name: str,
    split: str | None = None,
    chosen_prefix: str | None = None,
    rejected_prefix: str | None = None,
) -> Preset:
    """Resolve a preset, refusing unknown names/splits and prefixes given where they do not apply."""
    if name == "custom":
        if split:
            raise MapoError("the custom preset takes no --split")
        if chosen_prefix is None or rejected_prefix is None:
            raise MapoError("the custom preset needs both --chosen-prefix and --rejected-prefix")
        if chosen_prefix.strip() == rejected_prefix.strip():
            raise MapoError(
                "--chosen-prefix and --rejected-prefix are the same: the pair would teach nothing"
            )
        return Preset("custom", None, chosen_prefix.strip(), rejected_prefix.strip())
    if name not in PRESETS:
        raise MapoError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    if chosen_prefix is not None or rejected_prefix is not None:
        raise MapoError(f"--chosen-prefix/--rejected-prefix only apply to the custom preset, not {name}")
    splits = PRESETS[name]
    if None in splits:
        if split:
            raise MapoError(f"preset {name} has no splits (got --split {split})")
        chosen, rejected = splits[None]
        return Preset(name, None, chosen, rejected)
    if not split:
        raise MapoError(f"preset {name} needs --split, one of {', '.join(s for s in splits if s)}")
    if split not in splits:
        raise MapoError(
            f"unknown split {split!r} for {name}; choose one of {', '.join(s for s in splits if s)}"
        )
    chosen, rejected = splits[split]
    return Preset(name, split, chosen, rejected)
