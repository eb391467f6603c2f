"""Model card content (including the eval-report hook) and the Hub upload call."""

from __future__ import annotations

import pytest
import torch

from mapo_data.errors import MapoError
from mapo_train import hub
from mapo_train.card import render_card
from mapo_train.config import config_from_dict
from mapo_train.plots import plot_curves


def card(tmp_path, *overrides, **kw):
    cfg = config_from_dict({"data": {"path": "mapo-t2i/pick-style-pixel-art"}}, list(overrides))
    args = dict(out=tmp_path, steps=100, num_pairs=500, ties_dropped=3, effective_batch=16)
    return render_card(cfg, **{**args, **kw})


def test_full_card(tmp_path):
    text = card(
        tmp_path, curves="curves.png", grid="validation/step-0000100.png", final_metrics={"loss": 0.5}
    )
    assert text.startswith(
        "---\nlibrary_name: diffusers\nbase_model: stabilityai/stable-diffusion-xl-base-1.0"
    )
    assert "datasets:\n- mapo-t2i/pick-style-pixel-art" in text
    assert 'UNet2DConditionModel.from_pretrained("' in text and "load_lora_weights" not in text
    assert "| beta | `0.1` |" in text and "| alpha | `0.5` |" in text
    assert "500 pairs used, 3 ties dropped" in text
    assert "![validation grid](validation/step-0000100.png)" in text and "(curves.png)" in text
    assert "Not evaluated yet" in text
    assert 'base = "stabilityai/stable-diffusion-xl-base-1.0"' in text and "torch.float16" in text


def test_tiny_card_code_runs(tmp_path, tiny_model_path):
    """The card's snippet for a tiny run is real code: it loads the saved UNet into a pipeline."""
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet").save_pretrained(tmp_path / "unet")
    text = card(tmp_path, "model.pretrained=tiny")
    assert "base_model:" not in text.split("---")[1]
    snippet = text.split("```python\n")[1].split("```")[0]
    code = snippet.rsplit("image = ", 1)[0]  # everything up to rendering
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["pipe"].unet.dtype == namespace["torch"].float32


def test_card_code_for_a_tiny_single_file_base_runs(tmp_path, tiny_model_path):
    """Trained from the tiny model as one file (model.config=tiny): diffusers knows no `tiny` config
    and reads tiny's text_encoder_2 wrong, so the snippet loads the file with mapo's loader, in fp32."""
    from diffusers import StableDiffusionXLPipeline

    from mapo_data.single_file import write_single_file

    p = StableDiffusionXLPipeline.from_pretrained(tiny_model_path)
    single = write_single_file(tmp_path / "tiny.safetensors", p.unet, p.vae, p.text_encoder, p.text_encoder_2)
    with torch.no_grad():
        p.unet.conv_in.bias.add_(1.0)  # "trained": differs from the base in the file
    p.unet.save_pretrained(tmp_path / "unet")
    text = card(tmp_path, f"model.pretrained={single}", "model.config=tiny")
    assert "base_model:" not in text.split("---")[1]
    snippet = text.split("```python\n")[1].split("```")[0]
    assert 'config="tiny"' not in snippet and "float16" not in snippet
    namespace: dict = {}
    exec(snippet.rsplit("image = ", 1)[0], namespace)  # everything up to rendering
    pipe = namespace["pipe"]
    for name, want in (
        ("unet", p.unet),
        ("vae", p.vae),
        ("text_encoder", p.text_encoder),
        ("text_encoder_2", p.text_encoder_2),
    ):
        got, expected = getattr(pipe, name).state_dict(), want.state_dict()
        assert set(got) == set(expected), name
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    assert pipe.unet.dtype == torch.float32
    lora_text = card(tmp_path, f"model.pretrained={single}", "model.config=tiny", "model.finetune=lora")
    lora_snippet = lora_text.split("```python\n")[1].split("```")[0]
    assert (
        'parts = load_components(base, "tiny")\npipe = StableDiffusionXLPipeline(**parts)\n' in lora_snippet
    )
    # A real SDXL single file borrows its configs from a diffusers folder diffusers can read.
    real = card(tmp_path, f"model.pretrained={single}", f"model.config={tiny_model_path}")
    assert f'StableDiffusionXLPipeline.from_single_file(base, config="{tiny_model_path}", unet=unet' in real


def test_lora_dpo_card_and_eval_link(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.md").write_text("# report")
    text = card(
        tmp_path, "model.finetune=lora", "loss.name=dpo", "train.push_to_hub=true", "train.hub_model_id=me/x"
    )
    assert 'pipe.load_lora_weights("me/x")' in text and "- lora" in text
    # DPO has no loss alpha; the LoRA's own alpha (= rank by default) is part of the finetune row.
    assert (
        "| beta | `5000` |" in text
        and "| alpha |" not in text.split("## Training")[1].split("full resolved")[0]
    )
    assert "| finetune | `lora (rank 8, alpha 8)` |" in text
    # The card is written with new weights: a report already in eval/ judged earlier ones.
    assert (
        "These weights (100 steps) are not evaluated yet. Out of date: the report "
        "[eval/report.md](eval/report.md) judged earlier weights of this folder." in text
    )


def test_curves_png(tmp_path):
    history = [{"step": i, "loss": 1.0 / i, "margin": 0.01 * i, "accuracy": 0.5} for i in range(1, 30)]
    path = plot_curves(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([], tmp_path / "none.png") is None


class FakeApi:
    calls: list = []
    fail = False

    def create_repo(self, repo_id, **kw):
        if FakeApi.fail:
            raise RuntimeError("401 Unauthorized\nmore detail")
        FakeApi.calls.append(("create", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        FakeApi.calls.append(("upload", kw))


def test_push_uploads_the_run_without_checkpoints(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.fail = [], False
    assert hub.push_run(tmp_path, "me/model", private=True) == "https://huggingface.co/me/model"
    (_, repo, kw), (_, upload) = FakeApi.calls
    assert repo == "me/model" and kw["private"] is True and kw["repo_type"] == "model"
    assert "checkpoint-*/**" in upload["ignore_patterns"] and upload["folder_path"] == str(tmp_path)
    FakeApi.fail = True
    with pytest.raises(MapoError, match=r"^push to the Hub \(me/model\) failed: 401 Unauthorized$"):
        hub.push_run(tmp_path, "me/model")
