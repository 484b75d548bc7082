"""configs/cluster-example.toml made plannable here: each model's header rebuilt (sparse files,
no weights) in a folder that stands for the nodes' /models volume."""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType as QT

from testkit.ggufmaker import q4_k_m_types, write_header_only_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "cluster-example.toml"

# The published shapes of the models the example names (their GGUF headers' hyperparameters,
# trained context included).
SHAPES = {
    "qwen2.5-72b-instruct-q4_0.gguf": dict(arch="qwen2", n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=29568, n_vocab=152064, attn_bias=True, tensor_types=QT.Q4_0, context_length=32768),
    "Meta-Llama-3.1-70B-Instruct-Q4_K_M.gguf": dict(arch="llama", n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256, context_length=131072),
    "qwen2.5-32b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648, n_vocab=152064, attn_bias=True, context_length=32768),
    "Meta-Llama-3.1-8B-Instruct-Q5_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tensor_types=QT.Q5_K, context_length=131072),
    "qwen2.5-coder-7b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, attn_bias=True, context_length=32768),
    "nomic-embed-text-v1.5.Q8_0.gguf": dict(arch="llama", n_layers=12, n_embd=768, n_head=12, n_head_kv=12, n_ff=3072, n_vocab=30528, tensor_types=QT.Q8_0, context_length=2048),
    "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32768, context_length=32768),
    "Llama-3.2-3B-Instruct-Q4_K_M.gguf": dict(arch="llama", n_layers=28, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_vocab=128256, tied=True, context_length=131072),
    "qwen2.5-14b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=48, n_embd=5120, n_head=40, n_head_kv=8, n_ff=13824, n_vocab=152064, attn_bias=True, context_length=32768),
    "Mistral-Nemo-Instruct-2407-Q4_K_M.gguf": dict(arch="llama", n_layers=40, n_embd=5120, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=131072, key_length=128, value_length=128, context_length=1024000),
}


def write_example(folder: Path) -> Path:
    """The example config with /models/ pointing at ``folder``, and every model's header there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in SHAPES.items():
        shape = dict(shape)
        shape.setdefault("tensor_types", q4_k_m_types(shape["n_layers"]))
        write_header_only_model(folder / name, vocab_in_header=False, **shape)
    cfg = folder / "cluster-example.toml"
    cfg.write_text(EXAMPLE.read_text(encoding="utf-8").replace('"/models/', f'"{folder}/'), encoding="utf-8")
    return cfg


# configs/model-headers: the header copies that configs/multi-gpu.toml and cluster-example.toml
# are checked with here ([planner] model_headers). They are made from SHAPES, not copied from the
# real files: the shapes are the published ones and the tensor types follow llama-quantize's
# recipes, so sizes are close to the real files' but not byte-exact, and there is no tokenizer.
HEADERS = REPO / "configs" / "model-headers"
# The real files carry a chat template; the copies carry this in its place, so that checking a
# config finds one, as it would in the real file (nothing renders it: copies are never served).
STAND_IN_TEMPLATE = "{# stand-in: the real model's chat template is not part of this example header #}"
EMBEDDING_MODELS = {"nomic-embed-text-v1.5.Q8_0.gguf"}


def write_example_headers(folder: Path, scratch: Path) -> list[Path]:
    """Every SHAPES model's header copy in ``folder`` (``scratch`` holds the sparse models)."""
    from gateway.placement.header_copies import write_header_copy

    def template(w) -> None:
        w.add_chat_template(STAND_IN_TEMPLATE)

    folder.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    written = []
    for name, shape in SHAPES.items():
        shape = dict(shape)
        shape.setdefault("tensor_types", q4_k_m_types(shape["n_layers"]))
        stem = name.removesuffix(".gguf")
        model = write_header_only_model(
            scratch / name, vocab_in_header=False, name=stem,
            extra_kv=None if name in EMBEDDING_MODELS else template, **shape,
        )
        written.append(write_header_copy(model, folder / name))
    return written


if __name__ == "__main__":
    # python -m tests.cluster_example: rewrite configs/model-headers.
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for path in write_example_headers(HEADERS, Path(scratch)):
            print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size:,} bytes)")
