"""The trained model's card links the evaluation: its marked Evaluation span is rewritten, nothing else."""

from __future__ import annotations

from mapo_train.card import EVAL_END, EVAL_START, render_card
from mapo_train.config import config_from_dict
from mapo_train.eval.card_link import eval_section, link_report_in_cards, run_folder, update_card_text

REPORT = {
    "models": [
        {"label": "base", "source": "tiny", "kind": "base"},
        {"label": "mapo", "source": "runs/mapo", "kind": "full UNet"},
        {"label": "dpo", "source": "runs/dpo", "kind": "LoRA"},
    ],
    "prompts": {"num_prompts": 8, "held_out_checked_against": "pairs (split train)"},
    "settings": {"confidence": 0.95, "images_per_prompt": 2},
    "results": {
        "clip:x": {
            "primary_key": "clip_pref_prob",
            "higher_is_better": True,
            "verdict_label": "judged preferred",
            "per_model": {
                "base": {"mean": 0.3, "verdict": {"rate": 0.25}},
                "mapo": {"mean": 0.7, "verdict": {"rate": 0.8125}},
                "dpo": {"mean": 0.5, "verdict": {"rate": 0.5}},
            },
            "versus_base": {
                "mapo": {"win_rate": 0.875, "low": 0.529, "high": 0.978},
                "dpo": {"win_rate": 0.5, "low": 0.2, "high": 0.8},
            },
        },
        "pickscore": {
            "primary_key": "pickscore",
            "higher_is_better": True,
            "verdict_label": None,
            "per_model": {"base": {"mean": 20.5}, "mapo": {"mean": 21.25}, "dpo": {"mean": 20.0}},
            "versus_base": {
                "mapo": {"win_rate": 0.625, "low": 0.3, "high": 0.86},
                "dpo": {"win_rate": 0.25, "low": 0.07, "high": 0.59},
            },
        },
    },
}


def test_eval_section_has_this_models_numbers():
    text = eval_section(REPORT, "mapo", "eval/report.md")
    assert "| `clip:x` (by clip_pref_prob, higher is better) | judged preferred 81.2% | 25.0% |" in text
    assert "87.5% [52.9%, 97.8%]" in text
    assert "| mean pickscore 21.25 | 20.5 | 62.5% [30.0%, 86.0%] |" in text
    assert "8 prompts (none of them in the training data pairs (split train))" in text
    assert "Compared in the same run: dpo." in text
    assert "[eval/report.md](eval/report.md)" in text
    assert "50.0% [20.0%, 80.0%]" not in text  # dpo's numbers belong on dpo's card


def test_eval_section_states_a_lora_scale_other_than_trained():
    scaled = {**REPORT, "settings": {**REPORT["settings"], "lora_scale": 0.5}}
    note = " The LoRA was applied at 0.5 times its trained strength (`--lora-scale 0.5`), not as trained."
    assert note in eval_section(scaled, "dpo", "eval/report.md")
    assert "--lora-scale" not in eval_section(scaled, "mapo", "eval/report.md")  # a full UNet: no scale
    assert "--lora-scale" not in eval_section(REPORT, "dpo", "eval/report.md")  # no setting: 1.0
    as_trained = {**REPORT, "settings": {**REPORT["settings"], "lora_scale": 1.0}}
    assert "--lora-scale" not in eval_section(as_trained, "dpo", "eval/report.md")


def test_update_replaces_only_the_marked_span():
    card = f"# Model\n\n## Evaluation\n\n{EVAL_START}\nNot evaluated yet.\n{EVAL_END}\n\nMy own notes.\n"
    once = update_card_text(card, "first")
    assert once == f"# Model\n\n## Evaluation\n\n{EVAL_START}\nfirst\n{EVAL_END}\n\nMy own notes.\n"
    assert update_card_text(once, "second") == once.replace("first", "second")  # re-evaluation updates


def test_update_without_markers():
    legacy = "# Model\n\n## Evaluation\n\nNot evaluated yet: run it.\n\nTrained with `mapo-train`.\n"
    updated = update_card_text(legacy, "numbers")
    assert (
        updated
        == f"# Model\n\n## Evaluation\n\n{EVAL_START}\nnumbers\n{EVAL_END}\n\nTrained with `mapo-train`.\n"
    )
    bare = update_card_text("# Model\n\nSome text.\n", "numbers")
    assert bare == f"# Model\n\nSome text.\n\n## Evaluation\n\n{EVAL_START}\nnumbers\n{EVAL_END}\n"


def test_cards_of_run_folders_link_the_report(tmp_path):
    cfg = config_from_dict({"data": {"path": "pairs"}}, [])
    runs = {}
    for name in ("mapo", "dpo"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "training_config.yaml").write_text("model:\n  pretrained: tiny\n")
        (run / "pytorch_lora_weights.safetensors").write_bytes(b"{}")
        (run / "README.md").write_text(
            render_card(cfg, out=run, steps=1, num_pairs=2, ties_dropped=0, effective_batch=1)
        )
        runs[name] = run
    assert "Not evaluated yet" in (runs["mapo"] / "README.md").read_text()
    assert run_folder(str(runs["dpo"] / "pytorch_lora_weights.safetensors")) == runs["dpo"]
    assert run_folder(str(tmp_path)) is None  # not a run: no card is touched

    report_md = tmp_path / "eval" / "report.md"
    specs = [str(runs["mapo"]), str(runs["dpo"] / "pytorch_lora_weights.safetensors")]
    written = link_report_in_cards(REPORT, specs, ["mapo", "dpo"], report_md)
    assert written == [runs["mapo"] / "README.md", runs["dpo"] / "README.md"]
    mapo_card = (runs["mapo"] / "README.md").read_text()
    assert "Not evaluated yet" not in mapo_card
    assert "[../../eval/report.md](../../eval/report.md)" in mapo_card  # relative to the card
    assert "87.5% [52.9%, 97.8%]" in mapo_card
    assert "25.0% [7.0%, 59.0%]" in (runs["dpo"] / "README.md").read_text()
    assert mapo_card.startswith("---\nlibrary_name: diffusers")  # the rest of the card is intact
    assert "Trained with `mapo-train`" in mapo_card
