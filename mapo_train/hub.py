"""Publishing a finished run to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from mapo_data.errors import MapoError

# Resumable state and raw logs stay local; the Hub gets the model, card, config and images.
IGNORE = ["checkpoint-*/**", ".checkpoint-*/**", "logs/**", "*.tmp"]


def push_run(out: Path, repo_id: str, private: bool = True) -> str:
    """Upload ``out`` as a model repository; the token comes from HF_TOKEN or the saved login
    and is never printed. Returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(out),
            ignore_patterns=IGNORE,
            commit_message="Upload MaPO fine-tuned SDXL (mapo-train)",
        )
    except Exception as err:  # network, auth and permission errors all end the same way for a user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"push to the Hub ({repo_id}) failed: {first}") from err
    return str(url)
