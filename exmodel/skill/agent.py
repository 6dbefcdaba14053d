"""One SKILL agent: learns its own tasks, banks what its peers share, answers without a task label.

An agent holds the frozen backbone (every agent has the same one from manufacture), SKILL-mini's
images of the tasks it may be given, and a bank of task bundles, its own and received ones. It is a
plain Python object: the serial backend calls it in the driver's process, the Ray backend makes it an
actor (:mod:`exmodel.skill.backends`); the methods take and return bytes, numbers and strings only.

What a peer sends is data, never code: the bundle's bytes are written to the agent's inbox and read
back by :func:`exmodel.agents.knowledge.load_task`, which checks every tensor and the card before
anything is used; a bundle that is too large, malformed, learned on another backbone, missing the
anchors a mapper needs, or that contradicts the bank (the same task with other classes) is refused
with one line, and the agent keeps running.

The bank is kept in the benchmark's task order whatever order bundles arrive in, so that agents
holding the same tasks answer identically (MAHA's tied covariance is summed in one order).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from exmodel.agents.features import Backbone, FeatureCache, bundle_backbone, lite0_backbone
from exmodel.agents.knowledge import TaskBundleError, TaskKnowledge, load_task
from exmodel.agents.lll import HeadParams, LLLAgent, anchors_for, learn_task, shared_features_of
from exmodel.fileio import atomic_write_bytes
from exmodel.skill.config import SkillConfig

SHARED = {"gmmc": ("head", "gmmc"), "maha": ("head", "maha"), "ours": ("head", "maha")}


def make_backbone(cfg: SkillConfig) -> Backbone:
    if cfg.backbone.name == "bundle":
        return bundle_backbone(cfg.backbone.bundle)
    return lite0_backbone(cfg.backbone.side, cfg.backbone.weights)


def shared_parts(mappers: list[str]) -> tuple[str, ...]:
    """What a bundle carries for these mappers: the head and every anchor one of them needs."""
    return tuple(dict.fromkeys(p for m in mappers for p in SHARED[m]))


def covariance_macs(samples: int, d: int) -> int:
    """MACs of MAHA's tied covariance over ``samples`` shared feature rows (a thin SVD, ~M d min(M, d))."""
    return samples * d * min(samples, d)


class SkillAgent:
    def __init__(self, agent_id: int, cfg: dict, workdir: str, data_dir: str | None = None,
                 cache_dir: str | None = None, hold_after: int | None = None) -> None:
        """``hold_after`` (chaos drills): after that many tasks, the agent stops in the middle of its next
        one, announces it in ``workdir/agent-<id>/holding`` and waits there to be killed."""
        from exmodel.data.skill_mini import build_skill_mini

        self.cfg = SkillConfig.model_validate(cfg)
        torch.set_num_threads(self.cfg.threads_per_agent)
        self.id = agent_id
        self.inbox = Path(workdir) / f"agent-{agent_id}" / "inbox"
        self.backbone = make_backbone(self.cfg)
        self.cache = FeatureCache(Path(cache_dir) / "features" if cache_dir else None)
        self.bench = build_skill_mini(data_dir, self.cfg.benchmark.size, self.cfg.benchmark.seed)
        self.order = {t.name: i for i, t in enumerate(self.bench)}
        self.bank: dict[str, tuple[TaskKnowledge, torch.Tensor | None]] = {}  # task -> (bundle, MAHA features)
        self.refusals: list[str] = []
        self.costs = {"teacher_macs": 0, "student_macs": 0, "bytes_received": 0, "bundles_received": 0}
        self._names = None  # the text model, loaded when an evaluation scores by class names
        self._per_image: int | None = None
        self._agents: dict[str, LLLAgent] = {}
        self.current: str | None = None  # the task being learned (the live view shows it)
        self.hold_after, self.learned = hold_after, 0

    # ------------------------------------------------------------------------------------ learning
    def per_image_macs(self) -> int:
        if self._per_image is None:
            from exmodel.agents.sequential import counted

            with torch.no_grad():
                image = self.backbone.prepare(self.bench[0].splits.train.images[:1])
                _, self._per_image = counted(self.backbone.model.forward_features, image)
        return self._per_image

    def learn(self, index: int) -> dict:
        """Learn task ``index`` of the benchmark, bank it, and return its bundle for the peers."""
        t0 = time.perf_counter()
        task = self.bench[index]
        self.current = task.name
        train = task.splits.train
        feats = self.cache.features(self.backbone, train)
        if self.hold_after == self.learned:
            atomic_write_bytes(self.inbox.parent / "holding", task.name.encode())
            time.sleep(3600)
        anchors = anchors_for(self.cfg.mappers)
        params = HeadParams(self.cfg.head.weight_decay, self.cfg.head.iterations, self.cfg.gmmc_k, self.cfg.maha_m)
        k = learn_task(task.name, train, feats, self.backbone, params, self.cfg.seed, anchors, self.cfg.maha_share)
        macs = self.per_image_macs() * len(train) + k.info["macs"]["head"] + (k.gmmc.fit_macs if k.gmmc else 0)
        k.info.update({"task_index": index, "learned_by": self.id, "teacher_macs": macs})
        self._add(k, shared_features_of(k, self.backbone))
        self.costs["teacher_macs"] += macs
        data = k.to_bytes(shared_parts(self.cfg.mappers))
        self.current, self.learned = None, self.learned + 1
        return {"task": index, "name": task.name, "agent": self.id, "bundle": data, "bytes": len(data),
                "macs": macs, "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------ receiving
    def receive(self, data: bytes, sender: int | str) -> str | None:
        """Bank a peer's bundle. ``None`` when banked, else the one-line reason it was refused."""
        try:
            k, shared = self._check(data, sender)
        except TaskBundleError as exc:
            reason = f"agent {self.id} refused a bundle from {sender}: {exc}"
            self.refusals.append(reason)
            return reason
        if k is None:  # already banked, identical classes: nothing to do
            return None
        self._add(k, shared)
        return None

    def _check(self, data: bytes, sender) -> tuple[TaskKnowledge | None, torch.Tensor | None]:
        if not isinstance(data, (bytes, bytearray)):
            raise TaskBundleError(f"not bytes but {type(data).__name__}")
        if len(data) > self.cfg.max_bundle_bytes:
            raise TaskBundleError(f"{len(data):,} bytes, more than max_bundle_bytes ({self.cfg.max_bundle_bytes:,})")
        digest = hashlib.sha256(data).hexdigest()[:16]
        path = atomic_write_bytes(self.inbox / f"from-{sender}-{digest}.safetensors", bytes(data))
        k = load_task(path, self.backbone.cache_id)
        self.costs["bytes_received"] += len(data)
        if k.task in self.bank:
            held = self.bank[k.task][0]
            if held.class_names != k.class_names:
                raise TaskBundleError(f"task {k.task} is banked with classes {list(held.class_names)[:4]}…, "
                                      f"the bundle says {list(k.class_names)[:4]}…")
            return None, None
        needs = {"maha": k.maha_means is not None, "gmmc": k.gmmc is not None}
        for m in self.cfg.mappers:
            need = "gmmc" if m == "gmmc" else "maha"
            if not needs[need]:
                raise TaskBundleError(f"task {k.task}: shares no {need.upper()} anchors, which mapper {m} needs")
        shared = shared_features_of(k, self.backbone)
        if shared is not None:
            held = sum(len(s) for _, s in self.bank.values() if s is not None) + len(shared)
            images = len(shared) if k.maha_images is not None else 0  # received as features: no backbone pass
            self.costs["student_macs"] += self.per_image_macs() * images + covariance_macs(held, k.num_features)
        self.costs["bundles_received"] += 1
        return k, shared

    def _add(self, k: TaskKnowledge, shared: torch.Tensor | None) -> None:
        self.bank[k.task] = (k, shared)
        self._agents.clear()

    # ------------------------------------------------------------------------------------ answering
    def tasks(self) -> list[str]:
        """The banked tasks, in the benchmark's order (tasks from outside it last, by name)."""
        return sorted(self.bank, key=lambda name: (self.order.get(name, len(self.order)), name))

    def lll(self, mapper: str) -> LLLAgent:
        if mapper not in self._agents:
            agent = LLLAgent(self.backbone, mapper, self.cfg.confidence if mapper == "ours" else 0.0)
            for name in self.tasks():
                agent.receive(*self.bank[name])
            self._agents[mapper] = agent
        return self._agents[mapper]

    def evaluate(self) -> dict:
        """Accuracy without a task label on every task's test images, per mapper, and a digest of every
        prediction (equal digests: the agents answer identically)."""
        tasks = self.tasks()
        out = {"agent": self.id, "bank": tasks, "mappers": {}}
        tests = [(t.name, t.splits.test, self.cache.features(self.backbone, t.splits.test)) for t in self.bench]
        for m in self.cfg.mappers:
            agent = self.lll(m)
            acc, mapped, h = [], [], hashlib.sha256()
            for name, test, f in tests:
                task, cls = agent.predict(f)
                truth = tasks.index(name) if name in tasks else -1
                right_task = task == truth
                acc.append(float((right_task & (cls == test.labels)).float().mean()))
                mapped.append(float(right_task.float().mean()))
                h.update(torch.stack([task, cls]).numpy().tobytes())
            out["mappers"][m] = {"acc": acc, "mapper_acc": mapped, "average": sum(acc) / len(acc),
                                 "digest": h.hexdigest()}
            if self.cfg.corrective_thresholds:
                out["mappers"][m]["corrective"] = self._corrective(agent, tests)
        return out

    def _corrective(self, agent: LLLAgent, tests: list) -> dict[str, float]:
        """SKILL Sec. 7.1: the average accuracy when an answer also counts as right if its class name is
        at least each threshold similar to the true one (a task this agent does not hold: never right)."""
        from exmodel.names.minilm import TextEncoder
        from exmodel.names.reuse import corrective_per_task, name_space

        if self._names is None:
            self._names = TextEncoder.load()
        bank = [k.task for k in agent.bank]
        offsets, similarity = name_space([k.class_names for k in agent.bank], self._names.encode)
        task, cls = agent.predict(torch.cat([f for _, _, f in tests]))
        pred = offsets[task] + cls
        true = torch.cat([offsets[bank.index(name)] + test.labels if name in bank else torch.full_like(test.labels, -1)
                          for name, test, _ in tests])
        sizes = [len(test.labels) for _, test, _ in tests]
        out = {}
        for t in self.cfg.corrective_thresholds:
            acc = corrective_per_task(pred, true, sizes, similarity, t)
            out[str(t)] = sum(acc) / len(acc)
        return out

    def status(self) -> dict:
        return {"agent": self.id, "learning": self.current, "bank": self.tasks(), "refused": len(self.refusals),
                **self.costs}
