"""Write GGUF files for tests and benchmarks with ``gguf.GGUFWriter``.

Two kinds:

* header-only models (``write_header_only_model``): a realistic metadata block and tensor table
  with the right shapes and types, followed by a *sparse* hole where the tensor data would be, so
  a 7B-shaped file costs a few MB of disk at most;
* tiny real models (``write_tiny_llama``): random weights and a minimal byte-level BPE tokenizer
  that llama-cpp-python 0.3.36 loads and runs on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

__all__ = [
    "QT",
    "TensorSpec",
    "TensorTypes",
    "model_tensor_specs",
    "q4_k_m_types",
    "tiny_tokenizer",
    "use_more_bits",
    "write_gemma3_1b_like",
    "write_header_only_model",
    "write_qwen2_7b_q4_k_m",
    "write_tiny_llama",
]

# A type for every tensor: one type for all matrices, {short name: type} with "*" as the
# default for matrices, or a function (short name, layer or None) -> type called for every tensor.
# Short names drop the "blk.N." prefix: "attn_v.weight", "token_embd.weight".
TensorTypes = Union[QT, Mapping[str, QT], Callable[[str, "int | None"], QT]]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    ggml_type: QT

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's llama-quant rule for which layers Q4_K_M gives Q6_K attn_v / ffn_down."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def q4_k_m_types(n_layers: int, q6_k_matrix: str = "output.weight") -> Callable[[str, int | None], QT]:
    """Q4_K_M as llama-quantize lays it out for a dense Qwen2/Llama-shaped model.

    ``q6_k_matrix`` is the output matrix llama-quantize keeps in Q6_K: ``output.weight``, or
    ``token_embd.weight`` for a model with tied embeddings (Gemma 3).
    """

    def pick(short: str, layer: int | None) -> QT:
        if not short.endswith(".weight") or short.endswith("norm.weight"):
            return QT.F32
        if short == q6_k_matrix:
            return QT.Q6_K
        if short in ("attn_v.weight", "ffn_down.weight") and layer is not None and use_more_bits(layer, n_layers):
            return QT.Q6_K
        return QT.Q4_K

    return pick


def _type_picker(types: TensorTypes) -> Callable[[str, int | None, int], QT]:
    if callable(types) and not isinstance(types, QT):
        return lambda short, layer, ndim: types(short, layer)
    if isinstance(types, Mapping):
        default = types.get("*", QT.F16)
        return lambda short, layer, ndim: QT.F32 if ndim < 2 else types.get(short, default)
    return lambda short, layer, ndim: QT.F32 if ndim < 2 else types


def model_tensor_specs(
    *,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int | Sequence[int],
    n_ff: int,
    n_vocab: int,
    tensor_types: TensorTypes = QT.F16,
    key_length: int | None = None,
    value_length: int | None = None,
    tied: bool = False,
    attn_bias: bool = False,
    qk_norm: bool = False,
    post_norms: bool = False,
) -> list[TensorSpec]:
    """The tensor table of a dense Llama/Qwen2/Gemma-style decoder, in converter order."""
    pick = _type_picker(tensor_types)
    head_k = key_length or n_embd // n_head
    head_v = value_length or n_embd // n_head
    kv_heads = [n_head_kv] * n_layers if isinstance(n_head_kv, int) else list(n_head_kv)

    def spec(name: str, shape: tuple[int, ...], layer: int | None = None) -> TensorSpec:
        short = name.split(".", 2)[2] if layer is not None else name
        return TensorSpec(name, shape, QT(pick(short, layer, len(shape))))

    specs = [spec("token_embd.weight", (n_embd, n_vocab))]
    for il in range(n_layers):
        p = f"blk.{il}."
        n_k = head_k * kv_heads[il]
        n_v = head_v * kv_heads[il]
        layer = [
            (p + "attn_norm.weight", (n_embd,)),
            (p + "attn_q.weight", (n_embd, head_k * n_head)),
            (p + "attn_k.weight", (n_embd, n_k)),
            (p + "attn_v.weight", (n_embd, n_v)),
        ]
        if attn_bias:
            layer += [
                (p + "attn_q.bias", (head_k * n_head,)),
                (p + "attn_k.bias", (n_k,)),
                (p + "attn_v.bias", (n_v,)),
            ]
        if qk_norm:
            layer += [(p + "attn_q_norm.weight", (head_k,)), (p + "attn_k_norm.weight", (head_k,))]
        layer.append((p + "attn_output.weight", (head_v * n_head, n_embd)))
        if post_norms:
            layer.append((p + "post_attention_norm.weight", (n_embd,)))
        layer += [
            (p + "ffn_norm.weight", (n_embd,)),
            (p + "ffn_gate.weight", (n_embd, n_ff)),
            (p + "ffn_up.weight", (n_embd, n_ff)),
            (p + "ffn_down.weight", (n_ff, n_embd)),
        ]
        if post_norms:
            layer.append((p + "post_ffw_norm.weight", (n_embd,)))
        specs += [spec(name, shape, il) for name, shape in layer]
    specs.append(spec("output_norm.weight", (n_embd,)))
    if not tied:
        specs.append(spec("output.weight", (n_embd, n_vocab)))
    return specs


def _add_hparams(
    w: gguf.GGUFWriter,
    arch: str,
    *,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int | Sequence[int],
    n_ff: int,
    context_length: int,
    key_length: int | None,
    value_length: int | None,
    sliding_window: int,
    sliding_window_pattern: int | Sequence[bool] | None,
    name: str,
    file_type: int | None,
    rms_eps: float = 1e-6,
) -> None:
    w.add_name(name)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    if isinstance(n_head_kv, int):
        w.add_head_count_kv(n_head_kv)
    else:
        w.add_key_value(
            gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), list(n_head_kv),
            gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32,
        )
    if key_length is not None:
        w.add_key_length(key_length)
    if value_length is not None:
        w.add_value_length(value_length)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_rope_freq_base(10000.0)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    if isinstance(sliding_window_pattern, int):
        w.add_uint32(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), sliding_window_pattern)
    elif sliding_window_pattern is not None:
        w.add_key_value(
            gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), [bool(x) for x in sliding_window_pattern],
            gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.BOOL,
        )


def _pad(x: int, n: int) -> int:
    return gguf.GGUFWriter.ggml_pad(x, n)


def _fake_vocab(n_vocab: int) -> list[str]:
    # Byte-level-BPE-looking strings of realistic length (~6 bytes), unique, cheap to make.
    return [f"\u0120t{i:x}" for i in range(n_vocab)]


def write_header_only_model(
    path: str | os.PathLike[str],
    *,
    arch: str,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int | Sequence[int],
    n_ff: int,
    n_vocab: int,
    tensor_types: TensorTypes = QT.F16,
    sliding_window: int = 0,
    sliding_window_pattern: int | Sequence[bool] | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    tied: bool = False,
    attn_bias: bool = False,
    qk_norm: bool = False,
    post_norms: bool = False,
    context_length: int = 4096,
    vocab_in_header: bool = True,
    n_merges: int = 0,
    byte_tokenizer: bool = False,
    name: str = "",
    file_type: int | None = None,
    alignment: int | None = None,
    split_max_tensors: int = 0,
    big_endian: bool = False,
    extra_tensors: Sequence[TensorSpec] = (),
    extra_kv: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    """Write a model's full header and a sparse hole the size of its tensor data.

    With ``split_max_tensors`` the model is split like gguf-split (``<stem>-00001-of-0000N.gguf``)
    and the first part's path is returned. ``vocab_in_header`` writes ``tokenizer.ggml.tokens``
    (and token types, and ``n_merges`` merges) with ``n_vocab`` entries; otherwise
    ``{arch}.vocab_size`` carries it. ``byte_tokenizer`` writes ``tiny_tokenizer(n_vocab)`` and a
    chat template instead, so that any text tokenizes (a sparse model served over HTTP).
    """
    path = Path(path)
    specs = model_tensor_specs(
        n_layers=n_layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
        n_vocab=n_vocab, tensor_types=tensor_types, key_length=key_length,
        value_length=value_length, tied=tied, attn_bias=attn_bias, qk_norm=qk_norm,
        post_norms=post_norms,
    ) + list(extra_tensors)

    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(path, arch, endianess=endian, split_max_tensors=split_max_tensors)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    _add_hparams(
        w, arch, n_layers=n_layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        n_ff=n_ff, context_length=context_length, key_length=key_length,
        value_length=value_length, sliding_window=sliding_window,
        sliding_window_pattern=sliding_window_pattern, name=name or f"header-only {arch}",
        file_type=file_type,
    )
    if byte_tokenizer:
        _add_byte_tokenizer(w, tiny_tokenizer(n_vocab))
    elif vocab_in_header:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(_fake_vocab(n_vocab))
        w.add_token_types([int(gguf.TokenType.NORMAL)] * n_vocab)
        if n_merges:
            w.add_token_merges([f"\u0120 t{i:x}" for i in range(n_merges)])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
    else:
        w.add_vocab_size(n_vocab)
    if extra_kv is not None:
        extra_kv(w)

    for s in specs:
        # numpy (reversed) element shape; any non-uint8 dtype keeps it from being read as bytes.
        w.add_tensor_info(s.name, tuple(reversed(s.shape)), np.dtype(np.float32), s.nbytes, raw_dtype=s.ggml_type)

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        align = w.data_alignment
        for fout, tensors in zip(w.fout, w.tensors):
            data_start = _pad(fout.tell(), align)
            data = sum(_pad(ti.nbytes, align) for ti in tensors.values())
            fout.truncate(data_start + data)  # a hole: no blocks allocated for the zeros
        paths = w.format_shard_names(path)
    finally:
        w.close()
    return paths[0]


def write_qwen2_7b_q4_k_m(path: str | os.PathLike[str], *, vocab_in_header: bool = True, n_merges: int = 151387, byte_tokenizer: bool = False) -> Path:
    """The header of DeepSeek-R1-Distill-Qwen-7B Q4_K_M (tensor data 4,677,120,000 bytes);
    ``byte_tokenizer``: a byte-level vocabulary of the same size instead of a fake one."""
    return write_header_only_model(
        path, arch="qwen2", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944,
        n_vocab=152064, tensor_types=q4_k_m_types(28), attn_bias=True, context_length=131072,
        vocab_in_header=vocab_in_header, n_merges=n_merges if vocab_in_header else 0, byte_tokenizer=byte_tokenizer,
        name="DeepSeek R1 Distill Qwen 7B", file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M),
    )


def write_gemma3_1b_like(path: str | os.PathLike[str], *, vocab_in_header: bool = False) -> Path:
    """A Gemma-3-1B-shaped header (26 layers, window 512, tied embeddings), Q8_0 matrices.

    Shapes match Gemma 3 1B; the types do not follow any real quantisation recipe.
    """
    return write_header_only_model(
        path, arch="gemma3", n_layers=26, n_embd=1152, n_head=4, n_head_kv=1, n_ff=6912,
        n_vocab=262144, key_length=256, value_length=256, tensor_types=QT.Q8_0, tied=True,
        qk_norm=True, post_norms=True, sliding_window=512, context_length=32768,
        vocab_in_header=vocab_in_header, name="Gemma 3 1B-like",
        file_type=int(gguf.LlamaFileType.MOSTLY_Q8_0),
    )


# --------------------------------------------------------------------------------------------
# Tiny real models
# --------------------------------------------------------------------------------------------

_SPECIALS = ("<|bos|>", "<|eos|>")
# A few merges so the BPE tokenizer has something to do; all pieces are GPT-2 byte symbols.
_MERGES = ("\u0120 t", "h e", "\u0120t he", "i n", "e r", "o n", "\u0120 a", "r e", "a n", "o r")


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable character map, which llama.cpp's BPE expects.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tiny_tokenizer(n_vocab: int | None = None) -> tuple[list[str], list[int], list[str], int, int]:
    """(tokens, token types, merges, bos id, eos id) of a byte-level BPE vocabulary.

    Every byte has a token, so any text tokenizes. ``n_vocab`` pads with unused tokens.
    """
    tokens = _bytes_to_unicode() + ["".join(m.split(" ")) for m in _MERGES]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    bos = len(tokens)
    tokens += list(_SPECIALS)
    types += [int(gguf.TokenType.CONTROL)] * len(_SPECIALS)
    minimum = len(tokens)
    if n_vocab is not None:
        if n_vocab < minimum:
            raise ValueError(f"n_vocab must be at least {minimum}")
        tokens += [f"<|unused_{i}|>" for i in range(n_vocab - minimum)]
        types += [int(gguf.TokenType.UNUSED)] * (n_vocab - minimum)
    return tokens, types, list(_MERGES), bos, bos + 1


def _add_byte_tokenizer(w: gguf.GGUFWriter, tokenizer: tuple[list[str], list[int], list[str], int, int], chat_template: str | None = None) -> None:
    """A ``tiny_tokenizer`` vocabulary and a chat template (``chat_template``, else a plain
    "role: content" one): any text tokenizes."""
    tokens, types, merges, bos, eos = tokenizer
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    w.add_chat_template(_CHAT_TEMPLATE if chat_template is None else chat_template)


_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tiny_llama(
    path: str | os.PathLike[str],
    *,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_vocab: int | None = None,
    ctx: int = 256,
    ggml_type: QT = QT.F32,
    arch: str = "llama",
    sliding_window: int = 0,
    sliding_window_pattern: int | Sequence[bool] | None = None,
    tied: bool = False,
    seed: int = 0,
    chat_template: str | None = None,
) -> Path:
    """A real, tiny, randomly initialised model that llama.cpp loads and runs on the CPU.

    ``chat_template`` becomes its tokenizer.chat_template (tests.chat_templates has real ones);
    without it, a plain "role: content" template.

    ``arch`` is "llama" (Llama layout) or "gemma3" (adds q/k norms and post norms; with
    ``sliding_window`` > 0 llama.cpp makes 5 of every 6 layers sliding-window).
    ``ggml_type`` (F32, F16 or Q8_0) applies to the matrices; norms stay F32.
    """
    if arch not in ("llama", "gemma3"):
        raise ValueError(f"unsupported arch {arch!r}")
    if ggml_type not in (QT.F32, QT.F16, QT.Q8_0):
        raise ValueError(f"unsupported ggml_type {ggml_type!r}")
    path = Path(path)
    tokens, types, merges, bos, eos = tiny_tokenizer(n_vocab)
    gemma = arch == "gemma3"
    specs = model_tensor_specs(
        n_layers=n_layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
        n_vocab=len(tokens), tensor_types=ggml_type, tied=tied, qk_norm=gemma, post_norms=gemma,
    )
    file_type = {
        QT.F32: gguf.LlamaFileType.ALL_F32,
        QT.F16: gguf.LlamaFileType.MOSTLY_F16,
        QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    }[ggml_type]

    w = gguf.GGUFWriter(path, arch)
    _add_hparams(
        w, arch, n_layers=n_layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
        context_length=ctx, key_length=None, value_length=None, sliding_window=sliding_window,
        sliding_window_pattern=sliding_window_pattern, name=f"tiny {arch}", file_type=int(file_type),
    )
    _add_byte_tokenizer(w, (tokens, types, merges, bos, eos), chat_template)

    rng = np.random.default_rng(seed)
    for s in specs:
        shape = tuple(reversed(s.shape))  # numpy order
        if s.name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if s.ggml_type == QT.F32:
            w.add_tensor(s.name, data)
        elif s.ggml_type == QT.F16:
            w.add_tensor(s.name, data.astype(np.float16))
        else:
            w.add_tensor(s.name, gguf.quants.quantize(data, s.ggml_type), raw_dtype=s.ggml_type)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path
