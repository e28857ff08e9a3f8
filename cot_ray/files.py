"""Files written whole or not at all, and JSON-lines files read back: no imports of the project.

Every file a run or a sweep writes in place (checkpoints, configs, data caches, vocabularies,
token files, metrics) goes through :func:`atomic_file`: a temporary file in the same
directory, renamed over the target only once it is complete, so a crash or a Ctrl-C mid-write
never leaves a half-written file where a whole one was, and a full disk is one line naming the
file (:class:`DiskFullError`), the file before it kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Optional


class DiskFullError(RuntimeError):
    """A write that failed for want of space (or quota): the message names the file."""

    def __init__(self, path: str):
        super().__init__(f"disk full at {path}: it was not written (the file that was there, if any, is kept); "
                         "free some space, then continue the run (cot-ray train --resume RUN_DIR)")
        self.path = path


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, is a write that found no space (torch's
    writer, for one, wraps the OSError it got in a RuntimeError)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``mode`` "w" text, UTF-8, or "wb");
    on leaving the block it replaces ``path``, or, if the block raised, it is removed. A full
    disk raises :class:`DiskFullError`."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise


class DamagedFileError(ValueError):
    """A file of a run that cannot be read as it should: the message names the file and the fix."""


def read_jsonl(path: str, on_torn: Optional[Callable[[str], None]] = None) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-empty line; [] if there is no file.

    A last line without its newline that is not JSON is an append cut short (a crash or a full
    disk mid-write): it is dropped, and ``on_torn`` (if given) is told so in one line. Any other
    damage is a :class:`DamagedFileError` naming the file and the line.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise DamagedFileError(f"'{path}' is not UTF-8 text: it is damaged; restore it or remove it") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write of this line never finished
                if on_torn is not None:
                    on_torn(f"'{path}': dropped its last line, which a crash or a full disk cut short")
                continue
            raise DamagedFileError(f"'{path}' line {i + 1} is not JSON: the file is damaged; fix or remove that "
                                   "line") from None
        if not isinstance(row, dict):
            raise DamagedFileError(f"'{path}' line {i + 1} is not a JSON object: fix or remove that line")
        rows.append(row)
    return rows


def file_sha256(path: str) -> str:
    """The SHA-256 of a file (which checkpoint a saved sweep or score belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
