"""A spinner on stderr while a command waits for a run; nothing when stderr is not a terminal."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from cli.render import STATE_STYLES


def describe(run: dict[str, Any]) -> str:
    """`r42 demo/hello: running` as rich markup, the state coloured."""
    state = str(run.get("state") or "-")
    style = STATE_STYLES.get(state) or "default"
    job = escape(str(run.get("job_id") or "(ad hoc)"))
    return f"{escape(str(run.get('run_id')))} {job}: [{style}]{escape(state)}[/]"


class RunProgress:
    """Shows the run's state and the time waited; a no-op unless `enabled`."""

    def __init__(self, enabled: bool, what: str = "waiting") -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(escape(what), total=None)

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, run: dict[str, Any]) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=describe(run))
