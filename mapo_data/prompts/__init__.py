"""Context prompts: where they come from (`sources`), how they are cleaned (`curation`), how they
are measured in CLIP tokens (`tokens`), and how a curated list is written (`output`)."""

from mapo_data.prompts.curation import CuratedPrompts, PromptCurationConfig, curate_prompts
from mapo_data.prompts.output import report_path, write_prompts, write_report
from mapo_data.prompts.sources import load_prompts
from mapo_data.prompts.tokens import load_tokenizers

__all__ = [
    "CuratedPrompts",
    "PromptCurationConfig",
    "curate_prompts",
    "load_prompts",
    "load_tokenizers",
    "report_path",
    "write_prompts",
    "write_report",
]
