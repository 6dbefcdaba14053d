"""Command-line conventions: ``--version``, ``python -m exmodel``, usage errors, global flags anywhere, progress in logs.

Usage errors print two lines on stderr, the usage of the command concerned and ``error: ...``, and exit
with status 2, with no traceback and no rich panels, also where the ``click`` package (which only the
Ray extra pulls in) is not installed. Most cases call :func:`exmodel.cli.main` in-process; the
subprocess tests run the real ``python -m exmodel``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli, subprocess_env

import exmodel
import exmodel.progress
import exmodel.runner
from exmodel.cli import _split_global_flags
from exmodel.progress import Progress

# (arguments, usage line, error line); the usage line is that of the command the error concerns
USAGE_CASES = [
    pytest.param([], "Usage: exmodel [OPTIONS] COMMAND [ARGS]...",
                 "error: missing command (try 'exmodel --help')", id="no-arguments"),
    pytest.param(["--bogus"], "Usage: exmodel [OPTIONS] COMMAND [ARGS]...",
                 "error: no such option: --bogus (try 'exmodel --help')", id="unknown-option"),
    pytest.param(["inspect", "--bogus", "x"], "Usage: exmodel inspect [OPTIONS] ",
                 "error: no such option: --bogus", id="unknown-sub-command-option"),
    pytest.param(["inspect"], "Usage: exmodel inspect [OPTIONS] ",
                 "error: missing argument 'bundle' (try 'exmodel inspect --help')", id="missing-argument"),
    pytest.param(["consolidate", "a"], "Usage: exmodel consolidate [OPTIONS] ",
                 "error: missing option '-o' / '--out' (try 'exmodel consolidate --help')", id="missing-option"),
    pytest.param(["nosuch"], "Usage: exmodel [OPTIONS] COMMAND [ARGS]...",
                 "error: no such command 'nosuch' (try 'exmodel --help')", id="unknown-command"),
]


def _python_m(*args: str, tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``python -m exmodel ARGS``, or with ``prelude`` run first, the same entry point via ``runpy``."""
    if prelude:
        command = [sys.executable, "-c", f"{prelude}\nimport runpy; runpy.run_module('exmodel', run_name='__main__')",
                   *args]
    else:
        command = [sys.executable, "-m", "exmodel", *args]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(tmp_path / "cache"),
                          cwd=tmp_path, timeout=120)


def _assert_usage_error(code: int, err: str, usage: str, error: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "╭" not in err and "│" not in err  # no traceback, no rich panel
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(usage), lines
    assert lines[1].startswith(error), lines


# ----------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(("args", "usage", "error"), USAGE_CASES)
def test_usage_errors_in_process(capsys: pytest.CaptureFixture[str], args: list[str], usage: str, error: str) -> None:
    result = cli(capsys, *args)
    _assert_usage_error(result.code, result.err, usage, error)
    assert result.out == ""


@pytest.mark.parametrize(("args", "usage", "error"),
                         [p for p in USAGE_CASES if p.id in ("no-arguments", "unknown-option", "missing-argument",
                                                             "unknown-command")])
def test_usage_errors_in_a_real_process(tmp_path: Path, args: list[str], usage: str, error: str) -> None:
    proc = _python_m(*args, tmp_path=tmp_path)
    _assert_usage_error(proc.returncode, proc.stderr, usage, error)
    assert proc.stdout == ""


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], ["run", "--help"], ["-q", "inspect", "--help"]):
        result = cli(capsys, *args)
        assert result.code == 0, result.err
        assert "Usage: exmodel" in result.out and result.err == ""


def test_every_command_has_a_line_in_the_listing(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    listing = cli(capsys, "--help").out
    rows = re.findall(r"^│ (\S+) +(.*?) *│$", listing.split("Commands")[1], flags=re.M)
    described = {name: text for name, text in rows if name.isidentifier() or "-" in name}
    assert "consolidate" in described and all(text for text in described.values()), described


# ----------------------------------------------------------------------------------------- version, python -m
def test_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = cli(capsys, "--version")
    assert (result.code, result.out, result.err) == (0, f"exmodel {exmodel.__version__}\n", "")
    proc = _python_m("--version", tmp_path=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"exmodel {exmodel.__version__}\n", "")


def test_python_m_propagates_the_exit_status(tmp_path: Path) -> None:
    proc = _python_m("report", str(tmp_path), tmp_path=tmp_path)  # an ExmodelError: one line, status 2
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'results.json'}: not found")
    proc = _python_m("--help", tmp_path=tmp_path)
    assert proc.returncode == 0 and "Usage: exmodel [OPTIONS] COMMAND" in proc.stdout


BLOCK_CLICK_AND_RAY = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('click', 'ray'):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Refuse())
for _name in [m for m in sys.modules if m.split('.')[0] in ('click', 'ray')]:
    del sys.modules[_name]
"""


def test_errors_without_click_or_ray_installed(tmp_path: Path) -> None:
    """typer >= 0.2x vendors click (``typer._click``); the ``click`` package comes only with the Ray extra."""
    proc = _python_m("nosuch", tmp_path=tmp_path, prelude=BLOCK_CLICK_AND_RAY)
    _assert_usage_error(proc.returncode, proc.stderr, "Usage: exmodel [OPTIONS] COMMAND [ARGS]...",
                        "error: no such command 'nosuch'")
    proc = _python_m("inspect", tmp_path=tmp_path, prelude=BLOCK_CLICK_AND_RAY)
    _assert_usage_error(proc.returncode, proc.stderr, "Usage: exmodel inspect", "error: missing argument 'bundle'")
    proc = _python_m("report", str(tmp_path), tmp_path=tmp_path, prelude=BLOCK_CLICK_AND_RAY)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: {tmp_path / 'results.json'}: not found")
    proc = _python_m("--version", tmp_path=tmp_path, prelude=BLOCK_CLICK_AND_RAY)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"exmodel {exmodel.__version__}\n", "")
    blocked = subprocess.run([sys.executable, "-c", BLOCK_CLICK_AND_RAY + "import click"], capture_output=True,
                             text=True, timeout=60)
    assert blocked.returncode == 1 and "blocked by the test" in blocked.stderr  # the block does work


# ----------------------------------------------------------------------------------------- global flags
def test_split_global_flags() -> None:
    assert _split_global_flags(["run", "c.yaml", "--quiet", "--seeds", "0"]) == (["--quiet"], ["run", "c.yaml", "--seeds", "0"])
    assert _split_global_flags(["-q", "run", "--debug"]) == (["-q", "--debug"], ["run"])
    assert _split_global_flags(["run", "--", "-q", "--debug"]) == ([], ["run", "--", "-q", "--debug"])
    assert _split_global_flags([]) == ([], [])


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[Progress]:
    """``exmodel run`` with a stand-in experiment: one 3-step task, then Ctrl-C; records the Progress given."""
    seen: list[Progress] = []

    def run_experiment(cfg, out, *, progress, **kwargs):
        seen.append(progress)
        task = progress.add("fake phase", total=3)
        progress.advance(task, 3)
        progress.remove(task)
        raise KeyboardInterrupt

    monkeypatch.setattr(exmodel.runner, "run_experiment", run_experiment)
    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    return seen


INTERRUPTED = "interrupted; run the same command with the same --out to resume"


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet_before_or_after_the_sub_command(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               fake_run: list[Progress], flag: str, where: str) -> None:
    args = ["run", "--out", str(tmp_path / "out")]
    result = cli(capsys, *([flag, *args] if where == "before" else [*args, flag]))
    assert result.code == 130
    assert fake_run[-1].enabled is False
    assert result.err.splitlines() == [INTERRUPTED]  # no progress lines


def test_without_quiet_progress_shows_in_the_log(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 fake_run: list[Progress]) -> None:
    result = cli(capsys, "run", "--out", str(tmp_path / "out"))
    assert result.code == 130 and fake_run[-1].enabled is True
    lines = result.err.splitlines()
    assert lines[0] == "fake phase ... started (total 3)"
    assert lines[1].startswith("fake phase done in ") and lines[1].endswith("s")
    assert lines[2:] == [INTERRUPTED]


def test_debug_after_the_sub_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from exmodel.errors import ExmodelError

    with pytest.raises(ExmodelError, match="results.json"):
        cli(capsys, "report", str(tmp_path), "--debug")
    assert cli(capsys, "report", str(tmp_path)).code == 2  # the flag does not stick to later calls


# ----------------------------------------------------------------------------------------- progress lines
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(exmodel.progress, "_clock", c)
    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    return c


def test_progress_prints_a_line_per_phase_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str],
                                                                       clock: _Clock) -> None:
    with Progress() as progress:
        assert not progress.console.is_terminal  # captured stderr
        outer = progress.add("oracle seed 0", total=2)
        short = progress.add("expert 1", total=10)  # nested and short: nothing
        progress.advance(short, 10)
        clock.now += 0.5
        progress.remove(short)
        long = progress.add("distil step 1", total=4)  # nested and long: its 'done' line only
        progress.advance(long, 4)
        clock.now += 12.34
        progress.remove(long)
        progress.advance(outer, 1)  # the phase ends before its total (e.g. an error)
        progress.remove(outer)
    assert capsys.readouterr().err.splitlines() == [
        "oracle seed 0 ... started (total 2)",
        "distil step 1 done in 12.3s",
        "oracle seed 0 done in 12.8s at 1/2",
    ]


def test_progress_lines_are_rate_limited(capsys: pytest.CaptureFixture[str], clock: _Clock) -> None:
    with Progress() as progress:
        for k in range(40):  # 80 lines in no time: only the first 50 show
            task = progress.add(f"phase {k}", total=1)
            progress.advance(task)
            progress.remove(task)
        clock.now += 61
        progress.remove(progress.add("late", total=1))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 52
    assert lines[48:50] == ["phase 24 ... started (total 1)", "phase 24 done in 0.0s"]
    assert lines[50:] == ["late ... started (total 1) (30 progress line(s) left out)", "late done in 0.0s at 0/1"]


def test_quiet_progress_prints_nothing(capsys: pytest.CaptureFixture[str], clock: _Clock) -> None:
    with Progress(enabled=False) as progress:
        task = progress.add("phase", total=1)
        clock.now += 10
        progress.remove(task)
        progress.log("a line")
    assert capsys.readouterr().err == ""


def test_strategies_lists_every_registered_strategy(capsys):
    from helpers import cli

    from exmodel.strategies import list_strategies

    result = cli(capsys, "strategies")
    assert result.code == 0
    flat = " ".join(result.out.split())
    for name in list_strategies():
        assert name in flat
    assert "memory_per_class" in flat  # er's and icarl's exemplar budget is listed
