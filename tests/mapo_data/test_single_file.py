"""SDXL single-file checkpoints: the tiny model written as one original-layout file reads back
through diffusers' own converters unchanged, builds the same images as its folder, is identified by
content, and pickle files are refused before they are ever unpickled."""

from __future__ import annotations

import ast
import io
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from mapo_data.errors import MapoError
from mapo_data.render import RenderConfig, pipeline_identity
from mapo_data.single_file import load_components, write_single_file
from tests.mapo_data.test_build import run_cli

ROOT = Path(__file__).resolve().parents[2]
BUILD = ["build", "pick-style", "--split", "pixel", "--num-pairs", "2", "--batch-size", "2", "--dtype", "fp32",
         "--steps", "2", "--height", "32", "--width", "32", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_parts(tiny_model_path):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, tiny_parts) -> Path:
    out = tmp_path_factory.mktemp("single") / "tiny.safetensors"
    p = tiny_parts
    return write_single_file(out, p.unet, p.vae, p.text_encoder, p.text_encoder_2)


def assert_equal_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_file_has_the_original_layout(single_file):
    with safe_open(str(single_file), framework="pt") as f:
        keys = set(f.keys())
    # The keys ComfyUI, A1111 and diffusers use to recognise an SDXL checkpoint's parts.
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    ):
        assert key in keys, key
    assert not any(k.startswith(("unet.", "down_blocks.", "vae.", "text_model.")) for k in keys)


def test_diffusers_reads_the_file_back_to_the_same_weights(single_file, tiny_parts, tiny_model_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = str(tiny_model_path)
    unet = UNet2DConditionModel.from_single_file(
        str(single_file), config=config, subfolder="unet", local_files_only=True
    )
    vae = AutoencoderKL.from_single_file(
        str(single_file), config=config, subfolder="vae", local_files_only=True
    )
    assert_equal_weights(unet, tiny_parts.unet)
    assert_equal_weights(vae, tiny_parts.vae)
    # Each text encoder through diffusers' converter on its own prefix.
    state = load_file(str(single_file))
    for cls, prefix, sub, model in (
        (CLIPTextModel, "conditioner.embedders.0.", "text_encoder", tiny_parts.text_encoder),
        (
            CLIPTextModelWithProjection,
            "conditioner.embedders.1.",
            "text_encoder_2",
            tiny_parts.text_encoder_2,
        ),
    ):
        part = {k: v for k, v in state.items() if k.startswith(prefix)}
        loaded = create_diffusers_clip_model_from_ldm(
            cls, part, subfolder=sub, config=config, local_files_only=True
        )
        assert_equal_weights(loaded, model)
    # mapo's own loader (the one build, eval, train and cache use) gives the same.
    parts = load_components(single_file, "tiny")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_equal_weights(parts[name], getattr(tiny_parts, name))


def _images(folder: Path) -> list[bytes]:
    table = pd.concat(pd.read_parquet(p) for p in sorted((folder / "data").glob("*.parquet")))
    return [table[c].iloc[i] for i in range(len(table)) for c in ("jpg_0", "jpg_1")]


def _pipeline_parts_equal(pipe, want: dict) -> dict[str, bool]:
    """Per component: every weight loaded (none left on the meta device) and equal to ``want``'s."""
    result = {}
    for name, model in want.items():
        got, expected = getattr(pipe, name).state_dict(), model.state_dict()
        result[name] = set(got) == set(expected) and all(
            got[k].device.type != "meta" and torch.equal(got[k], expected[k]) for k in expected
        )
    return result


def test_diffusers_pipeline_misreads_only_tiny_text_encoder_2(single_file, tiny_parts, tiny_model_path):
    """What the README says: diffusers' pipeline loader tells the text encoders apart by width, and
    tiny's are both 32 wide, so its text_encoder_2 gets the first encoder's weights. Should diffusers
    learn to tell them apart, this fails: then the README and the tiny model card can say so."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(
        str(single_file), config=str(tiny_model_path), local_files_only=True
    )
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    assert _pipeline_parts_equal(pipe, {n: getattr(tiny_parts, n) for n in parts}) == {
        "unet": True,
        "vae": True,
        "text_encoder": True,
        "text_encoder_2": False,
    }
    assert pipe.text_encoder_2.state_dict()["text_projection.weight"].device.type == "meta"


def test_diffusers_pipeline_reads_every_part_when_the_encoder_widths_differ(
    tiny_parts, tiny_model_path, tmp_path
):
    """SDXL's encoders are 768 and 1280 wide; a tiny variant whose text_encoder_2 is 48 wide (and a
    UNet that attends to 32 + 48 features) stands for it: the whole pipeline reads back exactly."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path / "wide"
    shutil.copytree(tiny_model_path, folder)
    config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
    config.hidden_size = 48
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    shutil.rmtree(folder / "text_encoder_2")
    text_encoder_2.save_pretrained(folder / "text_encoder_2")
    unet = UNet2DConditionModel.from_config({**tiny_parts.unet.config, "cross_attention_dim": 32 + 48})
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    p = tiny_parts
    file = write_single_file(tmp_path / "wide.safetensors", unet, p.vae, p.text_encoder, text_encoder_2)
    pipe = StableDiffusionXLPipeline.from_single_file(str(file), config=str(folder), local_files_only=True)
    want = {"unet": unet, "vae": p.vae, "text_encoder": p.text_encoder, "text_encoder_2": text_encoder_2}
    assert _pipeline_parts_equal(pipe, want) == dict.fromkeys(want, True)


def test_build_from_the_single_file_gives_the_folder_images(single_file, tmp_path, capsys):
    code, _, err = run_cli([*BUILD, "--model", "tiny", "--out", str(tmp_path / "folder")], capsys)
    assert code == 0, err
    args = ["--model", str(single_file), "--model-config", "tiny", "--out", str(tmp_path / "file")]
    code, _, err = run_cli([*BUILD, *args], capsys)
    assert code == 0, err
    from_folder, from_file = _images(tmp_path / "folder"), _images(tmp_path / "file")
    assert len(from_file) == 4 and from_file == from_folder
    assert Image.open(io.BytesIO(from_file[0])).size == (32, 32)
    code, _, err = run_cli(["verify", str(tmp_path / "file")], capsys)
    assert code == 0, err


def test_a_single_file_without_configs_is_a_one_line_error(single_file, tmp_path, capsys):
    code, stdout, err = run_cli([*BUILD, "--model", str(single_file), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {single_file} is a single-file checkpoint without configs or tokenizers; pass --model-config "
        "naming a diffusers folder to borrow them from (the SDXL base folder for SDXL fine-tunes, tiny for "
        "the tiny model)"
    ]
    assert "Traceback" not in stdout + err and not (tmp_path / "o" / "data").exists()


class _Trap:
    """Unpickling this touches a file: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_checkpoints_are_refused_unopened(suffix, tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = tmp_path / f"model{suffix}"
    ckpt.write_bytes(pickle.dumps({"state_dict": _Trap(marker)}))
    code, stdout, err = run_cli(
        [*BUILD, "--model", str(ckpt), "--model-config", "tiny", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {ckpt}: pickle checkpoints can run code when loaded and are refused; use a .safetensors file, "
        "or pass --allow-pickle if you trust where this file came from"
    ]
    assert not marker.exists() and "Traceback" not in stdout + err
    # Opted in, it is still read with weights_only=True: the trap is refused, not run.
    args = [
        *BUILD,
        "--model",
        str(ckpt),
        "--model-config",
        "tiny",
        "--allow-pickle",
        "--out",
        str(tmp_path / "o"),
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith(f"error: {ckpt}: not a readable checkpoint: ")
    assert err.count("\n") == 1 and not marker.exists()


def test_an_opted_in_pickle_checkpoint_of_plain_tensors_loads(single_file, tmp_path, tiny_parts):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single_file))}, ckpt)
    with pytest.raises(MapoError, match="pickle checkpoints can run code"):
        load_components(ckpt, "tiny")
    parts = load_components(ckpt, "tiny", allow_pickle=True)
    assert_equal_weights(parts["unet"], tiny_parts.unet)


def _flip_one_weight_byte(path: Path) -> None:
    """Change one byte inside the tensor data, keeping the size (plain file I/O)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_manifest_fingerprint_follows_the_file_content(single_file, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(single_file, copy)

    def identity(path: Path, config: str = "tiny") -> dict:
        return pipeline_identity(RenderConfig(model=str(path), model_config=config, dtype="fp32"))

    before = identity(copy)
    assert before == identity(single_file)  # where the file lies is not part of it
    assert before["model"]["single_file"] and set(before["model"]["config"]) == {
        "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
    }  # fmt: skip
    _flip_one_weight_byte(copy)
    after = identity(copy)
    assert after["model"]["single_file"] != before["model"]["single_file"]
    assert after["model"]["config"] == before["model"]["config"]


def _torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has weights_only=True) for each torch.load(...) call in a source file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_in_mapo_is_weights_only():
    found = {}
    for package in ("mapo_data", "mapo_train"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, safe in _torch_load_calls(path):
                found[f"{path.relative_to(ROOT)}:{line}"] = safe
    assert found, "the audit found no torch.load at all: it would pass vacuously"
    assert [where for where, safe in found.items() if not safe] == []
    # Nothing reaches torch.load under another name either.
    for package in ("mapo_data", "mapo_train"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            assert "from torch import load" not in text and "pickle.load" not in text, path


def test_an_sdxl_shaped_unet_gets_the_sdxl_checkpoint_names():
    """The tiny UNet has two blocks of one layer; SDXL has three blocks of two layers with 1, 2 and
    10 transformer layers. A small UNet of SDXL's shape must land on the names real SDXL files use,
    and diffusers' loader must map every one of them back."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from mapo_data.single_file import UNET_PREFIX, _unet_key

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        use_linear_projection=True,
        norm_num_groups=8,
    )
    state = unet.state_dict()
    original = {UNET_PREFIX + _unet_key(k, unet.config): v for k, v in state.items()}
    assert len(original) == len(state)
    for name in (  # as in sd_xl_base_1.0.safetensors
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.8.1.transformer_blocks.1.attn2.to_k.weight",
        "middle_block.1.transformer_blocks.2.ff.net.2.weight",
        "middle_block.2.emb_layers.1.weight",
        "output_blocks.2.2.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.0.out_layers.3.weight",
        "label_emb.0.2.weight",
        "time_embed.2.bias",
    ):
        assert UNET_PREFIX + name in original, name
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)
