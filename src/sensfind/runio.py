"""Reading inputs and writing results: files named in every error, and run directories that appear
whole or not at all.

Every command writes its results through ``staged_dir``: a sibling temporary directory is filled and
renamed into place only when complete; a previous complete run at the same place is kept until then.
Files and directories get the ordinary permissions of the process's umask (others in a shared group
can read results). Result objects derive from ``Result``: one ``save``/``load`` pair over the same rules.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from sensfind.errors import InputFileError, ResultsWriteError, SensfindError

__all__ = ["json_float", "to_jsonable", "dumps_json", "save_json", "load_json", "save_tensors", "load_tensors", "write_atomic", "read_text",
           "check_output_dir", "staged_dir", "umask", "Result", "save_result"]

# errno values raised while writing results that mean the location cannot take them (not a bug)
_FULL_OR_READONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def json_float(x: float) -> float | None:
    """The one convention for non-finite numbers in sensfind's JSON files: ``null`` (``None``). Exact
    values (``inf`` for a threshold never reached) are kept in the tensors saved beside the JSON."""
    return x if math.isfinite(x) else None


def to_jsonable(obj):
    """Tensors, tuples, paths and dtypes -> plain JSON values; non-finite floats -> ``None`` (``json_float``)."""
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return json_float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    return obj


def umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_new(path: Path):
    """A new file opened for writing, with the permissions of the umask (the one place results are opened)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a uniquely named sibling temporary file (never a torn file, even with
    concurrent writers). Raises ``ResultsWriteError`` naming ``path`` when it cannot be written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with _open_new(tmp) as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself is gone or unwritable; nothing was left in it
        raise ResultsWriteError(path, exc.strerror or str(exc)) from exc


def dumps_json(obj) -> str:
    """``obj`` as indented, strictly valid JSON text (``to_jsonable`` first)."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False)


def save_json(path: str | Path, obj) -> None:
    write_atomic(path, dumps_json(obj) + "\n")


def _input_file(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``; ``InputFileError`` naming it if it is a directory or does not exist."""
    p = Path(path)
    if p.is_dir():
        raise InputFileError(f"{what} {str(p)!r} is a directory, not a file")
    if not p.exists():
        raise InputFileError(f"{what} {str(p)!r} does not exist")
    return p


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a file given as input; ``InputFileError`` naming it (and what it was for) if it
    is missing, a directory, unreadable or not text."""
    p = _input_file(path, what)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{what} {str(p)!r} is not UTF-8 text (byte {exc.start}); is it a binary file?") from None
    except OSError as exc:
        raise InputFileError(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}") from None


def load_json(path: str | Path, what: str = "JSON file"):
    """Parsed JSON of a file; ``InputFileError`` naming the file if it is not valid JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{what} {str(path)!r} is not valid JSON: {exc}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_atomic(path, data)


def load_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    p = _input_file(path, what)
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(f"{what} {str(p)!r} is not a readable .safetensors file: {' '.join(str(exc).split())}") from None


def check_output_dir(out: str | Path, overwrite: bool = False, what: str = "output directory") -> Path:
    """Refuse, before any work, a results directory that cannot be written: a file in its place, a
    non-empty directory without ``overwrite``, a read-only file system, no permission."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ResultsWriteError(out, "it is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{what} {str(out)!r} is not empty; choose another or pass --overwrite")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ResultsWriteError(out, f"{str(existing)!r} is a file, not a directory")
    if _is_read_only(existing):
        raise ResultsWriteError(out, "read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsWriteError(out, f"permission denied (cannot create files in {str(existing)!r})")
    return out


def _is_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _normalize_permissions(root: Path) -> None:
    """Files 0666 and directories 0777, less the umask (some writers, e.g. safetensors, create 0600)."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def _make_stage(out: Path, stage: Path | None) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if stage is not None:
            stage.mkdir(exist_ok=True)
            return stage
        while True:
            tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
            try:
                tmp.mkdir()
                return tmp
            except FileExistsError:
                continue
    except OSError as exc:
        raise ResultsWriteError(out, exc.strerror or str(exc)) from exc


def _commit(stage: Path, out: Path) -> None:
    """Move the complete ``stage`` to ``out``; a previous run at ``out`` is removed only afterwards."""
    try:
        _normalize_permissions(stage)
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
            try:
                os.rename(stage, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    except OSError as exc:
        raise ResultsWriteError(out, exc.strerror or str(exc)) from exc


@contextmanager
def staged_dir(
    out: str | Path,
    overwrite: bool = False,
    *,
    stage: str | Path | None = None,
    keep: Callable[[BaseException], bool] | None = None,
) -> Iterator[Path]:
    """Yield a directory beside ``out`` to write results into; when the block completes it replaces
    ``out`` (a previous run there is kept until that moment), when it raises it is removed.

    ``out`` must not be a file, and must be missing or empty unless ``overwrite`` is set (checked before
    anything is created). ``stage``: use this fixed directory (created if missing, reused if present:
    resumable work such as a discovery checkpoint) instead of a fresh temporary one. ``keep(exc)``:
    keep the stage when the block raises ``exc`` (e.g. an interrupt, to resume later).

    A full disk or read-only file system while writing becomes one ``ResultsWriteError``.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    tmp = _make_stage(out, Path(stage) if stage is not None else None)
    try:
        yield tmp
    except BaseException as exc:
        if keep is None or not keep(exc):
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, SensfindError) and exc.errno in _FULL_OR_READONLY:
            raise ResultsWriteError(out, exc.strerror or str(exc)) from exc
        raise
    try:
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Result:
    """Base of the result types: ``save`` writes a directory whole or not at all, ``load`` reads it back.

    A subclass names its ``MARKER`` file (present in every saved result of its type), writes its files in
    ``_write(directory)`` and reads them back in ``_read(directory)``. ``config_dict()`` (None: the result
    has no config) is written to ``config.json`` beside them. Non-finite numbers are ``null`` in the JSON
    files (``json_float``); exact values belong in the ``.safetensors`` files.
    """

    MARKER: ClassVar[str] = ""
    WHAT: ClassVar[str] = "results"

    def _write(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls, directory: Path):
        raise NotImplementedError

    def config_dict(self) -> dict | None:
        return None

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write into ``directory`` (see ``save_result``); returns it."""
        return save_result(self, directory, overwrite)

    @classmethod
    def load(cls, directory: str | Path):
        directory = Path(directory)
        if not (directory / cls.MARKER).is_file():
            raise InputFileError(f"{str(directory)!r} holds no {cls.WHAT} ({cls.MARKER} missing)")
        return cls._read(directory)


def _fill(result: Result, directory: Path) -> None:
    result._write(directory)
    config = result.config_dict()
    if config and not (directory / "config.json").exists():
        save_json(directory / "config.json", config)


def save_result(result: Result, directory: str | Path, overwrite: bool = False) -> Path:
    """Save ``result`` into ``directory``.

    A missing or empty directory is written whole or not at all (``staged_dir``). A non-empty one is refused
    unless ``overwrite``; then each of the result's files (and subdirectories) replaces the one of the same
    name, other entries are left alone, and an existing ``config.json`` (the record of the run that made the
    result) is kept.
    """
    out = Path(directory)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{str(out)!r} is not empty; save into a new or empty directory, or pass overwrite=True")
        _merge(result, out)
        return out
    with staged_dir(out, overwrite=True) as tmp:
        _fill(result, tmp)
    return out


def _merge(result: Result, out: Path) -> None:
    stage = _make_stage(out, None)
    try:
        _fill(result, stage)
        _normalize_permissions(stage)
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if entry.name == "config.json" and target.exists():
                continue
            if entry.is_dir() and target.is_dir():
                old = out / f".{entry.name}.old-{secrets.token_hex(4)}"
                os.rename(target, old)
                os.rename(entry, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, target)
    except OSError as exc:
        if isinstance(exc, SensfindError):
            raise
        raise ResultsWriteError(out, exc.strerror or str(exc)) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
