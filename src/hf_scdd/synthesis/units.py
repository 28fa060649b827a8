"""Units of recovery work: who optimises which images, seeded so that results never depend on the layout.

A unit is (IPC index, class chunk): one optimisation batch holding one image of each class of the chunk. Its
seed depends on ``(seed, ipc, chunk)`` only, and its init and augmentation draws all come from its own
generator, so a unit's images do not depend on process count, order or grouping. Groups (units stacked in
one forward pass) are a fixed partition of the unit list, whole groups are assigned to processes, and the
output shards are contiguous runs of units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

ROWS_PER_SHARD = 10_000
"""At most this many images per parquet shard of a distilled set."""


@dataclass(frozen=True)
class Unit:
    """One optimisation batch: IPC index ``ipc``, class chunk ``chunk`` (one image per class in ``classes``)."""

    ipc: int
    chunk: int
    classes: tuple[int, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"ipc{self.ipc:05d}-chunk{self.chunk:05d}"


def unit_seed(seed: int, ipc: int, chunk: int) -> int:
    """A well-mixed 63-bit seed that depends on ``(seed, ipc, chunk)`` only."""
    state = np.random.SeedSequence([seed, ipc, chunk]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def plan_units(num_classes: int, ipc: int, classes_per_batch: int, seed: int) -> list[Unit]:
    """All units in output order: IPC index major, then class chunks ``[0:k], [k:2k], ...`` (the last may be smaller)."""
    per_batch = classes_per_batch or num_classes
    if per_batch > num_classes:
        raise ConfigError(
            f"recover's --classes_per_batch {per_batch} exceeds the {num_classes} classes of the dataset: a "
            "batch holds one image of each of distinct classes. Use at most the class count (0 = all classes)."
        )
    chunks = [tuple(range(start, min(start + per_batch, num_classes))) for start in range(0, num_classes, per_batch)]
    return [Unit(i, c, classes, unit_seed(seed, i, c)) for i in range(ipc) for c, classes in enumerate(chunks)]


def make_groups(units: Sequence[Unit], group_size: int) -> list[list[Unit]]:
    """The fixed partition of ``units`` into groups: consecutive units with the same batch size,
    ``group_size`` at a time (a smaller last class chunk forms its own groups)."""
    groups: list[list[Unit]] = []
    by_size: dict[int, list[Unit]] = {}
    for unit in units:
        by_size.setdefault(len(unit.classes), []).append(unit)
    for same in by_size.values():
        groups += [list(same[i : i + group_size]) for i in range(0, len(same), group_size)]
    return groups


def shard_plan(units: Sequence[Unit], num_processes: int) -> list[list[Unit]]:
    """Contiguous shards of the unit list: at least one per process, at most ``ROWS_PER_SHARD`` images each."""
    images = sum(len(u.classes) for u in units)
    count = max(min(num_processes, len(units)), math.ceil(images / ROWS_PER_SHARD))
    return [[units[i] for i in part] for part in np.array_split(np.arange(len(units)), count)]
