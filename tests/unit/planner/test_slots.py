"""One context for several sequences: the rules of planner.memory that slots and kv_unified
change (the same figures are held to llama.cpp's buffer lines in test_memory_vs_llama.py)."""

from planner.memory import RunSettings, estimate_memory, kv_layer_bytes, layer_kv_cells, output_buffer_bytes
from planner.units import MIB
from testkit.factories import model_info

SWA = model_info(n_layers=6, sliding_window=512, swa_layers=(True, True, False, True, True, False))


def _host(info, settings):
    return estimate_memory(info, settings, [None] * (info.n_layers + 1), 0).host


def test_each_slot_keeps_its_full_context_in_its_own_stream():
    s = RunSettings(n_ctx=4096, slots=4)
    assert (s.kv_cells, s.streams, s.stream_cells) == (16384, 4, 4096)
    assert kv_layer_bytes(SWA, s) == [4 * b for b in kv_layer_bytes(SWA, RunSettings(n_ctx=4096))]


def test_a_context_that_is_no_multiple_of_256_is_padded_for_every_slot():
    s = RunSettings(n_ctx=1000, slots=3)
    assert (s.kv_cells, s.stream_cells) == (3000, 1024)


def test_a_unified_pool_is_one_stream_of_all_cells():
    s = RunSettings(n_ctx=4096, slots=4, kv_unified=True, kv_pool_tokens=10000)
    assert (s.kv_cells, s.streams, s.stream_cells) == (10000, 1, 10240)


def test_sliding_window_layers_hold_one_window_per_sequence():
    own = layer_kv_cells(SWA, RunSettings(n_ctx=8192, slots=8))
    pooled = layer_kv_cells(SWA, RunSettings(n_ctx=8192, slots=8, kv_unified=True))
    assert (own[0], own[2]) == (1024, 8192)  # per stream: pad256(512 + 512)
    assert (pooled[0], pooled[2]) == (4608, 65536)  # in the pool: pad256(8 x 512 + 512)


def test_swa_full_gives_sliding_window_layers_the_whole_stream():
    assert set(layer_kv_cells(SWA, RunSettings(n_ctx=8192, slots=4, swa_full=True))) == {8192}


def test_output_buffer_holds_one_row_of_logits_per_slot():
    info = model_info(n_vocab=262144)
    assert output_buffer_bytes(info, RunSettings(slots=8)) == 8 * MIB
    assert output_buffer_bytes(info, RunSettings(slots=8, embedding=True)) == 8 * (262144 + 4096) * 4


def test_the_reserved_batch_is_a_multiple_of_the_slots():
    assert RunSettings(n_ubatch=512, slots=3).ubatch_tokens == 513
    assert RunSettings(n_ubatch=512, slots=8).ubatch_tokens == 512
    # n_ubatch is capped by n_batch and by one sequence's context, as the worker passes them.
    assert RunSettings(n_ctx=256, n_ubatch=512, slots=4).ubatch == 256


def test_attention_reads_one_stream_per_sequence_but_the_whole_unified_pool():
    info = model_info(n_layers=4, layer_mib=1, n_vocab=1000)
    alone = _host(info, RunSettings(n_ctx=4096)).compute_bytes
    own = _host(info, RunSettings(n_ctx=4096, slots=8)).compute_bytes
    pooled = _host(info, RunSettings(n_ctx=4096, slots=8, kv_unified=True)).compute_bytes
    assert own == alone
    assert pooled > 7 * alone


def test_a_sliding_window_model_reads_two_masks():
    info = model_info(n_layers=6, layer_mib=1, n_vocab=1000, n_ff=128, sliding_window=512, swa_layers=SWA.swa_layers)
    full = model_info(n_layers=6, layer_mib=1, n_vocab=1000, n_ff=128)
    s = RunSettings(n_ctx=8192, swa_full=True)
    # Two f32 masks of 8192 x 512 cells instead of one.
    assert _host(info, s).compute_bytes - _host(full, s).compute_bytes == 8192 * 512 * 4
