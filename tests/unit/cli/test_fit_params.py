"""llama-fit-params is asked for the context the worker will create (gateway.cli.fit_params)."""

from gateway.cli.fit_params import fit_arguments, fit_command
from gateway.config.schema import ModelConfig
from gateway.placement.mapping import run_settings
from planner.memory import RunSettings


def test_one_slot_asks_for_the_models_context_as_before():
    assert fit_command("llama-fit-params", "/m.gguf", RunSettings(n_ctx=4096, flash_attn=True, type_k="q8_0"), margin_mib=2048) == [
        "llama-fit-params", "-m", "/m.gguf", "-c", "4096", "-b", "512", "-ub", "512",
        "-fa", "on", "-ctk", "q8_0", "-ctv", "f16", "-fitt", "2048",
    ]  # fmt: skip


def test_slots_ask_for_the_cells_of_all_of_them_and_as_many_sequences():
    config = ModelConfig(name="m", path="/m.gguf", n_ctx=4096, max_concurrency=8, swa_full=True)
    assert fit_arguments(run_settings(config)) == [
        "-c", "32768", "-b", "512", "-ub", "512", "-fa", "off", "-ctk", "f16", "-ctv", "f16", "-np", "8", "--swa-full",
    ]  # fmt: skip


def test_a_unified_pool_asks_for_the_pools_cells():
    config = ModelConfig(name="m", path="/m.gguf", n_ctx=4096, max_concurrency=8, kv_unified=True, kv_pool_tokens=8192)
    args = fit_arguments(run_settings(config))
    assert args[args.index("-c") + 1] == "8192" and args[args.index("-np") + 1] == "8"
