"""Cost meters, checked against hand computations."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from exmodel.evaluation import Stopwatch, count_macs, state_bytes
from exmodel.evaluation import costs


def test_stopwatch_accumulates(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([1.0, 3.5, 10.0, 10.25])
    monkeypatch.setattr(costs.time, "perf_counter", lambda: next(ticks))
    sw = Stopwatch()
    with sw:
        pass
    with sw:
        pass
    assert sw.seconds == pytest.approx(2.75)  # (3.5 - 1.0) + (10.25 - 10.0)


def test_stopwatch_is_not_reentrant() -> None:
    sw = Stopwatch()
    with sw:
        with pytest.raises(RuntimeError, match="already running"):
            sw.__enter__()
    assert sw.seconds >= 0.0
    sw.reset()
    assert sw.seconds == 0.0


def test_count_macs_linear() -> None:
    assert count_macs(nn.Linear(784, 10), torch.zeros(1, 784)) == 784 * 10  # 7,840
    assert count_macs(nn.Linear(784, 10), torch.zeros(4, 784)) == 4 * 784 * 10


def test_count_macs_conv() -> None:
    # out_c * out_h * out_w * in_c * k * k
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 5, 5)) == 8 * 5 * 5 * 3 * 3 * 3
    # stride 2, no padding on 7x7 -> 3x3 output
    assert count_macs(nn.Conv2d(3, 8, 3, stride=2), torch.zeros(1, 3, 7, 7)) == 8 * 3 * 3 * 3 * 3 * 3


def test_count_macs_leaves_batchnorm_and_mode_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    before = model[1].running_mean.clone()
    assert count_macs(model, torch.randn(5, 4)) == 5 * 4 * 3
    assert torch.equal(model[1].running_mean, before)
    assert model.training and model[1].training


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3, bias=False)
        self.b = nn.Linear(3, 5, bias=False)

    def forward(self, x: torch.Tensor, deep: bool = False) -> torch.Tensor:
        h = self.a(x)
        return self.b(h) if deep else h


def test_count_macs_forwards_kwargs() -> None:
    assert count_macs(_Gated(), torch.zeros(1, 2)) == 6
    assert count_macs(_Gated(), torch.zeros(1, 2), deep=True) == 6 + 15


@dataclass
class _State:
    model: nn.Module
    buffer: torch.Tensor
    extra: list


def test_state_bytes_modules_and_dedup() -> None:
    assert state_bytes(nn.Linear(3, 2)) == 8 * 4  # 6 weights + 2 biases, float32
    # BatchNorm1d(4): weight, bias, running_mean, running_var (4 float32 each) + int64 counter.
    assert state_bytes(nn.BatchNorm1d(4)) == 4 * 4 * 4 + 8
    t = torch.zeros(10)  # 40 bytes
    assert state_bytes([t, t]) == 40
    assert state_bytes((t, t[:3], {"k": t.view(2, 5)})) == 40  # views share the storage
    assert state_bytes({"a": t, "b": torch.zeros(2, dtype=torch.float64)}) == 40 + 16
    lin = nn.Linear(3, 2)
    s = _State(model=lin, buffer=torch.zeros(5, dtype=torch.uint8), extra=[lin.weight])
    assert state_bytes(s) == 32 + 5


def test_state_bytes_numpy_cycles_and_unknown_objects() -> None:
    a = np.zeros(5)  # float64: 40 bytes
    cyclic: list = [a, a[1:]]
    cyclic.append(cyclic)
    assert state_bytes(cyclic) == 40
    assert state_bytes(object()) == 0
    assert state_bytes("text") == 0


def test_state_bytes_optimizer_state() -> None:
    lin = nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    assert state_bytes(opt) == 0  # no state before the first step
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert state_bytes(opt) == 32  # one momentum buffer per parameter: 6 + 2 floats


def _in_a_fresh_process(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) in a new Python: a test worker that has already run
    hundreds of tests may hand a 64 MiB block memory it holds resident, and RSS would not grow (both
    tests below failed that way in a full parallel run)."""
    import json
    import subprocess
    import sys
    import textwrap

    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_sees_allocation() -> None:
    d = _in_a_fresh_process("""
        import json
        import numpy as np
        from exmodel.evaluation.costs import PeakMemory
        with PeakMemory(device="cpu") as pm:
            block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched so it is resident
        del block
        print(json.dumps({**pm.as_dict(), "rss_peak_before_bytes": pm.rss_peak_before_bytes}))
    """)
    assert d["rss_before_bytes"] is not None and d["rss_before_bytes"] > 0
    assert d["rss_peak_after_bytes"] >= d["rss_peak_before_bytes"]
    # RSS during the block reached at least "before + most of the array".
    assert d["rss_peak_after_bytes"] >= d["rss_before_bytes"] + 60 * 2**20
    assert d["cuda_peak_bytes"] is None and d["cuda_before_bytes"] is None


def test_peak_memory_sampled_increase_sees_a_temporary_allocation():
    d = _in_a_fresh_process("""
        import json, time
        import torch
        from exmodel.evaluation.costs import PeakMemory
        with PeakMemory(sample_interval_s=0.002) as pm:
            block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched, then freed before exit
            # Hold it until the sampling thread has run (on a busy machine it may wait for a core), at most 5 s.
            deadline = time.monotonic() + 5.0
            while (pm.peak_increase_bytes or 0) < 48 * 1024 * 1024 and time.monotonic() < deadline:
                time.sleep(0.01)
            del block
        print(json.dumps({"increase": pm.peak_increase_bytes, "sampled": pm.rss_sampled_peak_bytes,
                          "before": pm.rss_before_bytes}))
    """)
    assert d["increase"] is not None and d["increase"] >= 48 * 1024 * 1024
    assert d["sampled"] >= d["before"] + d["increase"] - 1
