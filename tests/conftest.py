"""Shared test setup: everything runs offline on the CPU with the built-in tiny model."""

from __future__ import annotations

import os

# The Hub is never reachable in tests; the real loading code must take the offline path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny models' kernels are too small to gain from threads, and on a busy 2-core machine
# threads fighting over cores make them many times slower; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # diffusers and transformers bind their log handler to whatever sys.stderr is when they first
    # log. Bound inside a test that captures output (capsys), it would later write to a closed
    # stream and print "--- Logging error ---" tracebacks into another test's output, so the
    # outcome would depend on test order. Bind both now, to the session's stderr.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_logger("diffusers")
    transformers_logging.get_logger("transformers")


@pytest.fixture(scope="session")
def tiny_model_path():
    """Folder of the built-in tiny SDXL model in the diffusers layout (built once, then cached)."""
    from mapo_data.tiny import tiny_model_path as build

    return build()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
