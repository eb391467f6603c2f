"""mapo_data: build, curate, inspect and publish SDXL preference-pair datasets."""

__version__ = "0.1.0"
