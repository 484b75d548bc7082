"""configs/cluster-example.toml made plannable here: each model's header rebuilt (sparse files,
no weights) in a folder that stands for the nodes' /models volume."""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType as QT

from testkit.ggufmaker import q4_k_m_types, write_header_only_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "cluster-example.toml"

# The published shapes of the models the example names (their GGUF headers' hyperparameters).
SHAPES = {
    "qwen2.5-72b-instruct-q4_0.gguf": dict(arch="qwen2", n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=29568, n_vocab=152064, attn_bias=True, tensor_types=QT.Q4_0),
    "Meta-Llama-3.1-70B-Instruct-Q4_K_M.gguf": dict(arch="llama", n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256),
    "qwen2.5-32b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648, n_vocab=152064, attn_bias=True),
    "Meta-Llama-3.1-8B-Instruct-Q5_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tensor_types=QT.Q5_K),
    "qwen2.5-coder-7b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, attn_bias=True),
    "nomic-embed-text-v1.5.Q8_0.gguf": dict(arch="llama", n_layers=12, n_embd=768, n_head=12, n_head_kv=12, n_ff=3072, n_vocab=30528, tensor_types=QT.Q8_0),
    "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf": dict(arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32768),
    "Llama-3.2-3B-Instruct-Q4_K_M.gguf": dict(arch="llama", n_layers=28, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_vocab=128256, tied=True),
    "qwen2.5-14b-instruct-q4_k_m.gguf": dict(arch="qwen2", n_layers=48, n_embd=5120, n_head=40, n_head_kv=8, n_ff=13824, n_vocab=152064, attn_bias=True),
    "Mistral-Nemo-Instruct-2407-Q4_K_M.gguf": dict(arch="llama", n_layers=40, n_embd=5120, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=131072, key_length=128, value_length=128),
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
