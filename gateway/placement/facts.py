"""What a model's file says about it, for clients choosing a model (``/v1/models``): its trained
context, parameter count, size, quantization, chat templates and whether it can generate.

Read from the GGUF header off the event loop, once per file version (path, size, mtime), by the
``ModelFactsReader`` the app provides; ``pool.describe`` turns them into the outward view.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gguf

from gateway.config.chat_formats import chat_format_in_use, returns_tool_calls
from gateway.config.model_files import resolve_model_path
from gateway.config.schema import ModelConfig
from gateway.engine.tool_calls import family_of
from planner.errors import ModelFileError
from planner.gguf_reader import read_model_info
from planner.model_info import ModelInfo

# llama.cpp's architectures without a decoder (llama_model_has_decoder is false): they embed,
# they do not generate.
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert", "t5encoder"})


@dataclass(frozen=True)
class ModelFacts:
    """A model file's header facts, as a client sees them."""

    architecture: str
    context_length: int | None  # n_ctx_train; None when the header does not say
    n_params: int
    file_bytes: int
    quantization: str | None  # general.file_type as llama.cpp names it ("Q4_K_M"); None when absent
    chat_templates: tuple[str, ...]
    # The templates whose model's tool calls the gateway parses (gateway.engine.tool_calls).
    tool_call_templates: tuple[str, ...] = ()

    @property
    def generates(self) -> bool:
        return self.architecture not in ENCODER_ARCHITECTURES


def quantization_name(file_type: int | None) -> str | None:
    """``general.file_type`` as llama.cpp prints it: 15 is "Q4_K_M", 0 "F32", 1 "F16"."""
    if file_type is None:
        return None
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"unknown file type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def facts_from_info(info: ModelInfo) -> ModelFacts:
    return ModelFacts(
        architecture=info.architecture,
        context_length=info.context_length or None,
        n_params=info.n_params,
        file_bytes=info.file_bytes,
        quantization=quantization_name(info.file_type),
        chat_templates=info.chat_templates,
        tool_call_templates=tuple(name for name, text in info.chat_template_texts if family_of(text) is not None),
    )


class ModelFactsReader:
    """Each configured path's facts, read once per version of its file (None: unreadable)."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[tuple[int, int], ModelFacts | None]] = {}

    async def facts(self, paths: Iterable[str]) -> dict[str, ModelFacts | None]:
        """The facts of each configured ``path``, read in a thread (headers are file I/O)."""
        wanted = list(dict.fromkeys(paths))
        return await asyncio.to_thread(self._facts, wanted)

    def _facts(self, paths: list[str]) -> dict[str, ModelFacts | None]:
        out: dict[str, ModelFacts | None] = {}
        for path in paths:
            try:
                file = resolve_model_path(path)
                st = os.stat(file)
            except (ModelFileError, OSError):
                out[path] = None
                continue
            version = (st.st_size, st.st_mtime_ns)
            cached = self._read.get(path)
            if cached is None or cached[0] != version:
                try:
                    facts: ModelFacts | None = facts_from_info(read_model_info(file))
                except ModelFileError:
                    facts = None
                cached = self._read[path] = (version, facts)
            out[path] = cached[1]
        return out


# The keys of ``model_card``: a router lifts them from its nodes' entries to its own
# (gateway.router.directory); tests/unit/router checks the two agree.
MODEL_CARD_FIELDS = (
    "n_ctx",
    "context_length",
    "capabilities",
    "chat_format",
    "architecture",
    "n_params",
    "file_bytes",
    "quantization",
)


def model_card(model: ModelConfig, facts: ModelFacts | None) -> dict[str, Any]:
    """The fields of a model's /v1/models entry that a client chooses it by: its contexts (the
    configured n_ctx, the trained context_length), what it can do, its chat format and its file.
    Unknown (the file unread): null, and tools only where the configured format says so."""
    generates = facts.generates if facts is not None else True
    if facts is not None:
        chat_format: str | None = chat_format_in_use(model.chat_format, facts.chat_templates)
    else:
        chat_format = model.chat_format
    return {
        "n_ctx": model.n_ctx,
        "context_length": facts.context_length if facts is not None else None,
        "capabilities": {
            "completion": generates,
            "chat": generates,
            "embeddings": model.embedding,
            # Calls parsed back into tool_calls: the formats whose handlers do it, and a GGUF
            # template of a family the gateway parses (gateway.engine.tool_calls).
            "tools": generates
            and chat_format is not None
            and (returns_tool_calls(chat_format) or (facts is not None and chat_format in facts.tool_call_templates)),
        },
        "chat_format": chat_format if generates else None,
        "architecture": facts.architecture if facts is not None else None,
        "n_params": facts.n_params if facts is not None else None,
        "file_bytes": facts.file_bytes if facts is not None else None,
        "quantization": facts.quantization if facts is not None else None,
    }
