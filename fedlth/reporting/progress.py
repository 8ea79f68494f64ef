"""One progress display for every long job: what it does, how far it is, and an ETA."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

LINE_INTERVAL_SECONDS = 10.0  # off a terminal: at most one progress line per this many seconds
GRACE_SECONDS = 2.0  # off a terminal: a phase gets its first line once it has lasted this long
REDRAW_SECONDS = 0.1  # on a terminal: at most this many redraws per second (1 / this)
CLEAR_LINE = "\r\x1b[K"


def clock_text(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    s = int(max(0.0, seconds) + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(elapsed: float, done: int, total: int, start: int = 0) -> float | None:
    """Seconds left at the rate since the task started (a resumed task counts from `start`);
    None until one unit is done."""
    if done <= start or total <= done:
        return None if done < total else 0.0
    return elapsed / (done - start) * (total - done)


@dataclass
class _Count:
    """A task or step: what, how far, since when."""

    what: str
    total: int | None = None
    done: int = 0
    start: int = 0
    t0: float = 0.0
    info: str = ""

    def text(self, now: float) -> str:
        elapsed = now - self.t0
        if self.total is None:
            return f"{self.what} ({clock_text(elapsed)})"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = eta_seconds(elapsed, self.done, self.total, self.start)
        left = "" if eta is None else f", ETA {clock_text(eta)}"
        return f"{self.what} {self.done:,}/{self.total:,} ({pct:.0f} %, {clock_text(elapsed)}{left})"


@dataclass
class Progress:
    """A job's progress: a task (rounds, runs, clients, IMP models) and, inside it, an optional
    step (replies of a round, batches of an attack).

    `sink` gets finished lines (None: silent, for --quiet). `live`: redraw one line in place
    (a terminal on `stream`); else plain lines, the first (once a task has lasted 2 s), the last, and at most one
    every `interval` seconds between, so logs get no carriage returns and no flood.
    """

    sink: Callable[[str], None] | None = None
    live: bool = False
    stream: TextIO | None = None
    interval: float = LINE_INTERVAL_SECONDS
    prefix: str = ""
    clock: Callable[[], float] = time.monotonic
    _task: _Count | None = None
    _step: _Count | None = None
    _detail: _Count | None = None
    _last: float = field(default=-1e18)
    _shown: bool = False  # a live line is on screen, not yet ended
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def for_terminal(cls, quiet: bool = False, stream: TextIO | None = None, interval: float = LINE_INTERVAL_SECONDS) -> Progress:
        """Progress on stderr: a live line on a terminal, plain lines in a log, nothing when quiet."""
        stream = stream or sys.stderr
        if quiet:
            return cls()
        live = bool(getattr(stream, "isatty", lambda: False)())

        def write(line: str) -> None:
            stream.write(line + "\n")
            stream.flush()

        return cls(sink=write, live=live, stream=stream, interval=interval)

    @classmethod
    def for_log(cls, logger: Callable[[str], None], interval: float = 0.0) -> Progress:
        """Progress as log lines (a ServerApp under `flwr run --stream`): one per update by default."""
        return cls(sink=logger, interval=interval)

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    # --- what the jobs call -------------------------------------------------------------

    def task(self, what: str, total: int | None = None, done: int = 0) -> None:
        """Start a task (ending the one before); `done` > 0 for a resumed one."""
        with self._lock:
            self._end_line()
            self._task = _Count(what, total, done, done, self.clock())
            self._step = self._detail = None
            # off a terminal, a phase that ends within the grace prints nothing (a bad input's
            # error stays the only line); one that lasts gets its first line after it
            grace = min(GRACE_SECONDS, self.interval)
            if not self.live:
                self._last = self._task.t0 - self.interval + grace
            self._render(force=self.live or grace == 0)

    def update(self, done: int | None = None, info: str | None = None, advance: int = 0) -> None:
        """Move the task on (to `done`, or by `advance`) and/or change its trailing info."""
        with self._lock:
            if self._task is None:
                return
            if done is not None:
                self._task.done = done
            self._task.done += advance
            if info is not None:
                self._task.info = info
            if done is not None or advance:
                self._step = self._detail = None
            finished = self._task.total is not None and self._task.done >= self._task.total
            self._render(force=finished)

    def step(self, what: str, total: int | None = None) -> None:
        """Start a step inside the task (e.g. "round 4: replies")."""
        with self._lock:
            self._step = _Count(what, total, 0, 0, self.clock())
            self._detail = None
            self._render(is_step=True)

    def advance_step(self, n: int = 1) -> None:
        with self._lock:
            if self._step is not None:
                self._step.done += n
                self._render(is_step=True)

    def detail(self, text: str) -> None:
        """What code deep in the job does right now (an attack's batch), with its elapsed time."""
        with self._lock:
            self._detail = _Count(text, t0=self.clock())
            self._render(is_step=True)

    def note(self, text: str) -> None:
        """A line that stays (a phase's result, a run that ended)."""
        with self._lock:
            if self.sink is None:
                return
            self._clear()
            self.sink(self.prefix + text)
            self._render(force=True, only_live=True)

    def close(self) -> None:
        """End the live line, if any."""
        with self._lock:
            self._end_line()
            self._task = self._step = self._detail = None

    def line(self) -> str:
        """The current progress line (what a terminal shows)."""
        now = self.clock()
        parts = [self._task.text(now)] if self._task is not None else []
        if self._step is not None:
            parts.append(self._step.text(now))
        if self._detail is not None:
            parts.append(self._detail.text(now))
        if self._task is not None and self._task.info:  # last: a narrow terminal cuts it first
            parts.append(self._task.info)
        return self.prefix + " · ".join(parts)

    # --- drawing ------------------------------------------------------------------------

    def _render(self, force: bool = False, only_live: bool = False, is_step: bool = False) -> None:
        if self.sink is None or self._task is None:
            return
        now = self.clock()
        if self.live and self.stream is not None:
            if force or now - self._last >= REDRAW_SECONDS:
                self.stream.write(CLEAR_LINE + self._fit(self.line()))
                self.stream.flush()
                self._shown, self._last = True, now
            return
        # a step (replies, batches) moves often: off a terminal it never prints faster than the default
        gap = max(self.interval, LINE_INTERVAL_SECONDS) if is_step else self.interval
        if not only_live and (force or now - self._last >= gap):
            self.sink(self.line())
            self._last = now

    @staticmethod
    def _fit(text: str) -> str:
        """A live line must not wrap: a carriage return only goes back to the start of the last row."""
        width = shutil.get_terminal_size((100, 24)).columns - 1
        return text if len(text) <= width else text[: max(width - 1, 0)] + "…"

    def _tick(self, stop: threading.Event) -> None:
        """Keeps the clock moving through long silent phases (Ray start-up, one slow attack): a
        terminal's line is redrawn every second; a log gets the line again every `interval`."""
        while not stop.wait(1.0 if self.live else min(self.interval, LINE_INTERVAL_SECONDS) / 4):
            with self._lock:
                if self._task is not None:
                    self._render(force=self.live, is_step=True)

    def _clear(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._shown = False

    def _end_line(self) -> None:
        """A live task's last state stays on screen as a finished line."""
        if self.live and self.sink is not None and self.stream is not None and self._task is not None:
            self.stream.write(CLEAR_LINE + self._fit(self.line()) + "\n")
            self.stream.flush()
            self._shown = False

    def writing(self) -> None:
        """Someone else writes to the terminal now: take the live line away (redrawn on the next update)."""
        self._clear()

    # --- sharing the terminal -----------------------------------------------------------

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """The block's progress: reachable by code deep in a job (fedlth.reporting.progress.current()), and
        on a terminal, log lines and warnings written to stderr clear the live line first."""
        token = _CURRENT.set(self)
        restore: list[Callable[[], None]] = []
        if self.live and self.stream is not None:
            proxy = _SharedStream(self.stream, self)
            old = sys.stderr
            sys.stderr = proxy  # warnings and logging's last-resort handler write here
            restore.append(lambda: setattr(sys, "stderr", old))
            for handler in _stream_handlers():
                if handler.stream is self.stream:
                    handler.setStream(proxy)
                    restore.append(lambda h=handler: h.setStream(self.stream))
        ticking = threading.Event()
        if self.sink is not None:
            threading.Thread(target=self._tick, args=(ticking,), name="fedlth-progress", daemon=True).start()
        try:
            yield self
        except BaseException:
            with self._lock:  # an error's message follows: no half-finished progress line above it
                self._clear()
                self._task = self._step = self._detail = None
            raise
        finally:
            ticking.set()
            self.close()
            for undo in reversed(restore):
                undo()
            _CURRENT.reset(token)


class _SharedStream:
    """stderr while a live line is drawn: whatever else is written there gets a clean line."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        with self._progress._lock:
            self._progress.writing()
            n = self._stream.write(text)
            if text.endswith("\n"):
                self._progress._render(force=True, only_live=True)  # the line comes back under it
            return n

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _stream_handlers() -> list[logging.StreamHandler]:
    """The console handlers of the loggers a run writes to (Flower's, fedlth's, the root's)."""
    handlers: list[logging.StreamHandler] = []
    for name in ("flwr", "fedlth", ""):
        handlers += [h for h in logging.getLogger(name).handlers if isinstance(h, logging.StreamHandler)]
    return handlers


def batch_runs(progress: Progress, total: int) -> Callable[[str], None]:
    """compare and study: call it as each run starts; its lines then begin "run i/N (what, all runs ETA)"."""
    t0, count = progress.clock(), [0]

    def next_run(what: str) -> None:
        count[0] += 1
        eta = eta_seconds(progress.clock() - t0, count[0] - 1, total)
        left = "" if eta is None or count[0] == 1 else f", all runs ETA {clock_text(eta)}"
        progress.prefix = f"run {count[0]}/{total} ({what}{left}) · "

    return next_run


def imp_models(progress: Progress, levels: int, controls: bool, repeats: int = 1) -> Callable[[str], None]:
    """fedlth ticket: TicketRun says which model it starts (dense, then each level's ticket and
    controls), `repeats` times over (one IMP per seed); the progress counts them. Call
    progress.update(advance=1) when the last run returns."""
    total, count = repeats * (1 + levels * (3 if controls else 1)), [0]

    def say(msg: str) -> None:
        if count[0] == 0:
            progress.task("IMP models trained", total=total)
        else:
            progress.update(advance=1)
        count[0] += 1
        progress.update(info=f"now {msg}")

    return say


class CountingGrid:
    """A Flower grid whose pulled replies advance the progress step (replies of a round)."""

    def __init__(self, grid: object, progress: Progress) -> None:
        self._grid, self._progress = grid, progress
        # an in-process grid computes each reply while pushing: it counts them itself
        self._on_push = hasattr(grid, "set_reply_hook")
        if self._on_push:
            grid.set_reply_hook(lambda: progress.advance_step(1))

    def pull_messages(self, message_ids: object) -> list:
        got = list(self._grid.pull_messages(message_ids))
        if got and not self._on_push:
            self._progress.advance_step(len(got))
        return got

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


_CURRENT: ContextVar[Progress | None] = ContextVar("fedlth_progress", default=None)
_SILENT = Progress()


def current() -> Progress:
    """The progress of the job running in this thread (a silent one outside any)."""
    return _CURRENT.get() or _SILENT
