"""Progress display: rich bars with ETA on every long loop, silent in ``--quiet`` mode.

The API code takes an optional :class:`Progress`; the CLI creates one. Output goes to stderr so that
stdout stays clean for tables.

On a terminal, tasks show as live bars. When stderr is not a terminal (CI logs, ``2> log``), bars
would be invisible, so plain lines are printed instead, few enough not to flood a log:

* ``DESCRIPTION ... started (total N)`` when a top-level task (a phase: no other task running) starts;
* ``DESCRIPTION done in X.Xs`` (``... at k/N`` if it ended before its total) when it ends; for a nested task
  only if it took at least :attr:`Progress.min_seconds`;
* at most :attr:`Progress.max_lines_per_minute` such lines in any minute; the next line that fits
  says how many were left out.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from exmodel.text import SafeConsole, printable


_clock = time.monotonic  # seconds; replaced in tests


@dataclass
class _PlainTask:
    description: str
    total: int
    top_level: bool
    start: float
    completed: int = 0


class Progress(AbstractContextManager):
    min_seconds = 2.0  # nested tasks shorter than this print nothing
    max_lines_per_minute = 50

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = SafeConsole(file=sys.stderr)
        self._bar = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True,
                                 disable=not (enabled and self.console.is_terminal))
        self._plain = enabled and not self.console.is_terminal
        self._tasks: dict[object, _PlainTask] = {}
        self._printed: deque[float] = deque()  # times of the plain lines of the last minute
        self._skipped = 0

    def __enter__(self) -> "Progress":
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def add(self, description: str, total: int):
        description = printable(description, one_line=True)  # names come from cards and configs
        task = self._bar.add_task(description, total=total)
        if self._plain:
            top_level = not self._tasks
            self._tasks[task] = _PlainTask(description, total, top_level, _clock())
            if top_level:
                self._line(f"{description} ... started (total {total})")
        return task

    def advance(self, task, n: int = 1) -> None:
        self._bar.advance(task, n)
        if task in self._tasks:
            self._tasks[task].completed += n

    def update(self, task, description: str) -> None:
        """Rename a task (e.g. ``expert 2 of 5``); in logs the new name is a line of its own."""
        description = printable(description, one_line=True)
        self._bar.update(task, description=description)
        if task in self._tasks:
            self._tasks[task].description = description
            self._line(description)

    def remove(self, task) -> None:
        self._bar.remove_task(task)
        t = self._tasks.pop(task, None)
        if t is None:
            return
        seconds = _clock() - t.start
        if t.top_level or seconds >= self.min_seconds:
            where = f" at {t.completed}/{t.total}" if t.completed < t.total else ""
            self._line(f"{t.description} done in {seconds:.1f}s{where}")

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def _line(self, text: str) -> None:
        """Print one plain line to stderr unless the last minute already had its share."""
        now = _clock()
        while self._printed and now - self._printed[0] >= 60:
            self._printed.popleft()
        if len(self._printed) >= self.max_lines_per_minute:
            self._skipped += 1
            return
        if self._skipped:
            text += f" ({self._skipped} progress line(s) left out)"
            self._skipped = 0
        self._printed.append(now)
        print(text, file=self.console.file, flush=True)
