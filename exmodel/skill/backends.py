"""Where SKILL agents run: all in this process (``serial``) or one Ray actor each (``ray``).

Both give the protocol the same four moves: start a task on an agent (a future), wait for any
started task to finish, deliver a bundle to an agent, call an agent and wait. A dead agent's futures
raise :class:`AgentLost`. On Ray, each agent is an actor holding ``cpus_per_agent`` CPUs (fractions
allowed) with ``threads_per_agent`` torch threads; calls to one actor run in the order they were made,
so an agent banks what it received between two of its own tasks. ``address`` joins an existing
cluster (every node needs exmodel installed and the data and cache folders at the same paths);
without it a local Ray is started for the run and shut down after.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from exmodel.errors import ExmodelError


class AgentLost(ExmodelError):
    """The agent died (killed, crashed, its node gone); what it had shared stays shared."""


class _Done:
    """A finished call of the serial backend (a future that is already there)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        try:
            self.value, self.error = fn(), None
        except AgentLost as exc:
            self.value, self.error = None, exc


class SerialBackend:
    """Every agent in this process, one call at a time: the reference the Ray backend must match."""

    name = "serial"

    def __init__(self, n: int, make_agent: Callable[[int], Any]) -> None:
        self.agents = [make_agent(i) for i in range(n)]
        self.dead: set[int] = set()
        self.fail: dict[int, int] = {}  # agent -> how many more tasks it finishes before it "dies" (tests)

    def _agent(self, a: int):
        if a in self.dead:
            raise AgentLost(f"agent {a} is gone")
        return self.agents[a]

    def learn(self, a: int, task: int) -> _Done:
        def run():
            if self.fail.get(a) == 0:
                self.dead.add(a)
                raise AgentLost(f"agent {a} died while learning task {task}")
            if a in self.fail:
                self.fail[a] -= 1
            return self._agent(a).learn(task)
        return _Done(run)

    def wait_any(self, futures: list) -> Any:
        return futures[0]

    def result(self, future: _Done) -> Any:
        if future.error is not None:
            raise future.error
        return future.value

    def receive(self, a: int, data: bytes, sender) -> _Done:
        return _Done(lambda: self._agent(a).receive(data, sender))

    def call(self, a: int, method: str, *args) -> Any:
        return getattr(self._agent(a), method)(*args)

    def kill(self, a: int) -> None:
        self.dead.add(a)

    def shutdown(self) -> None:
        pass


class RayBackend:
    name = "ray"

    def __init__(self, n: int, agent_args: Callable[[int], tuple], *, cpus_per_agent: float, threads_per_agent: int,
                 address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ExmodelError("the ray backend needs Ray: pip install 'exmodel[distributed]'") from None
        from exmodel.skill.agent import SkillAgent

        self.ray = ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads_per_agent), "OMP_WAIT_POLICY": "PASSIVE",
                            "RAY_AUTH_MODE": "disabled"}}
        self.started_here = not ray.is_initialized()
        if self.started_here:
            # A local Ray runs its workers at nice 15 by default: with every core busy they then lose ~25 %
            # to the driver and Ray's own processes (measured: two actors extracting features at 104 and
            # 105 images/s each, 145 and 134 at nice 0). On a cluster we join, its settings stand.
            kwargs = {"address": address} if address else {"num_cpus": max(1, math.ceil(n * cpus_per_agent)),
                                                          "_system_config": {"worker_niceness": 0}}
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=env, **kwargs)
        actor = ray.remote(num_cpus=cpus_per_agent, max_restarts=0, max_task_retries=0)(SkillAgent)
        self.agents = [actor.remote(*agent_args(i)) for i in range(n)]
        self.dead: set[int] = set()

    def _result(self, ref) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        try:
            return self.ray.get(ref)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            raise AgentLost(f"an agent died: {type(exc).__name__}") from None

    def learn(self, a: int, task: int):
        return self.agents[a].learn.remote(task)

    def wait_any(self, futures: list) -> Any:
        ready, _ = self.ray.wait(futures, num_returns=1)
        return ready[0]

    def result(self, future) -> Any:
        return self._result(future)

    def receive(self, a: int, data: bytes, sender):
        return self.agents[a].receive.remote(data, sender)

    def call(self, a: int, method: str, *args) -> Any:
        if a in self.dead:
            raise AgentLost(f"agent {a} is gone")
        return self._result(getattr(self.agents[a], method).remote(*args))

    def kill(self, a: int) -> None:
        self.dead.add(a)
        self.ray.kill(self.agents[a], no_restart=True)

    def shutdown(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
