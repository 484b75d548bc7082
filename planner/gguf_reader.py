"""Read the facts the planner needs from a GGUF file's header, fast.

``gguf.GGUFReader`` builds numpy objects for every tokenizer string: tens of seconds for a
150k-token vocabulary. The planner only needs scalar metadata, a few short per-layer arrays and the
tensor table, so this reader walks the header over an ``mmap`` and steps over big arrays by their
lengths without materialising them. Byte layout, value types and quantisation block sizes come
from the ``gguf`` package so they cannot drift from the format.

Which layers use the sliding-window cache follows the rules of the llama.cpp vendored by
llama-cpp-python 0.3.36 (``src/models/*.cpp``, ``load_swa_pattern`` and
``llama_hparams::set_swa_pattern``), see ``_SWA_RULES``.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import gguf

from planner.errors import ModelFileError
from planner.model_info import ModelInfo, TensorInfo

__all__ = ["HEADER_COPY_FILE_BYTES", "GGUFHeader", "MetadataArray", "read_header", "read_model_info"]

_VT = gguf.GGUFValueType
_Keys = gguf.Keys

# Element formats for struct; STRING and ARRAY are variable-length and walked separately.
_SCALAR_FORMATS: Mapping[int, str] = MappingProxyType(
    {
        _VT.UINT8: "B",
        _VT.INT8: "b",
        _VT.UINT16: "H",
        _VT.INT16: "h",
        _VT.UINT32: "I",
        _VT.INT32: "i",
        _VT.FLOAT32: "f",
        _VT.BOOL: "?",
        _VT.UINT64: "Q",
        _VT.INT64: "q",
        _VT.FLOAT64: "d",
    }
)

# Per-layer arrays (head_count_kv, sliding_window_pattern, ...) are at most a few hundred long;
# anything longer is tokenizer data the planner never looks at.
_MAX_MATERIALISED_ARRAY = 4096

# llama.cpp's LLAMA_MAX_LAYERS: it refuses models with more (or no) layers.
_MAX_LAYERS = 512
_CHAT_TEMPLATE = _Keys.Tokenizer.CHAT_TEMPLATE  # "tokenizer.chat_template"; named templates add ".NAME"

# A header copy (gateway.placement.header_copies) is a GGUF with a model's metadata and tensor
# table but no tensor data; this key holds the size on disk of the model it was copied from.
HEADER_COPY_FILE_BYTES = "vram_gateway.header_copy.file_bytes"

# ggml's GGML_MAX_DIMS: gguf.c rejects tensors with more dimensions.
_MAX_DIMS = 4

_SUPPORTED_VERSIONS = (2, 3)

# llama.cpp's split naming (llama_split_path: "%s-%05d-of-%05d.gguf").
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class _Truncated(Exception):
    """Internal: a read ran past the end of the mapped file."""


@dataclass(frozen=True)
class MetadataArray:
    """A GGUF array value; ``values`` is None when it was skipped rather than read (arrays of
    strings or arrays, and arrays too long to be per-layer values: tokenizer data)."""

    elem_type: int
    count: int
    values: tuple[Any, ...] | None


@dataclass(frozen=True)
class _RawTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # relative to the data section


@dataclass(frozen=True)
class _Part:
    """One parsed file: its metadata and its tensor table with sizes checked against the file."""

    path: str
    file_bytes: int  # on disk; a header copy's: the size of the model it was copied from
    kv: Mapping[str, Any]
    kv_types: Mapping[str, int]  # each key's gguf.GGUFValueType
    tensors: tuple[TensorInfo, ...]
    alignment: int
    header_copy: bool


# --------------------------------------------------------------------------------------------
# Low-level header walk
# --------------------------------------------------------------------------------------------


class _HeaderWalker:
    """Walks one mapped GGUF header; ``off`` only moves forward."""

    def __init__(self, buf: mmap.mmap, size: int, endian: str) -> None:
        self.buf = buf
        self.size = size
        self.endian = endian
        self.off = 0
        self._u32 = struct.Struct(endian + "I").unpack_from
        self._u64 = struct.Struct(endian + "Q").unpack_from
        self._scalars = {
            vtype: struct.Struct(endian + fmt) for vtype, fmt in _SCALAR_FORMATS.items()
        }

    def u32(self) -> int:
        try:
            (value,) = self._u32(self.buf, self.off)
        except struct.error:
            raise _Truncated from None
        self.off += 4
        return value

    def u64(self) -> int:
        try:
            (value,) = self._u64(self.buf, self.off)
        except struct.error:
            raise _Truncated from None
        self.off += 8
        return value

    def string(self) -> str:
        n = self.u64()
        end = self.off + n
        if end > self.size:
            raise _Truncated
        # Metadata strings are UTF-8 by spec; a stray bad byte in a chat template or licence
        # should not make the model unreadable.
        text = self.buf[self.off : end].decode("utf-8", errors="replace")
        self.off = end
        return text

    def value(self, vtype: int) -> Any:
        if vtype == _VT.STRING:
            return self.string()
        if vtype == _VT.ARRAY:
            return self.array()
        st = self._scalars.get(vtype)
        if st is None:
            raise ValueError(f"unknown metadata value type {vtype}")
        try:
            (value,) = st.unpack_from(self.buf, self.off)
        except struct.error:
            raise _Truncated from None
        self.off += st.size
        return value

    def array(self) -> MetadataArray:
        elem_type = self.u32()
        count = self.u64()
        remaining = self.size - self.off
        if elem_type == _VT.STRING:
            # Each string costs at least its 8-byte length: an absurd count is a truncated file,
            # caught before walking it.
            if count * 8 > remaining:
                raise _Truncated
            self._skip_strings(count)
            return MetadataArray(elem_type, count, None)
        if elem_type == _VT.ARRAY:
            if count * 12 > remaining:
                raise _Truncated
            for _ in range(count):
                self.array()
            return MetadataArray(elem_type, count, None)
        fmt = _SCALAR_FORMATS.get(elem_type)
        if fmt is None:
            raise ValueError(f"unknown array element type {elem_type}")
        itemsize = struct.calcsize(fmt)
        nbytes = count * itemsize
        if nbytes > remaining:
            raise _Truncated
        values = None
        if count <= _MAX_MATERIALISED_ARRAY:
            values = struct.unpack_from(f"{self.endian}{count}{fmt}", self.buf, self.off)
        self.off += nbytes
        return MetadataArray(elem_type, count, values)

    def _skip_strings(self, count: int) -> None:
        # The hot loop of the whole reader (150k+ tokenizer strings, as many merges): locals only.
        u64 = self._u64
        buf = self.buf
        off = self.off
        try:
            for _ in range(count):
                off += 8 + u64(buf, off)[0]
        except (struct.error, OverflowError):  # ran off the end, or a corrupt length past 2**63
            raise _Truncated from None
        if off > self.size:
            raise _Truncated
        self.off = off


def _shown(text: str) -> str:
    """``text`` fit for a one-line message: corrupt names can be long and hold newlines."""
    if len(text) > 80:
        text = text[:77] + "..."
    return text if text.isprintable() else ascii(text)


def _quoted(text: str) -> str:
    shown = _shown(text)
    return shown if shown.startswith("'") else f"'{shown}'"


def _tensor_nbytes(path: str, name: str, ggml_type: int, shape: tuple[int, ...]) -> int:
    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(path, f"tensor {_quoted(name)} has unknown ggml type {ggml_type}") from None
    row = shape[0] if shape else 1
    if row % block_size != 0:
        raise ModelFileError(
            path,
            f"tensor {_quoted(name)} has row length {row}, not a multiple of the "
            f"{qtype.name} block size {block_size}",
        )
    return math.prod(shape) // block_size * type_size


def _open_mapped(path: str) -> tuple[mmap.mmap | None, int]:
    """Map ``path`` read-only; (None, 0) for an empty file, which mmap refuses."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelFileError(path, "file not found") from None
    except PermissionError:
        raise ModelFileError(path, "cannot read file: permission denied") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(mode):
        raise ModelFileError(path, "is a directory, not a GGUF file")
    if not stat.S_ISREG(mode):
        # A FIFO or device would block or stream; a model must be a file llama.cpp can mmap.
        raise ModelFileError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None, 0
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except PermissionError:
        raise ModelFileError(path, "cannot read file: permission denied") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ModelFileError(path, f"cannot read file: {reason}") from None


def _read_part(path: str) -> _Part:
    """Parse one GGUF file's header and tensor table."""
    buf, size = _open_mapped(path)
    if buf is None:
        raise ModelFileError(path, "not a GGUF file (empty file)")
    try:
        return _parse(path, buf, size)
    finally:
        buf.close()


def _parse(path: str, buf: mmap.mmap, size: int) -> _Part:
    magic = buf[:4]
    if magic != b"GGUF":
        # Never the bytes themselves: the message may reach someone who may not read the file.
        raise ModelFileError(path, "not a GGUF file (it does not start with the GGUF magic)")
    if size < 8:
        raise ModelFileError(path, f"truncated GGUF header: file ends at byte {size} while reading the version")

    # GGUF has no endianness flag: a big-endian file shows a byte-swapped version number.
    (version,) = struct.unpack_from("<I", buf, 4)
    endian = "<"
    if version & 0xFFFF == 0 and version != 0:
        (version,) = struct.unpack_from(">I", buf, 4)
        endian = ">"
    if version not in _SUPPORTED_VERSIONS:
        raise ModelFileError(path, f"unsupported GGUF version {version} (supported: 2, 3)")

    w = _HeaderWalker(buf, size, endian)
    w.off = 8
    section = "header counts"
    try:
        n_tensors = w.u64()
        n_kv = w.u64()
        section = "metadata"
        kv: dict[str, Any] = {}
        kv_types: dict[str, int] = {}
        for _ in range(n_kv):
            key = w.string()
            if key in kv:
                raise ModelFileError(path, f"duplicate metadata key {_quoted(key)}")
            vtype = kv_types[key] = w.u32()
            try:
                kv[key] = w.value(vtype)
            except ValueError as exc:
                raise ModelFileError(path, f"metadata key {_quoted(key)}: {exc}") from None

        section = "tensor table"
        raw: list[_RawTensor] = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            name = w.string()
            n_dims = w.u32()
            if n_dims > _MAX_DIMS:
                raise ModelFileError(path, f"tensor {_quoted(name)} has {n_dims} dimensions (at most {_MAX_DIMS})")
            shape = tuple(w.u64() for _ in range(n_dims))
            ggml_type = w.u32()
            offset = w.u64()
            if name in seen:
                raise ModelFileError(path, f"duplicate tensor {_quoted(name)}")
            seen.add(name)
            raw.append(_RawTensor(name, ggml_type, shape, offset))
    except _Truncated:
        raise ModelFileError(
            path, f"truncated GGUF header: file ends at byte {size} while reading the {section}"
        ) from None

    alignment = kv.get(_Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(path, f"general.alignment must be a power of two, got {_shown(repr(alignment))}")
    data_start = -(-w.off // alignment) * alignment

    header_copy = HEADER_COPY_FILE_BYTES in kv
    file_bytes = size
    if header_copy:
        declared = kv[HEADER_COPY_FILE_BYTES]
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
            raise ModelFileError(path, f"{HEADER_COPY_FILE_BYTES} must be a size in bytes, got {_shown(repr(declared))}")
        file_bytes = declared

    tensors = []
    for t in raw:
        nbytes = _tensor_nbytes(path, t.name, t.ggml_type, t.shape)
        if t.offset % alignment:
            raise ModelFileError(
                path, f"tensor {_quoted(t.name)} data offset {t.offset} is not a multiple of the alignment {alignment}"
            )
        end = data_start + t.offset + nbytes
        if end > size and not header_copy:  # a header copy has no tensor data, by design
            raise ModelFileError(
                path,
                f"tensor data extends past end of file: tensor {_quoted(t.name)} ends at byte {end}, "
                f"file has {size} bytes",
            )
        tensors.append(TensorInfo(t.name, t.ggml_type, t.shape, nbytes))
    return _Part(
        path, file_bytes, MappingProxyType(kv), MappingProxyType(kv_types), tuple(tensors), alignment, header_copy
    )


# --------------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------------


def _int_key(kv: Mapping[str, Any], key: str, default: int) -> int:
    value = kv.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _read_parts(path: str) -> list[_Part]:
    """All parts of the model ``path`` belongs to, in order (just ``path`` when not split)."""
    given = _read_part(path)
    n_split = _int_key(given.kv, _Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    if n_split <= 1:
        return [given]

    given_no = _int_key(given.kv, _Keys.Split.LLM_KV_SPLIT_NO, 0)
    if not 0 <= given_no < n_split:
        raise ModelFileError(path, f"split header says part {given_no + 1} of {n_split}")
    directory, base = os.path.split(path)
    m = _SPLIT_NAME.match(base)
    if m is None:
        raise ModelFileError(
            path,
            f"split part {given_no + 1} of {n_split}, but the name does not follow "
            "'<prefix>-NNNNN-of-NNNNN.gguf', so the other parts cannot be found",
        )
    if int(m["count"]) != n_split or int(m["no"]) != given_no + 1:
        raise ModelFileError(
            path,
            f"file name says part {int(m['no'])} of {int(m['count'])} "
            f"but the header says part {given_no + 1} of {n_split}",
        )

    parts = []
    for i in range(n_split):
        part_path = os.path.join(directory, f"{m['prefix']}-{i + 1:05d}-of-{n_split:05d}.gguf")
        if i == given_no:
            parts.append(given)
            continue
        if not os.path.exists(part_path):
            raise ModelFileError(part_path, f"split part {i + 1} of {n_split} is missing")
        part = _read_part(part_path)
        no = _int_key(part.kv, _Keys.Split.LLM_KV_SPLIT_NO, -1)
        count = _int_key(part.kv, _Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        if no != i or count != n_split:
            raise ModelFileError(
                part_path,
                f"expected split part {i + 1} of {n_split}, but the header says part {no + 1} of {count}",
            )
        parts.append(part)

    expected = _int_key(parts[0].kv, _Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, -1)
    found = sum(len(p.tensors) for p in parts)
    if expected >= 0 and expected != found:
        raise ModelFileError(
            parts[0].path, f"split header announces {expected} tensors but the {n_split} parts hold {found}"
        )
    names: set[str] = set()
    for p in parts:
        for t in p.tensors:
            if t.name in names:
                raise ModelFileError(p.path, f"tensor {_quoted(t.name)} also appears in another split part")
            names.add(t.name)
    return parts


# --------------------------------------------------------------------------------------------
# Sliding-window rules (llama.cpp, vendored by llama-cpp-python 0.3.36)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SwaRule:
    """How one architecture's loader decides its sliding-window layers.

    ``pattern``: the default of ``load_swa_pattern(ml, pattern, dense_first)``, which a per-layer
    array or a uint under ``sliding_window_pattern`` overrides; None when the loader only reads
    the per-layer array.
    ``only_if_window``: SWA is on only when ``sliding_window`` is present and > 0.
    ``default_window``: ``n_swa`` when the key is absent (0: the key is required).
    ``forced_window``: ``n_swa`` the loader sets whatever the key says (llama4, smallthinker).
    """

    pattern: int | None
    dense_first: bool = False
    only_if_window: bool = False
    default_window: int = 0
    forced_window: int = 0


_SWA_RULES: Mapping[str, _SwaRule] = MappingProxyType(
    {
        "gemma2": _SwaRule(2, default_window=4096),
        "gemma3": _SwaRule(6, only_if_window=True),
        "gemma3n": _SwaRule(5),
        "gemma-embedding": _SwaRule(6),
        "cohere2": _SwaRule(4),
        "cohere2moe": _SwaRule(4, dense_first=True),
        "gpt-oss": _SwaRule(2),
        "olmo2": _SwaRule(4, only_if_window=True),
        "exaone-moe": _SwaRule(4, default_window=128),
        "afmoe": _SwaRule(4, only_if_window=True),
        "laguna": _SwaRule(4, dense_first=True, only_if_window=True),
        "mellum": _SwaRule(4, only_if_window=True),
        "modern-bert": _SwaRule(3, dense_first=True, only_if_window=True),
        "muse-glimmer": _SwaRule(4),
        "plamo3": _SwaRule(8, only_if_window=True),
        "smallthinker": _SwaRule(4, dense_first=True, only_if_window=True, forced_window=4096),
        # Per-layer array only (required by these loaders).
        "gemma4": _SwaRule(None),
        "gemma4-assistant": _SwaRule(None),
        "granite_swa": _SwaRule(None),
        "maple": _SwaRule(None),
        "mimo2": _SwaRule(None),
        "step35": _SwaRule(None),
        "spark2_5": _SwaRule(None),
        "dots3note": _SwaRule(None),
        "dflash": _SwaRule(None, only_if_window=True),
        # set_swa_pattern(0): every layer slides.
        "deepseek4": _SwaRule(0),
    }
)


def _set_swa_pattern(n_layers: int, n_pattern: int, dense_first: bool) -> tuple[bool, ...]:
    if dense_first:
        return tuple(n_pattern == 0 or il % n_pattern != 0 for il in range(n_layers))
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layers))


def _pattern_array(kv: Mapping[str, Any], key: str, n_layers: int) -> tuple[bool, ...] | None:
    value = kv.get(key)
    if not isinstance(value, MetadataArray) or value.values is None:
        return None
    # llama.cpp copies the array over an all-false one: short arrays leave the tail dense.
    flags = [bool(v) for v in value.values[:n_layers]]
    return tuple(flags + [False] * (n_layers - len(flags)))


def _swa(
    arch: str, kv: Mapping[str, Any], n_layers: int, n_head_kv: tuple[int, ...]
) -> tuple[int, tuple[bool, ...]]:
    """(n_swa, per-layer is_swa) as llama.cpp sets them; (0, all False) when SWA is off."""
    none = (0, (False,) * n_layers)
    window_key = _Keys.Attention.SLIDING_WINDOW.format(arch=arch)
    pattern_key = _Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    found = window_key in kv
    window = _int_key(kv, window_key, 0)

    if arch == "llama4":
        # Chunked attention unless the file explicitly sets a 0 window; the chunk is fixed.
        if found and window == 0:
            return none
        rule = _SwaRule(4, forced_window=8192)
    elif arch == "exaone4":
        # Only the 64-layer (32B) model is interleaved; others ignore the window key.
        if n_layers != 64:
            return none
        rule = _SwaRule(4, default_window=4096)
    elif arch == "lfm2":
        # Attention layers (n_head_kv > 0) slide, convolution layers do not.
        if window <= 0:
            return none
        return window, tuple(h != 0 for h in n_head_kv)
    elif arch == "dflash" and _int_key(kv, f"{arch}.hyper_connection.count", 0) > 0:
        rule = _SwaRule(0)
    else:
        rule = _SWA_RULES.get(arch)
        if rule is None:
            # Every other architecture (phi3 included, whose SWA llama.cpp disables) uses one
            # full-size cache whatever the metadata says.
            return none

    if rule.only_if_window and window <= 0:
        return none
    n_swa = rule.forced_window or (window if found else rule.default_window)

    layers = _pattern_array(kv, pattern_key, n_layers)
    if layers is None:
        if rule.pattern is None:
            layers = (False,) * n_layers
        else:
            n_pattern = _int_key(kv, pattern_key, rule.pattern)
            layers = _set_swa_pattern(n_layers, n_pattern, rule.dense_first)
    return n_swa, layers


# --------------------------------------------------------------------------------------------
# Model facts
# --------------------------------------------------------------------------------------------


def _per_layer(path: str, kv: Mapping[str, Any], key: str, n_layers: int, default: int) -> tuple[int, ...]:
    """A llama.cpp ``get_key_or_arr`` value: a scalar for all layers or one per layer."""
    value = kv.get(key)
    if value is None:
        return (default,) * n_layers
    if isinstance(value, MetadataArray):
        if value.values is None or value.count != n_layers:
            raise ModelFileError(path, f"{_shown(key)} has {value.count} entries, expected one per layer ({n_layers})")
        return tuple(int(v) for v in value.values)
    if isinstance(value, (int, float)):
        return (int(value),) * n_layers
    raise ModelFileError(path, f"{_shown(key)} is not a number")


def _layer_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    dot = name.find(".", 4)
    digits = name[4:dot] if dot > 0 else ""
    return int(digits) if digits.isdigit() else None


@dataclass(frozen=True)
class GGUFHeader:
    """A model's header as read: its first part's metadata (array values that were skipped are
    ``MetadataArray``s without values), every part's tensor table, and the facts made of them."""

    kv: Mapping[str, Any]
    kv_types: Mapping[str, int]  # each key's gguf.GGUFValueType
    tensors: tuple[TensorInfo, ...]
    alignment: int
    info: ModelInfo


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read a GGUF model's header (all parts of a split model), for a header copy."""
    parts = _read_parts(os.fspath(path))
    head = parts[0]
    tensors = tuple(t for p in parts for t in p.tensors)
    return GGUFHeader(head.kv, head.kv_types, tensors, head.alignment, _model_info(parts))


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF model's header (all parts of a split model) into a ``ModelInfo``.

    Raises ``ModelFileError`` with a one-line reason for anything that is not a readable,
    complete GGUF model (or a header copy of one: ``ModelInfo.header_copy``).
    """
    return _model_info(_read_parts(os.fspath(path)))


def _model_info(parts: list[_Part]) -> ModelInfo:
    head = parts[0]
    kv = head.kv
    first_path = head.path

    arch = kv.get(_Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(first_path, f"missing metadata key {_Keys.General.ARCHITECTURE}")

    def key(template: str) -> str:
        return template.format(arch=arch)

    block_count_key = key(_Keys.LLM.BLOCK_COUNT)
    if block_count_key not in kv:
        raise ModelFileError(first_path, f"missing metadata key {_shown(block_count_key)}")
    n_layers = kv[block_count_key]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        raise ModelFileError(first_path, f"metadata key {_shown(block_count_key)} is not an integer")
    if not 0 < n_layers <= _MAX_LAYERS:
        raise ModelFileError(
            first_path, f"{_shown(block_count_key)} is {n_layers}; llama.cpp accepts 1 to {_MAX_LAYERS} layers"
        )

    tensors = tuple(t for p in parts for t in p.tensors)
    by_name = {t.name: t for t in tensors}
    token_embd = by_name.get("token_embd.weight")

    n_embd = _int_key(kv, key(_Keys.LLM.EMBEDDING_LENGTH), token_embd.shape[0] if token_embd else 0)
    n_head_arr = _per_layer(first_path, kv, key(_Keys.Attention.HEAD_COUNT), n_layers, 0)
    # llama.cpp's n_head() is layer 0's count; it sizes the default head dimension.
    n_head = n_head_arr[0]
    kv_key = key(_Keys.Attention.HEAD_COUNT_KV)
    n_head_kv = _per_layer(first_path, kv, kv_key, n_layers, 0) if kv_key in kv else n_head_arr
    head_dim = n_embd // n_head if n_head > 0 else 0
    key_length = _int_key(kv, key(_Keys.Attention.KEY_LENGTH), head_dim)
    value_length = _int_key(kv, key(_Keys.Attention.VALUE_LENGTH), head_dim)
    n_ff = max(_per_layer(first_path, kv, key(_Keys.LLM.FEED_FORWARD_LENGTH), n_layers, 0))

    tokens = kv.get(_Keys.Tokenizer.LIST)
    if isinstance(tokens, MetadataArray):
        n_vocab = tokens.count
    else:
        n_vocab = _int_key(kv, key(_Keys.LLM.VOCAB_SIZE), -1)
        if n_vocab < 0:
            n_vocab = token_embd.shape[1] if token_embd is not None and len(token_embd.shape) > 1 else 0

    sliding_window, swa_layers = _swa(arch, kv, n_layers, n_head_kv)

    layer_bytes = [0] * n_layers
    token_embd_bytes = output_norm_bytes = other_bytes = 0
    output_bytes: int | None = None
    output = by_name.get("output.weight")
    for t in tensors:
        il = _layer_index(t.name)
        if il is not None and il < n_layers:
            layer_bytes[il] += t.nbytes
        elif t.name == "token_embd.weight":
            token_embd_bytes = t.nbytes
        elif t.name == "output.weight":
            output_bytes = (output_bytes or 0) + t.nbytes
        elif t.name == "output.bias" and output is not None:
            # Lives on the output layer's device together with output.weight.
            output_bytes = (output_bytes or 0) + t.nbytes
        elif t.name in ("output_norm.weight", "output_norm.bias"):
            output_norm_bytes += t.nbytes
        else:
            other_bytes += t.nbytes

    name = kv.get(_Keys.General.NAME, "")
    template_texts = tuple(
        ("chat_template.default" if k == _CHAT_TEMPLATE else f"chat_template.{k[len(_CHAT_TEMPLATE) + 1:]}", v)
        for k, v in kv.items()
        if (k == _CHAT_TEMPLATE or k.startswith(_CHAT_TEMPLATE + ".")) and isinstance(v, str)
    )
    templates = tuple(name for name, _ in template_texts)
    file_type = kv.get(_Keys.General.FILE_TYPE)
    return ModelInfo(
        paths=tuple(p.path for p in parts),
        architecture=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        n_vocab=n_vocab,
        n_ff=n_ff,
        context_length=_int_key(kv, key(_Keys.LLM.CONTEXT_LENGTH), 0),
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        layer_bytes=tuple(layer_bytes),
        token_embd_bytes=token_embd_bytes,
        token_embd_type=token_embd.ggml_type if token_embd is not None else int(gguf.GGMLQuantizationType.F32),
        output_bytes=output_bytes,
        output_norm_bytes=output_norm_bytes,
        other_bytes=other_bytes,
        largest_tensor_bytes=max((t.nbytes for t in tensors), default=0),
        file_bytes=sum(p.file_bytes for p in parts),
        name=name if isinstance(name, str) else "",
        file_type=file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None,
        chat_templates=templates,
        chat_template_texts=template_texts,
        tensors=tensors,
        header_copy=head.header_copy,
    )
