"""Embeddings in OpenAI's shape: one vector per input, batched by the decode loop.

A context pools by the config's ``pooling``, else by the model's own pooling type. A model with
none (a generative model such as Gemma served with ``embedding = true``) gets the mean of its
token vectors, computed here, where llama-cpp-python answered one vector per token (a nested
list OpenAI clients cannot read). ``pooling = "none"`` in the config asks for exactly those
per-token vectors, and ``rank`` for a reranker's scores: neither is an embedding, so such a model
refuses embedding requests with a clear error.

Each vector is scaled to unit length (Euclidean), as OpenAI's are and as llama-server does by
default, so that a dot product is the cosine similarity. ``encoding_format = "base64"`` sends
each one as OpenAI does: the little-endian float32 bytes, base64-encoded.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from gateway.engine.batching import BatchEngine
from gateway.engine.jobs import EmbeddingJob, JobReader, RequestScope
from gateway.engine.loading import LoadedModel
from gateway.engine.vocab import Vocab


class Embeddings:
    def __init__(self, engine: BatchEngine, loaded: LoadedModel, vocab: Vocab) -> None:
        self.engine = engine
        self.loaded = loaded
        self.vocab = vocab

    def _pool_mean(self) -> bool:
        """Whether the vectors are averaged here (the context does not pool); ValueError when
        this model serves no embeddings."""
        from llama_cpp import llama_cpp as capi

        spec = self.loaded.spec
        if not spec.embedding:
            raise ValueError(f"model {spec.name!r} does not serve embeddings (embedding = false in its config)")
        pooling = self.loaded.pooling
        if pooling == capi.LLAMA_POOLING_TYPE_RANK:
            raise ValueError(f"model {spec.name!r} pools by rank (a reranker): it gives scores, not embeddings")
        if pooling == capi.LLAMA_POOLING_TYPE_NONE:
            if spec.pooling == "none":
                raise ValueError(
                    f"model {spec.name!r} has pooling = \"none\" (one vector per token), which an embedding "
                    "response cannot carry: set pooling to mean, cls or last"
                )
            return True
        return False

    # The argument list is llama-cpp-python's create_embedding: the worker binds params to it.
    def create_embedding(
        self, scope: RequestScope, input: str | list[str], model: str | None = None, encoding_format: str = "float"
    ) -> dict[str, Any]:
        pool_mean = self._pool_mean()
        inputs = [input] if isinstance(input, str) else input
        if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
            raise ValueError("input must be a string or a non-empty list of strings")
        limit = self.loaded.n_batch  # one input is one sequence of one batch (llama-cpp-python truncates too)
        tokens = []
        for i, text in enumerate(inputs):
            ids = self.vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:limit]
            if not ids:
                raise ValueError(f"input[{i}] is empty (and this model adds no BOS token)")
            tokens.append(ids)
        job = EmbeddingJob(accepted_at=scope.accepted_at, inputs=tokens, pool_mean=pool_mean)
        scope.register(job, self.engine.cancel)
        reader = JobReader(job)
        scope.track(reader)
        self.engine.submit(job)
        summary = reader.wait()
        vectors = reader.embeddings.vectors if reader.embeddings is not None else ()
        data = [{"object": "embedding", "embedding": encode(vector, encoding_format), "index": i} for i, vector in enumerate(vectors)]
        return {
            "object": "list",
            "data": data,
            "model": model if isinstance(model, str) else self.loaded.spec.model_path,
            "usage": {"prompt_tokens": summary.prompt_tokens, "total_tokens": summary.prompt_tokens},
        }


def unit_length(vector: Any) -> np.ndarray:
    """The vector scaled to Euclidean length 1 (a zero vector stays zero), in float32."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.sqrt(np.dot(v, v)))
    return (v / norm if norm > 0 else v).astype(np.float32)


def encode(vector: Any, encoding_format: str) -> list[float] | str:
    """One embedding at unit length, as a list of floats or (``"base64"``) OpenAI's base64 of
    its little-endian float32 bytes."""
    unit = unit_length(vector)
    if encoding_format == "base64":
        return base64.b64encode(unit.astype("<f4").tobytes()).decode("ascii")
    if encoding_format != "float":
        raise ValueError(f"encoding_format must be 'float' or 'base64', not {encoding_format!r}")
    return unit.tolist()
