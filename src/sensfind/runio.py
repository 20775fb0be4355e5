"""Reading inputs and writing results: files named in every error, and run directories that appear
whole or not at all.

Every command writes its results through ``staged_dir``: a sibling temporary directory is filled and
renamed into place only when complete; a previous complete run at the same place is kept until then.
While it works, a run holds the results directory's lock (``out_lock``: a sibling ``.NAME.lock`` holding
its pid, locked with ``flock`` so that the kernel frees it when the process dies, even by ``kill -9``): a
second run on the same directory is refused at once, naming the pid, and the run that takes the lock
first removes what killed runs left beside it (``.NAME.partial-*``, ``.NAME.old-*``).
Files and directories get the ordinary permissions of the process's umask (others in a shared group
can read results). Result objects derive from ``Result``: one ``save``/``load`` pair over the same rules.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from sensfind.errors import DirectoryBusyError, InputFileError, ResultsWriteError, SensfindError

__all__ = ["json_float", "to_jsonable", "dumps_json", "save_json", "load_json", "save_tensors", "load_tensors", "write_atomic", "read_text",
           "check_output_dir", "staged_dir", "out_lock", "remove_litter", "umask", "Result", "save_result"]

log = logging.getLogger(__name__)

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


MAX_JSON_DEPTH = 64  # nesting of an input JSON file (sensfind's own files are a few levels deep)


def _json_depth(obj) -> int:
    """How deeply lists and dicts nest in ``obj`` (without recursion)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(path: str | Path, what: str = "JSON file"):
    """Parsed JSON of a file; ``InputFileError`` naming the file if it is not valid JSON or nests more
    than ``MAX_JSON_DEPTH`` levels deep."""
    text = read_text(path, what)
    too_deep = False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{what} {str(path)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        too_deep = True
    if too_deep or _json_depth(data) > MAX_JSON_DEPTH:
        raise InputFileError(f"{what} {str(path)!r} nests more than {MAX_JSON_DEPTH} levels deep; sensfind's "
                             "settings are a few levels deep") from None
    return data


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


# -- the lock of a results directory, and what killed runs left beside it ------------------------------

_held: dict[str, list[int]] = {}  # lock file -> [fd, depth]: the locks this process holds (re-entrant)


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _acquire(out: Path, wait: bool) -> int:
    """The locked descriptor of ``out``'s lock file; if a live process holds it, wait for it (``wait``) or
    raise ``DirectoryBusyError`` naming its pid."""
    path = _lock_file(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsWriteError(out, exc.strerror or str(exc)) from exc
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ResultsWriteError(out, f"cannot create its lock file {str(path)!r}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise DirectoryBusyError(f"another sensfind run (pid {owner}) is writing {str(out)!r} (lock "
                                     f"{str(path)!r}); wait for it to finish or stop it, or choose another --out") from None
        except OSError:  # a file system without locks: go on unlocked, as before locks existed
            return fd
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # (else its last owner removed it between our open and our lock: take the new one)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _release(out: Path, fd: int) -> None:
    try:
        os.unlink(_lock_file(out))  # removed while still locked: a waiter that opened it sees a stale inode
    except OSError:
        pass
    os.close(fd)


@contextmanager
def out_lock(out: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the lock of the results directory ``out`` for the block: a second run on it (another
    process) is refused at once with ``DirectoryBusyError`` naming the holder's pid, or waits for it
    (``wait``: short writes such as saving a result into a directory that workers share). Taking it
    removes what killed runs left beside ``out`` (``remove_litter``). Re-entrant within a process."""
    out = Path(out)
    key = os.path.join(os.path.realpath(out.parent), _lock_file(out).name)  # one key however out is spelled
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(out, wait)
    _held[key] = [fd, 1]
    try:
        remove_litter(out)
        yield
    finally:
        del _held[key]
        _release(out, fd)


def remove_litter(out: str | Path) -> list[Path]:
    """Remove the siblings that runs killed while writing ``out`` left behind: partial results
    (``.NAME.partial-*``) and previous runs being replaced (``.NAME.old-*``). Call it holding
    ``out_lock(out)``, so that none belongs to a live run. A previous run whose replacement was killed
    between the two renames of the swap (``out`` missing, one ``.NAME.old-*``) is put back instead.
    Returns what was removed."""
    out = Path(out)
    partial, old = f".{out.name}.partial-", f".{out.name}.old-"
    try:
        entries = sorted(out.parent.iterdir()) if out.parent.is_dir() else []
    except OSError:
        return []
    olds = [e for e in entries if e.name.startswith(old) and e.is_dir()]
    if not out.exists() and len(olds) == 1:
        try:
            os.rename(olds[0], out)
            entries.remove(olds[0])
        except OSError:
            pass
    removed = []
    for entry in entries:
        if entry.name.startswith((partial, old)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d entries left beside %s by killed runs", len(removed), out)
    return removed


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C (SIGINT) held back until the block is done (main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
    """Move the complete ``stage`` to ``out``; a previous run at ``out`` is removed only afterwards. An
    interrupt waits until the swap is done."""
    with _uninterrupted():
        _swap(stage, out)


def _swap(stage: Path, out: Path) -> None:
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
    wait: bool = False,
) -> Iterator[Path]:
    """Yield a directory beside ``out`` to write results into; when the block completes it replaces
    ``out`` (a previous run there is kept until that moment), when it raises it is removed.

    ``out`` must not be a file, and must be missing or empty unless ``overwrite`` is set (checked before
    anything is created). ``stage``: use this fixed directory (created if missing, reused if present:
    resumable work such as a discovery checkpoint) instead of a fresh temporary one. ``keep(exc)``:
    keep the stage when the block raises ``exc`` (e.g. an interrupt, to resume later).

    The block runs holding ``out_lock(out)``: another run on ``out`` is refused at once (or waited for:
    ``wait``), and what killed runs left beside ``out`` is removed first. A full disk or read-only file system while writing becomes
    one ``ResultsWriteError``.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    with out_lock(out, wait):
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

    While another process writes into ``directory`` (holds its ``out_lock``), this waits for it.
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
    with staged_dir(out, overwrite=True, wait=True) as tmp:
        _fill(result, tmp)
    return out


def _merge(result: Result, out: Path) -> None:
    with out_lock(out, wait=True):  # e.g. tuning workers sharing out: one saves after the other
        _merge_locked(result, out)


def _merge_locked(result: Result, out: Path) -> None:
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
