"""Synthetic ModelInfo values for planner tests (no file needed)."""

from planner.model_info import ModelInfo
from planner.units import GIB, MIB

__all__ = ["GIB", "MIB", "model_info"]


def model_info(
    *,
    n_layers: int = 32,
    layer_mib: float = 100.0,
    n_embd: int = 4096,
    n_head: int = 32,
    n_head_kv: int = 8,
    head_dim: int = 128,
    n_vocab: int = 32000,
    n_ff: int = 14336,
    token_embd_mib: float = 70.0,
    output_mib: float | None = 100.0,
    sliding_window: int = 0,
    swa_layers: tuple[bool, ...] | None = None,
    name: str = "synthetic",
) -> ModelInfo:
    """A llama-like model whose layers all weigh ``layer_mib``."""
    return ModelInfo(
        paths=(f"/models/{name}.gguf",),
        architecture="llama",
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=(n_head_kv,) * n_layers,
        key_length=head_dim,
        value_length=head_dim,
        n_vocab=n_vocab,
        n_ff=n_ff,
        context_length=8192,
        sliding_window=sliding_window,
        swa_layers=swa_layers if swa_layers is not None else (False,) * n_layers,
        layer_bytes=(int(layer_mib * MIB),) * n_layers,
        token_embd_bytes=int(token_embd_mib * MIB),
        token_embd_type=12,
        output_bytes=int(output_mib * MIB) if output_mib is not None else None,
        output_norm_bytes=n_embd * 4,
        other_bytes=0,
        largest_tensor_bytes=int(max(output_mib or 0, token_embd_mib) * MIB),
        file_bytes=0,
        name=name,
    )
