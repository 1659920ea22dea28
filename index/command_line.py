"""What every ``recsys-*`` command does alike with failures that are not its own: one line, never a traceback.

A file operation that fails (a full disk, a read-only mount, a path too long, a file where a directory should be)
is an ``OSError``; reduced to the path and the system's reason, it is the one line a user can act on. Outputs are
checked before the work (minutes of training) rather than found unwritable after it. SIGTERM (a container's stop,
``kill``) is raised as ``Terminated``, so that the ``finally`` and ``except BaseException`` blocks that remove a
half-written bundle or temporary file run as they do for Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is: every cleanup on the way out runs."""


def raise_on_sigterm() -> None:
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)


def os_error(error: OSError) -> str:
    """``'path': reason`` (both paths of a rename), on one line whatever the path holds."""
    reason = error.strerror or str(error) or type(error).__name__
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(repr(p)[:300] for p in paths)}: {reason}" if paths else reason


def first_line(error: BaseException) -> str:
    """An error's first line, trimmed, for a one-line message: torch's load errors run to paragraphs."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


ENDINGS = (OSError, KeyboardInterrupt, Terminated)  # what every command's main says in one line this way


def say_ending(program: str, error: BaseException, *, interrupted: str) -> int:
    """Say one of ``ENDINGS`` in one line on stderr; the exit code: 2 for an OSError, 130 for an interrupt."""
    if isinstance(error, OSError):
        print(f"{program}: error: {os_error(error)}", file=sys.stderr)
        return 2
    print(f"{program}: interrupted; {interrupted}", file=sys.stderr)
    return 130


def check_output_directory(path: Path, flag: str) -> None:
    """Refuse a directory the run could neither create nor write into (ValueError naming ``flag``)."""
    try:
        target = path
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            where = "exists and is not a directory" if target == path else f"{str(target)!r} is not a directory"
            raise ValueError(f"{flag} {str(path)!r}: {where}")
        if not os.access(target, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {str(path)!r}: {str(target)!r} is not writable (or on a read-only mount)")
    except OSError as error:
        raise ValueError(f"{flag} {str(path)[:300]!r}: {error.strerror or error}") from error


def check_output_file(path: Path, flag: str) -> None:
    """Refuse a file the run could not write (a directory or a FIFO in its place, an unwritable directory)."""
    try:
        if path.exists() and not path.is_file():
            raise ValueError(f"{flag} {str(path)!r}: exists and is not a regular file")
    except OSError as error:
        raise ValueError(f"{flag} {str(path)[:300]!r}: {error.strerror or error}") from error
    check_output_directory(path.parent, flag)
