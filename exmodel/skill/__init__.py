"""SKILL (Shared Knowledge Lifelong Learning, Ge et al. 2023): a population of LLL agents learning
tasks in parallel and sharing each finished task's compact bundle with every other agent.

``config`` — what a run is; ``agent`` — one agent (learn a task, receive a peer's bundle, answer
test images without a task label); ``backends`` — where agents run (one process, or Ray actors);
``protocol`` — assignment, broadcasting, faults and the run's records; ``costs`` — SKILL Table 2.
"""
