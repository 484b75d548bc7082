"""Fixtures of the runtime's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.ggufmaker import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("pool") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)
