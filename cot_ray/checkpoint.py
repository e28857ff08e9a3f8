"""Atomic checkpoints of a run: both learners, their optimizers and RNG streams, the iteration.

A checkpoint is written to a temporary file in the same directory and renamed over the old
one, so a crash mid-write never leaves a run without a loadable checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import torch

from .files import atomic_file

FORMAT = "cot-ray/1"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint with the best selection metric so far (eval.select)
CONFIG = "config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or of another format: the message says what to do."""


def save_checkpoint(path: str, state: dict) -> None:
    with atomic_file(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: str) -> dict:
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at '{path}': give a run directory that has written one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}): "
                              "restore it from a backup or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a cot-ray checkpoint (format {FORMAT}): give a cot-ray run")
    return state
