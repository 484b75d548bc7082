"""The cluster planner: the same planner one level up, for several GPU nodes.

``plan_cluster(models, nodes, policy, previous) -> ClusterPlan`` is pure like ``planner.plan``:
deterministic, no I/O, no logging.

A model never spans nodes (llama.cpp splits a model across the GPUs of one process); a model
with ``replicas = n`` runs on ``n`` different nodes. Each node's GPUs are packed by
``planner.plan`` itself, so what a node's gateway plans at start-up is what this plan shows.

Rules, in order:
- eager models are assigned in ``plan``'s order (higher priority, then larger, then given
  order), each replica to a node that does not hold it yet;
- **stable**: with the previous cluster plan, a model keeps its nodes unless it must move: the
  node left the cluster, the model no longer fits there (it grew, the node shrank), its
  replicas were lowered, or a model of strictly higher priority needed the room and fitted
  nowhere else. A model with a previous node that still holds it is packed there before any
  new model is considered for that node;
- a new (or moving) replica goes to the node with the most free memory where it fits, which
  spreads load and leaves every node room to grow; a model that may offload to the CPU is
  first tried fully on GPU on every node;
- on-demand models go to nodes where they fit next to that node's eager models (so they can
  load there by evicting only other idle on-demand models), preferring the node with the most
  room left after the on-demand models already sent there. Eager models come first, as on one
  machine: an on-demand model moves when new eager models leave it no room on its node;
- a replica that fits on no node is explained per node: what is short, where, and what would
  make it fit (``planner.plan``'s explanation for that node's GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from planner.devices import Device, SkippedDevice, UsableDevice, select_devices
from planner.plan import (
    ModelRequest,
    Placement,
    Plan,
    PlanPolicy,
    add_load,
    allowed_gpus,
    model_weight,
    place_model,
    plan,
    rank_key,
    take,
)

# A model that fits on no node is explained for this many nodes (the roomiest first); the rest
# are counted. 64 lines per model would bury the ones that matter.
EXPLAINED_NODES = 5
# Re-assignments after a node's own packing refused a model that the assignment put there
# (packing order can differ from assignment order); each round forbids that model that node.
MAX_REPAIR_ROUNDS = 8


@dataclass(frozen=True)
class Node:
    """One GPU machine: its name (the Kubernetes node) and its GPUs."""

    name: str
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class ClusterModel:
    """One model to place in the cluster: what ``plan`` needs, how many nodes, when it loads."""

    request: ModelRequest
    replicas: int = 1
    on_demand: bool = False

    @property
    def name(self) -> str:
        return self.request.name


@dataclass(frozen=True)
class NodePlan:
    """One node: its eager models packed by ``plan`` and where each on-demand model would load."""

    name: str
    plan: Plan  # exactly planner.plan(this node's eager models, this node's GPUs, policy)
    on_demand: tuple[Placement, ...] = ()  # each as it would load next to the eager models

    @property
    def models(self) -> tuple[str, ...]:
        """Every model this node serves: eager ones, then on-demand ones."""
        return tuple(p.name for p in self.plan.placements) + tuple(p.name for p in self.on_demand)

    @property
    def gpus_used(self) -> tuple[int, ...]:
        """The GPU indices any of its models uses (what the node's pod must be given)."""
        used = {g for p in (*self.plan.placements, *self.on_demand) for g in p.gpus}
        return tuple(sorted(used))


@dataclass(frozen=True)
class Move:
    """A model that left nodes it had in the previous plan, and why."""

    model: str
    left: tuple[str, ...]
    joined: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ClusterPlan:
    nodes: tuple[NodePlan, ...]  # in the order the nodes were given
    assigned: tuple[tuple[str, tuple[str, ...]], ...]  # (model, its nodes) in the order models were given
    problems: tuple[str, ...] = ()
    moves: tuple[Move, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.problems

    def node(self, name: str) -> NodePlan | None:
        return next((n for n in self.nodes if n.name == name), None)

    def assignment(self) -> dict[str, tuple[str, ...]]:
        """Model name -> the nodes that serve it (first the ones it kept)."""
        return dict(self.assigned)


@dataclass
class _NodeState:
    node: Node
    usable: tuple[UsableDevice, ...]
    skipped: tuple[SkippedDevice, ...]
    order: list[int]  # usable GPU indices in device order
    by_index: dict[int, Device]
    budgets: dict[int, int]
    hosted: dict[int, Placement]  # model index -> its placement during assignment
    load: dict[int, float] = field(default_factory=dict)  # expected load per GPU (plan's spread)
    # True while every placement so far was made in plan's order from empty GPUs, with none
    # taken back: then the placements are exactly what plan() gives, and need no second pass.
    in_plan_order: bool = True
    last_rank: int = -1

    @classmethod
    def of(cls, node: Node, policy: PlanPolicy) -> _NodeState:
        usable, skipped = select_devices(node.devices, policy.devices)
        budgets = {u.index: u.budget_bytes for u in usable}
        return cls(node, tuple(usable), tuple(skipped), [u.index for u in usable], {d.index: d for d in node.devices}, budgets, {})

    @property
    def room(self) -> int:
        return sum(max(b, 0) for b in self.budgets.values())

    def try_place(self, req: ModelRequest, policy: PlanPolicy, budgets: dict[int, int] | None = None) -> tuple[Placement | None, str | None]:
        return place_model(
            req,
            allowed_gpus(req, self.order),
            self.budgets if budgets is None else budgets,
            policy,
            self.by_index,
            no_gpu_at_all=not self.node.devices,
            load=self.load,
        )

    def keep(self, i: int, p: Placement, rank: int, weight: float) -> None:
        self.hosted[i] = p
        take(self.budgets, p)
        add_load(self.load, p, weight)
        if rank < self.last_rank:
            self.in_plan_order = False
        self.last_rank = rank

    def drop(self, i: int, weight: float) -> None:
        p = self.hosted.pop(i)
        take(self.budgets, p, -1)
        add_load(self.load, p, -weight)
        self.in_plan_order = False

    def as_plan(self) -> Plan:
        """What plan() gives for the hosted models (valid while ``in_plan_order``)."""
        return Plan(self.usable, self.skipped, tuple(self.hosted[i] for i in sorted(self.hosted)))


def _gpu_only(req: ModelRequest) -> ModelRequest:
    return replace(req, allow_cpu_offload=False) if req.allow_cpu_offload else req


def _explain(
    name: str, replica: int, replicas: int, req: ModelRequest, candidates: list[_NodeState], policy: PlanPolicy, extra: str = ""
) -> list[str]:
    """One line per node (the roomiest first, at most EXPLAINED_NODES) saying why it does not fit there."""
    which = f" (replica {replica} of {replicas})" if replicas > 1 else ""
    head = f"model {name!r}{which}"
    if not candidates:
        return [f"{head}: no node left for it (replicas run on different nodes)"]
    ranked = sorted(candidates, key=lambda s: -s.room)
    lines = []
    for state in ranked[:EXPLAINED_NODES]:
        _, why = state.try_place(req, policy)
        text = why or "does not fit"
        prefix = f"model {name!r} does not fit: "
        # plan's line names the model first; here the node comes first, then where it is short.
        text = text[len(prefix):] if text.startswith(prefix) else text
        lines.append(f"{head} fits on no node: node {state.node.name}{extra}: {text}")
    if len(ranked) > EXPLAINED_NODES:
        lines.append(f"{head}: {len(ranked) - EXPLAINED_NODES} more node(s) have less room")
    return lines


def _prev_nodes(previous: Mapping[str, Sequence[str]], name: str, names: set[str]) -> list[str]:
    seen: list[str] = []
    for n in previous.get(name, ()):
        if n in names and n not in seen:
            seen.append(n)
    return seen


def plan_cluster(
    models: Sequence[ClusterModel],
    nodes: Sequence[Node],
    policy: PlanPolicy = PlanPolicy(),
    previous: Mapping[str, Sequence[str]] | None = None,
) -> ClusterPlan:
    """Assign every model (and replica) to nodes, then pack each node; see the module docstring."""
    previous = previous or {}
    node_names = [n.name for n in nodes]
    name_set = set(node_names)
    forbidden: set[tuple[int, str]] = set()
    eager = [i for i, m in enumerate(models) if not m.on_demand]
    ranked = sorted(eager, key=lambda i: rank_key(models[i].request, i))

    for _ in range(MAX_REPAIR_ROUNDS):
        states, chosen, problems, lost = _assign_eager(models, nodes, ranked, policy, previous, forbidden)
        node_plans: dict[str, Plan] = {}
        refused: list[tuple[int, str]] = []
        for node in nodes:
            here = [i for i in eager if node.name in chosen[i]]
            state = states[node.name]
            if state.in_plan_order and set(state.hosted) == set(here):
                node_plans[node.name] = state.as_plan()
                continue
            result = plan([models[i].request for i in here], node.devices, policy)
            node_plans[node.name] = result
            placed = {p.name for p in result.placements}
            refused += [(i, node.name) for i in here if models[i].name not in placed]
        if not refused:
            break
        forbidden.update(refused)
    else:
        # Still refused after the last round: report the nodes' own words.
        for node in nodes:
            problems += [f"node {node.name}: {p}" for p in node_plans[node.name].problems]
        for i, node_name in refused:
            chosen[i] = [n for n in chosen[i] if n != node_name]

    on_demand, od_problems = _assign_on_demand(models, nodes, node_plans, policy, previous, chosen, lost)
    problems += od_problems

    assigned = tuple((m.name, tuple(chosen[i])) for i, m in enumerate(models))
    moves = []
    for i, m in enumerate(models):
        before = list(previous.get(m.name, ()))
        if not before:
            continue
        left = tuple(n for n in before if n not in chosen[i])
        if not left:
            continue
        reasons = []
        for n in left:
            if n not in name_set:
                reasons.append(f"node {n} is no longer in the cluster")
            elif n in lost.get(i, {}):
                reasons.append(f"{lost[i][n]} on node {n}")
            elif len(before) > m.replicas:
                reasons.append(f"replicas lowered to {m.replicas}")
            else:
                reasons.append(f"no longer fits on node {n}")
        joined = tuple(n for n in chosen[i] if n not in before)
        moves.append(Move(m.name, left, joined, tuple(reasons)))

    return ClusterPlan(
        nodes=tuple(NodePlan(n.name, node_plans[n.name], on_demand.get(n.name, ())) for n in nodes),
        assigned=assigned,
        problems=tuple(problems),
        moves=tuple(moves),
    )


def _assign_eager(
    models: Sequence[ClusterModel],
    nodes: Sequence[Node],
    ranked: list[int],
    policy: PlanPolicy,
    previous: Mapping[str, Sequence[str]],
    forbidden: set[tuple[int, str]],
) -> tuple[dict[str, _NodeState], dict[int, list[str]], list[str], dict[int, dict[str, str]]]:
    states = {n.name: _NodeState.of(n, policy) for n in nodes}
    names = set(states)
    position = {i: k for k, i in enumerate(ranked)}
    chosen: dict[int, list[str]] = {i: [] for i in range(len(models))}
    lost: dict[int, dict[str, str]] = {}  # model -> node -> why it could not stay
    problems: list[str] = []

    # Stability first: every model that still has a previous node is packed there, each node in
    # plan's order, before any new model may take that node's room.
    kept: dict[int, list[str]] = {}
    for node in nodes:
        state = states[node.name]
        for i in ranked:
            m = models[i]
            prev = _prev_nodes(previous, m.name, names)[: m.replicas]
            if node.name not in prev or (i, node.name) in forbidden:
                continue
            p, _ = state.try_place(_gpu_only(m.request), policy)
            if p is None and m.request.allow_cpu_offload:
                p, _ = state.try_place(m.request, policy)
            if p is None:
                lost.setdefault(i, {})[node.name] = "it no longer fits"
                continue
            state.keep(i, p, position[i], model_weight(models[i].request))
            kept.setdefault(i, []).append(node.name)

    for i in ranked:
        m = models[i]
        prev = _prev_nodes(previous, m.name, names)
        chosen[i] = [n for n in prev if n in kept.get(i, []) and i in states[n].hosted]
        for replica in range(len(chosen[i]) + 1, m.replicas + 1):
            candidates = [
                states[n.name]
                for n in nodes
                if n.name not in chosen[i] and (i, n.name) not in forbidden
            ]
            # spread: the least expected load first, then the most room; else the most room.
            # Stable: node order breaks ties.
            if policy.packing == "spread":
                by_room = sorted(candidates, key=lambda s: (sum(s.load.values()), -s.room))
            else:
                by_room = sorted(candidates, key=lambda s: -s.room)
            home = _first_fit(m.request, by_room, policy)
            if home is None:
                home = _displace(i, m.request, by_room, policy, models, position, lost, chosen)
            if home is None:
                problems += _explain(m.name, replica, m.replicas, m.request, candidates, policy)
                break
            state, p = home
            state.keep(i, p, position[i], model_weight(models[i].request))
            chosen[i].append(state.node.name)
    return states, chosen, problems, lost


def _first_fit(req: ModelRequest, by_room: list[_NodeState], policy: PlanPolicy) -> tuple[_NodeState, Placement] | None:
    """The roomiest node where the model fits; fully on GPU anywhere before CPU offload anywhere."""
    tries = [_gpu_only(req)] + ([req] if req.allow_cpu_offload else [])
    for attempt in tries:
        for state in by_room:
            p, _ = state.try_place(attempt, policy)
            if p is not None:
                return state, p
    return None


def _displace(
    i: int,
    req: ModelRequest,
    by_room: list[_NodeState],
    policy: PlanPolicy,
    models: Sequence[ClusterModel],
    position: dict[int, int],
    lost: dict[int, dict[str, str]],
    chosen: dict[int, list[str]],
) -> tuple[_NodeState, Placement] | None:
    """Make room on a node by moving kept models of strictly lower priority, fewest first.

    Only they can be in the way: every model packed so far that ranks below ``i`` was kept
    from the previous plan. They are processed later and look for a new node then.
    """
    for state in by_room:
        lower = sorted(
            (j for j in state.hosted if position.get(j, -1) > position[i] and models[j].request.priority < req.priority),
            key=lambda j: -position[j],  # the lowest-ranked first
        )
        if not lower:
            continue
        trial = dict(state.budgets)
        for j in lower:
            take(trial, state.hosted[j], -1)
        if state.try_place(req, policy, trial)[0] is None:
            continue
        for j in lower:
            state.drop(j, model_weight(models[j].request))
            lost.setdefault(j, {})[state.node.name] = f"made room for higher-priority model {req.name!r}"
            chosen[j] = [n for n in chosen[j] if n != state.node.name]
            p, _ = state.try_place(req, policy)
            if p is not None:
                return state, p
    return None


def _assign_on_demand(
    models: Sequence[ClusterModel],
    nodes: Sequence[Node],
    node_plans: Mapping[str, Plan],
    policy: PlanPolicy,
    previous: Mapping[str, Sequence[str]],
    chosen: dict[int, list[str]],
    lost: dict[int, dict[str, str]],
) -> tuple[dict[str, tuple[Placement, ...]], list[str]]:
    names = {n.name for n in nodes}
    states = {n.name: _NodeState.of(n, policy) for n in nodes}
    for n in nodes:
        for p in node_plans[n.name].placements:
            take(states[n.name].budgets, p)
    # Bytes of on-demand models already sent to each node: they evict one another there, so a
    # node's room for the next one counts them.
    pressure = {n.name: 0 for n in nodes}
    found: dict[str, list[tuple[int, Placement]]] = {n.name: [] for n in nodes}
    problems: list[str] = []
    lazy = sorted((i for i, m in enumerate(models) if m.on_demand), key=lambda i: rank_key(models[i].request, i))
    for i in lazy:
        m = models[i]
        prev = _prev_nodes(previous, m.name, names)[: m.replicas]
        for n in prev:
            p, _ = states[n].try_place(m.request, policy)
            if p is None:
                lost.setdefault(i, {})[n] = "it no longer fits next to the eager models"
                continue
            chosen[i].append(n)
            found[n].append((i, p))
            pressure[n] += p.vram_bytes
        for replica in range(len(chosen[i]) + 1, m.replicas + 1):
            candidates = [states[n.name] for n in nodes if n.name not in chosen[i]]
            by_room = sorted(candidates, key=lambda s: -(s.room - pressure[s.node.name]))
            home = None
            for state in by_room:
                p, _ = state.try_place(m.request, policy)
                if p is not None:
                    home = (state, p)
                    break
            if home is None:
                problems += _explain(m.name, replica, m.replicas, m.request, candidates, policy, " (next to its eager models)")
                break
            state, p = home
            chosen[i].append(state.node.name)
            found[state.node.name].append((i, p))
            pressure[state.node.name] += p.vram_bytes
    return {n: tuple(p for _, p in sorted(found[n], key=lambda t: t[0])) for n in found}, problems
