"""Progress display: rich bars with ETA on every long loop, silent in ``--quiet`` mode.

The API code takes an optional :class:`Progress`; the CLI creates one. Bars go to stderr so that
stdout stays clean for tables.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress(AbstractContextManager):
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True,
                                 disable=not (enabled and self.console.is_terminal))

    def __enter__(self) -> "Progress":
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def add(self, description: str, total: int):
        return self._bar.add_task(description, total=total)

    def advance(self, task, n: int = 1) -> None:
        self._bar.advance(task, n)

    def remove(self, task) -> None:
        self._bar.remove_task(task)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)
