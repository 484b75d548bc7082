"""planner.gguf_reader: header facts, llama.cpp's sliding-window rules, split files, bad files."""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import ModelFileError
from planner.gguf_reader import read_model_info
from testkit import ggufmaker as gm
from testkit.ggufmaker import QT

SMALL = dict(arch="llama", n_layers=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=96)


def write_small(path: Path, **overrides) -> Path:
    return gm.write_header_only_model(path, **{**SMALL, **overrides})


def spec_kwargs(**overrides) -> dict:
    kw = {**SMALL, **overrides}
    kw.pop("arch")
    return kw


def model_error(path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        read_model_info(path)
    return info.value


# --------------------------------------------------------------------------------------------
# Tensor table and sizes
# --------------------------------------------------------------------------------------------


def test_reader_sums_block_tensors_per_layer(tmp_path):
    path = write_small(tmp_path / "m.gguf", n_head_kv=[4, 2, 2, 1], tensor_types=QT.Q8_0, attn_bias=True)
    specs = gm.model_tensor_specs(**spec_kwargs(n_head_kv=[4, 2, 2, 1], tensor_types=QT.Q8_0, attn_bias=True))
    expected = [sum(s.nbytes for s in specs if s.name.startswith(f"blk.{il}.")) for il in range(4)]

    info = read_model_info(path)

    assert info.layer_bytes == tuple(expected)
    assert len(set(info.layer_bytes)) == 3  # the per-layer KV widths show in the sizes


def test_reader_separates_token_embd_output_and_output_norm(tmp_path):
    path = write_small(tmp_path / "m.gguf", tensor_types={"*": QT.Q8_0, "token_embd.weight": QT.F16, "output.weight": QT.F32})

    info = read_model_info(path)

    assert info.token_embd_bytes == 64 * 96 * 2
    assert info.token_embd_type == QT.F16
    assert info.output_bytes == 64 * 96 * 4
    assert info.output_norm_bytes == 64 * 4
    assert info.other_bytes == 0
    assert info.largest_tensor_bytes == 64 * 96 * 4
    assert info.total_bytes == sum(t.nbytes for t in info.tensors)


def test_reader_reports_tied_output_as_none(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf", tied=True))

    assert info.output_bytes is None
    assert info.output_layer_bytes == info.token_embd_bytes + info.output_norm_bytes


def test_reader_counts_non_layer_extras_as_other_bytes(tmp_path):
    extra = [gm.TensorSpec("rope_freqs.weight", (8,), QT.F32), gm.TensorSpec("blk.9.unused.weight", (32,), QT.F32)]
    info = read_model_info(write_small(tmp_path / "m.gguf", extra_tensors=extra))

    # blk.9 is past block_count (4): not a repeating layer llama.cpp would place.
    assert info.other_bytes == 8 * 4 + 32 * 4
    assert len(info.layer_bytes) == 4


def test_reader_matches_gguf_reader_on_tensor_table(tmp_path):
    path = gm.write_tiny_llama(tmp_path / "tiny.gguf", ggml_type=QT.Q8_0)
    reference = gguf.GGUFReader(path)

    info = read_model_info(path)

    assert [(t.name, t.ggml_type, t.shape, t.nbytes) for t in info.tensors] == [
        (t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.n_bytes)) for t in reference.tensors
    ]
    assert info.n_vocab == len(reference.fields["tokenizer.ggml.tokens"].data)


def test_reader_matches_gguf_reader_with_custom_alignment(tmp_path):
    path = write_small(tmp_path / "m.gguf", alignment=256, tensor_types=QT.Q4_0)
    reference = gguf.GGUFReader(path)

    info = read_model_info(path)

    assert [t.nbytes for t in info.tensors] == [int(t.n_bytes) for t in reference.tensors]
    assert info.file_bytes == os.path.getsize(path)


def test_qwen2_7b_q4_k_m_header_totals_its_real_tensor_bytes(tmp_path):
    path = gm.write_qwen2_7b_q4_k_m(tmp_path / "qwen2-7b.gguf", vocab_in_header=False)

    info = read_model_info(path)

    assert info.total_bytes == 4_677_120_000
    assert (info.total_bytes - info.token_embd_bytes) / 2**20 == pytest.approx(4168.09, abs=0.005)
    assert (info.architecture, info.n_layers, info.n_embd, info.n_ff) == ("qwen2", 28, 3584, 18944)
    assert info.n_head == 28 and info.n_head_kv == (4,) * 28 and info.key_length == 128
    assert info.n_vocab == 152064
    assert info.file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M
    # Sparse: the hole costs (almost) no disk.
    assert os.stat(path).st_blocks * 512 < 16 * 2**20 < info.file_bytes


def test_reader_reads_150k_vocab_header_in_well_under_a_second(tmp_path):
    path = gm.write_qwen2_7b_q4_k_m(tmp_path / "qwen2-7b.gguf")

    start = time.perf_counter()
    info = read_model_info(path)
    elapsed = time.perf_counter() - start

    assert info.n_vocab == 152064
    # ~70 ms here; gguf.GGUFReader takes ~25 s on the same header. The bound tells the two apart
    # with room for a CI machine many times slower, not how fast this one is.
    assert elapsed < 5.0


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


def test_reader_reads_per_layer_head_count_kv_array(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf", n_head_kv=[4, 2, 0, 1]))

    assert info.n_head_kv == (4, 2, 0, 1)
    assert [info.n_embd_k_gqa(il) for il in range(4)] == [64, 32, 0, 16]


def test_reader_defaults_head_count_kv_to_head_count(tmp_path):
    def drop_kv_heads(w):
        del w.kv_data[0]["llama.attention.head_count_kv"]

    info = read_model_info(write_small(tmp_path / "m.gguf", n_head_kv=4, extra_kv=drop_kv_heads))

    assert info.n_head_kv == (4, 4, 4, 4)


def test_reader_rejects_per_layer_array_of_wrong_length(tmp_path):
    def short_array(w):
        w.add_key_value("llama.attention.head_count_kv", [2, 2, 2], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)

    path = write_small(tmp_path / "m.gguf", extra_kv=short_array)

    assert model_error(path).problem == "llama.attention.head_count_kv has 3 entries, expected one per layer (4)"


def test_reader_defaults_head_dims_to_embedding_over_heads(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf"))

    assert (info.key_length, info.value_length) == (16, 16)


def test_reader_uses_explicit_key_and_value_length(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf", key_length=32, value_length=64))

    assert (info.key_length, info.value_length) == (32, 64)
    assert info.n_embd_v_gqa(0) == 128


def test_reader_takes_largest_feed_forward_length_from_array(tmp_path):
    def ff_array(w):
        w.add_key_value("llama.feed_forward_length", [128, 256, 64, 128], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)

    info = read_model_info(write_small(tmp_path / "m.gguf", extra_kv=ff_array))

    assert info.n_ff == 256


def test_reader_reads_vocab_size_key_when_tokens_are_absent(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf", vocab_in_header=False))

    assert info.n_vocab == 96


def test_reader_falls_back_to_token_embd_rows_for_vocab(tmp_path):
    def drop_vocab_size(w):
        del w.kv_data[0]["llama.vocab_size"]

    info = read_model_info(write_small(tmp_path / "m.gguf", vocab_in_header=False, extra_kv=drop_vocab_size))

    assert info.n_vocab == 96


def test_reader_reads_name_context_and_file_type(tmp_path):
    info = read_model_info(write_small(tmp_path / "m.gguf", name="Small", context_length=8192, file_type=7))

    assert (info.name, info.context_length, info.file_type) == ("Small", 8192, 7)


# --------------------------------------------------------------------------------------------
# Sliding-window layers (llama.cpp 0.3.36 rules)
# --------------------------------------------------------------------------------------------


def swa_model(tmp_path, arch, n_layers, **kw) -> Path:
    return gm.write_header_only_model(
        tmp_path / f"{arch}.gguf", arch=arch, n_layers=n_layers, n_embd=64, n_head=4, n_head_kv=1,
        n_ff=128, n_vocab=64, vocab_in_header=False, **kw,
    )


def test_reader_marks_gemma3_sliding_layers_five_of_six(tmp_path):
    info = read_model_info(swa_model(tmp_path, "gemma3", 12, sliding_window=512))

    assert info.sliding_window == 512
    assert [il for il, swa in enumerate(info.swa_layers) if not swa] == [5, 11]


def test_reader_reports_no_sliding_layers_without_a_window(tmp_path):
    info = read_model_info(swa_model(tmp_path, "gemma3", 12))

    assert info.sliding_window == 0
    assert info.swa_layers == (False,) * 12


def test_reader_lets_a_uint_pattern_override_the_arch_default(tmp_path):
    info = read_model_info(swa_model(tmp_path, "gemma3", 8, sliding_window=128, sliding_window_pattern=4))

    assert info.swa_layers == (True, True, True, False) * 2


def test_reader_uses_a_per_layer_pattern_array_as_is(tmp_path):
    pattern = [True, False, False, True, True, False]
    info = read_model_info(swa_model(tmp_path, "gemma3", 6, sliding_window=128, sliding_window_pattern=pattern))

    assert info.swa_layers == tuple(pattern)


def test_reader_treats_pattern_zero_as_all_layers_sliding(tmp_path):
    info = read_model_info(swa_model(tmp_path, "gemma3", 4, sliding_window=128, sliding_window_pattern=0))

    assert info.swa_layers == (True,) * 4


@pytest.mark.parametrize(
    ("arch", "n_layers", "window", "expected_window", "full_layers"),
    [
        ("gemma2", 4, 0, 4096, [1, 3]),  # window key optional, defaults to 4096
        ("gemma2", 4, 256, 256, [1, 3]),
        ("gpt-oss", 4, 128, 128, [1, 3]),
        ("cohere2", 8, 4096, 4096, [3, 7]),
        ("cohere2moe", 8, 4096, 4096, [0, 4]),  # dense first
        ("gemma3n", 10, 512, 512, [4, 9]),
        ("olmo2", 8, 4096, 4096, [3, 7]),
        ("llama4", 8, 0, 8192, [3, 7]),  # chunked attention, chunk fixed at 8192
        ("exaone4", 64, 4096, 4096, list(range(3, 64, 4))),
        ("smallthinker", 8, 1000, 4096, [0, 4]),  # window forced to 4096
    ],
)
def test_reader_applies_llama_cpp_swa_pattern_for_arch(tmp_path, arch, n_layers, window, expected_window, full_layers):
    info = read_model_info(swa_model(tmp_path, arch, n_layers, sliding_window=window))

    assert info.sliding_window == expected_window
    assert [il for il, swa in enumerate(info.swa_layers) if not swa] == full_layers


@pytest.mark.parametrize(
    ("arch", "n_layers", "window"),
    [
        ("llama", 4, 4096),  # llama.cpp ignores the key for archs without SWA support
        ("phi3", 4, 2047),  # SWA disabled in llama.cpp
        ("exaone4", 30, 4096),  # only the 64-layer model is interleaved
        ("olmo2", 4, 0),
    ],
)
def test_reader_reports_no_sliding_layers_where_llama_cpp_uses_none(tmp_path, arch, n_layers, window):
    info = read_model_info(swa_model(tmp_path, arch, n_layers, sliding_window=window))

    assert info.sliding_window == 0
    assert not any(info.swa_layers)


def test_reader_marks_lfm2_attention_layers_sliding(tmp_path):
    path = gm.write_header_only_model(
        tmp_path / "lfm2.gguf", arch="lfm2", n_layers=4, n_embd=64, n_head=4, n_head_kv=[0, 2, 0, 2],
        n_ff=128, n_vocab=64, vocab_in_header=False, sliding_window=512,
    )

    assert read_model_info(path).swa_layers == (False, True, False, True)


# --------------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def split_model(tmp_path) -> list[Path]:
    first = write_small(tmp_path / "model.gguf", split_max_tensors=14)
    parts = sorted(tmp_path.glob("model-*-of-*.gguf"))
    assert first == parts[0] and len(parts) == 3
    return parts


def test_reader_reads_all_parts_of_a_split_file(tmp_path, split_model):
    whole = read_model_info(write_small(tmp_path / "whole.gguf"))

    info = read_model_info(split_model[0])

    assert info.paths == tuple(str(p) for p in split_model)
    assert info.layer_bytes == whole.layer_bytes
    assert info.total_bytes == whole.total_bytes
    assert info.n_vocab == whole.n_vocab and info.n_head_kv == whole.n_head_kv
    assert info.file_bytes == sum(os.path.getsize(p) for p in split_model)


def test_reader_finds_the_other_parts_from_any_part(split_model):
    assert read_model_info(split_model[1]).paths == tuple(str(p) for p in split_model)


def test_reader_names_a_missing_split_part(split_model):
    split_model[1].unlink()

    err = model_error(split_model[0])

    assert err.path == str(split_model[1])
    assert err.problem == "split part 2 of 3 is missing"


def test_reader_rejects_split_part_renamed_out_of_the_pattern(tmp_path, split_model):
    renamed = tmp_path / "renamed.gguf"
    split_model[0].rename(renamed)

    assert "cannot be found" in model_error(renamed).problem


# --------------------------------------------------------------------------------------------
# Bad files: one-line ModelFileError, never a traceback
# --------------------------------------------------------------------------------------------


def test_reader_rejects_truncated_file_with_one_line_error(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    size = os.path.getsize(path)
    os.truncate(path, size - 1)

    err = model_error(path)

    # output.weight (64 x 96 F16) is last and a multiple of the alignment: it ends at the old size.
    assert str(err) == (
        f"{path}: tensor data extends past end of file: tensor 'output.weight' ends at byte {size}, "
        f"file has {size - 1} bytes"
    )


def test_reader_rejects_truncated_header_with_one_line_error(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    os.truncate(path, 100)

    assert str(model_error(path)) == f"{path}: truncated GGUF header: file ends at byte 100 while reading the metadata"


def test_reader_rejects_non_gguf_file_naming_its_magic(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"hello world, not a model")

    assert str(model_error(path)) == f"{path}: not a GGUF file (it does not start with the GGUF magic)"


def test_reader_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")

    assert model_error(path).problem == "not a GGUF file (empty file)"


def test_reader_rejects_missing_file(tmp_path):
    assert str(model_error(tmp_path / "nope.gguf")) == f"{tmp_path / 'nope.gguf'}: file not found"


def test_reader_rejects_directory(tmp_path):
    assert model_error(tmp_path).problem == "is a directory, not a GGUF file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_reader_rejects_unreadable_file(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    path.chmod(0)

    assert model_error(path).problem == "cannot read file: permission denied"


def test_reader_reports_permission_denied_as_one_line_error(tmp_path, monkeypatch):
    path = write_small(tmp_path / "m.gguf")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Root can read any file, so the chmod test above skips there; fake the refusal instead.
    monkeypatch.setattr("planner.gguf_reader.open", denied, raising=False)

    assert str(model_error(path)) == f"{path}: cannot read file: permission denied"


def patch_version(path: Path, version: int) -> None:
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(struct.pack("<I", version))


def test_reader_rejects_unsupported_version(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    patch_version(path, 1)

    assert model_error(path).problem == "unsupported GGUF version 1 (supported: 2, 3)"


def test_reader_accepts_gguf_version_2(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    patch_version(path, 2)

    assert read_model_info(path).n_layers == 4


def test_reader_reads_big_endian_files(tmp_path):
    little = read_model_info(write_small(tmp_path / "le.gguf", n_head_kv=[4, 2, 2, 1]))
    big = read_model_info(write_small(tmp_path / "be.gguf", n_head_kv=[4, 2, 2, 1], big_endian=True))

    assert big.layer_bytes == little.layer_bytes
    assert big.n_head_kv == little.n_head_kv and big.n_vocab == little.n_vocab


def test_reader_rejects_unknown_ggml_type(tmp_path):
    path = write_small(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes()[:65536])
    name = b"output_norm.weight"
    at = data.index(name) + len(name)
    # n_dims (u32 = 1), ne[0] (u64), then the type (u32).
    struct.pack_into("<I", data, at + 4 + 8, 99)
    with open(path, "r+b") as f:
        f.write(data)

    assert model_error(path).problem == "tensor 'output_norm.weight' has unknown ggml type 99"


@pytest.mark.parametrize("key", ["general.architecture", "llama.block_count"])
def test_reader_rejects_missing_required_key(tmp_path, key):
    def drop(w):
        del w.kv_data[0][key]

    path = write_small(tmp_path / "m.gguf", extra_kv=drop)

    assert model_error(path).problem == f"missing metadata key {key}"


def test_reader_rejects_more_layers_than_llama_cpp_allows(tmp_path):
    def many(w):
        w.add_block_count(100_000)

    path = write_small(tmp_path / "m.gguf", extra_kv=many)

    assert model_error(path).problem == "llama.block_count is 100000; llama.cpp accepts 1 to 512 layers"


@pytest.fixture(scope="module")
def small_file_bytes(tmp_path_factory) -> bytes:
    return write_small(tmp_path_factory.mktemp("fuzz") / "m.gguf").read_bytes()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_reader_turns_any_truncation_or_corruption_into_model_file_error(small_file_bytes, data):
    blob = bytearray(small_file_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="n_flips")):
            at = data.draw(st.integers(0, min(len(blob), 4096) - 1), label="offset")
            blob[at] = data.draw(st.integers(0, 255), label="byte")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        path.write_bytes(blob)
        try:
            read_model_info(path)
        except ModelFileError as err:
            assert "\n" not in str(err)


# --------------------------------------------------------------------------------------------
# The real Gemma 3 270M file
# --------------------------------------------------------------------------------------------


def test_reader_reads_real_gemma3_270m_facts(gemma_path):
    info = read_model_info(gemma_path)

    assert info.architecture == "gemma3"
    assert (info.n_layers, info.n_embd, info.n_head, info.key_length, info.value_length) == (18, 640, 4, 256, 256)
    assert info.n_head_kv == (1,) * 18
    assert info.n_vocab == 262144
    assert info.sliding_window == 512
    assert [il for il, swa in enumerate(info.swa_layers) if not swa] == [5, 11, 17]
    assert info.output_bytes is None  # tied embeddings
    assert info.token_embd_type == QT.Q8_0
    assert info.file_bytes == os.path.getsize(gemma_path)
    assert info.total_bytes < info.file_bytes


# --------------------------------------------------------------------------------------------
# Cross-check against llama.cpp itself (CPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.llama
def test_reader_agrees_with_llama_cpp_on_tiny_gemma3(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = gm.write_tiny_llama(tmp_path / "g.gguf", arch="gemma3", n_layers=7, n_head_kv=1, sliding_window=32, ggml_type=QT.Q8_0)
    info = read_model_info(path)

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        model = llm._model.model
        assert llama_cpp.llama_model_n_layer(model) == info.n_layers
        assert llama_cpp.llama_model_n_embd(model) == info.n_embd
        assert llama_cpp.llama_model_n_head_kv(model) == info.n_head_kv[0]
        assert llama_cpp.llama_model_n_swa(model) == info.sliding_window == 32
        assert llama_cpp.llama_model_size(model) == info.total_bytes
        assert llm.n_vocab() == info.n_vocab
        assert llm.create_completion("the cat", max_tokens=2)["choices"]
    finally:
        llm.close()


@pytest.mark.llama
@pytest.mark.parametrize("pattern", [None, 3, [True, False, False, True, True, False, True]])
def test_reader_swa_layers_match_llama_cpp_load_log(tmp_path, capfd, pattern):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = gm.write_tiny_llama(
        tmp_path / "g.gguf", arch="gemma3", n_layers=7, n_head_kv=1, sliding_window=32, sliding_window_pattern=pattern
    )
    info = read_model_info(path)

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=True)
    llm.close()
    log = capfd.readouterr().err

    # "load_tensors: layer   3 assigned to device CPU, is_swa = 1"; layer n_layers is the output layer.
    logged = [line.rsplit("=", 1)[1].strip() == "1" for line in log.splitlines() if "assigned to device" in line and "is_swa" in line]
    assert tuple(logged[: info.n_layers]) == info.swa_layers
