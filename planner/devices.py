"""GPU inventories and the PoC's selection rules: device filter, reserve, minimum budget, order
(docs/poc-reference.md#serve-gpu-allocation-options).

An inventory is a list of ``Device`` read from NVML (``gateway.nvml``) or declared in the config
(``[planner] gpus = ["24GiB", "24GiB", "12GiB"]``) for CI, tests and planning for another machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from planner.errors import DeviceError
from planner.units import MIB, parse_gpu_spec

DeviceOrder = Literal["free_desc", "total_desc", "index"]
DEVICE_ORDERS: tuple[str, ...] = ("free_desc", "total_desc", "index")


@dataclass(frozen=True)
class Device:
    """One GPU as the inventory sees it. ``index`` is its NVML (CUDA PCI-order) index."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    uuid: str = ""


@dataclass(frozen=True)
class UsableDevice:
    """A selected GPU and the bytes the planner may use on it (free minus reserve)."""

    device: Device
    budget_bytes: int

    @property
    def index(self) -> int:
        return self.device.index


@dataclass(frozen=True)
class SkippedDevice:
    device: Device
    reason: str


@dataclass(frozen=True)
class DevicePolicy:
    """The PoC's allocation flags (``--reserve-mib --min-budget-mib --device-order --devices``)."""

    reserve_mib: int = 1024
    min_budget_mib: int = 1024
    device_order: DeviceOrder = "free_desc"
    devices: tuple[int, ...] | None = None


def declared_devices(specs: Sequence[str]) -> list[Device]:
    """An inventory from sizes such as ``"24GiB"`` (all free) or ``"24GiB/20GiB"`` (total/free).

    Each size is read by ``planner.units.parse_gpu_spec``, the one parser of declared GPUs (the
    config's ``[planner] gpus`` and the CLI's ``--gpus`` alike): a total of 0 is refused.
    """
    out = []
    for i, spec in enumerate(specs):
        try:
            total, free = parse_gpu_spec(spec)
        except ValueError as exc:
            raise DeviceError(f"gpus[{i}]: {spec!r} ({exc})") from None
        out.append(
            Device(
                index=i,
                name=f"declared GPU {i}",
                total_bytes=total,
                free_bytes=total if free is None else free,
                uuid=f"declared-{i}",
            )
        )
    return out


def parse_gpus_flag(text: str) -> list[Device]:
    """The CLI's ``--gpus 24GiB,24GiB,12GiB``."""
    return declared_devices([s.strip() for s in text.split(",") if s.strip()])


def select_devices(
    devices: Sequence[Device], policy: DevicePolicy
) -> tuple[list[UsableDevice], list[SkippedDevice]]:
    """Filter, budget and order an inventory; return the usable GPUs and why others were skipped."""
    known = {d.index for d in devices}
    if policy.devices is not None:
        unknown = [i for i in policy.devices if i not in known]
        if unknown:
            raise DeviceError(
                f"devices: {unknown} not in the inventory (GPU indices: {sorted(known) or 'none'})"
            )
    usable: list[UsableDevice] = []
    skipped: list[SkippedDevice] = []
    for dev in devices:
        if policy.devices is not None and dev.index not in policy.devices:
            skipped.append(SkippedDevice(dev, "not in [planner] devices"))
            continue
        budget = dev.free_bytes - policy.reserve_mib * MIB
        if budget < policy.min_budget_mib * MIB:
            skipped.append(
                SkippedDevice(
                    dev,
                    f"{max(budget, 0) // MIB:,} MiB usable after the {policy.reserve_mib:,} MiB reserve "
                    f"is under min_budget_mib = {policy.min_budget_mib:,}",
                )
            )
            continue
        usable.append(UsableDevice(dev, budget))
    return order_devices(usable, policy.device_order), skipped


def order_devices(devices: Sequence[UsableDevice], order: str) -> list[UsableDevice]:
    """Sort as the PoC did; ties keep index order so the result is deterministic."""
    if order == "free_desc":
        key = lambda u: (-u.device.free_bytes, u.index)  # noqa: E731
    elif order == "total_desc":
        key = lambda u: (-u.device.total_bytes, u.index)  # noqa: E731
    elif order == "index":
        key = lambda u: u.index  # noqa: E731
    else:
        raise DeviceError(f"device_order: {order!r} (must be one of: {', '.join(DEVICE_ORDERS)})")
    return sorted(devices, key=key)
