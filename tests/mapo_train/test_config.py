"""Recipes load; unknown keys, wrong types and contradictions are rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mapo_train.config import ConfigError, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
TRAIN_RECIPES = sorted((ROOT / "recipes" / "train").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
MINIMAL = {"data": {"path": "pairs"}}


def test_the_expected_recipes_exist():
    names = {p.stem for p in TRAIN_RECIPES}
    assert {
        "quickstart-tiny",
        "pick-style-pixel",
        "pick-style-cartoon",
        "pick-safety",
        "pickapic-v2",
    } <= names
    assert any("lora" in n for n in names)
    assert {p.stem for p in ACCELERATE_CONFIGS} >= {"1gpu", "8gpu-ddp", "8gpu-zero2"}


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_starts_with_its_command(recipe):
    cfg = load_config(recipe)
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and "mapo" in first and recipe.name in first
    # The resolved config round-trips through YAML.
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again.to_dict() == cfg.to_dict()


def test_paper_scale_recipe():
    cfg = load_config(ROOT / "recipes/train/pickapic-v2.yaml")
    t = cfg.train
    assert t.batch_size * 8 * t.gradient_accumulation_steps == 2048
    assert t.optimizer == "adamw8bit" and t.gradient_checkpointing
    zero2 = yaml.safe_load((ROOT / "recipes/accelerate/8gpu-zero2.yaml").read_text())
    assert zero2["distributed_type"] == "DEEPSPEED" and zero2["deepspeed_config"]["zero_stage"] == 2
    assert zero2["num_processes"] == 8
    assert "pickapic-v2.yaml" in (ROOT / "recipes/train/pickapic-v2.yaml").read_text().splitlines()[0]


def test_lora_recipe_is_lora_and_quickstart_is_tiny():
    lora = [load_config(p) for p in TRAIN_RECIPES if "lora" in p.stem]
    assert all(c.model.finetune == "lora" for c in lora)
    quick = load_config(ROOT / "recipes/train/quickstart-tiny.yaml")
    assert (
        quick.model.pretrained == "tiny"
        and quick.data.resolution == 64
        and quick.data.path == "runs/pixel-curated"
    )


@pytest.mark.parametrize("recipe", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_are_yaml_with_a_command(recipe):
    data = yaml.safe_load(recipe.read_text())
    assert data["compute_environment"] == "LOCAL_MACHINE"
    assert recipe.read_text().startswith(
        f"# accelerate launch --config_file recipes/accelerate/{recipe.name}"
    )


def test_overrides_are_typed():
    cfg = config_from_dict(
        MINIMAL,
        [
            "train.learning_rate=5e-6",  # YAML 1.1 reads this as a string
            "train.max_steps=20",
            "validation.prompts=[a cat, a dog]",
            "validation.resolution=null",
            "train.gradient_checkpointing=true",
            "train.mixed_precision=no",
            "data.path=runs/pixel",
        ],
    )
    assert cfg.train.learning_rate == 5e-6 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.max_steps == 20
    assert cfg.validation.prompts == ["a cat", "a dog"]
    assert cfg.validation.resolution is None
    assert cfg.train.gradient_checkpointing is True
    assert cfg.train.mixed_precision == "no"
    assert cfg.data.path == "runs/pixel"


def test_model_shorthand_and_defaults():
    cfg = config_from_dict({"model": "tiny", **MINIMAL})
    assert cfg.model.pretrained == "tiny"
    assert cfg.loss_beta == 0.1 and cfg.loss_alpha == 0.5
    assert config_from_dict(MINIMAL, ["loss.name=dpo"]).loss_beta == 5000.0


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        (
            MINIMAL,
            ["train.lerning_rate=1"],
            r"unknown key train.lerning_rate \(did you mean train.learning_rate\?\)",
        ),
        (MINIMAL, ["trian.max_steps=1"], r"unknown key trian \(did you mean train\?\)"),
        ({**MINIMAL, "optimiser": {}}, [], "unknown key optimiser"),
        (MINIMAL, ["train.max_steps=ten"], "train.max_steps: expected int"),
        (MINIMAL, ["train.max_steps=1.5"], "train.max_steps: expected int"),
        (MINIMAL, ["loss.name=orpo"], "loss.name: expected one of 'mapo', 'dpo', 'sft'"),
        (MINIMAL, ["train.ema=maybe"], "train.ema: expected bool"),
        (MINIMAL, ["train.max_steps"], "not of the form section.key=value"),
        ({}, [], "data.path is required"),
        (MINIMAL, ["lora.rank=16"], "lora.rank is set but model.finetune is 'full'"),
        ({**MINIMAL, "lora": {}}, [], "lora is set but model.finetune is 'full'"),
        (MINIMAL, ["loss.name=dpo", "loss.alpha=0.5"], "loss.alpha applies only to loss.name=mapo"),
        (MINIMAL, ["loss.name=sft", "loss.beta=1"], "loss.beta has no effect with loss.name=sft"),
        (MINIMAL, ["train.push_to_hub=true"], "train.hub_model_id is empty"),
        (
            MINIMAL,
            ["train.lr_scheduler=constant", "train.lr_warmup_steps=10"],
            "train.lr_warmup_steps is set",
        ),
        (MINIMAL, ["data.resolution=100"], "data.resolution must be a positive multiple of 8"),
        (MINIMAL, ["validation.prompts=[]"], "validation.prompts is empty"),
        (MINIMAL, ["train.checkpoints_keep=0"], "train.checkpoints_keep must be at least 1"),
        (MINIMAL, ["train.batch_size=0"], "train.batch_size must be at least 1"),
    ],
)
def test_rejections_name_the_key(data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, overrides)


def test_lora_settings_are_fine_with_lora():
    cfg = config_from_dict(
        MINIMAL, ["model.finetune=lora", "lora.rank=4", "lora.target_modules=[to_q, to_v]"]
    )
    assert cfg.lora.rank == 4 and cfg.lora.target_modules == ["to_q", "to_v"]


def test_missing_and_broken_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(scalar)


def test_str_fields_take_yaml_switch_words_and_numbers_as_written(tmp_path):
    """YAML 1.1 reads off/no/yes as booleans and 1.10 / 010 as numbers; a str field gets the text."""
    cfg = config_from_dict(
        MINIMAL, ["data.cache=off", "train.mixed_precision=no", "model.revision=1.10", "data.split=010"]
    )
    assert (cfg.data.cache, cfg.train.mixed_precision) == ("off", "no")
    assert (cfg.model.revision, cfg.data.split) == ("1.10", "010")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  path: pairs\n  cache: off\n  split: 010\n  random_flip: off\n"
        "model:\n  revision: 1.10\ntrain:\n  mixed_precision: no\n  max_steps: 1_000\n"
        "validation:\n  prompts: [yes, 1.10]\n"
    )
    cfg = load_config(recipe)
    assert (cfg.data.cache, cfg.data.split, cfg.model.revision) == ("off", "010", "1.10")
    assert cfg.data.random_flip is False and cfg.train.mixed_precision == "no"
    assert cfg.train.max_steps == 1000 and cfg.validation.prompts == ["yes", "1.10"]
    # What --print-config writes loads back to the same values.
    assert yaml.safe_load(dump_config(cfg))["model"]["revision"] == "1.10"
    with pytest.raises(ConfigError, match="train.max_steps: expected int, got True"):
        config_from_dict(MINIMAL, ["train.max_steps=yes"])


@pytest.mark.parametrize(
    ("value", "cache"), [("off", "off"), ("OFF", "off"), ("no", "off"), ("false", "off"), ("Auto", "auto")]
)
def test_data_cache_switch_words_mean_the_documented_values(value, cache):
    assert config_from_dict(MINIMAL, [f"data.cache={value}"]).data.cache == cache


def test_data_cache_yes_is_refused_rather_than_made_a_folder():
    with pytest.raises(ConfigError, match=r"data.cache: 'yes' does not say where the cache goes; use auto"):
        config_from_dict(MINIMAL, ["data.cache=yes"])
    assert config_from_dict(MINIMAL, ["data.cache=./yes"]).data.cache == "./yes"
