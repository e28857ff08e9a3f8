"""Files written whole or not at all, and JSON-lines files read back: no imports of the project.

Every file a run or a sweep writes in place (checkpoints, configs, data caches, vocabularies,
token files, metrics) goes through :func:`atomic_file`: a temporary file in the same
directory, renamed over the target only once it is complete, so a crash or a Ctrl-C mid-write
never leaves a half-written file where a whole one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


@contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``mode`` "w" text, UTF-8, or "wb");
    on leaving the block it replaces ``path``, or, if the block raised, it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-empty line; [] if there is no file."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
