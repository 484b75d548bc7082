"""What the planner knows about one GGUF model: the facts read from its header.

Produced by ``planner.gguf_reader.read_model_info`` from a file, or built directly by tests and
benchmarks. Everything the memory model needs is here; nothing here touches the file again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the GGUF tensor table."""

    name: str
    ggml_type: int  # a gguf.GGMLQuantizationType value
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    nbytes: int


@dataclass(frozen=True)
class ModelInfo:
    """Header facts of one GGUF model (all split parts together)."""

    paths: tuple[str, ...]
    architecture: str
    n_layers: int  # block_count: repeating layers, blk.0 .. blk.{n_layers-1}
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # one per layer (GGUF may store a scalar or a per-layer array)
    key_length: int  # head dimension of K (GGUF key_length, else n_embd // n_head)
    value_length: int  # head dimension of V
    n_vocab: int
    n_ff: int  # largest feed-forward width (0 when unknown)
    context_length: int  # n_ctx_train (0 when unknown)
    sliding_window: int  # 0 when the model has no sliding-window attention
    swa_layers: tuple[bool, ...]  # per layer: uses the sliding-window cache
    layer_bytes: tuple[int, ...]  # bytes of blk.N.* per layer
    token_embd_bytes: int
    token_embd_type: int
    output_bytes: int | None  # None: tied embeddings (llama.cpp then copies token_embd there)
    output_norm_bytes: int
    other_bytes: int  # non-repeating tensors besides token_embd/output/output_norm
    largest_tensor_bytes: int
    file_bytes: int  # sum of all parts' sizes on disk
    name: str = ""  # general.name, when present
    file_type: int | None = None  # general.file_type
    # The chat templates the header carries, named as llama-cpp-python names them (its chat
    # handlers): "chat_template.default" for tokenizer.chat_template, "chat_template.NAME" for
    # tokenizer.chat_template.NAME.
    chat_templates: tuple[str, ...] = ()
    # Each of those templates' text, by the same names.
    chat_template_texts: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)
    # Read from a header copy (metadata and tensor table, no tensor data): it plans, it cannot
    # be loaded; file_bytes is then the size of the model it was copied from.
    header_copy: bool = False

    @property
    def total_bytes(self) -> int:
        """Bytes of all tensors."""
        return (
            sum(self.layer_bytes)
            + self.token_embd_bytes
            + (self.output_bytes or 0)
            + self.output_norm_bytes
            + self.other_bytes
        )

    @property
    def n_params(self) -> int:
        """Parameters: the elements of every tensor (llama.cpp's llama_model_n_params)."""
        total = 0
        for t in self.tensors:
            count = 1
            for dim in t.shape:
                count *= dim
            total += count
        return total

    @property
    def output_layer_bytes(self) -> int:
        """Bytes llama.cpp puts on the output layer's device (output, or a token_embd copy)."""
        out = self.output_bytes if self.output_bytes is not None else self.token_embd_bytes
        return out + self.output_norm_bytes

    def n_embd_k_gqa(self, layer: int) -> int:
        return self.key_length * self.n_head_kv[layer]

    def n_embd_v_gqa(self, layer: int) -> int:
        return self.value_length * self.n_head_kv[layer]
