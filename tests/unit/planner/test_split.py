"""tensor_split round trip under llama.cpp's float32 rule (planner.split)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.split import assign_layers, layer_counts, tensor_split_for_counts


@st.composite
def placements(draw):
    n_layers = draw(st.integers(min_value=1, max_value=200))
    n_devices = draw(st.integers(min_value=1, max_value=16))
    offloaded = draw(st.integers(min_value=1, max_value=n_layers + 1))
    # Random cut points: contiguous ranges, some devices may get none.
    cuts = sorted(draw(st.lists(st.integers(0, offloaded), min_size=n_devices - 1, max_size=n_devices - 1)))
    bounds = [0, *cuts, offloaded]
    counts = [bounds[i + 1] - bounds[i] for i in range(n_devices)]
    ngl = -1 if offloaded == n_layers + 1 and draw(st.booleans()) else offloaded
    return n_layers, counts, ngl


@settings(max_examples=3000, deadline=None)
@given(placements())
def test_tensor_split_reproduces_planned_layer_counts_exactly(case):
    n_layers, counts, ngl = case
    split = tensor_split_for_counts(counts)
    assignment = assign_layers(split, len(counts), n_layers, ngl)
    assert layer_counts(assignment, len(counts)) == counts
    # Contiguous ranges in device order, offloaded layers last, output layer on the last used GPU.
    gpu = [d for d in assignment if d is not None]
    assert gpu == sorted(gpu)
    first = next(i for i, d in enumerate(assignment) if d is not None)
    assert all(d is None for d in assignment[:first])
    assert all(d is not None for d in assignment[first:])
    assert assignment[n_layers] == max(i for i, c in enumerate(counts) if c)


def test_all_layers_and_output_go_to_gpus_with_minus_one():
    assignment = assign_layers([1.0], 1, 28, -1)
    assert assignment == [0] * 29


def test_partial_offload_keeps_first_layers_on_cpu_and_output_on_gpu():
    # H200 row n_gpu_layers = 14 of Qwen2 7B: output + layers 15..27 on CUDA0.
    assignment = assign_layers([1.0], 1, 28, 14)
    assert assignment[:15] == [None] * 15
    assert assignment[15:] == [0] * 14


def test_fractional_split_follows_upper_bound_rule():
    # 0.5/0.5 over 4 offloaded layers: x = 0, .25 -> dev 0; x = .5 is not < .5 -> dev 1.
    assert assign_layers([0.5, 0.5], 2, 3, -1) == [0, 0, 1, 1]


def test_without_tensor_split_llama_cpp_weighs_by_free_memory():
    assert layer_counts(assign_layers(None, 2, 9, -1, free_bytes=[30, 10]), 2) == [8, 2]


def test_zero_weight_device_gets_no_layers():
    assert layer_counts(assign_layers([3, 0, 2], 3, 4, -1), 3) == [3, 0, 2]
