"""Progress display for checkpoint conversions: a rich bar over bytes written with tensors/s and GB/s."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        tensors = task.fields.get("tensors", 0)
        if elapsed <= 0:
            return Text("-- tensors/s  -- GB/s", no_wrap=True)
        return Text(f"{tensors} tensors {tensors / elapsed:,.0f}/s {task.completed / elapsed / 1e9:.2f} GB/s", no_wrap=True)


class TransferProgress:
    """Counts tensors and bytes written; shows a rich bar when `enabled` (stderr), or plain lines
    (megarl.monitoring.console.Progress, in MB) when stderr is not a terminal."""

    def __init__(self, description: str, total_bytes: int, enabled: bool = True):
        self.tensors = 0
        self.bytes = 0
        self.started = time.perf_counter()
        self._progress = self._plain = None
        self._plain_mb = 0
        console = Console(stderr=True)
        if enabled and not console.is_terminal:
            from megarl.monitoring.console import Progress as PlainProgress

            self._plain = PlainProgress(description, total=max(1, -(-total_bytes // 10**6)), unit="MB", terminal=False,
                                        stream=sys.stderr)
        elif enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                TaskProgressColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=max(total_bytes, 1), tensors=0)

    def advance(self, nbytes: int, tensors: int = 1) -> None:
        self.tensors += tensors
        self.bytes += nbytes
        if self._progress is not None:
            self._progress.update(self._task, advance=nbytes, tensors=self.tensors)
        if self._plain is not None:
            mb = self.bytes // 10**6
            self._plain.update(mb - self._plain_mb, detail=f"{self.tensors} tensors, {self.bytes / 1e9 / max(self.seconds, 1e-9):.2f} GB/s")
            self._plain_mb = mb

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def __enter__(self) -> "TransferProgress":
        self.started = time.perf_counter()
        if self._progress is not None:
            self._progress.start()
        if self._plain is not None:
            self._plain.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._plain is not None:
            self._plain.update(self._plain.total - self._plain.done)  # the last partial MB
            self._plain.__exit__(*exc)
