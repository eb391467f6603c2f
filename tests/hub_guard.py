"""A test process as on a laptop without ``HF_HUB_OFFLINE``: offline mode off in every library, the
Hub endpoint a closed local port, and every network connection recorded.

tests/conftest.py turns offline mode on for the whole session (the libraries copy the flag when
imported), so these tests turn it off by hand, in the same places ``mapo_data.resolve.go_offline``
turns it on.
"""

from __future__ import annotations

import socket
import sys

import pytest

# Nothing listens on the discard port: a connection is refused at once, as with no network.
CLOSED_ENDPOINT = "http://127.0.0.1:9"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def hub_not_offline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Offline mode off, the Hub at :data:`CLOSED_ENDPOINT`; returns the list of (host, port) every
    connection attempt went to. Only loopback connections go ahead; any other raises OSError.
    Everything is undone by ``monkeypatch`` (use it from a fixture)."""
    import datasets.config
    from huggingface_hub import constants

    import mapo_data.resolve as resolve_module

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_ENDPOINT)
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".", 1)[0] not in ("huggingface_hub", "datasets", "diffusers"):
            continue
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if isinstance(getattr(module, flag, None), bool):
                monkeypatch.setattr(module, flag, False)
    assert not constants.is_offline_mode() and not datasets.config.HF_HUB_OFFLINE
    monkeypatch.setattr(resolve_module, "_hub_reason", None)
    monkeypatch.setattr(resolve_module, "_note_due", False)

    attempts: list[tuple[str, int]] = []

    def record(address) -> None:
        host, port = address[0], address[1]
        attempts.append((str(host), int(port)))
        if str(host) not in LOOPBACK:
            raise OSError(f"test: no network (connection to {host}:{port} refused)")

    real_create_connection = socket.create_connection
    real_connect = socket.socket.connect

    def create_connection(address, *args, **kwargs):
        record(address)
        return real_create_connection(address, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple):
            record(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts
