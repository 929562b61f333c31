"""Progress display for long builds: one line per stage with a spinner and its time (rich),
or nothing at all (``--quiet`` and library use). The pipeline only calls :meth:`start` and
:meth:`done`; how it looks is decided here.
"""

from __future__ import annotations

import time
from typing import Any


class Progress:
    """Silent base: records stage times, prints nothing."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0: dict[str, float] = {}

    def start(self, stage: str, detail: str = "") -> None:
        self._t0[stage] = time.perf_counter()

    def done(self, stage: str, detail: str = "") -> None:
        t0 = self._t0.pop(stage, None)
        if t0 is not None:
            self.seconds[stage] = round(time.perf_counter() - t0, 3)

    def close(self) -> None:
        pass


class RichProgress(Progress):
    """A rich progress display on stderr: a spinner while a stage runs, then its time."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import Progress as RP, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self._rp = RP(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._rp.start()

    def start(self, stage: str, detail: str = "") -> None:
        super().start(stage, detail)
        self._tasks[stage] = self._rp.add_task(f"{stage:<10} {detail}", total=1)

    def done(self, stage: str, detail: str = "") -> None:
        super().done(stage, detail)
        task = self._tasks.get(stage)
        if task is not None:
            self._rp.update(task, completed=1, description=f"{stage:<10} {detail}")
            self._rp.stop_task(task)

    def close(self) -> None:
        self._rp.stop()
