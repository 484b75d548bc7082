"""The cluster planner (planner.cluster): models to nodes, then each node packed by planner.plan."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cluster import EXPLAINED_NODES, ClusterModel, Node, plan_cluster
from planner.devices import DevicePolicy, declared_devices
from planner.memory import RunSettings
from planner.plan import ModelRequest, PlanPolicy, plan
from testkit.factories import model_info

NO_RESERVE = PlanPolicy(devices=DevicePolicy(reserve_mib=0, min_budget_mib=0))


def node(name: str, *gpus: str) -> Node:
    return Node(name, tuple(declared_devices(list(gpus))))


def model(name: str, layer_mib: float = 100.0, n_layers: int = 32, *, replicas: int = 1, on_demand: bool = False, **kw) -> ClusterModel:
    request = ModelRequest(name=name, info=model_info(n_layers=n_layers, layer_mib=layer_mib, name=name), settings=RunSettings(n_ctx=2048), **kw)
    return ClusterModel(request, replicas=replicas, on_demand=on_demand)


def gib_model(name: str, gib: float, **kw) -> ClusterModel:
    """About ``gib`` GiB of weights in 32 layers (plus ~1 GiB of KV, compute and CUDA context)."""
    return model(name, layer_mib=gib * 1024 / 32, **kw)


def assert_nodes_packed_by_plan(result, models, nodes, policy):
    by_name = {m.name: m for m in models}
    for n, np in zip(nodes, result.nodes):
        eager = [m.request for m in models if not m.on_demand and n.name in result.assignment()[m.name]]
        assert np.plan == plan(eager, n.devices, policy), n.name
    for name, where in result.assignment().items():
        assert len(where) == len(set(where)), f"{name}: two replicas on one node"
        assert len(where) <= by_name[name].replicas


# ---------------------------------------------------------------- placement


def test_each_node_is_packed_exactly_as_plan_packs_its_models():
    nodes = [node("a", "24GiB", "24GiB"), node("b", "48GiB"), node("c", "12GiB")]
    models = [gib_model(f"m{i}", g) for i, g in enumerate((20, 14, 9, 7, 5, 3, 2))]
    result = plan_cluster(models, nodes, NO_RESERVE)
    assert result.fits, result.problems
    assert_nodes_packed_by_plan(result, models, nodes, NO_RESERVE)


def test_a_model_never_spans_nodes_even_when_two_nodes_together_would_hold_it():
    # 30 GiB of weights: more than either 24 GiB node, less than both together.
    result = plan_cluster([gib_model("big", 30)], [node("a", "24GiB"), node("b", "24GiB")], NO_RESERVE)
    assert not result.fits
    assert result.assignment() == {"big": ()}


def test_a_model_spans_the_gpus_of_one_node_when_one_gpu_is_too_small():
    result = plan_cluster([gib_model("big", 30)], [node("a", "24GiB", "24GiB")], NO_RESERVE)
    assert result.fits
    (p,) = result.node("a").plan.placements
    assert p.gpus == (0, 1) and result.node("a").gpus_used == (0, 1)


def test_replicas_run_on_different_nodes():
    nodes = [node("a", "80GiB"), node("b", "80GiB"), node("c", "80GiB")]
    result = plan_cluster([gib_model("chat", 10, replicas=3)], nodes, NO_RESERVE)
    assert result.fits
    assert sorted(result.assignment()["chat"]) == ["a", "b", "c"]
    assert all(n.models == ("chat",) for n in result.nodes)


def test_replicas_that_only_one_node_can_hold_are_explained():
    nodes = [node("a", "80GiB"), node("b", "12GiB")]
    result = plan_cluster([gib_model("chat", 20, replicas=2)], nodes, NO_RESERVE)
    assert result.assignment()["chat"] == ("a",)
    (line,) = result.problems
    assert line.startswith("model 'chat' (replica 2 of 2) fits on no node: node b: on GPU 0 (declared GPU 0, ")
    assert "it is short by" in line


def test_under_best_fit_new_models_go_to_the_node_with_the_most_free_memory():
    nodes = [node("small", "24GiB"), node("large", "80GiB"), node("mid", "48GiB")]
    best_fit = replace(NO_RESERVE, packing="best_fit")
    result = plan_cluster([gib_model("one", 4), gib_model("two", 4), gib_model("three", 4)], nodes, best_fit)
    # Each goes to the roomiest node at its turn: 80 -> 48 -> 80 - 5 = 75 still the roomiest...
    assert result.assignment()["one"] == ("large",)
    assert result.assignment()["two"] == ("large",)
    # ...and the nodes' packing is still plan's.
    assert_nodes_packed_by_plan(result, [gib_model("one", 4), gib_model("two", 4), gib_model("three", 4)], nodes, best_fit)


def test_under_spread_each_model_goes_to_the_least_loaded_node_with_room():
    nodes = [node("small", "24GiB"), node("large", "80GiB"), node("mid", "48GiB")]
    models = [gib_model("one", 4), gib_model("two", 4), gib_model("three", 4)]
    result = plan_cluster(models, nodes, NO_RESERVE)
    # All idle: the roomiest first; then the nodes that carry nothing yet, roomiest first.
    assert result.assignment() == {"one": ("large",), "two": ("mid",), "three": ("small",)}
    assert_nodes_packed_by_plan(result, models, nodes, NO_RESERVE)


def test_models_spread_over_equal_nodes():
    nodes = [node(n, "24GiB") for n in "abc"]
    result = plan_cluster([gib_model(f"m{i}", 5) for i in range(3)], nodes, NO_RESERVE)
    assert sorted(w for (w,) in result.assignment().values()) == ["a", "b", "c"]


def test_higher_priority_models_are_placed_first():
    # Room for one of the two on the only node: priority decides, as on one machine.
    nodes = [node("a", "24GiB")]
    result = plan_cluster([gib_model("low", 15), gib_model("high", 15, priority=5)], nodes, NO_RESERVE)
    assert result.assignment() == {"low": (), "high": ("a",)}
    assert result.problems[0].startswith("model 'low' fits on no node: node a: ")


def test_a_cpu_offload_model_takes_a_node_where_it_fits_whole_before_offloading_anywhere():
    # One GPU per model (split_mode none): the roomiest node's cards are each too small for it.
    nodes = [node("roomy", "20GiB", "20GiB", "20GiB"), node("whole", "30GiB")]
    result = plan_cluster([gib_model("m", 25, allow_cpu_offload=True, split_mode="none")], nodes, NO_RESERVE)
    assert result.assignment()["m"] == ("whole",)
    assert result.node("whole").plan.placements[0].n_gpu_layers == -1


def test_a_model_that_fits_on_no_node_is_explained_per_node():
    nodes = [node("a", "24GiB"), node("b", "16GiB", "16GiB")]
    result = plan_cluster([gib_model("huge", 60)], nodes, NO_RESERVE)
    assert not result.fits
    assert [p.split(": ", 2)[1] for p in result.problems] == ["node b", "node a"]  # the roomiest first
    for line in result.problems:
        assert line.startswith("model 'huge' fits on no node: node ")
        assert "short by" in line and "would fit with" in line


def test_explanations_name_the_roomiest_nodes_and_count_the_rest():
    nodes = [node(f"n{i}", f"{8 + i}GiB") for i in range(EXPLAINED_NODES + 3)]
    result = plan_cluster([gib_model("huge", 60)], nodes, NO_RESERVE)
    assert len(result.problems) == EXPLAINED_NODES + 1
    assert f"node n{EXPLAINED_NODES + 2}" in result.problems[0]
    assert result.problems[-1] == "model 'huge': 3 more node(s) have less room"


def test_a_node_without_gpus_runs_its_models_on_the_cpu():
    result = plan_cluster([gib_model("m", 5)], [node("cpu")], NO_RESERVE)
    (p,) = result.node("cpu").plan.placements
    assert p.gpus == () and result.node("cpu").gpus_used == ()


# ---------------------------------------------------------------- on-demand models


def test_on_demand_models_go_where_they_fit_next_to_the_eager_ones():
    nodes = [node("a", "24GiB"), node("b", "24GiB")]
    models = [gib_model("eager", 18), gib_model("lazy", 10, on_demand=True)]
    result = plan_cluster(models, nodes, NO_RESERVE)
    assert result.fits
    eager_node = result.assignment()["eager"][0]
    (lazy_node,) = result.assignment()["lazy"]
    assert lazy_node != eager_node
    assert [p.name for p in result.node(lazy_node).on_demand] == ["lazy"]
    assert result.node(lazy_node).plan.placements == ()  # not loaded at start


def test_on_demand_models_spread_over_nodes_by_the_room_they_share():
    nodes = [node("a", "24GiB"), node("b", "24GiB")]
    models = [gib_model(f"lazy{i}", 10, on_demand=True) for i in range(4)]
    result = plan_cluster(models, nodes, NO_RESERVE)
    counts = sorted(len(n.on_demand) for n in result.nodes)
    assert counts == [2, 2]


def test_an_on_demand_model_with_no_room_beside_any_nodes_eager_models_is_explained():
    nodes = [node("a", "24GiB")]
    result = plan_cluster([gib_model("eager", 18), gib_model("lazy", 10, on_demand=True)], nodes, NO_RESERVE)
    (line,) = result.problems
    assert line.startswith("model 'lazy' fits on no node: node a (next to its eager models): on GPU 0")


# ---------------------------------------------------------------- stability


def test_replanning_with_the_previous_plan_changes_nothing():
    nodes = [node(n, "24GiB", "24GiB") for n in "abcd"]
    models = [gib_model(f"m{i}", 3 + i, replicas=1 + i % 2) for i in range(10)]
    first = plan_cluster(models, nodes, NO_RESERVE)
    again = plan_cluster(models, nodes, NO_RESERVE, previous=first.assignment())
    assert again.assignment() == first.assignment()
    assert again.moves == ()


def test_adding_a_model_moves_no_other_model():
    nodes = [node(n, "24GiB") for n in "abc"]
    models = [gib_model("x", 8), gib_model("y", 8), gib_model("z", 8)]
    first = plan_cluster(models, nodes, NO_RESERVE)
    # A bigger model: without the previous plan it would be packed first and could push x, y or z.
    grown = [gib_model("big", 12)] + models
    second = plan_cluster(grown, nodes, NO_RESERVE, previous=first.assignment())
    for m in models:
        assert second.assignment()[m.name] == first.assignment()[m.name]
    assert second.moves == ()
    assert second.fits


def test_a_model_that_no_longer_fits_on_its_node_moves_and_says_why():
    first = plan_cluster([gib_model("m", 10)], [node("a", "24GiB"), node("b", "16GiB")], NO_RESERVE)
    assert first.assignment()["m"] == ("a",)
    # Node a shrank (a card replaced): m moves, the reason says where and why.
    second = plan_cluster([gib_model("m", 10)], [node("a", "8GiB"), node("b", "16GiB")], NO_RESERVE, previous=first.assignment())
    assert second.assignment()["m"] == ("b",)
    (move,) = second.moves
    assert (move.model, move.left, move.joined) == ("m", ("a",), ("b",))
    assert move.reasons == ("it no longer fits on node a",)


def test_models_of_a_removed_node_move_and_the_others_stay():
    nodes = [node(n, "24GiB") for n in "abc"]
    models = [gib_model(f"m{i}", 6) for i in range(6)]
    first = plan_cluster(models, nodes, NO_RESERVE)
    second = plan_cluster(models, nodes[:2], NO_RESERVE, previous=first.assignment())
    for name, where in first.assignment().items():
        if where != ("c",):
            assert second.assignment()[name] == where
    moved = {m.model for m in second.moves}
    assert moved == {name for name, where in first.assignment().items() if where == ("c",)}
    assert all(m.reasons == ("node c is no longer in the cluster",) for m in second.moves)


def test_lowering_replicas_keeps_the_first_nodes():
    nodes = [node(n, "24GiB") for n in "abc"]
    first = plan_cluster([gib_model("m", 5, replicas=3)], nodes, NO_RESERVE)
    second = plan_cluster([gib_model("m", 5, replicas=2)], nodes, NO_RESERVE, previous=first.assignment())
    assert second.assignment()["m"] == first.assignment()["m"][:2]
    (move,) = second.moves
    assert move.reasons == ("replicas lowered to 2",)


def test_raising_replicas_keeps_the_existing_ones():
    nodes = [node(n, "24GiB") for n in "abc"]
    first = plan_cluster([gib_model("m", 5)], nodes, NO_RESERVE)
    second = plan_cluster([gib_model("m", 5, replicas=3)], nodes, NO_RESERVE, previous=first.assignment())
    assert second.assignment()["m"][0] == first.assignment()["m"][0]
    assert len(second.assignment()["m"]) == 3 and second.moves == ()


def test_a_higher_priority_model_displaces_a_kept_lower_priority_one():
    nodes = [node("a", "24GiB"), node("b", "24GiB")]
    first = plan_cluster([gib_model("x", 15), gib_model("y", 15)], nodes, NO_RESERVE)
    assert first.fits
    models = [gib_model("x", 15), gib_model("y", 15), gib_model("vip", 15, priority=10)]
    second = plan_cluster(models, nodes, NO_RESERVE, previous=first.assignment())
    assert second.assignment()["vip"]
    (move,) = second.moves
    assert move.reasons == (f"made room for higher-priority model 'vip' on node {move.left[0]}",)
    assert any(line.startswith(f"model {move.model!r} fits on no node") for line in second.problems)
    assert_nodes_packed_by_plan(second, models, nodes, NO_RESERVE)


def test_a_new_model_of_equal_priority_does_not_push_out_a_kept_one():
    nodes = [node("a", "24GiB")]
    first = plan_cluster([gib_model("old", 15)], nodes, NO_RESERVE)
    second = plan_cluster([gib_model("old", 15), gib_model("new", 16)], nodes, NO_RESERVE, previous=first.assignment())
    assert second.assignment() == {"old": ("a",), "new": ()}
    assert second.moves == ()
    assert second.problems[0].startswith("model 'new' fits on no node: node a: ")


def test_the_cluster_plan_is_deterministic():
    nodes = [node(n, "24GiB", "12GiB") for n in "abcd"]
    models = [gib_model(f"m{i}", 2 + i % 5, replicas=1 + i % 3, on_demand=i % 4 == 3) for i in range(12)]
    assert plan_cluster(models, nodes, NO_RESERVE) == plan_cluster(models, nodes, NO_RESERVE)


# ---------------------------------------------------------------- properties

_gpu = st.sampled_from(["8GiB", "12GiB", "24GiB", "48GiB", "80GiB"])
_nodes = st.lists(st.lists(_gpu, min_size=0, max_size=4), min_size=1, max_size=5).map(
    lambda specs: [node(f"n{i}", *g) for i, g in enumerate(specs)]
)
_models = st.lists(
    st.tuples(
        st.floats(0.5, 40), st.integers(1, 3), st.booleans(), st.integers(-1, 1), st.booleans()
    ),
    min_size=1,
    max_size=10,
)


def _build(specs, n_nodes):
    return [
        gib_model(f"m{i}", gib, replicas=min(reps, n_nodes), on_demand=lazy, priority=prio, allow_cpu_offload=offload)
        for i, (gib, reps, lazy, prio, offload) in enumerate(specs)
    ]


@settings(max_examples=60, deadline=None)
@given(_nodes, _models)
def test_every_node_plan_is_plans_own_and_replicas_never_share_a_node(nodes, specs):
    models = _build(specs, len(nodes))
    result = plan_cluster(models, nodes, NO_RESERVE)
    assert_nodes_packed_by_plan(result, models, nodes, NO_RESERVE)
    for m in models:
        where = result.assignment()[m.name]
        placed = len(where) == m.replicas
        assert placed or any(f"model {m.name!r}" in p for p in result.problems)


@settings(max_examples=60, deadline=None)
@given(_nodes, _models, st.floats(0.5, 40))
def test_a_new_model_of_lowest_priority_never_moves_the_other_eager_models(nodes, specs, gib):
    # On-demand models may move: like on one machine, eager models come first, and an on-demand
    # model needs room beside them to load.
    models = _build(specs, len(nodes))
    first = plan_cluster(models, nodes, NO_RESERVE)
    newcomer = gib_model("new", gib, priority=-5)
    second = plan_cluster([newcomer, *models], nodes, NO_RESERVE, previous=first.assignment())
    for m in models:
        if not m.on_demand:
            assert second.assignment()[m.name] == first.assignment()[m.name], m.name
    lazy = {m.name for m in models if m.on_demand}
    assert all(move.model in lazy for move in second.moves)
    assert_nodes_packed_by_plan(second, [newcomer, *models], nodes, NO_RESERVE)


@settings(max_examples=40, deadline=None)
@given(_nodes, _models)
def test_replanning_a_plan_onto_itself_is_a_fixed_point(nodes, specs):
    models = _build(specs, len(nodes))
    first = plan_cluster(models, nodes, NO_RESERVE)
    again = plan_cluster(models, nodes, NO_RESERVE, previous=first.assignment())
    assert again.assignment() == first.assignment()
    assert again.moves == ()
    assert again.nodes == first.nodes


def test_priorities_and_offload_survive_the_cpu_offload_first_pass():
    m = gib_model("m", 5, allow_cpu_offload=True)
    result = plan_cluster([m], [node("a", "24GiB")], NO_RESERVE)
    (p,) = result.node("a").plan.placements
    assert p == plan([m.request], declared_devices(["24GiB"]), NO_RESERVE).placements[0]
    assert replace(m.request, allow_cpu_offload=False) != m.request  # the pass changes a copy only
