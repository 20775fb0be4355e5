"""Progress bars and stage timings: what every long stage shows on stderr and records in its results.

``progress=None`` (the Python API's default) means "on when stderr is a terminal"; the command line
passes ``True`` unless ``--quiet``. A :class:`Stages` times named stages (``with stages("load"): ...``)
into the ``timings`` of a command's ``summary.json``.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

__all__ = ["BAR_DELAY", "Stages", "progress_bar", "progress_enabled"]

BAR_DELAY = 1.0  # seconds before a bar appears: work that ends sooner leaves stderr alone (one-line errors stay one line)


def progress_enabled(progress: bool | None) -> bool:
    """``progress`` as given, or (``None``) whether stderr is a terminal."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "pt", initial: int = 0,
                 leave: bool = True):
    """A tqdm bar on stderr named ``desc`` over ``total`` ``unit``s (ETA shown), disabled unless
    :func:`progress_enabled`; it appears once the work has taken ``BAR_DELAY`` seconds, and with
    ``leave=False`` it is erased when done."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not progress_enabled(progress),
                file=sys.stderr, dynamic_ncols=True, delay=BAR_DELAY, leave=leave)


class Stages:
    """Wall-clock seconds per named stage, in the order run: ``timings()`` -> ``{"load_seconds": ..., ...,
    "total_seconds": ...}`` (total: since the ``Stages`` was made)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, progress: bool | None = False, desc: str | None = None):
        """Time the stage ``name``; with ``progress``, a one-step bar named ``desc`` (elapsed time shown,
        erased when done) for stages whose work has no count of its own (loading a model, a dictionary)."""
        t = time.perf_counter()
        bar = progress_bar(1, desc or name, progress, unit="stage", leave=False) if progress is not False else None
        try:
            yield
            if bar is not None:
                bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def add(self, timings: dict) -> None:
        """Stage timings measured elsewhere (``{"x_seconds": s}`` or ``{"x": s}``)."""
        for k, v in timings.items():
            self.seconds[k.removesuffix("_seconds")] = self.seconds.get(k.removesuffix("_seconds"), 0.0) + float(v)

    def timings(self) -> dict:
        out = {f"{k}_seconds": v for k, v in self.seconds.items()}
        out["total_seconds"] = time.perf_counter() - self.start
        return out
