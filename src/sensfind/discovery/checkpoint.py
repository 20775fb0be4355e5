"""Checkpoints of a discovery run: the loop's state saved atomically, and loaded back checked."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sensfind.errors import CheckpointError
from sensfind.runio import write_atomic

if TYPE_CHECKING:
    from sensfind.discovery.config import DiscoverConfig

__all__ = ["save_checkpoint", "load_checkpoint"]


_CHECKPOINT_KEYS = ("config", "iteration", "history", "points", "rounds_done", "round", "found", "restarts")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the loop's ``state`` to ``path`` atomically (a crash leaves the previous checkpoint)."""
    buf = io.BytesIO()  # serialised in memory: a full disk is then one clear OSError, not a torch stream error
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path, config: DiscoverConfig | None = None, shape: tuple[int, int] | None = None) -> dict:
    """The state saved by ``discover(checkpoint=...)``, checked: ``CheckpointError`` (naming the file) if it
    is missing, empty, truncated or corrupt, or was written for another config (the differing keys named)
    or another width (``shape``: ``(restarts, d)``; the width is checked)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (was the disk full when it was written?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({why}); "
                              "start over with --overwrite") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a sensfind discovery checkpoint (missing {missing})")
    width = state["found"].shape[1] if isinstance(state["found"], Tensor) and state["found"].ndim == 2 else None
    if width is None:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no directions [optima, d]")
    if config is not None and state["config"] != config.to_dict():
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = sorted(k for k in set(saved) | set(config.to_dict()) if saved.get(k) != config.to_dict().get(k))
        raise CheckpointError(f"checkpoint {str(path)!r} was written with a different config ({', '.join(diff)} "
                              "differ); cannot resume")
    if shape is not None and width != shape[1]:
        raise CheckpointError(f"checkpoint {str(path)!r} holds directions of width {width}, "
                              f"this run needs {shape[1]}; cannot resume")
    return state
