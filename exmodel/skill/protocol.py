"""The SKILL protocol: N agents learn their tasks in parallel and broadcast every finished task.

Each agent learns its tasks in sequence (round-robin by default, or the config's ``assignment``).
When an agent finishes a task, the driver hands its bundle (bytes) to every other live agent — the
fully connected sharing the paper assumes — and starts the agent's next task; each receiver banks it
between two of its own tasks. Every bundle is also saved to ``RUN/bundles/``: a rerun with the same
``--out`` hands the saved bundles out instead of learning those tasks again.

Faults: when an agent dies (``AgentLost``), what it already shared stays shared; its unfinished task
and its queue go to the live agent with the least work left (``on_agent_loss: reassign``) or are
recorded as lost (``lost``). A refused bundle is one log line and the receiver keeps running.

At the end every live agent answers every task's test images without a task label; the run records
each agent's accuracy, whether all agents answer identically (a digest of every prediction), the
timeline of learning and sharing, and the costs of SKILL Table 2 (:mod:`exmodel.skill.costs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from exmodel.config import claim_run_folder
from exmodel.fileio import atomic_write_bytes, atomic_write_json
from exmodel.skill.backends import AgentLost, RayBackend, SerialBackend
from exmodel.skill.config import SkillConfig


def bundle_file(index: int, name: str) -> str:
    """Where task ``index`` (``name``)'s shared bundle is kept in ``RUN/bundles/``."""
    return f"{index + 1:02d}_{name}.safetensors"


def make_backend(cfg: SkillConfig, out: Path, data_dir, cache_dir, kill: dict[int, int] | None = None):
    files = {k: Path(v).resolve() for k, v in (("weights", cfg.backbone.weights), ("bundle", cfg.backbone.bundle)) if v}
    shipped = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update=files)})  # agents may run elsewhere
    args = lambda i: (i, shipped.model_dump(mode="json"), str((out / "agents").resolve()),  # noqa: E731
                      None if data_dir is None else str(Path(data_dir).resolve()),
                      None if cache_dir is None else str(Path(cache_dir).resolve()), (kill or {}).get(i))
    if cfg.backend == "ray":
        return RayBackend(cfg.agents, args, cpus_per_agent=cfg.cpus_per_agent, threads_per_agent=cfg.threads_per_agent,
                          address=cfg.address)
    from exmodel.skill.agent import SkillAgent

    return SerialBackend(cfg.agents, lambda i: SkillAgent(*args(i)))


def run_skill(cfg: SkillConfig, out: str | Path, data_dir=None, cache_dir=None, *, log: Callable[[str], None] = print,
              on_event: Callable[[dict], None] | None = None, kill: dict[int, int] | None = None) -> dict:
    """Run the population; ``kill`` (tests, chaos drills): agent -> tasks it finishes before it is
    killed in the middle of its next one."""
    from exmodel.data.skill_mini import build_skill_mini

    bench = build_skill_mini(data_dir, cfg.benchmark.size, cfg.benchmark.seed)  # bad data: nothing written yet
    if cfg.corrective_thresholds:
        from exmodel.names.minilm import model_dir

        model_dir()  # the text model is there (else one line, nothing written)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_folder(out, cfg)
    names = [t.name for t in bench]
    sizes = [len(t.splits.train) for t in bench]
    queues = cfg.tasks_of(len(bench), sizes)
    files = {bundle_file(i, n): i for i, n in enumerate(names)}
    saved = {files[p.name]: p.read_bytes() for p in (out / "bundles").glob("*.safetensors") if p.name in files}
    queues = [[t for t in q if t not in saved] for q in queues]
    clock = time.perf_counter()
    kill = dict(kill or {})
    backend = make_backend(cfg, out, data_dir, cache_dir, kill if cfg.backend == "ray" else None)
    for a in range(cfg.agents):  # every agent built (backbone, images): learning is timed from here
        backend.call(a, "status")
    startup, clock = time.perf_counter() - clock, time.perf_counter()
    if isinstance(backend, SerialBackend):
        backend.fail.update(kill)
    events, refusals, lost, receipts = [], [], [], []
    alive = set(range(cfg.agents))
    finished = {a: 0 for a in alive}
    pending: dict = {}

    def start(a: int) -> None:
        if queues[a]:
            task = queues[a].pop(0)
            pending[backend.learn(a, task)] = (a, task, time.perf_counter() - clock)
            if on_event:
                on_event({"kind": "started", "agent": a, "task": task, "name": names[task]})
            if isinstance(backend, RayBackend) and kill.get(a) == finished[a]:
                holding = out / "agents" / f"agent-{a}" / "holding"
                deadline = time.perf_counter() + 600
                while not holding.exists() and time.perf_counter() < deadline:  # in the middle of the task
                    time.sleep(0.05)
                backend.kill(a)

    def broadcast(data: bytes, sender, skip: int | None = None) -> None:
        for b in sorted(alive - {skip}):
            receipts.append((b, backend.receive(b, data, sender)))

    try:
        for index, data in sorted(saved.items()):
            broadcast(data, "archive")
        for a in sorted(alive):
            start(a)
        while pending:
            future = backend.wait_any(list(pending))
            a, task, began = pending.pop(future)
            try:
                r = backend.result(future)
            except AgentLost as exc:
                alive.discard(a)
                orphans, queues[a] = [task] + queues[a], []
                log(f"agent {a} lost while learning {names[task]} ({exc})")
                event = {"kind": "lost", "agent": a, "task": task, "name": names[task], "at": time.perf_counter() - clock}
                events.append(event)
                if cfg.on_agent_loss == "reassign" and alive:
                    for t in orphans:
                        b = min(alive, key=lambda x: (len(queues[x]) + sum(1 for v in pending.values() if v[0] == x), x))
                        queues[b].append(t)
                        log(f"task {names[t]} reassigned to agent {b}")
                        if not any(v[0] == b for v in pending.values()):
                            start(b)
                else:
                    lost += orphans
                if on_event:
                    on_event(event)
                continue
            finished[a] += 1
            atomic_write_bytes(out / "bundles" / bundle_file(task, names[task]), r["bundle"])
            event = {"kind": "learned", "agent": a, "task": task, "name": names[task], "start": began,
                     "end": time.perf_counter() - clock, "seconds": r["seconds"], "bytes": r["bytes"], "macs": r["macs"]}
            events.append(event)
            if on_event:
                on_event(event)
            broadcast(r["bundle"], a, skip=a)
            start(a)
        for b, receipt in receipts:
            if b not in alive:
                continue
            try:
                reason = backend.result(receipt)
            except AgentLost:
                continue
            if reason:
                refusals.append(reason)
                log(reason)
        learning_seconds = time.perf_counter() - clock
        evaluations = {a: backend.call(a, "evaluate") for a in sorted(alive)}
        statuses = {a: backend.call(a, "status") for a in sorted(alive)}
    finally:
        backend.shutdown()
    from exmodel.skill.costs import table2

    results = summarize(cfg, names, events, evaluations, statuses, refusals, lost, learning_seconds,
                        time.perf_counter() - clock, backend.name, cfg.tasks_of(len(bench), sizes))
    results["seconds"]["startup"] = startup
    results["costs"] = table2(results, cfg.alpha)
    atomic_write_json(out / "results.json", results)
    return results


def summarize(cfg: SkillConfig, names, events, evaluations, statuses, refusals, lost, learning_seconds,
              total_seconds, backend: str, assignment: list[list[int]]) -> dict:
    digests = {m: {e["mappers"][m]["digest"] for e in evaluations.values()} for m in cfg.mappers}
    first = next(iter(evaluations.values())) if evaluations else None
    return {
        "name": cfg.name, "config": cfg.model_dump(mode="json"), "backend": backend, "agents": cfg.agents,
        "tasks": names, "assignment": assignment,
        "events": events, "refusals": refusals, "lost_tasks": [names[t] for t in lost],
        "identical": {m: len(d) == 1 for m, d in digests.items()},
        "accuracy": {m: {k: first["mappers"][m][k] for k in ("acc", "mapper_acc", "average", "corrective")
                         if k in first["mappers"][m]} for m in cfg.mappers} if first else {},
        "per_agent": {str(a): {"bank": e["bank"], "average": {m: e["mappers"][m]["average"] for m in cfg.mappers},
                               **{k: v for k, v in statuses[a].items() if k not in ("agent", "bank", "learning")}}
                      for a, e in evaluations.items()},
        "seconds": {"learning_and_sharing": learning_seconds, "total": total_seconds},
    }
