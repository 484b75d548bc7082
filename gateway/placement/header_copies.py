"""Header copies: a model's GGUF header without its tensor data, to check a config on a machine
that does not have the model files (a laptop, CI, before the files are downloaded).

A header copy is a GGUF file with the model's metadata and its whole tensor table (every
tensor's name, type and shape) but no tensor data, and the size of the file it was copied from
under ``planner.gguf_reader.HEADER_COPY_FILE_BYTES``. The GGUF reader reads it into the same
``ModelInfo`` as the model itself (marked ``header_copy``), so the planner sizes it exactly as it
sizes the real file. What the planner never reads is left out: the tokenizer's vocabulary and
merges (the vocabulary's size is kept, as ``{arch}.vocab_size``), so a copy is tens of KB.

``gateway copy-headers`` writes them where the models are; ``[planner] model_headers`` names the
folder where ``validate-config``, ``plan`` and ``render k8s`` look for the copy of a model whose
file is not on this machine (by the model file's name). ``serve`` never reads a copy: a model
whose file is absent does not start, and a configured path that is a header copy is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from planner.errors import ModelFileError
from planner.gguf_reader import HEADER_COPY_FILE_BYTES, MetadataArray, read_header, read_model_info

__all__ = ["COPY_COMMAND", "header_copy_for", "write_header_copy"]

COPY_COMMAND = "gateway copy-headers"
MODEL_HEADERS_KEY = "planner.model_headers"

_VT = gguf.GGUFValueType
_TOKENS = gguf.Keys.Tokenizer.LIST
# Keys the writer sets itself, or that describe the files rather than the model.
_WRITTEN_BY_WRITER = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.ALIGNMENT, HEADER_COPY_FILE_BYTES)
_SPLIT_PREFIX = "split."


def write_header_copy(model: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write the header copy of ``model`` (any GGUF model, all parts of a split one) to ``target``.

    Raises ``ModelFileError`` when the model cannot be read, or ``target`` is a file other than a
    header copy (the model itself, when the copies' folder is the models'); the copy is written
    beside ``target`` and renamed, so an interrupted run leaves no partial copy.
    """
    header = read_header(model)
    info = header.info
    target = Path(target)
    if os.path.lexists(target) and not _is_header_copy(target):
        # `--out` the models' own folder would otherwise replace a model with its header.
        raise ModelFileError(str(target), "exists and is not a header copy: not replaced (choose another folder)")
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, info.architecture)
    try:
        if header.alignment != gguf.GGUF_DEFAULT_ALIGNMENT:
            writer.add_custom_alignment(header.alignment)
        vocab_size_key = gguf.Keys.LLM.VOCAB_SIZE.format(arch=info.architecture)
        dropped_tokens = False
        for key, value in header.kv.items():
            if key in _WRITTEN_BY_WRITER or key.startswith(_SPLIT_PREFIX) or key == vocab_size_key:
                continue
            vtype = _VT(header.kv_types[key])
            if isinstance(value, MetadataArray):
                if value.values is None:  # tokenizer data: not read by the planner, not kept
                    dropped_tokens |= key == _TOKENS
                    continue
                writer.add_key_value(key, list(value.values), vtype, sub_type=_VT(value.elem_type))
            else:
                writer.add_key_value(key, value, vtype)
        if dropped_tokens or vocab_size_key in header.kv:
            # The reader counts the vocabulary from the token list, else from this key.
            writer.add_uint32(vocab_size_key, info.n_vocab)
        writer.add_uint64(HEADER_COPY_FILE_BYTES, info.file_bytes)
        for t in header.tensors:
            # numpy (reversed) element shape; any non-uint8 dtype keeps it from being read as bytes.
            writer.add_tensor_info(
                t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.nbytes,
                raw_dtype=gguf.GGMLQuantizationType(t.ggml_type),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        os.replace(partial, target)
    except OSError as exc:
        raise ModelFileError(str(target), f"cannot write the header copy: {exc.strerror or exc}") from None
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return target


def _is_header_copy(path: Path) -> bool:
    try:
        return read_model_info(path).header_copy
    except ModelFileError:
        return False


def header_copy_for(path: Path, folder: str | None) -> Path:
    """The header copy that stands in for the model file ``path``, which is not on this machine:
    ``folder``/(the file's name). Raises ``ModelFileError`` saying what is missing and how to make
    it."""
    if folder is None:
        raise ModelFileError(
            str(path),
            f"file not found (to check this config on a machine without its model files, run "
            f"`{COPY_COMMAND} {path} --out DIR` where the file is, and set {MODEL_HEADERS_KEY} = DIR)",
        )
    if not os.path.isdir(folder):
        raise ModelFileError(str(path), f"file not found, and {MODEL_HEADERS_KEY} {folder!r} is not a folder")
    copy = Path(folder) / path.name
    if not copy.exists():
        raise ModelFileError(
            str(path),
            f"file not found, and no header copy of it in {MODEL_HEADERS_KEY} ({copy} is absent; "
            f"`{COPY_COMMAND} {path} --out {folder}` where the file is writes it)",
        )
    return copy
