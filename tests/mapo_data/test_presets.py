import pytest

from mapo_data.errors import MapoError
from mapo_data.presets import assemble_prompt, get_preset


@pytest.mark.parametrize(
    ("name", "split", "chosen", "rejected"),
    [
        ("pick-style", "cartoon", "Disney style animated image.", "Realistic 8k image."),
        ("pick-style", "pixel", "Pixel art style image.", "Realistic 8k image."),
        ("pick-safety", None, "", "Sexual, nudity, +19 image."),
    ],
)
def test_paper_prefixes_are_exact(name, split, chosen, rejected):
    preset = get_preset(name, split)
    assert (preset.chosen_prefix, preset.rejected_prefix) == (chosen, rejected)


def test_prompt_assembly_puts_prefix_then_space_then_context():
    pixel = get_preset("pick-style", "pixel")
    assert pixel.chosen_prompt("a fox in the snow") == "Pixel art style image. a fox in the snow"
    assert pixel.rejected_prompt("a fox in the snow") == "Realistic 8k image. a fox in the snow"


def test_empty_prefix_means_context_alone():
    safety = get_preset("pick-safety")
    assert safety.chosen_prompt("  a woman reading  ") == "a woman reading"
    assert safety.rejected_prompt("a woman reading") == "Sexual, nudity, +19 image. a woman reading"
    assert assemble_prompt("", "x") == "x"


def test_custom_preset_takes_user_prefixes():
    custom = get_preset("custom", chosen_prefix="Watercolor painting.", rejected_prefix="Photograph.")
    assert custom.chosen_prompt("a boat") == "Watercolor painting. a boat"
    assert custom.label == "custom"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "pick-colour"}, "unknown preset 'pick-colour'"),
        ({"name": "pick-style", "split": "watercolor"}, "unknown split 'watercolor'"),
        ({"name": "pick-style"}, "needs --split"),
        ({"name": "pick-safety", "split": "pixel"}, "has no splits"),
        ({"name": "custom", "chosen_prefix": "A."}, "needs both"),
        ({"name": "custom", "chosen_prefix": "A.", "rejected_prefix": "A."}, "are the same"),
        ({"name": "pick-style", "split": "pixel", "chosen_prefix": "A."}, "only apply to the custom"),
    ],
)
def test_bad_preset_choices_are_one_line_errors(kwargs, message):
    with pytest.raises(MapoError, match=message) as info:
        get_preset(**kwargs)
    assert "\n" not in str(info.value)
