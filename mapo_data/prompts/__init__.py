"""Context prompts: where they come from (`sources`), how they are cleaned (`curation`), how they
are measured in CLIP tokens (`tokens`), how a curated list is written (`output`), and the
`mapo-data prompts` job that strings them together (`job`)."""

from mapo_data.prompts.curation import CuratedPrompts, PromptCurationConfig, curate_prompts
from mapo_data.prompts.job import PromptsJob, default_style_words, preset_prefixes, run_prompts_job
from mapo_data.prompts.output import report_path, write_prompts, write_report
from mapo_data.prompts.sources import load_prompts
from mapo_data.prompts.tokens import load_tokenizers

__all__ = [
    "CuratedPrompts",
    "PromptCurationConfig",
    "PromptsJob",
    "curate_prompts",
    "default_style_words",
    "load_prompts",
    "load_tokenizers",
    "preset_prefixes",
    "report_path",
    "run_prompts_job",
    "write_prompts",
    "write_report",
]
