"""Keep library chatter out of mapo's output, for every command line (mapo-data and mapo-train).

Two kinds of noise buried the one-line messages:

- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  `CLIPImageProcessorPil`" (and the same for Siglip), logged when diffusers imports its pipeline
  modules. The PIL backend is the one mapo wants (torchvision is not a dependency), so the
  warning never asks anything of the user. It is dropped by a filter on the logger that emits it,
  which works whatever the verbosity and whether or not transformers was imported first (a
  notebook, a test, mapo-train importing mapo_data): an environment variable read at
  transformers' import cannot promise that.
- Everything else transformers logs below an error, which ``TRANSFORMERS_VERBOSITY=error`` hides
  unless the user set the variable (``TRANSFORMERS_VERBOSITY=warning`` brings it back).

And one way to end quietly: output piped into a reader that stops early (``| head``).
"""

from __future__ import annotations

import logging
import os
import sys

# The logger transformers' lazy-import fallback writes to (transformers/utils/import_utils.py).
_FALLBACK_LOGGER = "transformers.utils.import_utils"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


_FILTER = _DropTorchvisionFallback()


def quiet_libraries() -> None:
    """Silence the library chatter described above; call before any model is loaded. Idempotent."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logger = logging.getLogger(_FALLBACK_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def exit_on_closed_pipe() -> None:
    """End a command whose reader closed the pipe (``mapo-train --keys | head``): exit 0 without a
    BrokenPipeError traceback. Python's documented remedy: point stdout at devnull, so the flush at
    exit cannot fail again. Call from an ``except BrokenPipeError`` in a CLI's entry point."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
