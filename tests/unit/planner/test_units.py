"""planner.units: sizes written by people."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.units import MIB, parse_gpu_spec, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 1024**3),
        ("512MiB", 512 * MIB),
        ("1KiB", 1024),
        ("2TiB", 2 * 1024**4),
        ("100B", 100),
        ("24GB", 24 * 10**9),
        ("1MB", 10**6),
        ("3KB", 3000),
        ("1TB", 10**12),
    ],
)
def test_parse_size_reads_binary_and_decimal_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_ignores_unit_case_and_surrounding_spaces() -> None:
    assert parse_size(" 24 gib ") == parse_size("24GiB") == parse_size("24GIB")


def test_parse_size_accepts_fractions_and_rounds_down_to_whole_bytes() -> None:
    assert parse_size("1.5GiB") == 1536 * MIB
    assert parse_size(".5KiB") == 512
    assert parse_size("1.1KiB") == 1126  # 1126.4 bytes


def test_parse_size_zero_is_allowed() -> None:
    assert parse_size("0MiB") == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("24", "no unit"),
        ("24XB", "unknown unit 'XB'"),
        ("GiB", "not a size"),
        ("", "not a size"),
        ("-1GiB", "cannot be negative"),
        ("1e3MiB", "not a size"),
        ("24 Gi B", "not a size"),
    ],
)
def test_parse_size_rejects_bad_text_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_size(text)
    # Every message says what would have been accepted.
    assert "GiB" in str(info.value)


def test_parse_size_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="not text"):
        parse_size(24)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["B", "KiB", "MiB", "GiB", "KB", "MB", "GB"]))
def test_parse_size_of_whole_numbers_is_exact(number: int, unit: str) -> None:
    factor = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024**3, "KB": 1000, "MB": 10**6, "GB": 10**9}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


def test_parse_gpu_spec_total_only_has_no_free() -> None:
    assert parse_gpu_spec("24GiB") == (24 * 1024**3, None)


def test_parse_gpu_spec_reads_total_and_free() -> None:
    assert parse_gpu_spec("24GiB/20GiB") == (24 * 1024**3, 20 * 1024**3)


def test_parse_gpu_spec_rejects_free_over_total() -> None:
    with pytest.raises(ValueError, match=r"free memory \(30GiB\) exceeds total memory \(24GiB\)"):
        parse_gpu_spec("24GiB/30GiB")


def test_parse_gpu_spec_rejects_zero_total() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        parse_gpu_spec("0GiB")


def test_parse_gpu_spec_says_which_half_is_bad() -> None:
    with pytest.raises(ValueError, match="^free: unknown unit"):
        parse_gpu_spec("24GiB/20XB")
    with pytest.raises(ValueError, match="^total: no unit"):
        parse_gpu_spec("24/20GiB")


def test_parse_gpu_spec_rejects_more_than_one_slash() -> None:
    with pytest.raises(ValueError, match="more than one '/'"):
        parse_gpu_spec("24GiB/20GiB/10GiB")


@pytest.mark.parametrize("spec", ["0GiB", "0GiB/0GiB", "24GiB/30GiB", "24", "24GiB/20GiB/1GiB"])
def test_declared_inventories_use_the_one_gpu_spec_parser(spec: str) -> None:
    # planner.devices (the CLI's --gpus) refuses exactly what the config's [planner] gpus does.
    from planner.devices import declared_devices
    from planner.errors import DeviceError

    with pytest.raises(ValueError) as expected:
        parse_gpu_spec(spec)
    with pytest.raises(DeviceError) as got:
        declared_devices([spec])
    assert str(got.value) == f"gpus[0]: {spec!r} ({expected.value})"
