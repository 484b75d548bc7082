"""The global planner (planner.plan) on declared inventories."""

from dataclasses import replace


from hypothesis import given, settings
from hypothesis import strategies as st

from planner.devices import DevicePolicy, declared_devices
from planner.memory import RunSettings
from planner.plan import ModelRequest, PlanPolicy, plan
from planner.split import assign_layers, layer_counts
from testkit.factories import GIB, MIB, model_info

BOX = declared_devices(["24GiB", "24GiB", "12GiB"])
NO_RESERVE = PlanPolicy(devices=DevicePolicy(reserve_mib=0, min_budget_mib=0))


def req(name, layer_mib=100.0, n_layers=32, **kw):
    return ModelRequest(name=name, info=model_info(n_layers=n_layers, layer_mib=layer_mib, name=name), **kw)


def gpu_totals(p):
    return [d.total_bytes for d in p.memory.devices]


def test_plan_puts_small_model_on_one_gpu():
    result = plan([req("small")], BOX)
    (p,) = result.placements
    assert result.fits
    assert len(p.gpus) == 1
    assert p.n_gpu_layers == -1
    assert p.tensor_split is None
    assert p.layer_counts == (33,)


def test_best_fit_puts_small_model_on_smallest_gpu_that_holds_it():
    (p,) = plan([req("small")], BOX, PlanPolicy(packing="best_fit")).placements
    assert p.gpus == (2,)  # the 12 GiB card: keeps the 24 GiB cards whole for bigger models


def test_first_fit_follows_device_order_like_the_poc():
    (p,) = plan([req("small")], BOX, PlanPolicy(packing="first_fit")).placements
    assert p.gpus == (0,)


def test_plan_spills_to_next_gpu_when_first_is_full():
    # 80 layers of 500 MiB = 39 GiB of weights: more than one 24 GiB card.
    result = plan([req("big", layer_mib=500, n_layers=80)], BOX)
    (p,) = result.placements
    assert len(p.gpus) == 2
    assert sum(p.layer_counts) == 81
    split = assign_layers(list(p.tensor_split), 2, 80, p.n_gpu_layers)
    assert layer_counts(split, 2) == list(p.layer_counts)
    budgets = {u.index: u.budget_bytes for u in result.gpus}
    assert all(t <= budgets[g] for g, t in zip(p.gpus, gpu_totals(p)))


def test_plan_prefers_one_gpu_over_two_when_one_holds_the_model():
    # 15 GiB fits a 24 GiB card alone: splitting would pay a second CUDA context.
    (p,) = plan([req("mid", layer_mib=480)], BOX).placements
    assert len(p.gpus) == 1 and p.gpus[0] in (0, 1)


def test_higher_priority_model_is_placed_first():
    # Two 20 GiB models, one 24 GiB card usable: the higher priority one gets it.
    policy = PlanPolicy(devices=DevicePolicy(devices=(0,)))
    low = req("low", layer_mib=600)
    high = req("high", layer_mib=600, priority=5)
    result = plan([low, high], BOX, policy)
    assert [p.name for p in result.placements] == ["high"]
    assert len(result.problems) == 1 and result.problems[0].startswith("model 'low' does not fit")


def test_reserve_is_kept_free_on_every_gpu():
    result = plan([req(f"m{i}", layer_mib=300) for i in range(6)], BOX, PlanPolicy(devices=DevicePolicy(reserve_mib=2048)))
    for u in result.gpus:
        assert u.budget_bytes == u.device.free_bytes - 2048 * MIB
        assert sum(b for _, b in result.used_bytes(u.index)) <= u.budget_bytes


def test_model_stays_on_its_allowed_gpus():
    (p,) = plan([req("pinned", gpus=(1,))], BOX).placements
    assert p.gpus == (1,)


def test_max_vram_budget_is_respected():
    result = plan([req("capped", layer_mib=100, max_vram_bytes=2 * GIB)], BOX)
    assert not result.fits
    assert "max_vram_mib = 2,048" in result.problems[0]


def test_min_budget_skips_small_gpu():
    devices = declared_devices(["24GiB", "1.5GiB"])
    result = plan([req("m")], devices, PlanPolicy(devices=DevicePolicy(reserve_mib=1024, min_budget_mib=1024)))
    assert [u.index for u in result.gpus] == [0]
    assert "under min_budget_mib = 1,024" in result.skipped[0].reason


def test_device_filter_limits_the_gpus():
    result = plan([req("m")], BOX, PlanPolicy(devices=DevicePolicy(devices=(1,))))
    assert result.placements[0].gpus == (1,)


def test_cpu_offload_only_where_allowed():
    big = dict(layer_mib=2000, n_layers=40)  # 78 GiB: more than the whole box
    refused = plan([req("big", **big)], BOX)
    assert not refused.fits and not refused.placements
    allowed = plan([req("big", allow_cpu_offload=True, **big)], BOX)
    (p,) = allowed.placements
    assert allowed.fits
    assert 0 < p.n_gpu_layers < 41
    assert sum(p.layer_counts) == p.n_gpu_layers
    assert p.notes[0].startswith("partial CPU offload")
    # The offloaded layers are the last ones and the CPU keeps the rest in host memory.
    assert p.memory.host.mapped_bytes > 0


def test_machine_without_gpus_runs_every_model_on_the_cpu():
    result = plan([req("a"), req("b")], [])
    assert result.fits
    assert all(p.gpus == () and p.n_gpu_layers == 0 for p in result.placements)
    assert result.placements[0].notes == ("no GPU on this machine: runs on the CPU",)


def test_infeasible_plan_names_model_gpu_shortfall_and_fixes():
    devices = declared_devices(["8GiB"])
    chat = ModelRequest(name="chat", info=model_info(n_layers=32, layer_mib=150), settings=RunSettings(n_ctx=32768))
    result = plan([chat], devices, PlanPolicy(devices=DevicePolicy(reserve_mib=1024)))
    assert result.problems == (
        "model 'chat' does not fit: on GPU 0 (declared GPU 0, 7,168 MiB left) it is short by 4,687 MiB; "
        "would fit with n_ctx = 4096, or allow_cpu_offload = true (16 of 33 layers on GPU)",
    )


def test_infeasible_split_names_the_gpu_where_filling_stopped():
    result = plan([req("huge", layer_mib=700, n_layers=80)], BOX)
    assert result.problems == (
        "model 'huge' does not fit: on GPU 2 (declared GPU 2, 11,264 MiB left) it is short by 2,767 MiB "
        "for the last 19 of its 81 GPU layers, after filling GPUs 0,1; "
        "would fit with allow_cpu_offload = true (77 of 81 layers on GPU)",
    )


def ceil_mib(b):
    return -(-b // MIB)


def test_a_model_that_does_not_fit_comes_with_its_shortfall_as_data():
    devices = declared_devices(["8GiB"])
    chat = ModelRequest(name="chat", info=model_info(n_layers=32, layer_mib=150), settings=RunSettings(n_ctx=32768))
    small = req("small", layer_mib=10, n_layers=8, priority=1)  # placed first
    result = plan([small, chat], devices, PlanPolicy(devices=DevicePolicy(reserve_mib=1024)))
    (short,) = result.shortfalls
    assert (short.model, short.gpu, short.tried_gpus) == ("chat", 0, (0,))
    # What the small model left on the GPU, what chat needs there, and the difference.
    left = 7168 * MIB - sum(b for _, b in result.used_bytes(0))
    assert short.room_bytes == left and short.need_bytes == left + short.short_bytes > left
    assert (short.placed_layers, short.gpu_layers) == (0, 33)
    # The same facts as the problem's words.
    assert f"{ceil_mib(left):,} MiB left) it is short by {ceil_mib(short.short_bytes):,} MiB" in result.problems[0]


def test_a_split_shortfall_names_the_gpu_where_filling_stopped_and_the_layers_placed_before_it():
    result = plan([req("huge", layer_mib=700, n_layers=80)], BOX)
    (short,) = result.shortfalls
    assert (short.gpu, short.tried_gpus, short.gpu_layers, short.placed_layers) == (2, (0, 1, 2), 81, 62)
    assert (short.room_bytes, ceil_mib(short.short_bytes)) == (11264 * MIB, 2767)


def test_a_shortfall_over_max_vram_has_no_gpu_and_the_cap_as_its_room():
    result = plan([req("capped", layer_mib=100, max_vram_bytes=2 * GIB), req("fits")], BOX)
    (short,) = result.shortfalls
    assert (short.model, short.gpu, short.room_bytes) == ("capped", None, 2 * GIB)
    assert short.need_bytes - short.room_bytes == short.short_bytes > 0


def test_models_refused_for_other_reasons_than_memory_have_no_shortfall():
    result = plan([req("m", layer_mib=1000, tensor_split=(0.1, 0.1, 0.8)), req("pinned", gpus=(7,))], BOX)
    assert len(result.problems) == 2 and result.shortfalls == ()
    assert plan([req("small")], BOX).shortfalls == ()


def test_manual_tensor_split_is_honoured():
    (p,) = plan([req("m", layer_mib=300, tensor_split=(1.0, 1.0))], BOX, PlanPolicy(packing="first_fit")).placements
    assert p.layer_counts == (17, 16)  # x = 16/33 < 0.5 still lands on GPU 0
    assert p.tensor_split == (1.0, 1.0)
    assert p.notes == ("manual tensor_split",)


def test_manual_tensor_split_zero_weight_gpu_is_left_invisible():
    (p,) = plan([req("m", tensor_split=(0.0, 1.0))], BOX).placements
    assert p.gpus == (1,)  # device order free_desc ties by index: 0, 1, 2
    assert p.cuda_visible_devices == "1"


def test_manual_tensor_split_that_overflows_a_gpu_is_refused():
    result = plan([req("m", layer_mib=1000, tensor_split=(0.1, 0.1, 0.8))], BOX)
    assert not result.fits
    assert result.problems[0].startswith("model 'm': the manual tensor_split [0.1, 0.1, 0.8] does not fit: GPU 2 needs")


def test_slots_share_one_copy_of_the_weights_and_keep_a_full_context_each():
    one = plan([req("m", settings=RunSettings(n_ctx=4096))], BOX).placements[0].memory.devices[0]
    eight = plan([req("m", settings=RunSettings(n_ctx=4096, slots=8))], BOX).placements[0].memory.devices[0]
    assert eight.weights_bytes == one.weights_bytes
    assert eight.overhead_bytes == one.overhead_bytes and eight.growth_bytes == one.growth_bytes
    assert eight.kv_bytes == 8 * one.kv_bytes
    # One batch of n_ubatch tokens, attending to a 4096-cell stream per sequence: same buffer.
    assert eight.compute_bytes == one.compute_bytes


def test_unified_slots_share_one_pool_of_kv_pool_tokens():
    pooled = RunSettings(n_ctx=4096, slots=8, kv_unified=True, kv_pool_tokens=8192)
    dev = plan([req("m", settings=pooled)], BOX).placements[0].memory.devices[0]
    two_contexts = plan([req("m", settings=RunSettings(n_ctx=4096, slots=2))], BOX).placements[0].memory.devices[0]
    assert dev.kv_bytes == two_contexts.kv_bytes


def test_model_that_fits_with_fewer_slots_says_how_many():
    devices = declared_devices(["8GiB"])
    chat = ModelRequest(name="chat", info=model_info(n_layers=32, layer_mib=150), settings=RunSettings(n_ctx=4096, slots=8))
    result = plan([chat], devices, PlanPolicy(devices=DevicePolicy(reserve_mib=1024)))
    # 4,800 MiB of weights and 512 MiB of KV per slot in 7,168 MiB: two slots fit (6,934 MiB).
    assert result.problems == (
        "model 'chat' does not fit: on GPU 0 (declared GPU 0, 7,168 MiB left) it is short by 2,839 MiB; "
        "would fit with n_ctx = 1024, or max_concurrency = 2, or allow_cpu_offload = true (22 of 33 layers on GPU)",
    )


def test_split_mode_none_keeps_a_model_on_one_gpu():
    result = plan([req("big", layer_mib=500, n_layers=80, split_mode="none")], BOX)
    assert not result.fits


def test_plan_is_deterministic():
    models = [req(f"m{i}", layer_mib=100 + 37 * i, priority=i % 3) for i in range(8)]
    assert plan(models, BOX) == plan(models, BOX)


@st.composite
def scenarios(draw):
    n_gpus = draw(st.integers(1, 4))
    gpus = [f"{draw(st.integers(4, 48))}GiB" for _ in range(n_gpus)]
    models = []
    for i in range(draw(st.integers(1, 5))):
        models.append(
            req(
                f"m{i}",
                layer_mib=draw(st.integers(20, 900)),
                n_layers=draw(st.integers(4, 64)),
                priority=draw(st.integers(0, 2)),
                allow_cpu_offload=draw(st.booleans()),
                settings=RunSettings(n_ctx=draw(st.sampled_from([512, 2048, 8192])), flash_attn=draw(st.booleans())),
            )
        )
    packing = draw(st.sampled_from(["best_fit", "first_fit"]))
    return declared_devices(gpus), models, packing


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_plan_stays_within_each_gpu_budget_and_reproduces_its_split(case):
    devices, models, packing = case
    result = plan(models, devices, PlanPolicy(packing=packing))
    budgets = {u.index: u.budget_bytes for u in result.gpus}
    for u in result.gpus:
        assert sum(b for _, b in result.used_bytes(u.index)) <= budgets[u.index]
    for p in result.placements:
        info = next(m.info for m in models if m.name == p.name)
        if p.gpus:
            split = list(p.tensor_split) if p.tensor_split else [1.0]
            assignment = assign_layers(split, len(p.gpus), info.n_layers, p.n_gpu_layers)
            assert layer_counts(assignment, len(p.gpus)) == list(p.layer_counts)
    assert len(result.placements) + len(result.problems) == len(models)


def test_quantized_kv_cache_that_does_not_divide_the_head_dimension_is_refused():
    info = model_info(head_dim=16)
    result = plan([ModelRequest(name="tiny", info=info, settings=RunSettings(type_k="q8_0"))], BOX)
    assert result.problems == (
        "model 'tiny': type_k = 'q8_0' needs a head dimension divisible by 32 (this model's is 16)",
    )


# --------------------------------------------------------------------------------------------
# spread (the default): models on the GPUs with the least expected load
# --------------------------------------------------------------------------------------------

TWO = declared_devices(["24GiB", "24GiB"])
# The example: a 7B at 64k context, the same 7B at 8k, a 270M model (sizes alike).
THREE = [req("7b-64k", layer_mib=260), req("7b-8k", layer_mib=150), req("270m", layer_mib=8)]


def test_spread_uses_both_gpus_where_best_fit_packs_one():
    spread = {p.name: p.gpus for p in plan(THREE, TWO).placements}
    assert spread == {"7b-64k": (0,), "7b-8k": (1,), "270m": (1,)}  # the small one joins the lighter GPU
    packed = {p.name: p.gpus for p in plan(THREE, TWO, PlanPolicy(packing="best_fit")).placements}
    assert packed == {"7b-64k": (0,), "7b-8k": (0,), "270m": (0,)}


def test_spread_says_why_each_model_went_where_it_did():
    notes = {p.name: p.notes for p in plan(THREE, TWO).placements}
    assert notes["7b-8k"] == ("packing spread: GPU 1 had the least expected load among the GPUs with room (0.0 before it)",)
    assert notes["270m"] == ("packing spread: GPU 1 had the least expected load among the GPUs with room (5.4 before it)",)
    best = {p.name: p.notes for p in plan(THREE, TWO, PlanPolicy(packing="best_fit")).placements}
    assert best["270m"] == ("packing best_fit: GPU 0 left the least memory unused",)


def test_a_models_weight_steers_spread():
    # Declared the busiest, the small model gets a GPU of its own; the big two share the other.
    models = [req("7b-64k", layer_mib=260), req("7b-8k", layer_mib=150), req("270m", layer_mib=8, weight=100.0)]
    assert [p.gpus for p in plan(models, TWO).placements] == [(0,), (1,), (1,)]  # size order: 7b-64k, 7b-8k, then 270m
    models[2] = req("270m", layer_mib=8, priority=1, weight=100.0)  # placed first now
    placed = {p.name: p.gpus for p in plan(models, TWO).placements}
    assert placed == {"270m": (0,), "7b-64k": (1,), "7b-8k": (1,)}


def test_spread_packs_where_spreading_would_leave_a_model_out():
    models = [req("a", layer_mib=400), req("b", layer_mib=500), req("c", layer_mib=300), req("d", layer_mib=500)]
    gpus = declared_devices(["12GiB", "12GiB", "24GiB"])
    spread = plan(models, gpus, NO_RESERVE)
    best = plan(models, gpus, PlanPolicy(devices=NO_RESERVE.devices, packing="best_fit"))
    assert len(spread.placements) == len(best.placements) == 4 - len(best.problems)
    assert [p.gpus for p in spread.placements] == [p.gpus for p in best.placements]
    assert all(p.notes[-1] == "packing best_fit instead of spread: spreading would leave 1 more model(s) out" for p in spread.placements)


@settings(max_examples=150, deadline=None)
@given(
    gpus=st.lists(st.sampled_from(["8GiB", "12GiB", "16GiB", "24GiB", "48GiB"]), min_size=1, max_size=4),
    sizes=st.lists(st.sampled_from([20, 50, 100, 200, 300, 400, 500, 700]), min_size=1, max_size=6),
    weights=st.lists(st.one_of(st.none(), st.floats(0.1, 100)), min_size=6, max_size=6),
)
def test_spread_never_places_fewer_models_than_best_fit(gpus, sizes, weights):
    models = [req(f"m{i}", layer_mib=mib, weight=w) for i, (mib, w) in enumerate(zip(sizes, weights))]
    devices = declared_devices(gpus)
    spread = plan(models, devices, NO_RESERVE)
    best = plan(models, devices, PlanPolicy(devices=NO_RESERVE.devices, packing="best_fit"))
    assert len(spread.placements) >= len(best.placements)
    for p in spread.placements:  # and within every budget, as any plan
        for slot, g in enumerate(p.gpus):
            assert sum(b for _, b in spread.used_bytes(g)) <= devices[g].total_bytes


# --------------------------------------------------------------------------------------------
# Hints that come true: each is checked by planning the whole config again with it
# --------------------------------------------------------------------------------------------

def apply_hint(r: ModelRequest, hint: str) -> ModelRequest:
    """What a user does with a printed hint."""
    s = r.settings
    if hint.startswith("n_ctx = "):
        return replace(r, settings=replace(s, n_ctx=int(hint.split()[2])))
    if hint.startswith("max_concurrency = "):
        return replace(r, settings=replace(s, slots=int(hint.split()[2])))
    if hint.startswith('type_k = type_v = "q8_0"'):
        return replace(r, settings=replace(s, type_k="q8_0", type_v="q8_0", flash_attn=True))
    if hint.startswith("allow_cpu_offload = true"):
        return replace(r, allow_cpu_offload=True)
    raise AssertionError(f"unknown hint {hint!r}")


def hints_of(problem: str) -> list[str]:
    return problem.split("; would fit with ", 1)[1].split(", or ") if "; would fit with " in problem else []


def assert_every_hint_comes_true(models, devices, policy):
    result = plan(models, devices, policy)
    placed = {p.name for p in result.placements}
    checked = 0
    for problem in result.problems:
        name = problem.split("'")[1]
        i = next(k for k, m in enumerate(models) if m.name == name)
        for hint in hints_of(problem):
            trial = [apply_hint(m, hint) if k == i else m for k, m in enumerate(models)]
            again = {p.name for p in plan(trial, devices, policy).placements}
            assert name in again and placed <= again, f"{hint!r} for {name}: placed {sorted(again)}, before {sorted(placed)}"
            checked += 1
    return checked


def test_a_hint_that_would_push_another_model_out_is_made_strong_enough_for_both():
    # "chat" (priority 1) is placed first and does not fit. Alone on the GPU it would fit with
    # n_ctx = 1024, 2 slots or 22 layers offloaded (test_model_that_fits_with_fewer_slots_says_how_many),
    # but each of those leaves no room for "emb" (777+ MiB with its CUDA context), placed after
    # it: only n_ctx = 512 makes room for both.
    devices = declared_devices(["8GiB"])
    chat = ModelRequest(name="chat", info=model_info(n_layers=32, layer_mib=150), settings=RunSettings(n_ctx=4096, slots=8), priority=1)
    small = model_info(n_layers=4, layer_mib=10, name="emb", n_vocab=8000, token_embd_mib=5, output_mib=5)
    emb = ModelRequest(name="emb", info=small, settings=RunSettings(n_ctx=512))
    policy = PlanPolicy(devices=DevicePolicy(reserve_mib=1024))
    (problem,) = plan([chat, emb], devices, policy).problems
    assert hints_of(problem) == ["n_ctx = 512"]
    assert assert_every_hint_comes_true([chat, emb], devices, policy) == 1


@settings(max_examples=40, deadline=None)
@given(
    gpus=st.lists(st.sampled_from(["8GiB", "12GiB", "24GiB"]), min_size=1, max_size=2),
    specs=st.lists(
        st.tuples(st.sampled_from([40, 100, 200, 400]), st.sampled_from([1, 2, 4, 8]), st.sampled_from([2048, 8192, 32768]), st.integers(0, 2)),
        min_size=1,
        max_size=4,
    ),
)
def test_every_printed_hint_fits_when_applied_to_the_whole_config(gpus, specs):
    models = [
        ModelRequest(name=f"m{i}", info=model_info(layer_mib=mib, name=f"m{i}"), settings=RunSettings(n_ctx=n_ctx, slots=slots), priority=prio)
        for i, (mib, slots, n_ctx, prio) in enumerate(specs)
    ]
    assert_every_hint_comes_true(models, declared_devices(gpus), NO_RESERVE)
