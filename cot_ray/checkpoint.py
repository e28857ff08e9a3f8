"""Checkpoints of a run: both learners, their optimizers and RNG streams, the iteration.

A checkpoint is data, never code. It holds only tensors and plain values (dicts, lists, tuples,
strings, numbers, booleans, None); :func:`save_checkpoint` refuses anything else, and
:func:`load_checkpoint` reads with ``torch.load(weights_only=True)``, whose unpickler builds
tensors and plain values and nothing else. A crafted file whose unpickling would call a function
(``os.system``, say) is refused in one line before any of it runs. That holds for every load:
``eval``, ``sample``, ``compare``, ``train --resume`` and a Tune trial restored from a sweep's
storage.

A checkpoint is written to a temporary file in the same directory and renamed over the old
one, so a crash or a full disk mid-write never leaves a run without a loadable checkpoint.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import OrderedDict
from typing import Any, Optional

import torch

from .files import atomic_file

FORMAT = "cot-ray/1"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint with the best selection metric so far (eval.select)
CONFIG = "config.yaml"

# The keys of a cot-ray/1 checkpoint: the run's, then each learner's (G's; M's when it has one).
G, M = "g", "m"  # the learners' parts of the state: G's, and M's (None in an MLE run)
WEIGHTS = "model"  # a learner part's model weights (a state dict)
RUN_KEYS = ("iteration", "m_updates", "elapsed", "config", G)
GENERATOR_KEYS = (WEIGHTS, "optim", "gen", "steps")
MEDIATOR_KEYS = (WEIGHTS, "optim", "dropout_gen", "steps", "batches")


def learner_part(state: dict, learner: str) -> Optional[dict]:
    """The part of a checkpoint's ``state`` that learner :data:`G` or :data:`M` wrote (its model,
    optimizer and RNG streams); None for a learner the run has not (an MLE run's M). With
    :func:`learner_weights`, the one way code outside the learners reads a checkpoint's parts."""
    if learner not in (G, M):
        raise KeyError(f"a checkpoint has learner parts {G!r} and {M!r}, not {learner!r}")
    return state.get(learner)


def learner_weights(state: dict, learner: str) -> Optional[dict]:
    """The model weights (a state dict) of learner :data:`G` or :data:`M` in a checkpoint's
    ``state``; None for a learner the run has not."""
    part = learner_part(state, learner)
    return None if part is None else part[WEIGHTS]

# Exactly these types (a numpy.float64 is a float, but unpickles through numpy: not plain data).
_PLAIN = (str, int, float, bool, type(None))
_MAPPINGS = (dict, OrderedDict)  # a model's state_dict is an OrderedDict
_SEQUENCES = (list, tuple)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or of another format: the message says what to do."""


def plain_data_problem(x: Any, where: str = "state") -> Optional[str]:
    """Where ``x`` holds something other than tensors and plain values ("state.g.optim: a
    numpy.float64"), or None: what ``torch.load(weights_only=True)`` reads back exactly."""
    if isinstance(x, torch.Tensor) or type(x) in _PLAIN:
        return None
    if type(x) in _MAPPINGS:
        for k, v in x.items():
            if type(k) not in (str, int):
                return f"{where}: a key of type {type(k).__module__}.{type(k).__qualname__}"
            problem = plain_data_problem(v, f"{where}.{k}")
            if problem:
                return problem
        return None
    if type(x) in _SEQUENCES:
        for i, v in enumerate(x):
            problem = plain_data_problem(v, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where}: a {type(x).__module__}.{type(x).__qualname__}"


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` (tensors and plain values only) to ``path`` atomically. A full disk is one
    line naming the path (:class:`cot_ray.files.DiskFullError`); the checkpoint that was there
    before stays as it was."""
    problem = plain_data_problem(state)
    if problem:  # a bug of cot-ray's, not the user's: a checkpoint that could not be loaded back
        raise TypeError(f"a checkpoint holds only tensors and plain values, got {problem}")
    with atomic_file(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: str) -> dict:
    """The state of the checkpoint at ``path``, read as data only (no code runs), and checked to
    hold every key of the format; anything else is a one-line :class:`CheckpointError`."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at '{path}': give a run directory that has written one")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line), "")
        if what:  # the pickle names a function or class to call: what a crafted file does
            raise CheckpointError(
                f"refused to load '{path}': it holds Python objects, not only tensors and plain data"
                f" ({what.rstrip('.')}); a cot-ray checkpoint never does, and loading "
                "it could run code: give a checkpoint that cot-ray wrote") from None
        raise CheckpointError(f"'{path}' is not a cot-ray checkpoint (format {FORMAT}) or is corrupt: give a "
                              "checkpoint.pt or best.pt that cot-ray wrote") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated zip, a text file, ...: torch raises many kinds
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated, or not a checkpoint at all "
                              f"({type(e).__name__}): restore it from a backup or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a cot-ray checkpoint (format {FORMAT}): give a cot-ray run")
    missing = _missing_keys(state)
    if missing:
        raise CheckpointError(f"checkpoint '{path}' is incomplete: it lacks {', '.join(missing)} (a {FORMAT} "
                              "checkpoint holds them all); restore it from a backup or start a new run")
    return state


def _missing_keys(state: dict) -> list[str]:
    """The dotted keys of the format that ``state`` lacks (a learner's part that is not a mapping
    counts as lacking all of its keys)."""
    missing = [k for k in RUN_KEYS if k not in state]
    parts = [(G, GENERATOR_KEYS)] + ([(M, MEDIATOR_KEYS)] if state.get(M) is not None else [])
    for name, keys in parts:
        part = state.get(name)
        if name in state and not isinstance(part, dict):
            missing += [f"{name}.{k}" for k in keys]
        elif isinstance(part, dict):
            missing += [f"{name}.{k}" for k in keys if k not in part]
    if "config" in state and not isinstance(state["config"], dict):
        missing.append("config (a mapping)")
    return missing
